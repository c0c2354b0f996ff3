"""The model zoo. For now: paths only; the zoo's architectures land with the zoo issue."""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError
from harness.model import Graph, load_model

ZOO: dict = {}


def resolve_model(name_or_path: str) -> tuple[Graph, str]:
    """A zoo name or a path to any .tflite -> (graph, label)."""
    path = Path(name_or_path)
    if path.suffix == ".tflite" or path.exists():
        return load_model(path), path.name
    raise HarnessError(f"unknown model {name_or_path!r}: not a file, and the zoo has {sorted(ZOO) or 'no models yet'}")
