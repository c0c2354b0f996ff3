"""kill -9: nothing the harness started outlives it (QEMU, nightly cell workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_tools

ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes whose parent is `pid`."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            out.append((int(d.name), name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_tied_program_dies_with_its_parent():
    code = (
        "import subprocess, time; from harness.lifetime import tied_to_parent; "
        "p = subprocess.Popen(tied_to_parent(['sleep', '60'])); print(p.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    # setpriv sets the signal, then execs sleep: once the child is `sleep`, it is armed
    assert wait_for(lambda: any(p == child and n == "sleep" for p, n in children(parent.pid)), 5)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_for(lambda: not alive(child), 5), "the child outlived its killed parent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_kill_9_of_harness_accuracy_takes_its_qemu_and_workers_with_it(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    cmd = [sys.executable, "-m", "harness", "accuracy", "--board", "qemu-m4", "--model", "digits_cnn",
           "--dataset", "digits", "--results", str(tmp_path / "r")]  # fmt: skip
    env = {**os.environ, "HARNESS_BUILD_DIR": str(tmp_path / "b")}
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # every child: QEMU and the host reference's worker processes
        def both() -> bool:
            names = [n for _, n in children(run.pid)]
            return any("qemu" in n for n in names) and any("qemu" not in n for n in names)

        assert wait_for(both, 120), "no QEMU, or no reference worker beside it"
        started = [p for p, _ in children(run.pid)]
        run.send_signal(signal.SIGKILL)
        run.wait()
        left = [p for p in started if alive(p)]
        assert wait_for(lambda: not any(alive(p) for p in started), 5), f"{left} outlived the killed harness"
    finally:
        if run.poll() is None:
            run.kill()


MATRIX = """
name = "killme"
[defaults]
target = "qemu"
inputs = 1
repetitions = 1
warmup = 0
[matrix]
boards = ["qemu-m4"]
models = ["mlperf_ad", "digits_cnn", "mlperf_kws"]
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_killed_nightly_leaves_no_worker_and_resumes_to_its_verdict(tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from harness import results
    from harness.nightly import CELLS_KIND, RUNS_KIND, run_nightly
    from harness.report import metric_history

    (tmp_path / "m.toml").write_text(MATRIX)
    rdir = tmp_path / "r"
    cmd = [sys.executable, "-m", "harness", "nightly", "--matrix", str(tmp_path / "m.toml"), "--results", str(rdir)]
    env = {**os.environ, "HARNESS_BUILD_DIR": str(tmp_path / "b")}
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(list(results.read(CELLS_KIND, rdir))) >= 1, 180), "no cell finished"
        workers = [p for p, _ in children(run.pid)]
        grandchildren = [p for w in workers for p, _ in children(w)]
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
    assert wait_for(lambda: not any(alive(p) for p in workers + grandchildren), 5), "a worker or QEMU outlived it"
    cells_then = len(list(results.read(CELLS_KIND, rdir)))
    bench_then = len(list(results.read("bench", rdir)))
    time.sleep(2)
    assert len(list(results.read("bench", rdir))) == bench_then  # nothing appended after the kill
    assert not list(results.read(RUNS_KIND, rdir))  # no verdict
    (killed,) = {r["nightly_run"] for r in results.read(CELLS_KIND, rdir)}
    assert metric_history("qemu-m4", "mlperf_ad", "instructions", rdir) == []  # history leaves it out
    said: list[str] = []
    done = run_nightly(tmp_path / "m.toml", results_dir=rdir, build_dir=str(tmp_path / "b"), say=said.append,
                       resume=killed)  # fmt: skip
    assert done.run_id == killed and len(done.cells) == 3 and done.exit_code == 0
    assert any(f"{cells_then} of 3 cells already recorded" in s for s in said)
    assert len(list(results.read(CELLS_KIND, rdir))) == 3  # the kept cells were not run again
    assert (done.report_dir / "report.html").is_file()
    with pytest.raises(Exception, match="finished already"):
        run_nightly(tmp_path / "m.toml", results_dir=rdir, resume=killed)
