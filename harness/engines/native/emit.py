"""The C emitter: model.h / model.c for one int8 graph, following firmware/README.md's model ABI.

Every layer becomes a `static const` parameter block (shapes, folded biases, multipliers and shifts,
all in flash) and one kernel call on arena pointers placed by the memory planner. Integer parameters
come only from `harness.model.params.derive`, the same source the numpy reference uses. Text from the
model file (model and layer names) reaches C only as identifiers made by `ir.c_identifier` or as
escaped string literals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.engines.native import fuse, spec
from harness.engines.native.planner import MemoryPlan, live_bytes, plan_memory
from harness.errors import UnsupportedModelError
from harness.model import params as P
from harness.model.ir import Graph, Op, c_identifier, op_macs

REPO = Path(__file__).resolve().parents[3]
KERNEL_DIR = REPO / "firmware" / "kernels"
RUNTIME_DIR = REPO / "firmware" / "runtime"  # model_abi.h

# Which kernel source implements each op (build.py compiles only the ones a model needs).
KERNEL_FILES: dict[str, str] = {
    "CONV_2D": "tk_conv.c",
    "DEPTHWISE_CONV_2D": "tk_conv.c",
    "FULLY_CONNECTED": "tk_fc.c",
    "ADD": "tk_eltwise.c",
    "QUANTIZE": "tk_eltwise.c",
    "CONCATENATION": "tk_eltwise.c",
    "PAD": "tk_eltwise.c",
    "AVERAGE_POOL_2D": "tk_pool.c",
    "MAX_POOL_2D": "tk_pool.c",
    "MEAN": "tk_pool.c",
    "SOFTMAX": "tk_softmax.c",
}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass
class IOSpec:
    """One int8 model input or output as it sits in the arena."""

    tensor: int  # index in the interior graph
    name: str
    offset: int
    bytes: int
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    boundary: P.BoundaryParams | None = None  # the float QUANTIZE/DEQUANTIZE done on the host, if any


@dataclass
class LayerRow:
    index: int
    name: str
    ident: str  # the C identifier of its parameter block
    op: str
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    macs: int
    weight_bytes: int  # bytes of constant data emitted for it (weights, folded bias, multipliers, shifts)
    activation_bytes: int  # bytes of its activation inputs and output
    input_offsets: list[int | None]  # arena offsets of its inputs (None: a constant)
    output_offset: int
    group: str | None = None  # the fused group it runs in ("layers 3-5"), profiled as one


@dataclass
class CodegenResult:
    name: str
    out_dir: Path
    files: list[Path]  # what was written (model.h, model.c)
    kernel_sources: list[Path]  # the kernel .c files this model needs
    include_dirs: list[Path]  # the generated dir, the kernel dir and the runtime's (model_abi.h)
    arena_bytes: int
    plan: MemoryPlan
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    layers: list[LayerRow]
    weight_bytes: int  # constant data emitted (flash), all layers
    macs: int
    dsp: bool = False
    graph: Graph | None = field(default=None, repr=False)
    unfused_arena_bytes: int = 0  # the layer-by-layer plan's arena (= arena_bytes when nothing is fused)
    fusion: fuse.Choice | None = None  # the planner's choice and the schedules it considered (None: --no-fuse)
    wide_bytes: int = 0  # the int8 bytes of the layers given wide weights (what widening added to flash)


# --- C text helpers ----------------------------------------------------------------------------------

_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,:()[]+=@")


def c_string(text: str) -> str:
    """A C string literal of `text`: anything outside a small safe set becomes a 3-digit octal escape,
    so quotes, backslashes, newlines, comment markers and trigraphs cannot escape the literal (and the
    literal is also safe inside a /* comment */)."""
    return '"' + "".join(chr(b) if b in _SAFE else f"\\{b:03o}" for b in text.encode("utf-8")) + '"'


def c_int(v: int) -> str:
    v = int(v)
    if not INT32_MIN <= v <= INT32_MAX:
        raise UnsupportedModelError(f"value {v} does not fit in int32")
    return "(-2147483647 - 1)" if v == INT32_MIN else str(v)


def c_float(x: float) -> str:
    text = repr(float(np.float32(x)))
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"


def c_array(ctype: str, name: str, values: np.ndarray, per_line: int = 24) -> str:
    flat = [c_int(v) for v in np.asarray(values).reshape(-1).tolist()]
    lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# --- per-op emission ----------------------------------------------------------------------------------


@dataclass
class _Layer:
    decls: list[str]
    calls: list[str]
    weight_bytes: int
    note: str = ""
    special: bool = False  # a tk_spec.h layer (or an ADD): it has a row form for fused groups


def _fold_bias(graph: Graph, op: Op, sum_axes: tuple[int, ...], input_offset: int, n_out: int) -> np.ndarray:
    w = graph.tensors[op.inputs[1]].data.astype(np.int64)
    b_idx = op.inputs[2] if len(op.inputs) > 2 else -1
    bias = graph.tensors[b_idx].data.astype(np.int64).reshape(-1) if b_idx >= 0 else np.zeros(n_out, np.int64)
    folded = bias + input_offset * w.sum(axis=sum_axes).reshape(-1)
    if folded.min() < INT32_MIN or folded.max() > INT32_MAX:
        raise UnsupportedModelError(f"layer '{op.name}': bias + offset * weight sum overflows int32")
    return folded


def pack4(w: np.ndarray) -> np.ndarray:
    """[O, K] weights in the kernels' 4-interleaved layout (tk_dot4x4): per group of 4 output channels,
    4 bytes of each channel in turn for every 4 inputs, then each channel's K % 4 tail; the O % 4 last
    channels as plain rows. One pass over the input then feeds four accumulators."""
    o, k = w.shape
    g, (q, r) = o // 4, divmod(k, 4)
    head = w[: 4 * g].reshape(g, 4, k)
    blocks = head[:, :, : 4 * q].reshape(g, 4, q, 4).transpose(0, 2, 1, 3).reshape(g, 16 * q)
    tails = head[:, :, 4 * q :].reshape(g, 4 * r)
    return np.concatenate([np.concatenate([blocks, tails], axis=1).reshape(-1), w[4 * g :].reshape(-1)])


LAYOUT_PLAIN, LAYOUT_POINTWISE, LAYOUT_ROWS = 0, 1, 2
PATCH_MAX = 1024  # TK_PATCH_MAX: the border patch of a ROWS convolution lives on the stack


def pack_rows(w: np.ndarray) -> np.ndarray:
    """[O, KH, KW, I] conv weights in the ROWS layout: per group of 4 output channels, for each kernel
    row the 4-interleaved [4, KW*I] block; then the O % 4 last channels plain."""
    o, kh, kw, i = w.shape
    g = o // 4
    parts = []
    for k in range(g):
        for ky in range(kh):
            parts.append(pack4(w[4 * k : 4 * k + 4, ky].reshape(4, kw * i)))
    parts.append(w[4 * g :].reshape(-1))
    return np.concatenate(parts) if parts else w.reshape(-1)


def _acc_bound(folded: np.ndarray, w_abs_sum: np.ndarray) -> int:
    """The largest |accumulator| a layer can reach: |folded bias| + 128 * sum |w| per channel (raw
    inputs and the zero-point padding are all within [-128, 127])."""
    return int(np.max(np.abs(folded.astype(np.int64)) + 128 * w_abs_sum.astype(np.int64)))


def _rq_fields(ident: str, p, n: int, acc_bound: int | None = None) -> tuple[list[str], str]:
    mult = np.broadcast_to(np.asarray(p.multipliers, dtype=np.int64).reshape(-1), (n,))
    shift = np.broadcast_to(np.asarray(p.shifts, dtype=np.int64).reshape(-1), (n,))
    # tk_mbqm_fast's preconditions (see tk_fixedpoint.h); otherwise the general path.
    fast = acc_bound is not None and acc_bound < 2**30 and bool(np.all(shift <= -1))
    decls = [c_array("int32_t", f"{ident}_mult", mult), c_array("int32_t", f"{ident}_shift", shift)]
    init = (
        f".rq = {{ .mult = {ident}_mult, .shift = {ident}_shift, .output_offset = {c_int(p.output_offset)}, "
        f".act_min = {c_int(p.act_min)}, .act_max = {c_int(p.act_max)}, .fast = {int(fast)} }}"
    )
    return decls, init


def _conv(
    graph: Graph, op: Op, ident: str, a: list[str], out: str, inplace: bool = False, wide: bool = False, rings=None
) -> _Layer:
    p = P.derive(graph, op)
    x, w, y = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]], graph.tensors[op.outputs[0]]
    if len(x.shape) != 4 or x.shape[0] != 1:
        raise UnsupportedModelError(f"layer '{op.name}' ({op.kind}): only batch-1 NHWC inputs are supported")
    _, ih, iw, ic = x.shape
    _, oh, ow, oc = y.shape
    dw = op.kind == "DEPTHWISE_CONV_2D"
    kh, kw = w.shape[1], w.shape[2]
    folded = _fold_bias(graph, op, (0, 1, 2) if dw else (1, 2, 3), p.input_offset, oc)
    weights = w.data.astype(np.int8)
    # The weight layout tells tk_conv2d which loop to run (TK_LAYOUT_* in tk_kernels.h).
    layout = LAYOUT_PLAIN
    if not dw and kh == 1 and kw == 1 and tuple(p.pad) == (0, 0):
        layout = LAYOUT_POINTWISE
        weights = pack4(weights.reshape(oc, ic))
    elif not dw and tuple(p.dilation) == (1, 1) and kh * kw * ic <= PATCH_MAX:
        layout = LAYOUT_ROWS
        weights = pack_rows(weights)
    w_abs = np.abs(w.data.astype(np.int64))
    w_abs_sum = w_abs.sum(axis=(0, 1, 2)) if dw else w_abs.sum(axis=(1, 2, 3))
    acc_bound = _acc_bound(folded, w_abs_sum)
    special = None
    if not inplace:  # an in-place depthwise keeps tk_depthwise_inplace (one scratch plane)
        special = _spec_conv(op, ident, p, x.shape, y.shape, w.data, folded, w_abs_sum, a[0], out, wide, rings)
    if special is not None:
        return special
    if rings is not None:
        raise AssertionError(f"layer {ident} was fused but has no row form")
    decls = [c_array("int8_t", f"{ident}_w", weights), c_array("int32_t", f"{ident}_bias", folded)]
    rq_decls, rq = _rq_fields(ident, p, oc, acc_bound)
    decls += rq_decls
    m = p.depth_multiplier if dw else 1
    decls.append(
        f"static const tk_conv_t {ident} = {{\n"
        f"    .in_h = {ih}, .in_w = {iw}, .in_c = {ic}, .out_h = {oh}, .out_w = {ow}, .out_c = {oc},\n"
        f"    .k_h = {kh}, .k_w = {kw}, .stride_h = {p.stride[0]}, .stride_w = {p.stride[1]},\n"
        f"    .dil_h = {p.dilation[0]}, .dil_w = {p.dilation[1]}, .pad_t = {p.pad[0]}, .pad_l = {p.pad[1]},\n"
        f"    .depth_mult = {m}, .layout = {layout}, .input_zp = {c_int(-p.input_offset)},\n"
        f"    .weights = {ident}_w, .bias = {ident}_bias,\n"
        f"    {rq}\n}};\n"
    )
    fn = "tk_depthwise" if dw else "tk_conv2d"
    note = f"{kh}x{kw} s{p.stride[0]}x{p.stride[1]} pad {p.pad[0]},{p.pad[1]}" + (f" x{m}" if m > 1 else "")
    nbytes = weights.size + 4 * folded.size + 8 * oc
    return _Layer(decls, [f"{fn}(&{ident}, {a[0]}, {out});"], nbytes, note)


def _fc(graph: Graph, op: Op, ident: str, a: list[str], out: str, wide: bool = False) -> _Layer:
    p = P.derive(graph, op)
    x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
    n_out, n_in = w.shape
    if x.size % n_in:
        raise UnsupportedModelError(f"layer '{op.name}': input of {x.size} elements is not a multiple of {n_in}")
    folded = _fold_bias(graph, op, (1,), p.input_offset, n_out)
    reach = 128 * np.abs(w.data.astype(np.int64)).sum(axis=1)
    special = _spec_fc(ident, p, x.size // n_in, w.data, folded, reach, a[0], out, wide)
    if special is not None:
        return special
    decls = [
        c_array("int8_t", f"{ident}_w", pack4(w.data.astype(np.int8))),
        c_array("int32_t", f"{ident}_bias", folded),
    ]
    rq_decls, rq = _rq_fields(ident, p, n_out)
    decls += rq_decls
    decls.append(
        f"static const tk_fc_t {ident} = {{\n"
        f"    .batches = {x.size // n_in}, .in_features = {n_in}, .out_features = {n_out},\n"
        f"    .weights = {ident}_w, .bias = {ident}_bias,\n    {rq}\n}};\n"
    )
    return _Layer(decls, [f"tk_fully_connected(&{ident}, {a[0]}, {out});"], w.size + 12 * n_out)


def _ch_array(ctype: str, name: str, rows: np.ndarray) -> str:
    body = ",\n    ".join("{ " + ", ".join(c_int(v) for v in r) + " }" for r in rows.tolist())
    return f"static const {ctype} {name}[{len(rows)}] = {{\n    {body}\n}};\n"


def _act_args(p) -> str:
    return f"{c_int(p.act_min)}, {c_int(p.act_max)}"


def _spec_conv(op: Op, ident, p, x_shape, y_shape, w, folded, w_abs_sum, x_ptr, out, wide, rings=None) -> _Layer | None:
    """The specialised form of a CONV_2D (tk_conv_spec) or DEPTHWISE_CONV_2D (tk_dw_spec), or None.
    With `rings` (rows of the input's and output's rings, 0 for a whole tensor) the layer is part of a
    fused group: it gets `{ident}_row(in, out, oy)`, one output row a call, which the group calls."""
    _, ih, iw, ic = x_shape
    _, oh, ow, oc = y_shape
    kh, kw = w.shape[1], w.shape[2]
    dw = op.kind == "DEPTHWISE_CONV_2D"
    if dw and ic == 1:  # one input channel times a multiplier is a CONV_2D: weights [1,KH,KW,OC] -> [OC,KH,KW,1]
        dw, w = False, np.ascontiguousarray(w.transpose(3, 1, 2, 0))
    if tuple(p.dilation) != (1, 1) or (dw and (p.depth_multiplier != 1 or kh * kw > spec.DW_TAPS_MAX)):
        return None
    rows = spec.ch_rows(folded, p.multipliers, p.shifts, p.output_offset, 128 * w_abs_sum, p.act_min, p.act_max)
    if rows is None:
        return None
    (sh, sw), (pt, pl) = p.stride, p.pad
    zp = c_int(-p.input_offset)
    if dw:
        rows = rows * np.array([2, 1, 1, 1])  # tk_rq2d: doubled biases (both weight packings double the weights)
        if spec.dw_by_rows(kh, kw, sw, ow, rings is None):  # one channel at a time over widened rows
            kernel, packed, tail = "tk_dwp_spec", spec.pack_dw_rows(w.reshape(kh, kw, oc).astype(np.int8)), None
        else:  # four channels a tap, in NHWC
            kernel, (packed, tail) = "tk_dw_spec", spec.pack_dw(w.reshape(kh * kw, oc).astype(np.int8))
        decls = [c_array("int32_t", f"{ident}_w", packed if packed.size else np.zeros(1, np.int64))]
        weights = f"{ident}_w, "
        if tail is not None:
            decls.append(c_array("int8_t", f"{ident}_wt", tail if tail.size else np.zeros(1, np.int8)))
            weights += f"{ident}_wt, "
        decls.append(_ch_array("tk_ch_t", f"{ident}_ch", rows))
        shapes = f"{kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {zp}, {_act_args(p)}"
        # the kernel's buffers, sized here with literals (see tk_dw_spec): widened rows for tk_dwp_spec,
        # the zero-point row and tap pointers for tk_dw_spec
        if kernel == "tk_dwp_spec":
            pw = (ow - 1) * sw + 2 * ((kw + 1) // 2)  # TK_DWP_PW
            bufs = f"    int16_t buf[{(2 * kh - 1 if rings is None else kh) * pw}];\n", "buf, "
        else:
            bufs = f"    int8_t zrow[{ic}];\n    const int8_t *xp[{kh * kw}];\n", "zrow, xp, "
        if rings is None:
            decls.append(
                f"static __attribute__((noinline)) void {ident}_run(const int8_t *in, int8_t *out)\n{{\n{bufs[0]}"
                f"    {kernel}(in, out, {weights}{ident}_ch, {bufs[1]}{ih}, {iw}, {ic}, {oh}, {ow},\n"
                f"        {shapes});\n}}\n"
            )
        else:
            decls.append(
                f"static __attribute__((noinline)) void {ident}_row(const int8_t *in, int8_t *out, int32_t oy)\n"
                f"{{\n{bufs[0]}    {kernel}_row(in, TK_ROW(out, oy, {rings[1]}, {ow * oc}), {weights}{ident}_ch, "
                f"{bufs[1]}{ih}, {iw}, {ic}, {ow},\n        {shapes}, {rings[0]}, oy);\n}}\n"
            )
        nbytes = 4 * packed.size + (0 if tail is None else tail.size) + 16 * len(rows)
    else:
        xb = spec.xb_words_conv(kh, kw, ic)
        if 4 * xb > spec.XB_MAX_BYTES:
            return None
        w2 = w.reshape(oc, kh * kw * ic).astype(np.int8)
        packed = spec.pack_wide(2 * w2.astype(np.int64), 2) if wide else spec.pack_pairs(w2)
        if wide:
            rows = rows * np.array([2, 1, 1, 1])  # doubled with the weights: tk_rq2d
        if oc % 2:
            rows = np.concatenate([rows, rows[-1:]])  # read for the odd channel's zero partner, never stored
        inside = int(pt == 0 and pl == 0 and (oh - 1) * sh + kh <= ih and (ow - 1) * sw + kw <= iw)
        step = fuse.rows_per_step_of(op.kind, oh, ow)
        y1 = "oy + 1" if step == 1 else f"oy + {step} < {oh} ? oy + {step} : {oh}"
        rin, rout, y0, y1 = (0, 0, "0", str(oh)) if rings is None else (*rings, "oy", y1)
        head = "(const int8_t *in, int8_t *out)" if rings is None else "(const int8_t *in, int8_t *out, int32_t oy)"
        # with a row count known only at run time gcc cannot see that a lone pixel's partner slot is never
        # read, and warns; zeroing costs a few stores a row
        init = "" if rings is None else " = {0}"
        decls = [
            c_array("int32_t", f"{ident}_w", packed),
            _ch_array("tk_ch_t", f"{ident}_ch", rows),
            f"static __attribute__((noinline)) void {ident}_{'run' if rings is None else 'row'}{head}\n{{\n"
            f"    int32_t xb[{xb}]{init}; /* one pixel pair's halfword fields */\n"
            f"    tk_conv_spec(in, out, {ident}_w, {ident}_ch, xb, {ih}, {iw}, {ic}, {oh}, {ow}, {oc}, {kh}, {kw},\n"
            f"                 {sh}, {sw}, {pt}, {pl}, {inside}, {zp}, {_act_args(p)}, {int(wide)}, {rin}, {rout}, "
            f"{y0}, {y1});\n}}\n",
        ]
        nbytes = 4 * packed.size + 16 * len(rows)
    note = f"{kh}x{kw} s{sh}x{sw} pad {pt},{pl}, specialised" + (", wide weights" if wide and not dw else "")
    calls = [f"{ident}_run({x_ptr}, {out});"] if rings is None else []
    return _Layer(decls, calls, nbytes, note, special=True)


def _spec_fc(ident, p, batches: int, w, folded, reach, x_ptr, out, wide) -> _Layer | None:
    """FULLY_CONNECTED through tk_fc_spec, or None."""
    n_out, n_in = w.shape
    rows = spec.ch1_rows(folded, p.multipliers, p.shifts, p.output_offset, reach, p.act_min, p.act_max)
    xb = spec.xb_words_fc(n_in)
    if rows is None or 4 * xb > spec.XB_MAX_BYTES:
        return None
    block = 4 if wide else 2
    if n_out % block:
        rows = np.concatenate([rows] + [rows[-1:]] * (block - n_out % block))
    packed = spec.pack_wide(w.astype(np.int8), 4) if wide else spec.pack_pairs(w.astype(np.int8))
    decls = [
        c_array("int32_t", f"{ident}_w", packed),
        _ch_array("tk_ch1_t", f"{ident}_ch", rows),
        f"static __attribute__((noinline)) void {ident}_run(const int8_t *in, int8_t *out)\n{{\n"
        f"    int32_t xb[{xb}]; /* the row's halfword fields */\n"
        f"    tk_fc_spec(in, out, {ident}_w, {ident}_ch, xb, {batches}, {n_in}, {n_out}, {_act_args(p)}, "
        f"{int(wide)});\n}}\n",
    ]
    note = "specialised" + (", wide weights" if wide else "")
    return _Layer(decls, [f"{ident}_run({x_ptr}, {out});"], 4 * packed.size + 20 * len(rows), note)


def _strides4(shape: tuple[int, ...], out4: tuple[int, ...]) -> list[int]:
    s4 = (1,) * (4 - len(shape)) + tuple(shape)
    strides, acc = [0] * 4, 1
    for d in range(3, -1, -1):
        strides[d] = 0 if s4[d] == 1 and out4[d] != 1 else acc
        acc *= s4[d]
    return strides


def _add(graph: Graph, op: Op, ident: str, a: list[str], out: str, rings=None) -> _Layer:
    p = P.derive(graph, op)
    s1, s2 = graph.tensors[op.inputs[0]].shape, graph.tensors[op.inputs[1]].shape
    y = graph.tensors[op.outputs[0]]
    if len(y.shape) > 4:
        raise UnsupportedModelError(f"layer '{op.name}': ADD of more than 4 dimensions")
    out4 = (1,) * (4 - len(y.shape)) + tuple(y.shape)
    # same shapes: the table form (fused groups take only these ADDs, fuse.py; it has their row function)
    if tuple(s1) == tuple(y.shape) == tuple(s2):
        return _add_tables(p, ident, a, out, y, rings)
    st1, st2 = _strides4(s1, out4), _strides4(s2, out4)
    # tk_mbqm_fast0 needs shift <= 0 and |x| < 2^30: (int8 + offset) << left_shift stays below 2^28 for
    # left_shift <= 20, each rescaled input below it too, so their sum is below 2^29.
    fast = p.left_shift <= 20 and max(p.input1_shift, p.input2_shift, p.output_shift) <= 0
    decls = [
        f"static const tk_add_t {ident} = {{\n"
        f"    .dims = {{{', '.join(map(str, out4))}}},\n"
        f"    .stride1 = {{{', '.join(map(str, st1))}}}, .stride2 = {{{', '.join(map(str, st2))}}},\n"
        f"    .input1_offset = {c_int(p.input1_offset)}, .input2_offset = {c_int(p.input2_offset)}, "
        f".output_offset = {c_int(p.output_offset)}, .left_shift = {c_int(p.left_shift)},\n"
        f"    .input1_mult = {c_int(p.input1_multiplier)}, .input1_shift = {c_int(p.input1_shift)}, "
        f".input2_mult = {c_int(p.input2_multiplier)}, .input2_shift = {c_int(p.input2_shift)},\n"
        f"    .output_mult = {c_int(p.output_multiplier)}, .output_shift = {c_int(p.output_shift)}, "
        f".act_min = {c_int(p.act_min)}, .act_max = {c_int(p.act_max)}, .fast = {int(fast)}\n}};\n"
    ]
    return _Layer(decls, [f"tk_add(&{ident}, {a[0]}, {a[1]}, {out});"], 0, special=True)


def _add_tables(p: P.AddParams, ident: str, a: list[str], out: str, y, rings) -> _Layer:
    """An ADD of two same-shape tensors as tk_add_lut: each input's rescaling, a function of its byte, as
    a table made here by the reference's MultiplyByQuantizedMultiplier, as tk_add's general path."""
    from harness import reference as R

    v = np.arange(-128, 128, dtype=np.int64)
    la = R.mbqm(R._wrap32((v + p.input1_offset) << p.left_shift), p.input1_multiplier, p.input1_shift)
    lb = R.mbqm(R._wrap32((v + p.input2_offset) << p.left_shift), p.input2_multiplier, p.input2_shift)
    # the short output path (tk_add_lut's FAST) needs shift <= 0 and every sum below 2^30
    fast = p.output_shift <= 0 and int(np.abs(la).max() + np.abs(lb).max()) < 2**30
    if fast:
        la, lb = 2 * la, 2 * lb
    decls = [c_array("int32_t", f"{ident}_la", la), c_array("int32_t", f"{ident}_lb", lb)]
    args = (
        f"{c_int(p.output_multiplier)}, {c_int(p.output_shift)}, {c_int(p.output_offset)}, "
        f"{c_int(p.act_min)}, {c_int(p.act_max)}, {int(fast)}"
    )
    tables = f"{ident}_la + 128, {ident}_lb + 128"
    if rings is None:
        decls.append(
            f"static __attribute__((noinline)) void {ident}_run(const int8_t *a, const int8_t *b, int8_t *out)\n"
            f"{{\n    tk_add_lut({tables}, a, b, out, {y.size}, {args});\n}}\n"
        )
        return _Layer(decls, [f"{ident}_run({a[0]}, {a[1]}, {out});"], 8 * 256, special=True)
    row = y.size // y.shape[1]
    ra, rb, ro = rings
    decls.append(
        f"static __attribute__((noinline)) void {ident}_row(const int8_t *a, const int8_t *b, int8_t *out, int32_t y)\n"
        f"{{\n    tk_add_lut({tables}, TK_ROW(a, y, {ra}, {row}), TK_ROW(b, y, {rb}, {row}),\n"
        f"               TK_ROW(out, y, {ro}, {row}), {row}, {args});\n}}\n"
    )
    return _Layer(decls, [], 8 * 256, "row by row", special=True)


def _pool(graph: Graph, op: Op, ident: str, a: list[str], out: str) -> _Layer:
    p = P.derive(graph, op)
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if len(x.shape) != 4 or x.shape[0] != 1:
        raise UnsupportedModelError(f"layer '{op.name}' ({op.kind}): only batch-1 NHWC inputs are supported")
    decls = [
        f"static const tk_pool_t {ident} = {{\n"
        f"    .in_h = {x.shape[1]}, .in_w = {x.shape[2]}, .c = {x.shape[3]}, "
        f".out_h = {y.shape[1]}, .out_w = {y.shape[2]},\n"
        f"    .f_h = {p.filter[0]}, .f_w = {p.filter[1]}, "
        f".stride_h = {p.stride[0]}, .stride_w = {p.stride[1]}, "
        f".pad_t = {p.pad[0]}, .pad_l = {p.pad[1]},\n"
        f"    .act_min = {c_int(p.act_min)}, .act_max = {c_int(p.act_max)}\n}};\n"
    ]
    fn = "tk_avg_pool" if op.kind == "AVERAGE_POOL_2D" else "tk_max_pool"
    note = f"{p.filter[0]}x{p.filter[1]} s{p.stride[0]}x{p.stride[1]}"
    return _Layer(decls, [f"{fn}(&{ident}, {a[0]}, {out});"], 0, note)


def _mean(graph: Graph, op: Op, ident: str, a: list[str], out: str) -> _Layer:
    x = graph.tensors[op.inputs[0]]
    axes = tuple(sorted(op.options.get("axes", ())))
    if len(x.shape) != 4 or x.shape[0] != 1 or axes != (1, 2):
        raise UnsupportedModelError(
            f"layer '{op.name}': MEAN is supported over axes (1, 2) of a batch-1 NHWC tensor, not {axes} of "
            f"{dims(x.shape)}"
        )
    p = P.derive(graph, op)
    decls = [
        f"static const tk_mean_t {ident} = {{\n"
        f"    .hw = {x.shape[1] * x.shape[2]}, .c = {x.shape[3]}, .input_offset = {c_int(p.input_offset)}, "
        f".output_offset = {c_int(p.output_offset)},\n"
        f"    .mult = {c_int(p.multiplier)}, .shift = {c_int(p.shift)}\n}};\n"
    ]
    return _Layer(decls, [f"tk_mean_hw(&{ident}, {a[0]}, {out});"], 0)


def _requant_block(name: str, rp: P.RequantParams, outer: int, inner: int, out_stride: int) -> str:
    return (
        f"static const tk_requant_t {name} = {{\n"
        f"    .outer = {outer}, .inner = {inner}, .out_stride = {out_stride}, "
        f".identity = {int(bool(rp.identity))},\n"
        f"    .input_offset = {c_int(rp.input_offset)}, .output_offset = {c_int(rp.output_offset)}, "
        f".mult = {c_int(rp.multiplier)}, .shift = {c_int(rp.shift)}\n}};\n"
    )


def _quantize(graph: Graph, op: Op, ident: str, a: list[str], out: str) -> _Layer:
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if x.dtype != "int8" or y.dtype != "int8":
        raise UnsupportedModelError(
            f"layer '{op.name}': QUANTIZE {x.dtype} -> {y.dtype} inside the model; only int8 -> int8 runs on "
            "the device (float boundaries are handled on the host)"
        )
    rp = P.derive(graph, op)
    return _Layer([_requant_block(ident, rp, 1, y.size, y.size)], [f"tk_requant(&{ident}, {a[0]}, {out});"], 0)


def _concat(graph: Graph, op: Op, ident: str, a: list[str], out: str) -> _Layer:
    p = P.derive(graph, op)
    y = graph.tensors[op.outputs[0]]
    axis = p.axis
    outer = math.prod(y.shape[:axis])
    out_inner = math.prod(y.shape[axis:])
    decls, calls, col = [], [], 0
    for j, (t, rp) in enumerate(zip(op.inputs, p.inputs, strict=True)):
        inner = math.prod(graph.tensors[t].shape[axis:])
        decls.append(_requant_block(f"{ident}_in{j}", rp, outer, inner, out_inner))
        calls.append(f"tk_requant(&{ident}_in{j}, {a[j]}, {out} + {col});")
        col += inner
    return _Layer(decls, calls, 0, f"axis {axis}")


def _pad(graph: Graph, op: Op, ident: str, a: list[str], out: str) -> _Layer:
    p = P.derive(graph, op)
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if len(x.shape) > 4:
        raise UnsupportedModelError(f"layer '{op.name}': PAD of more than 4 dimensions")
    lead = 4 - len(x.shape)
    in4 = (1,) * lead + tuple(x.shape)
    out4 = (1,) * lead + tuple(y.shape)
    before = (0,) * lead + tuple(int(b) for b, _ in p.paddings)
    decls = [
        f"static const tk_pad_t {ident} = {{\n"
        f"    .in_dims = {{{', '.join(map(str, in4))}}}, .out_dims = {{{', '.join(map(str, out4))}}},\n"
        f"    .before = {{{', '.join(map(str, before))}}}, .pad_value = {c_int(p.pad_value)}\n}};\n"
    ]
    return _Layer(decls, [f"tk_pad(&{ident}, {a[0]}, {out});"], 0)


def _softmax(graph: Graph, op: Op, ident: str, a: list[str], out: str) -> _Layer:
    p = P.derive(graph, op)
    x = graph.tensors[op.inputs[0]]
    depth = x.shape[-1]
    decls = [
        f"static const tk_softmax_t {ident} = {{\n"
        f"    .rows = {x.size // depth}, .depth = {depth}, .input_mult = {c_int(p.input_multiplier)}, "
        f".input_left_shift = {c_int(p.input_left_shift)}, .diff_min = {c_int(p.diff_min)}\n}};\n"
    ]
    return _Layer(decls, [f"tk_softmax(&{ident}, {a[0]}, {out});"], 0)


_EMITTERS = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _conv,
    "FULLY_CONNECTED": _fc,
    "ADD": _add,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "MEAN": _mean,
    "QUANTIZE": _quantize,
    "CONCATENATION": _concat,
    "PAD": _pad,
    "SOFTMAX": _softmax,
}


# --- the model ---------------------------------------------------------------------------------------


def _check_ops(graph: Graph) -> None:
    for k, op in enumerate(graph.ops):
        if op.kind == "RESHAPE":
            continue
        if op.kind not in _EMITTERS:
            raise UnsupportedModelError(
                f"layer {k} '{op.name}': {op.kind} is not supported by the code generator inside the int8 "
                f"model (supported: {', '.join(sorted(_EMITTERS) + ['RESHAPE'])})"
            )
        for t in op.inputs + op.outputs:
            if t >= 0 and not graph.tensors[t].is_const and graph.tensors[t].dtype != "int8":
                raise UnsupportedModelError(
                    f"layer {k} '{op.name}' ({op.kind}): tensor '{graph.tensors[t].name}' is "
                    f"{graph.tensors[t].dtype}; the device runs int8 activations only "
                    "(quantize to int8 first)"
                )


def _io_spec(graph: Graph, t: int, plan: MemoryPlan, boundary: P.BoundaryParams | None) -> IOSpec:
    x = graph.tensors[t]
    if x.quant is None:
        raise UnsupportedModelError(f"model input/output '{x.name}' has no quantization parameters")
    return IOSpec(t, x.name, plan.offsets[t], x.nbytes, tuple(x.shape), x.quant.s, x.quant.zp, boundary)


def _tensor_entry(s: IOSpec) -> str:
    d = list(s.shape) + [0] * (4 - len(s.shape))
    if len(s.shape) > 4:
        raise UnsupportedModelError(f"model input/output '{s.name}' has more than 4 dimensions")
    return (
        f"    {{ .offset = {s.offset}u, .bytes = {s.bytes}u, .scale = {c_float(s.scale)}, "
        f".zero_point = {s.zero_point}, .ndim = {len(s.shape)}, .dims = {{{', '.join(map(str, d))}}} }}, "
        f"/* {c_string(s.name)} */"
    )


def analyse(graph: Graph, fuse_layers: bool = False) -> tuple[MemoryPlan, list[LayerRow]]:
    """The memory plan and per-layer rows of an int8 interior graph, without emitting code (weight
    bytes here count the raw weight tensors; `generate` counts what it emits). With `fuse_layers`, the
    plan `generate` makes: its fused groups in `plan.fused`, the choice in `plan.choice`."""
    _check_ops(graph)
    choice = _choose_fusion(graph, set()) if fuse_layers else None
    plan = plan_memory(graph, fused=choice.groups if choice else ())
    plan.choice = choice
    group_of = {k: g for g in plan.fused for k in g.ops}
    rows = []
    for k, op in enumerate(graph.ops):
        rows.append(_row(graph, plan, k, op, sum(graph.tensors[t].nbytes for t in op.inputs[1:] if _const(graph, t))))
        if k in group_of:
            rows[-1].group = group_of[k].describe()
    return plan, rows


def _const(graph: Graph, t: int) -> bool:
    return t >= 0 and graph.tensors[t].is_const


def _ident(k: int, op: Op) -> str:
    return f"l{k}_" + c_identifier(op.name or op.kind.lower())


def _row(graph: Graph, plan: MemoryPlan, k: int, op: Op, weight_bytes: int) -> LayerRow:
    acts = [t for t in op.inputs if t >= 0 and not graph.tensors[t].is_const]
    return LayerRow(
        index=k,
        name=op.name,
        ident=_ident(k, op),
        op=op.kind,
        input_shapes=[tuple(graph.tensors[t].shape) for t in acts],
        output_shape=tuple(graph.tensors[op.outputs[0]].shape),
        macs=op_macs(graph, op),
        weight_bytes=weight_bytes,
        activation_bytes=sum(graph.tensors[t].nbytes for t in acts + list(op.outputs)),
        input_offsets=[plan.offsets.get(t) if t >= 0 else None for t in op.inputs],
        output_offset=plan.offsets[op.outputs[0]],
    )


def split_interior(
    graph: Graph,
) -> tuple[Graph, list[P.BoundaryParams | None], list[P.BoundaryParams | None]]:
    """The int8 interior and the float boundaries (harness.model.boundary), or the graph itself when
    it has no float boundary."""
    try:
        from harness.model.boundary import split_boundary
    except ImportError:  # pragma: no cover - until the boundary module exists
        return graph, [None] * len(graph.inputs), [None] * len(graph.outputs)
    return split_boundary(graph)


def generate_files(
    graph: Graph, out_dir: Path, *, dsp: bool = False, wide_budget: int = 0, fuse_layers: bool = True
) -> CodegenResult:
    """`wide_budget`: flash bytes the generator may add by widening CONV_2D / FULLY_CONNECTED weights to
    halfwords (spec.choose_wide); 0 keeps every weight int8. `fuse_layers`: let the planner run chains
    of layers row by row where that lowers the peak (fuse.py); False gives the layer-by-layer plan."""
    interior, in_bounds, out_bounds = split_interior(graph)
    interior.validate()
    _check_ops(interior)
    candidates = [
        (k, op_macs(interior, op), interior.tensors[op.inputs[1]].nbytes)
        for k, op in enumerate(interior.ops)
        if op.kind in ("CONV_2D", "FULLY_CONNECTED") or spec.dw_as_conv(interior, op)
    ]
    wide = spec.choose_wide(candidates, wide_budget)
    choice = _choose_fusion(interior, wide) if fuse_layers else None
    groups = choice.groups if choice else []
    plan = plan_memory(interior, fused=groups)
    group_of = {k: g for g in groups for k in g.ops}
    ident_model = c_identifier(interior.name or "model", "m")
    inputs = [_io_spec(interior, t, plan, b) for t, b in zip(interior.inputs, in_bounds, strict=True)]
    outputs = [_io_spec(interior, t, plan, b) for t, b in zip(interior.outputs, out_bounds, strict=True)]

    decls: list[str] = []
    body: list[str] = []
    rows: list[LayerRow] = []
    kernels: set[str] = set()
    for k, op in enumerate(interior.ops):
        ident = _ident(k, op)
        ptr = [f"arena + {plan.offsets[t]}" if t >= 0 and t in plan.offsets else "0" for t in op.inputs]
        acts = [p for t, p in zip(op.inputs, ptr, strict=True) if t >= 0 and t in plan.offsets]
        out = f"arena + {plan.offsets[op.outputs[0]]}"
        shapes = " ".join(dims(interior.tensors[t].shape) for t in op.inputs if t in plan.offsets)
        y_shape = dims(interior.tensors[op.outputs[0]].shape)
        head = f"    /* {k} {op.kind} {c_string(op.name)}: {shapes} -> {y_shape}"
        if op.kind == "RESHAPE":
            body.append(head + ", aliases its input (no copy) */")
            body.append(f"    MODEL_LAYER_END({k});")
            rows.append(_row(interior, plan, k, op, 0))
            continue
        g = group_of.get(k)
        rings = None
        if g is not None:
            ts = [t for t in op.inputs[: 2 if op.kind == "ADD" else 1]] + [op.outputs[0]]
            rings = tuple(g.rings.get(t, 0) for t in ts)
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            layer = _conv(interior, op, ident, acts, out, inplace=k in plan.inplace, wide=k in wide, rings=rings)
        elif op.kind == "FULLY_CONNECTED":
            layer = _fc(interior, op, ident, acts, out, wide=k in wide)
        elif op.kind == "ADD":
            layer = _add(interior, op, ident, acts, out, rings=rings)
        else:
            layer = _EMITTERS[op.kind](interior, op, ident, acts, out)
        if k in plan.inplace:  # the planner gave output and input one buffer, plus a scratch plane
            layer.calls = [f"tk_depthwise_inplace(&{ident}, {out}, arena + {plan.inplace[k]});"]
            layer.note += ", in place"
        kernels.add(KERNEL_FILES[op.kind])
        macs = op_macs(interior, op)
        extra = (f", {layer.note}" if layer.note else "") + (f", {macs} MACs" if macs else "")
        decls.append(f"/* layer {k}: {op.kind} {c_string(op.name)} */\n" + "".join(layer.decls))
        rows.append(_row(interior, plan, k, op, layer.weight_bytes))
        if g is not None:
            rows[-1].group = g.describe()
        if g is None:
            body.append(head + extra + " */")
            body += [f"    {c}" for c in layer.calls]
            body.append(f"    MODEL_LAYER_END({k});")
            continue
        ring = ", ".join(f"{interior.tensors[t].name}: {g.rings[t]} rows" for t in op.outputs if t in g.rings)
        body.append(head + extra + f", fused group {g.describe()}" + (f", ring of {ring}" if ring else "") + " */")
        if k == g.last:  # the group runs as a whole here; its layers' profile stamps follow it
            gid = f"g{g.first}_{g.last}"
            decls.append(_group_runner(interior, plan, g, gid))
            body.append(f"    {gid}_run(arena);")
            body += [f"    MODEL_LAYER_END({j});" for j in g.ops]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    macs = interior.macs()
    header = _model_h(interior, ident_model, plan, inputs, outputs, macs)
    source = _model_c(interior, decls, body, inputs, outputs)
    files = []
    for fname, text in (("model.h", header), ("model.c", source)):
        path = out_dir / fname
        if not path.exists() or path.read_text() != text:  # keep mtimes of unchanged files for make-like caches
            path.write_text(text)
        files.append(path)
    return CodegenResult(
        name=interior.name,
        out_dir=out_dir,
        files=files,
        kernel_sources=[KERNEL_DIR / f for f in sorted(kernels)],
        include_dirs=[out_dir, KERNEL_DIR, RUNTIME_DIR],
        arena_bytes=plan.arena_bytes,
        plan=plan,
        inputs=inputs,
        outputs=outputs,
        layers=rows,
        weight_bytes=sum(r.weight_bytes for r in rows),
        macs=macs,
        dsp=dsp,
        graph=interior,
        unfused_arena_bytes=choice.unfused_arena if choice else plan.arena_bytes,
        fusion=choice,
        wide_bytes=sum(nbytes for k, _, nbytes in candidates if k in wide),
    )


def _streams(graph: Graph, k: int, op: Op, wide: set[int]) -> bool:
    """Whether layer k has a row form: an ADD, or a conv / depthwise that takes a tk_spec.h template."""
    if op.kind == "ADD":
        return True
    if op.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return False
    return _conv(graph, op, "probe", ["in"], "out", wide=k in wide).special


def _choose_fusion(graph: Graph, wide: set[int]) -> fuse.Choice:
    streams = {k: _streams(graph, k, op, wide) for k, op in enumerate(graph.ops)}
    return fuse.choose(
        graph,
        lambda k: streams[k],
        lambda gs: live_bytes(graph, gs),
        lambda gs: plan_memory(graph, fused=gs).arena_bytes,
    )


def _group_runner(graph: Graph, plan: MemoryPlan, g: fuse.FusedGroup, gid: str) -> str:
    """The C that replays the group's schedule: per step, one row of one layer."""
    cases = []
    for i, k in enumerate(g.ops):
        op = graph.ops[k]
        ts = [t for t in op.inputs[: 2 if op.kind == "ADD" else 1]] + [op.outputs[0]]
        args = ", ".join(f"arena + {plan.offsets[t]}" for t in ts)
        n = fuse.rows_per_step(graph, op)
        call = f"{_ident(k, op)}_row({args}, made[{i}]);"
        t = op.outputs[0]
        if t in g.mirror:
            y = graph.tensors[t]
            call += (
                f"\n            tk_ring_mirror(arena + {plan.offsets[t]}, made[{i}], {n}, {y.shape[1]}, {g.rings[t]}, "
                f"{g.mirror[t]}, {y.nbytes // y.shape[1]});"
            )
        call += f"\n            made[{i}] += {n};"
        cases.append(f"        case {i}:\n            {call}\n            break;")
    steps = ", ".join(map(str, g.steps))
    return (
        f"/* fused group {g.describe()}: {len(g.steps)} row steps, in the order the last layer's rows pull them */\n"
        f"static const uint8_t {gid}_steps[{len(g.steps)}] = {{{steps}}};\n"
        f"static __attribute__((noinline)) void {gid}_run(int8_t *arena)\n{{\n"
        f"    int32_t made[{len(g.ops)}] = {{0}}; /* rows made so far, per layer */\n"
        f"    for (int32_t s = 0; s < {len(g.steps)}; s++) {{\n"
        f"        switch ({gid}_steps[s]) {{\n" + "\n".join(cases) + "\n        default:\n            break;\n"
        "        }\n    }\n}\n"
    )


