"""`harness bench` end to end: a real model, generated C, firmware, QEMU, the protocol, the reference check,
the figures with their sources, and the results store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_tools, shared_model

from harness import reference, results
from harness.bench import BenchOptions, OutputMismatch, run_bench
from harness.cli import main


def _opts(tmp_path, model, **kw) -> BenchOptions:
    kw.setdefault("board", "nucleo-f746")
    return BenchOptions(
        model=str(model), results_dir=str(tmp_path / "results"), build_dir=str(tmp_path / "build"), **kw
    )


@pytest.mark.qemu
def test_bench_on_the_qemu_fallback_of_an_m7_board(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    said: list[str] = []
    r = run_bench(_opts(tmp_path, shared_model("kws"), repetitions=3, inputs=2), say=said.append)
    assert r["status"] == "ok" and r["outputs_match"] and r["target"] == "qemu"
    assert any("QEMU fallback" in s and "not cycles" in s for s in said)  # said plainly
    f = r["figures"]
    assert f["count_source"] == "qemu-icount" and f["count_unit"] == "instructions"
    assert "not cycles" in f["count_note"] and f["latency_note"].startswith("ESTIMATE")
    assert len(f["count"]["all"]) == 2 * 3 and f["count"]["min"] <= f["count"]["median"] <= f["count"]["max"]
    # repetitions of one input count exactly the same under -icount (the counter restarts at each inference);
    # different inputs may take different paths (clamps, branches), so counts are compared per input
    for per_input in (f["count"]["all"][:3], f["count"]["all"][3:]):
        assert len(set(per_input)) == 1
    assert f["macs_per_count"] == pytest.approx(f["macs"] / f["count"]["median"])
    assert f["peak_sram_bytes"] == f["arena_bytes"] + f["peak_stack_bytes"] + f["static_ram_bytes"]
    assert 0 < f["peak_stack_bytes"] < 8192 and f["arena_high_water_bytes"] <= f["arena_bytes"]
    assert f["flash_bytes"] == f["code_bytes"] + f["weight_bytes"] and f["fits"]
    assert f["board_sram_bytes"] == 320 * 1024 and f["board_flash_bytes"] == 1024 * 1024
    # the record is in the store, stamped with its schema and versions
    (stored,) = list(results.read("bench", tmp_path / "results"))
    assert stored["run_id"] == r["run_id"] and stored["status"] == "ok" and stored["schema"] >= 1
    assert stored["versions"]["gcc"] and stored["versions"]["qemu"] and len(stored["model_sha256"]) == 64


@pytest.mark.qemu
def test_bench_on_an_m4_machine_and_the_cli_json(tmp_path, capsys):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    args = ["bench", "--board", "qemu-m4", "--model", str(shared_model("ad01")), "-n", "2", "-m", "1"]
    assert main([*args, "--results", str(tmp_path / "r"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["board"] == "qemu-m4" and r["target"] == "qemu" and r["status"] == "ok"
    assert r["figures"]["count"]["median"] > r["figures"]["macs"] / 4  # no engine does 4 MACs an instruction
    # the table
    assert main([*args, "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "instructions" in out and "bit-exact" in out
    assert "ESTIMATE" not in out  # a QEMU machine's clock is no chip's: no latency is estimated for it
    assert len(list(results.read("bench", tmp_path / "r"))) == 2


def test_bench_on_the_host_target_checks_outputs_without_counts(tmp_path):
    said: list[str] = []
    r = run_bench(_opts(tmp_path, shared_model("ic"), target="host", inputs=3, layers=True), say=said.append)
    assert r["status"] == "ok" and r["outputs_match"] and r["target"] == "host"
    assert r["figures"] is None  # the host measures nothing it could pass off as a device figure
    assert "layers" not in r and any("no per-layer figures" in s for s in said)


def test_a_wrong_output_fails_loudly_and_is_recorded(tmp_path, monkeypatch):
    real = reference.Prepared.run

    def off_by_one(self, inputs):  # the reference disagrees with the (correct) engine at one index
        outs = real(self, inputs)
        outs[0] = outs[0].copy()
        outs[0].reshape(-1)[3] ^= 1
        return outs

    monkeypatch.setattr(reference.Prepared, "run", off_by_one)
    with pytest.raises(OutputMismatch, match=r"output 0 differs from the reference: first at \(0, 3\)"):
        run_bench(_opts(tmp_path, shared_model("kws"), target="host"))
    (stored,) = list(results.read("bench", tmp_path / "results"))
    assert stored["status"] == "failed" and stored["error"] == "OutputMismatch"


def test_unknown_board_and_model_are_clear_errors(tmp_path, capsys):
    assert main(["bench", "--board", "nucleo-zz", "--model", "x.tflite", "--results", str(tmp_path)]) == 2
    assert "nucleo-zz" in capsys.readouterr().err
    assert main(["bench", "--board", "qemu-m4", "--model", "no_such_model", "--results", str(tmp_path)]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_inputs_are_seeded(tmp_path):
    from types import SimpleNamespace

    from harness.bench import random_inputs

    spec = SimpleNamespace(shape=(1, 4, 4, 3))  # random_inputs reads only the shape of an IOSpec
    a = random_inputs([spec], 2, seed=7)
    b = random_inputs([spec], 2, seed=7)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][0], a[1][0])


@pytest.mark.qemu
def test_the_main_job_mcunet_vww_on_nucleo_f746(tmp_path):
    """`make bench`'s command: the zoo's mcunet_vww fits the F746 and is bit-exact on its M7 fallback."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    r = run_bench(_opts(tmp_path, "mcunet_vww", repetitions=2, inputs=1))
    f = r["figures"]
    assert r["outputs_match"] and r["target"] == "qemu" and f["fits"]
    assert f["macs"] == 11_578_816 and f["peak_sram_bytes"] < 320 * 1024 and f["flash_bytes"] < 1024 * 1024


