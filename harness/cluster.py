"""A nightly matrix over a Dask cluster (`distributed`): `harness worker` on each lab host, `harness nightly
--scheduler tcp://HOST:8786` (or `local:N`, a LocalCluster of N worker processes here) on the coordinator.

Each cell is a task that asks for one unit of a Dask worker resource: `board-<name>` for a cell that runs
on a physical board (so one board never runs two cells at once), else `qemu` (a QEMU slot). The worker
runs the cell in a child process of its own, against a scratch results store, and sends back the records
and files the cell wrote; the coordinator alone appends them to results/, so the store keeps one writer.
Model files go to the workers as bytes (no shared file system). A worker that dies mid-cell (kill -9, a
host lost) has its cell re-run by Dask on another worker with the resource, up to ALLOWED_FAILURES times;
after that, or when no worker has the resource a cell needs, the cell is recorded as failed with why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import results
from harness.errors import HarnessError

Say = Callable[[str], None]

ALLOWED_FAILURES = 2  # worker deaths a cell survives (Dask re-runs it elsewhere) before it is failed
ORPHAN_GRACE = 30.0  # seconds a cell waits for a worker with its resource to come back before it is failed
QEMU = "qemu"


class ClusterError(HarnessError):
    """The scheduler cannot be reached or the cluster cannot run the matrix."""


def board_resource(board: str) -> str:
    return f"board-{board}"


def probe_resource(unique_id: str) -> str:
    return f"probe-{unique_id}"


# --- the worker side ----------------------------------------------------------------------------------


def worker_resources(qemu: int | None = None, probes: list[Any] | None = None) -> dict[str, int]:
    """What a lab host offers: `qemu` slots (default its core count) and, for every attached probe that
    matches a board of boards.toml, that board and the probe's unique id, one each."""
    from harness import probes as probes_mod

    res = {QEMU: int(qemu if qemu is not None else (os.cpu_count() or 1))}
    for p in probes_mod.list_probes() if probes is None else probes:
        if p.board:
            res[board_resource(p.board)] = res.get(board_resource(p.board), 0) + 1
            res[probe_resource(p.unique_id)] = 1
    return res


def worker_command(scheduler: str, resources: dict[str, int], name: str | None = None) -> list[str]:
    """The `dask worker` command line for these resources: one process with a thread per slot (a cell's
    work runs in a child process of its own, so the threads only wait)."""
    slots = max(1, sum(v for k, v in resources.items() if k == QEMU or k.startswith("board-")))
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nworkers", "1"]
    cmd += ["--nthreads", str(slots), "--resources", ",".join(f"{k}={v}" for k, v in sorted(resources.items()))]
    return cmd + (["--name", name] if name else [])


