"""The real-board target: flash the firmware through pyOCD, then talk to it over the board's serial port.

Order of one `open`: a pyOCD session on the probe (by unique id, with the board's target type and CMSIS pack),
halt, program the ELF, read every loaded segment back (verify), open the serial port while the core is still
halted (so the HELLO sent at boot cannot be missed), reset and run, wait for HELLO and check that the firmware
runs at the clock boards.toml gives. The pyOCD session stays open until the session closes, and closing it lets
the core run on.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import serial

from harness.boards import Board
from harness.errors import TargetError
from harness.probes import REMOTE_PREFIX, serial_port_for
from harness.protocol import CHUNK, Device, Hello

STARTUP_TIMEOUT = 10.0


def _pyocd():
    """pyOCD's entry points, looked up at call time (tests replace them with fakes here, at the API boundary)."""
    from pyocd.core.helpers import ConnectHelper
    from pyocd.flash.file_programmer import FileProgrammer

    return ConnectHelper, FileProgrammer


def builtin_targets() -> set[str]:
    from pyocd.target import TARGET

    return {k.lower() for k in TARGET}


def pack_targets(pack: str) -> set[str]:
    from pyocd.target.pack.pack_target import PackTargets, normalise_target_type_name

    parts: list[str] = []
    PackTargets.process_targets_from_pack(pack, lambda dev: parts.append(normalise_target_type_name(dev.part_number)))
    return {p.lower() for p in parts}


def installed_pack_targets() -> set[str]:
    """Target types from packs installed with `pyocd pack install` (cmsis-pack-manager's cache)."""
    try:
        from pyocd.target.pack.pack_target import ManagedPacks

        return {d.part_number.lower() for d in ManagedPacks.get_installed_targets()}
    except Exception:  # no cache yet, or no cmsis-pack-manager: nothing installed
        return set()


def pack_install_hint(board: Board) -> str:
    pattern = (board.chip or board.pyocd_target).lower()
    pack = board.pyocd_pack or "the chip's CMSIS device pack"
    return (
        f"install its CMSIS pack {pack} with `pyocd pack install {pattern}` (needs the network; offline it exits 0 "
        f"without installing anything, so check with `harness doctor`), or download {pack} from "
        f'https://www.keil.arm.com/packs/ and name the file in boards.toml: pack = "path/to/{pack}.x.y.z.pack"'
    )


def target_support(board: Board) -> tuple[bool, str]:
    """Whether pyOCD can drive the board's target type, and where the support comes from (or what to do)."""
    name = board.pyocd_target.lower()
    if not name:
        return False, f"boards.toml gives {board.name} no pyocd_target"
    if name in builtin_targets():
        return True, f"{name}: built into pyOCD"
    if board.pack:
        if not Path(board.pack).is_file():
            return False, f"{name}: the pack file {board.pack} named in boards.toml does not exist"
        try:
            parts = pack_targets(board.pack)
        except Exception as e:
            return False, f"{name}: pyOCD cannot read the pack {board.pack}: {e}"
        if name in parts:
            return True, f"{name}: from the pack {board.pack}"
        return False, f"{name}: not in the pack {board.pack} (it holds {', '.join(sorted(parts)[:8])}...)"
    if name in installed_pack_targets():
        return True, f"{name}: from an installed pack"
    return False, f"pyOCD has no target {name}: {pack_install_hint(board)}"


def _is_busy(e: Exception) -> bool:
    text = str(e).lower()
    return (
        getattr(e, "errno", None) in (errno.EBUSY, errno.EACCES)
        or "busy" in text
        or "lock" in text
        or "errno 16" in text
    )


def open_serial(url: str, baud: int, board: Board) -> Any:
    """The board's UART: a local device (held exclusively, so two benches cannot share it) or any pyserial
    URL (`rfc2217://host:port` for a port served from another machine)."""
    local = "://" not in url
    try:
        kwargs: dict[str, Any] = {"baudrate": baud, "timeout": 0.5}
        if local:
            kwargs["exclusive"] = True
        return serial.serial_for_url(url, **kwargs)
    except (serial.SerialException, OSError, ValueError) as e:
        if local and _is_busy(e):
            raise TargetError(
                f"the serial port {url} of {board.name} is busy: another program holds it (a terminal such as "
                f"screen, minicom or picocom, another bench, or ModemManager); close it and run again ({e})"
            ) from e
        raise TargetError(f"cannot open the serial port {url} of {board.name}: {e}") from e


