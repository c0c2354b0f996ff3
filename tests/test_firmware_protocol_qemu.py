"""The firmware's own side of the protocol (runtime/main.c, protocol.c) on QEMU: frames damaged, unknown,
too long, out of range or repeated, written raw to the emulated UART, and the device's exact answers. (The
Python peer's handling of a bad device is in test_protocol.py.)"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tools

from harness import protocol as P
from harness.boards import get_board
from harness.build import build_firmware
from harness.errors import TargetError
from harness.targets.qemu import QemuTarget

STUB = Path(__file__).parent / "fixtures" / "stub_model"  # output = input + 1, one 1000-byte input
pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """One QEMU session for the whole module: every case below must also leave the firmware serving."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    board = get_board("qemu-m4")
    build = build_firmware(STUB, board, qemu=True, cache_dir=tmp_path_factory.mktemp("fw"))
    with QemuTarget(board).open(build, timeout=10) as s:
        yield s.device


def _send_raw(dev, frame: bytes) -> None:
    # first drop answers still on their way: Device may have sent a request twice (its retransmit timer
    # follows the round trip) and the repeat's answer must not pass for this frame's
    try:
        while True:
            dev.read_frame(0.2)
    except TargetError:
        pass
    dev.port.write(frame)
    dev.port.flush()


def _answer(dev, seq: int | None = None) -> P.Frame:
    """The next frame; with `seq`, the next one for that request (a repeat Device sent before may still be
    answered late on a loaded machine)."""
    while True:
        f = dev.read_frame(5.0)
        if seq is None or f.seq == seq:
            return f


def _error(frame: P.Frame) -> tuple[int, tuple[int, int, int, int], str]:
    assert frame.kind == P.ERROR, f"expected ERROR, got 0x{frame.kind:02x}"
    code, *words = struct.unpack_from("<H4I", frame.payload)
    return code, tuple(words), frame.payload[18:].decode()


def _still_serving(dev) -> None:
    assert dev.hello().model == "stub_plus_one"


def test_bad_crc_is_reported_with_the_frames_seq(device):
    frame = bytearray(P.encode(P.HELLO_REQ, 0x37))
    frame[-1] ^= 0xFF
    _send_raw(device, bytes(frame))
    f = _answer(device)
    assert f.seq == 0x37
    assert _error(f)[0] == P.ERR_BAD_CRC and _error(f)[2] == "bad CRC"
    _still_serving(device)


def test_unknown_request_is_refused_by_type(device):
    _send_raw(device, P.encode(0x42, 0x38, b"\x01\x02"))
    code, words, text = _error(f := _answer(device))
    assert (f.seq, code, words[0], text) == (0x38, P.ERR_BAD_REQUEST, 0x42, "unknown request")
    _still_serving(device)


def test_frame_longer_than_the_buffer_is_refused_and_skipped(device):
    head = struct.pack("<BBH", P.SET_INPUT, 0x39, P.MAX_PAYLOAD + 1)
    # the header alone: the device must refuse it without reading 1101 bytes into its 1100-byte buffer
    _send_raw(device, P.SYNC + head + P.head_check(head) + bytes(32))
    code, _, text = _error(f := _answer(device))
    assert (f.seq, code, text) == (0x39, P.ERR_TOO_LONG, "frame too long")
    _still_serving(device)  # it resynchronised on the next marker


def test_chunks_outside_the_tensors_are_out_of_range(device):
    # SET_INPUT: 200 bytes at offset 900 of a 1000-byte input
    _send_raw(device, P.encode(P.SET_INPUT, 0x3A, struct.pack("<BI", 0, 900) + bytes(200)))
    code, words, _ = _error(f := _answer(device))
    assert (f.seq, code, words[:3]) == (0x3A, P.ERR_OUT_OF_RANGE, (900, 200, 1000))
    # an offset past the end, with an empty chunk
    _send_raw(device, P.encode(P.SET_INPUT, 0x3B, struct.pack("<BI", 0, 1001)))
    assert _error(_answer(device))[:2] == (P.ERR_OUT_OF_RANGE, (1001, 0, 1000, 0))
    # GET_OUTPUT past the output's end
    _send_raw(device, P.encode(P.GET_OUTPUT, 0x3C, struct.pack("<BIH", 0, 0, P.MAX_PAYLOAD)))
    code, words, _ = _error(_answer(device))
    assert (code, words[:3]) == (P.ERR_OUT_OF_RANGE, (0, P.MAX_PAYLOAD, 1000))
    # an input or output index the model does not have
    _send_raw(device, P.encode(P.SET_INPUT, 0x3D, struct.pack("<BI", 1, 0) + b"x"))
    assert _error(_answer(device))[0] == P.ERR_BAD_REQUEST
    _send_raw(device, P.encode(P.GET_OUTPUT, 0x3E, struct.pack("<BIH", 3, 0, 1)))
    assert _error(_answer(device))[0] == P.ERR_BAD_REQUEST
    _still_serving(device)


