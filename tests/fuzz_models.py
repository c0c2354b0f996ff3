"""Structure-aware model fuzzing: mutants of real models through load -> reference -> codegen -> host build.

A mutant changes one thing a file declares (a dimension, a stride, a padding, a scale, a zero point, an
input index, a dtype, an op's kind) and is written without validation, or has bytes of its flatbuffer
flipped. Each goes through what a user's file goes through; the only acceptable outcomes are a clean
HarnessError (at any stage) or a run whose generated C equals the reference. Anything else is a finding:
another exception (a crash), a mismatch, or too long.

    python tests/fuzz_models.py --n 2000 [--seed 1] [--asan 20]     # prints the tally and the findings

tests/test_fuzz.py runs a fixed-seed sample of it in the suite.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.errors import HarnessError  # noqa: E402
from harness.model.tflite_io import load_model, to_tflite_bytes  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "models"
SEEDS = ["mlperf_kws_ref_int8.tflite", "mlperf_ad01_int8.tflite"]  # small: each mutant is built and run
ZOO_SEEDS = ["digits_cnn", "mlperf_kws"]


def seed_models() -> list[tuple[str, bytes]]:
    from harness.model import to_tflite_bytes as write
    from harness.zoo import build

    out = [(n, (SHARED / n).read_bytes()) for n in SEEDS if (SHARED / n).is_file()]
    return out + [(n, write(build(n))) for n in ZOO_SEEDS]


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def mutate(graph, rng) -> tuple[str, object]:
    """One structural change to a deep copy of `graph`; returns (what, graph)."""
    g = copy.deepcopy(graph)
    g.source = None
    kind = _pick(rng, ["dim", "stride", "padding", "filter", "scale", "zero_point", "index", "dtype", "op_kind",
                       "dilation", "drop_input", "huge_dim"])  # fmt: skip
    acts = [i for i, t in enumerate(g.tensors) if not t.is_const]
    if kind in ("dim", "huge_dim"):
        i = _pick(rng, acts)
        t = g.tensors[i]
        if not t.shape:
            return "noop", g
        d = int(rng.integers(len(t.shape)))
        shape = list(t.shape)
        shape[d] = 1 << 20 if kind == "huge_dim" else max(0, shape[d] + int(_pick(rng, [-1, 1, 2, shape[d]])))
        t.shape = tuple(shape)
        return f"{kind} t{i}[{d}]={shape[d]}", g
    ops = [k for k, op in enumerate(g.ops) if op.options]
    if kind in ("stride", "padding", "filter", "dilation") and ops:
        k = _pick(rng, ops)
        o = g.ops[k].options
        if kind == "padding" and "padding" in o:
            o["padding"] = "VALID" if o["padding"] == "SAME" else "SAME"
        elif kind in o or (kind == "stride" and "stride" in o):
            v = int(_pick(rng, [0, 2, 3, 64, -1]))
            o[kind] = (v, o[kind][1]) if rng.integers(2) else (o[kind][0], v)
        else:
            return "noop", g
        return f"{kind} op{k}={o.get(kind)}", g
    if kind in ("scale", "zero_point"):
        qs = [i for i, t in enumerate(g.tensors) if t.quant is not None]
        i = _pick(rng, qs)
        q = g.tensors[i].quant
        if kind == "scale":
            q.scale = q.scale.copy()
            q.scale[0] = np.float32(_pick(rng, [0.0, -1.0, np.nan, np.inf, 1e-30, 1e30]))
            return f"scale t{i}={q.scale[0]}", g
        q.zero_point = q.zero_point.copy()
        q.zero_point[0] = int(_pick(rng, [300, -1000, 128, -129, 5]))
        return f"zero_point t{i}={q.zero_point[0]}", g
    if kind in ("index", "drop_input"):
        k = int(rng.integers(len(g.ops)))
        op = g.ops[k]
        if not op.inputs:
            return "noop", g
        p = int(rng.integers(len(op.inputs)))
        op.inputs[p] = -1 if kind == "drop_input" else int(rng.integers(len(g.tensors)))
        return f"{kind} op{k}.in{p}={op.inputs[p]}", g
    if kind == "dtype":
        i = _pick(rng, acts)
        g.tensors[i].dtype = _pick(rng, ["int32", "uint8", "int16", "float32"])
        return f"dtype t{i}={g.tensors[i].dtype}", g
    if kind == "op_kind":
        k = int(rng.integers(len(g.ops)))
        g.ops[k].kind = _pick(rng, ["CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D", "FULLY_CONNECTED"])
        return f"op_kind op{k}={g.ops[k].kind}", g
    return "noop", g


def flip_bytes(data: bytes, rng, n: int) -> bytes:
    b = bytearray(data)
    for _ in range(n):
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
    return bytes(b)


@dataclass
class Tally:
    tried: int = 0
    clean_errors: Counter = field(default_factory=Counter)  # by stage
    ran_ok: int = 0
    crashes: list = field(default_factory=list)  # (what, stage, exception text)
    mismatches: list = field(default_factory=list)
    slow: list = field(default_factory=list)


def run_one(what: str, data: bytes, work: Path, tally: Tally, asan: bool = False, budget_s: float = 10.0) -> None:
    """One mutant through every stage; records the outcome in `tally`."""
    from harness import reference
    from harness.engines.native import generate
    from harness.targets.host import HostModel, run_sanitized

    tally.tried += 1
    t0 = time.monotonic()
    stage = "load"
    try:
        g = load_model(data, name="mutant")
        x = [np.random.default_rng(0).integers(-128, 128, size=g.tensors[t].shape, dtype=np.int8) for t in g.inputs]
        if any(g.tensors[t].dtype != "int8" for t in g.inputs):
            x = [np.random.default_rng(0).random(g.tensors[t].shape).astype(np.float32) for t in g.inputs]
        stage = "reference"
        want = reference.run(g, x)
        stage = "codegen"
        cg = generate(g, work / "gen", fuse=True)
        stage = "host"
        from harness.model.boundary import split_boundary

        interior = split_boundary(g)[0]
        xi = [np.asarray(reference.run_all(g, x)[t]) for t in interior.inputs]
        got = HostModel(cg, cache_dir=work / "host").run(xi)
        wi = [np.asarray(reference.run_all(g, x)[t]) for t in interior.outputs]
        if asan:
            stage = "asan"
            got_asan = run_sanitized(cg, xi, work / "asan")
            if not all(np.array_equal(a, b) for a, b in zip(got_asan, wi, strict=True)):
                tally.mismatches.append((what, "asan"))
        if not all(
            np.array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)) for a, b in zip(got, wi, strict=True)
        ):
            tally.mismatches.append((what, "host"))
        del want
        tally.ran_ok += 1
    except HarnessError:
        tally.clean_errors[stage] += 1
    except Exception as e:  # noqa: BLE001 - a crash is what we are looking for
        tally.crashes.append((what, stage, f"{type(e).__name__}: {e}"[:300], traceback.format_exc(limit=-3)))
    dt = time.monotonic() - t0
    if dt > budget_s:
        tally.slow.append((what, round(dt, 1)))


def fuzz(n: int, seed: int, work: Path, asan_every: int = 0) -> Tally:
    rng = np.random.default_rng(seed)
    seeds = seed_models()
    graphs = [(name, load_model(data, name=name)) for name, data in seeds]
    tally = Tally()
    for i in range(n):
        name, g = graphs[i % len(graphs)]
        if i % 4 == 3:  # a quarter: raw bit flips of the file
            data = flip_bytes(seeds[i % len(seeds)][1], rng, int(rng.integers(1, 8)))
            what = f"{name}: {i}: byte flips"
        else:
            desc, m = mutate(g, rng)
            try:
                data = to_tflite_bytes(m, check=False)
            except Exception as e:  # noqa: BLE001 - the writer cannot express this mutant: not a file
                tally.clean_errors["unwritable"] += 1
                del e
                continue
            what = f"{name}: {i}: {desc}"
        run_one(what, data, work / f"m{i}", tally, asan=bool(asan_every) and i % asan_every == 0)
    return tally


def summary(t: Tally) -> str:
    clean = sum(t.clean_errors.values())
    return (
        f"tried {t.tried}, clean errors {clean} {dict(t.clean_errors)}, ran bit-exact {t.ran_ok - len(t.mismatches)}, "
        f"crashes {len(t.crashes)}, mismatches {len(t.mismatches)}, slow {len(t.slow)}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--asan", type=int, default=0, help="also run every N-th mutant under AddressSanitizer")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t = fuzz(a.n, a.seed, Path(d), a.asan)
    print(summary(t))
    for c in t.crashes[:30]:
        print("CRASH", c[0], "|", c[1], "|", c[2])
        print("   ", c[3].strip().splitlines()[-3:])
    for m in t.mismatches[:20]:
        print("MISMATCH", m)
    for s in t.slow[:20]:
        print("SLOW", s)
    return 1 if t.crashes or t.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
