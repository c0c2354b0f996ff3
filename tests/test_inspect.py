"""`inspect_model`: per-layer rows and totals, JSON-serialisable, consistent with the planner."""

from __future__ import annotations

import json

import numpy as np

from harness.inspect import inspect_model
from harness.model import load_model
from harness.model.ir import Graph, Op, Quant, Tensor


def q(scale=0.1, zp=0):
    return Quant(np.array([scale], np.float32), np.array([zp]))


def small_cnn() -> Graph:
    rng = np.random.default_rng(0)
    t = [
        Tensor("in", (1, 8, 8, 3), "int8", q()),
        Tensor("w", (4, 3, 3, 3), "int8", q(), rng.integers(-5, 5, (4, 3, 3, 3), dtype=np.int8)),
        Tensor("b", (4,), "int32", q(), np.zeros(4, np.int32)),
        Tensor("conv", (1, 8, 8, 4), "int8", q()),
        Tensor("pool", (1, 4, 4, 4), "int8", q()),
        Tensor("flat", (1, 64), "int8", q()),
        Tensor("fw", (2, 64), "int8", q(), np.ones((2, 64), np.int8)),
        Tensor("out", (1, 2), "int8", q()),
    ]
    ops = [
        Op("CONV_2D", [0, 1, 2], [3], {"stride": (1, 1), "padding": "SAME"}, name="conv"),
        Op("MAX_POOL_2D", [3], [4], {}, name="pool"),
        Op("RESHAPE", [4], [5], {}, name="flatten"),
        Op("FULLY_CONNECTED", [5, 6, -1], [7], {}, name="fc"),
    ]
    return Graph("small", t, ops, [0], [7])


def test_rows_and_totals():
    info = inspect_model(small_cnn())
    json.dumps(info)  # plain JSON types only
    rows = info["layers"]
    assert [r["op"] for r in rows] == ["CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"]
    conv = rows[0]
    assert conv["input_shapes"] == [[1, 8, 8, 3]] and conv["output_shape"] == [1, 8, 8, 4]
    assert conv["macs"] == 8 * 8 * 4 * 27
    assert conv["weight_bytes"] == 4 * 27 + 4 * 4
    assert conv["activation_bytes"] == 192 + 256
    assert rows[2]["arena_offset"] == rows[1]["arena_offset"]  # the reshape aliases the pool output
    t = info["totals"]
    assert t["macs"] == 8 * 8 * 4 * 27 + 2 * 64
    assert t["params"] == 108 + 4 + 128
    assert t["weight_bytes"] == 108 + 16 + 128
    assert t["arena_bytes"] == 192 + 256  # the conv's input + output is the busiest moment
    assert info["inputs"][0]["shape"] == [1, 8, 8, 3] and info["outputs"][0]["shape"] == [1, 2]


def test_shared_models(shared_model_path):
    g = load_model(shared_model_path)
    info = inspect_model(g)
    json.dumps(info)
    assert len(info["layers"]) == len(g.ops)
    assert info["totals"]["macs"] == g.macs()
    assert info["totals"]["peak_live_bytes"] <= info["totals"]["arena_bytes"]
