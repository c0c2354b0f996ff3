"""The whole-graph semantic check, run by Graph.validate: whatever a file declares, nothing downstream
(reference, code generator, kernels) may see a graph whose shapes, quantization, options or sizes
contradict each other or exceed what a microcontroller could hold. Every failure is a
MalformedModelError naming the op or tensor and what is wrong.

The structural part (indices, op order, constant data shapes) stays in Graph.validate; this module adds
what each op's semantics imply, op by op, from TFLite's definitions.
"""

from __future__ import annotations

import math

import numpy as np

from harness.errors import MalformedModelError, UnsupportedModelError
from harness.model.ir import op_macs

# Limits a microcontroller implies, with room: the largest boards here have 2 MB of flash and 1 MB of
# SRAM. A tensor or model past these is a corrupt file, not a model to plan (a flipped byte in a shape
# would otherwise ask numpy for gigabytes).
MAX_ACTIVATION_BYTES = 16 << 20
MAX_CONSTANT_BYTES = 64 << 20
MAX_TENSOR_RANK = 6
MAX_MACS = 1_000_000_000  # seconds an inference even at 1 MAC a cycle on the fastest M7
MAX_OPS = 4096
MAX_FILE_BYTES = 256 << 20  # checked by the reader before it reads

# (required inputs, optional inputs) per op: a required input may not be -1.
_ARITY = {
    "CONV_2D": (2, 1),
    "DEPTHWISE_CONV_2D": (2, 1),
    "FULLY_CONNECTED": (2, 1),
    "ADD": (2, 0),
    "AVERAGE_POOL_2D": (1, 0),
    "MAX_POOL_2D": (1, 0),
    "MEAN": (1, 1),  # the axes: an input in files, options in built graphs
    "PAD": (1, 1),  # the paddings, likewise
    "RESHAPE": (1, 1),
    "SOFTMAX": (1, 0),
    "QUANTIZE": (1, 0),
    "DEQUANTIZE": (1, 0),
}


REQUIRED_INPUTS = {kind: need for kind, (need, _) in _ARITY.items()}


def check_graph(graph) -> None:
    """Raise MalformedModelError at the first contradiction (graph.validate's structural checks have
    passed: every index is in range and the ops are in order)."""
    if len(graph.ops) > MAX_OPS:
        raise MalformedModelError(f"the model has {len(graph.ops)} ops, more than {MAX_OPS}")
    for i, t in enumerate(graph.tensors):
        _check_tensor(i, t)
    macs = 0
    for k, op in enumerate(graph.ops):
        where = f"op {k} ({op.kind} '{op.name}')"
        if op.kind not in _ARITY and op.kind != "CONCATENATION":
            continue  # an op the harness does not run: the stage that meets it says so
        _check_arity(graph, op, where)
        data = [op.inputs[0]] + (
            op.inputs[1:2] if op.kind == "ADD" else list(op.inputs[1:]) * (op.kind == "CONCATENATION")
        )
        if any(graph.tensors[t].is_const for t in data):
            raise UnsupportedModelError(f"{where} reads a constant as its data input: fold it when exporting")
        acts = [graph.tensors[t] for t in data + op.outputs]
        if op.kind not in ("QUANTIZE", "DEQUANTIZE") and any(t.dtype != "int8" for t in acts):
            bad = next(t for t in acts if t.dtype != "int8")
            raise UnsupportedModelError(
                f"{where} works on {bad.dtype} tensor '{bad.name}': the harness runs int8 models; quantize to "
                "int8 first (full-integer post-training quantization)"
            )
        _CHECKS.get(op.kind, _no_check)(graph, op, where)
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            _check_requant_range(graph, op, where)
        macs += op_macs(graph, op)
        if macs > MAX_MACS:
            raise MalformedModelError(f"{where}: the model's MACs pass {MAX_MACS:,}: a corrupt shape?")


