"""The C kernels on the host, each against a numpy statement of TFLite's integer arithmetic, with
integer parameters chosen here (params.derive is replaced by a table), so the kernels are tested
independently of the parameter derivation. The whole-model bit-exactness tests (against the numpy
reference and the interpreter) are in test_codegen_models.py."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from harness.engines.native import generate, spec
from harness.model import params as P
from harness.model.ir import Graph, Op, Quant, Tensor, conv_out_size
from harness.targets.host import HostModel

I32 = np.int64


def srdhm(a, b):
    a = np.asarray(a, I32)
    b = np.asarray(b, I32)
    ab = a * b
    x = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    r = np.where(x < 0, -((-x) >> 31), x >> 31)  # C++ division truncates towards zero
    return np.where((a == b) & (a == -(2**31)), 2**31 - 1, r)


def rdbpot(x, e):
    x = np.asarray(x, I32)
    e = np.asarray(e, I32)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def wrap32(x):
    return ((np.asarray(x, I32) + 2**31) % 2**32) - 2**31


def mbqm(x, m, s):
    s = np.asarray(s, I32)
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    return rdbpot(srdhm(wrap32(np.asarray(x, I32) << left), m), right)


def mbqm_single(x, m, s):
    """FULLY_CONNECTED's requantization: one rounding of x * m * 2^(s - 31)."""
    total = 31 - np.asarray(s, I32)
    return (np.asarray(x, I32) * np.asarray(m, I32) + (np.int64(1) << (total - 1))) >> total


def q(scale=0.05, zp=0):
    return Quant(np.array([scale], np.float32), np.array([zp]))


class Table:
    """Stands in for params.derive: the parameters of each op, chosen by the test."""

    def __init__(self):
        self.by_op: dict[int, object] = {}

    def __call__(self, graph, op):
        return self.by_op.get(id(op))


@pytest.fixture
def table(monkeypatch):
    t = Table()
    monkeypatch.setattr(P, "derive", t)
    return t


def rand_rq(rng, n):
    mult = rng.integers(2**30, 2**31 - 1, size=n, dtype=I32)
    shift = rng.integers(-11, -6, size=n, dtype=I32)
    return mult, shift


def run_host(graph, inputs, tmp_path):
    return HostModel(graph, cache_dir=tmp_path).run(inputs)


def extremes(shape, rng):
    return [
        rng.integers(-128, 128, size=shape, dtype=np.int8),
        np.full(shape, -128, np.int8),
        np.full(shape, 127, np.int8),
    ]


# --- conv / depthwise -------------------------------------------------------------------------------


def conv_ref(x, w, bias, p: P.ConvParams, out_hw, depthwise: bool):
    """TFLite's per-channel conv / depthwise: out-of-bounds taps skipped, acc = sum w*(x+off) + bias."""
    _, ih, iw, ic = x.shape
    oh, ow = out_hw
    kh, kw = w.shape[1], w.shape[2]
    oc = w.shape[3] if depthwise else w.shape[0]
    acc = np.zeros((oh, ow, oc), I32)
    xs = x[0].astype(I32) + p.input_offset
    for oy in range(oh):
        for ox in range(ow):
            for ky in range(kh):
                for kx in range(kw):
                    iy = oy * p.stride[0] - p.pad[0] + ky * p.dilation[0]
                    ix = ox * p.stride[1] - p.pad[1] + kx * p.dilation[1]
                    if not (0 <= iy < ih and 0 <= ix < iw):
                        continue
                    if depthwise:
                        acc[oy, ox] += np.repeat(xs[iy, ix], p.depth_multiplier) * w[0, ky, kx].astype(I32)
                    else:
                        acc[oy, ox] += w[:, ky, kx, :].astype(I32) @ xs[iy, ix]
    acc += bias
    y = mbqm(acc, p.multipliers, p.shifts) + p.output_offset
    return np.clip(y, p.act_min, p.act_max).astype(np.int8)[None]


