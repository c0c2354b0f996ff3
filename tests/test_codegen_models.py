"""Whole models: the generated C (built for the host) == the numpy reference == the TFLite interpreter,
exactly, on several inputs including the extremes. Small edge-case graphs from tests/opmodels.py and the
five reference models in ../shared/models."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_MODEL_FILES, oracle_bytes, shared_model
from opmodels import ALL as OPMODELS

from harness import oracle, reference
from harness.engines.native import generate
from harness.model import Graph, Op, Quant, Tensor, load_model, to_tflite_bytes
from harness.model.boundary import dequantize_output, split_boundary
from harness.targets.host import HostModel


def input_sets(specs, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    sets = [[rng.integers(-128, 128, size=s.shape, dtype=np.int8) for s in specs] for _ in range(3)]
    sets.append([np.full(s.shape, -128, np.int8) for s in specs])
    sets.append([np.full(s.shape, 127, np.int8) for s in specs])
    return sets


def check_model(graph, model_bytes: bytes, tmp_path, seed: int = 0) -> None:
    interior, in_bounds, out_bounds = split_boundary(graph)
    cg = generate(graph, tmp_path / "gen")
    cg.plan.check()
    host = HostModel(cg, cache_dir=tmp_path / "host")
    for xs in input_sets(cg.inputs, seed):
        got = host.run(xs)
        want = reference.run(interior, xs)
        for j, (g, w) in enumerate(zip(got, want, strict=True)):
            assert np.array_equal(g, np.asarray(w).reshape(g.shape)), f"output {j}: C != reference"
        # The interpreter runs the whole file, float boundaries included: give a float input the value
        # whose quantization is our int8 input, and compare a float output after the host's dequantize.
        feed = [x if b is None else dequantize_output(x, b) for x, b in zip(xs, in_bounds, strict=True)]
        for j, (g, o, b) in enumerate(zip(got, oracle.run_tflite(model_bytes, feed), out_bounds, strict=True)):
            mine = g if b is None else dequantize_output(g, b)
            assert np.array_equal(mine.reshape(-1), o.reshape(-1)), f"output {j}: C != interpreter"


def q(s, zp):
    return Quant(np.array([s], np.float32), np.array([zp]))


def extra_graphs() -> dict[str, Graph]:
    """Single-op graphs for the ops and options the reference models do not use."""
    rng = np.random.default_rng(0)
    cases: dict[str, Graph] = {}
    cases["mean"] = Graph(
        "mean",
        [Tensor("x", (1, 5, 7, 6), "int8", q(0.05, 3)), Tensor("y", (1, 1, 1, 6), "int8", q(0.02, -7))],
        [Op("MEAN", [0], [1], {"axes": (1, 2), "keep_dims": True}, name="mean")],
        [0],
        [1],
    )
    cases["mean_nokeep"] = Graph(
        "mean2",
        [Tensor("x", (1, 4, 4, 6), "int8", q(0.05, 3)), Tensor("y", (1, 6), "int8", q(0.05, 3))],
        [Op("MEAN", [0], [1], {"axes": (1, 2), "keep_dims": False}, name="mean")],
        [0],
        [1],
    )
    cases["pad"] = Graph(
        "pad",
        [Tensor("x", (1, 3, 4, 5), "int8", q(0.05, 3)), Tensor("y", (1, 5, 7, 5), "int8", q(0.05, 3))],
        [Op("PAD", [0], [1], {"paddings": ((0, 0), (1, 1), (2, 1), (0, 0))}, name="pad")],
        [0],
        [1],
    )
    cases["quant"] = Graph(
        "quant",
        [Tensor("x", (1, 3, 4, 5), "int8", q(0.05, 3)), Tensor("y", (1, 3, 4, 5), "int8", q(0.07, -20))],
        [Op("QUANTIZE", [0], [1], {}, name="rq")],
        [0],
        [1],
    )
    cases["concat"] = Graph(
        "concat",
        [
            Tensor("a", (1, 3, 4, 5), "int8", q(0.05, 3)),
            Tensor("b", (1, 3, 4, 2), "int8", q(0.05, 3)),
            Tensor("y", (1, 3, 4, 7), "int8", q(0.05, 3)),
        ],
        [Op("CONCATENATION", [0, 1], [2], {"axis": 3, "activation": "NONE"}, name="cat")],
        [0, 1],
        [2],
    )
    cases["concat_ax1"] = Graph(
        "concat1",
        [
            Tensor("a", (1, 3, 4, 5), "int8", q(0.05, 3)),
            Tensor("b", (1, 2, 4, 5), "int8", q(0.05, 3)),
            Tensor("y", (1, 5, 4, 5), "int8", q(0.05, 3)),
        ],
        [Op("CONCATENATION", [0, 1], [2], {"axis": 1, "activation": "NONE"}, name="cat")],
        [0, 1],
        [2],
    )
    cases["add_bcast"] = Graph(
        "addb",
        [
            Tensor("a", (1, 3, 4, 5), "int8", q(0.05, 3)),
            Tensor("b", (1, 1, 1, 5), "int8", q(0.02, -9)),
            Tensor("y", (1, 3, 4, 5), "int8", q(0.06, 1)),
        ],
        [Op("ADD", [0, 1], [2], {"activation": "RELU"}, name="add")],
        [0, 1],
        [2],
    )
    cases["maxpool_same"] = Graph(
        "mp",
        [Tensor("x", (1, 7, 5, 3), "int8", q(0.05, 3)), Tensor("y", (1, 4, 3, 3), "int8", q(0.05, 3))],
        [
            Op(
                "MAX_POOL_2D",
                [0],
                [1],
                {"filter": (3, 3), "stride": (2, 2), "padding": "SAME", "activation": "RELU6"},
                name="mp",
            )
        ],
        [0],
        [1],
    )
    cases["avgpool_same"] = Graph(
        "ap",
        [Tensor("x", (1, 7, 5, 3), "int8", q(0.05, 3)), Tensor("y", (1, 4, 3, 3), "int8", q(0.05, 3))],
        [
            Op(
                "AVERAGE_POOL_2D",
                [0],
                [1],
                {"filter": (3, 3), "stride": (2, 2), "padding": "SAME", "activation": "NONE"},
                name="ap",
            )
        ],
        [0],
        [1],
    )
    w = rng.integers(-127, 128, (1, 3, 3, 8), dtype=np.int8)
    cases["dw_m2"] = Graph(
        "dwm2",
        [
            Tensor("x", (1, 6, 5, 4), "int8", q(0.05, -128)),
            Tensor("w", (1, 3, 3, 8), "int8", Quant(np.linspace(1e-3, 2e-2, 8).astype(np.float32), np.zeros(8), 3), w),
            Tensor(
                "b",
                (8,),
                "int32",
                Quant((0.05 * np.linspace(1e-3, 2e-2, 8)).astype(np.float32), np.zeros(8)),
                rng.integers(-2000, 2000, 8, dtype=np.int32),
            ),
            Tensor("y", (1, 3, 3, 8), "int8", q(0.1, 127)),
        ],
        [
            Op(
                "DEPTHWISE_CONV_2D",
                [0, 1, 2],
                [3],
                {"stride": (2, 2), "dilation": (1, 1), "padding": "SAME", "activation": "NONE", "depth_multiplier": 2},
                name="dw",
            )
        ],
        [0],
        [3],
    )
    w2 = rng.integers(-127, 128, (6, 3, 3, 4), dtype=np.int8)
    cases["conv_dil"] = Graph(
        "cdil",
        [
            Tensor("x", (1, 9, 8, 4), "int8", q(0.05, 10)),
            Tensor("w", (6, 3, 3, 4), "int8", Quant(np.linspace(1e-3, 2e-2, 6).astype(np.float32), np.zeros(6), 0), w2),
            Tensor(
                "b",
                (6,),
                "int32",
                Quant((0.05 * np.linspace(1e-3, 2e-2, 6)).astype(np.float32), np.zeros(6)),
                rng.integers(-2000, 2000, 6, dtype=np.int32),
            ),
            Tensor("y", (1, 9, 8, 6), "int8", q(0.2, -5)),
        ],
        [
            Op(
                "CONV_2D",
                [0, 1, 2],
                [3],
                {"stride": (1, 1), "dilation": (2, 2), "padding": "SAME", "activation": "RELU"},
                name="conv",
            )
        ],
        [0],
        [3],
    )
    cases["softmax"] = Graph(
        "sm",
        [Tensor("x", (1, 10), "int8", q(0.1, 3)), Tensor("y", (1, 10), "int8", q(1 / 256, -128))],
        [Op("SOFTMAX", [0], [1], {"beta": 1.0}, name="sm")],
        [0],
        [1],
    )
    return cases


def inverted_bottleneck(rng=None) -> Graph:
    """1x1 expand (4 -> 24) -> 3x3 depthwise -> 1x1 project (24 -> 4), a residual ADD: the depthwise
    pair is the arena's peak, so the planner runs it in place."""
    rng = rng or np.random.default_rng(3)

    def conv(name, cin, cout, k, dw):
        wshape = (1, k, k, cout) if dw else (cout, k, k, cin)
        scales = np.geomspace(2e-3, 3e-2, cout).astype(np.float32)
        w = Tensor(f"{name}_w", wshape, "int8", Quant(scales, np.zeros(cout), 3 if dw else 0))
        w.data = rng.integers(-127, 128, wshape, dtype=np.int8)
        b = Tensor(f"{name}_b", (cout,), "int32", Quant(scales * np.float32(0.05), np.zeros(cout)))
        b.data = rng.integers(-3000, 3000, cout, dtype=np.int32)
        return w, b

    t = [Tensor("in", (1, 7, 6, 4), "int8", q(0.05, -10))]
    ops = []
    for name, cin, cout, k, dw in (("expand", 4, 24, 1, False), ("dw", 24, 24, 3, True), ("project", 24, 4, 1, False)):
        w, b = conv(name, cin, cout, k, dw)
        x = len(t) - 1
        t += [w, b, Tensor(name, (1, 7, 6, cout), "int8", q(0.08, -3))]
        opts = {"stride": (1, 1), "dilation": (1, 1), "padding": "SAME", "activation": "RELU6"}
        if dw:
            opts["depth_multiplier"] = 1
        ops.append(Op("DEPTHWISE_CONV_2D" if dw else "CONV_2D", [x, x + 1, x + 2], [x + 3], opts, name=name))
    t.append(Tensor("out", (1, 7, 6, 4), "int8", q(0.1, 2)))
    ops.append(Op("ADD", [0, len(t) - 2], [len(t) - 1], {"activation": "NONE"}, name="residual"))
    return Graph("inverted_bottleneck", t, ops, [0], [len(t) - 1])


