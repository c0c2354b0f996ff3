"""boards.toml -> Board objects. A QEMU machine is a board too (`--board qemu-m4`), and every real board
names the QEMU machine of its core that stands in for it when no probe is attached."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import ROOT
from harness.errors import HarnessError, did_you_mean

CORES = ("cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")


@dataclass(frozen=True)
class Uart:
    kind: str  # cmsdk | stm32-usart | stm32-lpuart
    base: int
    peripheral: str = "UART0"
    tx: str = ""
    rx: str = ""
    af: int = 0
    baud: int = 115200
    rx_irq: int = -1  # the NVIC line of the RX interrupt, where the receive may sleep on it (QEMU's MPS2); -1: poll


@dataclass(frozen=True)
class Board:
    name: str
    core: str
    fpu: str
    dsp: bool
    clock_hz: int  # the nominal clock (what the board runs at once its clock tree is set up)
    flash_origin: int
    flash_bytes: int
    ram_origin: int
    ram_bytes: int
    uart: Uart
    is_qemu: bool
    qemu_name: str  # the QEMU machine entry that stands in for this board (itself for a QEMU machine)
    chip: str = ""
    family: str = ""  # stm32f4 | stm32f7 | stm32h7 | stm32l4 | mps2 | mps3
    reset_clock_hz: int = 0
    pyocd_target: str = ""
    pyocd_pack: str = ""
    machine: str = ""  # QEMU -M name (QEMU entries only)
    icount_per_tick: float = 0.0  # QEMU entries only
    # Real boards (docs/real-boards.md): the ST-LINK mbed board ids that identify the board behind a probe;
    # a probe unique id (`remote:HOST:PORT` for `pyocd server --allow-remote`) and a pyserial URL
    # (`/dev/ttyACM0`, `rfc2217://HOST:PORT`) that pin the board instead of discovering it; a CMSIS pack file
    # for targets pyOCD does not carry built in.
    board_ids: tuple[str, ...] = ()
    probe: str = ""
    serial: str = ""
    pack: str = ""
    clock_setup: bool = True  # false: keep the reset clock (a board whose clock tree cannot be driven)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def sram_bytes(self) -> int:
        return self.ram_bytes

    @property
    def qemu_machine(self) -> Board:
        return get_board(self.qemu_name)

    def describe(self) -> str:
        kind = f"QEMU {self.machine}" if self.is_qemu else self.chip
        return (
            f"{self.name}: {kind}, {self.core}, {self.clock_hz / 1e6:g} MHz, "
            f"{self.ram_bytes // 1024} KiB SRAM, {self.flash_bytes // 1024} KiB flash"
        )


_cache: dict[Path, dict[str, Board]] = {}


def load_boards(path: str | Path | None = None) -> dict[str, Board]:
    path = Path(path) if path else ROOT / "boards.toml"
    if path in _cache:
        return _cache[path]
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise HarnessError(f"board catalogue {path} not found") from e
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{path}: {e}") from e
    boards: dict[str, Board] = {}
    for name, d in data.get("qemu", {}).items():
        boards[name] = _board(name, d, is_qemu=True, path=path)
    for name, d in data.get("board", {}).items():
        boards[name] = _board(name, d, is_qemu=False, path=path)
    for b in boards.values():
        if b.qemu_name not in boards or not boards[b.qemu_name].is_qemu:
            raise HarnessError(f"{path}: board {b.name} names QEMU machine {b.qemu_name!r}, which is not defined")
    _cache[path] = boards
    return boards


# Field -> (type, smallest value) for the numbers of a board entry: checked on load, so a zero clock or
# a negative flash size is refused here, not found as a negative latency in a record.
_NUMBERS = {
    "clock_hz": (int, 1), "reset_clock_hz": (int, 1), "flash_bytes": (int, 1), "ram_bytes": (int, 1),
    "flash_origin": (int, 0), "ram_origin": (int, 0), "icount_per_tick": ((int, float), 0),
}  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_entry(name: str, d: Any, path: Path) -> None:
    if not _NAME.fullmatch(name):
        raise HarnessError(f"{path}: board name {name!r}: use letters, digits and - _ . (it names files and C strings)")
    if not isinstance(d, dict):
        raise HarnessError(f"{path}: board {name} must be a table")
    for key, (types, least) in _NUMBERS.items():
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, types):
            raise HarnessError(f"{path}: board {name}: {key} = {v!r} must be a number")
        if v < least:
            raise HarnessError(f"{path}: board {name}: {key} = {v!r} must be >= {least}")
    for key in ("core", "fpu", "chip", "family", "machine", "qemu", "pyocd_target", "probe", "serial"):
        v = d.get(key, "")
        if not isinstance(v, str) or any(c in v for c in '\n\r\0"\\'):
            raise HarnessError(f"{path}: board {name}: {key} = {v!r} must be one line of text without quotes")
    uart = d.get("uart")
    if uart is not None and (not isinstance(uart, dict) or not isinstance(uart.get("base", 0), int)):
        raise HarnessError(f"{path}: board {name}: uart must be a table with an integer base")
    irq = uart.get("rx_irq", -1) if isinstance(uart, dict) else -1
    if not isinstance(irq, int) or isinstance(irq, bool) or not -1 <= irq <= 15:
        raise HarnessError(f"{path}: board {name}: uart rx_irq = {irq!r} must be an integer in -1..15 (vector table)")
    if isinstance(uart, dict) and (not isinstance(uart.get("baud", 1), int) or uart.get("baud", 1) < 1):
        raise HarnessError(f"{path}: board {name}: uart baud = {uart.get('baud')!r} must be a positive integer")


def _board(name: str, d: dict[str, Any], is_qemu: bool, path: Path) -> Board:
    _check_entry(name, d, path)
    try:
        core = d["core"]
        if core not in CORES:
            raise HarnessError(f"{path}: board {name}: unknown core {core!r} (known: {', '.join(CORES)})")
        known = {
            "core", "fpu", "dsp", "clock_hz", "flash_origin", "flash_bytes", "ram_origin", "ram_bytes", "uart",
            "qemu", "chip", "family", "reset_clock_hz", "pyocd_target", "pyocd_pack", "machine", "icount_per_tick",
            "board_id", "probe", "serial", "pack", "clock_setup",
        }  # fmt: skip
        machine = d.get("machine", "")
        return Board(
            name=name,
            core=core,
            fpu=d.get("fpu", "none"),
            dsp=bool(d.get("dsp", False)),
            clock_hz=int(d["clock_hz"]),
            flash_origin=int(d["flash_origin"]),
            flash_bytes=int(d["flash_bytes"]),
            ram_origin=int(d["ram_origin"]),
            ram_bytes=int(d["ram_bytes"]),
            uart=Uart(**d["uart"]),
            is_qemu=is_qemu,
            qemu_name=name if is_qemu else d["qemu"],
            chip=d.get("chip", ""),
            family=d.get("family", "mps3" if machine.startswith("mps3") else "mps2" if is_qemu else ""),
            reset_clock_hz=int(d.get("reset_clock_hz", d["clock_hz"])),
            pyocd_target=d.get("pyocd_target", ""),
            pyocd_pack=d.get("pyocd_pack", ""),
            machine=machine,
            icount_per_tick=float(d.get("icount_per_tick", 0.0)),
            board_ids=_board_ids(d.get("board_id", ())),
            probe=d.get("probe", ""),
            serial=d.get("serial", ""),
            pack=_pack_path(d.get("pack", ""), path),
            clock_setup=bool(d.get("clock_setup", True)),
            extra={k: v for k, v in d.items() if k not in known},
        )
    except KeyError as e:
        raise HarnessError(f"{path}: board {name} lacks the field {e.args[0]!r}") from e
    except TypeError as e:
        raise HarnessError(f"{path}: board {name}: {e}") from e


def _board_ids(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _pack_path(pack: str, catalogue: Path) -> str:
    """A pack file named in boards.toml, relative to the catalogue's folder."""
    if not pack:
        return ""
    p = Path(pack).expanduser()
    return str(p if p.is_absolute() else catalogue.parent / p)


def get_board(name: str, path: str | Path | None = None) -> Board:
    boards = load_boards(path)
    if name not in boards:
        raise HarnessError(f"unknown board {name!r}{did_you_mean(name, boards)}; known boards: {', '.join(boards)}")
    return boards[name]