def _check_tensor(i: int, t) -> None:
    name = f"tensor {i} '{t.name}'"
    if len(t.shape) > MAX_TENSOR_RANK:
        raise MalformedModelError(f"{name} has rank {len(t.shape)} (at most {MAX_TENSOR_RANK})")
    if any(d < 0 for d in t.shape):
        raise MalformedModelError(f"{name} has a negative dimension in {t.shape}")
    limit = MAX_CONSTANT_BYTES if t.is_const else MAX_ACTIVATION_BYTES
    nbytes = t.nbytes  # Python ints: no overflow; the bound keeps numpy from ever allocating it
    if nbytes > limit:
        kind = "constant" if t.is_const else "activation"
        raise MalformedModelError(
            f"{name} of shape {t.shape} {t.dtype} needs {nbytes:,} bytes, more than any microcontroller "
            f"could hold ({kind} limit {limit:,}): a corrupt shape?"
        )
    q = t.quant
    if q is None:
        return
    if not np.all(np.isfinite(q.scale)) or np.any(q.scale <= 0):
        bad = q.scale[~(np.isfinite(q.scale) & (q.scale > 0))][0]
        raise MalformedModelError(f"{name} has scale {bad}: scales must be finite and > 0")
    lo, hi = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}.get(t.dtype, (None, None))
    if t.dtype in ("int32", "int64") and np.any(q.zero_point != 0):
        raise MalformedModelError(f"{name} ({t.dtype}) has zero point {int(q.zero_point[0])}: it must be 0")
    if lo is not None and (np.any(q.zero_point < lo) or np.any(q.zero_point > hi)):
        bad = int(q.zero_point[(q.zero_point < lo) | (q.zero_point > hi)][0])
        raise MalformedModelError(f"{name} ({t.dtype}) has zero point {bad}, outside {lo}..{hi}")


def _check_arity(graph, op, where: str) -> None:
    if len(op.outputs) != 1:
        raise MalformedModelError(f"{where} has {len(op.outputs)} outputs; it writes one")
    if op.kind == "CONCATENATION":
        if not op.inputs or any(t < 0 for t in op.inputs):
            raise MalformedModelError(f"{where} needs every input present")
        return
    need, optional = _ARITY[op.kind]
    if len(op.inputs) < need or len(op.inputs) > need + optional:
        raise MalformedModelError(f"{where} has {len(op.inputs)} inputs; it takes {need}" + (
            f" or {need + optional}" if optional else ""))  # fmt: skip
    for pos in range(need):
        if op.inputs[pos] < 0:
            raise MalformedModelError(f"{where}: required input {pos} is absent (index -1)")
    if op.outputs[0] < 0:
        raise MalformedModelError(f"{where}: its output is absent (index -1)")


def _shape(graph, t: int) -> tuple[int, ...]:
    return tuple(graph.tensors[t].shape)


def _rank(graph, t: int, rank: int, what: str, where: str) -> tuple[int, ...]:
    s = _shape(graph, t)
    if len(s) != rank:
        raise MalformedModelError(f"{where}: {what} '{graph.tensors[t].name}' has shape {s}; it must be {rank}-D")
    return s


def _want(graph, op, expected: tuple[int, ...], where: str) -> None:
    got = _shape(graph, op.outputs[0])
    if tuple(got) != tuple(expected):
        raise MalformedModelError(
            f"{where}: output '{graph.tensors[op.outputs[0]].name}' has shape {got}; its inputs and options "
            f"imply {tuple(expected)}"
        )


def _positive(values, what: str, where: str) -> None:
    if any(int(v) < 1 for v in values):
        raise MalformedModelError(f"{where}: {what} {tuple(values)} must be >= 1")


def _window_out(size: int, k: int, stride: int, dil: int, padding: str, where: str) -> int:
    eff = (k - 1) * dil + 1
    if padding == "SAME":
        return (size + stride - 1) // stride
    if padding == "VALID":
        if eff > size:
            raise MalformedModelError(f"{where}: a VALID window of {eff} does not fit an input of {size}")
        return (size - eff + stride) // stride
    raise MalformedModelError(f"{where}: unknown padding {padding!r}")


