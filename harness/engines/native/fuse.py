"""Fused execution: chains of layers run row by row, so that their intermediate tensors never exist whole.

A fused group is a run of consecutive layers (CONV_2D, DEPTHWISE_CONV_2D, same-shape ADD) whose
intermediate tensors are read only inside the group. Its inputs and its one output stay whole tensors in
the arena; every intermediate is kept as a ring of the rows its readers still need. The group runs a
fixed sequence of steps, each computing one output row of one layer, in the order demand pulls them: the
last layer's rows in turn, each first asking its inputs for the rows its window reaches. Nothing is
computed twice (unlike MCUNetV2's patches), so the instructions stay those of the unfused layers plus a
little per-row overhead.

The schedule is simulated here, at generation time: that gives the steps the C code replays and, for
every ring, the exact number of rows it must hold (the most rows between the oldest one a reader still
needs and the newest one made, over every read). The C code and the memory plan both take those numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.model import params as P
from harness.model.ir import Graph, Op

STREAMABLE = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD")


@dataclass
class FusedGroup:
    ops: list[int]  # op indices, consecutive, in execution order
    rings: dict[int, int]  # intermediate tensor -> rows its ring holds
    steps: list[int]  # per step, the position in `ops` of the layer that makes its next row
    inputs: list[int]  # whole tensors the group reads (made before it)
    output: int  # the one tensor that leaves it, whole
    row_bytes: dict[int, int] = field(default_factory=dict)  # ring tensor -> bytes a row
    overwrites: int | None = None  # an input the output may share bytes with (see make_group)
    mirror: dict[int, int] = field(default_factory=dict)  # ring tensor -> slots copied past its end

    @property
    def first(self) -> int:
        return self.ops[0]

    @property
    def last(self) -> int:
        return self.ops[-1]

    def ring_bytes(self) -> int:
        return sum(self.ring_size(t) for t in self.rings)

    def ring_size(self, t: int) -> int:
        """Bytes of tensor t's ring: its rows and the mirror slots a depthwise reader needs."""
        return (self.rings[t] + self.mirror.get(t, 0)) * self.row_bytes[t]

    def describe(self) -> str:
        return f"layers {self.first}-{self.last}"


def _rows(t) -> int:
    return t.shape[1]


def geometry(graph: Graph, op: Op) -> tuple[int, int, int, int]:
    """(stride, top padding, kernel height, dilation) along the rows: what decides which input rows an
    output row reads (an ADD reads its own row: 1, 0, 1, 1)."""
    if op.kind == "ADD":
        return 1, 0, 1, 1
    p = P.derive(graph, op)
    return p.stride[0], p.pad[0], graph.tensors[op.inputs[1]].shape[1], p.dilation[0]


def _window(geo: tuple[int, int, int, int], h: int, y: int) -> tuple[int, int]:
    """Rows [lo, hi] of an input of `h` rows that output row `y` reads (clamped to the tensor)."""
    stride, pad, kh, dil = geo
    top = y * stride - pad
    return max(0, top), min(h - 1, top + (kh - 1) * dil)


def rows_per_step(graph: Graph, op: Op) -> int:
    """Output rows a layer makes per step. A CONV_2D whose rows have an odd number of pixels makes two,
    so that its 2-pixel micro-kernel pairs the last pixel of a row with the first of the next, as it
    does over a whole tensor (one row alone would leave a pixel a row unpaired)."""
    y = graph.tensors[op.outputs[0]]
    return rows_per_step_of(op.kind, y.shape[1], y.shape[2])


def rows_per_step_of(kind: str, out_h: int, out_w: int) -> int:
    return 2 if kind == "CONV_2D" and out_w % 2 and out_h > 1 else 1


def _activations(graph: Graph, op: Op) -> list[int]:
    return [t for t in (op.inputs if op.kind == "ADD" else op.inputs[:1]) if t >= 0]


def structurally_streamable(graph: Graph, op: Op) -> bool:
    """The op can make its output a row at a time from rows of its inputs: batch-1 NHWC conv or depthwise,
    or an ADD whose inputs both have the output's shape (no broadcast)."""
    if op.kind not in STREAMABLE:
        return False
    y = graph.tensors[op.outputs[0]]
    if len(y.shape) != 4 or y.shape[0] != 1:
        return False
    if op.kind == "ADD":
        return all(tuple(graph.tensors[t].shape) == tuple(y.shape) for t in op.inputs)
    x = graph.tensors[op.inputs[0]]
    return len(x.shape) == 4 and x.shape[0] == 1 and not x.is_const


