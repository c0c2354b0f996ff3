"""The real-board path, driven against fakes at the pyOCD API boundary (ConnectHelper, FileProgrammer, the
session's target) since no probe is attached here. Everything past that boundary is real: the firmware ELF is
built for the board, the serial port is a real pty (held exclusively by pyserial) and the device side speaks
the real protocol frames."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import require_tools, skip_external
from pyocd.core import exceptions as pyocd_errors

from harness import protocol, targets
from harness.boards import get_board
from harness.errors import TargetError
from harness.targets import pyocd as tp

STUB = Path(__file__).parent / "fixtures" / "stub_model"
UID = "0668FF383332534E43214433"


# --- fakes at the pyOCD boundary -------------------------------------------------------------------------


class FakeProbe:
    def __init__(self, uid: str, board_id: str | None = "0826", name: str = "NUCLEO-F412ZG") -> None:
        self.unique_id = uid
        self.vendor_name = "STMicroelectronics"
        self.product_name = "STM32 STLink"
        self.description = "NUCLEO-F412ZG" if name else "STM32 STLink"
        self.board_id = board_id
        self.associated_board_info = type("BI", (), {"name": name, "target": "stm32f412xg"})() if name else None


class FakeCoreTarget:
    def __init__(
        self, log: list, on_reset=None, corrupt: bool = False, corrupt_ram=False, write_error=None, read_error=None
    ) -> None:
        self.log = log
        self.read_error = read_error  # raised by RAM reads
        self.flash: dict[int, int] = {}  # every address written, flash or RAM
        self.on_reset = on_reset
        self.corrupt = corrupt
        self.corrupt_ram = corrupt_ram  # RAM reads back with one bit flipped
        self.write_error = write_error

    def write_memory_block8(self, addr: int, data):
        self.log.append(f"write 0x{addr:08x}+{len(data)}")
        if self.write_error:
            raise self.write_error
        for i, b in enumerate(data):
            self.flash[addr + i] = b

    def reset_and_halt(self):
        self.log.append("reset_and_halt")

    def reset(self):
        self.log.append("reset")
        if self.on_reset:
            self.on_reset()

    def read_memory_block8(self, addr: int, n: int):
        self.log.append(f"read 0x{addr:08x}+{n}")
        if self.read_error and addr >= 0x20000000:
            raise self.read_error
        data = [self.flash.get(addr + i, 0xFF) for i in range(n)]
        if self.corrupt or (self.corrupt_ram and addr >= 0x20000000):
            data[n // 2] ^= 0x01
        return data


class FakeSession:
    def __init__(self, log: list, target: FakeCoreTarget, open_error: Exception | None = None) -> None:
        self.log = log
        self.target = target
        self.open_error = open_error

    def open(self):
        self.log.append("open")
        if self.open_error:
            raise self.open_error

    def close(self):
        self.log.append("close")


class FakePyocd:
    """Stands in for ConnectHelper and FileProgrammer and records every call, in order."""

    def __init__(self, probes=(), session=True, flash_error=None, **target_kw) -> None:
        self.log: list = []
        self.probes = list(probes)
        self.target = FakeCoreTarget(self.log, **target_kw)
        self.session = FakeSession(self.log, self.target) if session is True else session
        self.flash_error = flash_error
        fake = self

        class ConnectHelper:
            @staticmethod
            def get_all_connected_probes(blocking=True, unique_id=None, print_wait_message=True):
                assert blocking is False  # never wait for a probe
                return list(fake.probes)

            @staticmethod
            def session_with_chosen_probe(**kw):
                fake.log.append(("session", kw["unique_id"], kw["options"]["target_override"]))
                fake.kwargs = kw
                assert kw["blocking"] is False and kw["return_first"] is True  # never prompt
                return fake.session

        class FileProgrammer:
            def __init__(self, session, **kw):
                assert session is fake.session
                self.kw = kw

            def program(self, path, file_format=None):
                fake.log.append(("program", Path(path).name, file_format))
                if fake.flash_error:
                    raise fake.flash_error
                for addr, data in tp.load_segments(Path(path)):
                    for i, b in enumerate(data):
                        fake.target.flash[addr + i] = b

        self.ConnectHelper = ConnectHelper
        self.FileProgrammer = FileProgrammer

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(tp, "_pyocd", lambda: (self.ConnectHelper, self.FileProgrammer))
        monkeypatch.setattr("harness.probes._connect_helper", lambda: self.ConnectHelper)


# --- a device on a real pty -------------------------------------------------------------------------------


def hello_payload(clock_hz: int, build_id: str, counter: str = "dwt", board: str = "nucleo-f412") -> bytes:
    p = struct.pack("<5I", protocol.VERSION, clock_hz, 2048, 4096, 1000)
    for s in (board, "cortex-m4", counter, build_id, "stub_plus_one"):
        p += bytes([len(s)]) + s.encode()
    p += bytes([1, 1])
    for _ in range(2):
        p += struct.pack("<IIfiB4i", 0, 1000, 0.5, -3, 1, 1000, 0, 0, 0)
    return p


class PtyDevice:
    """The board's side of its virtual COM port: after a reset it sends HELLO and answers HELLO requests."""

    def __init__(self, hello: bytes | None) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)
        self.hello = hello
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def boot(self) -> None:
        if self.hello is not None:
            os.write(self.master, b"\x00garbage" + protocol.encode(protocol.HELLO, 0, self.hello))

    def _serve(self) -> None:
        buf = b""
        while not self.stop:
            try:
                buf += os.read(self.master, 256)
            except OSError:
                time.sleep(0.01)
                continue
            while len(buf) >= protocol.OVERHEAD:
                i = buf.find(protocol.SYNC)
                if i < 0:
                    buf = b""
                    break
                kind, seq, n = struct.unpack_from("<BBH", buf, i + 2)
                if len(buf) < i + protocol.OVERHEAD + n:
                    break
                buf = buf[i + protocol.OVERHEAD + n :]
                if kind == protocol.HELLO_REQ and self.hello is not None:
                    os.write(self.master, protocol.encode(protocol.HELLO, seq, self.hello))

    def close(self) -> None:
        self.stop = True
        os.close(self.master)


