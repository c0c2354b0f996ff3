"""The engine stage without a device: choosing engines, what the TFLM engine generates and refuses, and the
errors a user meets before anything runs (unknown engine, sources absent, an op TFLM does not register)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import THIRD_PARTY, require_tools, shared_model, skip_external

from harness import engines
from harness.bench import BenchOptions, run_bench
from harness.cli import main
from harness.engines import tflm
from harness.errors import HarnessError, UnsupportedModelError
from harness.model import Graph, Op, Quant, Tensor, load_model


def q(s=0.05, z=0):
    return Quant(np.array([s], np.float32), np.array([z]))


def test_engine_lists_are_checked():
    assert engines.parse_list("native, tflm-cmsis,native") == ["native", "tflm-cmsis"]
    with pytest.raises(HarnessError, match=r"unknown engine 'tflm'; engines: native, tflm-cmsis, tflm-ref"):
        engines.parse_list("native,tflm")
    with pytest.raises(HarnessError, match="no engine named"):
        engines.parse_list(" , ")


def test_an_op_tflm_does_not_register_names_op_and_layer():
    tensors = [Tensor("in", (1, 4), "int8", q()), Tensor("out", (1, 4), "int8", q())]
    g = Graph("m", tensors, [Op("TANH", [0], [1], name="the_tanh")], [0], [1])
    with pytest.raises(UnsupportedModelError) as e:
        tflm.registrations(g)
    msg = str(e.value)
    assert "TANH" in msg and "the_tanh" in msg and "layer 0" in msg and "registers CONV_2D" in msg


def test_registrations_are_the_models_ops_once_each():
    g = load_model(shared_model("kws"))
    calls = tflm.registrations(g)
    kinds = {op.kind for op in g.ops}
    assert len(calls) == len(kinds) == len(set(calls))
    assert "AddConv2D(tflite::Register_CONV_2D_INT8())" in calls


def test_sources_absent_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_TFLM_ROOT", str(tmp_path / "nothing"))
    with pytest.raises(tflm.SourcesMissing) as e:
        tflm.sources_root()
    msg = str(e.value)
    assert "harness engines fetch tflm" in msg and "HARNESS_TFLM_ROOT" in msg and "tflite-micro/" in msg
    # the same words from the command line, as one line and exit 2, and recorded as a failed bench
    rc = main(["bench", "--board", "nucleo-f746", "--model", "digits_cnn", "--engine", "tflm-cmsis",
               "--results", str(tmp_path / "r")])  # fmt: skip
    assert rc == 2
    assert "harness engines fetch tflm" in "".join(_stored_reasons(tmp_path / "r"))


def _stored_reasons(path):
    from harness import results

    return [r.get("reason", "") for r in results.read("bench", path)]


def test_tflm_on_the_host_target_is_refused(tmp_path):
    with pytest.raises(HarnessError, match="not on the host target"):
        run_bench(
            BenchOptions("nucleo-f746", "digits_cnn", target="host", engine="tflm-ref", results_dir=str(tmp_path))
        )


def test_write_model_embeds_the_file_and_the_abi(tmp_path):
    path = shared_model("kws")
    g = load_model(path)
    from harness.engines.native import IOSpec

    ins = [IOSpec(t, g.tensors[t].name, 0, g.tensors[t].nbytes, g.tensors[t].shape, 0.5, -3) for t in g.inputs]
    outs = [IOSpec(t, g.tensors[t].name, 0, g.tensors[t].nbytes, g.tensors[t].shape, 0.25, 7) for t in g.outputs]
    tflm.write_model(tmp_path, g, g.source, ins, outs, 4096, g.macs())
    assert (tmp_path / "model.tflite").read_bytes() == path.read_bytes()  # the user's file, byte for byte
    h = (tmp_path / "model.h").read_text()
    assert "#define MODEL_ARENA_BYTES 4096u" in h and "#define TFLM_SIZING 0" in h
    assert f"#define MODEL_INPUT_BYTES {ins[0].bytes}u" in h
    io = (tmp_path / "model_io.c").read_text()
    assert re.search(r"\{0u, 490u, 0\.5f, -3, 4, \{1, 49, 10, 1\}\}", io), io
    ops = (tmp_path / "tflm_ops.h").read_text()
    assert f"#define TFLM_NUM_OPS {len(tflm.registrations(g))}" in ops
    assert ".incbin" in (tmp_path / "model_data.S").read_text()


def test_library_sources_share_the_core_and_drop_float_kernels(tmp_path):
    root = THIRD_PARTY
    if not (root / "tflite-micro").is_dir():
        skip_external(f"{root} is absent (../shared/third_party is only present in CI)")
    core_c, kernels_c = tflm.library_sources(root, "cmsis")
    core_r, kernels_r = tflm.library_sources(root, "ref")
    assert core_c == core_r  # one core for both variants
    names_c = {p.name for p in kernels_c}
    assert "arm_convolve_s8.c" in names_c and not any(n.endswith(("_f16.c", "_f32.c")) for n in names_c)
    assert not any("cmsis" in str(p) for p in kernels_r)
    assert {p.name for p in core_c}.isdisjoint({"debug_log.cc", "test_helpers.cc", "system_setup.cc"})
    # a full clone's tests are left out
    fake = tmp_path / "tree"
    for rel in ("tensorflow/lite/micro/micro_log.cc", "tensorflow/lite/micro/micro_log_test.cc"):
        (fake / "tflite-micro" / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / "tflite-micro" / rel).write_text("")
    assert [p.name for p in tflm.library_sources(fake, "ref")[0]] == ["micro_log.cc"]


def _repo(path, files: dict[str, str]) -> str:
    """A real git repository with `files` committed; returns its commit."""
    import subprocess

    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def test_fetch_clones_the_pinned_commits_and_patches_flatbuffers(tmp_path, monkeypatch, capsys):
    """`harness engines fetch tflm` with real git, from local repositories standing in for the public ones
    (these machines have no network): each tree at its pinned commit, TFLM's flatbuffers patch applied."""
    require_tools("git")
    patch = "--- a/include/flatbuffers/base.h\n+++ b/include/flatbuffers/base.h\n@@ -1 +1 @@\n-upstream\n+patched\n"
    pinned = {}
    for name in tflm.TREES:
        files = {"README": name}
        if name == "tflite-micro":
            files["tensorflow/lite/micro/tools/make/flatbuffers.patch"] = patch
        if name == "flatbuffers":
            files["include/flatbuffers/base.h"] = "upstream\n"
        pinned[name] = (str(tmp_path / "remote" / name), _repo(tmp_path / "remote" / name, files))
    monkeypatch.setattr(tflm, "PINNED", pinned)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_TFLM_ROOT", raising=False)
    assert main(["engines", "fetch", "tflm"]) == 0
    root = tmp_path / "cache" / "harness" / "tflm-src"
    assert (root / "flatbuffers" / "include/flatbuffers/base.h").read_text() == "patched\n"
    assert tflm.sources_root() == root and "TFLite Micro sources ready" in capsys.readouterr().out
    assert main(["engines", "fetch", "tflm"]) == 0 and "already at" in capsys.readouterr().out
    assert main(["engines", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["available"] for r in rows] == [True, True, True]
