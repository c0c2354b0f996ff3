"""The host side of the protocol over a socket pair, against a peer that speaks the device's side and can
damage, drop, duplicate or withhold frames. (The real firmware speaks it on QEMU in test_qemu.py.)"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib

import pytest

from harness import protocol as P
from harness.errors import ProtocolError, TargetError


class SocketPort:
    """The slice of pyserial's interface Device uses, over a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout = 1.0
        self.in_waiting = 0

    def read(self, n: int) -> bytes:
        self.sock.settimeout(self.timeout)
        try:
            return self.sock.recv(n)
        except TimeoutError:
            return b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def flush(self) -> None:
        pass


def hello_payload() -> bytes:
    p = struct.pack("<5I", P.VERSION, 25_000_000, 2048, 8192, 1000)
    for s in ("stub", "cortex-m4", "qemu-icount", "abc", "stub_plus_one"):
        p += bytes([len(s)]) + s.encode()
    p += bytes([1, 1])
    p += struct.pack("<IIfiB4i", 0, 1000, 0.5, -3, 2, 1, 1000, 0, 0)
    p += struct.pack("<IIfiB4i", 1024, 1000, 0.5, -2, 2, 1, 1000, 0, 0)
    return p


class Peer(threading.Thread):
    """Plays the device: input + 1, with `damage` deciding what happens to each answer."""

    def __init__(self, sock, damage=lambda n, frame: frame) -> None:
        super().__init__(daemon=True)
        self.sock, self.damage, self.n = sock, damage, 0
        self.inp = bytearray(1000)
        self.requests: list[int] = []
        self.layer_ends: list[int] = []  # a profiling build's stamps; empty as in a normal build
        self.layers_from = lambda first: first  # the first layer the peer answers with (a broken one lies)
        self.check_answer = lambda bits: bits  # the bits a CHECK answers with (a broken peer lies)
        self.landed: set[int] = set()  # seqs of the PUT_INPUTs stored since the last other request
        self._checked = b""
        self.stats, self.stats_seq = b"", None  # the last inference's figures, and its INFER's seq
        self.runs = 0  # inferences actually run (a repeated INFER is answered from the kept figures)
        self._last = None  # (kind, seq) of the previous intact request
        self.lose = lambda kind, n: False  # requests lost on the way in: (kind, how many of it came before)
        self._seen: dict[int, int] = {}

    def send(self, kind, seq, payload):
        frame = self.damage(self.n, P.encode(kind, seq, payload))
        self.n += 1
        if frame:
            self.sock.sendall(frame)

    def run(self):
        buf = bytearray()
        self.send(P.HELLO, 0, hello_payload())
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while (i := buf.find(P.SYNC)) >= 0 and len(buf) >= i + P.OVERHEAD:
                kind, seq, n = struct.unpack_from("<BBH", buf, i + 2)
                if P.head_check(buf[i + 2 : i + 6]) != buf[i + 6 : i + P.HEAD]:
                    del buf[: i + 2]
                    self.send(P.ERROR, seq, struct.pack("<H4I", P.ERR_BAD_CRC, 0, 0, 0, 0) + b"bad CRC")
                    continue
                if len(buf) < i + P.OVERHEAD + n:
                    break
                body = bytes(buf[i + 2 : i + 6] + buf[i + P.HEAD : i + P.HEAD + n])
                ok = zlib.crc32(body) == struct.unpack_from("<I", buf, i + P.HEAD + n)[0]
                del buf[: i + P.OVERHEAD + n]
                p = body[4:]
                self._seen[kind] = self._seen.get(kind, 0) + 1
                if self.lose(kind, self._seen[kind] - 1):
                    continue
                self.requests.append(kind)
                repeated = ok and self._last == (kind, seq)
                if ok:
                    self._last = (kind, seq)
                if not ok:
                    self.send(P.ERROR, seq, struct.pack("<H4I", P.ERR_BAD_CRC, 0, 0, 0, 0) + b"bad CRC")
                elif kind == P.HELLO_REQ:
                    self.send(P.HELLO, seq, hello_payload())
                elif kind in (P.SET_INPUT, P.PUT_INPUT):
                    _, off = struct.unpack_from("<BI", p)
                    self.inp[off : off + len(p) - 5] = p[5:]
                    if kind == P.SET_INPUT:
                        self.send(P.ACK, seq, bytes([P.SET_INPUT]))
                    else:
                        self.landed.add(seq)
                elif kind == P.CHECK:
                    if not repeated:
                        first, count = p[0], p[1]
                        bits = [((first + k) & 0xFF) in self.landed for k in range(count)]
                        packed = bytes(sum(b << i for i, b in enumerate(bits[j : j + 8])) for j in range(0, count, 8))
                        self._checked = p[:2] + self.check_answer(packed)
                    self.send(P.CHECKED, seq, self._checked)
                elif kind == P.HELLO_PART:
                    off, most, count, what, tag = struct.unpack_from("<HHBBB", p)
                    whole = hello_payload() if what == P.HELLO else self.stats if tag == self.stats_seq else None
                    if whole is None:
                        self.send(P.ERROR, seq, struct.pack("<H4I", P.ERR_OUT_OF_RANGE, 0, 0, 0, 0) + b"none kept")
                        continue
                    for at in range(off, min(off + most * count, len(whole)), most):
                        self.send(P.HELLO_PART_ANS, seq, struct.pack("<HH", len(whole), at) + whole[at : at + most])
                elif kind == P.INFER:
                    (reps,) = struct.unpack_from("<I", p)
                    if not repeated:
                        self.runs += 1
                        self.send(P.ACK, seq, bytes([P.INFER]))
                        self.stats_seq = seq
                        self.stats = struct.pack("<3I", reps, 300, 2024) + struct.pack(f"<{reps}Q", *range(reps))
                    self.send(P.STATS, seq, self.stats)
                elif kind == P.GET_OUTPUT:
                    _, off, n = struct.unpack_from("<BIH", p)
                    out = bytes((b + 1) & 0xFF for b in self.inp[off : off + n])
                    self.send(P.OUTPUT, seq, struct.pack("<BI", 0, off) + out)
                elif kind == P.GET_LAYERS:
                    first, most = struct.unpack_from("<HH", p)
                    first = self.layers_from(first)
                    most = most or (P.MAX_PAYLOAD - 4) // 8  # as the firmware cuts it
                    part = self.layer_ends[first : first + most]
                    head = struct.pack("<HH", first, len(self.layer_ends))
                    self.send(P.LAYERS, seq, head + struct.pack(f"<{len(part)}Q", *part))
                if ok and kind != P.PUT_INPUT:
                    self.landed.clear()


