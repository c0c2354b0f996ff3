"""`harness inspect MODEL`: what the model is and what the generated engine will need, without building.

Per layer: shapes, MACs, weight bytes, activation bytes and the arena offset the planner gives its
output; totals: MACs, parameters, weight flash and the peak arena. Everything is plain JSON types."""

from __future__ import annotations

from typing import Any

from harness.engines.native.emit import analyse, split_interior
from harness.model.ir import Graph


def inspect_model(graph: Graph) -> dict[str, Any]:
    interior, in_bounds, out_bounds = split_interior(graph)
    plan, rows = analyse(interior)
    layers = [
        {
            "index": r.index,
            "name": r.name,
            "op": r.op,
            "input_shapes": [list(s) for s in r.input_shapes],
            "output_shape": list(r.output_shape),
            "macs": int(r.macs),
            "weight_bytes": int(r.weight_bytes),
            "activation_bytes": int(r.activation_bytes),
            "arena_offset": int(r.output_offset),
        }
        for r in rows
    ]

    def io(ts: list[int], bounds) -> list[dict[str, Any]]:
        out = []
        for t, b in zip(ts, bounds, strict=True):
            x = interior.tensors[t]
            out.append(
                {
                    "name": x.name,
                    "shape": list(x.shape),
                    "dtype": x.dtype,
                    "scale": float(x.quant.s) if x.quant is not None else None,
                    "zero_point": int(x.quant.zp) if x.quant is not None else None,
                    "arena_offset": int(plan.offsets[t]),
                    "float_boundary": b is not None,
                }
            )
        return out

    return {
        "name": graph.name,
        "layers": layers,
        "inputs": io(interior.inputs, in_bounds),
        "outputs": io(interior.outputs, out_bounds),
        "totals": {
            "layers": len(layers),
            "macs": int(interior.macs()),
            "params": int(interior.params()),
            "weight_bytes": int(interior.weight_bytes()),
            "arena_bytes": int(plan.arena_bytes),
            "peak_live_bytes": int(max((plan.live_bytes_at(k) for k in range(len(interior.ops))), default=0)),
        },
    }
