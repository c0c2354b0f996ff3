"""Graph IR: the single model representation. Readers produce it; reference, codegen and reports read it.

Layouts and semantics follow TFLite, so a graph read from a .tflite file needs no conversion:

* activations are NHWC (or [N, C] after a reshape / fully connected);
* CONV_2D weights are [O, KH, KW, I], DEPTHWISE_CONV_2D weights [1, KH, KW, I*M], FULLY_CONNECTED
  weights [O, I]; biases are int32 [O] with scale = input_scale * weight_scale and zero point 0;
* per-channel quantization: `Quant.axis` is the channel axis (0 for conv / FC weights, 3 for depthwise).

`Op.options` are normalised by the reader (and by the builder) so that nothing downstream needs the
flatbuffer. The keys per op kind:

======================  ==============================================================================
CONV_2D                 stride (sh, sw), dilation (dh, dw), padding "SAME"|"VALID", activation
DEPTHWISE_CONV_2D       as CONV_2D, plus depth_multiplier
FULLY_CONNECTED         activation, keep_num_dims (bool)
AVERAGE_POOL_2D,        filter (fh, fw), stride (sh, sw), padding, activation
MAX_POOL_2D
ADD                     activation
CONCATENATION           axis (non-negative), activation
SOFTMAX                 beta (float)
MEAN                    axes (tuple of non-negative ints, from the constant second input), keep_dims
PAD                     paddings (tuple of (before, after) per dimension, from the constant second input)
RESHAPE, QUANTIZE,      (none: RESHAPE's shape is its output tensor's shape)
DEQUANTIZE
======================  ==============================================================================

`activation` is one of "NONE", "RELU", "RELU6", "RELU_N1_TO_1".
Optional inputs that are absent (a conv without bias) are -1 in `Op.inputs`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.errors import MalformedModelError

SUPPORTED_OPS: tuple[str, ...] = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "MEAN",
    "PAD",
    "RESHAPE",
    "CONCATENATION",
    "SOFTMAX",
    "QUANTIZE",
    "DEQUANTIZE",
)

ACTIVATIONS: tuple[str, ...] = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")

DTYPE_BYTES: dict[str, int] = {
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "int16": 2,
    "float16": 2,
    "int32": 4,
    "float32": 4,
    "int64": 8,
    "float64": 8,
}


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point). Scales are float32, as stored in TFLite."""

    scale: np.ndarray  # float32, shape [1] (per tensor) or [channels] (per channel)
    zero_point: np.ndarray  # int64, same length as scale
    axis: int = 0  # the channel axis when per channel

    def __post_init__(self) -> None:
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))
        if self.zero_point.size == 1 and self.scale.size > 1:
            self.zero_point = np.full(self.scale.shape, int(self.zero_point[0]), dtype=np.int64)

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    @property
    def s(self) -> float:
        """The per-tensor scale (float32 value as a Python float)."""
        return float(self.scale[0])

    @property
    def zp(self) -> int:
        """The per-tensor zero point."""
        return int(self.zero_point[0])


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: Quant | None = None
    data: np.ndarray | None = None  # constant contents, dtype and shape as above

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * DTYPE_BYTES[self.dtype]


@dataclass
class Op:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # a readable layer name (may be any text: sanitise before it reaches C)