@pytest.mark.parametrize("reps", [0, P.MAX_REPS + 1])
def test_infer_repetitions_out_of_range(device, reps):
    _send_raw(device, P.encode(P.INFER, 0x40, struct.pack("<I", reps)))
    code, words, _ = _error(_answer(device))
    assert (code, words[:2]) == (P.ERR_BAD_REQUEST, (reps, P.MAX_REPS))


def test_a_duplicated_frame_is_answered_twice_and_changes_nothing(device):
    data = np.random.default_rng(5).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    device.set_input(0, data)
    # the second half again, the same frame twice (a retry whose first copy did arrive)
    frame = P.encode(P.SET_INPUT, 0x41, struct.pack("<BI", 0, 500) + data[500:])
    _send_raw(device, frame + frame)
    a, b = _answer(device, 0x41), _answer(device, 0x41)
    assert [(f.kind, f.seq, f.payload) for f in (a, b)] == [(P.ACK, 0x41, bytes([P.SET_INPUT]))] * 2
    stats = device.infer(1)
    assert len(stats.counts) == 1
    assert device.get_output(0, 1000) == bytes((x + 1) & 0xFF for x in data)


def test_the_crc_covers_type_seq_and_length(device):
    """A frame whose header was damaged in transit (seq flipped) with the original CRC is refused, not run."""
    payload = struct.pack("<I", 1)
    head = struct.pack("<BBH", P.INFER, 0x50, len(payload))
    crc = zlib.crc32(head + payload)
    damaged = struct.pack("<BBH", P.INFER, 0x51, len(payload))  # its header check made after the damage
    _send_raw(device, P.SYNC + damaged + P.head_check(damaged) + payload + struct.pack("<I", crc))
    f = _answer(device)
    assert f.seq == 0x51 and _error(f)[0] == P.ERR_BAD_CRC
    _still_serving(device)


def test_a_damaged_length_is_refused_at_once_not_waited_for(device):
    """A SET_INPUT whose length was flipped from 20 to 532 (a length a SET_INPUT may have): the header check
    refuses it at once, so the frame right behind it is answered, not swallowed as its payload."""
    frame = bytearray(P.encode(P.SET_INPUT, 0x52, struct.pack("<BI", 0, 0) + bytes(15)))
    frame[5] ^= 0x02
    _send_raw(device, bytes(frame) + P.encode(P.HELLO_REQ, 0x53))
    a, b = _answer(device), _answer(device)
    assert (a.seq, _error(a)[0]) == (0x52, P.ERR_BAD_CRC)
    assert (b.kind, b.seq) == (P.HELLO, 0x53)


