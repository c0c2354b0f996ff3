"""Per-op integer parameters, derived once from the Graph IR with TFLite's arithmetic.

The numpy reference (harness.reference) and the code generator (harness.codegen) both take their
multipliers, shifts, offsets and clamps from here and nowhere else, so the two cannot disagree on them:
any difference between them is in the kernels' arithmetic.

Conventions (TFLite's): a `shift` is the exponent of the quantized multiplier, positive = left shift,
negative = right shift; multipliers are Q31 int32. Offsets are added to the raw int8 value: an input
offset is -zero_point, an output offset is +zero_point.

`derive(graph, op)` returns the dataclass for that op kind (None for RESHAPE, which moves no data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.model.ir import Graph, Op


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


@dataclass
class MeanParams:
    """MEAN over H and W of an NHWC tensor, int8 (TFLite's integer mean)."""

    input_offset: int
    output_offset: int
    multiplier: int
    shift: int
    count: int  # elements averaged per output


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


def derive(graph: Graph, op: Op):
    """The integer parameters of one op (see the module docstring)."""
    raise NotImplementedError  # implemented in the reference work (issue 2)
