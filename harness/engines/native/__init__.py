"""Code generation: the static memory plan and the C inference engine for one int8 model."""

from __future__ import annotations

from pathlib import Path

from harness.engines.native.emit import KERNEL_DIR, CodegenResult, IOSpec, LayerRow, analyse, c_string
from harness.engines.native.emit import generate_files as _generate_files
from harness.engines.native.planner import MemoryPlan, plan_memory
from harness.model.ir import Graph

__all__ = [
    "KERNEL_DIR",
    "CodegenResult",
    "IOSpec",
    "LayerRow",
    "MemoryPlan",
    "analyse",
    "c_string",
    "generate",
    "plan_memory",
    "wide_budget",
]


def generate(
    graph: Graph,
    out_dir: Path,
    *,
    dsp: bool = False,
    flash_bytes: int | None = None,
    fuse: bool = True,
    budget: int | None = None,
) -> CodegenResult:
    """Write model.h / model.c for `graph` (its int8 interior: float boundaries are split off and
    reported in the I/O specs) into `out_dir`; returns the plan, I/O specs, per-layer rows and sizes.
    With the board's `flash_bytes`, layers may take wide weights within wide_budget (or `budget` bytes,
    when given). With `fuse`, chains of layers run row by row where that lowers the peak (fuse.py)."""
    if budget is None:
        budget = 0 if flash_bytes is None else wide_budget(flash_bytes, graph)
    return _generate_files(graph, Path(out_dir), dsp=dsp, wide_budget=budget, fuse_layers=fuse)


def wide_budget(flash_bytes: int, graph: Graph) -> int:
    """Flash the generator may spend on wide weights: half of what the board's flash leaves after the
    model's int8 weights and 128 KiB for code, so that a model near the board's limit stays int8."""
    weights = sum(t.nbytes for t in graph.tensors if t.is_const)
    return max(0, (flash_bytes - weights - 128 * 1024) // 2)
