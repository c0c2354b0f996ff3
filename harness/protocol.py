"""The host side of the UART protocol (the device side is firmware/runtime/protocol.c).

A frame::

    0xA5 0x5A | type u8 | seq u8 | length u16 LE | payload (<= 1100 bytes) | CRC-32 LE over type..payload

Requests (host -> device) and their answers:

    HELLO_REQ  0x01  ()                                   -> HELLO 0x81 (version, clock, arena needed,
                                                            stack, MACs u32; 5 strings; I/O tensors;
                                                            arena used u32: the engine allocator's count)
    HELLO_PART 0x06  (offset u16, max u16)                -> HELLO_PART 0x86 (total u16, offset u16, bytes):
                                                            HELLO in slices, for a noisy link
    SET_INPUT  0x02  (index u8, offset u32, bytes)       -> ACK 0x82 (type u8)
    INFER      0x03  (repetitions u32, 1..120)           -> ACK 0x82 (0x03) at once, then STATS 0x83
                                                            (n u32, peak stack u32, arena high water u32,
                                                            n x count u64)
    GET_OUTPUT 0x04  (index u8, offset u32, length u16)  -> OUTPUT 0x84 (index u8, offset u32, bytes)
    GET_LAYERS 0x05  (first u16)                          -> LAYERS 0x85 (first u16, layers u16,
                                                            n x count u64: the counter at each layer's end
                                                            in the last repetition; layers 0 unless the
                                                            firmware was built to profile)
    any             -> ERROR 0xEE (code u16, 4 x u32, text): bad CRC, bad request, out of range, a fault,
                       frame too long, the engine failed (6: sent unasked at boot or in an inference,
                       then in answer to every request)

The device echoes the request's sequence number and sends HELLO once at boot unasked. The host sends a
request again, with the same sequence number, until an intact answer arrives (Device.request says when).
Every request but INFER is idempotent; an INFER that arrives twice in a row with the same sequence number
is answered with the kept figures of its first run, so a lost answer is never a second, different run.
On a link that loses a chunk, SET_INPUT and GET_OUTPUT move to SMALL_CHUNK-byte chunks for good.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass, field

from harness.errors import ProtocolError, TargetError

SYNC = b"\xa5\x5a"
VERSION = 1
QUICK = 0.5  # seconds: an answer that needs no computing comes well within this, even at 115200 baud
IDLE = 0.1  # seconds of quiet after bytes that made no intact frame: the answer was garbled
SMALL_CHUNK = 48  # bytes a chunk once the link has lost one: short frames get through noise
MAX_PAYLOAD = 1100
CHUNK = 1024
MAX_REPS = 120

HELLO_REQ, SET_INPUT, INFER, GET_OUTPUT, GET_LAYERS, HELLO_PART = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
HELLO, ACK, STATS, OUTPUT, LAYERS, HELLO_PART_ANS, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0xEE
ERR_BAD_CRC, ERR_BAD_REQUEST, ERR_OUT_OF_RANGE, ERR_FAULT, ERR_TOO_LONG, ERR_ENGINE = 1, 2, 3, 4, 5, 6
REQUEST_NAMES = {
    HELLO_REQ: "HELLO",
    SET_INPUT: "SET_INPUT",
    INFER: "INFER",
    GET_OUTPUT: "GET_OUTPUT",
    GET_LAYERS: "GET_LAYERS",
    HELLO_PART: "HELLO_PART",
}
FAULT_KINDS = {1: "HardFault", 2: "MemManage", 3: "BusFault", 4: "UsageFault", 5: "unexpected interrupt"}


def encode(kind: int, seq: int, payload: bytes = b"") -> bytes:
    head = struct.pack("<BBH", kind, seq & 0xFF, len(payload))
    return SYNC + head + payload + struct.pack("<I", zlib.crc32(head + payload))


@dataclass
class Frame:
    kind: int
    seq: int
    payload: bytes


@dataclass
class TensorSpec:
    offset: int
    bytes: int
    scale: float
    zero_point: int
    shape: tuple[int, ...]


@dataclass
class Hello:
    version: int
    clock_hz: int
    arena_bytes: int
    stack_bytes: int
    macs: int
    board: str
    core: str
    counter_source: str
    build_id: str
    model: str
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    arena_used: int | None = None  # what the engine's allocator counts as used (TFLM's arena_used_bytes())


@dataclass
class Stats:
    counts: list[int]
    peak_stack: int
    arena_high_water: int


def parse_hello(p: bytes) -> Hello:
    try:
        version, clock, arena, stack, macs = struct.unpack_from("<5I", p, 0)
        pos = 20
        strings = []
        for _ in range(5):
            n = p[pos]
            strings.append(p[pos + 1 : pos + 1 + n].decode(errors="replace"))
            pos += 1 + n
        n_in, n_out = p[pos], p[pos + 1]
        pos += 2
        specs = []
        for _ in range(n_in + n_out):
            off, size, scale, zp, ndim = struct.unpack_from("<IIfiB", p, pos)
            dims = struct.unpack_from("<4i", p, pos + 17)
            specs.append(TensorSpec(off, size, scale, zp, tuple(dims[:ndim])))
            pos += 33
        (used,) = struct.unpack_from("<I", p, pos) if len(p) >= pos + 4 else (None,)
    except (struct.error, IndexError) as e:
        raise ProtocolError(f"HELLO is malformed ({len(p)} bytes): {e}") from e
    return Hello(version, clock, arena, stack, macs, *strings, specs[:n_in], specs[n_in:], used)


class NoAnswer(TargetError):
    """No intact answer after every attempt the request was allowed (a link too noisy, or a chunk too long)."""


class _Retry(Exception):
    """This attempt got no answer: send the request again."""


class LinkBroken(TargetError):
    """The serial link itself failed (the port closed, QEMU died): nothing to retry."""


class EngineFailed(TargetError):
    """The engine on the device could not start or run (TFLM's AllocateTensors or Invoke failed): it says
    why, and answers every request with the same words, so there is nothing to retry."""


class Device:
    """Requests to a device over any pyserial-like port (a COM port, or `socket://` for QEMU)."""

    def __init__(self, port, timeout: float = 30.0, retries: int = 3, describe: str = "device") -> None:
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.describe = describe
        self._seq = 0
        self._buf = bytearray()
        self.received = bytearray()  # the last bytes read, for error reports
        self.bytes_read = 0
        self._last_rx = time.monotonic()
        self.chunk = CHUNK  # shrinks to SMALL_CHUNK once a chunk has been lost
        self._rtts: list[float] = []  # round trips of answered requests, for the retransmit timer

    # --- framing ------------------------------------------------------------------------------------

    def _read_some(self, deadline: float) -> None:
        try:
            self.port.timeout = max(0.01, min(0.5, deadline - time.monotonic()))
            data = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 1))
        except OSError as e:  # pyserial's SerialException is an OSError
            raise LinkBroken(f"{self.describe}: the connection to the device broke: {e}") from e
        if data:
            self._buf += data
            self.received += data
            self.bytes_read += len(data)
            self._last_rx = time.monotonic()
            del self.received[:-4096]

    def read_frame(self, timeout: float, idle_after: int | None = None) -> Frame:
        """The next intact frame; garbage before it is skipped, a frame with a bad CRC is dropped. With
        `idle_after` (a bytes_read mark), give up early once bytes came after the mark and the line has
        then been quiet for IDLE seconds: an answer arrived garbled."""
        entered = time.monotonic()
        deadline = entered + timeout
        while True:
            i = self._buf.find(SYNC)
            if i < 0:
                del self._buf[: max(0, len(self._buf) - 1)]
            else:
                del self._buf[:i]
                if len(self._buf) >= 6:
                    kind, seq, length = struct.unpack_from("<BBH", self._buf, 2)
                    if length > MAX_PAYLOAD:
                        del self._buf[:2]  # not a real header: resynchronise past this marker
                        continue
                    if len(self._buf) >= 10 + length:
                        body = bytes(self._buf[2 : 6 + length])
                        (crc,) = struct.unpack_from("<I", self._buf, 6 + length)
                        if zlib.crc32(body) == crc:
                            del self._buf[: 10 + length]
                            return Frame(kind, seq, body[4:])
                        del self._buf[:2]
                        continue
            now = time.monotonic()
            # bytes after the mark, or left unframed in the buffer, and then quiet: a garbled answer
            came = idle_after is not None and (self.bytes_read > idle_after or len(self._buf) > 0)
            garbled = came and now - max(self._last_rx, entered) >= IDLE  # and this call listened that long
            if now >= deadline or garbled:
                raise TargetError(
                    f"{self.describe}: no intact frame "
                    + ("(bytes came, then the line went quiet)" if garbled else f"within {timeout:.1f} s")
                    + f"; last bytes received: {bytes(self.received[-64:]).hex(' ') or 'none'}"
                )
            self._read_some(deadline if idle_after is None else min(deadline, now + IDLE))

    def _raise_error(self, payload: bytes) -> None:
        code, a, b, c, d = struct.unpack_from("<H4I", payload.ljust(18, b"\0"))
        text = payload[18:].decode(errors="replace")
        if code == ERR_FAULT:
            raise TargetError(
                f"{self.describe} faulted: {FAULT_KINDS.get(d, text)} at PC 0x{a:08x} (LR 0x{b:08x}, CFSR 0x{c:08x})"
            )
        if code == ERR_ENGINE:
            raise EngineFailed(f"{self.describe}: the engine failed on the device: {text.strip() or 'no reason given'}")
        raise ProtocolError(f"{self.describe} refused the request: {text} (code {code}, {a}, {b}, {c})")

    def request(
        self,
        kind: int,
        payload: bytes,
        answer: int,
        timeout: float | None = None,
        retry: bool = True,
        max_attempts: int | None = None,
    ) -> Frame:
        """Send a request and wait for its answer, sending it again until one arrives intact.

        Every attempt carries the same sequence number, so the device knows a repeat: requests other
        than INFER are idempotent, and a repeated INFER is answered with the kept figures, not run
        again. An attempt ends when an answer arrives, after QUICK seconds for a request that needs no
        computing (INFER waits for its acknowledgement that long, then `timeout` for the figures), or
        as soon as the line has been quiet for IDLE seconds after bytes that made no intact frame (a
        garbled answer). The request fails when the device refuses it, faults or the link breaks; when
        2 x `timeout` passed without one byte (a silent device); or after `max_attempts` (default: as
        many as fit in (1 + retries) x `timeout`)."""
        timeout = self.timeout if timeout is None else timeout
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        frame = encode(kind, seq, payload)
        name = REQUEST_NAMES.get(kind, f"0x{kind:02x}")
        budget_end = time.monotonic() + (1 + self.retries) * timeout
        silent = 0.0
        acked = False  # INFER: the device said it has the request (it is computing)
        last: Exception | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                self.port.write(frame)
                self.port.flush()
            except OSError as e:
                raise LinkBroken(f"{self.describe}: the connection to the device broke: {e}") from e
            started = time.monotonic()
            wait = timeout if (kind == INFER and acked) else min(timeout, self._quick())
            mark = self.bytes_read
            try:
                f = self._await(seq, kind, answer, started + wait, mark, ack_ok=not acked)
                if kind != INFER or f.kind == ACK:
                    self._rtts.append(time.monotonic() - started)
                    del self._rtts[:-32]
                if f.kind == ACK and kind == INFER and answer == STATS:
                    acked = True
                    # bytes read with the ACK and not yet framed count as arrived (the figures may be in them)
                    mark = self.bytes_read - len(self._buf)
                    f = self._await(seq, kind, answer, time.monotonic() + timeout, mark, ack_ok=False)
                return f
            except _Retry as e:
                last = e
            if self.bytes_read == mark:
                silent += time.monotonic() - started
            else:
                silent = 0.0
            if not retry:
                raise TargetError(f"{self.describe} did not answer {name} within {wait:.1f} s; {last}")
            if silent >= 2 * timeout:
                raise TargetError(
                    f"{self.describe} did not answer {name} within {silent:.1f} s (2 x --timeout {timeout:g} s): "
                    "it is silent, nothing arrived (the device may be hung)"
                    + ("; it had acknowledged the request" if acked else "")
                    + f"; {last}"
                )
            if (max_attempts is not None and attempt >= max_attempts) or time.monotonic() >= budget_end:
                raise NoAnswer(f"{self.describe}: no intact answer to {name} after {attempt} attempt(s): {last}")

    def _quick(self) -> float:
        """How long an attempt waits for an answer that needs no computing: QUICK until round trips are
        known, then 8 times the median recent one (QEMU answers in a millisecond, a board at 115200 baud
        in tens), within [0.05, QUICK] s. Too short costs only a repeat: every request may be repeated."""
        if len(self._rtts) < 3:
            return QUICK
        return min(QUICK, max(0.05, 8 * sorted(self._rtts)[len(self._rtts) // 2]))

    def _await(self, seq: int, kind: int, answer: int, deadline: float, mark: int, ack_ok: bool = True) -> Frame:
        """The answer to request `seq` before `deadline` (an INFER's ACK too, with `ack_ok`), or _Retry."""
        while True:
            try:
                f = self.read_frame(max(0.0, deadline - time.monotonic()), idle_after=mark)
            except LinkBroken:
                raise
            except TargetError as e:
                if "faulted" in str(e):
                    raise
                raise _Retry(str(e)) from None
            if f.kind == ERROR:
                code = struct.unpack_from("<H", f.payload.ljust(2, b"\0"))[0]
                if code in (ERR_FAULT, ERR_ENGINE):  # whatever request it answers: the device is done
                    self._raise_error(f.payload)
                if code in (ERR_BAD_CRC, ERR_TOO_LONG):  # a request arrived damaged (maybe ours): send again
                    raise _Retry(f"{self.describe} received a damaged request")
                if f.seq != seq:
                    continue
                self._raise_error(f.payload)
            if f.seq != seq:
                continue  # an answer to an earlier request, or a repeat of one
            if f.kind == ACK and kind == INFER and f.payload[:1] == bytes([INFER]):
                if answer == STATS and ack_ok:
                    return f
                continue  # a repeat of the acknowledgement
            if f.kind != answer:
                raise ProtocolError(f"{self.describe} answered 0x{f.kind:02x}, expected 0x{answer:02x}")
            return f

    # --- requests -----------------------------------------------------------------------------------

    def wait_hello(self, timeout: float) -> Hello:
        """The HELLO a device sends at boot (asked for again if it was lost or garbled; asked once only if
        nothing at all arrived, so that a silent device is reported within the boot wait and one timeout)."""
        mark = self.bytes_read
        try:
            while True:
                f = self.read_frame(timeout, idle_after=mark)  # a garbled boot HELLO: ask at once
                if f.kind == HELLO:
                    return parse_hello(f.payload)
                if f.kind == ERROR:
                    self._raise_error(f.payload)
        except (LinkBroken, EngineFailed):
            raise
        except TargetError as e:
            if "faulted" in str(e):
                raise
            if self.bytes_read == mark:
                return parse_hello(self.request(HELLO_REQ, b"", HELLO, retry=False).payload)
            return self.hello()

    def hello(self) -> Hello:
        try:
            return parse_hello(self.request(HELLO_REQ, b"", HELLO, max_attempts=3).payload)
        except NoAnswer:
            pass  # a long frame through a noisy link: ask for it in slices
        data, total = bytearray(), None
        while total is None or len(data) < total:
            f = self.request(HELLO_PART, struct.pack("<HH", len(data), SMALL_CHUNK), HELLO_PART_ANS)
            n, off = struct.unpack_from("<HH", f.payload)
            if off != len(data) or (total is not None and n != total):
                raise ProtocolError(f"HELLO slice at {off} of {n} does not answer the request")
            total = n
            data += f.payload[4:]
            if len(f.payload) == 4 and len(data) < total:
                raise ProtocolError(f"HELLO slice at {off} of {n} is empty")
        return parse_hello(bytes(data))

    def _chunked(self, kind: int, make, answer: int, size: int, check) -> bytes:
        """Send `kind` chunk by chunk over [0, size); a chunk lost on the way shrinks them for good."""
        out = bytearray()
        off = 0
        while off < max(size, 1):
            n = min(self.chunk, size - off)
            try:
                f = self.request(kind, make(off, n), answer, max_attempts=2 if self.chunk > SMALL_CHUNK else None)
            except NoAnswer:
                if self.chunk <= SMALL_CHUNK:
                    raise
                self.chunk = SMALL_CHUNK
                continue
            out += check(f, off, n)
            off += max(n, 1)
        return bytes(out)

    def set_input(self, index: int, data: bytes) -> None:
        def make(off, n):
            return struct.pack("<BI", index, off) + data[off : off + n]

        self._chunked(SET_INPUT, make, ACK, len(data), lambda f, off, n: b"")

    def infer(self, repetitions: int) -> Stats:
        if not 1 <= repetitions <= MAX_REPS:
            raise ProtocolError(f"repetitions must lie in 1..{MAX_REPS}, got {repetitions}")
        f = self.request(INFER, struct.pack("<I", repetitions), STATS)
        n, stack, hw = struct.unpack_from("<3I", f.payload)
        if len(f.payload) != 12 + 8 * n or n != repetitions:
            raise ProtocolError(f"STATS for {n} repetitions in {len(f.payload)} bytes, asked for {repetitions}")
        counts = list(struct.unpack_from(f"<{n}Q", f.payload, 12))
        return Stats(counts, stack, hw)

    def get_layers(self) -> list[int]:
        """The counter at the end of each layer of the last inference, from its start (cumulative). Empty
        when the firmware was not built to profile layers."""
        ends: list[int] = []
        while True:
            f = self.request(GET_LAYERS, struct.pack("<H", len(ends)), LAYERS)
            first, total = struct.unpack_from("<HH", f.payload)
            n = (len(f.payload) - 4) // 8
            if first != len(ends) or (len(f.payload) - 4) % 8 or first + n > total or (n == 0 and first < total):
                raise ProtocolError(f"LAYERS from {first} with {n} of {total} layers does not answer the request")
            ends += struct.unpack_from(f"<{n}Q", f.payload, 4)
            if len(ends) == total:
                return ends

    def get_output(self, index: int, size: int) -> bytes:
        def check(f, off, n):
            idx, got = struct.unpack_from("<BI", f.payload)
            if idx != index or got != off or len(f.payload) - 5 != n:
                raise ProtocolError(f"OUTPUT chunk for output {idx} at {got} does not answer the request")
            return f.payload[5:]

        return self._chunked(GET_OUTPUT, lambda off, n: struct.pack("<BIH", index, off, n), OUTPUT, size, check)
