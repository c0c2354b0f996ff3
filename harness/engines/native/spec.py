"""Layers specialised by the code generator (firmware/kernels/tk_spec.h).

A CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED layer gets a function of its own in model.c that calls
a tk_spec.h template with its shapes as constants, when the short exact requantization holds for every
channel; otherwise `spec_*` return None and the layer keeps its generic kernel. The constants written
here are the whole contract with the templates: weight layouts, the per-channel requantization rows
with the output offset folded in, and the proofs that folding overflows nothing.
"""

from __future__ import annotations

import numpy as np

from harness import reference

INT32_LIMIT = 2**31
# tk_conv_spec / tk_fc_spec hold one pixel pair's (one row's) halfword fields on the stack.
XB_MAX_BYTES = 4096
DW_TAPS_MAX = 49  # TK_DW_TAPS_MAX


def words(b: np.ndarray) -> np.ndarray:
    """int8 bytes (a multiple of 4) as the little-endian int32 words the kernels load."""
    return np.frombuffer(np.ascontiguousarray(b, dtype=np.int8).tobytes(), dtype="<i4").astype(np.int64)


def _constant(b: int, m: int, s: int, reach: int, offset: int, lo: int, hi: int, single: bool) -> int | None:
    """The output of a channel whose every possible accumulator (folded bias b +- reach) requantizes to
    the same clamped value, else None. Requantization is monotonic in the accumulator (for m >= 0 and
    no wrap in the left shift), so the two ends decide."""
    if m < 0 or (b + reach) * 2 ** max(s, 0) >= INT32_LIMIT or (b - reach) * 2 ** max(s, 0) < -INT32_LIMIT:
        return None
    q = reference.mbqm_single if single else reference.mbqm
    ends = [min(max(int(q(a, m, s)) + offset, lo), hi) for a in (b - reach, b + reach)]
    return ends[0] if ends[0] == ends[1] else None


def _per_channel(folded, *values):
    """(bias, *values) per channel as Python ints, a per-tensor value repeated for every channel."""
    n = len(folded)
    cols = [np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1), (n,)).tolist() for v in values]
    return zip(folded.tolist(), *cols, strict=True)


def ch_rows(folded, mult, shift, offset: int, reach, lo: int, hi: int) -> np.ndarray | None:
    """tk_ch_t rows {bias, mult, rnd, e}, or None where the short path does not hold for some channel.
    `reach` is each channel's largest |sum of weight * input| (128 sum|w|). A channel needs |acc| < 2^30
    and shift <= -1 (tk_mbqm_fast), and for the folded offset |y| + 2^(e-1) + |offset| 2^e < 2^31, where
    |y| <= |acc| mult / 2^31 + 1 after the SMMULR. A channel whose output is the same for every
    accumulator (a dead channel: zero multiplier, or a bias that saturates it) is written as that
    constant instead: multiplier 0 and e = 1, so that rnd alone gives it."""
    rows = []
    for b, m, s, r in _per_channel(folded, mult, shift, reach):
        c = _constant(b, m, s, r, offset, lo, hi, single=False)
        if c is not None:
            rows.append((0, 0, 1 + 2 * c, 1))  # bias unused (and 0 doubles without overflow)
            continue
        acc, e = abs(b) + r, -s
        y = acc * abs(m) // INT32_LIMIT + 1
        # m > 0: tk_rq2d rounds by acc's sign, which is y's only for a positive multiplier
        if m <= 0 or acc >= 2**30 or abs(offset) > 128 or not 1 <= e <= 31:
            return None
        if y + 2 ** (e - 1) + abs(offset) * 2**e >= INT32_LIMIT:
            return None
        rows.append((b, m, 2 ** (e - 1) + offset * 2**e, e))
    return np.array(rows, dtype=np.int64)


def ch1_rows(folded, mult, shift, offset: int, reach, lo: int, hi: int) -> np.ndarray | None:
    """tk_ch1_t rows {bias, mult, r_lo, r_hi, e} of the single rounding (tk_mbqm_single): needs
    -31 < shift <= -1, so that the 64-bit result shifts by 32 + e with e >= 0. Constant channels as in
    ch_rows (multiplier 0, shift -1, the constant in r)."""
    rows = []
    for b, m, s, r in _per_channel(folded, mult, shift, reach):
        c = _constant(b, m, s, r, offset, lo, hi, single=True)
        if c is not None:
            m, s, off = 0, -1, c
        elif abs(offset) > 128 or not -31 < s <= -1 or abs(b) + r >= INT32_LIMIT:
            return None
        else:
            off = offset
        total = 31 - s
        big = 2 ** (total - 1) + off * 2**total
        low = big & 0xFFFFFFFF
        rows.append((b, m, low - (1 << 32) if low >> 31 else low, big >> 32, total - 32))  # r_lo as C's int32_t
    return np.array(rows, dtype=np.int64)


