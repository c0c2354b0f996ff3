"""The QEMU target: the board's QEMU machine under `-icount shift=0` (deterministic instruction counts),
its UART on a loopback TCP socket opened with pyserial's `socket://` URL, the same code path as a real
serial port. The QEMU process is always reaped, and its stderr and exit status go into any error."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import serial

from harness.boards import Board
from harness.errors import TargetError
from harness.lifetime import tied_to_parent
from harness.protocol import ERR_BAD_REQUEST, Device, Hello, LinkBroken, Refused

STARTUP_TIMEOUT = 20.0


@functools.cache
def qemu_version() -> str | None:
    if shutil.which("qemu-system-arm") is None:
        return None
    out = subprocess.run(["qemu-system-arm", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QemuSession:
    def __init__(self, board: Board, elf: Path, timeout: float, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.board = board
        self.machine = board.qemu_machine
        self.proc: subprocess.Popen | None = None
        self.port = None
        self._stderr = tempfile.TemporaryFile()
        # inputs staged as files the firmware reads by semihosting (LOAD_INPUT), past the emulated UART;
        # the staging is the host's, so the board's SRAM accounting does not change
        self._stage = Path(tempfile.mkdtemp(prefix="harness-in-"))
        self._stage_file = self._stage / "inputs.bin"
        self._staged = False  # the firmware has the file's path
        self.input_path = "semihosting"  # "uart" once the firmware refuses LOAD_INPUT
        self.describe = f"QEMU {self.machine.machine} running {Path(elf).name}"
        for attempt in range(3):  # another process may take the free port between our probe and QEMU's bind
            tcp = _free_port()
            self.proc = subprocess.Popen(
                tied_to_parent(
                    [
                        "qemu-system-arm",
                        "-M",
                        self.machine.machine,
                        "-display",
                        "none",
                        "-monitor",
                        "none",
                        "-icount",
                        "shift=0",
                        "-semihosting-config",
                        "enable=on,target=native",
                        "-serial",
                        f"tcp:127.0.0.1:{tcp},server=on,wait=on,nodelay=on",
                        "-kernel",
                        str(elf),
                    ]
                ),  # fmt: skip  # killed with us, even by kill -9 (harness/lifetime.py)
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
            try:
                self.port = self._connect(tcp, startup_timeout)
                break
            except TargetError:
                if self.proc.poll() is None or attempt == 2:
                    self.close()
                    raise
        from harness.targets.noise import from_env

        # a local socket into QEMU: answers come within milliseconds, so retransmit timers start short
        self.device = Device(from_env(self.port), timeout=timeout, describe=self.describe, rtt_hint=0.002)
        try:
            self.hello: Hello = self.device.wait_hello(startup_timeout)
        except BaseException:
            self.close()
            raise

    def _connect(self, tcp: int, startup_timeout: float):
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise TargetError(f"{self.describe} exited at start ({self.proc.returncode}): {self.stderr()}")
            try:
                return serial.serial_for_url(f"socket://127.0.0.1:{tcp}", timeout=0.5)
            except serial.SerialException as e:
                if time.monotonic() > deadline:
                    raise TargetError(f"{self.describe}: its UART socket never opened: {e}") from e
                time.sleep(0.05)

    def put_input(self, index: int, data: bytes) -> None:
        """Input `index` by the fastest path: written at its offset in a host file the firmware reads by
        semihosting (the file's path goes once), or the UART (PUT_INPUT) if the firmware cannot."""
        if self.input_path == "semihosting":
            offset = self.hello.input_offset(index)
            with open(self._stage_file, "r+b" if self._stage_file.exists() else "wb") as f:
                f.seek(offset)
                f.write(data)
            try:
                self.device.load_input(index, offset, None if self._staged else str(self._stage_file))
                self._staged = True
                return
            except Refused as e:
                if e.code != ERR_BAD_REQUEST:
                    raise
                self.input_path = "uart"
        self.device.set_input(index, data)

    def run_batch(self, samples: list[list[bytes]], output_bytes: list[int]):
        """Each sample (its inputs' bytes) run once by the firmware straight from a staging file, its
        outputs and count written to another (RUN_STAGED): one request for the whole batch. Returns
        ([(outputs, count)], peak stack, arena high water), or None if the firmware cannot."""
        if self.input_path != "semihosting":
            return None
        batch, out = self._stage / "batch.bin", self._stage / "batch.out"
        t0 = time.perf_counter()
        batch.write_bytes(b"".join(b"".join(inputs) for inputs in samples))
        self.stage_seconds = time.perf_counter() - t0  # the inputs' moving; the firmware reads them as it runs
        self._staged = False  # RUN_STAGED names its own file: LOAD_INPUT must name its own again
        try:
            done, stack, hw = self.device.run_staged(0, len(samples), str(batch), str(out))
        except Refused as e:
            if e.code != ERR_BAD_REQUEST:
                raise
            self.input_path = "uart"
            return None
        record = sum(output_bytes) + 8
        data = out.read_bytes()
        if done != len(samples) or len(data) != record * len(samples):
            raise TargetError(
                f"{self.describe}: RUN_STAGED ran {done} of {len(samples)} samples and wrote {len(data)} bytes"
            )
        results = []
        for k in range(len(samples)):
            rec = data[k * record : (k + 1) * record]
            outs, at = [], 0
            for n in output_bytes:
                outs.append(rec[at : at + n])
                at += n
            results.append((outs, int.from_bytes(rec[at:], "little")))
        return results, stack, hw

    def stderr(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text[-2000:] or "(nothing on stderr)"

    def close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            except OSError:
                pass
            self.port = None
        shutil.rmtree(self._stage, ignore_errors=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> QemuSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        exited = self.proc is not None and self.proc.poll() is not None
        self.close()
        if isinstance(exc, TargetError) and exited:
            kind = LinkBroken if isinstance(exc, LinkBroken) else TargetError
            raise kind(f"{exc}; QEMU exited with status {self.proc.returncode}: {self.stderr()}") from exc


class QemuTarget:
    kind = "qemu"

    def __init__(self, board: Board) -> None:
        if shutil.which("qemu-system-arm") is None:
            raise TargetError("qemu-system-arm is not installed (apt install qemu-system-arm)")
        self.board = board

    def open(self, build, timeout: float = 120.0) -> QemuSession:
        if not build.qemu:
            raise TargetError(f"{build.elf} was built for the board, not for its QEMU fallback")
        return QemuSession(self.board, build.elf, timeout)
