"""The QEMU target end to end with the hand-written stub model (output = input + 1): HELLO, inputs, counts,
outputs over the protocol on every QEMU machine; determinism; a hung and a faulting device."""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tools

from harness.boards import get_board
from harness.build import build_firmware
from harness.errors import TargetError
from harness.targets.qemu import QemuTarget

STUB = Path(__file__).parent / "fixtures" / "stub_model"
pytestmark = pytest.mark.qemu


@pytest.fixture(autouse=True)
def _tools():
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")


def _run(board_name: str, tmp_path, data: bytes, reps: int = 3, **build_kw):
    board = get_board(board_name)
    build = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path, **build_kw)
    with QemuTarget(board).open(build, timeout=20) as s:
        s.device.set_input(0, data)
        stats = s.device.infer(reps)
        out = s.device.get_output(0, 1000)
        return s.hello, stats, out


@pytest.mark.parametrize("board", ["qemu-m4", "qemu-m7", "qemu-m33", "qemu-m55", "nucleo-f746", "nucleo-f412"])
def test_stub_end_to_end(board, tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    hello, stats, out = _run(board, tmp_path, data)
    assert hello.model == "stub_plus_one" and hello.arena_bytes == 2048 and hello.macs == 1000
    assert hello.counter_source == "qemu-icount"
    assert [(s.bytes, s.scale, s.zero_point) for s in hello.inputs] == [(1000, 0.5, -3)]
    assert out == bytes((b + 1) & 0xFF for b in data)
    # a 1000-element loop is at least a few thousand instructions: SysTick counted it (in ticks)
    ticks = get_board(board).qemu_machine.icount_per_tick
    assert len(stats.counts) == 3 and all(c * ticks >= 1000 for c in stats.counts)
    assert 0 < stats.peak_stack < 8 * 1024
    assert stats.arena_high_water == 2024  # the stub touches bytes 0..999 and 1024..2023


def test_counts_are_deterministic_across_launches(tmp_path):
    data = bytes(range(256)) * 3 + bytes(232)
    _, a, out_a = _run("qemu-m4", tmp_path, data, reps=5)
    _, b, out_b = _run("qemu-m4", tmp_path, data, reps=5)
    assert out_a == out_b
    # one instruction per icount tick and the counter restarted at each inference: the same program and
    # input count the same in every repetition of every launch
    assert len(set(a.counts + b.counts)) == 1, (a.counts, b.counts)


def test_a_hung_device_is_killed_within_its_timeout(tmp_path):
    board = get_board("qemu-m4")
    build = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path, extra_cflags=("-DSTUB_MODE=1",))
    start = time.monotonic()
    with QemuTarget(board).open(build, timeout=3) as s:
        proc = s.proc
        s.device.set_input(0, bytes(1000))
        with pytest.raises(TargetError) as e:
            s.device.infer(1)
    assert time.monotonic() - start < 20
    assert proc.poll() is not None  # the session reaped QEMU
    # reported after 2 x timeout of silence (it acknowledged the INFER, then hung)
    # the figure is the silence measured, so a loaded machine may report a little more than 6.0 s
    m = re.search(r"did not answer INFER within ([0-9.]+) s \(2 x --timeout 3 s\)", str(e.value))
    assert m and 6.0 <= float(m.group(1)) < 8.0, str(e.value)
    assert "may be hung" in str(e.value)
    assert "acknowledged" in str(e.value)


def test_a_fault_is_reported_with_its_pc(tmp_path):
    with pytest.raises(TargetError) as e:
        _run("qemu-m7", tmp_path, bytes(1000), extra_cflags=("-DSTUB_MODE=2",))
    msg = str(e.value)
    assert "fault" in msg.lower() and "PC" in msg


def test_bytes_that_come_during_an_inference_change_none_of_its_figures(tmp_path):
    """On a noisy link the host sends a request again while the device computes. The byte that arrives
    then must not be taken as an interrupt inside the inference: its exception frame would deepen the
    painted peak stack (the spin is the stub's deepest point) and its instructions would join the count."""
    from harness import protocol as P

    board = get_board("qemu-m4")
    build = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path, extra_cflags=("-DSTUB_MODE=4",))
    with QemuTarget(board).open(build, timeout=20) as s:
        dev = s.device
        dev.set_input(0, bytes(1000))
        quiet = dev.infer(1)

        def answer(seq: int) -> P.Frame:  # skipping late answers to a request Device sent twice
            while (f := dev.read_frame(10.0)).seq != seq:
                pass
            return f

        for seq, delay in ((0x70, 0.005), (0x71, 0.015), (0x72, 0.03)):  # the spin lasts ~80 ms
            dev.port.write(P.encode(P.INFER, seq, (1).to_bytes(4, "little")))
            dev.port.flush()
            assert answer(seq).kind == P.ACK
            time.sleep(delay)
            dev.port.write(b"\x00")  # noise: not a sync byte, so the device skips it once it reads again
            dev.port.flush()
            stats = answer(seq)
            assert stats.kind == P.STATS
            n, stack, _ = struct.unpack_from("<3I", stats.payload)
            count = struct.unpack_from("<Q", stats.payload, 12)[0]
            assert (stack, count) == (quiet.peak_stack, quiet.counts[0]), f"byte {delay} s into the inference"
        assert dev.get_output(0, 1000) == bytes(b"\x01" * 1000)


def test_a_fault_is_reported_while_a_request_waits_unread(tmp_path):
    """A host on a noisy link may send INFER again while the device computes: the fault report must still
    arrive, though the device never reads that second request. (A QEMU that exited at the fault reset the
    connection and, on a loaded machine, about one run in ten lost the report.)"""
    from harness import protocol as P

    board = get_board("qemu-m7")
    build = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path, extra_cflags=("-DSTUB_MODE=2",))
    with QemuTarget(board).open(build, timeout=20) as s:
        dev = s.device
        dev.set_input(0, bytes(1000))
        infer = P.encode(P.INFER, 0x70, (1).to_bytes(4, "little"))
        dev.port.write(infer + infer)
        dev.port.flush()
        while (f := dev.read_frame(10.0)).kind != P.ERROR:  # the ACK first
            pass
    code, pc = struct.unpack_from("<HI", f.payload)
    assert code == P.ERR_FAULT and pc != 0 and f.payload.endswith(b"BusFault"), f.payload
