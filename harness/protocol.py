"""The host side of the UART protocol (the device side is firmware/runtime/protocol.c).

A frame::

    0xA5 0x5A | type u8 | seq u8 | length u16 LE | CRC-16 LE of those 4 | payload (<= 1100 bytes) |
    CRC-32 LE over type, seq, length and payload

(The header's own check lets either side refuse a damaged length at once, rather than wait for that many
bytes and swallow the frames behind it.)

Requests (host -> device) and their answers:

    HELLO_REQ  0x01  ()                                   -> HELLO 0x81 (version, clock, arena needed,
                                                            stack, MACs u32; 5 strings; I/O tensors;
                                                            arena used u32: the engine allocator's count)
    HELLO_PART 0x06  (offset u16, max u16, count u8,      -> count x HELLO_PART 0x86 (total u16, offset u16,
                      what u8, tag u8)                      bytes), back to back: slices of at most max
                                                            bytes of HELLO (what 0x81) or of the kept STATS
                                                            (0x83) of the INFER with seq `tag`, for a
                                                            noisy link
    SET_INPUT  0x02  (index u8, offset u32, bytes)       -> ACK 0x82 (type u8)
    PUT_INPUT  0x07  (index u8, offset u32, bytes)       -> no answer, not even an error: chunks go back
                                                            to back, then one CHECK says which landed
    CHECK      0x08  (first seq u8, count u8, 1..128)    -> CHECKED 0x88 (first u8, count u8, a bit for each
                                                            of the PUT_INPUTs with seq first.. first+count-1:
                                                            set when it was stored since the last request
                                                            that was not a PUT_INPUT; a repeated CHECK gets
                                                            the same answer)
    LOAD_INPUT 0x09  (index u8, file offset u32[, path]) -> ACK 0x82 (0x09): the input read by semihosting
                                                            from a host file, its path sent once and kept
                                                            (QEMU builds only: the emulated UART moves a
                                                            byte in ~0.1 ms)
    RUN_STAGED 0x0A  (first u32, count u16, in length u8, -> ACK 0x82 (0x0A) at once, then RAN 0x8A
                      in path, out path)                    (samples u32, peak stack u32, arena high
                                                            water u32): on QEMU, samples first.. of a host
                                                            file (every input of one, back to back) each
                                                            run once; each one's outputs and count u64
                                                            written to the out file (a batch at the
                                                            engine's speed: no UART per sample)
    INFER      0x03  (repetitions u32, 1..120)           -> ACK 0x82 (0x03) at once, then STATS 0x83
                                                            (n u32, peak stack u32, arena high water u32,
                                                            n x count u64)
    GET_OUTPUT 0x04  (index u8, offset u32, length u16)  -> OUTPUT 0x84 (index u8, offset u32, bytes)
    GET_LAYERS 0x05  (first u16, most u16: 0 = any)      -> LAYERS 0x85 (first u16, layers u16,
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
Inputs go as SET_INPUT chunks until one is lost; from then on as PUT_INPUT chunks back to back and a
CHECK (one round trip, not one a chunk), the chunks it finds missing going again. On a link that loses a
chunk, chunks shrink for good (PUT_CHUNK, SMALL_CHUNK).
"""

from __future__ import annotations

import binascii
import struct
import time
import zlib
from dataclasses import dataclass, field

from harness.errors import ProtocolError, TargetError

SYNC = b"\xa5\x5a"
VERSION = 2
QUICK = 0.5  # seconds: an answer that needs no computing comes well within this, even at 115200 baud
IDLE = 0.1  # seconds of quiet after bytes that made no intact frame: the answer was garbled
QUICK_MIN, IDLE_MIN = 0.02, 0.005  # the floors once round trips are known (QEMU answers in a millisecond)
BYTE_TIME = 10 / 115200  # seconds a byte takes at 115200 baud (8N1)
SMALL_CHUNK = 48  # bytes a chunk once the link has lost one: short frames get through noise
MAX_PAYLOAD = 1100
CHUNK = 1024
MAX_REPS = 120

