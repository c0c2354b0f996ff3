"""The static memory planner: lifetimes, aliasing, no overlap, and arena size bounds."""

from __future__ import annotations

import numpy as np
import pytest

from harness.engines.native.planner import align, naive_arena_bytes, plan_memory
from harness.model import load_model
from harness.model.ir import Graph, Op, Quant, Tensor


def act(name: str, n: int) -> Tensor:
    return Tensor(name, (1, n), "int8", Quant(np.array([0.1], np.float32), np.array([0])))


def chain(sizes: list[int]) -> Graph:
    """t0 -> op0 -> t1 -> op1 -> ... (the op kind is irrelevant to the planner)."""
    tensors = [act(f"t{i}", n) for i, n in enumerate(sizes)]
    ops = [Op("MAX_POOL_2D", [i], [i + 1], name=f"op{i}") for i in range(len(sizes) - 1)]
    return Graph("chain", tensors, ops, [0], [len(sizes) - 1])


def max_live(graph: Graph, plan) -> int:
    return max(sum(align(b.size) for b in plan.buffers if b.first <= k <= b.last) for k in range(len(graph.ops)))


@pytest.mark.parametrize("seed", range(40))
def test_chain_arena_is_the_largest_aligned_input_output_pair(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(1, 5000, size=int(rng.integers(2, 14)))]
    g = chain(sizes)
    plan = plan_memory(g)
    plan.check()
    # Offsets and sizes are rounded up to 16 bytes: the bound is over aligned sizes.
    want = max(align(a) + align(b) for a, b in zip(sizes, sizes[1:], strict=False))
    assert plan.arena_bytes == want


def test_cnn_like_chain():
    sizes = [
        96 * 96 * 3,
        48 * 48 * 8,
        48 * 48 * 8,
        48 * 48 * 16,
        24 * 24 * 16,
        24 * 24 * 32,
        12 * 12 * 64,
        64,
        2,
    ]
    plan = plan_memory(chain(sizes))
    plan.check()
    assert plan.arena_bytes == max(align(a) + align(b) for a, b in zip(sizes, sizes[1:], strict=False))


def residual_graph(rng) -> Graph:
    """A random DAG: each op reads the previous tensor and sometimes an older one (a skip)."""
    n = int(rng.integers(4, 16))
    tensors = [act("in", int(rng.integers(16, 3000)))]
    ops = []
    for k in range(n):
        ins = [len(tensors) - 1]
        if k > 1 and rng.random() < 0.5:
            ins.append(int(rng.integers(0, len(tensors) - 1)))
        tensors.append(act(f"t{k}", int(rng.integers(1, 3000))))
        ops.append(Op("ADD" if len(ins) == 2 else "MAX_POOL_2D", ins, [len(tensors) - 1], name=f"op{k}"))
    return Graph("dag", tensors, ops, [0], [len(tensors) - 1])


@pytest.mark.parametrize("seed", range(40))
def test_residual_graphs_never_overlap_and_beat_no_reuse(seed):
    g = residual_graph(np.random.default_rng(seed))
    plan = plan_memory(g)
    plan.check()  # no two simultaneously-live tensors overlap
    assert max_live(g, plan) <= plan.arena_bytes <= naive_arena_bytes(g)


def test_graph_input_lives_from_the_start_and_output_to_the_end():
    # in -> a -> b -> out, with `in` read again by the last op: it must not be reused before that.
    tensors = [act("in", 100), act("a", 100), act("b", 100), act("out", 100)]
    ops = [Op("MAX_POOL_2D", [0], [1]), Op("MAX_POOL_2D", [1], [2]), Op("ADD", [2, 0], [3])]
    g = Graph("skip", tensors, ops, [0], [3])
    plan = plan_memory(g)
    plan.check()
    assert plan.lifetimes[0] == (-1, 2)
    assert plan.lifetimes[3] == (2, 3)
    assert plan.offsets[0] not in (plan.offsets[1], plan.offsets[2])
    assert plan.arena_bytes == 3 * 112


def test_reshape_aliases_its_input():
    tensors = [
        act("in", 64),
        act("mid", 64),
        Tensor("flat", (64,), "int8", act("x", 1).quant),
        act("out", 10),
    ]
    ops = [Op("MAX_POOL_2D", [0], [1]), Op("RESHAPE", [1], [2]), Op("FULLY_CONNECTED", [2], [3])]
    g = Graph("reshape", tensors, ops, [0], [3])
    plan = plan_memory(g)
    plan.check()
    assert plan.offsets[1] == plan.offsets[2]
    assert plan.lifetimes[1] == plan.lifetimes[2] == (0, 2)
    assert len(plan.buffers) == 3


def test_constants_are_not_in_the_arena():
    w = Tensor("w", (4, 8), "int8", act("x", 1).quant, np.ones((4, 8), np.int8))
    tensors = [act("in", 8), w, act("out", 4)]
    g = Graph("fc", tensors, [Op("FULLY_CONNECTED", [0, 1, -1], [2])], [0], [2])
    plan = plan_memory(g)
    assert 1 not in plan.offsets
    assert plan.arena_bytes == 32


def test_every_shared_model_plans_without_overlap(shared_model_path):
    from harness.engines.native.emit import split_interior

    g, _, _ = split_interior(load_model(shared_model_path))
    plan = plan_memory(g)
    plan.check()
    assert max_live(g, plan) <= plan.arena_bytes <= naive_arena_bytes(g)
