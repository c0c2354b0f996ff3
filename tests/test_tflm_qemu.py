"""The TFLite Micro engine end to end on QEMU: both variants on an M4 (nucleo-f412's fallback) and an M7
(nucleo-f746's), the library built once and cached, the arena sized by the device, outputs checked
against the interpreter, a deviation reported as a finding, and the engine's own failures in its own words.
Sources: ../shared/third_party (skipped, saying so, where it is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_model

from harness import results, zoo
from harness.bench import BenchOptions, prepare, run_bench
from harness.boards import get_board
from harness.cli import main
from harness.compare import CompareOptions, run_compare
from harness.engines import tflm
from harness.protocol import EngineFailed

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return tmp_path_factory.mktemp("tflm-builds")


@pytest.mark.parametrize("board", ["nucleo-f412", "nucleo-f746"])
@pytest.mark.parametrize("engine", ["tflm-cmsis", "tflm-ref"])
def test_kws_end_to_end(board, engine, tflm_sources, builds, tmp_path):
    r = run_bench(
        BenchOptions(board, str(shared_model("kws")), engine=engine, inputs=2, repetitions=2,
                     results_dir=str(tmp_path), build_dir=str(builds)),
    )  # fmt: skip
    assert r["status"] == "ok" and r["engine"] == engine and r["target"] == "qemu"
    assert r["outputs_match"]  # TFLM matches the interpreter exactly on kws (both variants)
    f = r["figures"]
    assert f["count_source"] == "qemu-icount" and f["count_unit"] == "instructions"
    assert len(set(f["count"]["all"])) <= 2  # deterministic per input (two inputs may differ)
    # TFLM's reference kernels need several times CMSIS-NN's instructions; both are millions on KWS
    assert 5e6 < f["count"]["median"] < (2e7 if engine == "tflm-cmsis" else 1e8)
    # the arena is the least AllocateTensors succeeds in; what the device touched lies within it
    assert f["arena_used_bytes"] <= f["arena_bytes"] and 0 < f["arena_high_water_bytes"] <= f["arena_bytes"]
    assert f["peak_sram_bytes"] == f["arena_bytes"] + f["peak_stack_bytes"] + f["static_ram_bytes"]
    assert f["weight_bytes"] == shared_model("kws").stat().st_size  # the .tflite itself is in flash
    assert f["code_bytes"] > 30_000  # the interpreter and its kernels
    (stored,) = list(results.read("bench", tmp_path))
    assert stored["engine"] == engine and stored["figures"]["count"] == f["count"]


def test_library_is_built_once_and_reused(tflm_sources, builds):
    said: list[str] = []
    board = get_board("nucleo-f746")
    lib, key = tflm.library(board, "-O2", "cmsis", said.append)
    again, key2 = tflm.library(board, "-O2", "cmsis", said.append)
    assert (lib, key) == (again, key2) and lib.is_file()
    mtime = lib.stat().st_mtime_ns
    prepare(board, zoo.build("digits_cnn"), "qemu",
            build_dir=str(builds), say=said.append, engine="tflm-cmsis")  # fmt: skip
    assert lib.stat().st_mtime_ns == mtime and not any("building the TFLM library" in s for s in said)


def test_ad01_deviates_from_the_interpreter_and_it_is_reported(tflm_sources, builds, tmp_path):
    """TFLM's FULLY_CONNECTED rounds twice where the interpreter's reference kernel rounds once: a finding
    about TFLM, shown per engine, while the native engine stays bit-exact."""
    rep = run_compare(
        CompareOptions("nucleo-f746", str(shared_model("ad01")), engines=("native", "tflm-cmsis"),
                       results_dir=str(tmp_path), build_dir=str(builds)),
    )  # fmt: skip
    assert rep["expected_from"] == "TFLite interpreter"
    native, cmsis = rep["rows"]
    assert native["status"] == cmsis["status"] == "ok"
    assert native["outputs_match"] and native["deviation"] is None and native["ratio"] == 1.0
    assert cmsis["outputs_match"] is False
    assert "(102 of 640 differ)" in cmsis["deviation"]
    assert cmsis["ratio"] == pytest.approx(cmsis["count"] / native["count"])
    # TFLM's arena_used_bytes() leaves out its planner's scratch: on ad01 AllocateTensors needs more
    assert cmsis["arena_bytes"] > cmsis["arena_used_bytes"]
    lines = list(results.read("compare", tmp_path))
    assert [x["engine"] for x in lines] == ["native", "tflm-cmsis"] and {x["run_id"] for x in lines} == {
        rep["compare_id"]
    }


def test_compare_cli_table_json_and_csv(tflm_sources, builds, tmp_path, capsys, monkeypatch):
    args = ["compare", "--board", "nucleo-f412", "--model", str(shared_model("kws")),
            "--engines", "native,tflm-cmsis,tflm-ref", "--results", str(tmp_path)]  # fmt: skip
    monkeypatch.setenv("HARNESS_BUILD_DIR", str(builds))
    assert main([*args, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [r["engine"] for r in rep["rows"]] == ["native", "tflm-cmsis", "tflm-ref"]
    assert all(r["outputs_match"] for r in rep["rows"]) and rep["count_unit"] == "instructions"
    ref = rep["rows"][2]
    assert ref["ratio"] > rep["rows"][1]["ratio"] > 0  # the reference kernels are the slowest
    assert main([*args, "--csv"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("board,model,count_unit,engine,count,ratio,")
    assert [line.split(",")[3] for line in text[1:]] == ["native", "tflm-cmsis", "tflm-ref"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "instructions (QEMU: not cycles)" in out and "= TFLite" in out and "tflm-ref" in out
    assert "DIFFER" not in out and max(len(line) for line in out.splitlines()) <= 80


def test_an_arena_too_small_is_the_engines_own_words(tflm_sources, tmp_path):
    """A firmware whose arena cannot hold the model: TFLM's AllocateTensors says so at boot, and the host
    shows that message with the sizes, at once, instead of waiting for a HELLO."""
    from harness.build import build_firmware
    from harness.model import load_model
    from harness.targets.qemu import QemuTarget

    board = get_board("nucleo-f746")
    g = load_model(shared_model("kws"))
    io = tflm.io_specs(g, g.inputs), tflm.io_specs(g, g.outputs)
    tflm.write_model(tmp_path / "m", g, g.source, *io, 4096, g.macs())
    parts = tflm.engine_parts(board, "-O2", "cmsis", lambda _m: None)
    build = build_firmware(tmp_path / "m", board, qemu=True, cache_dir=tmp_path / "fw", engine=parts)
    with pytest.raises(EngineFailed, match=r"engine failed on the device: AllocateTensors in a 4096 B arena: \w"):
        with QemuTarget(board).open(build, timeout=10):
            pass


def test_accuracy_with_the_tflm_engine(tflm_sources, builds, tmp_path):
    from harness.accuracy import run_accuracy

    rep = run_accuracy("nucleo-f746", "digits_cnn", "digits", limit=30, results_dir=tmp_path,
                       build_dir=str(builds), engine_name="tflm-cmsis", progress=False)  # fmt: skip
    f = rep["figures"]
    assert f["samples"] == 30 and f["agreement"] == 1.0  # TFLM agrees with the reference on digits_cnn
    (rec,) = [r for r in results.read("accuracy", tmp_path)]
    assert rec["engine"] == "tflm-cmsis"


def test_nightly_tracks_the_native_over_tflm_cmsis_ratio(tflm_sources, builds, tmp_path):
    from harness.nightly import RATIO, run_nightly

    matrix = tmp_path / "m.toml"
    matrix.write_text(
        'name = "engines"\n[defaults]\ntarget = "qemu"\n'
        '[matrix]\nboards = ["nucleo-f746"]\nmodels = ["mlperf_kws"]\nengines = ["native", "tflm-cmsis"]\n'
    )
    run = run_nightly(matrix, results_dir=tmp_path / "r", build_dir=str(builds), reports=False)
    cells = {c["cell"]: c for c in run.cells}
    assert set(cells) == {"nucleo-f746:mlperf_kws", "nucleo-f746:mlperf_kws:tflm-cmsis",
                          "nucleo-f746:mlperf_kws:native/tflm-cmsis"}  # fmt: skip
    nat, tf = cells["nucleo-f746:mlperf_kws"]["metrics"], cells["nucleo-f746:mlperf_kws:tflm-cmsis"]["metrics"]
    ratio = cells["nucleo-f746:mlperf_kws:native/tflm-cmsis"]["metrics"][RATIO]
    assert ratio == pytest.approx(nat["instructions"] / tf["instructions"], abs=1e-6)
    assert run.exit_code == 0
    # judged against itself the next night: the ratio is compared and unchanged
    again = run_nightly(matrix, results_dir=tmp_path / "r", build_dir=str(builds), reports=False)
    (rc,) = [c for c in again.cells if c["cell"].endswith("native/tflm-cmsis")]
    (check,) = [c for c in rc["verdict"]["checks"] if c["metric"] == RATIO]
    assert check["delta"] == 0 and rc["verdict"]["status"] == "ok" and again.exit_code == 0


def test_tflm_counts_repeat_exactly(tflm_sources, builds):
    board = get_board("nucleo-f746")
    engine = prepare(board, zoo.build("mlperf_kws"), "qemu",
                     build_dir=str(builds), engine="tflm-ref")  # fmt: skip
    x = [np.zeros(tuple(s.shape), np.int8) for s in engine.spec.inputs]
    with engine.open(60) as runner:
        _, a = runner.run(x, repetitions=3)
        _, b = runner.run(x, repetitions=2)
    assert len(set(a.counts + b.counts)) == 1


def test_a_model_too_big_for_the_machine_does_not_fit(tflm_sources, builds, tmp_path):
    """netduinoplus2 (128 KB of SRAM) cannot hold mcunet_vww's 150 KB TFLM arena: the sizing run says so as a
    DoesNotFitError with TFLM's own words, and the failure is recorded."""
    from harness.errors import DoesNotFitError

    with pytest.raises(DoesNotFitError, match=r"TFLM cannot allocate mcunet_vww1 in the [\d,]+ B .*AllocateTensors"):
        run_bench(BenchOptions("netduinoplus2", "mcunet_vww", engine="tflm-cmsis", results_dir=str(tmp_path),
                               build_dir=str(builds)))  # fmt: skip
    (stored,) = list(results.read("bench", tmp_path))
    assert stored["status"] == "failed" and stored["error"] == "DoesNotFitError"
    assert stored["reason"].startswith("TFLM cannot allocate")