CONV_CASES = [
    # (in h, w, c), out c, (kh, kw), stride, dilation, padding, depthwise, multiplier
    ((7, 9, 5), 6, (3, 3), (1, 1), (1, 1), "SAME", False, 1),
    ((9, 7, 3), 8, (3, 3), (2, 2), (1, 1), "SAME", False, 1),
    ((6, 6, 8), 7, (1, 1), (1, 1), (1, 1), "VALID", False, 1),
    ((7, 7, 4), 5, (1, 1), (2, 2), (1, 1), "SAME", False, 1),
    ((5, 6, 7), 9, (1, 1), (1, 1), (1, 1), "VALID", False, 1),
    ((5, 4, 130), 6, (3, 3), (1, 1), (1, 1), "SAME", False, 1),  # window > TK_PATCH_MAX: plain layout
    ((6, 5, 9), 5, (2, 4), (2, 1), (1, 1), "SAME", False, 1),
    ((11, 10, 3), 4, (5, 3), (1, 2), (2, 1), "VALID", False, 1),
    ((8, 9, 6), 6, (3, 3), (1, 1), (1, 1), "SAME", True, 1),
    ((9, 9, 5), 5, (3, 3), (2, 2), (1, 1), "SAME", True, 1),
    ((7, 8, 3), 6, (3, 3), (1, 1), (1, 1), "SAME", True, 2),
    ((10, 9, 4), 4, (5, 5), (1, 1), (2, 2), "SAME", True, 1),
    ((9, 8, 5), 5, (7, 7), (1, 1), (1, 1), "SAME", True, 1),  # > 25 taps: the per-channel loop
    # widened rows (tk_dwp_spec): 3x3 stride 1 at least 16 wide; 5x5 stride 2 and VALID, odd widths
    ((18, 17, 6), 6, (3, 3), (1, 1), (1, 1), "SAME", True, 1),
    ((12, 11, 5), 5, (5, 5), (2, 2), (1, 1), "SAME", True, 1),
    ((9, 14, 3), 3, (5, 5), (1, 2), (1, 1), "VALID", True, 1),
    ((7, 7, 3), 6, (5, 5), (2, 2), (1, 1), "SAME", True, 2),
    # one input channel: a multiplier is a CONV_2D (person_detect's first layer), odd output count too
    ((9, 10, 1), 8, (3, 3), (2, 2), (1, 1), "SAME", True, 8),
    ((6, 7, 1), 3, (3, 3), (1, 1), (1, 1), "VALID", True, 3),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"c{i}" for i in range(len(CONV_CASES))])
