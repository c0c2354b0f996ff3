"""The graph builder: int8 quantization as TFLite's converters write it (per-channel symmetric weights, int32
biases at input x weight scale), calibrated activations that track the float network, every layer kind
valid for the interpreter, the numpy reference and the generated C."""

from __future__ import annotations

import numpy as np
import pytest

from harness import oracle, reference
from harness.engines.native import generate
from harness.model import to_tflite_bytes
from harness.model.builder import GraphBuilder
from harness.targets.host import HostModel


def _calib(shape, seed=0, n=4):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape[1:]))


def _quantize_input(graph, x):
    t = graph.tensors[graph.inputs[0]]
    return np.clip(np.round(x / t.quant.s) + t.quant.zp, -128, 127).astype(np.int8).reshape(t.shape)


def _every_layer_kind(seed=3, mean=True) -> tuple[GraphBuilder, object]:
    b = GraphBuilder("all_layers", _calib((1, 9, 9, 3), seed), seed=seed)
    x = b.conv(b.input, 8, 3, 2, "SAME", "RELU6", name="conv")  # 9 -> 5, odd plane, SAME stride 2
    d = b.dwconv(x, 5, 1, "SAME", "RELU", mult=2, name="dw")  # 16 channels
    p = b.conv(d, 8, 1, act="NONE", name="project")
    r = b.add(x, p, name="residual")
    m = b.max_pool(r, 2, 2, "SAME", name="maxpool")  # 5 -> 3
    a = b.avg_pool(r, 3, 2, "VALID", name="avgpool")  # 5 -> 2
    a = b.pad(a, ((0, 0), (0, 1), (1, 0), (0, 0)), name="pad")  # 2 -> 3
    c = b.concat([m, a, b.conv(m, 4, 1, name="side")], axis=3, name="concat")  # pools' outputs are requantized
    g = b.mean(c, name="mean") if mean else b.reshape(b.global_avgpool(c), (1, b.shape(c)[3]))
    f = b.fc(g, 10, "RELU", name="fc1")
    out = b.softmax(b.fc(f, 4, name="fc2"))
    return b, b.finish(out)


def test_given_weights_are_per_channel_symmetric_int8_with_int32_bias_at_input_times_weight_scale():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (6, 3, 3, 2)) * np.array([0.01, 0.1, 1, 3, 10, 0.5])[:, None, None, None]
    bias = rng.normal(0, 1, 6)
    b = GraphBuilder("given", _calib((1, 6, 6, 2)))
    y = b.conv(b.input, 6, 3, 1, "VALID", "NONE", name="conv", weights=(w, bias))
    g = b.finish(y)
    op = g.ops[0]
    wt, bt, xt = (g.tensors[i] for i in (op.inputs[1], op.inputs[2], op.inputs[0]))
    assert wt.dtype == "int8" and wt.quant.axis == 0 and len(wt.quant.scale) == 6
    assert np.all(wt.quant.zero_point == 0)
    assert np.all(np.abs(wt.data).reshape(6, -1).max(axis=1) == 127)  # each channel uses its full range
    assert np.all(wt.data >= -127)  # symmetric: -128 never used
    np.testing.assert_allclose(wt.data * wt.quant.scale[:, None, None, None], w, atol=wt.quant.scale.max() / 2)
    assert bt.dtype == "int32" and np.all(bt.quant.zero_point == 0)
    np.testing.assert_allclose(bt.quant.scale, (wt.quant.scale.astype(np.float64) * xt.quant.s).astype(np.float32))
    np.testing.assert_allclose(bt.data * bt.quant.scale, bias, atol=float(bt.quant.scale.max()))
    assert g.tensors[y].shape == (1, 4, 4, 6) and op.name == "conv"


def test_fully_connected_weights_are_per_tensor_as_converters_write_them():
    b = GraphBuilder("fc", _calib((1, 12)))
    g = b.finish(b.fc(b.input, 5, name="dense"))
    wt = g.tensors[g.ops[0].inputs[1]]
    assert wt.shape == (5, 12) and len(wt.quant.scale) == 1 and np.abs(wt.data).max() == 127


def _bit_exact(g, tmp_path) -> None:
    data = to_tflite_bytes(g)
    host = HostModel(generate(g, tmp_path / "gen"), cache_dir=tmp_path / "host")
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = [rng.integers(-128, 128, g.tensors[g.inputs[0]].shape, dtype=np.int8)]
        want = reference.run(g, x)[0]
        assert np.array_equal(np.asarray(oracle.run_tflite(data, x)[0]).reshape(want.shape), want)
        assert np.array_equal(np.asarray(host.run(x)[0]).reshape(want.shape), want)


