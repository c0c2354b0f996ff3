"""The .tflite reader and writer against the real models and the real interpreter."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from conftest import SHARED_MODEL_FILES, shared_model

from harness.model import load_model, to_tflite_bytes
from harness.model.boundary import dequantize_output, quantize_input, split_boundary
from harness.oracle import litert_compatible, run_tflite

# From ../shared/models/README.md: tensor and op counts, op histograms.
EXPECTED = {
    "vww": (89, {"CONV_2D": 14, "DEPTHWISE_CONV_2D": 13, "AVERAGE_POOL_2D": 1, "RESHAPE": 1,
                 "FULLY_CONNECTED": 1, "SOFTMAX": 1}),
    "kws": (35, {"CONV_2D": 5, "DEPTHWISE_CONV_2D": 4, "AVERAGE_POOL_2D": 1, "RESHAPE": 1,
                 "FULLY_CONNECTED": 1, "SOFTMAX": 1}),
    "ic": (38, {"CONV_2D": 9, "ADD": 3, "AVERAGE_POOL_2D": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1, "SOFTMAX": 1}),
    "ad01": (31, {"FULLY_CONNECTED": 10}),
    "person_detect": (89, {"DEPTHWISE_CONV_2D": 14, "CONV_2D": 14, "AVERAGE_POOL_2D": 1, "RESHAPE": 1,
                           "SOFTMAX": 1}),
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(SHARED_MODEL_FILES))
def test_reference_models_load_as_documented(key):
    g = load_model(shared_model(key))
    tensors, ops = EXPECTED[key]
    assert len(g.tensors) == tensors
    assert dict(collections.Counter(op.kind for op in g.ops)) == ops
    assert all(g.tensors[t].dtype == "int8" for t in g.inputs + g.outputs)


@pytest.mark.parametrize("key", sorted(SHARED_MODEL_FILES))
def test_round_trip_is_identical(key):
    g = load_model(shared_model(key))
    g2 = load_model(to_tflite_bytes(g))
    assert [(t.name, t.shape, t.dtype) for t in g.tensors] == [(t.name, t.shape, t.dtype) for t in g2.tensors]
    for a, b in zip(g.tensors, g2.tensors, strict=True):
        assert (a.data is None) == (b.data is None)
        if a.data is not None:
            assert np.array_equal(a.data, b.data)
        assert (a.quant is None) == (b.quant is None)
        if a.quant is not None:
            assert np.array_equal(a.quant.scale, b.quant.scale)
            assert np.array_equal(a.quant.zero_point, b.quant.zero_point)
            assert a.quant.axis == b.quant.axis
    assert [(o.kind, o.inputs, o.outputs, o.options) for o in g.ops] == [
        (o.kind, o.inputs, o.outputs, o.options) for o in g2.ops
    ]
    assert (g.inputs, g.outputs) == (g2.inputs, g2.outputs)


@pytest.mark.parametrize("key", ["vww", "kws", "ic", "ad01"])
def test_written_file_runs_like_the_original(key):
    path = shared_model(key)
    original = path.read_bytes()
    rewritten = to_tflite_bytes(load_model(path))
    rng = np.random.default_rng(3)
    g = load_model(path)
    for _ in range(2):
        xs = [rng.integers(-128, 128, g.tensors[t].shape, dtype=np.int8) for t in g.inputs]
        for a, b in zip(run_tflite(original, xs), run_tflite(rewritten, xs), strict=True):
            assert np.array_equal(a, b)


def test_litert_copy_differs_from_the_original_only_in_the_stray_axes():
    raw = shared_model("person_detect").read_bytes()
    patched = litert_compatible(raw)
    diff = [i for i, (a, b) in enumerate(zip(raw, patched, strict=True)) if a != b]
    strays = sum(1 for t in load_model(raw).tensors if len(t.shape) == 1 and t.quant is not None)
    # one little-endian int32 3 -> 0 per patched tensor: one changed byte each, and no other byte
    assert diff and len(diff) <= strays and all(raw[i] == 3 and patched[i] == 0 for i in diff)
    for key in ("vww", "kws", "ic", "ad01"):
        original = shared_model(key).read_bytes()
        assert litert_compatible(original) == original


def test_person_detect_stray_axis_is_accepted_and_fixed_for_litert():
    raw = shared_model("person_detect").read_bytes()
    g = load_model(raw)  # TFLM tolerates quantized_dimension 3 on the 1-D biases; so do we
    biases = [t for t in g.tensors if len(t.shape) == 1 and t.quant is not None and t.quant.per_channel]
    assert biases and all(t.quant.axis == 0 for t in biases)
    out = run_tflite(litert_compatible(raw), [np.zeros((1, 96, 96, 1), np.int8)])[0]
    # LiteRT's default kernels give [73, -73]; the reference kernels (our oracle) round one step differently.
    # Only the oracle's answer is accepted: anything else means the interpreter is no longer BUILTIN_REF.
    assert out.reshape(-1).tolist() == [72, -72]


def test_float_boundary_split_and_round_trip(tmp_path):
    from harness.model.ir import Graph, Op, Quant, Tensor

    rng = np.random.default_rng(0)
    q = lambda s, z: Quant(np.array([s], np.float32), np.array([z]))  # noqa: E731
    t = [
        Tensor("x_float", (1, 5, 5, 2), "float32"),
        Tensor("x_q", (1, 5, 5, 2), "int8", q(0.02, 3)),
        Tensor("w", (4, 3, 3, 2), "int8", Quant(np.full(4, 0.01, np.float32), np.zeros(4), 0),
               rng.integers(-127, 128, (4, 3, 3, 2), dtype=np.int8)),
        Tensor("b", (4,), "int32", Quant(np.full(4, 0.0002, np.float32), np.zeros(4), 0),
               rng.integers(-500, 500, 4, dtype=np.int32)),
        Tensor("y_q", (1, 5, 5, 4), "int8", q(0.05, -10)),
        Tensor("y_float", (1, 5, 5, 4), "float32"),
    ]  # fmt: skip
    ops = [
        Op("QUANTIZE", [0], [1]),
        Op("CONV_2D", [1, 2, 3], [4], {"stride": (1, 1), "dilation": (1, 1), "padding": "SAME", "activation": "RELU"}),
        Op("DEQUANTIZE", [4], [5]),
    ]
    g = load_model(to_tflite_bytes(Graph("boundary", t, ops, [0], [5])))
    interior, ins, outs = split_boundary(g)
    assert [op.kind for op in interior.ops] == ["CONV_2D"]
    assert ins[0].scale == pytest.approx(0.02) and ins[0].zero_point == 3
    assert outs[0].zero_point == -10
    x = rng.normal(0, 1, (1, 5, 5, 2)).astype(np.float32)
    want = run_tflite(to_tflite_bytes(g), [x])[0]
    from harness import reference

    inner = reference.run(interior, [quantize_input(x, ins[0])])[0]
    assert np.array_equal(dequantize_output(inner, outs[0]), want)
    assert np.array_equal(reference.run(g, [x])[0], want)