@pytest.mark.parametrize("in_zp,wide", [(-128, False), (5, False), (127, False), (5, True)])
def test_conv_kernels_match_tflite_arithmetic(case, in_zp, wide, table, tmp_path):
    """Dilation-1 cases with multiplier 1 (or one input channel) take the specialised kernels of tk_spec.h
    (with `wide`, their weights widened to halfwords); the others the generic ones. Both against TFLite's
    arithmetic."""
    (ih, iw, ic), oc, (kh, kw), stride, dil, padding, dw, m = case
    # A digest, not hash(): str hashes change with PYTHONHASHSEED, so a failure would not reproduce.
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(repr((case, in_zp)).encode()).digest()[:8], "little"))
    oh, pt = conv_out_size(ih, kh, stride[0], dil[0], padding)
    ow, pl = conv_out_size(iw, kw, stride[1], dil[1], padding)
    wshape = (1, kh, kw, oc) if dw else (oc, kh, kw, ic)
    w = rng.integers(-127, 128, size=wshape, dtype=np.int8)
    bias = rng.integers(-5000, 5000, size=oc, dtype=np.int32)
    tensors = [
        Tensor("x", (1, ih, iw, ic), "int8", q(0.02, in_zp)),
        Tensor("w", wshape, "int8", q(0.01), w),
        Tensor("b", (oc,), "int32", q(0.0002), bias),
        Tensor("y", (1, oh, ow, oc), "int8", q(0.1, -3)),
    ]
    kind = "DEPTHWISE_CONV_2D" if dw else "CONV_2D"
    opts = {"stride": stride, "dilation": dil, "padding": padding, "depth_multiplier": m}
    op = Op(kind, [0, 1, 2], [3], opts, name=f"{kind.lower()} layer")
    g = Graph("conv_case", tensors, [op], [0], [3])
    mult, shift = rand_rq(rng, oc)
    p = P.ConvParams(-in_zp, -3, mult, shift, -100, 90, stride, dil, (pt, pl), m)
    table.by_op[id(op)] = p
    cg = generate(g, tmp_path / "gen", flash_bytes=(1 << 22) if wide else None)
    # A conv whose pixel pair's halfword field would exceed the kernels' stack buffer stays generic.
    as_conv = not dw or ic == 1  # a depthwise on one channel takes the conv template
    fits = not as_conv or 4 * spec.xb_words_conv(kh, kw, ic) <= spec.XB_MAX_BYTES
    specialised = dil == (1, 1) and (m == 1 or ic == 1) and fits
    specialised = specialised and 0 not in cg.plan.inplace  # in-place depthwise keeps its own kernel
    assert ("_run(arena" in (tmp_path / "gen" / "model.c").read_text()) == specialised
    host = HostModel(cg, cache_dir=tmp_path)
    for k, x in enumerate(extremes((1, ih, iw, ic), rng)):
        want = conv_ref(x, w, bias, p, (oh, ow), dw)
        got = host.run([x])[0]
        assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} of {want.size} differ"
        if k == 0:
            assert len(np.unique(want)) > 3  # a random input: the case is not trivially saturated


@pytest.mark.parametrize("wide", [False, True])
def test_fully_connected_batches_and_no_bias(wide, table, tmp_path):
    """Three batch rows, 13 inputs (a partial group), 9 outputs (not a multiple of the wide path's 4),
    act_min above -128, and a dead channel (multiplier 0) before live ones."""
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, size=(9, 13), dtype=np.int8)
    tensors = [
        Tensor("x", (3, 13), "int8", q(0.02, 7)),
        Tensor("w", (9, 13), "int8", q(0.01), w),
        Tensor("y", (3, 9), "int8", q(0.1, 4)),
    ]
    op = Op("FULLY_CONNECTED", [0, 1, -1], [2], {}, name="fc")
    g = Graph("fc", tensors, [op], [0], [2])
    mult, shift = rand_rq(rng, 9)
    mult[0] = 0
    p = P.FcParams(-7, 4, mult, shift, -20, 127)
    table.by_op[id(op)] = p
    cg = generate(g, tmp_path / "gen", flash_bytes=(1 << 22) if wide else None)
    assert "tk_fc_spec(" in (tmp_path / "gen" / "model.c").read_text()
    host = HostModel(cg, cache_dir=tmp_path)
    for x in extremes((3, 13), rng):
        acc = (x.astype(I32) + p.input_offset) @ w.T.astype(I32)
        want = np.clip(mbqm_single(acc, mult, shift) + 4, -20, 127).astype(np.int8)
        assert len(np.unique(want)) > 2
        assert np.array_equal(host.run([x])[0], want)


# --- ADD, pools, MEAN, PAD, requantization ----------------------------------------------------------------