@pytest.fixture(scope="module")
def f412_build(tmp_path_factory):
    require_tools("arm-none-eabi-gcc")
    from harness.build import build_firmware

    board = get_board("nucleo-f412")
    return build_firmware(STUB, board, qemu=False, cache_dir=tmp_path_factory.mktemp("fw"))


@pytest.fixture
def f412():
    return get_board("nucleo-f412")


# --- the happy path ----------------------------------------------------------------------------------------


def test_flash_verify_reset_and_hello_in_order(monkeypatch, f412, f412_build):
    dev = PtyDevice(hello_payload(f412.clock_hz, f412_build.build_id))
    fake = FakePyocd(probes=[FakeProbe(UID)], on_reset=dev.boot)
    fake.install(monkeypatch)
    try:
        target = targets.pyocd_target(replace(f412, serial=dev.path), UID)
        assert target.kind == "pyocd"
        with target.open(f412_build, timeout=2.0) as s:
            assert s.hello.clock_hz == f412.clock_hz and s.hello.counter_source == "dwt"
            assert s.hello.model == "stub_plus_one"
            assert s.device.hello().board == "nucleo-f412"  # the port stays usable for requests
        assert fake.log[:4] == [
            ("session", UID, "stm32f412xg"),
            "open",
            "reset_and_halt",
            ("program", "firmware.elf", "elf"),
        ]
        assert fake.log[4] == "reset_and_halt"
        reads = [e for e in fake.log if isinstance(e, str) and e.startswith("read ")]
        assert reads and all(e.startswith("read 0x08") for e in reads)  # every loaded segment lies in flash
        assert fake.log[-2:] == ["reset", "close"]  # run only after the verify; the probe released at the end
        assert fake.kwargs["options"]["resume_on_disconnect"] is True
    finally:
        dev.close()


