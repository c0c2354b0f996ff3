"""kill -9 at random moments, counted: what outlives a killed run, and whether a killed nightly resumes.

    python tests/kill_runs.py [--accuracy 5] [--nightly 3] [--seed 1]

Each `harness accuracy` (digits_cnn on qemu-m4) is killed with SIGKILL a random 0-3 s after its QEMU
started; each nightly (3 cells) a random 0-20 s after it began. It prints, per kind, the kills, the
processes still alive 5 s after (QEMU, cell workers), the store records appended after the kill, and for
the nightlies whether `--resume` reached a verdict with every cell recorded exactly once.
tests/test_kill.py runs one of each in the suite.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_kill import MATRIX, ROOT, alive, children, wait_for  # noqa: E402

from harness import results  # noqa: E402
from harness.nightly import CELLS_KIND, RUNS_KIND, run_nightly  # noqa: E402


def descendants(pid: int) -> list[int]:
    out = []
    for p, _ in children(pid):
        out += [p, *descendants(p)]
    return out


def records(rdir: Path) -> int:
    return sum(len(list(results.read(k, rdir))) for k in ("bench", "accuracy", CELLS_KIND))


def kill(run: subprocess.Popen, rdir: Path, tree: list[int]) -> tuple[int, int]:
    """SIGKILL `run`; (processes of `tree` alive 5 s after, store records appended after the kill)."""
    before = records(rdir)
    run.send_signal(signal.SIGKILL)
    run.wait()
    time.sleep(5)
    return sum(alive(p) for p in tree), records(rdir) - before


def kill_accuracy(rng: random.Random, tmp: Path, build: Path) -> tuple[int, int]:
    """(processes alive 5 s after the kill, records appended after it)."""
    rdir = tmp / "r"
    cmd = [sys.executable, "-m", "harness", "accuracy", "--board", "qemu-m4", "--model", "digits_cnn",
           "--dataset", "digits", "--results", str(rdir), "--no-resume"]  # fmt: skip
    env = {**os.environ, "HARNESS_BUILD_DIR": str(build)}
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_for(lambda: any("qemu" in n for _, n in children(run.pid)), 120):
            raise SystemExit("no QEMU started")
        time.sleep(rng.uniform(0, 3))
        return kill(run, rdir, descendants(run.pid))
    finally:
        if run.poll() is None:
            run.kill()


def kill_nightly(rng: random.Random, tmp: Path, build: Path) -> tuple[int, int, bool]:
    """(processes alive 5 s after the kill, records appended after it, resumed whole)."""
    (tmp / "m.toml").write_text(MATRIX)
    rdir = tmp / "r"
    cmd = [sys.executable, "-m", "harness", "nightly", "--matrix", str(tmp / "m.toml"), "--results", str(rdir)]
    env = {**os.environ, "HARNESS_BUILD_DIR": str(build)}
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + rng.uniform(0, 20)
    tree: list[int] = []
    try:
        while time.monotonic() < end and run.poll() is None:
            tree = sorted(set(tree) | set(descendants(run.pid)))
            time.sleep(0.05)
        left, appended = kill(run, rdir, tree)
    finally:
        if run.poll() is None:
            run.kill()
    if list(results.read(RUNS_KIND, rdir)):  # it finished before the kill: nothing to resume
        return left, appended, True
    ids = {r["nightly_run"] for r in results.read(CELLS_KIND, rdir)}
    if not ids:  # killed before its first cell was recorded: a new run is the only way on
        done = run_nightly(tmp / "m.toml", results_dir=rdir, build_dir=str(build), say=lambda s: None)
    else:
        done = run_nightly(tmp / "m.toml", results_dir=rdir, build_dir=str(build), say=lambda s: None,
                           resume=ids.pop())  # fmt: skip
    cells = [r for r in results.read(CELLS_KIND, rdir) if r["nightly_run"] == done.run_id]
    whole = done.exit_code == 0 and len(cells) == 3 == len({r["cell"] for r in cells})
    return left, appended, whole


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accuracy", type=int, default=5)
    ap.add_argument("--nightly", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        build = Path(d) / "build"  # shared, so only the first run of each builds
        runs = [kill_accuracy(rng, Path(tempfile.mkdtemp(dir=d)), build) for _ in range(a.accuracy)]
        left, appended = sum(r[0] for r in runs), sum(r[1] for r in runs)
        print(f"accuracy: {a.accuracy} kills, {left} processes alive 5 s after, {appended} records after the kill")
        bad += left + appended
        runs3 = [kill_nightly(rng, Path(tempfile.mkdtemp(dir=d)), build) for _ in range(a.nightly)]
        left, appended = sum(r[0] for r in runs3), sum(r[1] for r in runs3)
        whole = sum(r[2] for r in runs3)
        print(f"nightly: {a.nightly} kills, {left} processes alive 5 s after, {appended} records after the kill, "
              f"{whole} of {a.nightly} resumed to a verdict with every cell once")  # fmt: skip
        bad += left + appended + (a.nightly - whole)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
