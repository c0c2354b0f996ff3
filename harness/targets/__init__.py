"""Targets a firmware runs on: `qemu` (the board's QEMU fallback), `pyocd` (a real board), and `host`
(the generated C built for this machine, for correctness only)."""