class PyocdSession:
    def __init__(
        self,
        board: Board,
        probe: str,
        elf: Path,
        timeout: float,
        serial_url: str = "",
        verify: bool = True,
        startup_timeout: float = STARTUP_TIMEOUT,
        build_id: str = "",
    ) -> None:
        self.board = board
        self.build_id = build_id
        self.probe = probe
        self.elf = Path(elf)
        self.port = None
        self.session = None
        self.describe = f"{board.name} (probe {probe})"
        # inputs written straight into the firmware's input copy over SWD, checked by reading them back;
        # the UART (the protocol of record) once a write fails or reads back wrong
        self.input_path = "swd"
        self.input_note = ""  # why the inputs moved to the UART, when they did
        self._symbols: dict[str, int | None] = {}  # firmware symbols SWD reads and writes, by name
        try:
            self._connect()
            target = self.session.target
            self._flash(target)
            if verify:
                self._verify(target)
            self.serial_url = serial_url or self._find_serial()
            self.port = open_serial(self.serial_url, board.uart.baud, board)
            self.port.reset_input_buffer()
            self._call("reset and run the core", target.reset)
            self.device = Device(self.port, timeout=timeout, describe=self.describe)
            self.hello: Hello = self._wait_hello(startup_timeout)
            self._check_hello()
        except BaseException:
            self.close()
            raise

    def put_input(self, index: int, data: bytes) -> None:
        """Input `index` by SWD (`write_memory_block8` into the firmware's `inputs_copy`, then read back),
        or over the UART once that has failed."""
        if self.input_path == "swd":
            base = self._inputs_copy()
            if base is not None:
                addr = base + self.hello.input_offset(index)
                target = self.session.target
                try:
                    target.write_memory_block8(addr, list(data))
                    got = bytes(target.read_memory_block8(addr, len(data)))
                except Exception as e:  # pyOCD transfer errors, a probe unplugged: the UART still serves
                    self._swd_failed(f"the write at 0x{addr:08x} failed: {type(e).__name__}: {e}")
                else:
                    if got == data:
                        return
                    self._swd_failed(f"input {index} read back different at 0x{addr:08x}")
        self.device.set_input(index, data)

    def get_output(self, index: int, size: int) -> bytes:
        """Output `index` read over SWD from the arena where it is larger than one UART chunk (one block
        read instead of a GET_OUTPUT round trip a KiB); smaller ones, and all of them once SWD has failed,
        by GET_OUTPUT over the UART."""
        if self.input_path == "swd" and size > CHUNK:
            base = self._symbol("arena")
            if base is not None:
                addr = base + self.hello.outputs[index].offset
                try:
                    got = bytes(self.session.target.read_memory_block8(addr, size))
                except Exception as e:  # as for inputs: the UART still serves
                    self._swd_failed(f"the read of output {index} at 0x{addr:08x} failed: {type(e).__name__}: {e}")
                else:
                    if len(got) == size:
                        return got
                    self._swd_failed(f"the read of output {index} at 0x{addr:08x} gave {len(got)} of {size} bytes")
        return self.device.get_output(index, size)

    def _symbol(self, name: str) -> int | None:
        if name not in self._symbols:
            self._symbols[name] = symbol_address(self.elf, name)
            if self._symbols[name] is None:
                self._swd_failed(f"{self.elf.name} has no {name} symbol")
        return self._symbols[name]

    def _inputs_copy(self) -> int | None:
        return self._symbol("inputs_copy")

    def _swd_failed(self, why: str) -> None:
        self.input_path = "uart"
        self.input_note = f"inputs and large outputs over the UART from now on: {why}"

    # --- steps --------------------------------------------------------------------------------------

    def _call(self, what: str, fn, *args, **kwargs):
        """A pyOCD call whose failure becomes a TargetError that says what was being done."""
        from pyocd.core import exceptions

        try:
            return fn(*args, **kwargs)
        except exceptions.Error as e:
            raise TargetError(f"{self.describe}: could not {what}: {type(e).__name__}: {e}") from e

    def _connect(self) -> None:
        from pyocd.core import exceptions

        helper, _ = _pyocd()
        options: dict[str, Any] = {
            "target_override": self.board.pyocd_target,
            "hide_programming_progress": True,
            "resume_on_disconnect": True,
        }
        if self.board.pack:
            options["pack"] = self.board.pack
        try:
            session = helper.session_with_chosen_probe(
                blocking=False, return_first=True, unique_id=self.probe, auto_open=True, options=options
            )
        except exceptions.TargetSupportError as e:
            raise TargetError(
                f"{self.describe}: pyOCD does not know the target: {e}; {pack_install_hint(self.board)}"
            ) from e
        except exceptions.Error as e:
            raise TargetError(f"{self.describe}: pyOCD could not use the probe: {e}") from e
        if session is None:
            where = "the pyOCD server" if self.probe.lower().startswith(REMOTE_PREFIX) else "this machine"
            raise TargetError(f"{self.describe}: no such probe is attached to {where} (see `harness probes`)")
        self.session = session
        try:
            session.open()
        except exceptions.TargetSupportError as e:
            raise TargetError(
                f"{self.describe}: pyOCD does not know the target {self.board.pyocd_target}: {e}; "
                f"{pack_install_hint(self.board)}"
            ) from e
        except OSError as e:  # a remote probe: the TCP connection to the pyOCD server
            raise TargetError(
                f"{self.describe}: cannot reach the pyOCD server: {e} (is `pyocd server --allow-remote` running "
                "on that host and port, and the port open to this machine?)"
            ) from e
        except exceptions.Error as e:
            raise TargetError(
                f"{self.describe}: could not connect to the chip: {type(e).__name__}: {e} (is the board powered "
                "and its ST-LINK jumpers on? a firmware asleep in WFI may need connect_mode under-reset)"
            ) from e

    def _flash(self, target) -> None:
        from pyocd.core import exceptions

        _, programmer = _pyocd()
        self._call("halt the core", target.reset_and_halt)
        try:
            programmer(self.session, chip_erase="auto", smart_flash=True).program(str(self.elf), file_format="elf")
        except exceptions.Error as e:
            raise TargetError(f"{self.describe}: flashing {self.elf} failed: {type(e).__name__}: {e}") from e
        self._call("halt the core after flashing", target.reset_and_halt)

    def _verify(self, target) -> None:
        """Read every loaded segment back: smart flashing skips pages it believes equal, and a board whose
        flash did not take the image must not be benchmarked."""
        for addr, data in load_segments(self.elf):
            got = bytes(self._call(f"read back 0x{addr:08x}", target.read_memory_block8, addr, len(data)))
            if got != data:
                i = next(k for k in range(len(data)) if k >= len(got) or got[k] != data[k])
                read = f"0x{got[i]:02x}" if i < len(got) else "nothing"
                raise TargetError(
                    f"{self.describe}: flash verify failed at 0x{addr + i:08x}: wrote 0x{data[i]:02x}, "
                    f"read {read} (flash protected? try "
                    "`pyocd erase --chip` once)"
                )

    def _find_serial(self) -> str:
        if self.board.serial:
            return self.board.serial
        port = "" if self.probe.lower().startswith(REMOTE_PREFIX) else serial_port_for(self.probe)
        if not port:
            raise TargetError(
                f"{self.describe}: no serial port belongs to this probe; name it with --serial "
                "(a device such as /dev/ttyACM0, or rfc2217://HOST:PORT for a port on another machine)"
            )
        return port

    def _wait_hello(self, startup_timeout: float) -> Hello:
        try:
            return self.device.wait_hello(startup_timeout)
        except TargetError as e:
            raise TargetError(
                f"{self.describe}: the firmware said nothing on {self.serial_url} at {self.board.uart.baud} baud "
                f"within {startup_timeout:g} s: is this the probe's own port (see `harness probes`), and does the "
                f"firmware start? ({e})"
            ) from e

    def _check_hello(self) -> None:
        h = self.hello
        if self.build_id and h.build_id != self.build_id:
            raise TargetError(
                f"{self.describe} runs firmware {h.build_id}, not {self.build_id} just flashed: did the flash "
                "take, and is this serial port the probe's own board?"
            )
        if h.counter_source != "dwt":
            raise TargetError(f"{self.describe} counts with {h.counter_source!r}, not the DWT: a QEMU build?")
        want = expected_clock_hz(self.board)
        if h.clock_hz != want:
            raise TargetError(
                f"{self.describe} runs at {h.clock_hz / 1e6:g} MHz, boards.toml says {want / 1e6:g} "
                "MHz: its clock setup fell back to the reset clock (no HSE input? see docs/real-boards.md); "
                "cycle counts would not match the board's nominal latency"
            )

    def close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            except Exception:
                pass
            self.port = None
        if self.session is not None:
            try:
                self.session.close()
            except Exception:
                pass
            self.session = None

    def __enter__(self) -> PyocdSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def expected_clock_hz(board: Board) -> int:
    """The clock a board's firmware must report: nominal once it sets its clock tree up, else the reset clock."""
    from harness.build import clock_setup_for

    return board.clock_hz if clock_setup_for(board, qemu=False) else board.reset_clock_hz