EXTRA = extra_graphs()
EXTRA["inverted_bottleneck"] = inverted_bottleneck()


def test_inplace_depthwise_shrinks_the_arena(tmp_path):
    from harness.engines.native.planner import plan_memory

    g = inverted_bottleneck()
    plan = plan_memory(g)
    plain = plan_memory(g, inplace_depthwise=False)
    plan.check()
    assert list(plan.inplace) == [1]
    assert plan.offsets[g.ops[1].inputs[0]] == plan.offsets[g.ops[1].outputs[0]]
    assert plan.arena_bytes < plain.arena_bytes
    cg = generate(g, tmp_path, fuse=False)  # layer by layer: fusion would take the block row by row
    assert "tk_depthwise_inplace(&l1_dw" in (tmp_path / "model.c").read_text()
    assert cg.arena_bytes == plan.arena_bytes
    assert generate(g, tmp_path / "fused").arena_bytes <= plan.arena_bytes  # never worse than in place


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_op(name, tmp_path):
    graph = EXTRA[name]
    check_model(graph, to_tflite_bytes(graph), tmp_path, seed=len(name))


@pytest.mark.parametrize("name", sorted(OPMODELS))
def test_opmodel(name, tmp_path):
    graph = OPMODELS[name]()
    check_model(graph, to_tflite_bytes(graph), tmp_path, seed=len(name))


