"""Edge-case graphs for the whole-model tests: each a few layers that push one corner of TFLite's int8
semantics (odd sizes, stride 2 with SAME padding, zero points at -128 and 127, per-channel scales spread
over three decades, ReLU6 clamps, depth multiplier 2, a residual ADD of differently scaled inputs, channel
counts that are not multiples of the kernels' 4-wide paths). ALL maps a name to a factory. Output scales
are set so every layer's int8 outputs spread over many values on random inputs (tests/test_opmodels.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from harness.model import Graph, Op, Quant, Tensor
from harness.model.ir import conv_out_size


def q(scale: float, zp: int) -> Quant:
    return Quant(np.array([scale], np.float32), np.array([zp]))


class _G:
    """A tiny graph builder for tests: layers append tensors and ops; `done` makes the Graph."""

    def __init__(self, name: str, shape: tuple[int, ...], quant: Quant, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.t: list[Tensor] = [Tensor("input", shape, "int8", quant)]
        self.ops: list[Op] = []
        self.inputs = [0]

    def _weights(self, name, wshape, cout, axis, in_scale, spread):
        # per-channel scales spread geometrically (up to three decades), symmetric int8 weights, int32 biases
        scales = np.geomspace(spread[0], spread[1], cout).astype(np.float32)
        w = Tensor(f"{name}/w", wshape, "int8", Quant(scales, np.zeros(cout, np.int64), axis))
        w.data = self.rng.integers(-127, 128, wshape, dtype=np.int8)
        b = Tensor(f"{name}/b", (cout,), "int32", Quant(scales * np.float32(in_scale), np.zeros(cout, np.int64)))
        b.data = self.rng.integers(-4000, 4000, cout, dtype=np.int32)
        self.t += [w, b]
        return len(self.t) - 2

    def _out(self, name, shape, quant) -> int:
        self.t.append(Tensor(name, shape, "int8", quant))
        return len(self.t) - 1

    def conv(self, x, cout, k, stride, padding, act, out_q, dw=False, mult=1, spread=(1e-4, 1e-1), dil=1):
        n, h, w, cin = self.t[x].shape
        name = f"l{len(self.ops)}"
        kh, kw = (k, k) if isinstance(k, int) else k
        if dw:
            cout = cin * mult
            wi = self._weights(name, (1, kh, kw, cout), cout, 3, self.t[x].quant.scale[0], spread)
        else:
            wi = self._weights(name, (cout, kh, kw, cin), cout, 0, self.t[x].quant.scale[0], spread)
        oh = conv_out_size(h, kh, stride, dil, padding)[0]
        ow = conv_out_size(w, kw, stride, dil, padding)[0]
        y = self._out(name, (n, oh, ow, cout), out_q)
        opts = {"stride": (stride, stride), "dilation": (dil, dil), "padding": padding, "activation": act}
        if dw:
            opts["depth_multiplier"] = mult
        self.ops.append(Op("DEPTHWISE_CONV_2D" if dw else "CONV_2D", [x, wi, wi + 1], [y], opts, name=name))
        return y

    def fc(self, x, cout, act, out_q, spread=(1e-3, 1e-2)):
        cin = int(np.prod(self.t[x].shape[1:]))
        name = f"l{len(self.ops)}"
        # FULLY_CONNECTED in TFLite files is per-tensor: one scale
        wi = self._weights(name, (cout, cin), 1, 0, self.t[x].quant.scale[0], (spread[0], spread[0]))
        self.t[wi].quant = Quant(self.t[wi].quant.scale[:1], np.zeros(1, np.int64))
        self.t[wi + 1] = Tensor(
            f"{name}/b",
            (cout,),
            "int32",
            Quant(np.float32(spread[0] * self.t[x].quant.scale[0]).reshape(1), np.zeros(1, np.int64)),
            self.rng.integers(-4000, 4000, cout, dtype=np.int32),
        )
        y = self._out(name, (1, cout), out_q)
        self.ops.append(Op("FULLY_CONNECTED", [x, wi, wi + 1], [y], {"activation": act}, name=name))
        return y

    def add(self, a, b, act, out_q):
        y = self._out(f"l{len(self.ops)}", self.t[a].shape, out_q)
        self.ops.append(Op("ADD", [a, b], [y], {"activation": act}, name=f"l{len(self.ops)}"))
        return y

    def pool(self, kind, x, k, stride, padding, out_q=None):
        n, h, w, c = self.t[x].shape
        shape = (n, conv_out_size(h, k, stride, 1, padding)[0], conv_out_size(w, k, stride, 1, padding)[0], c)
        y = self._out(f"l{len(self.ops)}", shape, out_q or self.t[x].quant)
        opts = {"filter": (k, k), "stride": (stride, stride), "padding": padding, "activation": "NONE"}
        self.ops.append(Op(kind, [x], [y], opts, name=f"l{len(self.ops)}"))
        return y

    def reshape(self, x, shape):
        y = self._out(f"l{len(self.ops)}", shape, self.t[x].quant)
        self.ops.append(Op("RESHAPE", [x], [y], {"new_shape": shape}, name=f"l{len(self.ops)}"))
        return y

    def done(self, *outputs: int) -> Graph:
        return Graph(self.name, self.t, self.ops, self.inputs, list(outputs))


def conv_stride2_same_odd() -> Graph:
    """Odd input (9x7), stride 2 with SAME padding (TFLite pads more at the bottom/right), 3 and 5 input
    channels, ReLU6 that clamps, output channels 1 and 6 (not multiples of 4)."""
    g = _G("conv_s2_same_odd", (1, 9, 7, 3), q(0.02, -128), 1)
    x = g.conv(0, 5, 3, 2, "SAME", "RELU6", q(6 / 255, -128))
    x = g.conv(x, 6, 3, 2, "SAME", "RELU", q(0.05, -128), spread=(1e-3, 1e-1))
    x = g.conv(x, 1, 1, 1, "VALID", "NONE", q(0.5, 0), spread=(0.05, 0.05))
    return g.done(x)


def zero_points_at_the_extremes() -> Graph:
    """Input zero point 127 (a mostly negative range), outputs at -128 and 127, 5x5 kernel VALID."""
    g = _G("zp_extremes", (1, 8, 8, 4), q(0.03, 127), 2)
    a = g.conv(0, 7, 5, 1, "VALID", "NONE", q(0.04, 127), spread=(1e-4, 1e-1))
    b = g.conv(a, 8, 1, 1, "SAME", "RELU", q(0.02, -128))
    return g.done(b)


def depthwise_variants() -> Graph:
    """Depthwise 7x7 stride 2 SAME on an odd plane, then 5x5 stride 1, then 3x3 with multiplier 2; 5 and 10
    channels; ReLU6 clamps."""
    g = _G("depthwise_variants", (1, 11, 9, 5), q(0.05, -3), 3)
    x = g.conv(0, 0, 7, 2, "SAME", "RELU6", q(6 / 255, -128), dw=True)
    x = g.conv(x, 0, 5, 1, "SAME", "RELU6", q(6 / 255, -128), dw=True, spread=(1e-3, 3e-1))
    x = g.conv(x, 0, 3, 1, "VALID", "NONE", q(0.1, 10), dw=True, mult=2)
    return g.done(x)


def residual_with_different_scales() -> Graph:
    """An inverted residual block whose ADD rescales two inputs of very different scales, and a second ADD
    with ReLU: stride-1 expand / depthwise / project, as MCUNet's blocks are."""
    g = _G("residual_scales", (1, 7, 5, 6), q(0.011, 4), 4)
    e = g.conv(0, 18, 1, 1, "SAME", "RELU6", q(6 / 255, -128))
    d = g.conv(e, 0, 3, 1, "SAME", "RELU6", q(6 / 255, -128), dw=True)
    p = g.conv(d, 6, 1, 1, "SAME", "NONE", q(0.19, -20))
    r = g.add(0, p, "NONE", q(0.2, 3))
    r2 = g.add(r, 0, "RELU", q(0.05, -128))
    return g.done(r2)


