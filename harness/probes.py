"""Debug probes attached to this machine, the board each one sits on, and the serial port that belongs to it.

An ST-LINK on a Nucleo reports the board's mbed board id (e.g. 0816 = NUCLEO-F746ZG), which boards.toml lists
as `board_id`; its virtual COM port is a USB interface of the same device, so the port whose USB serial number
equals the probe's unique id is the board's UART. A probe on another host (`pyocd server --allow-remote`) is
named `remote:HOST:PORT` and cannot be enumerated: it comes from boards.toml (`probe = ...`) or `--probe`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.boards import Board, load_boards
from harness.errors import TargetError

REMOTE_PREFIX = "remote:"


@dataclass
class ProbeInfo:
    unique_id: str
    vendor: str
    product: str
    description: str
    board_id: str  # the probe's mbed board id ("" when it reports none)
    board_name: str  # pyOCD's name for that board id, e.g. NUCLEO-F746ZG
    board: str  # the boards.toml entry it looks like ("" when none)
    serial_port: str  # the probe's virtual COM port ("" when none was found)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _connect_helper():
    from pyocd.core.helpers import ConnectHelper

    return ConnectHelper


def connected_probes() -> list[Any]:
    """pyOCD's DebugProbe objects for every local probe (never blocks, never prompts)."""
    try:
        helper = _connect_helper()
        return list(helper.get_all_connected_probes(blocking=False, print_wait_message=False))
    except ImportError as e:
        raise TargetError(f"pyOCD is not installed ({e}): pip install pyocd") from e
    except Exception as e:  # libusb missing, USB permissions: pyOCD raises many kinds
        raise TargetError(
            f"pyOCD could not list debug probes: {e} (on Linux: are the ST-LINK udev rules installed? "
            "see docs/real-boards.md)"
        ) from e


def serial_ports() -> list[Any]:
    from serial.tools import list_ports

    return list(list_ports.comports())


def serial_port_for(unique_id: str, ports: list[Any] | None = None) -> str:
    """The serial device whose USB serial number is the probe's unique id ("" when none)."""
    uid = unique_id.lower()
    for p in serial_ports() if ports is None else ports:
        if (getattr(p, "serial_number", None) or "").lower() == uid:
            return p.device
    return ""


def _board_id(probe: Any) -> str:
    try:
        bid = getattr(probe, "board_id", None)
    except Exception:  # an ST-LINK reads its board id over USB; a flaky one raises
        bid = None
    return str(bid) if bid else ""


def _board_name(probe: Any) -> str:
    try:
        info = probe.associated_board_info
    except Exception:
        info = None
    return info.name if info is not None else ""


def match_board(board_id: str, board_name: str, boards: dict[str, Board] | None = None) -> str:
    """The boards.toml entry a probe looks like: by mbed board id, else by the chip in pyOCD's board name."""
    boards = load_boards() if boards is None else boards
    real = [b for b in boards.values() if not b.is_qemu]
    if board_id:
        for b in real:
            if board_id in b.board_ids:
                return b.name
    name = board_name.upper().replace("_", "-")
    if name:
        for b in real:
            chip = b.chip.upper().removeprefix("STM32")
            if chip and chip in name:
                return b.name
    return ""


def list_probes(boards: dict[str, Board] | None = None) -> list[ProbeInfo]:
    ports = serial_ports()
    out = []
    for probe in connected_probes():
        uid = str(probe.unique_id)
        board_id, board_name = _board_id(probe), _board_name(probe)
        out.append(
            ProbeInfo(
                unique_id=uid,
                vendor=str(getattr(probe, "vendor_name", "") or ""),
                product=str(getattr(probe, "product_name", "") or ""),
                description=str(getattr(probe, "description", "") or ""),
                board_id=board_id,
                board_name=board_name,
                board=match_board(board_id, board_name, boards),
                serial_port=serial_port_for(uid, ports),
            )
        )
    return out


def find_probe(board: Board) -> str | None:
    """The unique id of the probe to run `board` on, or None when none is attached (then the bench falls
    back to QEMU). A probe pinned in boards.toml or by --probe must be there; two probes that both look like
    the board are an error, since flashing the wrong one would be silent."""
    if board.probe:
        if board.probe.lower().startswith(REMOTE_PREFIX):
            return board.probe  # a pyOCD server on another host: only connecting shows whether it is there
        attached = [str(p.unique_id) for p in connected_probes()]
        hits = [u for u in attached if board.probe.lower() in u.lower()]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise TargetError(
                f"the probe {board.probe} chosen for {board.name} is not attached; attached probes: "
                f"{', '.join(attached) or 'none'} (see `harness probes`)"
            )
        raise TargetError(f"the probe id {board.probe!r} matches several probes: {', '.join(hits)}; give more of it")
    if board.is_qemu:
        return None
    try:
        probes = list_probes()
    except TargetError:
        return None  # auto mode: no usable probe stack means no board; `harness probes` shows why
    mine = [p for p in probes if p.board == board.name]
    if len(mine) > 1:
        raise TargetError(
            f"{len(mine)} attached probes look like a {board.name}: "
            + ", ".join(f"{p.unique_id} ({p.serial_port or 'no serial port'})" for p in mine)
            + "; choose one with --probe UNIQUE_ID (or `probe = ...` in boards.toml)"
        )
    return mine[0].unique_id if mine else None