def test_every_layer_kind_is_bit_exact_in_interpreter_reference_and_generated_c(tmp_path):
    _, g = _every_layer_kind(mean=False)
    kinds = {op.kind for op in g.ops}
    assert kinds >= {
        "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD",
        "CONCATENATION", "RESHAPE", "SOFTMAX", "QUANTIZE",
    }  # fmt: skip
    _bit_exact(g, tmp_path)


def test_mean_is_bit_exact_in_interpreter_reference_and_generated_c(tmp_path):
    _, g = _every_layer_kind(mean=True)
    assert "MEAN" in {op.kind for op in g.ops}
    _bit_exact(g, tmp_path)


@pytest.mark.parametrize("keep_dims", [False, True])
def test_mean_over_many_shapes_and_scales_is_bit_exact(tmp_path, keep_dims):
    """LiteRT folds 1/count into the multiplier; rounding the other way is off by one on about half of
    these, so planes from 1x1 to 15x13, scale ratios above and below 1 and equal quantization all count."""
    for seed in range(8):
        rng = np.random.default_rng(50 + seed)
        h, w = (int(v) for v in rng.integers(1, 16, 2))
        calib = rng.uniform(rng.uniform(-3, 0), rng.uniform(0.1, 3), (4, h, w, 24))
        b = GraphBuilder("mean", calib, seed=seed)
        g = b.finish(b.mean(b.input, keep_dims=keep_dims))
        out, inp = g.tensors[g.outputs[0]], g.tensors[g.inputs[0]]
        if seed % 4 == 1:
            out.quant = inp.quant  # equal quantization: TFLite's other branch, the plain integer mean
        elif seed % 4 == 2:
            out.quant.scale = out.quant.scale * np.float32(0.07)  # output scale finer than the input's
        _bit_exact(g, tmp_path / str(seed))


def test_int8_graph_tracks_the_float_calibration_pass():
    """Every layer's int8 output, dequantized, is close to the float value the builder calibrated on: the
    scales and zero points describe what the layer really computes."""
    b, g = _every_layer_kind()
    calib = _calib((1, 9, 9, 3), 3)
    for n in range(len(calib)):
        values = reference.run_all(g, [_quantize_input(g, calib[n])])
        for op in g.ops:
            t = op.outputs[0]
            q = g.tensors[t].quant
            got = (values[t].astype(np.float64) - q.zp) * q.s
            want = b.values[t][n]
            span = 255 * q.s
            assert np.max(np.abs(got - want)) <= 0.08 * span, op.name


def test_calibrated_layers_use_the_int8_range_without_saturating():
    b, g = _every_layer_kind()
    calib = _calib((1, 9, 9, 3), 3)
    values = reference.run_all(g, [_quantize_input(g, calib[0])])
    for op in g.ops:
        if op.kind in ("SOFTMAX", "MEAN", "FULLY_CONNECTED", "QUANTIZE"):
            continue  # a handful of outputs: too few values to judge
        y = values[op.outputs[0]]
        assert len(np.unique(y)) >= 16, op.name
        assert np.mean(y == 127) < 0.05, op.name  # -128 is a ReLU's zero, not saturation


def test_softmax_output_has_tflites_fixed_quantization():
    _, g = _every_layer_kind()
    q = g.tensors[g.outputs[0]].quant
    assert q.s == pytest.approx(1 / 256) and q.zp == -128


def test_synthetic_weights_are_deterministic_per_seed():
    a, b, c = (to_tflite_bytes(_every_layer_kind(seed)[1]) for seed in (3, 3, 4))
    assert a == b and a != c


def test_synthetic_weight_scales_differ_per_channel():
    b = GraphBuilder("syn", _calib((1, 8, 8, 4)), seed=5)
    g = b.finish(b.conv(b.input, 32, 3, name="conv"))
    s = g.tensors[g.ops[0].inputs[1]].quant.scale
    assert s.max() / s.min() > 1.5  # like a trained network's folded batch norm, not one shared scale


def test_input_range_fixes_the_input_quantization():
    b = GraphBuilder("pix", np.zeros((2, 4, 4, 1)) + 3, input_range=(0.0, 16.0))
    g = b.finish(b.conv(b.input, 2, 3, name="c"))
    q = g.tensors[g.inputs[0]].quant
    assert q.zp == -128 and q.s == pytest.approx(16 / 255)
