"""The numpy int8 reference: TFLite's reference-kernel integer arithmetic, vectorised.

Bit-exact with LiteRT's reference kernels (the oracle in the tests) and with the generated C. Integer
parameters come from harness.model.params; this module holds only the arithmetic. Accumulators are exact:
convolutions run as float64 matrix products, exact while |acc| < 2^53 (int8 x int9 over < 2^35 terms).
"""

from __future__ import annotations

import numpy as np

from harness.errors import HarnessError, UnsupportedModelError
from harness.model import params as P
from harness.model.ir import Graph, Op

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


# --- fixed-point primitives (gemmlowp / TFLite), on int64 arrays holding int32 values ------------------


def _wrap32(x):
    """int32 wrap-around, as gemmlowp's plain additions behave."""
    return ((np.asarray(x, np.int64) + 2**31) & 0xFFFFFFFF) - 2**31


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul. TFLite adds a nudge of 2^30 (1 - 2^30 below zero) and divides
    by 2^31 truncating toward zero; both cases are (ab + 2^30) >> 31 with an arithmetic shift."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    hi = a * b
    hi += 1 << 30
    hi >>= 31
    overflow = (a == I32_MIN) & (b == I32_MIN)  # the one product that does not fit: saturates
    if overflow.any():
        hi = np.where(overflow, I32_MAX, hi)
    return hi


def rdbpot(x, exponent):
    """RoundingDivideByPOT: divide by 2^exponent, rounding half away from zero."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def mbqm(x, multiplier, shift):
    """MultiplyByQuantizedMultiplier, TFLite's default double-rounding variant."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rdbpot(srdhm(_wrap32(np.asarray(x, np.int64) << left), multiplier), right)


def mbqm_single(x, multiplier, shift):
    """One rounding of x * multiplier * 2^(shift - 31) in 64 bits: LiteRT's reference FULLY_CONNECTED."""
    total = 31 - np.asarray(shift, np.int64)
    return (np.asarray(x, np.int64) * np.asarray(multiplier, np.int64) + (np.int64(1) << (total - 1))) >> total


def _sat_shl(x, e: int):
    """SaturatingRoundingMultiplyByPOT with a positive exponent: a saturating left shift."""
    x = np.asarray(x, np.int64)
    threshold = (1 << (31 - e)) - 1
    return np.where(x > threshold, I32_MAX, np.where(x < -threshold, I32_MIN, x << e))


def _fx_mul(a, b):
    return srdhm(a, b)


def _exp_on_interval(a):
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: a Taylor expansion around -1/8."""
    x = _wrap32(a + (1 << 28))
    x2 = _fx_mul(x, x)
    x3 = _fx_mul(x2, x)
    x4 = _fx_mul(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    poly = rdbpot(_wrap32(_fx_mul(_wrap32(x4_over_4 + x3), 715827883) + x2), 1)
    return _wrap32(1895147668 + _fx_mul(1895147668, _wrap32(x + poly)))


def exp_on_negative_values(a, integer_bits: int = 5):
    """gemmlowp's exp for a <= 0 given in Q(integer_bits).(31 - integer_bits); result Q0.31."""
    frac = 31 - integer_bits
    one_quarter = 1 << (frac - 2)
    mask = one_quarter - 1
    a = np.asarray(a, np.int64)
    a_mod = _wrap32((a & mask) - one_quarter)
    result = _exp_on_interval(_sat_shl(a_mod, integer_bits))
    remainder = _wrap32(a_mod - a)
    for exponent, mult in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                           (2, 39332535), (3, 720401), (4, 242)):  # fmt: skip
        if integer_bits > exponent:
            bit = (remainder >> (frac + exponent)) & 1
            result = np.where(bit != 0, _fx_mul(result, mult), result)
    return np.where(a == 0, I32_MAX, result)