def symbol_address(elf: Path, name: str) -> int | None:
    """The address of symbol `name` in the ELF's symbol table (static ones included), or None."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        found = table.get_symbol_by_name(name) if table is not None else None
        return found[0]["st_value"] if found else None


def load_segments(elf: Path) -> list[tuple[int, bytes]]:
    """(load address, bytes) of every PT_LOAD segment with file contents: what the flash must hold."""
    from elftools.elf.elffile import ELFFile

    out = []
    with open(elf, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_filesz"] > 0:
                out.append((seg["p_paddr"], seg.data()[: seg["p_filesz"]]))
    return out


class PyocdTarget:
    kind = "pyocd"

    def __init__(self, board: Board, probe: str, serial_url: str = "", verify: bool = True) -> None:
        if board.is_qemu:
            raise TargetError(f"{board.name} is a QEMU machine, not a board a probe can flash")
        ok, how = target_support(board)
        if not ok:
            raise TargetError(how)
        self.board = board
        self.probe = probe
        self.serial_url = serial_url or board.serial
        self.verify = verify

    def open(self, build, timeout: float = 120.0) -> PyocdSession:
        if build.qemu:
            raise TargetError(f"{build.elf} was built for the QEMU fallback, not for the board")
        return PyocdSession(
            self.board, self.probe, build.elf, timeout, self.serial_url, self.verify, build_id=build.build_id
        )
