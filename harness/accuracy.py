"""Accuracy on the device: a labelled data set through the device, every output checked against the host.

For every sample the device's int8 output, the numpy reference's output, the label and the device's count
are appended to results/reports/<run id>/samples.jsonl the moment they arrive, so an interrupted run resumes
where it stopped (`resume=RUN_ID`, or automatically for the same model, board, target and data) without
redoing a sample. With `jobs` > 1 on QEMU (or the host target) several engines run side by side, each its
own `engine.open()`, pulling samples from one queue.

The figures (`compute_figures`) are pure functions of those per-sample records; harness.accuracy_report
turns them into the HTML page and the Markdown summary.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__, results
from harness.datasets import Dataset, FittedData, fit_to_model, input_spec, load_dataset, output_size
from harness.errors import HarnessError
from harness.lifetime import die_with_parent
from harness.protocol import LinkBroken

Say = Callable[[str], None]
SAMPLES_FILE = "samples.jsonl"
META_FILE = "meta.json"


def reports_dir(results_dir: str | Path | None = None) -> Path:
    return results.results_dir(results_dir) / "reports"


@dataclass
class Counting:
    """How a device count becomes a figure: QEMU ticks -> instructions, DWT ticks -> cycles."""

    source: str | None  # "qemu-icount" | "dwt" | None (host: nothing counted)
    unit: str | None  # "instructions" | "cycles"
    per_tick: float
    clock_hz: float | None
    note: str

    @classmethod
    def of(cls, board, hello) -> Counting:
        if hello is None:
            return cls(None, None, 1.0, None, "host target: the generated C on the host CPU, nothing counted")
        source = hello.counter_source
        if source == "qemu-icount":
            per_tick = float(board.qemu_machine.icount_per_tick)
            return cls(
                source,
                "instructions",
                per_tick,
                float(board.clock_hz),
                f"QEMU instruction counts (-icount, {per_tick:g} per SysTick tick), NOT cycles; latency is "
                f"an ESTIMATE at 1 instruction per cycle at the board's {board.clock_hz / 1e6:g} MHz",
            )
        return cls(
            source,
            "cycles",
            1.0,
            float(hello.clock_hz),
            f"{source} cycle counter at {hello.clock_hz / 1e6:g} MHz: measured",
        )


# --- the run -------------------------------------------------------------------------------------------


def run_accuracy(
    board,
    model,
    dataset,
    target: str = "auto",
    limit: int | None = None,
    jobs: int = 1,
    results_dir: str | Path | None = None,
    resume: bool | str = True,
    *,
    mapping: str | tuple[float, float] | None = None,
    resize_method: str | None = None,
    channel_order: str = "rgb",
    opt: str = "-O2",
    build_dir: str | None = None,
    timeout: float = 120.0,
    say: Say = lambda _m: None,
    progress: bool = True,
    on_sample: Callable[[int, int], None] | None = None,
    engine=None,
    input_path: str = "auto",
    write_report: bool = True,
    engine_name: str = "native",
    scheduler: str | None = None,
) -> dict[str, Any]:
    """Run `dataset` through `model` on `board` and return the report (also written under
    results/reports/<run id>/ and summarised in the results store as an "accuracy" record).

    board: a name or a Board; model: a zoo name, a .tflite path or a Graph; dataset: 'digits', a folder,
    an .npz path or a Dataset. resume: True = continue the latest unfinished run of the same model, board,
    target and data; a run id = continue that run; False = start afresh. `engine`: an Engine already made
    by harness.bench.prepare for this model and board (several data sets, or runs, on one build); it must
    be that model's, since the report and the resume key name the model. `engine_name`: which engine
    makes the firmware when no Engine is given (native, tflm-cmsis, tflm-ref). `scheduler`: the samples go
    in shards to the workers of a Dask cluster (tcp://HOST:PORT, or local:N) instead of `jobs` engines here;
    this process alone writes the run, so its resume works as a local run's (harness.cluster).
    """
    from harness.bench import model_digest, prepare

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise HarnessError(f"--limit must be a positive number of samples, got {limit!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise HarnessError(f"--jobs must be >= 1, got {jobs!r}")
    if timeout <= 0:
        raise HarnessError(f"--timeout must be > 0 seconds, got {timeout}")
    board = _board(board)
    graph, model_label = _model(model)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    # Everything about the data is checked before anything is built or run.
    fitted = fit_to_model(
        ds,
        input_spec(graph),
        output_size(graph),
        mapping=mapping,
        resize_method=resize_method,
        channel_order=channel_order,
    )
    total = len(fitted.x) if limit is None else max(0, min(int(limit), len(fitted.x)))
    # what was done to the user's data, said before anything runs (not only in the report)
    say(f"inputs: {fitted.mapping}")
    for note in fitted.notes:
        say(f"note: {note}")
    if engine is None:
        # the stages before the first sample (generating, building) said as they start: seconds otherwise silent
        stage = (lambda what, *_a, **_k: say(f"{what}...")) if progress else (lambda *_a, **_k: None)
        engine = prepare(board, graph, target, opt, build_dir, say, stage, engine=engine_name)
    elif engine.digest != model_digest(graph) or engine.board.name != board.name:
        raise HarnessError(
            f"the engine given was prepared for another model or board ({engine.board.name}, model sha256 "
            f"{engine.digest[:12]}), not {model_label} on {board.name}: prepare one for this model and board"
        )
    if jobs > 1 and engine.target_kind == "pyocd":
        say("one board, one probe: --jobs applies to QEMU and host targets; running 1 job")
        jobs = 1
    cores = os.cpu_count() or 1
    if jobs > 1 and engine.target_kind == "qemu" and 3 * jobs > 2 * cores:
        # Measured: one QEMU instance (-icount, the firmware polling its UART) keeps about a core busy and the
        # harness's side of the protocol half another, so jobs beyond 2/3 of the cores only share them.
        say(f"{jobs} QEMU instances on {cores} CPU cores: each needs about a core and a half, so more than "
            f"{max(1, 2 * cores // 3)} job(s) will not run faster here")  # fmt: skip

    engine_name = engine.spec.engine
    key = run_key(engine.digest, board.name, engine.target_kind, fitted.digest, engine_name)
    run_dir, run_id, resumed = _open_run(key, resume, results_dir)
    meta = {
        "run_id": run_id,
        "key": key,
        "board": board.name,
        "model": model_label,
        "model_sha256": engine.digest,
        "dataset": ds.name,
        "dataset_source": ds.source,
        "dataset_path": ds.path,
        "dataset_sha256": fitted.digest,
        "dataset_samples": len(fitted.x),
        "target": engine.target_kind,
        "target_desc": engine.target_desc,
        "engine": engine_name,
        "complete": False,
    }
    _write_meta(run_dir, {**_read_meta(run_dir), **meta})
    done = load_samples(run_dir / SAMPLES_FILE)
    done = {i: r for i, r in done.items() if i < len(fitted.x)}
    pending = [i for i in range(total) if i not in done]
    if resumed:
        say(f"resuming run {run_id}: {sum(1 for i in done if i < total)} of {total} samples already done")

    record_base = {
        "run_id": run_id,
        "board": board.name,
        "model": model_label,
        "model_sha256": engine.digest,
        "dataset": ds.name,
        "dataset_sha256": fitted.digest,
        "target": engine.target_kind,
        "target_desc": engine.target_desc,
        "engine": engine_name,
        "report_dir": str(run_dir),
    }
    try:
        if scheduler:
            if input_path != "auto":
                raise HarnessError("--input-path applies to local runs; a cluster's workers take their fastest path")
            new, counting, elapsed, moved, jobs = _run_samples_on_cluster(
                engine, board, fitted, pending, run_dir / SAMPLES_FILE, scheduler=scheduler, opt=opt,
                build_dir=build_dir, timeout=timeout, progress=progress, on_sample=on_sample,
                already=total - len(pending), total=total, say=say,
            )  # fmt: skip
        else:
            new, counting, elapsed, moved = _run_samples(
                engine,
                board,
                fitted,
                pending,
                run_dir / SAMPLES_FILE,
                jobs=jobs,
                timeout=timeout,
                progress=progress,
                on_sample=on_sample,
                already=total - len(pending),
                total=total,
                input_path=input_path,
            )
    except KeyboardInterrupt:
        say(f"interrupted: resume with --resume {run_id} (samples done so far are kept in {run_dir})")
        raise
    except HarnessError as e:
        results.append(
            "accuracy",
            {**record_base, "status": "failed", "reason": str(e), "error": type(e).__name__},
            results_dir,
        )
        say(f"failed: resume with --resume {run_id} once the cause is fixed")
        raise
    done.update(new)
    if counting is None:  # nothing ran this session (everything already done): the meta remembers
        counting = Counting(**_read_meta(run_dir)["counting"]) if "counting" in _read_meta(run_dir) else None
    records = [done[i] for i in sorted(done) if i < total]
    figs = compute_figures(
        records,
        fitted.classes,
        _output_quant(engine),
        counting,
    )
    throughput = {
        "samples": len(new),
        "seconds": elapsed,
        "samples_per_s": (len(new) / elapsed) if elapsed > 0 and new else None,
        "jobs": jobs,
        # how inputs reached the device, and how fast (the bytes over the seconds spent moving them)
        "input_path": moved["path"],
        "input_bytes_per_s": (moved["bytes"] / moved["seconds"]) if moved["seconds"] > 0 else None,
        "input_note": moved.get("note", ""),  # why a faster path fell back to the UART, if it did
    }
    report = {
        **record_base,
        "status": "ok",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "harness": __version__,
        "git_sha": results.git_sha(),
        "dataset_source": ds.source,
        "dataset_path": ds.path,
        "dataset_notes": fitted.notes,
        "preprocessing": fitted.mapping,
        "classes": fitted.classes,
        "samples_total": total,
        "samples_in_dataset": len(fitted.x),
        "resumed": resumed,
        "counting": None if counting is None else counting.__dict__,
        "throughput": throughput,
        "figures": figs,
    }
    meta.update(complete=total == len(fitted.x) or limit is None, samples_done=len(records))
    if counting is not None:
        meta["counting"] = counting.__dict__
    _write_meta(run_dir, meta)
    if write_report:
        from harness.accuracy_report import write_report as _write

        report["files"] = {k: str(v) for k, v in _write(report, run_dir).items()}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    results.append("accuracy", _summary(report), results_dir)
    return report


def run_key(model_sha: str, board: str, target_kind: str, data_sha: str, engine: str = "native") -> str:
    """Runs with the same key measure the same thing: a resumed run may only continue one of its own."""
    what = f"{model_sha}|{board}|{target_kind}|{data_sha}" + ("" if engine == "native" else f"|{engine}")
    return hashlib.sha256(what.encode()).hexdigest()[:24]


def _run_samples(
    engine,
    board,
    fitted: FittedData,
    pending: list[int],
    path: Path,
    *,
    jobs: int,
    timeout: float,
    progress: bool,
    on_sample: Callable[[int, int], None] | None,
    already: int,
    total: int,
    input_path: str = "auto",
) -> tuple[dict[int, dict[str, Any]], Counting | None, float, dict[str, Any]]:
    """Device and reference outputs for `pending` samples, `jobs` engines pulling from one queue; each
    record is appended (and flushed) to `path` as it arrives. Also returns how the inputs moved: their
    path, bytes and seconds."""

    new: dict[int, dict[str, Any]] = {}
    moved: dict[str, Any] = {"path": None, "bytes": 0, "seconds": 0.0}
    if not pending:
        return new, None, 0.0, moved
    _end_torn_line(path)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in pending:
        todo.put(i)
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    counting_box: list[Counting] = []
    jobs = max(1, min(int(jobs), len(pending)))

    def worker() -> None:
        try:
            with engine.open(timeout, input_path) as runner:
                seen = [0, 0.0]  # this runner's input bytes and seconds already counted in `moved`
                counting = Counting.of(board, runner.hello)
                with lock:
                    if not counting_box:
                        counting_box.append(counting)

                def record(items) -> None:
                    """The finished samples' records, appended in one write (and one fsync: a sample's
                    line is on disk before it counts as done)."""
                    if not items:
                        return
                    recs = []
                    for i, host, outputs, stats in items:
                        dev = np.asarray(outputs[0]).reshape(-1).astype(np.int8)
                        ref = np.asarray(host.result()[0]).reshape(-1).astype(np.int8)
                        ticks = None if stats is None else int(stats.counts[0])
                        recs.append(
                            {
                                "i": i,
                                "label": int(fitted.labels[i]),
                                "device": dev.tolist(),
                                "host": ref.tolist(),
                                "ticks": ticks,
                                "count": None if ticks is None else round(ticks * counting.per_tick),
                            }
                        )
                    with lock:
                        _append_lines(path, recs)
                        for rec in recs:
                            new[rec["i"]] = rec
                        n = already + len(new)
                        moved["bytes"] += runner.input_bytes - seen[0]
                        moved["seconds"] += runner.input_seconds - seen[1]
                        seen[:] = [runner.input_bytes, runner.input_seconds]
                    advance(n)
                    if on_sample is not None:
                        on_sample(n, total)

                # the last batch's samples, recorded once the next batch has run: the device then never
                # waits on the host reference of a batch it has finished
                behind: list[tuple[int, Any, Any, Any]] = []
                while not stop.is_set():
                    with lock:  # what this worker has moved so far (a path can fall back to the UART)
                        moved["path"] = runner.input_path
                        moved["note"] = getattr(runner.session, "input_note", "") or moved.get("note", "")
                        bar.path = runner.input_path
                    # a batch where the target runs one in a single request (RUN_STAGED on QEMU), else one
                    batch_run = getattr(runner, "run_batch", None)
                    ids: list[int] = []
                    while len(ids) < (BATCH if batch_run is not None else 1):
                        try:
                            ids.append(todo.get_nowait())
                        except queue.Empty:
                            break
                    if not ids:
                        record(behind)
                        return
                    xs = [fitted.x[i] for i in ids]
                    # the host reference (tens of ms for an image model) runs while the device does
                    hosts = [pool.submit(_reference, x) for x in xs]
                    where = f"sample {ids[0]}" if len(ids) == 1 else f"the batch of samples {ids[0]}..{ids[-1]}"
                    try:
                        try:
                            ran = batch_run([[x] for x in xs]) if batch_run is not None and len(ids) > 1 else None
                            if ran is None:  # one sample, or a target that cannot run a batch
                                ran = [runner.run([x], repetitions=1) for x in xs]
                        finally:  # the batch before this one is done, whatever became of this one
                            record(behind)
                            behind = []
                    except LinkBroken as e:  # the protocol found the port closed (QEMU gone, USB unplugged)
                        at = f"the connection to the device broke at {where}"
                        raise LinkBroken(str(e).replace("the connection to the device broke", at, 1)) from e
                    except OSError as e:  # a runner that is not the protocol's: pyserial's errors are OSErrors
                        raise LinkBroken(
                            f"{engine.target_desc}: the connection to the device broke at {where} ({e})"
                        ) from e
                    behind = [(i, h, outs, st) for i, h, (outs, st) in zip(ids, hosts, ran, strict=True)]
                    if batch_run is None:  # one sample at a time: its record at once
                        record(behind)
                        behind = []
        except BaseException as e:  # surfaced in the main thread, which re-raises the first
            with lock:
                errors.append(e)
            stop.set()

    pool = _reference_pool(engine.interior, jobs)
    bar = _Bar(progress, total, already)
    advance = bar.update
    start = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"accuracy-{k}", daemon=True) for k in range(jobs)]
    try:
        with bar:
            for t in threads:
                t.start()
            # join with a timeout so Ctrl-C reaches the main thread while the workers run
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(timeout + 5)
        raise
    finally:
        pool.shutdown(cancel_futures=True)
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return new, (counting_box[0] if counting_box else None), elapsed, moved


def _run_samples_on_cluster(engine, board, fitted: FittedData, pending: list[int], path: Path, *, scheduler: str,
                            opt: str, build_dir, timeout: float, progress: bool, on_sample, already: int,
                            total: int, say: Say):  # fmt: skip
    """As _run_samples, with the samples run in shards by a cluster's workers; also returns how many
    workers could take them."""
    from harness.cluster import run_samples_cluster

    new: dict[int, dict[str, Any]] = {}
    moved: dict[str, Any] = {"path": None, "bytes": 0, "seconds": 0.0}
    if not pending:
        return new, None, 0.0, moved, 0
    _end_torn_line(path)
    bar = _Bar(progress, total, already)

    def record(recs: list[dict[str, Any]], shard_moved) -> None:
        _append_lines(path, recs)  # on disk before the samples count as done, as in a local run
        for rec in recs:
            new[rec["i"]] = rec
        moved["path"] = bar.path = shard_moved[0]
        moved["bytes"] += shard_moved[1]
        moved["seconds"] += shard_moved[2]
        bar.update(already + len(new))
        if on_sample is not None:
            on_sample(already + len(new), total)

    start = time.perf_counter()
    shown: list[_Bar] = []  # the bar, once the cluster has said what it is (its lines come first)

    def ready() -> None:
        shown.append(bar.__enter__())

    try:
        counting, workers = run_samples_cluster(
            engine, board, fitted, pending, path, scheduler, opt=opt, build_dir=build_dir, timeout=timeout,
            record=record, say=say, ready=ready,
        )  # fmt: skip
    finally:
        if shown:
            bar.__exit__(None, None, None)
    return new, counting, time.perf_counter() - start, moved, workers


BATCH = 32  # samples a RUN_STAGED request runs (records are appended once a batch is in)
_GRAPH = None  # the reference process's graph, prepared once


def _reference_init(graph) -> None:
    global _GRAPH
    from harness import reference

    # killed with the run: a kill -9 of `harness accuracy` otherwise left a reference worker behind
    die_with_parent()
    _GRAPH = reference.Prepared(graph)


def _reference(x):
    return _GRAPH.run([x])


def _reference_pool(graph, jobs: int) -> ProcessPoolExecutor:
    """`jobs` processes for the host reference: it runs beside the device (tens of ms for an image
    model), and in a thread it would share the interpreter lock with the protocol's. Forked, and started
    here, before any thread of ours exists (a fork copies only the thread that forks)."""
    pool = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("fork"), initializer=_reference_init, initargs=(graph,)
    )
    for f in [pool.submit(int) for _ in range(jobs)]:
        f.result()
    return pool


class _Bar:
    """A rich progress bar with samples/s (nothing at all when progress is off)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        self.total, self.done = total, done
        self._progress = None
        self.path: str | None = None  # how inputs reach the device, shown beside the rate

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("accuracy"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("samples", total=self.total, completed=self.done, rate="")
            self._t0, self._d0 = time.perf_counter(), self.done
        return self

    def update(self, done: int) -> None:
        if self._progress is None:
            return
        dt = time.perf_counter() - self._t0
        rate = f"{(done - self._d0) / dt:.1f} samples/s" if dt > 0 else ""
        if rate and self.path:
            rate += f" ({self.path})"
        self._progress.update(self._task, completed=done, rate=rate)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


# --- run folders and per-sample records ----------------------------------------------------------------


def _open_run(key: str, resume: bool | str, results_dir) -> tuple[Path, str, bool]:
    root = reports_dir(results_dir)
    if isinstance(resume, str):
        run_dir = root / resume
        meta = _read_meta(run_dir)
        if not meta:
            raise HarnessError(f"no accuracy run {resume!r} under {root} to resume")
        if meta.get("key") != key:
            raise HarnessError(
                f"run {resume} measured model {meta.get('model')} on {meta.get('board')} "
                f"({meta.get('target')}) with data set {meta.get('dataset')}: not this model/board/target/"
                "data, so it cannot be resumed with these; start a new run"
            )
        return run_dir, resume, True
    if resume:
        candidates = []
        for m in root.glob(f"*/{META_FILE}"):
            meta = _read_meta(m.parent)
            if meta.get("key") == key and not meta.get("complete"):
                candidates.append(m.parent)
        if candidates:
            latest = max(candidates, key=lambda p: p.name)
            return latest, latest.name, True
    run_id = results.new_run_id()
    run_dir = root / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir, run_id, False


def _read_meta(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, run_dir / META_FILE)  # atomic: an interrupted write never leaves half a meta


def _append_lines(path: Path, recs: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(rec, separators=(",", ":")) + "\n" for rec in recs))
        f.flush()
        os.fsync(f.fileno())