@pytest.mark.parametrize("key", sorted(SHARED_MODEL_FILES))
def test_shared_model(key, tmp_path):
    check_model(load_model(shared_model(key)), oracle_bytes(key), tmp_path)


def test_float_boundary_model(tmp_path):
    """QUANTIZE float->int8 in front, DEQUANTIZE behind: the device runs the int8 interior only."""
    tensors = [
        Tensor("x_float", (1, 6, 6, 4), "float32"),
        Tensor("x", (1, 6, 6, 4), "int8", q(0.03, 5)),
        Tensor("pooled", (1, 3, 3, 4), "int8", q(0.03, 5)),
        Tensor("y_float", (1, 3, 3, 4), "float32"),
    ]
    ops = [
        Op("QUANTIZE", [0], [1], {}, name="quant"),
        Op("MAX_POOL_2D", [1], [2], {"filter": (2, 2), "stride": (2, 2), "padding": "VALID", "activation": "NONE"}),
        Op("DEQUANTIZE", [2], [3], {}, name="dequant"),
    ]
    graph = Graph("float_io", tensors, ops, [0], [3])
    cg = generate(graph, tmp_path / "peek")
    assert [s.boundary is not None for s in cg.inputs + cg.outputs] == [True, True]
    assert [layer.op for layer in cg.layers] == ["MAX_POOL_2D"]
    check_model(graph, to_tflite_bytes(graph), tmp_path)
