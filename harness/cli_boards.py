"""`harness probes` and `harness doctor`: the real-board side of the command line."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

console = Console()


def register(subparsers) -> None:
    b = subparsers.add_parser(
        "boards",
        help="the boards of boards.toml: core, clock, SRAM and flash, QEMU fallback, attached probe",
        description="Every board bench, accuracy and the nightly take: real boards (run through a probe when one "
        "is attached, else on the QEMU machine of the same core) and the QEMU machines themselves.",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_boards)
    p = subparsers.add_parser(
        "probes",
        help="attached debug probes, the board each sits on and its serial port",
        description="Lists probes through pyOCD, matches each to a board of boards.toml (ST-LINK board id) and to "
        "the serial port with the same USB serial number.",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probes)
    d = subparsers.add_parser(
        "doctor",
        help="toolchain, QEMU, pyOCD targets and packs, probes, serial ports: present or how to install",
    )
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_doctor)


def _dump(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_boards(args: argparse.Namespace) -> int:
    from harness.boards import load_boards
    from harness.cli import _table, show
    from harness.errors import TargetError
    from harness.probes import list_probes

    try:
        attached = {p.board: p.unique_id for p in list_probes() if p.board}
    except TargetError:  # no USB access here: say nothing is attached rather than fail the listing
        attached = {}
    rows = []
    for board in load_boards().values():
        rows.append({
            "name": board.name, "core": board.core, "clock_mhz": board.clock_hz / 1e6,
            "sram_bytes": board.ram_bytes, "flash_bytes": board.flash_bytes,
            "kind": f"QEMU {board.machine}" if board.is_qemu else board.chip,
            "qemu_fallback": None if board.is_qemu else board.qemu_name,
            "probe": attached.get(board.name) or (board.probe or None),
        })  # fmt: skip
    if args.json:
        _dump(rows)
        return 0
    table_rows = [
        [r["name"], r["kind"], r["core"], "-" if r["kind"].startswith("QEMU") else f"{r['clock_mhz']:g} MHz",
         f"{r['sram_bytes'] // 1024:,} KiB", f"{r['flash_bytes'] // 1024:,} KiB",
         "(is QEMU)" if r["qemu_fallback"] is None else r["qemu_fallback"],
         "-" if r["kind"].startswith("QEMU") else (r["probe"] or "none")]
        for r in rows
    ]  # fmt: skip
    cols = ["board", "chip / machine", "core", "clock", "SRAM", "flash", "QEMU fallback", "probe"]
    show(_table("boards (boards.toml)", cols, table_rows, justify_from=3), console, drop=("chip / machine", "core"))
    return 0


def cmd_probes(args: argparse.Namespace) -> int:
    from harness.probes import list_probes

    probes = list_probes()
    if args.json:
        _dump([p.as_dict() for p in probes])
        return 0
    if not probes:
        console.print("no debug probes attached (see `harness doctor`)")
        return 0
    t = Table(title="debug probes", title_justify="left")
    for c in ("unique id", "probe", "board id", "looks like", "serial port"):
        t.add_column(c)
    for p in probes:
        board = p.board or f"unknown ({p.board_name or '-'})"
        t.add_row(p.unique_id, p.description, p.board_id or "-", board, p.serial_port or "-")
    from harness.cli import show

    show(t, console)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from harness.doctor import healthy, run_doctor

    checks = run_doctor()
    ok = healthy(checks)
    if args.json:
        _dump({"healthy": ok, "checks": [c.as_dict() for c in checks]})
        return 0 if ok else 1
    t = Table(title="harness doctor", title_justify="left")
    for c in ("area", "item", "status", "detail", "to fix"):
        t.add_column(c, overflow="fold")
    for c in checks:
        mark = "[green]ok[/]" if c.ok else ("[red]MISSING[/]" if c.required else "[yellow]missing[/]")
        t.add_row(c.area, c.name, mark, c.detail, "" if c.ok else c.fix)
    from harness.cli import show

    show(t, console)
    console.print("all required tools present" if ok else "[red]required tools are missing[/]: see 'to fix'")
    return 0 if ok else 1