def test_put_input_is_silent_and_check_says_which_landed(device):
    data = np.random.default_rng(9).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    # chunks of 300 with seqs 0x60..0x63 back to back (0x61 damaged, 0x63 outside the input), then a CHECK
    puts = [P.encode(P.PUT_INPUT, 0x60 + k, struct.pack("<BI", 0, off) + data[off : off + 300]) for k, off in
            enumerate((0, 300, 600, 900))]  # fmt: skip
    puts[1] = puts[1][:-1] + bytes([puts[1][-1] ^ 1])
    puts[3] = P.encode(P.PUT_INPUT, 0x63, struct.pack("<BI", 0, 900) + bytes(300))
    _send_raw(device, b"".join(puts) + P.encode(P.CHECK, 0x64, bytes([0x5F, 6])))
    err, f = _answer(device), _answer(device)  # the damaged one is reported; the others say nothing
    assert (err.seq, _error(err)[0]) == (0x61, P.ERR_BAD_CRC)
    assert (f.kind, f.seq, f.payload) == (P.CHECKED, 0x64, bytes([0x5F, 6, 0b000101 << 1]))  # 0x60 and 0x62
    # the answer lost: the same CHECK again gets the same bits, though the first one cleared them
    _send_raw(device, P.encode(P.CHECK, 0x64, bytes([0x5F, 6])))
    assert _answer(device).payload == f.payload
    # another request came between: nothing has landed since
    _send_raw(device, P.encode(P.CHECK, 0x65, bytes([0x5F, 6])))
    assert _answer(device).payload == bytes([0x5F, 6, 0])
    for count in (0, 129, 129):  # the last a repeat: refused again
        _send_raw(device, P.encode(P.CHECK, 0x66 + (count > 0), bytes([0, count])))
        assert _error(_answer(device))[:2] == (P.ERR_BAD_REQUEST, (count, 128, 0, 0))
    device.set_input(0, data)  # PUT_INPUT and CHECK as the host sends them
    assert device.infer(1).counts and device.get_output(0, 1000) == bytes((x + 1) & 0xFF for x in data)


def test_hello_comes_in_slices_back_to_back(device):
    whole = device.request(P.HELLO_REQ, b"", P.HELLO).payload
    _send_raw(device, P.encode(P.HELLO_PART, 0x70, struct.pack("<HHB", 10, 50, 3)))
    parts = [_answer(device) for _ in range(3)]
    assert [struct.unpack_from("<HH", f.payload) for f in parts] == [(len(whole), 10 + 50 * k) for k in range(3)]
    assert b"".join(f.payload[4:] for f in parts) == whole[10:160] and {f.seq for f in parts} == {0x70}
    assert parts[-1].payload  # and nothing after the third
    with pytest.raises(TargetError):
        device.read_frame(0.3)
    _send_raw(device, P.encode(P.HELLO_PART, 0x71, struct.pack("<HHB", 0, 100, 200)))  # more than there is
    assert len([_answer(device) for _ in range(-(-len(whole) // 100))]) == -(-len(whole) // 100)
    assert device.hello(whole=False) == P.parse_hello(whole)


def test_kept_figures_come_in_slices_for_their_infer_only(device):
    device.set_input(0, bytes(1000))
    _send_raw(device, P.encode(P.INFER, 0x80, struct.pack("<I", 7)))
    ack, stats = _answer(device), _answer(device)
    assert (ack.kind, stats.kind, stats.seq) == (P.ACK, P.STATS, 0x80) and len(stats.payload) == 12 + 8 * 7
    _send_raw(device, P.encode(P.HELLO_PART, 0x81, struct.pack("<HHBBB", 0, 24, 8, P.STATS, 0x80)))
    parts = [_answer(device) for _ in range(-(-len(stats.payload) // 24))]
    assert b"".join(f.payload[4:] for f in parts) == stats.payload
    # the figures of another INFER, or none kept since an input changed: refused, not the wrong ones
    _send_raw(device, P.encode(P.HELLO_PART, 0x82, struct.pack("<HHBBB", 0, 24, 1, P.STATS, 0x7F)))
    assert _error(_answer(device))[0] == P.ERR_OUT_OF_RANGE
    device.set_input(0, bytes(1000))
    _send_raw(device, P.encode(P.HELLO_PART, 0x83, struct.pack("<HHBBB", 0, 24, 1, P.STATS, 0x80)))
    assert _error(_answer(device))[0] == P.ERR_OUT_OF_RANGE


def test_the_peak_stack_is_the_inferences_whatever_the_protocol_did(device):
    """Answering damaged and refused frames takes the protocol deeper than this model's inference: the
    peak stack reported is the inference's, the same before and after."""
    device.set_input(0, bytes(1000))
    before = device.infer(1).peak_stack
    frame = bytearray(P.encode(P.HELLO_REQ, 0x90))
    frame[-1] ^= 0xFF
    _send_raw(device, bytes(frame))  # bad CRC: an error answer, 114 bytes of it built on the stack
    _answer(device)
    _send_raw(device, P.encode(0x42, 0x91, b"\x01"))
    _answer(device)
    assert device.infer(1).peak_stack == before > 0