def pack_pairs(w: np.ndarray) -> np.ndarray:
    """[O, K] int8 weights for tk_mm2x2/tk_mm1x2: K padded to whole groups of 4 and O to even with
    zeros; per channel pair, per group, 4 bytes of the first channel then 4 of the second. As words."""
    o, k = w.shape
    g = -(-k // 4)
    padded = np.zeros((o + o % 2, 4 * g), dtype=np.int8)
    padded[:o, :k] = w
    blocks = padded.reshape(-1, 2, g, 4).transpose(0, 2, 1, 3)
    return words(blocks.reshape(-1))


def pack_wide(w: np.ndarray, block: int) -> np.ndarray:
    """[O, K] int8 weights widened to halfwords for tk_mm2x2_w16 (block 2) or tk_mm1x4_w16 (block 4):
    O padded to whole blocks and K to whole groups of 4 with zeros; per block of channels, per group, each
    channel's words (k0,k2) and (k1,k3). Twice the bytes of pack_pairs."""
    o, k = w.shape
    g = -(-k // 4)
    padded = np.zeros((-(-o // block) * block, 4 * g), dtype=np.int64)
    padded[:o, :k] = w
    q = padded.reshape(-1, block, g, 4).transpose(0, 2, 1, 3)  # [block group][k group][channel][4]
    lo = np.stack([q[..., 0], q[..., 1]], axis=-1) & 0xFFFF
    hi = np.stack([q[..., 2], q[..., 3]], axis=-1) & 0xFFFF
    return (lo | (hi << 16)).astype(np.uint32).astype(np.int32).astype(np.int64).reshape(-1)


def choose_wide(candidates: list[tuple[int, int, int]], budget: int) -> set[int]:
    """Which layers get wide weights: `candidates` are (layer, MACs, weight bytes); widening costs a
    layer's weight bytes again in flash and saves about a quarter instruction per MAC, so the layers with
    the most MACs per weight byte go first while the extra bytes stay within `budget`."""
    chosen, spent = set(), 0
    for k, _, nbytes in sorted(candidates, key=lambda c: (-c[1] / max(c[2], 1), c[0])):
        if spent + nbytes <= budget:
            chosen.add(k)
            spent += nbytes
    return chosen


def dw_as_conv(graph, op) -> bool:
    """A DEPTHWISE_CONV_2D on one input channel: the conv template runs it (each output channel is a
    filter over the one input channel), so its weights may be widened like a CONV_2D's."""
    return op.kind == "DEPTHWISE_CONV_2D" and graph.tensors[op.inputs[0]].shape[-1] == 1


def pack_dw(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[T, C] depthwise weights: per group of 4 channels, per tap, halfword pairs (c0,c2),(c1,c3) as
    words, doubled (tk_rq2d; |2w| <= 256 fits a halfword); and the C % 4 last channels as int8 [T][C % 4],
    not doubled."""
    t, c = w.shape
    c4 = c - c % 4
    g = 2 * w[:, :c4].astype(np.int64).reshape(t, c4 // 4, 4).transpose(1, 0, 2)  # [group][tap][4]
    lo = np.stack([g[..., 0], g[..., 1]], axis=-1) & 0xFFFF
    hi = np.stack([g[..., 2], g[..., 3]], axis=-1) & 0xFFFF
    packed = (lo | (hi << 16)).astype(np.uint32).astype(np.int32).astype(np.int64).reshape(-1)
    return packed, np.ascontiguousarray(w[:, c4:]).reshape(-1)


def dw_by_rows(kh: int, kw: int, sw: int, ow: int, whole: bool) -> bool:
    """Whether a depthwise layer takes tk_dwp_spec (channel by channel over widened rows, two taps an
    SMLAD) rather than tk_dw_spec (four channels a tap, straight from NHWC). Widening a row costs about two
    instructions a value, so it pays where many taps share it: wide kernels (5x5 and up) over outputs at
    least 5 wide, and, over a whole tensor (each row widened once), stride-1 layers at least 16 wide.
    Measured on mcunet_vww and mlperf_vww_96, QEMU instructions: the 5x5 and 7x7 layers -20 to -37 %, 3x3 stride
    1 at 40 and 48 wide -15 and -20 %; 3x3 in a fused group's rows (KH rows widened a row) +1 to +12 %."""
    return (kh * kw >= 25 and ow >= 5) or (whole and sw == 1 and ow >= 16)


def pack_dw_rows(w: np.ndarray) -> np.ndarray:
    """[KH, KW, C] depthwise weights for tk_dwp_spec: per channel, per kernel row, halfword pairs of
    adjacent taps (an odd last tap paired with 0), doubled (tk_rq2d; |2w| <= 256 fits a halfword)."""
    kh, kw, c = w.shape
    kp = (kw + 1) // 2
    g = np.zeros((c, kh, 2 * kp), np.int64)
    g[:, :, :kw] = 2 * w.astype(np.int64).transpose(2, 0, 1)
    lo, hi = g[:, :, 0::2] & 0xFFFF, g[:, :, 1::2] & 0xFFFF
    return (lo | (hi << 16)).astype(np.uint32).astype(np.int32).astype(np.int64).reshape(-1)


def xb_words_conv(kh: int, kw: int, ic: int) -> int:
    return 4 * (-(-(kh * kw * ic) // 4))


def xb_words_fc(n_in: int) -> int:
    return 2 * (-(-n_in // 4))