@pytest.mark.parametrize("shape2", [(1, 5, 6, 7), (1, 1, 1, 7), (1, 5, 1, 7)])
@pytest.mark.parametrize("in1_rq,fast", [((1518500250, -1), 1), ((1073741824, 0), 1), ((1073741824, 1), 0)])
def test_add_general_rescaling_and_broadcast(shape2, in1_rq, fast, table, tmp_path):
    rng = np.random.default_rng(2)
    tensors = [
        Tensor("a", (1, 5, 6, 7), "int8", q(0.05, 3)),
        Tensor("b", shape2, "int8", q(0.03, -9)),
        Tensor("y", (1, 5, 6, 7), "int8", q(0.07, 1)),
    ]
    op = Op("ADD", [0, 1], [2], {}, name="add")
    g = Graph("add", tensors, [op], [0, 1], [2])
    p = P.AddParams(-3, 9, 1, 20, *in1_rq, 1908874354, -2, 1431655765, -19, -120, 100)
    table.by_op[id(op)] = p
    host = HostModel(g, cache_dir=tmp_path)
    code = (host.codegen.out_dir / "model.c").read_text()
    if shape2 == (1, 5, 6, 7):  # same shapes: the per-input tables, whose output path is short here
        assert re.search(r"tk_add_lut\([^;]*, 1\);", code)
    else:
        assert f".fast = {fast}" in code
    a = rng.integers(-128, 128, size=(1, 5, 6, 7), dtype=np.int8)
    b = rng.integers(-128, 128, size=shape2, dtype=np.int8)
    sa = mbqm((a.astype(I32) + p.input1_offset) << p.left_shift, p.input1_multiplier, p.input1_shift)
    sb = mbqm((b.astype(I32) + p.input2_offset) << p.left_shift, p.input2_multiplier, p.input2_shift)
    want = np.clip(mbqm(sa + sb, p.output_multiplier, p.output_shift) + 1, -120, 100).astype(np.int8)
    assert np.array_equal(host.run([a, b])[0], want)


def test_add_tables_take_the_general_output_path_where_the_short_one_is_not_proven(table, tmp_path):
    """An output shift > 0 rules out tk_add_lut's short path: the sum goes through the full MBQM."""
    rng = np.random.default_rng(3)
    shape = (1, 4, 5, 6)
    tensors = [Tensor(n, shape, "int8", q(0.05, 3)) for n in ("a", "b", "y")]
    op = Op("ADD", [0, 1], [2], {}, name="add")
    g = Graph("add", tensors, [op], [0, 1], [2])
    p = P.AddParams(-3, 9, 1, 0, 1518500250, -1, 1073741824, 0, 1073741824, 1, -120, 100)
    table.by_op[id(op)] = p
    host = HostModel(g, cache_dir=tmp_path)
    assert re.search(r"tk_add_lut\([^;]*, 0\);", (host.codegen.out_dir / "model.c").read_text())
    a = rng.integers(-128, 128, size=shape, dtype=np.int8)
    b = rng.integers(-128, 128, size=shape, dtype=np.int8)
    sa = mbqm(a.astype(I32) + p.input1_offset, p.input1_multiplier, p.input1_shift)
    sb = mbqm(b.astype(I32) + p.input2_offset, p.input2_multiplier, p.input2_shift)
    want = np.clip(mbqm(sa + sb, p.output_multiplier, p.output_shift) + 1, -120, 100).astype(np.int8)
    assert len(np.unique(want)) > 50  # not saturated: the rounding is what is tested
    assert np.array_equal(host.run([a, b])[0], want)