def _end_torn_line(path: Path) -> None:
    """A run killed mid-write leaves half a line: end it, so the next record starts a line of its own."""
    try:
        with open(path, "rb+") as f:
            if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                f.write(b"\n")
    except FileNotFoundError:
        pass


def load_samples(path: Path) -> dict[int, dict[str, Any]]:
    """The per-sample records of a run, by sample index. A torn last line (killed mid-write) is skipped:
    that sample simply runs again."""
    out: dict[int, dict[str, Any]] = {}
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "i" in rec and "device" in rec:
                out[int(rec["i"])] = rec
    return out


# --- figures -------------------------------------------------------------------------------------------


def compute_figures(
    records: list[dict[str, Any]],
    classes: list[str],
    output_quant: tuple[float, int],
    counting: Counting | None,
) -> dict[str, Any]:
    """Every figure of the report from the per-sample records (device, host, label, count)."""
    n = len(records)
    k = len(classes)
    if n == 0:
        return {"samples": 0}
    idx = np.array([r["i"] for r in records])
    labels = np.array([r["label"] for r in records], dtype=np.int64)
    dev = np.array([r["device"] for r in records], dtype=np.int64)
    host = np.array([r["host"] for r in records], dtype=np.int64)
    k = max(k, dev.shape[1])
    dev_top1 = np.argmax(dev, axis=1)  # ties go to the lowest index, as TFLite's ArgMax does
    host_top1 = np.argmax(host, axis=1)
    figs: dict[str, Any] = {"samples": n, "classes": k}
    figs["device_top1"] = float(np.mean(dev_top1 == labels))
    figs["host_top1"] = float(np.mean(host_top1 == labels))
    if dev.shape[1] > 5:
        top5 = np.argsort(-dev, axis=1, kind="stable")[:, :5]
        figs["device_top5"] = float(np.mean(np.any(top5 == labels[:, None], axis=1)))
        top5h = np.argsort(-host, axis=1, kind="stable")[:, :5]
        figs["host_top5"] = float(np.mean(np.any(top5h == labels[:, None], axis=1)))
    same = np.all(dev == host, axis=1)
    figs["agreement"] = float(np.mean(same))
    figs["top1_agreement"] = float(np.mean(dev_top1 == host_top1))
    figs["disagreements"] = [
        {
            "i": int(idx[j]),
            "label": int(labels[j]),
            "device_top1": int(dev_top1[j]),
            "host_top1": int(host_top1[j]),
            "elements_differing": int(np.count_nonzero(dev[j] != host[j])),
            "max_abs_diff": int(np.max(np.abs(dev[j] - host[j]))),
        }
        for j in np.flatnonzero(~same)
    ]
    scale, zp = output_quant
    fd = (dev - zp).astype(np.float64) * scale
    fh = (host - zp).astype(np.float64) * scale
    diff = np.abs(dev - host)
    norms = np.linalg.norm(fd, axis=1) * np.linalg.norm(fh, axis=1)
    dots = np.sum(fd * fh, axis=1)
    # Two all-zero outputs are identical: cosine 1, not 0/0.
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
    figs["distance"] = {
        "max_abs_diff_int8": int(diff.max()),
        "mean_abs_diff_int8": float(diff.mean()),
        "max_abs_diff": float(np.abs(fd - fh).max()),
        "mean_abs_diff": float(np.abs(fd - fh).mean()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "output_scale": float(scale),
        "output_zero_point": int(zp),
    }
    per_class = []
    for c in range(k):
        m = labels == c
        cnt = int(m.sum())
        per_class.append(
            {
                "class": c,
                "name": classes[c] if c < len(classes) else str(c),
                "samples": cnt,
                "device_correct": int(np.sum(dev_top1[m] == c)),
                "device_accuracy": float(np.mean(dev_top1[m] == c)) if cnt else None,
                "host_accuracy": float(np.mean(host_top1[m] == c)) if cnt else None,
            }
        )
    figs["per_class"] = per_class
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, dev_top1), 1)
    figs["confusion"] = cm.tolist()
    figs["latency"] = _latency(records, counting)
    return figs