def _model_h(graph: Graph, ident: str, plan: MemoryPlan, inputs, outputs, macs: int) -> str:
    guard = "MODEL_H"
    return f"""/* Generated by harness.engines.native: the model ABI of firmware/README.md. Do not edit. */
#ifndef {guard}
#define {guard}

#include <stdint.h>

#include "model_abi.h"

#define MODEL_NAME        {c_string(graph.name)}
#define MODEL_ARENA_BYTES {plan.arena_bytes}u
#define MODEL_NUM_INPUTS  {len(inputs)}
#define MODEL_NUM_OUTPUTS {len(outputs)}
#define MODEL_NUM_LAYERS  {len(graph.ops)}
#define MODEL_MACS        {macs}u
#define MODEL_INPUT_BYTES {sum(s.bytes for s in inputs)}u  /* all inputs together: sizes the runtime's copy */


extern const model_tensor_t model_inputs[MODEL_NUM_INPUTS];
extern const model_tensor_t model_outputs[MODEL_NUM_OUTPUTS];

/* Runs every layer. `arena` holds MODEL_ARENA_BYTES bytes, 16-byte aligned; the inputs have been
   written at their offsets, the outputs are read at theirs afterwards. Weights are const (flash). */
void model_run(int8_t *arena);

#endif /* {guard} */
"""


