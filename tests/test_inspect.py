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
        Op("MAX_POOL_2D", [3], [4], {"filter": (2, 2), "stride": (2, 2), "padding": "VALID"}, name="pool"),
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


def test_fused_groups_and_the_memory_over_the_schedule():
    from harness.zoo import resolve_model

    info = inspect_model(resolve_model("mcunet_vww0")[0])
    t = info["totals"]
    assert info["fused_groups"] and t["arena_bytes"] < t["arena_unfused_bytes"]
    assert t["line_buffer_bytes"] == sum(g["line_buffer_bytes"] for g in info["fused_groups"]) > 0
    in_groups = {k for g in info["fused_groups"] for k in g["layers"]}
    assert {r["index"] for r in info["layers"] if r["fused_group"]} == in_groups
    sched = info["schedule"]
    assert [s["index"] for s in sched] == list(range(t["layers"]))
    assert max(s["live_bytes"] for s in sched) <= t["arena_bytes"]
    assert max(s["live_bytes_unfused"] for s in sched) <= t["arena_unfused_bytes"]
    assert info["considered"][0]["schedule"] == "layer by layer"
    json.dumps(info)
    plain = inspect_model(resolve_model("mcunet_vww0")[0], fuse=False)
    assert plain["fused_groups"] == [] and plain["totals"]["arena_bytes"] == t["arena_unfused_bytes"]


def test_inspect_cli_draws_the_schedule_and_refuses_an_unwritable_plot(tmp_path, capsys):
    from harness.cli import main

    png = tmp_path / "memory.png"
    assert main(["inspect", "mcunet_vww0", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "memory over the schedule" in out
    assert "fused groups" in out
    assert main(["inspect", "mcunet_vww0", "--no-fuse"]) == 0
    assert "not fused: layer by layer" in capsys.readouterr().out
    assert main(["inspect", "mcunet_vww0", "--plot", str(tmp_path / "no" / "dir" / "m.png")]) != 0
    captured = capsys.readouterr()
    assert "cannot write the plot" in captured.err + captured.out and "Traceback" not in captured.err
