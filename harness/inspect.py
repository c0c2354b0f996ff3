"""`harness inspect MODEL`: what the model is and what the generated engine will need, without building.

Per layer: shapes, MACs, weight bytes, activation bytes and the arena offset the planner gives its
output; totals: MACs, parameters, weight flash and the peak arena; the fused groups with their line-buffer
(ring) bytes, and the bytes live while each layer runs, fused and layer by layer (`--plot` draws them).
Everything is plain JSON types."""

from __future__ import annotations

from typing import Any

from harness.engines.native.emit import analyse, split_interior
from harness.engines.native.planner import plan_memory
from harness.model.ir import Graph


def inspect_model(graph: Graph, fuse: bool = True) -> dict[str, Any]:
    """With `fuse`, the plan the native engine builds (fused groups where they lower the peak); the
    layer-by-layer plan is given beside it, step by step."""
    interior, in_bounds, out_bounds = split_interior(graph)
    plan, rows = analyse(interior, fuse_layers=fuse)
    unfused = plan if not plan.fused else plan_memory(interior)
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
            "fused_group": r.group,
        }
        for r in rows
    ]
    groups = [
        {
            "layers": g.ops,
            "name": g.describe(),
            "line_buffer_bytes": int(g.ring_bytes()),
            "rings": {interior.tensors[t].name: int(rows_) for t, rows_ in g.rings.items()},
            "steps": len(g.steps),
            "output_overwrites_input": g.overwrites is not None,
        }
        for g in plan.fused
    ]
    # bytes live while each layer runs, in this plan and in the layer-by-layer one
    schedule = [
        {
            "index": k,
            "op": op.kind,
            "fused_group": rows[k].group,
            "live_bytes": int(plan.live_bytes_at(k)),
            "live_bytes_unfused": int(unfused.live_bytes_at(k)),
        }
        for k, op in enumerate(interior.ops)
    ]
    considered = [] if plan.choice is None else [{"schedule": s, "bytes": int(b)} for s, b in plan.choice.considered]

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
            "arena_unfused_bytes": int(unfused.arena_bytes),
            "line_buffer_bytes": int(sum(g["line_buffer_bytes"] for g in groups)),
        },
        "fused_groups": groups,
        "schedule": schedule,
        "considered": considered,
    }


def schedule_plot(info: dict[str, Any], path: str) -> None:
    """Bytes live while each layer runs, layer by layer against fused (the picture MCUNetV2 draws per
    block: the peak is the tallest bar), the fused groups shaded, each plan's peak marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sched = info["schedule"]
    x = [s["index"] for s in sched]
    unf = [s["live_bytes_unfused"] / 1024 for s in sched]
    fus = [s["live_bytes"] / 1024 for s in sched]
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=120)
    w = 0.42
    ax.bar([i - w / 2 for i in x], unf, w, color="#b0b0b0", label="layer by layer")
    ax.bar(
        [i + w / 2 for i in x], fus, w, color="#1f77b4", label="fused (this plan)" if info["fused_groups"] else "plan"
    )
    top = max(unf + fus, default=1)
    for i, g in enumerate(info["fused_groups"]):  # alternating shades: adjacent groups stay apart
        a, b = g["layers"][0], g["layers"][-1]
        ax.axvspan(a - 0.5, b + 0.5, color="#1f77b4", alpha=0.07 if i % 2 else 0.16, lw=0)
        ax.text((a + b) / 2, top * 1.02, f"{a}-{b}", ha="center", va="bottom", fontsize=7, color="#1f4f7f")
    t = info["totals"]
    for value, color, label in (
        (max(unf, default=0), "#707070", "layer-by-layer peak"),
        (max(fus, default=0), "#1f77b4", "fused peak"),
    ):
        ax.axhline(value, color=color, ls="--", lw=0.9)
        ax.annotate(
            f"{label} {value:,.1f} KiB",
            (x[-1] + 0.5 if x else 0, value),
            ha="right",
            va="bottom",
            fontsize=8,
            color=color,
        )
    ax.set_xlabel("layer (shaded: fused groups, run row by row)")
    ax.set_ylabel("KiB live (activations + line buffers)")
    ax.set_title(
        f"{info['name']}: memory over the schedule — arena {t['arena_bytes']:,} B fused, "
        f"{t['arena_unfused_bytes']:,} B layer by layer",
        loc="left",
        fontsize=10,
    )
    ax.set_xlim(-0.8, (x[-1] if x else 0) + 0.8)
    ax.set_ylim(0, top * 1.12)
    ax.legend(loc="upper right", fontsize=8, frameon=False, bbox_to_anchor=(1, 0.8))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