def classifier_head() -> Graph:
    """Conv, global average pool (VALID pool over the whole plane), RESHAPE, FULLY_CONNECTED with 10
    outputs, SOFTMAX: a classifier's tail."""
    g = _G("classifier_head", (1, 6, 6, 8), q(0.04, -12), 5)
    x = g.conv(0, 12, 3, 1, "SAME", "RELU", q(0.05, -128))
    x = g.pool("AVERAGE_POOL_2D", x, 6, 1, "VALID")
    x = g.reshape(x, (1, 12))
    x = g.fc(x, 10, "NONE", q(0.02, 8))
    y = g._out("softmax", (1, 10), q(1 / 256, -128))
    g.ops.append(Op("SOFTMAX", [x], [y], {"beta": 1.0}, name="softmax"))
    return g.done(y)


def fc_stack() -> Graph:
    """An autoencoder-like stack of FULLY_CONNECTED layers with ReLU, odd widths."""
    g = _G("fc_stack", (1, 37), q(0.1, 0), 6)
    x = g.fc(0, 19, "RELU", q(0.08, -128))
    x = g.fc(x, 7, "RELU", q(0.01, -128))
    x = g.fc(x, 37, "NONE", q(0.004, 2))
    return g.done(x)


def maxpool_and_stride2_pool() -> Graph:
    """MAX_POOL 2x2 stride 2 VALID on an odd plane (the last row and column dropped), AVERAGE_POOL 3x3
    stride 2 SAME (the divisor counts only the taps inside the input)."""
    g = _G("pools", (1, 9, 11, 6), q(0.05, -7), 7)
    x = g.pool("MAX_POOL_2D", 0, 2, 2, "VALID")
    y = g.pool("AVERAGE_POOL_2D", x, 3, 2, "SAME")
    return g.done(y)


ALL: dict[str, Callable[[], Graph]] = {
    f.__name__: f
    for f in (
        conv_stride2_same_odd,
        zero_points_at_the_extremes,
        depthwise_variants,
        residual_with_different_scales,
        classifier_head,
        fc_stack,
        maxpool_and_stride2_pool,
    )
}
