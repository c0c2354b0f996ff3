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
]


def generate(graph: Graph, out_dir: Path, *, dsp: bool = False) -> CodegenResult:
    """Write model.h / model.c for `graph` (its int8 interior: float boundaries are split off and
    reported in the I/O specs) into `out_dir`; returns the plan, I/O specs, per-layer rows and sizes."""
    return _generate_files(graph, Path(out_dir), dsp=dsp)
