"""The host side of the UART protocol (the device side is firmware/runtime/protocol.c).

A frame::

    0xA5 0x5A | type u8 | seq u8 | length u16 LE | payload (<= 1100 bytes) | CRC-32 LE over type..payload

Requests (host -> device) and their answers:

    HELLO_REQ  0x01  ()                                   -> HELLO 0x81 (version, clock, arena needed,
                                                            stack, MACs u32; 5 strings; I/O tensors;
                                                            arena used u32: the engine allocator's count)
    SET_INPUT  0x02  (index u8, offset u32, bytes)       -> ACK 0x82 (type u8)
    INFER      0x03  (repetitions u32, 1..120)           -> STATS 0x83 (n u32, peak stack u32,
                                                            arena high water u32, n x count u64)
    GET_OUTPUT 0x04  (index u8, offset u32, length u16)  -> OUTPUT 0x84 (index u8, offset u32, bytes)
    GET_LAYERS 0x05  (first u16)                          -> LAYERS 0x85 (first u16, layers u16,
                                                            n x count u64: the counter at each layer's end
                                                            in the last repetition; layers 0 unless the
                                                            firmware was built to profile)
    any             -> ERROR 0xEE (code u16, 4 x u32, text): bad CRC, bad request, out of range, a fault,
                       frame too long, the engine failed (6: sent unasked at boot or in an inference,
                       then in answer to every request)

The device echoes the request's sequence number. The device sends HELLO once at boot unasked. Every
request but INFER is idempotent, so the host retries those on a bad CRC, a garbled answer or a timeout;
INFER is retried only when the device reports it never received it intact (a CRC error).
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass, field

from harness.errors import ProtocolError, TargetError

SYNC = b"\xa5\x5a"
VERSION = 1
MAX_PAYLOAD = 1100
CHUNK = 1024
MAX_REPS = 120

HELLO_REQ, SET_INPUT, INFER, GET_OUTPUT, GET_LAYERS = 0x01, 0x02, 0x03, 0x04, 0x05
HELLO, ACK, STATS, OUTPUT, LAYERS, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0xEE
ERR_BAD_CRC, ERR_BAD_REQUEST, ERR_OUT_OF_RANGE, ERR_FAULT, ERR_TOO_LONG, ERR_ENGINE = 1, 2, 3, 4, 5, 6
REQUEST_NAMES = {
    HELLO_REQ: "HELLO",
    SET_INPUT: "SET_INPUT",
    INFER: "INFER",
    GET_OUTPUT: "GET_OUTPUT",
    GET_LAYERS: "GET_LAYERS",
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
            del self.received[:-4096]

    def read_frame(self, timeout: float) -> Frame:
        """The next intact frame; garbage before it is skipped, a frame with a bad CRC is dropped."""
        deadline = time.monotonic() + timeout
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
            if time.monotonic() >= deadline:
                raise TargetError(
                    f"{self.describe}: no intact frame within {timeout:.1f} s; last bytes received: "
                    f"{bytes(self.received[-64:]).hex(' ') or 'none'}"
                )
            self._read_some(deadline)

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
        self, kind: int, payload: bytes, answer: int, timeout: float | None = None, retry: bool = True
    ) -> Frame:
        """Send a request and wait for its answer (matched by sequence number)."""
        timeout = self.timeout if timeout is None else timeout
        attempts = 1 + self.retries  # a request the device reports damaged never ran: resending is always safe
        last: Exception | None = None
        silent = 0  # attempts after which not one byte had arrived
        for _ in range(attempts):
            if silent >= 2:  # 2 x timeout of pure silence: the device is gone, not garbling
                break
            self._seq = (self._seq + 1) & 0xFF
            seq = self._seq
            try:
                self.port.write(encode(kind, seq, payload))
                self.port.flush()
            except OSError as e:
                raise LinkBroken(f"{self.describe}: the connection to the device broke: {e}") from e
            deadline = time.monotonic() + timeout
            mark = self.bytes_read
            try:
                while True:
                    f = self.read_frame(max(0.0, deadline - time.monotonic()))
                    if f.kind == ERROR:
                        code = struct.unpack_from("<H", f.payload.ljust(2, b"\0"))[0]
                        if code in (ERR_FAULT, ERR_ENGINE):  # whatever request it answers: the device is done
                            self._raise_error(f.payload)
                        if f.seq != seq and code != ERR_BAD_CRC:
                            continue
                        if code in (ERR_BAD_CRC, ERR_TOO_LONG):  # the request arrived damaged: send again
                            raise ProtocolError(f"{self.describe} received a damaged request")
                        self._raise_error(f.payload)
                    if f.seq != seq:
                        continue  # a late answer to an earlier, retried request
                    if f.kind != answer:
                        raise ProtocolError(f"{self.describe} answered 0x{f.kind:02x}, expected 0x{answer:02x}")
                    return f
            except ProtocolError as e:
                last = e
                if "refused" in str(e):
                    raise
            except TargetError as e:
                if "faulted" in str(e) or isinstance(e, LinkBroken | EngineFailed):
                    raise
                name = REQUEST_NAMES.get(kind, f"0x{kind:02x}")
                e = TargetError(
                    f"{self.describe} did not answer {name} within {timeout:.1f} s"
                    + (
                        " (nothing arrived after the request: the device may be hung)"
                        if self.bytes_read == mark
                        else ""
                    )
                    + f"; {e}"
                )
                if not retry:
                    raise e from None
                last = e
                silent += self.bytes_read == mark
        if silent >= 2:
            raise TargetError(
                f"{self.describe} is silent: nothing arrived in {2 * timeout:.1f} s (2 attempts of --timeout "
                f"{timeout:g} s); {last}"
            )
        raise TargetError(f"{self.describe}: gave up after {attempts} attempt(s): {last}")

    # --- requests -----------------------------------------------------------------------------------

    def wait_hello(self, timeout: float) -> Hello:
        """The HELLO a device sends at boot (asked for again if it was lost or garbled; asked once only if
        nothing at all arrived, so that a silent device is reported within the boot wait and one timeout)."""
        mark = self.bytes_read
        try:
            while True:
                f = self.read_frame(timeout)
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
        return parse_hello(self.request(HELLO_REQ, b"", HELLO).payload)

    def set_input(self, index: int, data: bytes) -> None:
        for off in range(0, max(len(data), 1), CHUNK):
            chunk = data[off : off + CHUNK]
            self.request(SET_INPUT, struct.pack("<BI", index, off) + chunk, ACK)

    def infer(self, repetitions: int) -> Stats:
        if not 1 <= repetitions <= MAX_REPS:
            raise ProtocolError(f"repetitions must lie in 1..{MAX_REPS}, got {repetitions}")
        f = self.request(INFER, struct.pack("<I", repetitions), STATS, retry=False)
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
        out = bytearray()
        while len(out) < size:
            n = min(CHUNK, size - len(out))
            f = self.request(GET_OUTPUT, struct.pack("<BIH", index, len(out), n), OUTPUT)
            idx, off = struct.unpack_from("<BI", f.payload)
            if idx != index or off != len(out) or len(f.payload) - 5 != n:
                raise ProtocolError(f"OUTPUT chunk for output {idx} at {off} does not answer the request")
            out += f.payload[5:]
        return bytes(out)
