"""Nightly cells on a real Dask cluster: `distributed.LocalCluster`s of worker processes on this machine,
through the same paths a lab uses (`--scheduler local:N`, and a scheduler's tcp:// address).

Against a local `-j 1` run of the same matrix the figures and verdicts are equal; the coordinator alone
writes the store (one line per cell); a cell needing a board no worker offers fails at once with why; a
worker killed with SIGKILL mid-cell has its cell re-run on a worker that lives, recorded once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import require_tools

from harness import results
from harness.cli import main
from harness.cluster import QEMU, worker_command, worker_resources
from harness.nightly import CELLS_KIND, run_nightly
from harness.probes import ProbeInfo

distributed = pytest.importorskip("distributed")

MATRIX = """
name = "c"
[defaults]
target = "qemu"
inputs = 1
repetitions = 1
[matrix]
boards = ["nucleo-f746"]
models = ["mlperf_ad"]
[[cells]]
board = "nucleo-f412"
model = "digits_cnn"
dataset = "digits"
limit = 40
{extra}
"""


def _matrix(tmp_path: Path, extra: str = "") -> str:
    p = tmp_path / "m.toml"
    p.write_text(MATRIX.format(extra=extra))
    return str(p)


def _nightly_while(tmp_path: Path, cluster, client, action):
    """The matrix run on `cluster` while `action` runs in a thread; the client and cluster closed after."""
    t = threading.Thread(target=action)
    try:
        t.start()
        run = run_nightly(_matrix(tmp_path), 1, tmp_path / "r", build_dir=str(tmp_path / "b"), reports=False,
                          scheduler=cluster.scheduler_address)  # fmt: skip
        t.join()
    finally:
        client.close()
        cluster.close()
    return run


def _figures(run) -> dict[str, tuple]:
    keep = ("instructions", "peak_sram_bytes", "flash_bytes", "accuracy", "agreement")
    return {
        c["cell"]: (c["status"], c["verdict"]["status"], tuple(c["metrics"].get(k) for k in keep)) for c in run.cells
    }


def test_worker_advertises_boards_and_qemu_slots(capsys):
    probe = ProbeInfo("0670FF3A", "STM", "STLINK-V3", "", "0816", "NUCLEO-F746ZG", "nucleo-f746", "/dev/ttyACM0")
    stray = ProbeInfo("99", "SEGGER", "J-Link", "", "", "", "", "")  # no board of ours: not advertised
    res = worker_resources(qemu=3, probes=[probe, stray])
    assert res == {QEMU: 3, "board-nucleo-f746": 1, "probe-0670FF3A": 1}
    cmd = worker_command("tcp://lab1:8786", res)
    assert cmd[-2:] == ["--resources", "board-nucleo-f746=1,probe-0670FF3A=1,qemu=3"]
    assert cmd[cmd.index("--nthreads") + 1] == "4"  # a thread per slot: 3 QEMU, 1 board
    # no probe attached here: a QEMU-only worker, said so, with --dry-run starting nothing
    assert main(["worker", "--scheduler", "tcp://127.0.0.1:1", "--qemu", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "qemu: 2" in out and "QEMU-only worker" in out and "dask_worker tcp://127.0.0.1:1" in out
    assert main(["worker", "--scheduler", "lab1:8786", "--dry-run"]) == 2
    assert "tcp://HOST:PORT or local:N" in capsys.readouterr().err


def test_cluster_run_equals_a_local_run_and_the_coordinator_writes_the_store(tmp_path):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    m = _matrix(tmp_path)
    local = run_nightly(m, 1, tmp_path / "local", build_dir=str(tmp_path / "b1"), reports=False)
    said: list[str] = []
    dist = run_nightly(m, 1, tmp_path / "dist", build_dir=str(tmp_path / "b2"), reports=False,
                       scheduler="local:2", say=said.append)  # fmt: skip
    assert local.exit_code == dist.exit_code == 0
    assert _figures(dist) == _figures(local)
    assert any("on the cluster at local:2" in s for s in said)
    # one line per cell in the coordinator's store, each naming the worker process that ran it
    lines = [r for r in results.read(CELLS_KIND, tmp_path / "dist") if r["nightly_run"] == dist.run_id]
    assert sorted(r["cell"] for r in lines) == sorted(_figures(local))
    assert all(r["worker"]["pid"] != os.getpid() for r in lines)
    assert len(list(results.read("bench", tmp_path / "dist"))) == len(lines)
    (acc,) = results.read("accuracy", tmp_path / "dist")  # the digits cell's, and its samples came too
    assert acc["figures"]["samples"] == 40
    assert Path(acc["report_dir"]).is_relative_to(tmp_path / "dist")
    samples = Path(acc["report_dir"]) / "samples.jsonl"
    assert len(samples.read_text().splitlines()) == 40


def test_a_cell_needing_a_board_no_worker_has_fails_with_the_reason(tmp_path):
    extra = '[[cells]]\nboard = "nucleo-f746"\nmodel = "digits_cnn"\ntarget = "pyocd"\n'
    t0 = time.monotonic()
    run = run_nightly(_matrix(tmp_path, extra), 1, tmp_path / "r", build_dir=str(tmp_path / "b"), reports=False,
                      scheduler="local:1")  # fmt: skip
    board = next(c for c in run.cells if c["target"] == "pyocd")
    assert board["status"] == "failed" and board["error"] == "NoWorker"
    assert "no worker of the cluster offers board nucleo-f746" in board["reason"]
    assert "harness worker --scheduler local:1" in board["reason"]
    assert run.exit_code == 1 and time.monotonic() - t0 < 120
    assert [c["status"] for c in run.cells if c["target"] != "pyocd"] == ["ok", "ok"]  # the others ran


def test_a_worker_killed_mid_cell_has_its_cell_run_elsewhere_once(tmp_path):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           resources={QEMU: 1}, dashboard_address=":0")  # fmt: skip
    client = distributed.Client(cluster)
    killed: list[int] = []

    def kill_the_first_busy_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if any(str(k).startswith("cell-") for k in keys)]
            if busy:
                time.sleep(1.0)  # into the cell: its child is building or running QEMU
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    run = _nightly_while(tmp_path, cluster, client, kill_the_first_busy_worker)
    assert killed, "no cell was seen running"
    assert run.exit_code == 0 and [c["status"] for c in run.cells] == ["ok", "ok"]
    assert all(c["worker"]["pid"] != killed[0] for c in run.cells)  # re-run by a worker that lives
    lines = [r for r in results.read(CELLS_KIND, tmp_path / "r") if r["nightly_run"] == run.run_id]
    assert sorted(r["cell"] for r in lines) == sorted(c["cell"] for c in run.cells)  # each exactly once
    bench = [r for r in results.read("bench", tmp_path / "r")]
    assert len(bench) == 2 and json.dumps(bench).count(run.run_id) >= 2


def _report_figures(rep: dict) -> str:
    return json.dumps({k: v for k, v in rep["figures"].items() if k != "latency"} | {
        "latency": {k: v for k, v in (rep["figures"].get("latency") or {}).items() if k != "all"}
    }, sort_keys=True, default=str)  # fmt: skip


def test_accuracy_sharded_over_two_workers_gives_a_local_runs_figures(tmp_path):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    from harness.accuracy import run_accuracy

    common = dict(results_dir=tmp_path / "r", build_dir=str(tmp_path / "b"), resume=False, progress=False,
                  write_report=False)  # fmt: skip
    local = run_accuracy("nucleo-f746", "digits_cnn", "digits", **common)
    said: list[str] = []
    dist = run_accuracy("nucleo-f746", "digits_cnn", "digits", scheduler="local:2", say=said.append, **common)
    assert dist["figures"]["samples"] == local["figures"]["samples"] == 450
    assert _report_figures(dist) == _report_figures(local)
    assert dist["throughput"]["jobs"] == 2 and dist["throughput"]["input_path"] == "semihosting"
    assert any("2 worker(s) for qemu" in s for s in said)
    lines = (Path(dist["report_dir"]) / "samples.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["i"] for x in lines) == list(range(450))  # each sample once


def test_accuracy_on_a_cluster_resumes_after_the_coordinator_is_killed(tmp_path):
    """kill -9 of `harness accuracy --scheduler` once a shard is recorded; the next run resumes it on the
    same cluster: every sample once, and the figures of a local run of the same data."""
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    import subprocess
    import sys

    import numpy as np

    from harness.accuracy import run_accuracy

    rng = np.random.default_rng(3)
    data = tmp_path / "kws.npz"
    np.savez(data, x=rng.integers(-128, 128, (256, 49, 10, 1), dtype=np.int8), y=rng.integers(0, 12, 256))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={QEMU: 1},
                                       dashboard_address=":0")  # fmt: skip
    try:
        argv = [sys.executable, "-m", "harness", "accuracy", "--board", "nucleo-f746", "--model", "mlperf_kws",
                "--dataset", str(data), "--results", str(tmp_path / "r"), "--scheduler", cluster.scheduler_address,
                "--json"]  # fmt: skip
        env = {**os.environ, "HARNESS_BUILD_DIR": str(tmp_path / "b")}
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        samples: list[Path] = []
        while time.monotonic() < deadline and p.poll() is None:
            samples = list((tmp_path / "r" / "reports").glob("*/samples.jsonl"))
            if samples and len(samples[0].read_text().splitlines()) >= 64:
                break
            time.sleep(0.02)
        p.kill()
        p.wait()
        assert samples, "no shard was recorded"
        before = len(samples[0].read_text().splitlines())
        assert 64 <= before < 256, f"{before} samples recorded before the kill"
        rep = run_accuracy("nucleo-f746", "mlperf_kws", str(data), results_dir=tmp_path / "r",
                           build_dir=str(tmp_path / "b"), progress=False, write_report=False,
                           scheduler=cluster.scheduler_address)  # fmt: skip
    finally:
        cluster.close()
    assert rep["resumed"] and rep["throughput"]["samples"] == 256 - before
    recorded = []
    for line in samples[0].read_text().splitlines():
        try:
            recorded.append(json.loads(line)["i"])
        except ValueError:  # the line the kill tore, ended by the resume: not a sample
            pass
    assert sorted(recorded) == list(range(256))
    local = run_accuracy("nucleo-f746", "mlperf_kws", str(data), results_dir=tmp_path / "l",
                         build_dir=str(tmp_path / "b"), resume=False, progress=False, write_report=False)  # fmt: skip
    assert _report_figures(rep) == _report_figures(local)


def test_two_cells_needing_one_board_never_overlap(tmp_path):
    """A lab: worker `lab-a` has the board (and two threads), `lab-b` only QEMU. The two `auto` cells on
    nucleo-f746 both ask for board-nucleo-f746, so they run on lab-a one after the other (here on its QEMU
    fallback, no probe being attached), while the QEMU cell may run beside them."""
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    from distributed import Nanny, Scheduler, SpecCluster

    spec = {
        "lab-a": {"cls": Nanny, "options": {"nthreads": 2, "resources": {QEMU: 1, "board-nucleo-f746": 1}}},
        "lab-b": {"cls": Nanny, "options": {"nthreads": 2, "resources": {QEMU: 1}}},
    }
    cluster = SpecCluster(spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}})
    cell = '[[cells]]\nboard = "nucleo-f746"\nmodel = "{}"\ntarget = "auto"\n'
    extra = cell.format("digits_cnn") + cell.format("mlperf_kws")
    try:
        client = distributed.Client(cluster)
        client.wait_for_workers(2)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        pid_of = {names[a]: pid for a, pid in client.run(os.getpid).items()}
        client.close()
        run = run_nightly(_matrix(tmp_path, extra), 1, tmp_path / "r", build_dir=str(tmp_path / "b"),
                          reports=False, scheduler=cluster.scheduler_address)  # fmt: skip
    finally:
        cluster.close()
    assert run.exit_code == 0, [c.get("reason") for c in run.cells]
    on_board = [c for c in run.cells if c["cell"] in ("nucleo-f746:digits_cnn", "nucleo-f746:mlperf_kws")]
    assert len(on_board) == 2
    a, b = sorted((c["worker"]["started"], c["worker"]["ended"], c["worker"]["pid"]) for c in on_board)
    assert a[1] <= b[0], f"the board's cells overlapped: {a} and {b}"
    assert a[2] == b[2] == pid_of["lab-a"]  # the one worker with the board ran both


def test_cells_whose_workers_all_left_are_failed_not_waited_for(tmp_path, monkeypatch):
    """The only worker leaves (its host switched off) with cells still to run: after the grace a worker
    has to come back, those cells are recorded as failed with why, and the run ends."""
    from harness import cluster as cluster_mod

    monkeypatch.setattr(cluster_mod, "ORPHAN_GRACE", 2.0)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, resources={QEMU: 1},
                                       dashboard_address=":0")  # fmt: skip
    client = distributed.Client(cluster)

    def leave_when_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(client.processing().values()):
            time.sleep(0.05)
        cluster.scale(0)

    t0 = time.monotonic()
    run = _nightly_while(tmp_path, cluster, client, leave_when_busy)
    assert time.monotonic() - t0 < 60
    lost = [c for c in run.cells if c["status"] == "failed"]
    assert lost and all("every worker offering 'qemu' left the cluster" in c["reason"] for c in lost)
    assert run.exit_code == (2 if len(lost) == len(run.cells) else 1)  # 2: no cell measured anything
    lines = [r for r in results.read(CELLS_KIND, tmp_path / "r") if r["nightly_run"] == run.run_id]
    assert len(lines) == len(run.cells) == 2  # every cell recorded once, run or not