def test_tflm_per_layer_counts_tile_the_invoke(tflm_sources, builds, tmp_path):
    """bench --layers with TFLM: a profiler stamps the counter at the end of each operator, so TFLM's
    per-op cost sits beside the native engine's, layer for layer."""
    from harness.model import load_model

    opts = dict(inputs=1, repetitions=1, results_dir=str(tmp_path), build_dir=str(builds), engine="tflm-cmsis")
    plain = run_bench(BenchOptions("nucleo-f746", str(shared_model("kws")), **opts))
    r = run_bench(BenchOptions("nucleo-f746", str(shared_model("kws")), layers=True, **opts))
    ops = load_model(shared_model("kws")).ops
    layers = r["layers"]
    assert [(x["index"], x["op"]) for x in layers] == [(k, op.kind) for k, op in enumerate(ops)]
    assert all(x["count"] > 0 for x in layers if x["macs"]) and r["outputs_match"]
    total = r["figures"]["count"]["median"]
    counts = [x["count"] for x in layers]
    assert 0 <= total - sum(counts) <= 120  # Invoke's own work before the first and after the last operator
    extra = total - plain["figures"]["count"]["median"]  # what the profiler's calls cost
    assert 0 < extra < 100 * len(layers) and "profiling build" in r["figures"]["count_note"]
