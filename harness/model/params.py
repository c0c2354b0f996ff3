"""Per-op integer parameters, derived once from the Graph IR with TFLite's arithmetic.

The numpy reference (harness.reference) and the code generator (harness.engines.native) both take their
multipliers, shifts, offsets and clamps from here and nowhere else, so the two cannot disagree on them:
any difference between them is in the kernels' arithmetic.

Conventions (TFLite's): a `shift` is the exponent of the quantized multiplier, positive = left shift,
negative = right shift; multipliers are Q31 int32. Offsets are added to the raw int8 value: an input
offset is -zero_point, an output offset is +zero_point.

`derive(graph, op)` returns the dataclass for that op kind (None for RESHAPE, which moves no data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.errors import UnsupportedModelError
from harness.model.ir import Graph, Op, Tensor, conv_out_size


@dataclass
class ConvParams:
    """CONV_2D and DEPTHWISE_CONV_2D."""

    input_offset: int
    output_offset: int
    multipliers: np.ndarray  # int32 [out_channels] (per tensor quantization: repeated)
    shifts: np.ndarray  # int32 [out_channels]
    act_min: int
    act_max: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int]  # (top, left) padding before the first row / column
    depth_multiplier: int = 1


@dataclass
class FcParams:
    input_offset: int
    output_offset: int
    multipliers: np.ndarray  # int32 [out_features] (per tensor: repeated)
    shifts: np.ndarray  # int32 [out_features]
    act_min: int
    act_max: int


@dataclass
class AddParams:
    input1_offset: int
    input2_offset: int
    output_offset: int
    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


@dataclass
class PoolParams:
    """AVERAGE_POOL_2D and MAX_POOL_2D (int8 pooling keeps the input's quantization)."""

    filter: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    act_min: int
    act_max: int


def mean_multiplier(real: float, count: int) -> tuple[int, int]:
    """LiteRT 2.3's int8 MEAN divides by the count inside the multiplier: the multiplier of s_in/s_out is
    shifted left by k = floor(log2 count) (so the quotient keeps 31 bits; at most 31 + shift, so the final
    right shift stays within 31), integer-divided by the count, and the shift lowered by k. Measured: on
    15,360 outputs over random shapes and scales this matches the interpreter everywhere, while scaling
    first and dividing after (TFLM's Mean) is off by one on 19 of 40 models."""
    mult, shift = quantize_multiplier(real)
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (mult << k) // count, shift - k


@dataclass
class MeanParams:
    """MEAN over H and W of an NHWC tensor, int8: out = MBQM(sum(x + input_offset), multiplier, shift) +
    output_offset, with 1/count folded into the multiplier (see mean_multiplier)."""

    input_offset: int
    output_offset: int
    multiplier: int
    shift: int
    count: int  # elements averaged per output (already in multiplier and shift)


@dataclass
class SoftmaxParams:
    input_multiplier: int
    input_left_shift: int
    diff_min: int


@dataclass
class RequantParams:
    """QUANTIZE int8 -> int8, and CONCATENATION inputs whose quantization differs from the output's."""

    input_offset: int
    output_offset: int
    multiplier: int
    shift: int
    identity: bool  # same scale and zero point: a plain copy


@dataclass
class ConcatParams:
    axis: int
    inputs: list[RequantParams]


@dataclass
class PadParams:
    paddings: tuple[tuple[int, int], ...]
    pad_value: int  # the output zero point (real 0)


@dataclass
class BoundaryParams:
    """QUANTIZE float32 -> int8 at a model input, DEQUANTIZE int8 -> float32 at its output: done on
    the host, so the device only ever sees int8."""

    scale: float
    zero_point: int


# --- TFLite's quantization arithmetic (quantization_util.cc, kernel_util.cc) ----------------------------


def quantize_multiplier(real: float) -> tuple[int, int]:
    """A real multiplier as a Q31 int32 and a power-of-two exponent: real ≈ q * 2^(shift - 31)."""
    if real == 0.0:
        return 0, 0
    mant, shift = math.frexp(real)
    q = _round_half_away(mant * (1 << 31))
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return int(q), int(shift)


def _round_half_away(x: float) -> int:
    """std::round: halves away from zero (Python's round() goes to even)."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def quantize_value(real: float, scale: float, zero_point: int) -> int:
    """TFLite's Quantize() of one float, in float32 as the kernels do."""
    return zero_point + _round_half_away(float(np.float32(real) / np.float32(scale)))


def activation_range(activation: str, out: Tensor) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for int8."""
    lo, hi = -128, 127
    s, zp = out.quant.s, out.quant.zp
    if activation == "RELU":
        return max(lo, quantize_value(0.0, s, zp)), hi
    if activation == "RELU6":
        return max(lo, quantize_value(0.0, s, zp)), min(hi, quantize_value(6.0, s, zp))
    if activation == "RELU_N1_TO_1":
        return max(lo, quantize_value(-1.0, s, zp)), min(hi, quantize_value(1.0, s, zp))
    if activation in ("NONE", None):
        return lo, hi
    raise UnsupportedModelError(f"fused activation {activation} is not supported")


def _channel_multipliers(x: Tensor, w: Tensor, y: Tensor, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel effective scales in double from float32 scales, as PopulateConvolutionQuantizationParams."""
    ws = w.quant.scale
    mult = np.empty(channels, np.int32)
    shift = np.empty(channels, np.int32)
    for c in range(channels):
        wsc = float(ws[c] if ws.size > 1 else ws[0])
        mult[c], shift[c] = quantize_multiplier(float(x.quant.scale[0]) * wsc / float(y.quant.scale[0]))
    return mult, shift


def _needs_quant(graph: Graph, op: Op, *tensors: Tensor) -> None:
    for t in tensors:
        if t.quant is None:
            raise UnsupportedModelError(f"{op.kind} '{op.name}': tensor '{t.name}' has no quantization parameters")


def derive(graph: Graph, op: Op):
    """The integer parameters of one op (see the module docstring)."""
    t = graph.tensors
    o = op.options
    x = t[op.inputs[0]]
    y = t[op.outputs[0]]
    k = op.kind
    if k == "RESHAPE":
        return None
    if k in ("QUANTIZE", "DEQUANTIZE") and (x.dtype == "float32" or y.dtype == "float32"):
        q = y.quant if k == "QUANTIZE" else x.quant
        return BoundaryParams(q.s, q.zp)
    _needs_quant(graph, op, x, y)
    if k in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        w = t[op.inputs[1]]
        _needs_quant(graph, op, w)
        channels = y.shape[3]
        mult, shift = _channel_multipliers(x, w, y, channels)
        lo, hi = activation_range(o.get("activation", "NONE"), y)
        kh, kw = w.shape[1], w.shape[2]
        dil = tuple(o.get("dilation", (1, 1)))
        _, pt = conv_out_size(x.shape[1], kh, o["stride"][0], dil[0], o["padding"])
        _, pl = conv_out_size(x.shape[2], kw, o["stride"][1], dil[1], o["padding"])
        return ConvParams(
            -x.quant.zp,
            y.quant.zp,
            mult,
            shift,
            lo,
            hi,
            tuple(o["stride"]),
            dil,
            (pt, pl),
            int(o.get("depth_multiplier", 1)),
        )
    if k == "FULLY_CONNECTED":
        w = t[op.inputs[1]]
        _needs_quant(graph, op, w)
        mult, shift = _channel_multipliers(x, w, y, w.shape[0])
        lo, hi = activation_range(o.get("activation", "NONE"), y)
        return FcParams(-x.quant.zp, y.quant.zp, mult, shift, lo, hi)
    if k == "ADD":
        x2 = t[op.inputs[1]]
        _needs_quant(graph, op, x2)
        left_shift = 20
        s1, s2, so = np.float32(x.quant.s), np.float32(x2.quant.s), np.float32(y.quant.s)
        # 2 * max(float, float) is float arithmetic in TFLite; the divisions are in double.
        twice_max = float(np.float32(2) * max(s1, s2))
        m1, sh1 = quantize_multiplier(float(s1) / twice_max)
        m2, sh2 = quantize_multiplier(float(s2) / twice_max)
        mo, sho = quantize_multiplier(twice_max / float(np.float32(1 << left_shift) * so))
        lo, hi = activation_range(o.get("activation", "NONE"), y)
        return AddParams(-x.quant.zp, -x2.quant.zp, y.quant.zp, left_shift, m1, sh1, m2, sh2, mo, sho, lo, hi)
    if k in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        fh, fw = o["filter"]
        _, pt = conv_out_size(x.shape[1], fh, o["stride"][0], 1, o["padding"])
        _, pl = conv_out_size(x.shape[2], fw, o["stride"][1], 1, o["padding"])
        lo, hi = activation_range(o.get("activation", "NONE"), y)
        if x.quant.s != y.quant.s or x.quant.zp != y.quant.zp:
            raise UnsupportedModelError(f"{k} '{op.name}': int8 pooling needs equal input and output quantization")
        return PoolParams((fh, fw), tuple(o["stride"]), (pt, pl), lo, hi)
    if k == "MEAN":
        axes = tuple(o["axes"])
        if len(x.shape) != 4 or axes != (1, 2):
            raise UnsupportedModelError(f"MEAN '{op.name}': only the mean over H and W of an NHWC tensor is supported")
        count = x.shape[1] * x.shape[2]
        mult, shift = mean_multiplier(float(x.quant.s) / float(y.quant.s), count)
        return MeanParams(-x.quant.zp, y.quant.zp, mult, shift, count)
    if k == "SOFTMAX":
        if abs(y.quant.s - 1 / 256) > 1e-9 or y.quant.zp != -128:
            raise UnsupportedModelError(f"SOFTMAX '{op.name}': int8 softmax needs output scale 1/256, zero point -128")
        integer_bits = 5
        real = min(float(o.get("beta", 1.0)) * float(x.quant.s) * (1 << (31 - integer_bits)), float((1 << 31) - 1))
        mult, left = quantize_multiplier(real)
        radius = math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left))
        return SoftmaxParams(mult, left, -radius)
    if k == "QUANTIZE":
        return _requant(x, y)
    if k == "CONCATENATION":
        for i in op.inputs:
            if t[i].quant is None or t[i].quant.s != y.quant.s or t[i].quant.zp != y.quant.zp:
                raise UnsupportedModelError(
                    f"CONCATENATION '{op.name}': TFLite's int8 concatenation needs every input quantized like the "
                    f"output; '{t[i].name}' is not"
                )
        return ConcatParams(int(o["axis"]), [_requant(t[i], y) for i in op.inputs])
    if k == "PAD":
        return PadParams(tuple(tuple(p) for p in o["paddings"]), y.quant.zp)
    raise UnsupportedModelError(f"op {k} is not supported")


def _requant(x: Tensor, y: Tensor) -> RequantParams:
    mult, shift = quantize_multiplier(float(x.quant.s) / float(y.quant.s))
    same = x.quant.s == y.quant.s and x.quant.zp == y.quant.zp
    return RequantParams(-x.quant.zp, y.quant.zp, mult, shift, same)