def connect(damage=lambda n, f: f, timeout=2.0):
    host, dev = socket.socketpair()
    peer = Peer(dev, damage)
    peer.start()
    return P.Device(SocketPort(host), timeout=timeout, retries=3, describe="test device"), peer


def exchange(device):
    hello = device.wait_hello(2.0)
    assert hello.model == "stub_plus_one" and hello.inputs[0].bytes == 1000 and hello.outputs[0].offset == 1024
    data = bytes(range(256)) * 3 + bytes(232)
    device.set_input(0, data)
    stats = device.infer(3)
    assert stats.counts == [0, 1, 2] and stats.peak_stack == 300
    assert device.get_output(0, 1000) == bytes((b + 1) & 0xFF for b in data)


def test_clean_exchange():
    device, _ = connect()
    exchange(device)


def test_garbage_between_frames_is_skipped():
    device, _ = connect(lambda n, f: b"\x00\xa5garbage\xa5" + f)
    exchange(device)


def test_corrupted_answers_are_retried():
    seen = set()

    def flip(n, f):  # damage the first ACK and the first OUTPUT: both requests are safe to send again
        if f[2] in (P.ACK, P.OUTPUT) and f[2] not in seen:
            seen.add(f[2])
            f = bytearray(f)
            f[len(f) // 2] ^= 0xFF
            return bytes(f)
        return f

    device, peer = connect(flip)
    exchange(device)
    assert peer.requests.count(P.SET_INPUT) == 2 and peer.requests.count(P.GET_OUTPUT) == 2


def test_dropped_answers_are_retried():
    device, peer = connect(lambda n, f: b"" if n == 1 else f, timeout=0.5)  # the SET_INPUT's ACK is lost
    exchange(device)
    assert peer.requests.count(P.SET_INPUT) == 2


def test_a_lost_check_answer_is_answered_the_same_and_the_chunks_stay():
    device, peer = connect(lambda n, f: b"" if f[2] == P.CHECKED and n == 1 else f, timeout=0.5)
    device.put_chunk = P.PUT_CHUNK  # a link that has lost a chunk: inputs go in PUT rounds
    exchange(device)
    # asked again, and answered as the first time: no chunk is sent again
    assert peer.requests.count(P.CHECK) == 2 and peer.requests.count(P.PUT_INPUT) == -(-1000 // P.PUT_CHUNK)


def test_a_lost_chunk_moves_the_inputs_to_put_rounds_for_good():
    device, peer = connect(timeout=2.0)
    peer.lose = lambda kind, n: kind == P.SET_INPUT and n < 2  # the 1000-byte chunk, twice
    device.wait_hello(2.0)
    data = bytes(range(256)) * 3 + bytes(232)
    device.set_input(0, data)
    assert device.put_chunk == P.PUT_CHUNK and peer.inp == data
    # then every 24-byte chunk once, in one round
    small = -(-1000 // P.PUT_CHUNK)
    assert peer.requests.count(P.PUT_INPUT) == small and peer.requests.count(P.CHECK) == 1
    peer.lose = lambda kind, n: kind == P.PUT_INPUT and n in (small + 1, small + 7)  # two of the next input's
    device.set_input(0, data[::-1])
    assert peer.inp == data[::-1] and peer._seen[P.PUT_INPUT] == 2 * small + 2  # only those two again
    assert peer.requests.count(P.CHECK) == 3 and peer._seen[P.SET_INPUT] == 2


def test_damaged_chunks_reported_by_the_device_do_not_resend_the_check():
    device, peer = connect()
    device.wait_hello(2.0)
    device.put_chunk = P.PUT_CHUNK
    real = device.port.write
    k = [0]

    def write(frame):  # the third chunk's payload damaged on the way: the peer says bad CRC
        if frame[2] == P.PUT_INPUT:
            k[0] += 1
            if k[0] == 3:
                frame = frame[:20] + bytes([frame[20] ^ 1]) + frame[21:]
        real(frame)

    device.port.write = write
    data = bytes(range(250)) * 4
    device.set_input(0, data)
    assert peer.inp == data
    # one CHECK a round (the bad-CRC report for the damaged chunk was not taken for one about the CHECK),
    # and the damaged chunk alone again
    assert peer.requests.count(P.CHECK) == 2 and peer.requests.count(P.PUT_INPUT) == -(-1000 // P.PUT_CHUNK) + 1


def test_a_check_that_does_not_answer_the_request_is_an_error():
    device, peer = connect()
    device.wait_hello(2.0)
    device.put_chunk = P.PUT_CHUNK
    peer.check_answer = lambda bits: bits + b"\0"
    with pytest.raises(ProtocolError, match="CHECKED for the PUTs from 1 does not answer the request"):
        device.set_input(0, bytes(100))


def test_chunks_that_never_land_are_an_error_not_a_loop():
    device, peer = connect(timeout=0.3)
    device.wait_hello(2.0)
    device.put_chunk = P.PUT_CHUNK
    peer.check_answer = lambda bits: bytes(len(bits))  # as if no chunk ever landed
    with pytest.raises(P.NoAnswer, match="input 0: no chunk landed in 32 rounds in a row"):
        device.set_input(0, bytes(100))


def test_a_noisy_hello_comes_in_slices_asked_for_in_bursts():
    # (frames sent: the boot HELLO, 2 answers to HELLO_REQ, then slices from the 4th: the 2nd and 5th are lost)
    device, peer = connect(lambda n, f: b"" if f[2] == P.HELLO or (f[2] == P.HELLO_PART_ANS and n in (4, 7)) else f)
    hello = device.hello()
    assert hello.model == "stub_plus_one" and hello.outputs[0].offset == 1024
    # two whole attempts, one burst of every slice, then one request for each run of slices lost
    assert peer.requests.count(P.HELLO_REQ) == 2 and peer.requests.count(P.HELLO_PART) == 1 + 2


def test_a_lost_inference_answer_is_sent_again_not_rerun():
    lost = []

    def drop_first_stats(n, f):
        if f[2] == P.STATS and not lost:
            lost.append(n)
            return b""
        return f

    device, peer = connect(drop_first_stats, timeout=0.5)
    device.wait_hello(2.0)
    assert device.infer(2).counts == [0, 1]
    assert peer.requests.count(P.INFER) == 2 and peer.runs == 1  # asked again, answered from the kept figures


def test_a_repeat_lost_after_garbled_figures_does_not_wait_a_timeout():
    """The figures came garbled, the INFER sent again arrived damaged (the device said so) and the next one
    was lost: the device has finished (bytes came after its acknowledgement) and answers a repeat at once,
    so the next repeat goes after a round trip's wait, not after --timeout."""
    garbled = []

    def garble_first_stats(n, f):
        if f[2] == P.STATS and not garbled:
            garbled.append(n)
            return f[:12] + bytes([f[12] ^ 1]) + f[13:]
        return f

    device, peer = connect(garble_first_stats, timeout=5.0)
    peer.lose = lambda kind, n: kind == P.INFER and n == 2
    real, infers = device.port.write, []

    def write(frame):  # the second INFER damaged on the way
        if frame[2] == P.INFER:
            infers.append(frame)
            if len(infers) == 2:
                frame = frame[:-1] + bytes([frame[-1] ^ 1])
        real(frame)

    device.port.write = write
    device.wait_hello(2.0)
    device.hello()  # round trips measured: the retransmit timer is short
    t0 = time.monotonic()
    assert device.infer(2).counts == [0, 1]
    assert time.monotonic() - t0 < 1.0 and peer.runs == 1 and peer._seen[P.INFER] == 4


def test_an_earlier_requests_late_answer_does_not_send_the_request_again():
    """An intact answer to an earlier request (a repeat's, arriving late) and then quiet is not a garbled
    answer to this one: the host waits for its own, and sends nothing again."""
    box = []

    def stale_then_late(n, f):
        if f[2] == P.STATS:
            box[0].sock.sendall(P.encode(P.ACK, (f[3] - 1) & 0xFF, bytes([P.INFER])))
            time.sleep(0.4)  # four times the longest quiet that means "garbled"
        return f

    device, peer = connect(stale_then_late, timeout=5.0)
    box.append(peer)
    device.wait_hello(2.0)
    assert device.infer(2).counts == [0, 1]
    assert peer._seen[P.INFER] == 1


def long_frames_garbled(limit: int = 100):
    def damage(n, f):
        return f[:20] + bytes([f[20] ^ 1]) + f[21:] if len(f) > limit else f

    return damage


def test_long_figures_through_a_noisy_link_come_in_slices_from_one_run():
    device, peer = connect(long_frames_garbled(), timeout=2.0)
    device.wait_hello(1.0)
    stats = device.infer(P.MAX_REPS)  # 972 bytes of figures: never intact here
    assert stats.counts == list(range(P.MAX_REPS)) and stats.arena_high_water == 2024
    assert peer.runs == 1 and peer.requests.count(P.INFER) == 2 and peer.requests.count(P.HELLO_PART) >= 1


def test_an_inference_that_never_arrived_is_sent_again_when_no_figures_are_kept():
    device, peer = connect(timeout=2.0)
    peer.lose = lambda kind, n: kind == P.INFER and n < 2  # both attempts lost: the device never ran it
    device.wait_hello(1.0)
    device.hello()
    assert device.infer(20).counts == list(range(20))
    assert peer.runs == 1 and peer._seen[P.INFER] == 3 and peer.requests.count(P.HELLO_PART) == 1


def test_long_figures_of_an_inference_sent_again_come_in_slices_too():
    """Both attempts of the first INFER lost, and every long frame garbled: the INFER sent again must have
    its figures asked for in slices as well, not wait whole for a 984-byte frame that never gets through."""
    device, peer = connect(long_frames_garbled(), timeout=2.0)
    peer.lose = lambda kind, n: kind == P.INFER and n < 2
    device.wait_hello(1.0)
    started = time.monotonic()
    assert device.infer(P.MAX_REPS).counts == list(range(P.MAX_REPS))
    assert peer.runs == 1 and time.monotonic() - started < 2 * 2.0


def test_layer_stamps_through_a_noisy_link_come_six_to_a_frame():
    device, peer = connect(long_frames_garbled(), timeout=0.5)
    device.wait_hello(1.0)
    peer.layer_ends = [7 * i for i in range(40)]
    assert device.get_layers() == peer.layer_ends
    assert peer.requests.count(P.GET_LAYERS) == 2 + -(-40 // (P.SMALL_CHUNK // 8))


def test_an_inference_that_never_answers_is_reported_within_two_timeouts():
    device, peer = connect(lambda n, f: b"" if f[2] == P.STATS else f, timeout=0.4)
    device.wait_hello(2.0)
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="silent"):
        device.infer(2)
    assert time.monotonic() - t0 < 2 * 0.4 + 1.0 and peer.runs == 1


def test_duplicated_answers_are_ignored():
    device, _ = connect(lambda n, f: f + f)
    exchange(device)


def test_silent_device_times_out_with_what_was_received():
    host, dev = socket.socketpair()
    dev.sendall(b"\x01\x02\x03")  # a few stray bytes, then silence
    device = P.Device(SocketPort(host), timeout=0.3, retries=1, describe="silent board")
    t0 = time.monotonic()
    with pytest.raises(TargetError) as e:
        device.hello()
    assert time.monotonic() - t0 < 3
    assert "silent board" in str(e.value) and "01 02 03" in str(e.value)


def test_fault_report_becomes_an_error_with_the_pc():
    host, dev = socket.socketpair()
    device = P.Device(SocketPort(host), timeout=1.0, describe="board")
    dev.sendall(P.encode(P.ERROR, 0, struct.pack("<H4I", P.ERR_FAULT, 0x1234, 0x5678, 0x400, 2) + b"MemManage"))
    with pytest.raises(TargetError, match="MemManage at PC 0x00001234"):
        device.infer(1)


def test_refused_request_is_not_retried():
    host, dev = socket.socketpair()
    device = P.Device(SocketPort(host), timeout=1.0, describe="board")
    dev.sendall(P.encode(P.ERROR, 1, struct.pack("<H4I", P.ERR_OUT_OF_RANGE, 5, 6, 7, 0) + b"outside the output"))
    with pytest.raises(ProtocolError, match="outside the output"):
        device.get_output(0, 1)


def test_repetitions_are_bounded():
    host, _ = socket.socketpair()
    with pytest.raises(ProtocolError, match="1..120"):
        P.Device(SocketPort(host)).infer(0)


def test_a_broken_link_is_reported_at_once_not_retried():
    import serial

    class DeadPort(SocketPort):
        reads = 0

        def read(self, n: int) -> bytes:
            DeadPort.reads += 1
            raise serial.SerialException("device reports readiness to read but returned no data")

    host, _ = socket.socketpair()
    device = P.Device(DeadPort(host), timeout=5.0, retries=3, describe="board")
    t0 = time.monotonic()
    with pytest.raises(P.LinkBroken, match="board: the connection to the device broke"):
        device.hello()
    assert DeadPort.reads == 1 and time.monotonic() - t0 < 1


def test_layer_stamps_come_in_as_many_frames_as_they_need():
    device, peer = connect()
    device.wait_hello(2.0)
    assert device.get_layers() == []  # a build without profiling has none
    peer.layer_ends = [1000 * i + (1 << 33) for i in range(300)]  # 64-bit values, three frames of <= 137
    assert device.get_layers() == peer.layer_ends
    assert peer.requests.count(P.GET_LAYERS) == 1 + 3


def test_layer_stamps_that_do_not_answer_the_request_are_an_error():
    device, peer = connect()
    device.wait_hello(2.0)
    peer.layer_ends = list(range(200))
    peer.layers_from = lambda first: 0  # always the first chunk again: the host must not loop or mix them
    with pytest.raises(ProtocolError, match="LAYERS from 0 .* does not answer"):
        device.get_layers()


def test_a_silent_device_is_reported_within_two_timeouts():
    host, dev = socket.socketpair()
    device = P.Device(SocketPort(host), timeout=0.4, retries=3, describe="mute board")
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="mute board did not answer HELLO within 0.8 s .* it is silent"):
        device.hello()
    assert time.monotonic() - t0 < 2 * 0.4 + 0.3  # not 1 + retries = 4 timeouts
    t0 = time.monotonic()
    with pytest.raises(TargetError):
        device.wait_hello(0.4)  # the boot wait, then one request
    assert time.monotonic() - t0 < 0.4 + 0.4 + 0.3
    dev.close()
