"""The whole pyOCD path with real firmware: a generated model built as *board* firmware (DWT counter, no
semihosting) for an STM32F405 and run on QEMU's netduinoplus2 as the "board". Only the pyOCD API is faked:
programming hands the ELF to a QEMU started halted (-S), the reset lets it run (monitor `cont`), the
board's UART is QEMU's USART1 on a TCP socket, and once it runs, the target's memory reads and writes (the SWD
input path) reach the emulated chip's memory through QEMU's gdbstub. The bench's own prepare/open/run path
drives it and the outputs must equal the reference bit for bit."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import require_tools
from test_pyocd import FakeProbe, FakePyocd

from harness import bench, reference
from harness.boards import get_board
from harness.targets.pyocd import symbol_address

UID = "066DFF5155C48287"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gdb:
    """The few GDB remote-protocol packets that read and write a running core's memory, as a debug probe's
    memory access port does: halt (Ctrl-C), `M`/`m`, continue."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self._send("?")  # QEMU stops the machine when a debugger attaches: this is its stop reply
        assert self._packet()[:1] in ("S", "T")
        self._send("c")

    def _packet(self) -> str:
        while True:
            m = re.search(rb"\$([^#]*)#[0-9a-fA-F]{2}", self.buf)
            if m:
                self.buf = self.buf[m.end() :]
                self.sock.sendall(b"+")
                return m.group(1).decode()
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QEMU's gdbstub closed")
            self.buf += chunk

    def _reply(self) -> str:
        """The answer to a packet, past any stop reply (QEMU may report one halt twice)."""
        while (p := self._packet())[:1] in ("S", "T"):
            pass
        return p

    def _send(self, body: str) -> None:
        self.sock.sendall(f"${body}#{sum(body.encode()) & 0xFF:02x}".encode())

    def _halted(self, fn):
        self.sock.sendall(b"\x03")
        assert self._packet()[:1] in ("S", "T")  # the stop reply
        try:
            return fn()
        finally:
            self._send("c")  # no reply until it stops again

    def write(self, addr: int, data: bytes) -> None:
        def go():
            for i in range(0, len(data), 1024):  # well inside QEMU's packet size
                part = data[i : i + 1024]
                self._send(f"M{addr + i:x},{len(part):x}:{part.hex()}")
                assert self._reply() == "OK"

        self._halted(go)

    def read(self, addr: int, n: int) -> bytes:
        def go():
            out = b""
            while len(out) < n:
                k = min(1024, n - len(out))
                self._send(f"m{addr + len(out):x},{k:x}")
                out += bytes.fromhex(self._reply())
            return out

        return self._halted(go)

    def close(self) -> None:
        self.sock.close()


