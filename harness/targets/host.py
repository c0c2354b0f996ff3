"""The host target: the generated C engine built with the host compiler into a shared library and
called through ctypes. No timing figures (the host is not the device); it proves the generated code
bit-exact against the reference in seconds, and runs host-side accuracy checks."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from harness.engines.native import KERNEL_DIR, CodegenResult, generate
from harness.engines.native.emit import RUNTIME_DIR
from harness.errors import BuildError, HarnessError, TargetError
from harness.model.ir import Graph

CFLAGS = ["-O2", "-shared", "-fPIC", "-std=c99", "-Wall", "-Wextra", "-Werror"]


def _digest(cg: CodegenResult, cc: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    h.update(" ".join([cc, *flags]).encode())
    headers = [*sorted(KERNEL_DIR.glob("*.h")), RUNTIME_DIR / "model_abi.h"]
    sources = sorted(cg.files) + headers + sorted(cg.kernel_sources)
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def build_host_library(cg: CodegenResult, cache_dir: Path, cc: str = "gcc", flags: list[str] | None = None) -> Path:
    """Compile model.c and its kernels into a shared library, cached by the hash of every source and
    flag (an unchanged model is not rebuilt). Raises BuildError with the compiler's own message."""
    flags = list(CFLAGS if flags is None else flags)
    if shutil.which(cc) is None:
        raise BuildError(f"the host C compiler `{cc}` is not installed (apt-get install gcc)")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lib = cache_dir / f"model-{_digest(cg, cc, flags)[:20]}.so"
    if lib.is_file():
        return lib
    sources = [p for p in cg.files if p.suffix == ".c"] + list(cg.kernel_sources)
    includes = [f"-I{d}" for d in cg.include_dirs]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    cmd = [cc, *flags, *includes, "-o", tmp, *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise BuildError(f"host build of {cg.name!r} failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
    os.replace(tmp, lib)  # atomic: parallel builders of the same model never see half a library
    return lib


class HostModel:
    """`HostModel(codegen_result or graph, cache_dir=...)`; `run(inputs) -> outputs` (int8 arrays)."""

    def __init__(self, model: CodegenResult | Graph, cache_dir: Path | str | None = None, *, cc: str = "gcc"):
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="harness-host-")
            cache_dir = self._tmp.name
        cache_dir = Path(cache_dir)
        if isinstance(model, Graph):
            model = generate(model, cache_dir / f"src-{hashlib.sha256(model.name.encode()).hexdigest()[:8]}")
        self.codegen: CodegenResult = model
        self.library = build_host_library(model, cache_dir, cc)
        self._lib = ctypes.CDLL(str(self.library))
        self._run = self._lib.model_run
        self._run.argtypes = [ctypes.c_void_p]
        self._run.restype = None
        n = max(model.arena_bytes, 16)
        self._raw = np.empty(n + 16, dtype=np.int8)
        start = (-self._raw.ctypes.data) % 16  # the ABI promises a 16-byte aligned arena
        self.arena = self._raw[start : start + n]
        self._fill = np.random.default_rng(0).integers(-128, 128, size=n, dtype=np.int8)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        specs = self.codegen.inputs
        if len(inputs) != len(specs):
            raise HarnessError(f"the model takes {len(specs)} input(s), {len(inputs)} given")
        # Garbage, not zeros, around the inputs: reading memory nothing wrote shows up as a mismatch.
        self.arena[:] = self._fill
        for j, (x, s) in enumerate(zip(inputs, specs, strict=True)):
            x = np.asarray(x)
            if x.dtype != np.int8 or x.size != s.bytes:
                raise HarnessError(
                    f"input {j} ('{s.name}'): expected int8 of shape {list(s.shape)}, got {x.dtype} of shape "
                    f"{list(x.shape)}"
                )
            self.arena[s.offset : s.offset + s.bytes] = x.reshape(-1)
        try:
            self._run(self.arena.ctypes.data)
        except OSError as e:  # pragma: no cover - a crash in C usually kills the process instead
            raise TargetError(f"model_run failed in the host library: {e}") from e
        return [self.arena[s.offset : s.offset + s.bytes].copy().reshape(s.shape) for s in self.codegen.outputs]


# A main() for the sanitized build: the arena image in on stdin, the output tensors out on stdout.
_SANITIZED_MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "model.h"
int main(void)
{
    /* exactly the arena's bytes (malloc's blocks are 16-byte aligned on 64-bit hosts, as the ABI wants) */
    int8_t *arena = malloc(MODEL_ARENA_BYTES);
    if (!arena || ((uintptr_t)arena & 15) != 0 || fread(arena, 1, MODEL_ARENA_BYTES, stdin) != MODEL_ARENA_BYTES) {
        free(arena);
        return 3;
    }
    model_run(arena);
    for (int i = 0; i < MODEL_NUM_OUTPUTS; i++) {
        fwrite(arena + model_outputs[i].offset, 1, model_outputs[i].bytes, stdout);
    }
    free(arena);
    return 0;
}
"""

SANITIZE_FLAGS = ["-O1", "-g", "-std=c99", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all"]  # fmt: skip


def run_sanitized(cg: CodegenResult, inputs: list[np.ndarray], work: Path, cc: str = "gcc") -> list[np.ndarray]:
    """Build `cg` as a host executable under AddressSanitizer and UBSan (the arena is its own heap block,
    so a read or write past it is reported) and run one inference. Raises TargetError with the
    sanitizer's report when it finds anything."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    main = work / "sanitized_main.c"
    main.write_text(_SANITIZED_MAIN)
    exe = work / "model-sanitized"
    sources = [str(p) for p in cg.files if p.suffix == ".c"] + [str(p) for p in cg.kernel_sources] + [str(main)]
    cmd = [cc, *SANITIZE_FLAGS, *[f"-I{d}" for d in cg.include_dirs], "-o", str(exe), *sources]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"sanitized host build of {cg.name!r} failed:\n{proc.stderr.strip()}")
    arena = np.random.default_rng(0).integers(-128, 128, size=cg.arena_bytes, dtype=np.int8)
    for x, s in zip(inputs, cg.inputs, strict=True):
        arena[s.offset : s.offset + s.bytes] = np.asarray(x, dtype=np.int8).reshape(-1)
    run = subprocess.run([str(exe)], input=arena.tobytes(), capture_output=True, timeout=120)
    if run.returncode != 0:
        report = run.stderr.decode(errors="replace").strip().splitlines()
        raise TargetError(
            f"the sanitized build of {cg.name!r} failed (exit {run.returncode}): " + " / ".join(report[:6])
        )
    out, pos = [], 0
    for s in cg.outputs:
        out.append(np.frombuffer(run.stdout[pos : pos + s.bytes], dtype=np.int8).reshape(s.shape))
        pos += s.bytes
    return out