@pytest.mark.qemu
def test_a_generated_model_counts_the_same_on_every_qemu_run(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    runs = [run_bench(_opts(tmp_path, "digits_cnn", board="qemu-m4", repetitions=3, inputs=2)) for _ in range(2)]
    a, b = (r["figures"]["count"]["all"] for r in runs)
    assert runs[1]["build"]["cached"]  # the second run reuses the firmware: the same program
    # per input, every repetition of both runs gives the same count, to the instruction tick
    for k in range(2):
        same_input = a[3 * k : 3 * k + 3] + b[3 * k : 3 * k + 3]
        assert len(set(same_input)) == 1, same_input


@pytest.mark.qemu
def test_per_layer_counts_add_up_to_the_inference(tmp_path, capsys, monkeypatch):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from harness.model.boundary import split_boundary
    from harness.zoo import resolve_model

    # the layer-by-layer build: one row per layer
    plain = run_bench(_opts(tmp_path, "mlperf_kws", board="qemu-m4", repetitions=2, inputs=1, fuse=False))
    r = run_bench(_opts(tmp_path, "mlperf_kws", board="qemu-m4", repetitions=2, inputs=1, layers=True, fuse=False))
    assert r["outputs_match"] and "layers" not in plain
    ops = split_boundary(resolve_model("mlperf_kws")[0])[0].ops
    layers = r["layers"]
    assert [(x["index"], x["name"], x["op"]) for x in layers] == [(k, op.name, op.kind) for k, op in enumerate(ops)]
    counts = [x["count"] for x in layers]
    assert all(c >= 0 and c % 40 == 0 for c in counts)  # whole SysTick ticks of 40 instructions (an386)
    assert all(x["count"] > 0 for x in layers if x["macs"])
    # one input: the layers' counts tile the inference, up to model_run's own call and return
    total = r["figures"]["count"]["median"]
    assert 0 <= total - sum(counts) <= 80
    assert sum(x["share"] for x in layers if x["macs"]) > 0.8  # convolutions and FC carry the work
    # the stamps cost a counter read each, and the profiled build says its total includes them
    extra = total - plain["figures"]["count"]["median"]
    assert 0 < extra < 100 * len(layers) and "profiling build" in r["figures"]["count_note"]

    # fused (the default): a group's layers interleave row by row, so it is one row covering its layers
    f = run_bench(_opts(tmp_path, "mlperf_kws", board="qemu-m4", repetitions=2, inputs=1, layers=True))
    assert f["figures"]["fused_groups"] and f["outputs_match"]
    # the planner's fused arena is what the device touches (painted high water), and below layer by layer
    assert f["figures"]["arena_high_water_bytes"] == f["figures"]["arena_bytes"] < f["figures"]["arena_unfused_bytes"]
    rows = f["layers"]
    assert [k for x in rows for k in x.get("layers", [x["index"]])] == list(range(len(ops)))
    assert {x["op"] for x in rows if "layers" in x} == {"FUSED"} and all(
        len(x["layers"]) > 1 for x in rows if "layers" in x
    )
    assert 0 <= f["figures"]["count"]["median"] - sum(x["count"] for x in rows) <= 80

    monkeypatch.setenv("HARNESS_BUILD_DIR", str(tmp_path / "build"))  # the same cache: no rebuild
    args = ["bench", "--board", "qemu-m4", "--model", "mlperf_kws", "--layers", "-m", "1", "-n", "1"]
    assert main([*args, "--no-fuse", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "per layer" in out and layers[0]["name"] in out and "fused row" not in out
    assert f"{sum(x['macs'] for x in layers):,}" in out and "total" in out  # the layers' sum, a row of its own
    assert main([*args, "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "fused row" in out and f"{len(f['figures']['fused_groups'])} groups" in out


def test_layer_figures_without_stamps_are_a_clear_error():
    from types import SimpleNamespace

    from harness.bench import layer_figures
    from harness.boards import get_board
    from harness.errors import TargetError

    cg = SimpleNamespace(layers=[object(), object()])
    hello = SimpleNamespace(counter_source="qemu-icount")
    with pytest.raises(TargetError, match="0 layer stamps for 2 layers: firmware built without layer profiling"):
        layer_figures(get_board("qemu-m4"), hello, cg, [[]])