def test_find_probe_picks_the_probe_on_the_board_and_its_serial_port(monkeypatch, f412):
    from serial.tools.list_ports_common import ListPortInfo

    fake = FakePyocd(probes=[FakeProbe("AAA1", board_id="0816", name="NUCLEO-F746ZG"), FakeProbe(UID)])
    fake.install(monkeypatch)
    port = ListPortInfo("/dev/ttyACM7")
    port.serial_number = UID.lower()
    other = ListPortInfo("/dev/ttyACM3")
    other.serial_number = "AAA1"
    monkeypatch.setattr("harness.probes.serial_ports", lambda: [other, port])
    from harness import probes

    infos = {p.unique_id: p for p in probes.list_probes()}
    assert infos[UID].board == "nucleo-f412" and infos[UID].serial_port == "/dev/ttyACM7"
    assert infos["AAA1"].board == "nucleo-f746" and infos["AAA1"].serial_port == "/dev/ttyACM3"
    assert targets.find_probe(f412) == UID
    assert targets.find_probe(get_board("nucleo-h743")) is None  # not attached: the bench falls back to QEMU
    assert targets.find_probe(get_board("qemu-m4")) is None


def test_a_board_is_matched_by_pyocd_board_name_when_the_probe_gives_no_id():
    from harness.probes import match_board

    assert match_board("", "NUCLEO-L4R5ZI") == "nucleo-l4r5"
    assert match_board("0836", "") == "nucleo-h743"
    assert match_board("", "FRDM-K64F") == ""


# --- clear errors -------------------------------------------------------------------------------------------


def test_two_probes_on_the_same_kind_of_board_need_a_choice(monkeypatch, f412):
    FakePyocd(probes=[FakeProbe(UID), FakeProbe("0670FF99")]).install(monkeypatch)
    monkeypatch.setattr("harness.probes.serial_ports", lambda: [])
    with pytest.raises(TargetError, match=r"2 attached probes look like a nucleo-f412.*--probe"):
        targets.find_probe(f412)
    assert targets.find_probe(replace(f412, probe="0670ff")) == "0670FF99"  # a choice settles it


def test_a_chosen_probe_that_is_absent(monkeypatch, f412, f412_build):
    fake = FakePyocd(probes=[], session=None)
    fake.install(monkeypatch)
    with pytest.raises(TargetError, match="0670FF99 chosen for nucleo-f412 is not attached; attached probes: none"):
        targets.find_probe(replace(f412, probe="0670FF99"))
    with pytest.raises(TargetError, match="no such probe is attached"):
        targets.pyocd_target(f412, "0670FF99").open(f412_build, timeout=1.0)


def test_unknown_target_names_the_pack_and_the_install_command():
    # Real pyOCD: stm32f746 is not built in, and no pack is installed on this machine.
    board = get_board("nucleo-f746")
    if tp.target_support(board)[0]:
        skip_external("a pack for stm32f746zgtx is installed here")
    with pytest.raises(TargetError, match=r"Keil\.STM32F7xx_DFP.*pyocd pack install stm32f746zg"):
        targets.pyocd_target(board, UID)
    with pytest.raises(TargetError, match="does not exist"):
        targets.pyocd_target(replace(board, pack="/nonexistent/Keil.STM32F7xx_DFP.2.15.1.pack"), UID)
    assert tp.target_support(get_board("nucleo-f412")) == (True, "stm32f412xg: built into pyOCD")


def test_target_support_error_from_pyocd_at_open(monkeypatch, f412, f412_build):
    session = FakeSession([], FakeCoreTarget([]), open_error=pyocd_errors.TargetSupportError("no such target"))
    FakePyocd(session=session).install(monkeypatch)
    with pytest.raises(TargetError, match="does not know the target stm32f412xg.*pyocd pack install stm32f412zg"):
        targets.pyocd_target(f412, UID).open(f412_build, timeout=1.0)
    assert session.log == ["open", "close"]


def test_a_flash_failure_is_reported_and_the_probe_released(monkeypatch, f412, f412_build):
    fake = FakePyocd(flash_error=pyocd_errors.FlashProgramFailure("flash algo returned 1"))
    fake.install(monkeypatch)
    with pytest.raises(TargetError, match=r"flashing .*firmware\.elf failed: FlashProgramFailure"):
        targets.pyocd_target(f412, UID).open(f412_build, timeout=1.0)
    assert fake.log[-1] == "close" and "reset" not in fake.log