def one_over_one_plus_x(a):
    """1 / (1 + a) for a in [0, 1), Q0.31 in and out: Newton-Raphson in Q2.29."""
    a = np.asarray(a, np.int64)
    s = a + I32_MAX
    half_den = np.where(s >= 0, (s + 1) // 2, -((-(s - 1)) // 2))  # RoundingHalfSum, truncating division
    x = _wrap32(1515870810 + _fx_mul(half_den, -1010580540))
    one_q2 = 1 << 29
    for _ in range(3):
        hdx = _fx_mul(half_den, x)
        x = _wrap32(x + _sat_shl(_fx_mul(x, _wrap32(one_q2 - hdx)), 2))
    return _sat_shl(x, 1)


def _clz32(x):
    x = np.asarray(x, np.int64) & 0xFFFFFFFF
    n = np.full(x.shape, 32, np.int64)
    nz = x != 0
    n[nz] = 31 - np.floor(np.log2(x[nz].astype(np.float64))).astype(np.int64)
    return n


# --- kernels -------------------------------------------------------------------------------------------


def _clamp8(acc, lo: int, hi: int) -> np.ndarray:
    return np.clip(acc, lo, hi).astype(np.int8)


def _pad_hw(x: np.ndarray, pad: tuple[int, int], out_hw, k_hw, stride, dil, value: int) -> np.ndarray:
    """Pad H and W so every window of the output fits: before = TFLite's padding, after = what remains."""
    (pt, pl), (oh, ow), (kh, kw) = pad, out_hw, k_hw
    need_h = (oh - 1) * stride[0] + (kh - 1) * dil[0] + 1
    need_w = (ow - 1) * stride[1] + (kw - 1) * dil[1] + 1
    pb = max(need_h - x.shape[1] - pt, 0)
    pr = max(need_w - x.shape[2] - pl, 0)
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def _windows(xp: np.ndarray, out_hw, k_hw, stride, dil) -> np.ndarray:
    """[N, OH, OW, KH, KW, C] view of the windows."""
    (oh, ow), (kh, kw) = out_hw, k_hw
    n, _, _, c = xp.shape
    sn, sh, sw, sc = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp,
        shape=(n, oh, ow, kh, kw, c),
        strides=(sn, sh * stride[0], sw * stride[1], sh * dil[0], sw * dil[1], sc),
        writeable=False,
    )


def conv2d(x, w, bias, p: P.ConvParams, out_shape, wmat=None) -> np.ndarray:
    """`wmat`: the weights as the [KH*KW*IC, OC] float64 matrix (a prepared graph has it made once)."""
    _, oh, ow, oc = out_shape
    _, kh, kw, ic = w.shape
    if wmat is None:
        wmat = w.reshape(oc, -1).astype(np.float64).T
    if (kh, kw) == (1, 1) and p.stride == (1, 1) and (oh, ow) == x.shape[1:3]:
        cols = x.reshape(-1, ic).astype(np.float64) + p.input_offset  # pointwise: no window to gather
    else:
        # Padding with the input zero point makes padded taps contribute exactly 0, as TFLite skips them.
        xp = _pad_hw(x.astype(np.float64) + p.input_offset, p.pad, (oh, ow), (kh, kw), p.stride, p.dilation, 0)
        cols = _windows(xp, (oh, ow), (kh, kw), p.stride, p.dilation).reshape(-1, kh * kw * ic)
    acc = (cols @ wmat).astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64)
    acc = mbqm(acc, p.multipliers.astype(np.int64), p.shifts.astype(np.int64)) + p.output_offset
    return _clamp8(acc, p.act_min, p.act_max).reshape(out_shape)


def depthwise_conv2d(x, w, bias, p: P.ConvParams, out_shape) -> np.ndarray:
    _, oh, ow, oc = out_shape
    _, kh, kw, _ = w.shape
    xi = x.astype(np.int32) + p.input_offset
    if p.depth_multiplier > 1:  # output channel ic * M + m reads input channel ic
        xi = np.repeat(xi, p.depth_multiplier, axis=3)
    # a padded tap is 0 after the offset, as TFLite skips it; int32 is exact (|tap| < 2^15, < 2^16 taps)
    xp = _pad_hw(xi, p.pad, (oh, ow), (kh, kw), p.stride, p.dilation, 0)
    win = _windows(xp, (oh, ow), (kh, kw), p.stride, p.dilation)
    wi = w[0].astype(np.int32)
    acc = np.zeros((x.shape[0], oh, ow, oc), np.int32)
    for i in range(kh):  # one multiply-add over the whole output per tap
        for j in range(kw):
            acc += win[:, :, :, i, j, :] * wi[i, j]
    acc = acc.astype(np.int64)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    acc = mbqm(acc, p.multipliers.astype(np.int64), p.shifts.astype(np.int64)) + p.output_offset
    return _clamp8(acc, p.act_min, p.act_max).reshape(out_shape)