HELLO_SLICE, HELLO_BURST = 24, 16  # HELLO on a noisy link: slices of 24 bytes, up to 16 to a request
PUT_CHUNK = 24  # input bytes a PUT_INPUT once the link has lost one: rounds are cheap, so short frames win
ROUND = 128  # PUT_INPUTs a CHECK asks about (sequence numbers are 8 bits: a round must not wrap into itself)
BARREN_ROUNDS = 32  # rounds in a row in which no chunk lands: the link cannot carry them (noise alone
# loses a 40-byte frame about half the time at 2 % of bytes damaged; 32 times in a row, never)
HELLO_REQ, SET_INPUT, INFER, GET_OUTPUT, GET_LAYERS, HELLO_PART = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
PUT_INPUT, CHECK, LOAD_INPUT, RUN_STAGED = 0x07, 0x08, 0x09, 0x0A
HELLO, ACK, STATS, OUTPUT, LAYERS, HELLO_PART_ANS, CHECKED, RAN = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x88, 0x8A
COMPUTING = {INFER: STATS, RUN_STAGED: RAN}  # requests acknowledged at once, answered once computed
ERROR = 0xEE
ERR_BAD_CRC, ERR_BAD_REQUEST, ERR_OUT_OF_RANGE, ERR_FAULT, ERR_TOO_LONG, ERR_ENGINE = 1, 2, 3, 4, 5, 6
REQUEST_NAMES = {
    HELLO_REQ: "HELLO",
    SET_INPUT: "SET_INPUT",
    INFER: "INFER",
    GET_OUTPUT: "GET_OUTPUT",
    GET_LAYERS: "GET_LAYERS",
    HELLO_PART: "HELLO_PART",
    PUT_INPUT: "PUT_INPUT",
    CHECK: "CHECK",
    LOAD_INPUT: "LOAD_INPUT",
    RUN_STAGED: "RUN_STAGED",
}
FAULT_KINDS = {1: "HardFault", 2: "MemManage", 3: "BusFault", 4: "UsageFault", 5: "unexpected interrupt"}


def head_check(head: bytes) -> bytes:
    """The check of a frame's 4 header bytes: CRC-16/CCITT (polynomial 0x1021, from 0xFFFF), little-endian
    (firmware/runtime/protocol.c computes the same). 16 bits, not 8: a damaged length that passed would
    make the device swallow that many bytes of the frames behind it."""
    return struct.pack("<H", binascii.crc_hqx(bytes(head), 0xFFFF))


HEAD = 8  # sync, type, seq, length, header check: the bytes before the payload
OVERHEAD = HEAD + 4  # and the CRC-32 after it


def encode(kind: int, seq: int, payload: bytes = b"") -> bytes:
    head = struct.pack("<BBH", kind, seq & 0xFF, len(payload))
    return SYNC + head + head_check(head) + payload + struct.pack("<I", zlib.crc32(head + payload))


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

    def input_offset(self, index: int) -> int:
        """Where input `index` starts in the firmware's copy of the inputs (they lie back to back)."""
        return sum(t.bytes for t in self.inputs[:index])


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


