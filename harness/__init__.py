"""harness: hardware-in-the-loop benchmarking of int8 TinyML models on Cortex-M microcontrollers."""

from pathlib import Path

__version__ = "0.1.0"

# The repository root: firmware/ and boards.toml live beside the package (installed editable).
ROOT = Path(__file__).resolve().parent.parent
