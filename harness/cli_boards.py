"""`harness probes` and `harness doctor`: the real-board side of the command line."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

console = Console()


def register(subparsers) -> None:
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
