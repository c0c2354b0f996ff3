"""The whole pyOCD path with real firmware: a generated model built as *board* firmware (DWT counter, no
semihosting) for an STM32F405 and run on QEMU's netduinoplus2 as the "board". Only the pyOCD API is faked:
programming hands the ELF to a QEMU started halted (-S), the reset lets it run (monitor `cont`), and the
board's UART is QEMU's USART1 on a TCP socket. The bench's own prepare/open/run path drives it and the outputs
must equal the reference bit for bit."""

from __future__ import annotations

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

UID = "066DFF5155C48287"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QemuBoard:
    """What flashing and resetting a board does, played by QEMU: `program` starts it halted, `reset` runs it."""

    def __init__(self) -> None:
        self.uart = free_port()
        self.monitor = free_port()
        self.proc: subprocess.Popen | None = None

    def program(self, elf) -> None:
        self.proc = subprocess.Popen(
            ["qemu-system-arm", "-M", "netduinoplus2", "-display", "none", "-S", "-icount", "shift=0",
             "-monitor", f"tcp:127.0.0.1:{self.monitor},server=on,wait=off",
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

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.qemu
@pytest.mark.parametrize("engine_name", ["native", "tflm-cmsis"])
def test_a_generated_model_through_the_pyocd_target_on_an_emulated_stm32(engine_name, monkeypatch, tmp_path, request):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    if engine_name != "native":  # TFLM's sources (../shared/third_party), or a skip saying they are absent
        request.getfixturevalue("tflm_sources")
    from harness.zoo import resolve_model

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
    graph, _ = resolve_model("digits_cnn")
    try:
        engine = bench.prepare(board, graph, target="auto", build_dir=str(tmp_path), engine=engine_name)
        assert engine.target_kind == "pyocd" and UID in engine.target_desc and not engine.build.qemu
        xs = bench.random_inputs(engine.spec.inputs, 2, seed=3)
        # the fake probe's memory is not QEMU's, so inputs go over the UART here (SWD writes are tested
        # against the fake in test_pyocd.py)
        with engine.open(timeout=20, input_path="uart") as runner:
            assert runner.input_path == "uart"
            assert runner.hello.counter_source == "dwt" and runner.hello.clock_hz == board.clock_hz
            assert runner.hello.build_id == engine.build.build_id
            for inputs in xs:
                got, stats = runner.run(inputs, repetitions=2)
                for g, w in zip(got, reference.run(engine.interior, inputs), strict=True):
                    assert np.array_equal(g, w)
                assert len(stats.counts) == 2  # CYCCNT reads 0 under QEMU: the count itself is hardware's
    finally:
        qemu.close()
    assert [e for e in fake.log if e in ("reset", "close")] == ["reset", "close"]
    assert fake.log[0] == ("session", UID, "stm32f412xg")