@dataclass
class Graph:
    name: str
    tensors: list[Tensor]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    description: str = ""
    # The .tflite bytes this graph was read from, untouched (an engine that runs flatbuffers runs these).
    source: bytes | None = field(default=None, repr=False, compare=False)

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]

    def op_inputs(self, op: Op) -> list[Tensor | None]:
        return [self.tensors[i] if i >= 0 else None for i in op.inputs]

    def producer(self) -> dict[int, int]:
        """Tensor index -> index of the op that writes it."""
        return {t: i for i, op in enumerate(self.ops) for t in op.outputs}

    def consumers(self) -> dict[int, list[int]]:
        """Tensor index -> indices of the ops that read it, in execution order."""
        out: dict[int, list[int]] = {}
        for i, op in enumerate(self.ops):
            for t in op.inputs:
                if t >= 0:
                    out.setdefault(t, []).append(i)
        return out

    def weight_bytes(self) -> int:
        """Bytes of constant tensors used by any op (these live in flash)."""
        used = {t for op in self.ops for t in op.inputs if t >= 0}
        return sum(self.tensors[t].nbytes for t in used if self.tensors[t].is_const)

    def macs(self) -> int:
        return sum(op_macs(self, op) for op in self.ops)

    def params(self) -> int:
        """Parameter count: elements of constant weight and bias tensors of conv / depthwise / FC ops."""
        seen: set[int] = set()
        for op in self.ops:
            if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                seen.update(t for t in op.inputs[1:] if t >= 0 and self.tensors[t].is_const)
        return sum(self.tensors[t].size for t in seen)

    def validate(self) -> None:
        """Check the invariants every stage relies on: indices in range, ops topologically ordered,
        constants with data of their declared shape, then (checks.py) every op's shapes, inputs,
        quantization, options and sizes."""
        n = len(self.tensors)
        written: set[int] = set(self.inputs)
        for t in self.inputs + self.outputs:
            if not 0 <= t < n:
                raise MalformedModelError(f"graph input/output index {t} is out of range (0..{n - 1})")
        for i, t in enumerate(self.tensors):
            if t.is_const:
                if tuple(t.data.shape) != tuple(t.shape):
                    raise MalformedModelError(
                        f"tensor {i} '{t.name}': data shape {t.data.shape} differs from its shape {t.shape}"
                    )
                written.add(i)
        for k, op in enumerate(self.ops):
            for t in op.inputs + op.outputs:
                if t != -1 and not 0 <= t < n:
                    raise MalformedModelError(f"op {k} ({op.kind}) names tensor {t}, out of range (0..{n - 1})")
            for t in op.inputs:
                if t >= 0 and t not in written:
                    raise MalformedModelError(
                        f"op {k} ({op.kind}) reads tensor {t} '{self.tensors[t].name}' before anything writes it"
                    )
            written.update(op.outputs)
        for t in self.outputs:
            if t not in written:
                raise MalformedModelError(f"graph output {t} '{self.tensors[t].name}' is never written")
        from harness.model.checks import check_graph

        check_graph(self)  # what each op's semantics imply: shapes, quantization, options, sizes


def conv_out_size(in_size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """Output size and the padding before the first element, as TFLite computes them."""
    eff = (kernel - 1) * dilation + 1
    if padding == "SAME":
        out = (in_size + stride - 1) // stride
        total = max((out - 1) * stride + eff - in_size, 0)
        return out, total // 2
    if padding == "VALID":
        return (in_size - eff + stride) // stride, 0
    raise MalformedModelError(f"unknown padding {padding!r}")


def op_macs(graph: Graph, op: Op) -> int:
    """Multiply-accumulates of conv, depthwise and fully connected layers (other ops count 0)."""
    if op.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        return 0
    out = graph.tensors[op.outputs[0]]
    w = graph.tensors[op.inputs[1]]
    if op.kind == "CONV_2D":
        _, kh, kw, ci = w.shape
        return out.size * kh * kw * ci
    if op.kind == "DEPTHWISE_CONV_2D":
        _, kh, kw, _ = w.shape
        return out.size * kh * kw
    return out.size * w.shape[1]


def c_identifier(text: str, prefix: str = "l") -> str:
    """A safe C identifier made from arbitrary text (tensor and op names come from untrusted files)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", text).strip("_")
    ident = re.sub(r"_+", "_", ident)[:48]
    if not ident or not (ident[0].isalpha() or ident[0] == "_"):
        ident = f"{prefix}_{ident}"
    return ident