def test_a_verify_mismatch_stops_before_the_run(monkeypatch, f412, f412_build):
    fake = FakePyocd(corrupt=True)
    fake.install(monkeypatch)
    with pytest.raises(TargetError, match="flash verify failed at 0x08"):
        targets.pyocd_target(f412, UID).open(f412_build, timeout=1.0)
    assert "reset" not in fake.log and fake.log[-1] == "close"


def test_a_busy_serial_port(monkeypatch, f412, f412_build):
    dev = PtyDevice(None)
    holder = open(dev.path, "rb", buffering=0)
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # what another pyserial user holds
    fake = FakePyocd()
    fake.install(monkeypatch)
    try:
        with pytest.raises(TargetError, match=f"serial port {dev.path} of nucleo-f412 is busy.*close it"):
            targets.pyocd_target(replace(f412, serial=dev.path), UID).open(f412_build, timeout=1.0)
        assert fake.log[-1] == "close"
    finally:
        holder.close()
        dev.close()


def test_a_silent_serial_port(monkeypatch, f412, f412_build):
    dev = PtyDevice(None)  # the port exists, nothing ever speaks on it
    FakePyocd().install(monkeypatch)
    try:
        t0 = time.monotonic()
        with pytest.raises(TargetError, match=f"said nothing on {dev.path} at 115200 baud.*harness probes"):
            tp.PyocdSession(f412, UID, f412_build.elf, 0.2, dev.path, startup_timeout=0.3)
        assert time.monotonic() - t0 < 5
    finally:
        dev.close()


def test_no_serial_port_for_the_probe(monkeypatch, f412, f412_build):
    FakePyocd().install(monkeypatch)
    monkeypatch.setattr("harness.probes.serial_ports", lambda: [])
    with pytest.raises(TargetError, match="no serial port belongs to this probe; name it with --serial"):
        targets.pyocd_target(f412, UID).open(f412_build, timeout=1.0)


def test_a_clock_setup_that_fell_back_is_an_error(monkeypatch, f412, f412_build):
    dev = PtyDevice(hello_payload(16_000_000, f412_build.build_id))  # HSI: the firmware could not reach 100 MHz
    FakePyocd(on_reset=dev.boot).install(monkeypatch)
    try:
        with pytest.raises(TargetError, match="runs at 16 MHz, boards.toml says 100 MHz"):
            targets.pyocd_target(replace(f412, serial=dev.path), UID).open(f412_build, timeout=1.0)
    finally:
        dev.close()


def test_stale_firmware_and_a_qemu_counter_are_refused(monkeypatch, f412, f412_build):
    for payload, error in [
        (
            hello_payload(f412.clock_hz, "feedfeedfeedfeed"),
            f"runs firmware feedfeedfeedfeed, not {f412_build.build_id}",
        ),
        (hello_payload(f412.clock_hz, f412_build.build_id, counter="qemu-icount"), "not the DWT"),
    ]:
        dev = PtyDevice(payload)
        FakePyocd(on_reset=dev.boot).install(monkeypatch)
        try:
            with pytest.raises(TargetError, match=error):
                targets.pyocd_target(replace(f412, serial=dev.path), UID).open(f412_build, timeout=1.0)
        finally:
            dev.close()


def test_a_qemu_build_is_refused(f412, tmp_path):
    require_tools("arm-none-eabi-gcc")
    from harness.build import build_firmware

    build = build_firmware(STUB, f412, qemu=True, cache_dir=tmp_path)
    with pytest.raises(TargetError, match="built for the QEMU fallback"):
        targets.pyocd_target(f412, UID).open(build)


# --- inputs over SWD ---------------------------------------------------------------------------------------


