"""Targets a firmware runs on: `qemu` (the board's QEMU fallback), `pyocd` (a real board), and `host`
(the generated C built for this machine, for correctness only)."""


def find_probe(board):
    """The unique id of the attached probe for `board`, or None (harness.probes.find_probe)."""
    from harness.probes import find_probe as _find

    return _find(board)


def pyocd_target(board, probe: str):
    """A Target that flashes `board` through the pyOCD probe `probe` and talks over its serial port."""
    from harness.targets.pyocd import PyocdTarget

    return PyocdTarget(board, probe)
