"""A serial link with noise, for experiments and tests: bytes flipped, dropped and duplicated at given
rates, both ways, wrapped around any pyserial-like port. Enabled for QEMU sessions by the environment:

    HARNESS_LINK_NOISE="flip=0.01,drop=0.005,dup=0.005,seed=1" harness bench ...

(A real link's errors are burstier; this measures how the protocol recovers, not a cable.)
"""

from __future__ import annotations

import os
import random

ENV = "HARNESS_LINK_NOISE"


class NoisyPort:
    def __init__(self, port, flip: float = 0.0, drop: float = 0.0, dup: float = 0.0, seed: int = 0) -> None:
        self._port = port
        self.flip, self.drop, self.dup = flip, drop, dup
        self._rng = random.Random(seed)
        self.damaged = 0  # bytes flipped, dropped or duplicated so far

    def __getattr__(self, name):  # timeout, in_waiting, flush, close...: the real port's
        return getattr(self._port, name)

    def __setattr__(self, name, value):
        if name == "timeout":
            self._port.timeout = value
        else:
            super().__setattr__(name, value)

    def _mangle(self, data: bytes) -> bytes:
        out = bytearray()
        r = self._rng
        for b in data:
            x = r.random()
            if x < self.drop:
                self.damaged += 1
                continue
            if x < self.drop + self.flip:
                b ^= 1 << r.randrange(8)
                self.damaged += 1
            out.append(b)
            if r.random() < self.dup:
                out.append(b)
                self.damaged += 1
        return bytes(out)

    def read(self, n: int = 1) -> bytes:
        return self._mangle(self._port.read(n))

    def write(self, data: bytes):
        return self._port.write(self._mangle(bytes(data)))


def from_env(port):
    """`port` wrapped in the noise $HARNESS_LINK_NOISE asks for, or `port` itself."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return port
    kw = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("flip", "drop", "dup", "seed"):
            raise ValueError(f"{ENV}: unknown key {key!r} (flip, drop, dup, seed)")
        kw[key.strip()] = int(value) if key.strip() == "seed" else float(value)
    return NoisyPort(port, **kw)