def _conv(graph, op, where: str) -> None:
    o = op.options
    dw = op.kind == "DEPTHWISE_CONV_2D"
    n, h, w, c = _rank(graph, op.inputs[0], 4, "input", where)
    oc, kh, kw, ic = _rank(graph, op.inputs[1], 4, "weights", where)
    stride, dil = tuple(o.get("stride", (1, 1))), tuple(o.get("dilation", (1, 1)))
    _positive(stride, "stride", where)
    _positive(dil, "dilation", where)
    _positive((kh, kw), "kernel", where)
    if dw:
        if oc != 1:
            raise MalformedModelError(f"{where}: depthwise weights {(oc, kh, kw, ic)} must have 1 as dimension 0")
        channels = ic
        mult = int(o.get("depth_multiplier", 1))
        if c < 1 or channels != c * mult:
            raise MalformedModelError(f"{where}: weights of {channels} channels for {c} input channels x {mult}")
    else:
        channels = oc
        if ic != c:
            raise MalformedModelError(f"{where}: weights take {ic} input channels, the input has {c}")
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        b = _shape(graph, op.inputs[2])
        if b != (channels,):
            raise MalformedModelError(f"{where}: bias has shape {b}; it must be ({channels},)")
    pad = o.get("padding", "VALID")
    oh = _window_out(h, kh, stride[0], dil[0], pad, where)
    ow = _window_out(w, kw, stride[1], dil[1], pad, where)
    _want(graph, op, (n, oh, ow, channels), where)


def _fc(graph, op, where: str) -> None:
    w = _rank(graph, op.inputs[1], 2, "weights", where)
    x = graph.tensors[op.inputs[0]]
    if w[1] < 1 or x.size % w[1]:
        raise MalformedModelError(f"{where}: an input of {x.size} elements is not rows of {w[1]}")
    if len(op.inputs) > 2 and op.inputs[2] >= 0 and _shape(graph, op.inputs[2]) != (w[0],):
        raise MalformedModelError(f"{where}: bias has shape {_shape(graph, op.inputs[2])}; it must be ({w[0]},)")
    y = graph.tensors[op.outputs[0]]
    if y.size != x.size // w[1] * w[0] or (y.shape and y.shape[-1] != w[0]):
        raise MalformedModelError(
            f"{where}: output shape {tuple(y.shape)} does not hold {x.size // w[1]} rows of {w[0]} outputs"
        )


def _broadcast(a: tuple[int, ...], b: tuple[int, ...], where: str) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise MalformedModelError(f"{where}: inputs of shapes {a} and {b} do not broadcast")
        out.append(max(x, y))
    return tuple(out)


def _add(graph, op, where: str) -> None:
    _want(graph, op, _broadcast(_shape(graph, op.inputs[0]), _shape(graph, op.inputs[1]), where), where)


def _pool(graph, op, where: str) -> None:
    o = op.options
    n, h, w, c = _rank(graph, op.inputs[0], 4, "input", where)
    f, stride = tuple(o.get("filter", (1, 1))), tuple(o.get("stride", (1, 1)))
    _positive(f, "filter", where)
    _positive(stride, "stride", where)
    pad = o.get("padding", "VALID")
    _want(
        graph,
        op,
        (n, _window_out(h, f[0], stride[0], 1, pad, where), _window_out(w, f[1], stride[1], 1, pad, where), c),
        where,
    )


def _same_shape(graph, op, where: str) -> None:
    _want(graph, op, _shape(graph, op.inputs[0]), where)


def _reshape(graph, op, where: str) -> None:
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if x.size != y.size:
        raise MalformedModelError(
            f"{where}: reshapes {x.size} elements {tuple(x.shape)} into {y.size} {tuple(y.shape)}"
        )