def fully_connected(x, w, bias, p: P.FcParams, out_shape, wmat=None) -> np.ndarray:
    rows = x.reshape(-1, w.shape[1]).astype(np.float64) + p.input_offset
    acc = (rows @ (w.astype(np.float64).T if wmat is None else wmat)).astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64)
    acc = mbqm_single(acc, p.multipliers.astype(np.int64), p.shifts.astype(np.int64)) + p.output_offset
    return _clamp8(acc, p.act_min, p.act_max).reshape(out_shape)


def add(a, b, p: P.AddParams, out_shape) -> np.ndarray:
    a = np.broadcast_to(a, out_shape).astype(np.int64)
    b = np.broadcast_to(b, out_shape).astype(np.int64)
    sa = rdbpot(srdhm((a + p.input1_offset) << p.left_shift, p.input1_multiplier), -p.input1_shift)
    sb = rdbpot(srdhm((b + p.input2_offset) << p.left_shift, p.input2_multiplier), -p.input2_shift)
    out = rdbpot(srdhm(_wrap32(sa + sb), p.output_multiplier), -p.output_shift) + p.output_offset
    return _clamp8(out, p.act_min, p.act_max)


def pool2d(x, p: P.PoolParams, out_shape, kind: str) -> np.ndarray:
    n, oh, ow, c = out_shape
    fh, fw = p.filter
    xi = x.astype(np.int64)
    sentinel = -(2**40)  # marks padded taps: they neither count nor win a max
    xp = _pad_hw(xi, p.pad, (oh, ow), (fh, fw), p.stride, (1, 1), sentinel)
    win = _windows(xp, (oh, ow), (fh, fw), p.stride, (1, 1))
    valid = win != sentinel
    if kind == "MAX_POOL_2D":
        acc = win.max(axis=(3, 4))
    else:
        total = np.where(valid, win, 0).sum(axis=(3, 4))
        count = valid.sum(axis=(3, 4))
        half = count // 2
        num = np.where(total > 0, total + half, total - half)
        acc = np.where(num >= 0, num // count, -((-num) // count))  # C division truncates toward zero
    return _clamp8(acc, p.act_min, p.act_max).reshape(out_shape)


def mean_hw(x, p: P.MeanParams, out_shape) -> np.ndarray:
    acc = (x.astype(np.int64) + p.input_offset).sum(axis=(1, 2))
    acc = mbqm(acc, p.multiplier, p.shift) + p.output_offset  # 1/count is in the multiplier
    return _clamp8(acc, -128, 127).reshape(out_shape)


def softmax(x, p: P.SoftmaxParams, out_shape) -> np.ndarray:
    depth = x.shape[-1]
    xi = x.reshape(-1, depth).astype(np.int64)
    diff = xi - xi.max(axis=1, keepdims=True)
    use = diff >= p.diff_min
    scaled = srdhm(_wrap32(diff << p.input_left_shift), p.input_multiplier)
    exps = np.where(use, exp_on_negative_values(scaled, 5), 0)
    # Sum in Q12.19: Rescale from Q0.31 is a rounding right shift by 12.
    sum_exps = _wrap32(np.where(use, rdbpot(exps, 12), 0).sum(axis=1, keepdims=True))
    headroom = _clz32(sum_exps)
    bits_over_unit = 12 - headroom
    shifted_minus_one = _wrap32(((sum_exps << headroom) & 0xFFFFFFFF) - (1 << 31))
    scale = one_over_one_plus_x(shifted_minus_one)
    out = rdbpot(srdhm(scale, exps), bits_over_unit + 31 - 8) - 128
    out = np.where(use, np.clip(out, -128, 127), -128)
    return out.astype(np.int8).reshape(out_shape)


def requantize(x, p: P.RequantParams) -> np.ndarray:
    if p.identity:
        return np.asarray(x, np.int8).copy()
    acc = mbqm(x.astype(np.int64) + p.input_offset, p.multiplier, p.shift) + p.output_offset
    return _clamp8(acc, -128, 127)


def quantize_float(x, bp: P.BoundaryParams) -> np.ndarray:
    scaled = (np.asarray(x, np.float32) / np.float32(bp.scale)).astype(np.float64)
    q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # std::round: halves away from zero
    return np.clip(q + bp.zero_point, -128, 127).astype(np.int8)


def dequantize(q, bp: P.BoundaryParams) -> np.ndarray:
    return (np.float64(np.float32(bp.scale)) * (np.asarray(q, np.int64) - bp.zero_point)).astype(np.float32)


# --- the graph -----------------------------------------------------------------------------------------


def _kernel(graph: Graph, op: Op):
    """The op as a function of the values computed so far: its parameters derived, and its constant
    operands converted, once."""
    t = graph.tensors

    def val(i: int, env):
        if i < 0:
            return None
        return t[i].data if t[i].is_const else env[i]

    def const(pos: int):
        return t[op.inputs[pos]].data if len(op.inputs) > pos and op.inputs[pos] >= 0 else None

    first = op.inputs[0]
    out_shape = t[op.outputs[0]].shape
    p = P.derive(graph, op)
    k = op.kind
    if k == "CONV_2D":
        w, b = const(1), const(2)
        wmat = w.reshape(w.shape[0], -1).astype(np.float64).T.copy()
        return lambda env: conv2d(val(first, env), w, b, p, out_shape, wmat)
    if k == "DEPTHWISE_CONV_2D":
        w, b = const(1), const(2)
        return lambda env: depthwise_conv2d(val(first, env), w, b, p, out_shape)
    if k == "FULLY_CONNECTED":
        w, b = const(1), const(2)
        wmat = w.astype(np.float64).T.copy()
        return lambda env: fully_connected(val(first, env), w, b, p, out_shape, wmat)
    if k == "ADD":
        second = op.inputs[1]
        return lambda env: add(val(first, env), val(second, env), p, out_shape)
    if k in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        return lambda env: pool2d(val(first, env), p, out_shape, k)
    if k == "MEAN":
        return lambda env: mean_hw(val(first, env), p, out_shape)
    if k == "SOFTMAX":
        return lambda env: softmax(val(first, env), p, out_shape)
    if k == "RESHAPE":
        return lambda env: np.asarray(val(first, env)).reshape(out_shape)
    if k == "PAD":
        return lambda env: np.pad(val(first, env), p.paddings, constant_values=p.pad_value).astype(np.int8)
    if k == "CONCATENATION":
        return lambda env: np.concatenate([val(i, env) for i in op.inputs], axis=p.axis).astype(np.int8)
    if k == "QUANTIZE":
        if isinstance(p, P.BoundaryParams):
            return lambda env: quantize_float(val(first, env), p)
        return lambda env: requantize(val(first, env), p)
    if k == "DEQUANTIZE":
        return lambda env: dequantize(val(first, env), p)
    raise UnsupportedModelError(f"op {k} has no reference kernel")


class Prepared:
    """A graph ready to run many inputs: every op's parameters derived once (deriving them costs about a
    fifth of an image model's inference). The graph must not change while this is in use."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._ops = [(op.outputs[0], _kernel(graph, op)) for op in graph.ops]

    def run_all(self, inputs: list[np.ndarray]) -> dict[int, np.ndarray]:
        graph = self.graph
        if len(inputs) != len(graph.inputs):
            raise HarnessError(f"{graph.name} takes {len(graph.inputs)} input(s), got {len(inputs)}")
        env: dict[int, np.ndarray] = {}
        for i, (ti, x) in enumerate(zip(graph.inputs, inputs, strict=True)):
            spec = graph.tensors[ti]
            x = np.asarray(x)
            if x.size != spec.size:
                raise HarnessError(f"input {i} needs shape {spec.shape} ({spec.size} values), got {x.shape}")
            if spec.dtype == "int8" and x.dtype != np.int8:
                if x.min(initial=0) < -128 or x.max(initial=0) > 127:
                    raise HarnessError(f"input {i} is int8: values must lie in -128..127")
            env[ti] = x.astype(np.dtype(spec.dtype)).reshape(spec.shape)
        for out, fn in self._ops:
            env[out] = fn(env)
        return env

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        env = self.run_all(inputs)
        return [env[t] for t in self.graph.outputs]


def run_all(graph: Graph, inputs: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Every non-constant tensor's value after one inference (for layer-by-layer debugging)."""
    return Prepared(graph).run_all(inputs)


def run(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """One inference: the graph's outputs, in order."""
    return Prepared(graph).run(inputs)