def run_worker(scheduler: str, qemu: int | None, dry_run: bool, say: Say, name: str | None = None) -> int:
    """`harness worker`: advertise this host's resources to the scheduler and serve cells until stopped."""
    _check_scheduler_address(scheduler)
    res = worker_resources(qemu)
    say(f"resources: {', '.join(f'{k}: {v}' for k, v in sorted(res.items()))}")
    if not any(k.startswith("board-") for k in res):
        say("no probe of a known board attached: a QEMU-only worker")
    cmd = worker_command(scheduler, res, name)
    if dry_run:
        say("would run: " + " ".join(cmd))
        return 0
    _require_distributed()
    from harness.lifetime import tied_to_parent

    say(f"joining {scheduler} (Ctrl-C to leave; a cell running here is then re-run elsewhere)")
    p = subprocess.Popen(tied_to_parent(cmd))  # a kill -9 of this process takes the worker with it

    def leave(signum, _frame):  # SIGTERM (a service manager stopping it): leave as Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        return p.wait()
    except KeyboardInterrupt:
        p.send_signal(signal.SIGTERM)  # the worker says goodbye to the scheduler, which re-runs its cells
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cell_task(cell, run_id: str, matrix: str, blob: tuple[str, bytes] | None, build_dir: str | None):
    """A Dask task: one cell, run in a child process against a scratch results store; returns the cell's
    result, the records and files it wrote, and where and when it ran. Never raises for a failed cell."""
    scratch = Path(tempfile.mkdtemp(prefix="harness-cell-"))
    named = cell.model
    try:
        if blob is not None:  # the model's bytes, written where this worker can read them
            name, data = blob
            path = scratch / "model" / hashlib.sha256(data).hexdigest()[:16] / name
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
            cell = dataclasses.replace(cell, model=str(path))
        store = scratch / "results"
        started = time.time()
        res = _run_child(cell, run_id, matrix, str(store), build_dir, scratch / "result.json")
        ended = time.time()
        records, files = _collect_store(store)
        if blob is not None:  # the records name the model as the matrix did, not by this scratch copy
            text = json.dumps([res, records]).replace(json.dumps(cell.model)[1:-1], json.dumps(named)[1:-1])
            res, records = json.loads(text)
        where = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "ended": ended}
        return {"res": res, "records": records, "files": files, "scratch": str(store), "worker": where}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_child(cell, run_id: str, matrix: str, store: str, build_dir: str | None, out: Path) -> dict[str, Any]:
    """run_cell in a child process (killed with this worker, and with its process group when the cell
    outlives its cell_timeout), so a worker thread never forks QEMUs or reference pools itself. The result
    comes back in the file `out`, so nothing the cell prints can garble it."""
    from harness.lifetime import tied_to_parent
    from harness.nightly import _cell_head, _hung

    payload = pickle.dumps((cell, run_id, matrix, store, build_dir, str(out)))
    cmd = tied_to_parent([sys.executable, "-c", "from harness.cluster import _child_main; _child_main()"])
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)  # fmt: skip
    try:
        _, err = p.communicate(payload, timeout=cell.cell_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return _hung(cell, run_id, matrix, store)  # as a local run records it (into the scratch store)
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["nothing on stderr"]
        reason = f"the cell's process died (exit code {p.returncode}) before recording a result: {tail[0]}"
        return {**_cell_head(cell, run_id, matrix), "status": "failed", "error": "Crashed", "reason": reason,
                "metrics": {}}  # fmt: skip


def _child_main() -> None:
    from harness.lifetime import die_with_parent
    from harness.nightly import run_cell

    die_with_parent()
    cell, run_id, matrix, store, build_dir, out = pickle.loads(sys.stdin.buffer.read())
    res = run_cell(cell, run_id, matrix, store, build_dir)
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(res, default=str))
    tmp.replace(out)  # whole or absent: a child killed mid-write leaves no half result


def _collect_store(store: Path) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, bytes]]:
    """The records (kind, record) of a scratch store's <kind>.jsonl files, and its other files by path."""
    records: list[tuple[str, dict[str, Any]]] = []
    files: dict[str, bytes] = {}
    if not store.exists():
        return records, files
    for f in sorted(store.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(store).as_posix()
        if f.parent == store and f.suffix == ".jsonl":
            records += [(f.stem, rec) for rec in results.read(f.stem, store)]
        else:
            files[rel] = f.read_bytes()
    return records, files


# --- the coordinator side -----------------------------------------------------------------------------


def _require_distributed():
    try:
        import distributed
    except ImportError as e:  # a dependency of the package: only a broken install lacks it
        raise ClusterError("the `distributed` package is not installed (pip install distributed)") from e
    return distributed


def _check_scheduler_address(scheduler: str) -> None:
    if scheduler.startswith("local:"):
        n = scheduler.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ClusterError(f"--scheduler local:N needs a number of workers >= 1, got {scheduler!r}")
        return
    if "://" not in scheduler:
        raise ClusterError(f"--scheduler must be tcp://HOST:PORT or local:N, got {scheduler!r}")


class Cluster:
    """A client of the scheduler: a LocalCluster of N worker processes for `local:N` (each one QEMU slot,
    no board), else the scheduler at the address. Closed (and a local cluster shut down) on exit."""

    def __init__(self, scheduler: str, connect_timeout: float = 10.0) -> None:
        _check_scheduler_address(scheduler)
        distributed = _require_distributed()
        import dask

        self.local = None
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
            if scheduler.startswith("local:"):
                n = int(scheduler.split(":", 1)[1])
                self.local = distributed.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, resources={QEMU: 1},
                    dashboard_address=":0", silence_logs=50,
                )  # fmt: skip
                self.client = distributed.Client(self.local)
            else:
                try:
                    self.client = distributed.Client(scheduler, timeout=connect_timeout)
                except OSError as e:
                    raise ClusterError(f"cannot reach the scheduler at {scheduler}: {e}") from e
        self.address = scheduler

    def resources(self) -> dict[str, dict[str, float]]:
        """Each worker's advertised resources."""
        info = self.client.scheduler_info()["workers"]
        return {addr: dict(w.get("resources") or {}) for addr, w in info.items()}

    def offered(self) -> set[str]:
        """The resources some worker offers now."""
        return {k for r in self.resources().values() for k, v in r.items() if v > 0}

    def close(self) -> None:
        self.client.close()
        if self.local is not None:
            self.local.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _what(resource: str) -> str:
    """A resource as a user says it: board nucleo-f746, or QEMU slots."""
    return f"board {resource.removeprefix('board-')}" if resource.startswith("board-") else "QEMU slots"


