"""Bench runs through a noisy serial link (harness/targets/noise.py), against a clean run:

    python tests/link_noise.py --runs 40 [--model mlperf_kws] [--board qemu-m4] [--flip 0.01 --drop 0.005 --dup 0.005]
                                         [--repetitions 5] [--layers]

prints runs completed with figures identical to the clean run's, completed with other figures (wrong),
failed, and each run's time over the clean run's. tests/test_link_noise.py runs one of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.bench import BenchOptions, run_bench  # noqa: E402
from harness.errors import HarnessError  # noqa: E402


def figures(r) -> tuple:
    f = r["figures"]
    layers = repr(r.get("layers"))  # per-layer figures, in a profiling run
    return tuple(f["count"]["all"]), f["peak_stack_bytes"], f["arena_high_water_bytes"], r["outputs_match"], layers


def one(model: str, board: str, noise: str | None, timeout: float = 120.0, **bench) -> tuple[tuple | None, float, str]:
    if noise:
        os.environ["HARNESS_LINK_NOISE"] = noise
    else:
        os.environ.pop("HARNESS_LINK_NOISE", None)
    t0 = time.monotonic()
    try:
        r = run_bench(BenchOptions(board=board, model=model, target="qemu", record=False, timeout=timeout, **bench))
        return figures(r), time.monotonic() - t0, ""
    except HarnessError as e:
        return None, time.monotonic() - t0, f"{type(e).__name__}: {e}"[:200]
    finally:
        os.environ.pop("HARNESS_LINK_NOISE", None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--model", default="mlperf_kws")
    ap.add_argument("--board", default="qemu-m4")
    ap.add_argument("--flip", type=float, default=0.01)
    ap.add_argument("--drop", type=float, default=0.005)
    ap.add_argument("--dup", type=float, default=0.005)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--layers", action="store_true", help="a profiling build: per-layer figures too")
    a = ap.parse_args()
    bench = {"repetitions": a.repetitions, "layers": a.layers}
    one(a.model, a.board, None, **bench)  # builds the firmware (or finds it cached): the clean time is the link's
    clean, t_clean, why = one(a.model, a.board, None, **bench)
    if clean is None:
        print("the clean run failed:", why)
        return 2
    same = wrong = failed = 0
    ratios = []
    for seed in range(a.runs):
        got, t, why = one(a.model, a.board, f"flip={a.flip},drop={a.drop},dup={a.dup},seed={seed}", **bench)
        ratios.append(t / t_clean)
        if t > 3 * t_clean:
            print(f"run {seed}: {t:.1f} s, {t / t_clean:.1f}x the clean run")
        if got is None:
            failed += 1
            print(f"run {seed}: FAILED after {t:.1f} s: {why}")
        elif got == clean:
            same += 1
        else:
            wrong += 1
            print(f"run {seed}: WRONG figures {got} (clean {clean})")
    ratios.sort()
    print(f"{a.runs} runs at flip {a.flip}, drop {a.drop}, dup {a.dup}: {same} identical to the clean run, {wrong} "
          f"wrong, {failed} failed; time over clean ({t_clean:.1f} s): median {ratios[len(ratios) // 2]:.1f}x, "
          f"max {ratios[-1]:.1f}x")  # fmt: skip
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
