"""The zoo: every model is a real int8 .tflite that the TFLite interpreter runs, equal to the numpy
reference and the host-built generated C; architectures match their published figures; digits_cnn is
really trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_model

from harness import oracle, reference, zoo
from harness.engines.native import generate
from harness.errors import HarnessError
from harness.model import load_model, to_tflite_bytes
from harness.targets.host import HostModel
from harness.zoo import architectures as arch

# Published figures (MACs: conv, depthwise and FC multiply-accumulates; params: weights + biases), and where
# they come from. The MCUNet figures are the model zoo's (mit-han-lab/mcunet README, "VWW" table); the MLPerf
# Tiny figures are counted from the reference .tflite files in ../shared/models (their README); MobileNetV2-0.35
# is checked at its published configuration, 224x224 with 1000 classes: 59 M MACs, 1.66 M params (Sandler et al.
# 2018 / the Keras applications table).
PUBLISHED = {
    "mcunet_vww0": (6.0e6, 0.37e6),  # mcunet-10fps_vww
    "mcunet_vww1": (11.58e6, 0.43e6),  # mcunet-5fps_vww (11.58 M MACs counted in its int8 file)
    "mcunet_vww2": (55.8e6, 0.64e6),  # mcunet-320kb-1mb_vww
    "mlperf_vww": (7.49e6, 210_852),  # vww_96_int8.tflite
    "mlperf_kws": (2.66e6, 22_606),  # kws_ref_model.tflite
    "mlperf_resnet8": (12.50e6, 77_708),  # pretrainedResnet_quant.tflite
    "mlperf_ad": (0.264e6, 265_864),  # ad01_int8.tflite
}
SYNTHETIC = sorted(n for n in zoo.ZOO if n != "digits_cnn")


def _inputs(graph, seed: int, n: int = 3) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    specs = [graph.tensors[i] for i in graph.inputs]
    sets = [[rng.integers(-128, 128, t.shape, dtype=np.int8) for t in specs] for _ in range(n)]
    return sets + [[np.full(t.shape, 127, np.int8) for t in specs]]


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_model_runs_bit_exact_in_interpreter_reference_and_generated_c(name, tmp_path):
    graph = zoo.build(name)
    data = to_tflite_bytes(graph)
    again = load_model(data)  # the file reads back as the same graph
    assert [op.kind for op in again.ops] == [op.kind for op in graph.ops] and again.macs() == graph.macs()
    host = HostModel(generate(graph, tmp_path / "gen"), cache_dir=tmp_path / "host")
    for xs in _inputs(graph, seed=len(name), n=1 if name == "mcunet_vww2" else 3):
        want = reference.run(graph, xs)
        for got in (oracle.run_tflite(data, xs), host.run(xs)):
            for g, w in zip(got, want, strict=True):
                assert np.array_equal(np.asarray(g).reshape(w.shape), w)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_macs_and_params_match_the_published_figures(name):
    graph = zoo.build(name)
    macs, params = PUBLISHED[name]
    assert graph.macs() == pytest.approx(macs, rel=0.05)
    assert graph.params() == pytest.approx(params, rel=0.05)


def test_mobilenet_v2_035_matches_its_published_configuration():
    g = arch.mobilenet_v2("mbv2_224", 224, 0.35, classes=1000)
    assert g.macs() == pytest.approx(59e6, rel=0.05) and g.params() == pytest.approx(1.66e6, rel=0.05)


@pytest.mark.parametrize(("name", "key"), [("mlperf_vww", "vww"), ("mlperf_kws", "kws"), ("mlperf_resnet8", "ic"),
                                           ("mlperf_ad", "ad01")])  # fmt: skip
def test_mlperf_architectures_have_the_reference_files_structure(name, key):
    ours, theirs = zoo.build(name), load_model(shared_model(key))

    def layers(g):
        rows = []
        for op in g.ops:
            ins = op.inputs[:1] if op.kind == "RESHAPE" else op.inputs  # the file's shape input aside
            shapes = [g.tensors[i].shape for i in ins if i >= 0]
            act = op.options.get("activation")
            rows.append((op.kind, shapes, g.tensors[op.outputs[0]].shape, op.options.get("stride"), act))
        return rows

    assert layers(ours) == layers(theirs)
    assert ours.macs() == theirs.macs() and abs(ours.params() - theirs.params()) <= 2


def test_the_same_name_gives_the_same_bytes(tmp_path):
    zoo._built.cache_clear()
    first = to_tflite_bytes(zoo.build("mcunet_vww"))
    zoo._built.cache_clear()
    assert to_tflite_bytes(zoo.build("mcunet_vww1")) == first
    path = zoo.export("mcunet_vww", tmp_path / "m.tflite")
    assert path.read_bytes() == first


def test_synthetic_layers_use_the_int8_range():
    """On image-like inputs (the calibration kind), no layer is collapsed to a few values or saturated."""
    graph = zoo.build("mcunet_vww1")
    t = graph.tensors[graph.inputs[0]]
    img = arch._image_calib(t.shape, seed=99, batch=2)
    for im in img:
        q = np.clip(np.round(im / t.quant.scale[0]) + t.quant.zero_point[0], -128, 127).astype(np.int8)
        values = reference.run_all(graph, [q.reshape(t.shape)])
        for op in graph.ops[:-1]:  # the 2-value classifier output aside
            y = values[op.outputs[0]]
            assert len(np.unique(y)) >= 16, f"{op.name}: {len(np.unique(y))} distinct values"
            assert np.mean(y == 127) < 0.05, f"{op.name} saturates"


def test_mcunet_vww_fits_nucleo_f746_with_the_planner():
    rows = {r["name"]: r for r in zoo.models_table()}
    vww = rows["mcunet_vww1"]
    assert vww["aliases"] == ["mcunet_vww"] and "nucleo-f746" in vww["fits"]
    # beside TinyEngine's published peak SRAM for the real model on STM32H743 (92 kB): the planner's arena
    assert vww["arena_bytes"] < 320 * 1024 and vww["weight_bytes"] < 1024 * 1024
    for r in rows.values():
        assert r["macs"] > 0 and r["arena_bytes"] > 0 and r["weight_bytes"] > 0 and r["weights"]


def test_digits_cnn_is_trained_and_reaches_95_percent():
    graph = zoo.build("digits_cnn")
    _, _, x_test, y_test = zoo.digits_split()
    t = graph.tensors[graph.inputs[0]]
    s, zp = float(t.quant.scale[0]), int(t.quant.zero_point[0])
    q = np.clip(np.round(x_test / s) + zp, -128, 127).astype(np.int8)
    hits = sum(
        int(np.argmax(reference.run(graph, [x.reshape(t.shape)])[0]) == y) for x, y in zip(q, y_test, strict=True)
    )
    assert hits / len(y_test) >= 0.95
    assert zoo.ZOO["digits_cnn"].weights.startswith("trained")


def test_resolve_model_names_aliases_paths_and_errors(tmp_path):
    g, label = zoo.resolve_model("mcunet_vww")
    assert label == "mcunet_vww" and g.tensors[g.inputs[0]].shape == (1, 80, 80, 3)
    path = zoo.export("mlperf_kws", tmp_path / "kws.tflite")
    g2, label2 = zoo.resolve_model(str(path))
    assert label2 == "kws.tflite" and g2.macs() == zoo.build("mlperf_kws").macs()
    with pytest.raises(HarnessError, match="mcunet_vww1"):
        zoo.resolve_model("mcunet_vww9")


def test_cli_models_and_export(tmp_path, capsys):
    from harness.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(zoo.ZOO)
    assert main(["models"]) == 0
    assert "not accuracy" in capsys.readouterr().out.replace("\n", " ")
    assert main(["export", "digits_cnn", "-o", str(tmp_path / "d.tflite")]) == 0
    assert (tmp_path / "d.tflite").read_bytes() == zoo.DIGITS_TFLITE.read_bytes()
