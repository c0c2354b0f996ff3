"""What the bench needs of a target: `open(build, timeout=...)` gives a Session whose `device` speaks the
protocol and whose `hello` is the device's HELLO. Closing a session always reaps whatever it started."""

from __future__ import annotations

from typing import Protocol

from harness.protocol import Device, Hello


class Session(Protocol):
    device: Device
    hello: Hello

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc) -> None: ...


class Target(Protocol):
    kind: str  # qemu | pyocd

    def open(self, build, timeout: float = 120.0) -> Session: ...