def _model_c(graph: Graph, decls: list[str], body: list[str], inputs, outputs) -> str:
    ins = "\n".join(_tensor_entry(s) for s in inputs)
    outs = "\n".join(_tensor_entry(s) for s in outputs)
    return (
        f"/* Generated by harness.engines.native for {c_string(graph.name)}: {len(graph.ops)} layers. "
        "Do not edit. */\n"
        '#include <stdint.h>\n\n#include "model.h"\n#include "tk_kernels.h"\n#include "tk_spec.h"\n\n'
        "/* A profiling build (HARNESS_LAYER_PROFILE) stamps the counter after each layer, in the runtime;\n"
        "   otherwise MODEL_LAYER_END does nothing. */\n"
        "#if HARNESS_LAYER_PROFILE\nvoid harness_layer_end(uint32_t index);\n"
        "#define MODEL_LAYER_END(index) harness_layer_end(index)\n#endif\n"
        "#ifndef MODEL_LAYER_END\n#define MODEL_LAYER_END(index) ((void)0)\n#endif\n\n"
        f"#if TK_PATCH_MAX != {PATCH_MAX}\n"
        '#error "firmware/kernels and harness.engines.native disagree on TK_PATCH_MAX"\n#endif\n\n'
        + "\n".join(decls)
        + f"\nconst model_tensor_t model_inputs[MODEL_NUM_INPUTS] = {{\n{ins}\n}};\n\n"
        + f"const model_tensor_t model_outputs[MODEL_NUM_OUTPUTS] = {{\n{outs}\n}};\n\n"
        + "void model_run(int8_t *arena)\n{\n"
        + "\n".join(body)
        + "\n}\n"
    )