class QemuBoard:
    """What flashing and resetting a board does, played by QEMU: `program` starts it halted, `reset` runs it,
    and from then on `gdb` reaches its memory."""

    def __init__(self) -> None:
        self.uart = free_port()
        self.monitor = free_port()
        self.gdb_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.gdb: Gdb | None = None

    def program(self, elf) -> None:
        self.proc = subprocess.Popen(
            ["qemu-system-arm", "-M", "netduinoplus2", "-display", "none", "-S", "-icount", "shift=0",
             "-monitor", f"tcp:127.0.0.1:{self.monitor},server=on,wait=off",
             "-gdb", f"tcp:127.0.0.1:{self.gdb_port}",
             "-serial", f"tcp:127.0.0.1:{self.uart},server=on,wait=off,nodelay=on", "-kernel", str(elf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:  # until QEMU listens
            try:
                socket.create_connection(("127.0.0.1", self.uart), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def reset(self) -> None:
        with socket.create_connection(("127.0.0.1", self.monitor), timeout=5) as m:
            m.sendall(b"cont\n")
            time.sleep(0.2)
        self.gdb = Gdb(self.gdb_port)

    def close(self) -> None:
        if self.gdb is not None:
            self.gdb.close()
            self.gdb = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _emulated_board(monkeypatch):
    """An STM32F405 on QEMU behind the fake pyOCD API: programming starts QEMU, the reset runs it, and the
    core target's memory calls reach QEMU's memory once it runs (before that, the fake's flash image)."""
    qemu = QemuBoard()
    board = replace(
        get_board("netduinoplus2"),
        name="emulated-f405",
        is_qemu=False,  # built and driven as a real board: DWT counter, no semihosting
        probe=UID[:8],  # pinned (a unique prefix), as with --probe: this board is not in boards.toml
        pyocd_target="stm32f412xg",  # a built-in pyOCD target type; the fake never reaches a chip
        serial=f"socket://127.0.0.1:{qemu.uart}",
    )
    fake = FakePyocd(probes=[FakeProbe(UID, board_id="9999", name="")], on_reset=qemu.reset)
    fake.install(monkeypatch)
    programmer = fake.FileProgrammer

    class StartsQemu(programmer):
        def program(self, path, file_format=None):
            super().program(path, file_format)
            qemu.program(path)

    fake.FileProgrammer = StartsQemu
    fake.session.close = lambda: (fake.log.append("close"), qemu.close())
    write, read = fake.target.write_memory_block8, fake.target.read_memory_block8

    def write_running(addr, data):
        if qemu.gdb is None:
            return write(addr, data)
        fake.log.append(f"write 0x{addr:08x}+{len(data)}")
        qemu.gdb.write(addr, bytes(data))

    def read_running(addr, n):
        if qemu.gdb is None:
            return read(addr, n)
        fake.log.append(f"read 0x{addr:08x}+{n}")
        return list(qemu.gdb.read(addr, n))

    fake.target.write_memory_block8, fake.target.read_memory_block8 = write_running, read_running
    return qemu, board, fake


@pytest.mark.qemu
@pytest.mark.parametrize("engine_name", ["native", "tflm-cmsis"])
def test_a_generated_model_through_the_pyocd_target_on_an_emulated_stm32(engine_name, monkeypatch, tmp_path, request):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    if engine_name != "native":  # TFLM's sources (../shared/third_party), or a skip saying they are absent
        request.getfixturevalue("tflm_sources")
    from harness.zoo import resolve_model

    qemu, board, fake = _emulated_board(monkeypatch)
    graph, _ = resolve_model("digits_cnn")
    try:
        engine = bench.prepare(board, graph, target="auto", build_dir=str(tmp_path), engine=engine_name)
        assert engine.target_kind == "pyocd" and UID in engine.target_desc and not engine.build.qemu
        xs = bench.random_inputs(engine.spec.inputs, 2, seed=3)
        figures = {}
        for path in ("uart", "auto"):  # the UART, then SWD writes into the running chip's input copy
            with engine.open(timeout=20, input_path=path) as runner:
                assert runner.input_path == {"uart": "uart", "auto": "swd"}[path]
                assert runner.hello.counter_source == "dwt" and runner.hello.clock_hz == board.clock_hz
                assert runner.hello.build_id == engine.build.build_id
                figures[path] = []
                for inputs in xs:
                    got, stats = runner.run(inputs, repetitions=2)
                    for g, w in zip(got, reference.run(engine.interior, inputs), strict=True):
                        assert np.array_equal(g, w)
                    assert len(stats.counts) == 2  # CYCCNT reads 0 under QEMU: the count itself is hardware's
                    figures[path].append((stats.counts, stats.peak_stack, stats.arena_high_water))
                assert runner.input_path == {"uart": "uart", "auto": "swd"}[path], runner.session.input_note
        assert figures["uart"] == figures["auto"]  # the path that carried the inputs changes no figure
    finally:
        qemu.close()
    assert [e for e in fake.log if e in ("reset", "close")] == ["reset", "close"] * 2
    assert fake.log[0] == ("session", UID, "stm32f412xg")
    base = symbol_address(engine.build.elf, "inputs_copy")
    swd = [e for e in fake.log if isinstance(e, str) and e.startswith(("write 0x2", "read 0x2"))]
    assert swd and all(e.split()[1].startswith(f"0x{base:08x}") for e in swd), swd
    assert [e.split()[0] for e in swd] == ["write", "read"] * len(xs)  # each input written, then read back


@pytest.mark.qemu
def test_an_output_larger_than_a_chunk_is_read_over_swd_on_an_emulated_stm32(monkeypatch, tmp_path):
    """A 2 KiB output (two UART chunks) comes back by one SWD read of the running chip's arena, equal to
    the reference and to the same run's output over the UART."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from test_fuse import Chain

    c = Chain(np.random.default_rng(4), (8, 8, 4), name="wide_output")
    c.conv(32, 3)  # 1x8x8x32: 2048 bytes out
    graph = c.graph()
    qemu, board, fake = _emulated_board(monkeypatch)
    try:
        engine = bench.prepare(board, graph, target="auto", build_dir=str(tmp_path))
        assert engine.spec.outputs[0].bytes == 2048
        x = bench.random_inputs(engine.spec.inputs, 1, seed=5)[0]
        got = {}
        for path in ("uart", "auto"):
            with engine.open(timeout=20, input_path=path) as runner:
                start = len(fake.log)
                got[path], _ = runner.run(x)
                reads = [e for e in fake.log[start:] if isinstance(e, str) and e.startswith("read 0x2")]
                assert runner.input_path == {"uart": "uart", "auto": "swd"}[path], runner.session.input_note
                if path == "auto":
                    arena = symbol_address(engine.build.elf, "arena")
                    out = arena + runner.hello.outputs[0].offset
                    assert f"read 0x{out:08x}+2048" in reads  # besides the input's read-back
        want = reference.run(engine.interior, x)
        assert np.array_equal(got["uart"][0], want[0]) and np.array_equal(got["auto"][0], want[0])
    finally:
        qemu.close()