class Refused(ProtocolError):
    """The device answered the request with an ERROR (bad request, out of range): `code` says which."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


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

    def __init__(
        self, port, timeout: float = 30.0, retries: int = 3, describe: str = "device", rtt_hint: float | None = None
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.describe = describe
        self._seq = 0
        self.last_seq = 0  # the sequence number of the last request()
        self._buf = bytearray()
        self.received = bytearray()  # the last bytes read, for error reports
        self.bytes_read = 0
        self._last_rx = time.monotonic()
        self.chunk = CHUNK  # shrinks to SMALL_CHUNK once a chunk has been lost
        self.put_chunk = CHUNK  # PUT_CHUNK once an input chunk has been lost: inputs go in PUT rounds
        self._rtts: list[float] = []  # round trips of answered requests, for the retransmit timer
        self._rtt_hint = rtt_hint  # the round trip the link is known to have, until three are measured

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
                if len(self._buf) >= HEAD:
                    kind, seq, length = struct.unpack_from("<BBH", self._buf, 2)
                    if length > MAX_PAYLOAD or head_check(self._buf[2:6]) != self._buf[6:HEAD]:
                        del self._buf[:2]  # not a real header: resynchronise past this marker
                        continue
                    if len(self._buf) >= OVERHEAD + length:
                        body = bytes(self._buf[2:6]) + bytes(self._buf[HEAD : HEAD + length])
                        (crc,) = struct.unpack_from("<I", self._buf, HEAD + length)
                        if zlib.crc32(body) == crc:
                            del self._buf[: OVERHEAD + length]
                            return Frame(kind, seq, body[4:])
                        del self._buf[:2]
                        continue
            now = time.monotonic()
            # bytes after the mark, or left unframed in the buffer, and then quiet: a garbled answer
            came = idle_after is not None and (self.bytes_read > idle_after or len(self._buf) > 0)
            garbled = came and now - max(self._last_rx, entered) >= self._idle()  # and this call listened that long
            if now >= deadline or garbled:
                raise TargetError(
                    f"{self.describe}: no intact frame "
                    + ("(bytes came, then the line went quiet)" if garbled else f"within {timeout:.1f} s")
                    + f"; last bytes received: {bytes(self.received[-64:]).hex(' ') or 'none'}"
                )
            self._read_some(deadline if idle_after is None else min(deadline, now + self._idle()))

    def _raise_error(self, payload: bytes) -> None:
        code, a, b, c, d = struct.unpack_from("<H4I", payload.ljust(18, b"\0"))
        text = payload[18:].decode(errors="replace")
        if code == ERR_FAULT:
            raise TargetError(
                f"{self.describe} faulted: {FAULT_KINDS.get(d, text)} at PC 0x{a:08x} (LR 0x{b:08x}, CFSR 0x{c:08x})"
            )
        if code == ERR_ENGINE:
            raise EngineFailed(f"{self.describe}: the engine failed on the device: {text.strip() or 'no reason given'}")
        raise Refused(code, f"{self.describe} refused the request: {text} (code {code}, {a}, {b}, {c})")

    def request(
        self,
        kind: int,
        payload: bytes,
        answer: int,
        timeout: float | None = None,
        retry: bool = True,
        max_attempts: int | None = None,
        ignore: frozenset[int] = frozenset(),
        lead_bytes: int = 0,
    ) -> Frame:
        """Send a request and wait for its answer, sending it again until one arrives intact.

        Every attempt carries the same sequence number, so the device knows a repeat: requests other
        than INFER are idempotent, and a repeated INFER is answered with the kept figures, not run
        again. An attempt ends when an answer arrives, after QUICK seconds for a request that needs no
        computing (INFER waits for its acknowledgement that long, then `timeout` for the figures), or
        as soon as the line has been quiet for IDLE seconds after bytes that made no intact frame (a
        garbled answer). The request fails when the device refuses it, faults or the link breaks; when
        2 x `timeout` passed without one byte (a silent device); or after `max_attempts` (default: as
        many as fit in (1 + retries) x `timeout`). Reports of damaged frames whose sequence number is in
        `ignore` (requests sent before this one, which need no answer) do not make it send again.
        `lead_bytes` were sent just before the request: its first attempt waits as long more as they take
        at 115200 baud, and does not count as a round trip."""
        timeout = self.timeout if timeout is None else timeout
        seq = self.last_seq = self._next_seq()
        frame = encode(kind, seq, payload)
        name = REQUEST_NAMES.get(kind, f"0x{kind:02x}")
        budget_end = time.monotonic() + (1 + self.retries) * timeout
        silent = 0.0
        acked = False  # INFER: the device said it has the request (it is computing)
        # INFER: bytes came after the acknowledgement, so the device is done (it answers in order) and
        # answers a repeat at once from the kept figures: a repeat lost on the way must not cost `timeout`
        finished = False
        last: Exception | None = None
        attempt = 0
        while True:
            attempt += 1
            self._write(frame)
            started = time.monotonic()
            wait = timeout if (kind in COMPUTING and acked and not finished) else min(timeout, self._quick())
            if attempt == 1:
                wait += lead_bytes * BYTE_TIME
            mark = self.bytes_read
            try:
                f = self._await(seq, kind, answer, started + wait, mark, ack_ok=not acked, ignore=ignore)
                if (kind not in COMPUTING or f.kind == ACK) and not (attempt == 1 and lead_bytes):
                    self._rtts.append(time.monotonic() - started)
                    del self._rtts[:-32]
                if f.kind == ACK and COMPUTING.get(kind) == answer:
                    acked = True
                    # bytes read with the ACK and not yet framed count as arrived (the figures may be in them)
                    mark = self.bytes_read - len(self._buf)
                    f = self._await(seq, kind, answer, time.monotonic() + timeout, mark, ack_ok=False, ignore=ignore)
                return f
            except _Retry as e:
                last = e
            finished = finished or (acked and self.bytes_read > mark)
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

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _write(self, frame: bytes) -> None:
        try:
            self.port.write(frame)
            self.port.flush()
        except OSError as e:
            raise LinkBroken(f"{self.describe}: the connection to the device broke: {e}") from e

    def _median_rtt(self) -> float | None:
        return sorted(self._rtts)[len(self._rtts) // 2] if len(self._rtts) >= 3 else self._rtt_hint

    def _quick(self) -> float:
        """How long an attempt waits for an answer that needs no computing: QUICK until round trips are
        known (measured, or hinted by the target), then 8 times the median recent one (QEMU answers in a
        millisecond, a board at 115200 baud in tens), within [QUICK_MIN, QUICK] s. Too short costs only a
        repeat: every request may be repeated."""
        rtt = self._median_rtt()
        return QUICK if rtt is None else min(QUICK, max(QUICK_MIN, 8 * rtt))

    def _idle(self) -> float:
        """The quiet after unframed bytes that means an answer arrived garbled: IDLE until round trips are
        known, then twice the median one (an answer's bytes come closer together than a round trip's),
        within [IDLE_MIN, IDLE] s."""
        rtt = self._median_rtt()
        return IDLE if rtt is None else min(IDLE, max(IDLE_MIN, 2 * rtt))

    def _await(
        self,
        seq: int,
        kind: int,
        answer: int,
        deadline: float,
        mark: int,
        ack_ok: bool = True,
        ignore: frozenset[int] = frozenset(),
    ) -> Frame:
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
            # an intact frame is no garbled answer, whatever it answers (an earlier request, a repeat, a
            # damaged PUT): only bytes after it can be, so quiet after it does not send this request again
            mark = self.bytes_read - len(self._buf)
            if f.kind == ERROR:
                code = struct.unpack_from("<H", f.payload.ljust(2, b"\0"))[0]
                if code in (ERR_FAULT, ERR_ENGINE):  # whatever request it answers: the device is done
                    self._raise_error(f.payload)
                if code in (ERR_BAD_CRC, ERR_TOO_LONG):  # a request arrived damaged (maybe ours): send again
                    if f.seq in ignore:
                        continue
                    raise _Retry(f"{self.describe} received a damaged request")
                if f.seq != seq:
                    continue
                self._raise_error(f.payload)
            if f.seq != seq:
                continue  # an answer to an earlier request, or a repeat of one
            if f.kind == ACK and kind in COMPUTING and f.payload[:1] == bytes([kind]):
                if COMPUTING[kind] == answer and ack_ok:
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
            return self.hello(whole=False)  # the boot HELLO arrived garbled: the link is noisy

    def hello(self, whole: bool = True) -> Hello:
        """HELLO asked for: whole (up to 2 attempts), then, or with `whole` False, in slices."""
        if whole:
            try:
                return parse_hello(self.request(HELLO_REQ, b"", HELLO, max_attempts=2).payload)
            except NoAnswer:
                pass  # a long frame through a noisy link: ask for it in slices
        return parse_hello(self._slices(HELLO))

    def _slices(self, what: int, tag: int = 0) -> bytes:
        """A long answer (HELLO, or the kept STATS of the INFER with sequence number `tag`) in
        HELLO_SLICE-byte slices, asked for HELLO_BURST at a time and sent back to back; the slices lost go
        again, each run of them in one request."""
        got: dict[int, bytes] = {}
        total = None
        barren = had = 0
        while total is None or len(missing := [o for o in range(0, total, HELLO_SLICE) if o not in got]) > 0:
            barren = barren + 1 if total is not None and len(got) == had else 0
            if barren >= BARREN_ROUNDS:
                raise NoAnswer(f"{self.describe}: no new slice of 0x{what:02x} in {barren} requests in a row")
            had = len(got)
            first, count = (0, HELLO_BURST) if total is None else (missing[0], 1)
            while total is not None and first + count * HELLO_SLICE in missing and count < HELLO_BURST:
                count += 1
            ask = struct.pack("<HHBBB", first, HELLO_SLICE, count, what, tag)
            f = self.request(HELLO_PART, ask, HELLO_PART_ANS)
            seq = f.seq
            while True:
                n, off = struct.unpack_from("<HH", f.payload)
                slice_ = f.payload[4:]
                bad = off % HELLO_SLICE or (total is not None and n != total) or off > n
                if bad or len(slice_) != min(HELLO_SLICE, n - off):
                    raise ProtocolError(f"slice at {off} of {n} does not answer the request for 0x{what:02x}")
                total = n
                if off < n:
                    got[off] = slice_
                if off + len(slice_) >= min(n, first + count * HELLO_SLICE):
                    break  # the last slice asked for is in
                f = self._more(seq)
                if f is None:
                    break
        return b"".join(got[o] for o in range(0, total, HELLO_SLICE))

    def _more(self, seq: int) -> Frame | None:
        """Another answer to request `seq`, of several it has (sent back to back), or None once the line
        has gone quiet."""
        while True:
            try:
                f = self.read_frame(self._quick(), idle_after=self.bytes_read - len(self._buf))
            except LinkBroken:
                raise
            except TargetError:
                return None
            if f.seq == seq and f.kind != ERROR:
                return f

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
        """Input `index`: SET_INPUT chunks of CHUNK bytes, each acknowledged, while the link loses none
        (on QEMU an answer to each chunk keeps its bytes moving: a silent burst waits on the emulator),
        then, once one is lost, PUT_INPUT rounds for good (`_put_rounds`)."""
        off = 0
        while self.put_chunk > PUT_CHUNK and off < len(data):
            try:
                ask = struct.pack("<BI", index, off) + data[off : off + CHUNK]
                self.request(SET_INPUT, ask, ACK, max_attempts=2)
            except NoAnswer:
                self.put_chunk = PUT_CHUNK
                break
            off += CHUNK
        if off < len(data):
            self._put_rounds(index, data, off)

    def _put_rounds(self, index: int, data: bytes, start: int) -> None:
        """Input `index` from byte `start` as PUT_INPUT chunks sent back to back (up to ROUND a round), then
        one CHECK of which landed; the others go again. One round trip a round, not one a chunk: on a
        noisy link many chunks of a round get through. BARREN_ROUNDS rounds in a row that land nothing
        fail the request."""
        size = len(data)
        done = bytearray(size)  # 1 for each byte the device is known to hold
        done[:start] = b"\1" * start
        chunk = self.put_chunk
        pending = [off for off in range(0, size, chunk) if not all(done[off : off + chunk])]
        barren = 0
        while pending:
            batch = pending[:ROUND]
            first = (self._seq + 1) & 0xFF
            for off in batch:
                head = struct.pack("<BI", index, off)
                self._write(encode(PUT_INPUT, self._next_seq(), head + data[off : off + chunk]))
            ignore = frozenset((first + k) & 0xFF for k in range(len(batch)))  # their damage reports
            lead = sum(OVERHEAD + 5 + min(chunk, size - off) for off in batch)
            f = self.request(CHECK, bytes([first, len(batch)]), CHECKED, ignore=ignore, lead_bytes=lead)
            if f.payload[:2] != bytes([first, len(batch)]) or len(f.payload) != 2 + (len(batch) + 7) // 8:
                raise ProtocolError(f"CHECKED for the PUTs from {first} does not answer the request")
            bits = f.payload[2:]
            landed = [off for k, off in enumerate(batch) if bits[k >> 3] >> (k & 7) & 1]
            for off in landed:
                n = min(chunk, size - off)
                done[off : off + n] = b"\1" * n
            barren = 0 if landed else barren + 1
            if barren >= BARREN_ROUNDS:
                raise NoAnswer(f"{self.describe}: input {index}: no chunk landed in {barren} rounds in a row")
            pending = [off for off in range(0, size, chunk) if not all(done[off : off + chunk])]

    def load_input(self, index: int, offset: int, path: str | None = None) -> None:
        """Input `index` read by the device itself from `offset` of a host file (QEMU): `path`, or the one
        it was last given."""
        name = b"" if path is None else path.encode()
        if len(name) > 255:
            raise ProtocolError(f"LOAD_INPUT: the path is {len(name)} bytes, at most 255: {path}")
        self.request(LOAD_INPUT, struct.pack("<BI", index, offset) + name, ACK)

    def run_staged(self, first: int, count: int, in_path: str, out_path: str) -> tuple[int, int, int]:
        """RUN_STAGED: (samples run, peak stack, arena high water). A repeat after a lost or late answer
        gets the device's kept RAN; the batch is not run again (its out file is not rewritten)."""
        a, b = in_path.encode(), out_path.encode()
        if not (0 < len(a) <= 255 and 0 < len(b) <= 255):
            raise ProtocolError(f"RUN_STAGED: paths of 1..255 bytes, got {len(a)} and {len(b)}")
        f = self.request(RUN_STAGED, struct.pack("<IHB", first, count, len(a)) + a + b, RAN)
        if len(f.payload) != 12:
            raise ProtocolError(f"RAN in {len(f.payload)} bytes, not 12")
        return struct.unpack("<3I", f.payload)

    def infer(self, repetitions: int) -> Stats:
        """Run `repetitions` inferences and get their figures. Figures too long for a noisy link (more than
        a SMALL_CHUNK) are asked for in slices after two garbled answers; if the device holds none for
        this INFER, it never ran it, and it is sent again (a new request, asked for in slices in turn:
        a long frame sent whole may never get through), within the budget one request has."""
        if not 1 <= repetitions <= MAX_REPS:
            raise ProtocolError(f"repetitions must lie in 1..{MAX_REPS}, got {repetitions}")
        ask = struct.pack("<I", repetitions)
        if 12 + 8 * repetitions <= SMALL_CHUNK:
            payload = self.request(INFER, ask, STATS).payload
        else:
            budget_end = time.monotonic() + (1 + self.retries) * self.timeout
            while True:
                try:
                    payload = self.request(INFER, ask, STATS, max_attempts=2).payload
                    break
                except NoAnswer as e:
                    lost = e
                try:
                    payload = self._slices(STATS, tag=self.last_seq)
                    break
                except Refused as e:
                    if e.code != ERR_OUT_OF_RANGE:
                        raise
                if time.monotonic() >= budget_end:
                    spent = (1 + self.retries) * self.timeout
                    raise NoAnswer(f"{self.describe}: no intact figures for INFER in {spent:g} s of tries: {lost}")
        n, stack, hw = struct.unpack_from("<3I", payload)
        if len(payload) != 12 + 8 * n or n != repetitions:
            raise ProtocolError(f"STATS for {n} repetitions in {len(payload)} bytes, asked for {repetitions}")
        counts = list(struct.unpack_from(f"<{n}Q", payload, 12))
        return Stats(counts, stack, hw)

    def get_layers(self) -> list[int]:
        """The counter at the end of each layer of the last inference, from its start (cumulative). Empty
        when the firmware was not built to profile layers. As many to a frame as fit, or a SMALL_CHUNK's
        worth once the link has lost a long frame."""
        ends: list[int] = []
        while True:
            most = 0 if self.chunk > SMALL_CHUNK else SMALL_CHUNK // 8
            try:
                ask = struct.pack("<HH", len(ends), most)
                f = self.request(GET_LAYERS, ask, LAYERS, max_attempts=2 if most == 0 else None)
            except NoAnswer:
                if most:
                    raise
                self.chunk = SMALL_CHUNK
                continue
            first, total = struct.unpack_from("<HH", f.payload)
            n = (len(f.payload) - 4) // 8
            broken = (len(f.payload) - 4) % 8 or first + n > total or (n == 0 and first < total)
            if first != len(ends) or broken or (most and n > most):
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