def make_group(graph: Graph, ops: list[int], geo: dict[int, tuple] | None = None, readers=None) -> FusedGroup | None:
    """The group of the consecutive layers `ops`, scheduled, or None where it is not a valid group: some
    intermediate is read after the group or is a graph output, or a layer reads a tensor made later.
    `geo` caches geometry() per layer, `readers` graph.consumers() (the search builds many groups)."""
    if len(ops) < 2:
        return None
    readers = graph.consumers() if readers is None else readers
    geo = {} if geo is None else geo
    for k in ops:
        if k not in geo:
            geo[k] = geometry(graph, graph.ops[k])
    made_here = {graph.ops[k].outputs[0]: k for k in ops}
    output = graph.ops[ops[-1]].outputs[0]
    for t, k in made_here.items():
        if t == output:
            continue
        if t in graph.outputs or any(r > ops[-1] or r < k for r in readers.get(t, [])):
            return None
    inputs: list[int] = []
    for k in ops:
        for t in _activations(graph, graph.ops[k]):
            if t not in made_here and t not in inputs:
                inputs.append(t)
    position = {k: i for i, k in enumerate(ops)}
    made = {t: 0 for t in made_here}
    need = {t: 0 for t in made_here if t != output}  # the most rows a ring must hold
    steps: list[int] = []
    batch = {k: rows_per_step(graph, graph.ops[k]) for k in ops}
    reads: list[tuple[int, int, int]] = []  # (step, whole input, first row still read)
    writes: list[tuple[int, int]] = []  # (step, output rows written once it is done)

    def produce(k: int) -> None:
        op = graph.ops[k]
        y = made[op.outputs[0]]
        n = min(batch[k], _rows(graph.tensors[op.outputs[0]]) - y)
        windows = []
        for t in _activations(graph, op):
            h = _rows(graph.tensors[t])
            lo, hi = _window(geo[k], h, y)[0], _window(geo[k], h, y + n - 1)[1]
            if t in made_here:
                while made[t] <= hi:
                    produce(made_here[t])
            windows.append((t, lo))
        for t, lo in windows:  # all rows in place: the read happens now
            if t in need:
                need[t] = max(need[t], made[t] - lo)
            elif t not in made_here:
                reads.append((len(steps), t, lo))
        if op.outputs[0] == output:
            writes.append((len(steps), y + n))
        steps.append(position[k])
        made[op.outputs[0]] += n

    for _ in range(_rows(graph.tensors[output])):
        produce(ops[-1])
    rings = {t: max(1, n) for t, n in need.items()}
    for t in rings:  # a layer that makes two rows a step writes them to adjacent slots: an even ring
        if batch[made_here[t]] == 2 and rings[t] % 2:
            rings[t] += 1
    row_bytes = {t: graph.tensors[t].nbytes // _rows(graph.tensors[t]) for t in rings}
    # A depthwise reading a ring takes its window as one piece (tk_dw_spec_row): kh - 1 mirror slots.
    mirror = {}
    for k in ops:
        op = graph.ops[k]
        if op.kind == "DEPTHWISE_CONV_2D" and op.inputs[0] in rings and geo[k][2] > 1:
            mirror[op.inputs[0]] = geo[k][2] - 1
    over = next((t for t in inputs if _may_overwrite(graph, t, output, ops, readers, reads, writes)), None)
    return FusedGroup(list(ops), rings, steps, inputs, output, row_bytes, over, mirror)


def _may_overwrite(graph: Graph, t: int, output: int, ops: list[int], readers, reads, writes) -> bool:
    """Whether the group's output may start at input `t`'s first byte: each step's output rows must
    lie below every byte of `t` that this or a later step still reads (a first layer at stride 2 leaves
    the input's top behind faster than the output grows). `t` must be read by nothing after the group
    and be no graph output, nor a RESHAPE's input or output (an alias would be read elsewhere). A graph
    input qualifies: the runtime writes the inputs into the arena before every inference."""
    if t in graph.outputs or any(r > ops[-1] for r in readers.get(t, [])):
        return False
    if any(op.kind == "RESHAPE" and t in (op.inputs[0], op.outputs[0]) for op in graph.ops):
        return False
    rb_in = graph.tensors[t].nbytes // _rows(graph.tensors[t])
    rb_out = graph.tensors[output].nbytes // _rows(graph.tensors[output])
    first_read = {}  # step -> the lowest byte of t read at that step or later
    low = graph.tensors[t].nbytes
    mine = sorted(((s, lo) for s, u, lo in reads if u == t), reverse=True)
    i = 0
    for s in range(max((w[0] for w in writes), default=0), -1, -1):
        while i < len(mine) and mine[i][0] >= s:
            low = min(low, mine[i][1] * rb_in)
            i += 1
        first_read[s] = low
    return all(end * rb_out <= first_read[s] for s, end in writes)


def runs(graph: Graph, can_stream: Callable[[int], bool]) -> list[list[int]]:
    """Maximal runs of consecutive streamable layers in which every layer after the first reads the
    previous one's output (a chain, with residual inputs from anywhere before it)."""
    out: list[list[int]] = []
    cur: list[int] = []
    for k, op in enumerate(graph.ops):
        ok = structurally_streamable(graph, op) and can_stream(k)
        chained = bool(cur) and graph.ops[cur[-1]].outputs[0] in _activations(graph, op)
        if ok and chained:
            cur.append(k)
            continue
        if len(cur) > 1:
            out.append(cur)
        cur = [k] if ok else []
    if len(cur) > 1:
        out.append(cur)
    return out


def clean_cuts(graph: Graph, run: list[int]) -> list[int]:
    """Positions i in `run` after which the run may be cut: no tensor made in run[:i+1] other than
    run[i]'s output is read after run[i]. The last position is always a candidate end."""
    readers = graph.consumers()
    cuts = []
    for i, k in enumerate(run):
        ok = True
        for j in run[:i]:
            t = graph.ops[j].outputs[0]
            if any(r > k for r in readers.get(t, [])) or t in graph.outputs:
                ok = False
                break
        if ok:
            cuts.append(i)
    return cuts


def partition(graph: Graph, run: list[int], cuts: list[int]) -> list[FusedGroup] | None:
    """The run cut after each position in `cuts` (ascending, must be clean and include the end): the
    groups of two or more layers, or None where one of them is not valid."""
    groups, start = [], 0
    for c in cuts:
        piece = run[start : c + 1]
        start = c + 1
        if len(piece) < 2:
            continue
        g = make_group(graph, piece)
        if g is None:
            return None
        groups.append(g)
    return groups


@dataclass
class Choice:
    groups: list[FusedGroup]
    arena: int  # the plan's arena with these groups
    unfused_arena: int
    considered: list[tuple[str, int]]  # (schedule, bytes live at its busiest step) per run's best split


def choose(
    graph: Graph,
    can_stream: Callable[[int], bool],
    live_of: Callable[[list[FusedGroup]], list[int]],
    arena_of: Callable[[list[FusedGroup]], int],
    max_len: int = 24,
) -> Choice:
    """The groups with the smallest peak. Per run, a dynamic programme over where to cut it: a segment
    of layers is one group (if valid) or layers alone, and its cost is the most bytes live during it
    (`live_of` gives the bytes live at each op for a set of groups; a segment's own fusion decides
    them, so costs are local). Ties go to fewer fused layers (less per-row overhead). The chosen groups
    are then planned (`arena_of`); if that is not smaller than the layer-by-layer plan, nothing is fused
    (fusing that does not help is not chosen)."""
    unfused = live_of([])
    base = arena_of([])
    considered: list[tuple[str, int]] = [("layer by layer", max(unfused, default=0))]
    chosen: list[FusedGroup] = []
    geo: dict[int, tuple] = {}
    readers = graph.consumers()
    for run in runs(graph, can_stream):
        ends = set(clean_cuts(graph, run))
        n = len(run)
        # best[i]: (peak, fused layers, groups) for run[:i]
        best: list[tuple[int, int, list[FusedGroup]]] = [(0, 0, [])]
        for i in range(1, n + 1):
            k = run[i - 1]
            peak, nf, gs = best[i - 1]
            cand = (max(peak, unfused[k]), nf, gs)  # run[i-1] alone
            if i - 1 in ends:
                for j in range(max(0, i - max_len), i - 1):
                    g = make_group(graph, run[j:i], geo, readers)
                    if g is None:
                        continue
                    live = live_of([g])
                    cost = max(live[m] for m in run[j:i])
                    p0, n0, g0 = best[j]
                    option = (max(p0, cost), n0 + (i - j), g0 + [g])
                    if option[:2] < cand[:2]:
                        cand = option
            best.append(cand)
        peak, _, gs = best[n]
        considered.append((f"layers {run[0]}-{run[-1]}: " + (", ".join(g.describe() for g in gs) or "unfused"), peak))
        chosen += gs
    if not chosen:
        return Choice([], base, base, considered)
    arena = arena_of(chosen)
    considered.append(("fused " + ", ".join(g.describe() for g in chosen), arena))
    if arena >= base:
        return Choice([], base, base, considered)
    return Choice(chosen, arena, base, considered)