def _pad(graph, op, where: str) -> None:
    x = _shape(graph, op.inputs[0])
    pads = tuple(op.options.get("paddings", ()))
    if len(pads) != len(x) or any(a < 0 or b < 0 for a, b in pads):
        raise MalformedModelError(f"{where}: paddings {pads} for an input of shape {x}")
    _want(graph, op, tuple(d + a + b for d, (a, b) in zip(x, pads, strict=True)), where)


def _concat(graph, op, where: str) -> None:
    shapes = [_shape(graph, t) for t in op.inputs]
    axis = int(op.options.get("axis", 0))
    rank = len(shapes[0])
    if not 0 <= axis < rank or any(len(s) != rank for s in shapes):
        raise MalformedModelError(f"{where}: axis {axis} over inputs of shapes {shapes}")
    for s in shapes:
        if any(s[d] != shapes[0][d] for d in range(rank) if d != axis):
            raise MalformedModelError(f"{where}: inputs of shapes {shapes} differ off the axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    _want(graph, op, tuple(out), where)


def _mean(graph, op, where: str) -> None:
    x = _shape(graph, op.inputs[0])
    axes = tuple(op.options.get("axes", ()))
    if any(not 0 <= a < len(x) for a in axes):
        raise MalformedModelError(f"{where}: axes {axes} for an input of rank {len(x)}")
    kept = math.prod(n for d, n in enumerate(x) if d not in axes)
    y = graph.tensors[op.outputs[0]]
    if y.size != kept:
        raise MalformedModelError(f"{where}: the mean of {x} over axes {axes} has {kept} elements, its output {y.size}")


def _no_check(graph, op, where: str) -> None:
    pass


_CHECKS = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _conv,
    "FULLY_CONNECTED": _fc,
    "ADD": _add,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "SOFTMAX": _same_shape,
    "QUANTIZE": _same_shape,
    "DEQUANTIZE": _same_shape,
    "RESHAPE": _reshape,
    "PAD": _pad,
    "CONCATENATION": _concat,
    "MEAN": _mean,
}


def _check_requant_range(graph, op, where: str) -> None:
    """An effective scale above 1 requantizes with a left shift of the int32 accumulator (TFLite's
    MultiplyByQuantizedMultiplier): where the largest accumulator the weights allow would overflow it,
    TFLite's own kernels would overflow too, so no bit-exact answer exists."""
    x, w, y = (graph.tensors[t] for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    if x.quant is None or w.quant is None or y.quant is None or not w.is_const:
        return
    ws = np.broadcast_to(w.quant.scale.astype(np.float64), (w.quant.scale.size,))
    eff = float(x.quant.scale[0]) * ws / float(y.quant.scale[0])
    if not np.any(eff >= 1.0):
        return
    dw = op.kind == "DEPTHWISE_CONV_2D"
    absw = np.abs(w.data.astype(np.int64))
    per_channel = absw.sum(axis=(0, 1, 2)) if dw else absw.reshape(absw.shape[0], -1).sum(axis=1)
    bias = np.zeros_like(per_channel)
    if len(op.inputs) > 2 and op.inputs[2] >= 0 and graph.tensors[op.inputs[2]].is_const:
        bias = np.abs(graph.tensors[op.inputs[2]].data.astype(np.int64)).reshape(-1)[: per_channel.size]
    reach = 256 * per_channel + bias  # |input - zero point| <= 255
    shift = np.ceil(np.log2(np.maximum(eff, 1.0)))
    shift = np.broadcast_to(shift, reach.shape) if shift.size == 1 else shift[: reach.size]
    over = reach.astype(np.float64) * np.exp2(shift) >= 2.0**31
    if np.any(over):
        c = int(np.argmax(over))
        raise UnsupportedModelError(
            f"{where}: channel {c}'s effective scale {float(eff.reshape(-1)[min(c, eff.size - 1)]):.3g} shifts "
            f"accumulators of up to {int(reach[c]):,} out of int32 (TFLite's kernels would overflow too): check "
            "the scales of its input, weights and output"
        )