def cell_resource(cell, offered: set[str]) -> str:
    """The resource a cell's task asks for: its board's for a cell on hardware (an `auto` cell takes a QEMU
    slot when no worker has the board, as `auto` falls back to QEMU on one machine), else a QEMU slot."""
    if cell.target == "pyocd" or (cell.target == "auto" and board_resource(cell.board) in offered):
        return board_resource(cell.board)
    return QEMU


def _model_blob(cell) -> tuple[str, bytes] | None:
    """A model given as a file goes to the workers as its bytes; a zoo name travels as it is."""
    p = Path(cell.model)
    if cell.model.endswith(".tflite") or p.is_file():
        try:
            return p.name, p.read_bytes()
        except OSError as e:
            raise ClusterError(f"cannot read the model {cell.model}: {e.strerror or e}") from e
    return None


def run_cells_cluster(
    cells: list,
    run_id: str,
    matrix: str,
    scheduler: str,
    results_dir: str,
    build_dir: str | None,
    say: Say,
    status: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell as a task on the cluster; as each finishes, its records and files are written to
    `results_dir` here and its line appended to nightly.jsonl, as run_cells does locally."""
    from harness.nightly import CELLS_KIND, _cell_head, _failed_bench_record, _progress_line, safe_name

    done: dict[str, dict[str, Any]] = {}
    total = len(cells)

    def finish(cell, res: dict[str, Any]) -> None:
        done[cell.key] = res
        results.append(CELLS_KIND, res, results_dir)
        say(_progress_line(len(done), total, res))

    def fail(cell, error: str, reason: str) -> None:
        tag = {"run_id": run_id, "matrix": matrix, "cell": cell.key}
        results.append("bench", _failed_bench_record(cell, reason, tag), results_dir)
        finish(cell, {**_cell_head(cell, run_id, matrix), "status": "failed", "error": error, "reason": reason,
                      "metrics": {}})  # fmt: skip

    with Cluster(scheduler) as cl:
        distributed = _require_distributed()
        offered = cl.offered()
        link = cl.client.dashboard_link
        say(f"scheduler {scheduler}: {len(cl.resources())} worker(s)" + (f"; dashboard {link}" if link else ""))
        futures, needs = {}, {}
        for c in cells:
            need = cell_resource(c, offered)
            if need not in offered:
                what = _what(need)
                fail(c, "NoWorker", f"no worker of the cluster offers {what} (resource {need!r}): start "
                                    f"`harness worker --scheduler {scheduler}` on a host with it")  # fmt: skip
                continue
            key = f"cell-{run_id}-{safe_name(c.key)}"
            fut = cl.client.submit(run_cell_task, c, run_id, matrix, _model_blob(c), build_dir, key=key,
                                   resources={need: 1}, pure=False)  # fmt: skip
            futures[fut] = c
            needs[fut] = need
        pending = set(futures)
        last = 0.0
        orphaned: dict[Any, float] = {}  # a task whose resource no worker offers now: since when
        while pending:
            try:
                finished, pending = distributed.wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:  # none finished within the second: refresh the status line
                finished = set()
            for fut in finished:
                c = futures[fut]
                try:
                    out = fut.result()
                except distributed.KilledWorker as e:
                    fail(c, "WorkerLost", f"the workers running it died {ALLOWED_FAILURES + 1} times ({e})")
                    continue
                except Exception as e:  # noqa: BLE001 - a task's own error is recorded, never raised
                    fail(c, type(e).__name__, f"the task failed on the cluster: {type(e).__name__}: {e}")
                    continue
                _store(out, results_dir)
                res = out["res"]
                if res["status"] == "failed" and not any(kind == "bench" for kind, _ in out["records"]):
                    # the cell's process died or hung before its bench recorded anything: as a local run does
                    tag = {"run_id": run_id, "matrix": matrix, "cell": c.key}
                    results.append("bench", _failed_bench_record(c, res["reason"], tag), results_dir)
                res["worker"] = out["worker"]
                finish(c, res)
            now = time.monotonic()
            if pending and now - last >= 1.0:
                last = now
                if status is not None:
                    status(_status_line(cl, futures, pending, len(done), total))
                # the workers with a cell's resource all left (a lab host switched off): it would wait forever
                offered = cl.offered()
                for fut in list(pending):
                    if needs[fut] in offered:
                        orphaned.pop(fut, None)
                    elif now - orphaned.setdefault(fut, now) > ORPHAN_GRACE:
                        pending.discard(fut)
                        fut.cancel()
                        why = f"every worker offering {needs[fut]!r} left the cluster during the run (none came "
                        fail(futures[fut], "NoWorker", why + f"back within {ORPHAN_GRACE:g} s)")
    return [done[c.key] for c in cells]


def _status_line(cl: Cluster, futures, pending, n_done: int, total: int) -> str:
    """Cells done, at a worker (running, or waiting there for its resource) and not yet sent to one; and
    each worker's cells, by the worker's name."""
    try:
        processing = cl.client.processing()
        info = cl.client.scheduler_info()["workers"]
    except Exception:  # noqa: BLE001 - a status line is best effort
        processing, info = {}, {}
    keys = {f.key: futures[f].key for f in pending}
    at = {w: [keys[k] for k in ks if k in keys] for w, ks in processing.items()}
    n_at = sum(len(v) for v in at.values())

    def name(w: str) -> str:
        n = str(info.get(w, {}).get("name", ""))
        return n if n and not n.isdigit() and "://" not in n else w.rsplit("/", 1)[-1]

    per = "; ".join(f"{name(w)}: {', '.join(v)}" for w, v in sorted(at.items()) if v)
    return f"[{n_done}/{total} done, {n_at} at workers, {len(pending) - n_at} queued] {per}"


def _store(out: dict[str, Any], results_dir: str) -> None:
    """A finished task's files and records, written into the coordinator's store (paths that named the
    worker's scratch store now name this one)."""
    root = results.results_dir(results_dir)
    scratch = out["scratch"]
    for rel, data in out["files"].items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    for kind, rec in out["records"]:
        rec = json.loads(json.dumps(rec).replace(scratch, str(root)))
        results.append(kind, rec, results_dir)


# --- accuracy shards ------------------------------------------------------------------------------------

SHARD = 64  # samples a task runs: two RUN_STAGED batches on QEMU, a QEMU start-up spread over them
_prepared: dict[tuple, Any] = {}  # per worker process: (model sha256, board, target, opt, engine) -> engine
_preparing = threading.Lock()  # a worker's threads (one a slot) build a model once, not side by side


def accuracy_shard_task(model: bytes, board: str, target: str, opt: str, engine_name: str, build_dir, xs, timeout):
    """On a worker: a shard of int8 inputs through this worker's device and through the host reference.
    The model comes as bytes; its firmware is generated and built once per worker process (and cached on
    disk by content, as any build)."""
    import numpy as np

    from harness import bench, reference
    from harness.boards import get_board
    from harness.model import load_model

    key = (hashlib.sha256(model).hexdigest(), board, target, opt, engine_name)
    with _preparing:
        if key not in _prepared:
            graph = load_model(model, name="model")
            eng = bench.prepare(get_board(board), graph, target, opt, build_dir, engine=engine_name)
            _prepared[key] = (eng, reference.Prepared(eng.interior))
        eng, ref = _prepared[key]
    t0 = time.time()
    flat = lambda a: np.asarray(a).reshape(-1).astype(np.int8).tolist()  # noqa: E731
    hosts: list = []  # the host reference, in a thread while QEMU (a process of its own) runs the shard
    referee = threading.Thread(target=lambda: hosts.extend(flat(ref.run([x])[0]) for x in xs), daemon=True)
    referee.start()
    with eng.open(timeout) as runner:
        ran = runner.run_batch([[x] for x in xs]) if len(xs) > 1 else None
        if ran is None:
            ran = [runner.run([x], repetitions=1) for x in xs]
        hello = runner.hello
        moved = (runner.input_path, runner.input_bytes, runner.input_seconds)
    referee.join()
    if len(hosts) != len(xs):
        raise ClusterError("the host reference failed on this worker (see its log)")
    return {
        "device": [flat(outs[0]) for outs, _ in ran],
        "ticks": [int(st.counts[0]) for _, st in ran],
        "host": hosts,
        "counter_source": hello.counter_source,
        "clock_hz": hello.clock_hz,
        "moved": moved,
        "worker": {"host": socket.gethostname(), "pid": os.getpid(), "started": t0, "ended": time.time()},
    }


def run_samples_cluster(engine, board, fitted, pending: list[int], path: Path, scheduler: str, *, opt: str,
                        build_dir, timeout: float, record, say: Say, ready=lambda: None):  # fmt: skip
    """The pending samples of an accuracy run as shards over the cluster's workers; `record(recs, moved)`
    appends each finished shard's records (the coordinator alone writes the run's samples file); `ready()`
    is called once the shards are sent. Returns the Counting and the number of workers."""
    import types

    import numpy as np

    from harness.accuracy import Counting
    from harness.model import to_tflite_bytes

    if engine.target_kind not in ("qemu", "pyocd"):
        raise ClusterError(f"--scheduler runs samples on QEMU or on boards, not on the {engine.target_kind} target")
    need = QEMU if engine.target_kind == "qemu" else board_resource(board.name)
    with Cluster(scheduler) as cl:
        distributed = _require_distributed()
        workers = cl.resources()
        able = [w for w, r in workers.items() if r.get(need, 0) > 0]
        if not able:
            what = _what(need)
            raise ClusterError(f"no worker of the cluster at {scheduler} offers {what} (resource {need!r})")
        link = cl.client.dashboard_link
        say(f"scheduler {scheduler}: {len(able)} worker(s) for {need}" + (f"; dashboard {link}" if link else ""))
        model = cl.client.scatter(to_tflite_bytes(engine.graph), broadcast=True)
        futures = {}
        for k in range(0, len(pending), SHARD):
            ids = pending[k : k + SHARD]
            xs = np.stack([np.asarray(fitted.x[i], dtype=np.int8) for i in ids])
            fut = cl.client.submit(accuracy_shard_task, model, board.name, engine.target_kind, opt, engine.spec.engine,
                                   build_dir, xs, timeout, resources={need: 1}, pure=False)  # fmt: skip
            futures[fut] = ids
        ready()
        counting = None
        for fut in distributed.as_completed(futures):
            ids = futures[fut]
            try:
                out = fut.result()
            except distributed.KilledWorker as e:
                raise ClusterError(f"the workers running samples {ids[0]}..{ids[-1]} died {ALLOWED_FAILURES + 1} "
                                   f"times ({e}); the samples done are kept: resume the run") from e  # fmt: skip
            except HarnessError:
                raise
            except Exception as e:  # noqa: BLE001 - a worker's error, said as the run's
                raise ClusterError(f"samples {ids[0]}..{ids[-1]} failed on the cluster: {type(e).__name__}: {e}") from e
            if counting is None:
                counting = Counting.of(board, types.SimpleNamespace(counter_source=out["counter_source"],
                                                                    clock_hz=out["clock_hz"]))  # fmt: skip
            recs = []
            for i, dev, host, ticks in zip(ids, out["device"], out["host"], out["ticks"], strict=True):
                recs.append({"i": i, "label": int(fitted.labels[i]), "device": dev, "host": host, "ticks": ticks,
                             "count": round(ticks * counting.per_tick)})  # fmt: skip
            record(recs, out["moved"])
        return counting, len(able)