def _latency(records: list[dict[str, Any]], counting: Counting | None) -> dict[str, Any] | None:
    counts = [r["count"] for r in records if r.get("count") is not None]
    if not counts or counting is None:
        return None
    a = np.array(counts, dtype=np.float64)
    out: dict[str, Any] = {
        "unit": counting.unit,
        "source": counting.source,
        "note": counting.note,
        "samples": len(counts),
        "min": int(a.min()),
        "median": float(statistics.median(counts)),
        "mean": float(a.mean()),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
        "std": float(a.std()),
        "all": [int(c) for c in counts],
    }
    if counting.clock_hz:
        out["ms_median"] = out["median"] / counting.clock_hz * 1e3
        out["ms_p95"] = out["p95"] / counting.clock_hz * 1e3
        out["ms_is_estimate"] = counting.source == "qemu-icount"
    return out


# --- helpers -------------------------------------------------------------------------------------------


def _board(board):
    if isinstance(board, str):
        from harness.boards import get_board

        return get_board(board)
    return board


def _model(model):
    if isinstance(model, str | Path):
        from harness.zoo import resolve_model

        return resolve_model(str(model))
    return model, getattr(model, "name", "model")


def _output_quant(engine) -> tuple[float, int]:
    g = engine.interior
    q = g.tensors[g.outputs[0]].quant
    return (q.s, q.zp) if q is not None else (1.0, 0)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The one line the results store keeps: headline figures, not every sample."""
    f = report["figures"]
    keep = ("device_top1", "device_top5", "host_top1", "host_top5", "agreement", "top1_agreement", "samples")
    lat = f.get("latency") or {}
    return {
        **{k: report[k] for k in ("run_id", "board", "model", "model_sha256", "dataset", "dataset_sha256")},
        **{k: report[k] for k in ("target", "target_desc", "engine", "status", "report_dir", "samples_total")},
        "figures": {k: f[k] for k in keep if k in f},
        "disagreements": len(f.get("disagreements", [])),
        "distance": f.get("distance"),
        "latency": {k: v for k, v in lat.items() if k != "all"} or None,
        "throughput": report["throughput"],
        "files": report.get("files"),
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__}")
