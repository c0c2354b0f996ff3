"""Boards on another host: the serial port served over RFC 2217 (a real loopback server built on pyserial's
PortManager in front of a real pty), a probe named remote:HOST:PORT (`pyocd server --allow-remote`), and the
bench's --probe / --serial options. Only 127.0.0.1 is used."""

from __future__ import annotations

import socket
import threading
from dataclasses import replace

import pytest
import serial
import serial.rfc2217
from conftest import require_tools
from test_pyocd import FakePyocd, PtyDevice, hello_payload

from harness import targets
from harness.boards import get_board
from harness.errors import TargetError
from harness.targets import pyocd as tp


class PtySerial(serial.Serial):
    """A pty has no modem lines (its ioctls fail): report them idle and ignore DTR/RTS, as a USB VCP would
    behave with nothing wired to them. Data goes through the real port."""

    cts = dsr = ri = cd = property(lambda self: False)

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass


class Rfc2217Server:
    """Serves one local serial port to one client over RFC 2217 on 127.0.0.1 (like pyserial's example
    server: a PortManager filters telnet negotiation out of the stream and escapes the port's data)."""

    def __init__(self, port_path: str) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self.port = PtySerial(port_path, timeout=0.05)
        self.conn: socket.socket | None = None
        self.alive = True
        threading.Thread(target=self._serve, daemon=True).start()

    def write(self, data: bytes) -> None:  # PortManager's answers to the client
        if self.conn is not None:
            self.conn.sendall(data)

    def _serve(self) -> None:
        try:
            self.conn, _ = self.listener.accept()
        except OSError:
            return
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        manager = serial.rfc2217.PortManager(self.port, self)
        threading.Thread(target=self._port_to_net, args=(manager,), daemon=True).start()
        while self.alive:
            try:
                data = self.conn.recv(1024)
            except OSError:
                break
            if not data:
                break
            self.port.write(b"".join(manager.filter(data)))

    def _port_to_net(self, manager) -> None:
        while self.alive:
            try:
                data = self.port.read(self.port.in_waiting or 1)
                if data:
                    self.write(b"".join(manager.escape(data)))
            except (OSError, TypeError, serial.SerialException):  # the port closed under the read
                break

    def close(self) -> None:
        self.alive = False
        for s in (self.conn, self.listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.port.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def f412_build(tmp_path_factory):
    require_tools("arm-none-eabi-gcc")
    from test_pyocd import STUB

    from harness.build import build_firmware

    return build_firmware(STUB, get_board("nucleo-f412"), qemu=False, cache_dir=tmp_path_factory.mktemp("fw"))


def test_a_remote_board_over_rfc2217_and_a_remote_probe(monkeypatch, f412_build):
    board = get_board("nucleo-f412")
    dev = PtyDevice(hello_payload(board.clock_hz, f412_build.build_id))
    server = Rfc2217Server(dev.path)
    remote = "remote:127.0.0.1:5555"
    fake = FakePyocd(on_reset=dev.boot)  # the pyOCD API, as `pyocd server` would be reached through it
    fake.install(monkeypatch)
    try:
        pinned = replace(board, probe=remote, serial=server.url)
        assert targets.find_probe(pinned) == remote  # a remote probe is not enumerated, only connected to
        with targets.pyocd_target(pinned, remote).open(f412_build, timeout=2.0) as s:
            assert s.serial_url == server.url
            assert s.hello.clock_hz == board.clock_hz
            assert s.device.hello().model == "stub_plus_one"  # requests go out and come back through RFC 2217
        assert fake.log[0] == ("session", remote, "stm32f412xg")
    finally:
        server.close()
        dev.close()


def test_a_remote_probe_needs_its_serial_port_named(monkeypatch, f412_build):
    FakePyocd().install(monkeypatch)
    with pytest.raises(TargetError, match="no serial port belongs to this probe; name it with --serial"):
        targets.pyocd_target(get_board("nucleo-f412"), "remote:10.0.0.9:5555").open(f412_build, timeout=1.0)


def test_an_unreachable_pyocd_server(f412_build):
    # Real pyOCD, no fake: nothing listens on the port.
    probe = f"remote:127.0.0.1:{closed_port()}"
    with pytest.raises(TargetError, match="cannot reach the pyOCD server.*pyocd server --allow-remote"):
        tp.PyocdTarget(get_board("nucleo-f412"), probe).open(f412_build, timeout=1.0)


def test_an_unreachable_rfc2217_port():
    with pytest.raises(TargetError, match="cannot open the serial port rfc2217://127.0.0.1"):
        tp.open_serial(f"rfc2217://127.0.0.1:{closed_port()}", 115200, get_board("nucleo-f412"))


def test_bench_takes_probe_and_serial_from_the_command_line(tmp_path, capsys, monkeypatch):
    require_tools("arm-none-eabi-gcc")
    from harness import results
    from harness.cli import main

    monkeypatch.setenv("HARNESS_BUILD_DIR", str(tmp_path / "build"))
    probe = f"remote:127.0.0.1:{closed_port()}"
    argv = ["bench", "--board", "nucleo-f412", "--model", "digits_cnn", "--results", str(tmp_path / "res")]
    argv += ["--probe", probe, "--serial", "rfc2217://127.0.0.1:1"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"nucleo-f412 (probe {probe}): cannot reach the pyOCD server" in err
    (rec,) = list(results.read("bench", str(tmp_path / "res")))  # the failure is recorded with its reason
    assert rec["status"] == "failed" and rec["options"]["probe"] == probe and "pyOCD server" in rec["reason"]
