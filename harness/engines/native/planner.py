"""Static memory plan: every activation tensor of the int8 graph gets a fixed byte offset in one arena.

A tensor occupies its buffer from the op that writes it to the last op that reads it, both inclusive
(an op's inputs and outputs are live together: the kernels do not work in place). Graph inputs are
live from before the first op, graph outputs until after the last. RESHAPE moves no data: its output
shares its input's buffer (the group's lifetime is the union of its members').

Offsets come from greedy placements: buffers in some order, each put into the smallest gap between
already-placed buffers whose lifetimes overlap its own (best fit), else above them all; and a
two-ended placement that alternates layer outputs between the bottom and the top of the arena. The
smallest arena wins; none can be below the aligned bytes live at the busiest moment.
Offsets and sizes are rounded up to `alignment` bytes, so for a chain
of layers the arena is the largest align(input) + align(output) pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import UnsupportedModelError
from harness.model.ir import Graph

ALIGNMENT = 16


def align(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


@dataclass
class Buffer:
    """One region of the arena: a tensor and the RESHAPE outputs that alias it."""

    tensors: list[int]
    size: int  # bytes (unaligned)
    first: int  # index of the op that writes it; -1 for a graph input
    last: int  # index of the last op that reads it; len(ops) for a graph output
    offset: int = -1
    scratch_of: int | None = None  # the op whose kernel scratch this is (no tensor)
    # (first, last, bytes) of each member tensor, where they differ: a fused group's output that overwrites
    # its input holds the input's bytes only until the group ends
    members: list[tuple[int, int, int]] = field(default_factory=list)

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last

    def size_during(self, a: int, b: int) -> int:
        """The bytes it holds at some moment of ops [a, b] (its size, unless its members' differ)."""
        if not self.members:
            return self.size
        return max((s for f, l_, s in self.members if f <= b and a <= l_), default=0)


@dataclass
class MemoryPlan:
    arena_bytes: int
    alignment: int
    buffers: list[Buffer]
    offsets: dict[int, int] = field(default_factory=dict)  # tensor index -> byte offset
    lifetimes: dict[int, tuple[int, int]] = field(default_factory=dict)  # tensor index -> (first, last)
    inplace: dict[int, int] = field(default_factory=dict)  # in-place depthwise op -> its scratch offset
    fused: list = field(default_factory=list)  # fuse.FusedGroup, in execution order
    choice: object = None  # fuse.Choice that chose `fused`, where the generator searched (analyse, generate)

    def buffer_of(self, tensor: int) -> Buffer:
        for b in self.buffers:
            if tensor in b.tensors:
                return b
        raise KeyError(tensor)

    def live_bytes_at(self, op_index: int) -> int:
        """Bytes of the buffers alive while op `op_index` runs (unaligned sizes)."""
        return sum(b.size_during(op_index, op_index) for b in self.buffers if b.first <= op_index <= b.last)

    def check(self) -> None:
        """Raise AssertionError if two simultaneously-live buffers overlap or one leaves the arena."""
        for i, a in enumerate(self.buffers):
            assert a.offset >= 0 and a.offset % self.alignment == 0, f"buffer {a.tensors}: offset {a.offset}"
            assert a.offset + a.size <= self.arena_bytes, f"buffer {a.tensors} leaves the arena"
            for b in self.buffers[i + 1 :]:
                if a.overlaps_in_time(b):
                    lo, hi = max(a.first, b.first), min(a.last, b.last)
                    apart = a.offset + a.size_during(lo, hi) <= b.offset or b.offset + b.size_during(lo, hi) <= a.offset
                    assert apart, f"live buffers {a.tensors} and {b.tensors} overlap in the arena"


def buffers_of(graph: Graph, inplace: set[int] | frozenset[int] = frozenset(), fused=()) -> list[Buffer]:
    """The buffers to place: activation tensors grouped by RESHAPE aliasing (and, for the depthwise
    ops in `inplace`, output with input), with their lifetimes; plus those ops' scratch planes. For each
    fused group (fuse.FusedGroup) its intermediates are rings of rows, live while the group runs, and
    its inputs and output are live for the whole group (its layers interleave)."""
    parent: dict[int, int] = {}

    def find(t: int) -> int:
        while parent.get(t, t) != t:
            t = parent[t]
        return t

    for k, op in enumerate(graph.ops):
        if op.kind == "RESHAPE":
            src = op.inputs[0]
            if graph.tensors[src].is_const:
                raise UnsupportedModelError(
                    f"layer {k} '{op.name}': RESHAPE of a constant tensor is not supported (fold it into "
                    "the constant when exporting)"
                )
            parent[find(op.outputs[0])] = find(src)
        elif k in inplace:
            parent[find(op.outputs[0])] = find(op.inputs[0])
    for g in fused:  # a group output that overwrites its input's rows as they die shares its buffer
        if g.overwrites is not None:
            parent[find(g.output)] = find(g.overwrites)

    n_ops = len(graph.ops)
    first: dict[int, int] = {t: -1 for t in graph.inputs}
    last: dict[int, int] = {t: n_ops for t in graph.outputs}
    for k, op in enumerate(graph.ops):
        for t in op.outputs:
            first.setdefault(t, k)
            last.setdefault(t, k)
        for t in op.inputs:
            if t >= 0 and not graph.tensors[t].is_const:
                first.setdefault(t, k)
                last[t] = max(last.get(t, k), k)
    ring_rows: dict[int, tuple[int, int]] = {}
    for g in fused:
        for t in g.rings:
            ring_rows[t] = (g.ring_size(t), g.last)
            first[t] = g.first
        for t in g.inputs:
            last[t] = max(last.get(t, g.last), g.last)
        first[g.output] = min(first.get(g.output, g.first), g.first)
    groups: dict[int, Buffer] = {}
    for t in sorted(set(first) | set(last)):
        if graph.tensors[t].is_const:
            continue
        root = find(t)
        size = graph.tensors[t].nbytes
        if t in ring_rows:
            size, last[t] = ring_rows[t]
        f, l_ = first.get(t, -1), last.get(t, first.get(t, -1))
        b = groups.get(root)
        if b is None:
            b = groups[root] = Buffer([t], size, f, max(l_, f))
        else:
            b.tensors.append(t)
            b.size = max(b.size, size)
            b.first = min(b.first, f)
            b.last = max(b.last, l_)
        b.members.append((f, max(l_, f), size))
    for b in groups.values():
        if len({s for _, _, s in b.members}) < 2:
            b.members = []  # one size throughout (RESHAPE aliases, in-place depthwise)
    scratch = []
    for k in sorted(inplace):
        y = graph.tensors[graph.ops[k].outputs[0]]
        scratch.append(Buffer([], y.shape[1] * y.shape[2], k, k, scratch_of=k))
    return list(groups.values()) + scratch


def inplace_candidates(graph: Graph) -> list[int]:
    """Depthwise ops that may overwrite their input: multiplier 1, output shape = input shape, and the
    input (with its RESHAPE aliases) read by nothing later and not a graph output."""
    buffers = buffers_of(graph)
    group = {t: b for b in buffers for t in b.tensors}
    out = []
    for k, op in enumerate(graph.ops):
        if op.kind != "DEPTHWISE_CONV_2D":
            continue
        x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        w = graph.tensors[op.inputs[1]]
        if x.is_const or tuple(x.shape) != tuple(y.shape) or len(x.shape) != 4 or w.shape[3] != x.shape[3]:
            continue
        b = group[op.inputs[0]]
        if b.last == k and not any(t in graph.outputs for t in b.tensors):
            out.append(k)
    return out


def _place(buffers: list[Buffer], order: list[int], alignment: int) -> int:
    placed: list[Buffer] = []
    top = 0
    for i in order:
        b = buffers[i]
        need = align(b.size, alignment)
        busy = sorted((p for p in placed if p.overlaps_in_time(b)), key=lambda p: p.offset)
        best: tuple[int, int] | None = None  # (gap size, offset)
        end = 0
        for p in busy:
            gap = p.offset - end
            if gap >= need and (best is None or gap < best[0]):
                best = (gap, end)
            end = max(end, p.offset + align(p.size_during(b.first, b.last), alignment))
        b.offset = best[1] if best is not None else end
        top = max(top, b.offset + need)
        placed.append(b)
    return top


def _gaps(busy: list[Buffer], alignment: int, during: tuple[int, int]) -> list[tuple[int, int]]:
    """Free [start, end) ranges between the given placed buffers during ops `during` (the last range is
    unbounded)."""
    gaps, end = [], 0
    for p in sorted(busy, key=lambda p: p.offset):
        if p.offset > end:
            gaps.append((end, p.offset))
        end = max(end, p.offset + align(p.size_during(*during), alignment))
    gaps.append((end, 1 << 62))
    return gaps


def _place_two_ended(buffers: list[Buffer], target: int, alignment: int) -> int:
    """Buffers in execution order, each put against the end of the arena [0, target) away from the
    newest live buffer (usually the layer's input): a layer's input at the bottom puts its output at
    the top and the next at the bottom again, which for a chain reaches the max-live bound exactly."""
    placed: list[Buffer] = []
    top = 0
    for b in sorted(buffers, key=lambda b: (b.first, -b.size)):
        need = align(b.size, alignment)
        busy = [p for p in placed if p.overlaps_in_time(b)]
        gaps = _gaps(busy, alignment, (b.first, b.last))
        bottom = next((g0 for g0, g1 in gaps if g1 - g0 >= need), None)
        high = None
        for g0, g1 in reversed(gaps):
            off = (min(g1, target) - need) // alignment * alignment
            if off >= g0:
                high = off
                break
        newest = max(busy, key=lambda p: (p.first, p.offset), default=None)
        want_top = newest is not None and 2 * newest.offset + newest.size < target
        if want_top and high is not None:
            b.offset = high
        elif bottom is not None and bottom + need <= target:
            b.offset = bottom
        elif high is not None:
            b.offset = high
        else:
            b.offset = gaps[-1][0] if bottom is None else bottom
        top = max(top, b.offset + need)
        placed.append(b)
    return top


def plan_memory(graph: Graph, alignment: int = ALIGNMENT, inplace_depthwise: bool = True, fused=()) -> MemoryPlan:
    """Place every activation buffer of `graph` (an int8 interior) in one arena; see the module doc.

    With `inplace_depthwise`, depthwise layers that can overwrite their input do so (one scratch plane
    of H*W bytes instead of a second tensor) where, and only where, that makes the arena smaller: the
    in-place kernel walks channel by channel and is slower."""
    best = _plan(graph, alignment, frozenset(), fused)
    if not inplace_depthwise:
        return best
    chosen: frozenset[int] = frozenset()
    in_groups = {k for g in fused for k in g.ops}
    cands = [k for k in inplace_candidates(graph) if k not in in_groups]
    cands.sort(key=lambda k: -graph.tensors[graph.ops[k].outputs[0]].nbytes)
    for k in cands:
        trial = _plan(graph, alignment, chosen | {k}, fused)
        if trial.arena_bytes < best.arena_bytes:
            best, chosen = trial, chosen | {k}
    return best


def _plan(graph: Graph, alignment: int, inplace: frozenset[int], fused=()) -> MemoryPlan:
    buffers = buffers_of(graph, inplace, fused)
    n_ops = len(graph.ops)
    idx = list(range(len(buffers)))
    orders = [
        sorted(idx, key=lambda i: (-buffers[i].size, buffers[i].first)),
        sorted(idx, key=lambda i: (-buffers[i].size * (buffers[i].last - buffers[i].first + 1), buffers[i].first)),
        sorted(idx, key=lambda i: (-(buffers[i].last - buffers[i].first), -buffers[i].size)),
        sorted(idx, key=lambda i: (buffers[i].first, -buffers[i].size)),
    ]
    best_top, best_offsets = None, None
    lower = max(
        (
            sum(align(b.size_during(k, k), alignment) for b in buffers if b.first <= k <= b.last)
            for k in range(-1, n_ops + 1)
        ),
        default=0,
    )
    attempts = [lambda o=o: _place(buffers, o, alignment) for o in orders]
    attempts.append(lambda: _place_two_ended(buffers, lower, alignment))
    for attempt in attempts:
        top = attempt()
        if best_top is None or top < best_top:
            best_top, best_offsets = top, [b.offset for b in buffers]
        if best_top == lower:
            break  # cannot do better than the bytes live at the busiest moment
    for b, off in zip(buffers, best_offsets or [], strict=True):
        b.offset = off
    plan = MemoryPlan(align(best_top or 0, alignment), alignment, buffers, fused=list(fused))
    for b in buffers:
        for t in b.tensors:
            plan.offsets[t] = b.offset
            plan.lifetimes[t] = (b.first, b.last)
        if b.scratch_of is not None:
            plan.inplace[b.scratch_of] = b.offset
    return plan


def live_bytes(graph: Graph, fused=(), alignment: int = ALIGNMENT) -> list[int]:
    """Aligned bytes live while each op runs, with the given fused groups and no in-place layers: the
    lower bound of any placement, op by op (what fuse.choose compares)."""
    buffers = buffers_of(graph, frozenset(), fused)
    return [
        sum(align(b.size_during(k, k), alignment) for b in buffers if b.first <= k <= b.last)
        for k in range(len(graph.ops))
    ]


def naive_arena_bytes(graph: Graph, alignment: int = ALIGNMENT) -> int:
    """A plan without reuse (and no in-place layers): every buffer at its own offset, the upper bound
    the planner must beat."""
    return sum(align(b.size, alignment) for b in buffers_of(graph))