class UartInputs:
    """Stands in for the session's protocol Device, recording the inputs that went over the UART."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def set_input(self, index: int, data: bytes) -> None:
        self.sent.append((index, data))

    def get_output(self, index: int, size: int) -> bytes:
        self.read = getattr(self, "read", []) + [(index, size)]
        return bytes(size)


def _swd_session(monkeypatch, f412, f412_build, **target_kw):
    dev = PtyDevice(hello_payload(f412.clock_hz, f412_build.build_id))
    fake = FakePyocd(probes=[FakeProbe(UID)], on_reset=dev.boot, **target_kw)
    fake.install(monkeypatch)
    target = targets.pyocd_target(replace(f412, serial=dev.path), UID)
    return dev, fake, target


def test_inputs_go_over_swd_into_the_input_copy_and_are_read_back(monkeypatch, f412, f412_build):
    dev, fake, target = _swd_session(monkeypatch, f412, f412_build)
    data = bytes(range(256)) * 3 + bytes(232)
    try:
        with target.open(f412_build, timeout=2.0) as s:
            s.device, start = UartInputs(), len(fake.log)
            s.put_input(0, data)
            addr = tp.symbol_address(f412_build.elf, "inputs_copy")
            assert addr is not None and addr >= 0x20000000  # the firmware's RAM copy, not the arena
            assert fake.log[start:] == [f"write 0x{addr:08x}+1000", f"read 0x{addr:08x}+1000"]  # in this order
            assert bytes(fake.target.flash[addr + i] for i in range(1000)) == data
            assert s.device.sent == [] and s.input_path == "swd"
    finally:
        dev.close()


@pytest.mark.parametrize(
    "target_kw, why",
    [
        ({"write_error": OSError("probe unplugged")}, "the write at 0x2.* failed: OSError: probe unplugged"),
        ({"corrupt_ram": True}, "input 0 read back different"),
    ],
)
def test_a_failed_or_wrong_swd_write_moves_the_inputs_to_the_uart(monkeypatch, f412, f412_build, target_kw, why):
    dev, fake, target = _swd_session(monkeypatch, f412, f412_build, **target_kw)
    try:
        with target.open(f412_build, timeout=2.0) as s:
            s.device = UartInputs()
            s.put_input(0, b"\x01" * 1000)
            s.put_input(0, b"\x02" * 1000)  # and it stays there: no second try over SWD
            assert s.input_path == "uart" and re.search(why, s.input_note)
            assert s.device.sent == [(0, b"\x01" * 1000), (0, b"\x02" * 1000)]
            assert sum(1 for e in fake.log if isinstance(e, str) and e.startswith("write ")) == 1
    finally:
        dev.close()


def _large_output(s, offset: int = 64, size: int = 3000) -> None:
    """The session's first output made larger than one UART chunk (the stub's HELLO says 1000 bytes)."""
    s.hello.outputs[0] = replace(s.hello.outputs[0], offset=offset, bytes=size)


def test_outputs_larger_than_a_chunk_are_read_over_swd_from_the_arena(monkeypatch, f412, f412_build):
    dev, fake, target = _swd_session(monkeypatch, f412, f412_build)
    try:
        with target.open(f412_build, timeout=2.0) as s:
            s.device, start = UartInputs(), len(fake.log)
            _large_output(s)
            arena = tp.symbol_address(f412_build.elf, "arena")
            assert arena is not None and arena >= 0x20000000
            data = bytes(range(256)) * 11 + bytes(184)
            for i, b in enumerate(data):
                fake.target.flash[arena + 64 + i] = b
            assert s.get_output(0, 3000) == data
            assert fake.log[start:] == [f"read 0x{arena + 64:08x}+3000"]  # one block read, nothing written
            assert s.get_output(1, 1000) == bytes(1000)  # one chunk: GET_OUTPUT, as over any serial port
            assert s.device.read == [(1, 1000)] and s.input_path == "swd"
    finally:
        dev.close()


def test_a_failed_swd_read_of_an_output_moves_it_to_the_uart(monkeypatch, f412, f412_build):
    dev, fake, target = _swd_session(monkeypatch, f412, f412_build, read_error=OSError("probe unplugged"))
    try:
        with target.open(f412_build, timeout=2.0) as s:
            s.device = UartInputs()
            _large_output(s)
            assert s.get_output(0, 3000) == bytes(3000)  # the UART's answer
            s.get_output(0, 3000)  # and it stays there: no second try over SWD
            assert s.device.read == [(0, 3000), (0, 3000)] and s.input_path == "uart"
            assert re.search("the read of output 0 at 0x2.* failed: OSError: probe unplugged", s.input_note)
            assert sum(1 for e in fake.log if isinstance(e, str) and e.startswith("read 0x2")) == 1
    finally:
        dev.close()