def pool_ref(x, p: P.PoolParams, out_hw, avg: bool):
    _, ih, iw, c = x.shape
    out = np.zeros((out_hw[0], out_hw[1], c), I32)
    for oy in range(out_hw[0]):
        for ox in range(out_hw[1]):
            y0, x0 = oy * p.stride[0] - p.pad[0], ox * p.stride[1] - p.pad[1]
            win = x[0, max(y0, 0) : min(y0 + p.filter[0], ih), max(x0, 0) : min(x0 + p.filter[1], iw)]
            win = win.reshape(-1, c).astype(I32)
            if avg:
                s, n = win.sum(0), win.shape[0]
                out[oy, ox] = np.where(s > 0, (s + n // 2) // n, -((-s + n // 2) // n))
            else:
                out[oy, ox] = win.max(0)
    return np.clip(out, p.act_min, p.act_max).astype(np.int8)[None]


@pytest.mark.parametrize("kind", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
@pytest.mark.parametrize("geom", [((3, 3), (2, 2), "SAME"), ((2, 3), (1, 2), "VALID"), ((6, 5), (1, 1), "VALID")])
def test_pools(kind, geom, table, tmp_path):
    (fh, fw), (sh, sw), padding = geom
    ih, iw, c = 6, 5, 4
    oh, pt = conv_out_size(ih, fh, sh, 1, padding)
    ow, pl = conv_out_size(iw, fw, sw, 1, padding)
    tensors = [Tensor("x", (1, ih, iw, c), "int8", q()), Tensor("y", (1, oh, ow, c), "int8", q())]
    op = Op(kind, [0], [1], {"filter": (fh, fw), "stride": (sh, sw), "padding": padding}, name="pool")
    g = Graph("pool", tensors, [op], [0], [1])
    p = P.PoolParams((fh, fw), (sh, sw), (pt, pl), -100, 120)
    table.by_op[id(op)] = p
    host = HostModel(g, cache_dir=tmp_path)
    rng = np.random.default_rng(3)
    for x in extremes((1, ih, iw, c), rng):
        assert np.array_equal(host.run([x])[0], pool_ref(x, p, (oh, ow), kind == "AVERAGE_POOL_2D"))


def test_mean_pad_quantize_concat(table, tmp_path):
    """A chain of the data-movement ops: PAD -> MEAN, and CONCAT of a requantized and a copied input."""
    rng = np.random.default_rng(4)
    t = [
        Tensor("x", (1, 3, 4, 5), "int8", q(0.1, 2)),  # 0
        Tensor("padded", (1, 4, 7, 5), "int8", q(0.1, 2)),  # 1
        Tensor("mean", (1, 1, 1, 5), "int8", q(0.05, -4)),  # 2
        Tensor("z", (1, 3, 4, 2), "int8", q(0.2, 0)),  # 3
        Tensor("zq", (1, 3, 4, 2), "int8", q(0.1, 2)),  # 4
        Tensor("cat", (1, 3, 4, 9), "int8", q(0.1, 2)),  # 5
    ]
    ops = [
        Op("PAD", [0], [1], {"paddings": ((0, 0), (1, 0), (2, 1), (0, 0))}, name="pad"),
        Op("MEAN", [1], [2], {"axes": (1, 2), "keep_dims": True}, name="mean"),
        Op("QUANTIZE", [3], [4], {}, name="requant"),
        Op("CONCATENATION", [0, 4, 3], [5], {"axis": 3}, name="cat"),
    ]
    g = Graph("mixed", t, ops, [0, 3], [2, 5])
    rq = P.RequantParams(0, 2, 1073741824, 2, False)  # x * 2 (0.2 -> 0.1), + 2
    copy = P.RequantParams(0, 0, 0, 0, True)
    table.by_op[id(ops[0])] = P.PadParams(((0, 0), (1, 0), (2, 1), (0, 0)), 2)
    mean_mult, mean_shift = P.mean_multiplier(2.0, 28)  # 0.1 -> 0.05 over 4 x 7
    table.by_op[id(ops[1])] = P.MeanParams(-2, -4, mean_mult, mean_shift, 28)
    table.by_op[id(ops[2])] = rq
    table.by_op[id(ops[3])] = P.ConcatParams(3, [copy, copy, rq])
    host = HostModel(g, cache_dir=tmp_path)
    x = rng.integers(-128, 128, size=(1, 3, 4, 5), dtype=np.int8)
    z = rng.integers(-128, 128, size=(1, 3, 4, 2), dtype=np.int8)
    mean_out, cat_out = host.run([x, z])
    padded = np.full((1, 4, 7, 5), 2, I32)
    padded[:, 1:, 2:6] = x
    sums = (padded - 2).reshape(-1, 5).sum(0)
    want_mean = np.clip(mbqm(sums, mean_mult, mean_shift) - 4, -128, 127)
    assert np.array_equal(mean_out.reshape(-1), want_mean)
    assert np.abs(np.clip(sums * 2 / 28 - 4, -128, 127) - want_mean).max() <= 0.5 + 1e-9  # it is the mean
    zq = np.clip(mbqm(z.astype(I32), 1073741824, 2) + 2, -128, 127)
    assert np.array_equal(cat_out, np.concatenate([x, zq, zq], axis=3).astype(np.int8))


# --- SOFTMAX (bit-exactness is proven on whole models against the interpreter; here: sanity) -----------


def softmax_params(beta: float, input_scale: float) -> P.SoftmaxParams:
    real = min(beta * input_scale * (1 << 26), 2.0**31 - 1)
    mant, exp = np.frexp(real)
    mult = int(round(mant * (1 << 31)))
    if mult == 1 << 31:
        mult //= 2
        exp += 1
    radius = int(np.floor(31 * (1 << 26) / (1 << exp)))
    return P.SoftmaxParams(mult, int(exp), -radius)


@pytest.mark.parametrize("scale", [0.0078125, 0.1, 0.5])
def test_softmax_is_within_one_step_of_the_real_softmax(scale, table, tmp_path):
    tensors = [Tensor("x", (3, 10), "int8", q(scale, 5)), Tensor("y", (3, 10), "int8", q(1 / 256, -128))]
    op = Op("SOFTMAX", [0], [1], {"beta": 1.0}, name="softmax")
    g = Graph("softmax", tensors, [op], [0], [1])
    table.by_op[id(op)] = softmax_params(1.0, scale)
    host = HostModel(g, cache_dir=tmp_path)
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, size=(3, 10), dtype=np.int8)
    x[1] = 7  # a flat row
    x[2, :] = -128
    x[2, 3] = 127  # one dominant value
    got = host.run([x])[0].astype(np.int64)
    xi = x.astype(np.int64)
    real = np.exp(scale * (xi - xi.max(1, keepdims=True)))
    real /= real.sum(1, keepdims=True)
    want = np.clip(np.round(real * 256) - 128, -128, 127)
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("kind", ["CONV_2D", "DEPTHWISE_CONV_2D"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shifts,fast", [((0, 1), 0), ((0, -1), 0), ((-1, -2), 1)])
def test_requantization_paths_with_small_shifts(kind, k, shifts, fast, table, tmp_path):
    """Shifts of 0 or +1 rule out tk_mbqm_fast (the general double-rounding path runs); shifts of -1
    and -2 take the short path (in a specialised layer). Both must match TFLite's arithmetic."""
    rng = np.random.default_rng(k)
    dw = kind == "DEPTHWISE_CONV_2D"
    c = 8
    wshape = (1, k, k, c) if dw else (c, k, k, c)
    w = rng.integers(-3, 4, size=wshape, dtype=np.int8)
    tensors = [
        Tensor("x", (1, 5, 5, c), "int8", q(0.02, -2)),
        Tensor("w", wshape, "int8", q(0.01), w),
        Tensor("b", (c,), "int32", q(0.0002), rng.integers(-300, 300, size=c, dtype=np.int32)),
        Tensor("y", (1, 5, 5, c), "int8", q(0.1, 1)),
    ]
    op = Op(kind, [0, 1, 2], [3], {"stride": (1, 1), "padding": "SAME"}, name="conv")
    g = Graph("general_rq", tensors, [op], [0], [3])
    mult = rng.integers(2**22, 2**24, size=c)
    shift = np.array(list(shifts) * (c // 2))
    pad = (k - 1) // 2
    p = P.ConvParams(2, 1, mult, shift, -128, 127, (1, 1), (1, 1), (pad, pad), 1)
    table.by_op[id(op)] = p
    cg_host = HostModel(g, cache_dir=tmp_path)
    source = (cg_host.codegen.out_dir / "model.c").read_text()
    # the short path's layers are specialised (tk_spec.h) unless in place; the others keep the general kernel
    if fast and 0 not in cg_host.codegen.plan.inplace:
        assert "_run(arena" in source
    else:
        assert f".fast = {fast}" in source
    x = rng.integers(-128, 128, size=(1, 5, 5, c), dtype=np.int8)
    want = conv_ref(x, w, tensors[2].data, p, (5, 5), dw)
    assert len(np.unique(want)) > 3
    assert np.array_equal(cg_host.run([x])[0], want)
