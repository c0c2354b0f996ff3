"""Nightly regression runs: a matrix of boards x models x build options, each cell benchmarked (and its
accuracy measured where the matrix names a data set), then judged against a baseline.

Every cell runs in its own process (its own QEMU), in its own process group, so a hung cell can be killed
whole after `cell_timeout` seconds while the others go on. Its bench record is appended to bench.jsonl,
tagged with the nightly run id and the cell key, the moment it exists; the cell's headline metrics go to
nightly.jsonl (one line per cell) and the run's verdict to nightly_runs.jsonl. Those two files are the
history the trend plots and the "last passing run" baseline are read from.

Verdicts are pure functions of the cell metrics (`compare_cell`), so they are tested on plain dicts.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import time
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import results
from harness.engines import ENGINES
from harness.errors import HarnessError
from harness.lifetime import die_with_parent

Say = Callable[[str], None]

CELLS_KIND = "nightly"  # one line per cell: the metrics the verdict reads
RUNS_KIND = "nightly_runs"  # one line per run: its verdict and exit code

EXIT_CLEAN, EXIT_REGRESSION, EXIT_BROKEN = 0, 1, 2


class MatrixError(HarnessError):
    """The matrix file is missing, not TOML, or names something the harness does not know."""


# --- thresholds -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """How much a metric may move before it counts. Defaults follow the measurement sources:

    - QEMU instruction counts (-icount) are deterministic: the firmware restarts SysTick at each inference,
      so the same firmware and input read the same count every run. They move in SysTick ticks (40
      instructions), so one tick may be a single instruction more: 0.1 %, and never less than one tick.
    - DWT cycles on hardware vary with flash wait states, caches and interrupts: a 2 % band.
    - Flash is .text + .rodata + .data from the ELF: exact for a given source and toolchain, so 0 bytes.
    - Peak SRAM = planned arena + static RAM (both exact) + painted stack. Under QEMU with -icount the
      SysTick interrupt lands at the same instruction every run, so the stack high water is exact too:
      0 bytes. On hardware the tick can land one exception frame deeper (104 B with the FP context).
    - Accuracy: the engine is bit-exact, so the same model scores the same; a drop means a different model
      (retrained, requantised). 0.5 points is about two samples of the digits hold-out set.
    - The native / tflm-cmsis count ratio (our lead over CMSIS-NN, lower is better) is a quotient of two
      deterministic counts: the same 0.1 % as instructions.
    """

    instructions_pct: float = 0.1
    cycles_pct: float = 2.0
    ratio_pct: float = 0.1  # native / tflm-cmsis counts: both deterministic, so any real move
    flash_bytes: int = 0
    peak_sram_bytes: int = 0
    peak_sram_bytes_hardware: int = 104
    accuracy_points: float = 0.5

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, base: Thresholds | None = None) -> Thresholds:
        base = base or cls()
        known = set(asdict(base))
        unknown = set(d) - known
        if unknown:
            raise MatrixError(
                f"{where}: unknown threshold(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        for k, v in d.items():
            if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise MatrixError(f"{where}: threshold {k} must be a non-negative number, not {v!r}")
        return replace(base, **d)


# --- the matrix ----------------------------------------------------------------------------------------

CELL_FIELDS = {
    "target": str,
    "inputs": int,
    "repetitions": int,
    "warmup": int,
    "opt": str,
    "seed": int,
    "timeout": (int, float),
    "cell_timeout": (int, float),
    "dataset": str,
    "limit": int,
    "expect_failure": str,
    "engine": str,
    "fuse": bool,
}


@dataclass(frozen=True)
class Cell:
    board: str
    model: str
    opt: str = "-O2"
    target: str = "qemu"
    inputs: int = 1
    repetitions: int = 1
    warmup: int = 0
    seed: int = 0
    timeout: float = 120.0  # seconds one device request may take (bench's own watchdog)
    cell_timeout: float = 600.0  # seconds the whole cell may take before it is killed as hung
    dataset: str | None = None
    limit: int | None = None  # samples of the data set
    expect_failure: str | None = None  # an error class this cell is known to fail with (e.g. DoesNotFitError)
    engine: str = "native"  # native | tflm-cmsis | tflm-ref
    fuse: bool = True  # native engine: fused groups where they lower the peak (False: layer by layer)
    opt_in_key: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def key(self) -> str:
        """The cell's identity across runs: board:model, the engine unless native, `:unfused` for the native
        layer-by-layer build, and the opt level when the matrix varies it."""
        model = Path(self.model).name if self.model.endswith(".tflite") else self.model
        key = f"{self.board}:{model}" + ("" if self.engine == "native" else f":{self.engine}")
        key += "" if self.fuse or self.engine != "native" else ":unfused"
        return f"{key}:{self.opt.lstrip('-')}" if self.opt_in_key else key

    @property
    def hardware(self) -> bool:
        """May this cell use a physical board (then it never overlaps another cell on that board)?"""
        return self.target in ("pyocd", "auto")


@dataclass
class Matrix:
    name: str
    description: str
    cells: list[Cell]
    thresholds: Thresholds
    path: str | None = None


def load_matrix(path: str | Path) -> Matrix:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MatrixError(f"cannot read the matrix file {path}: {e.strerror or e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MatrixError(f"{path} is not valid TOML: {e}") from e
    return parse_matrix(data, str(path))


def parse_matrix(data: dict[str, Any], where: str = "matrix") -> Matrix:
    """The matrix: [matrix] boards x models x opt, [[cells]] extra cells or overrides, [[exclude]]."""
    from harness.boards import load_boards
    from harness.zoo import ZOO, canonical

    known = {"name", "description", "defaults", "matrix", "cells", "exclude", "thresholds"}
    unknown = set(data) - known
    if unknown:
        raise MatrixError(
            f"{where}: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise MatrixError(f"{where}: `name` (letters, digits, . _ -) is required: it names the baseline file")
    thresholds = Thresholds.from_dict(data.get("thresholds", {}), f"{where} [thresholds]")
    defaults = _cell_fields(data.get("defaults", {}), f"{where} [defaults]")
    axes = data.get("matrix", {})
    unknown = set(axes) - {"boards", "models", "opt", "engines", "fuse"}
    if unknown:
        raise MatrixError(
            f"{where} [matrix]: unknown key(s) {', '.join(sorted(unknown))}; known: boards, models, opt, engines, fuse"
        )
    boards = _str_list(axes.get("boards", []), f"{where} [matrix] boards")
    models = _str_list(axes.get("models", []), f"{where} [matrix] models")
    opts = _str_list(axes.get("opt", [defaults.get("opt", "-O2")]), f"{where} [matrix] opt")
    opt_in_key = len(opts) > 1 or "opt" in axes
    engine_axis = _str_list(axes.get("engines", [defaults.get("engine", "native")]), f"{where} [matrix] engines")
    fuse_axis = axes.get("fuse", [defaults.get("fuse", True)])
    if not isinstance(fuse_axis, list) or not fuse_axis or not all(isinstance(f, bool) for f in fuse_axis):
        raise MatrixError(f"{where} [matrix] fuse must be a list of true / false, not {fuse_axis!r}")

    cells: dict[str, Cell] = {}
    base = {**defaults, "thresholds": thresholds, "opt_in_key": opt_in_key}
    for b in boards:
        for m in models:
            for o in opts:
                for e in engine_axis:
                    for f in fuse_axis if e == "native" else [True]:
                        c = Cell(board=b, model=m, **{**base, "opt": o, "engine": e, "fuse": f})
                        cells[c.key] = c
    for i, extra in enumerate(data.get("cells", [])):
        w = f"{where} [[cells]] #{i + 1}"
        if not isinstance(extra, dict) or "board" not in extra or "model" not in extra:
            raise MatrixError(f"{w}: a cell needs `board` and `model`")
        fields = _cell_fields({k: v for k, v in extra.items() if k not in ("board", "model", "thresholds")}, w)
        probe = Cell(board=extra["board"], model=extra["model"], **{**base, **fields})
        old = cells.get(probe.key)
        merged = {**(asdict(old) if old else {**base, "board": probe.board, "model": probe.model}), **fields}
        merged["thresholds"] = Thresholds.from_dict(extra.get("thresholds", {}), w, thresholds)
        cells[probe.key] = Cell(**merged)
    for i, ex in enumerate(data.get("exclude", [])):
        if not isinstance(ex, dict) or not set(ex) <= {"board", "model", "opt", "engine", "fuse"} or not ex:
            raise MatrixError(f"{where} [[exclude]] #{i + 1}: give any of board, model, opt, engine, fuse")
        for k in [k for k, c in cells.items() if all(getattr(c, f) == v for f, v in ex.items())]:
            del cells[k]
    if not cells:
        raise MatrixError(f"{where}: the matrix has no cells (give [matrix] boards and models, or [[cells]])")

    all_boards = load_boards()
    for c in cells.values():
        if c.board not in all_boards:
            raise MatrixError(
                f"{where}: unknown board {c.board!r} in cell {c.key}; boards: {', '.join(sorted(all_boards))}"
            )
        if canonical(c.model) not in ZOO and not c.model.endswith(".tflite"):
            raise MatrixError(f"{where}: model {c.model!r} in cell {c.key} is neither a zoo name nor a .tflite path")
        if c.target not in ("auto", "qemu", "pyocd"):
            raise MatrixError(f"{where}: target {c.target!r} in cell {c.key}: use qemu, pyocd or auto")
        if c.engine not in ENGINES:
            raise MatrixError(f"{where}: engine {c.engine!r} in cell {c.key}: use one of {', '.join(ENGINES)}")
        if not re.fullmatch(r"-O[0123sz]|-Og|-Ofast", c.opt):
            raise MatrixError(f"{where}: opt {c.opt!r} in cell {c.key}: use one of -O0 -O1 -O2 -O3 -Os -Oz -Og -Ofast")
    return Matrix(name, str(data.get("description", "")), list(cells.values()), thresholds)


def _str_list(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise MatrixError(f"{where} must be a list of strings, not {v!r}")
    return v


_POSITIVE = {"inputs", "repetitions", "timeout", "cell_timeout", "limit"}
_NON_NEGATIVE = {"warmup", "seed"}


def _cell_fields(d: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise MatrixError(f"{where} must be a table")
    out = {}
    for k, v in d.items():
        if k not in CELL_FIELDS:
            raise MatrixError(f"{where}: unknown key {k!r}; known: {', '.join(sorted(CELL_FIELDS))}")
        if CELL_FIELDS[k] is bool:
            if not isinstance(v, bool):
                raise MatrixError(f"{where}: {k} = {v!r} must be true or false")
        elif not isinstance(v, CELL_FIELDS[k]) or isinstance(v, bool):
            raise MatrixError(f"{where}: {k} = {v!r} has the wrong type")
        elif (k in _POSITIVE and v <= 0) or (k in _NON_NEGATIVE and v < 0):
            raise MatrixError(f"{where}: {k} = {v!r} must be {'> 0' if k in _POSITIVE else '>= 0'}")
        out[k] = v
    return out


# --- one cell ------------------------------------------------------------------------------------------


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def run_cell(
    cell: Cell,
    run_id: str,
    matrix: str,
    results_dir: str | None,
    build_dir: str | None,
    stage: Callable[[str], None] = lambda _s: None,
) -> dict[str, Any]:
    """Benchmark one cell (and its accuracy when it names a data set); never raises for a failed cell.
    `stage` hears what it is doing (building, input 3/10, accuracy 40/450) as it goes."""
    from harness.bench import BenchOptions, run_bench

    start = time.monotonic()
    stage("generating and building")
    tag = {"run_id": run_id, "matrix": matrix, "cell": cell.key}
    res: dict[str, Any] = {**_cell_head(cell, run_id, matrix), "status": "failed", "metrics": {}}
    opts = BenchOptions(
        board=cell.board,
        model=cell.model,
        target=cell.target,
        repetitions=cell.repetitions,
        inputs=cell.inputs,
        warmup=cell.warmup,
        opt=cell.opt,
        seed=cell.seed,
        results_dir=results_dir,
        timeout=cell.timeout,
        build_dir=str(cell_build_dir(cell, build_dir)),
        record=False,  # recorded here, with the nightly tag
        engine=cell.engine,
        fuse=cell.fuse,
    )
    try:
        rec = run_bench(opts, step=lambda what, *_a, **_k: stage(what))
        rec.pop("result_file", None)
        results.append("bench", {**rec, "nightly": tag}, results_dir)
        res["bench_run_id"] = rec["run_id"]
        res["model_sha256"] = rec.get("model_sha256")
        res["target"] = rec.get("target", cell.target)
        res["metrics"] = bench_metrics(rec)
        if cell.dataset:
            stage(f"accuracy on {cell.dataset}: building")
            _accuracy(cell, res, results_dir, build_dir, lambda n, total: stage(f"accuracy {n}/{total}"))
        res["status"] = "ok"
    except Exception as e:  # a cell never takes the run down: record why and move on
        res["error"] = type(e).__name__
        # the message is the reason a user reads; the class (for expect_failure) is kept in "error"
        res["reason"] = str(e) if isinstance(e, HarnessError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, HarnessError):
            res["reason"] += " (harness bug: " + traceback.format_exc(limit=-1).strip().splitlines()[-2].strip() + ")"
        if "bench_run_id" not in res:
            results.append("bench", _failed_bench_record(cell, res["reason"], tag), results_dir)
    res["seconds"] = round(time.monotonic() - start, 2)
    return res


def cell_build_dir(cell: Cell, build_dir: str | None) -> Path:
    """Each cell builds in its own folder: parallel cells never write the same files, and the next night's
    run of the same cell finds its firmware in the cache."""
    root = Path(build_dir or os.environ.get("HARNESS_BUILD_DIR") or "build")
    return root / "nightly" / safe_name(f"{cell.key}:{cell.opt}")


def _cell_head(cell: Cell, run_id: str, matrix: str) -> dict[str, Any]:
    return {
        "nightly_run": run_id,
        "matrix": matrix,
        "cell": cell.key,
        "board": cell.board,
        "model": cell.model,
        "opt": cell.opt,
        "target": cell.target,
        "dataset": cell.dataset,
        "engine": cell.engine,
        **({} if cell.fuse else {"fuse": False}),
    }


def _failed_bench_record(cell: Cell, reason: str, tag: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": results.new_run_id(),
        "board": cell.board,
        "model": cell.model,
        "target": cell.target,
        "options": {"opt": cell.opt, "inputs": cell.inputs, "repetitions": cell.repetitions, "target": cell.target},
        "status": "failed",
        "reason": reason,
        "nightly": tag,
    }


def bench_metrics(rec: dict[str, Any]) -> dict[str, Any]:
    """The metrics a verdict reads from one bench record."""
    m: dict[str, Any] = {"outputs_match": bool(rec.get("outputs_match"))}
    if rec.get("engine", "native") != "native":
        # another engine's deviation from the interpreter is a finding about it, tracked, not a failure
        m["engine"] = rec["engine"]
        m["outputs_deviate"] = not m.pop("outputs_match")
    f = rec.get("figures")
    if not f:
        return m
    unit = f.get("count_unit") or "count"
    m["count_source"] = f.get("count_source")
    m[unit] = f["count"]["median"]
    m["count_resolution"] = count_resolution(rec)
    for k in ("peak_sram_bytes", "flash_bytes", "arena_bytes", "peak_stack_bytes", "fits"):
        if k in f:
            m[k] = f[k]
    return m


def count_resolution(rec: dict[str, Any]) -> float:
    """The smallest step a count can move by. QEMU counts are SysTick ticks of 40 instructions (an386/an500):
    a change of one instruction can show as a whole tick."""
    f = rec.get("figures") or {}
    if f.get("count_source") != "qemu-icount":
        return 1.0
    try:
        from harness.boards import get_board

        return float(get_board(rec["board"]).qemu_machine.icount_per_tick)
    except (HarnessError, KeyError):
        return 1.0


def _accuracy(cell: Cell, res: dict[str, Any], results_dir: str | None, build_dir: str | None, on_sample=None) -> None:
    from harness.accuracy import run_accuracy

    rep = run_accuracy(
        cell.board,
        cell.model,
        cell.dataset,
        target=cell.target,
        limit=cell.limit,
        results_dir=results_dir,
        resume=False,
        opt=cell.opt,
        build_dir=str(cell_build_dir(cell, build_dir)),
        timeout=cell.timeout,
        progress=False,
        write_report=False,
        engine_name=cell.engine,
        on_sample=on_sample,
    )
    figs = rep["figures"]
    res["accuracy_run_id"] = rep["run_id"]
    res["metrics"]["accuracy"] = round(100.0 * figs["device_top1"], 4)
    res["metrics"]["accuracy_samples"] = figs["samples"]
    res["metrics"]["agreement"] = figs["agreement"]
    # recorded, not judged: how fast the samples went, and by which input path (a wall-clock figure)
    t = rep["throughput"]
    if t.get("samples_per_s"):
        res["metrics"]["accuracy_samples_per_s"] = round(t["samples_per_s"], 2)
    res["accuracy_input_path"] = t.get("input_path")
    if figs["agreement"] < 1.0 and cell.engine == "native":
        res["metrics"]["outputs_match"] = False
        n = len(figs.get("disagreements", []))
        raise OutputsDiffer(f"the device's outputs differ from the host reference on {n} of {figs['samples']} samples")


class OutputsDiffer(HarnessError):
    """Accuracy samples where the device and the host reference disagree: never a tolerance."""


# --- running the matrix -------------------------------------------------------------------------------


def _worker(cell: Cell, run_id: str, matrix: str, results_dir: str | None, build_dir: str | None, out: str) -> None:
    os.setsid()  # a process group of its own: a hung cell is killed with its QEMU
    die_with_parent()  # a killed nightly leaves no worker writing records (its QEMU goes with it)
    res = run_cell(cell, run_id, matrix, results_dir, build_dir, lambda what: _write_stage(out, what))
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(res, default=str))
    tmp.replace(out)


def _write_stage(out: str, what: str) -> None:
    """The cell's current stage beside its result file, for the coordinator's status line (best effort)."""
    try:
        tmp = Path(out + ".stage.tmp")
        tmp.write_text(what)
        tmp.replace(out + ".stage")
    except OSError:
        pass


def _read_stage(out: Path) -> str:
    try:
        return Path(str(out) + ".stage").read_text()
    except OSError:
        return "starting"


def run_cells(
    cells: list[Cell],
    run_id: str,
    matrix: str,
    jobs: int,
    results_dir: str | None,
    build_dir: str | None,
    work: Path,
    say: Say,
    status: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell, `jobs` at a time, each in its own process; cells that may use a physical board never
    overlap another cell on the same board. Each cell's line is appended to nightly.jsonl as it finishes;
    `status`, if given, hears every second what each running cell is doing."""
    ctx = multiprocessing.get_context("fork")
    work.mkdir(parents=True, exist_ok=True)
    pending = list(cells)
    running: dict[int, tuple[Any, Cell, float, Path]] = {}
    done: dict[str, dict[str, Any]] = {}
    total = len(cells)
    while pending or running:
        busy_boards = {c.board for _, c, _, _ in running.values() if c.hardware}
        for c in list(pending):
            if len(running) >= max(1, jobs):
                break
            if c.hardware and c.board in busy_boards:
                continue
            pending.remove(c)
            out = work / f"{safe_name(c.key)}.json"
            out.unlink(missing_ok=True)
            Path(str(out) + ".stage").unlink(missing_ok=True)
            p = ctx.Process(target=_worker, args=(c, run_id, matrix, results_dir, build_dir, str(out)), daemon=False)
            p.start()
            running[p.sentinel] = (p, c, time.monotonic() + c.cell_timeout, out)
            if c.hardware:
                busy_boards.add(c.board)
        if not running:
            continue
        wait = max(0.05, min(d for _, _, d, _ in running.values()) - time.monotonic())
        if status is not None:
            wait = min(wait, 1.0)
            now = time.monotonic()
            status(f"[{len(done)}/{total} done] " + "; ".join(
                f"{c.key}: {_read_stage(o)} ({now - (d - c.cell_timeout):.0f} s)" for _, c, d, o in running.values()
            ))  # fmt: skip
        ready = multiprocessing.connection.wait(list(running), timeout=wait)
        now = time.monotonic()
        for s in list(running):
            p, c, deadline, out = running[s]
            if s in ready:
                p.join()
                res = _collect(c, p.exitcode, out, run_id, matrix, results_dir)
            elif now >= deadline:
                _kill_group(p)
                res = _hung(c, run_id, matrix, results_dir)
            else:
                continue
            del running[s]
            Path(str(out) + ".stage").unlink(missing_ok=True)
            done[c.key] = res
            results.append(CELLS_KIND, res, results_dir)
            say(_progress_line(len(done), total, res))
    return [done[c.key] for c in cells]


def _kill_group(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.join(5)


def _collect(cell: Cell, exitcode: int | None, out: Path, run_id: str, matrix: str, results_dir) -> dict[str, Any]:
    if out.exists():
        return json.loads(out.read_text())
    reason = f"the cell's process died (exit code {exitcode}) before recording a result"
    results.append("bench", _failed_bench_record(cell, reason, {"run_id": run_id, "matrix": matrix, "cell": cell.key}),
                   results_dir)  # fmt: skip
    return {**_cell_head(cell, run_id, matrix), "status": "failed", "error": "Crashed", "reason": reason, "metrics": {}}


def _hung(cell: Cell, run_id: str, matrix: str, results_dir) -> dict[str, Any]:
    reason = (
        f"hung: no result after {cell.cell_timeout:g} s (killed with its QEMU; raise cell_timeout if it is just slow)"
    )
    tag = {"run_id": run_id, "matrix": matrix, "cell": cell.key}
    results.append("bench", _failed_bench_record(cell, reason, tag), results_dir)
    return {
        **_cell_head(cell, run_id, matrix),
        "status": "failed",
        "error": "Hung",
        "reason": reason,
        "metrics": {},
        "seconds": cell.cell_timeout,
    }


def _progress_line(n: int, total: int, res: dict[str, Any]) -> str:
    m = res.get("metrics", {})
    if res["status"] == "ok":
        what = ", ".join(f"{m[k]:,} {k}" for k in ("instructions", "cycles") if k in m)
        if "accuracy" in m:
            what += f", top-1 {m['accuracy']:.2f} %"
        if "accuracy_samples_per_s" in m:
            what += f" at {m['accuracy_samples_per_s']:.1f} samples/s ({res.get('accuracy_input_path')})"
        return f"[{n}/{total}] {res['cell']}: ok, {what} ({res.get('seconds', 0):.1f} s)"
    return f"[{n}/{total}] {res['cell']}: FAILED: {res.get('reason')}"


# --- the native / tflm-cmsis ratio ---------------------------------------------------------------------

RATIO = "native_tflm_cmsis_ratio"


def ratio_cells(cells: list[dict[str, Any]], run_id: str, matrix: str) -> list[dict[str, Any]]:
    """Where a board, model and opt ran with both the native and the tflm-cmsis engine: a cell of its own
    holding native's count over tflm-cmsis's, so our lead over CMSIS-NN is judged and plotted every night."""
    by: dict[tuple, dict[str, dict[str, Any]]] = {}
    for c in cells:
        if c.get("fuse", True):  # the default (fused) native build is the one compared with TFLM
            by.setdefault((c["board"], c["model"], c["opt"]), {})[c.get("engine", "native")] = c
    out = []
    for (board, model, opt), engines in by.items():
        nat, tf = engines.get("native"), engines.get("tflm-cmsis")
        if not nat or not tf or nat["status"] != "ok" or tf["status"] != "ok":
            continue
        nm, tm = nat["metrics"], tf["metrics"]
        unit = next((u for u in ("instructions", "cycles") if u in nm and u in tm), None)
        if unit is None or nm.get("count_source") != tm.get("count_source") or not tm[unit]:
            continue
        key = tf["cell"].replace(":tflm-cmsis", ":native/tflm-cmsis", 1)
        out.append({
            "nightly_run": run_id, "matrix": matrix, "cell": key, "board": board, "model": model, "opt": opt,
            "target": nat.get("target"), "dataset": None, "engine": "native/tflm-cmsis", "status": "ok",
            "metrics": {RATIO: round(nm[unit] / tm[unit], 6), "count_source": nm.get("count_source")},
        })  # fmt: skip
    return out


# --- verdicts ------------------------------------------------------------------------------------------

OK, IMPROVED, REGRESSION, FAILED, NEW, XFAIL = "ok", "improved", "regression", "failed", "new", "xfail"
CHANGED = "model changed"  # the cell's model file is not the baseline's: its figures are shown, not judged


def compare_cell(
    cur: dict[str, Any], base: dict[str, Any] | None, th: Thresholds, expect_failure: str | None = None
) -> dict[str, Any]:
    """The verdict of one cell against its baseline cell (None: nothing to compare with).

    Returns {"status": ok|improved|regression|failed|new|xfail|model changed, "checks": [per-metric rows],
    "notes": [...]}.
    A failed cell or an output mismatch is a failure whatever the baseline says."""
    checks: list[dict[str, Any]] = []
    notes: list[str] = []
    if cur.get("status") != "ok":
        err = cur.get("error") or ""
        if expect_failure and err == expect_failure:
            return {"status": XFAIL, "checks": [], "notes": [f"failed as expected ({expect_failure})"]}
        return {"status": FAILED, "checks": [], "notes": [cur.get("reason") or "failed"]}
    m = cur.get("metrics", {})
    if m.get("outputs_match") is False:
        return {"status": FAILED, "checks": [], "notes": ["outputs differ from the reference"]}
    if m.get("outputs_deviate"):
        engine = m.get("engine")
        notes.append(f"{engine}: outputs deviate from the reference, bit-exact with TFLite (a finding about {engine})")
    if expect_failure:
        notes.append(f"expected to fail with {expect_failure} but ran: update the matrix")
    if not base or base.get("status") != "ok":
        return {"status": NEW, "checks": [], "notes": notes + ["no passing baseline for this cell"]}
    b = base.get("metrics", {})
    hardware = m.get("count_source") not in (None, "qemu-icount")
    for metric, kind, limit in (
        ("instructions", "pct", th.instructions_pct),
        ("cycles", "pct", th.cycles_pct),
        ("peak_sram_bytes", "bytes", th.peak_sram_bytes_hardware if hardware else th.peak_sram_bytes),
        ("flash_bytes", "bytes", th.flash_bytes),
        ("accuracy", "points", th.accuracy_points),
        (RATIO, "pct", th.ratio_pct),
    ):
        if metric not in m and metric not in b:
            continue
        if metric not in m or metric not in b:
            notes.append(f"{metric}: not compared (only in the {'baseline' if metric in b else 'current run'})")
            continue
        resolution = float(m.get("count_resolution") or 0) if kind == "pct" else 0.0
        checks.append(_check(metric, kind, float(m[metric]), float(b[metric]), limit, resolution))
    if b.get("count_source") and m.get("count_source") and b["count_source"] != m["count_source"]:
        notes.append(f"counts not comparable: baseline from {b['count_source']}, now {m['count_source']}")
        checks = [c for c in checks if c["metric"] not in ("instructions", "cycles")]
    was, now = base.get("model_sha256"), cur.get("model_sha256")
    if was and now and was != now:
        # another model is no regression of this one: the deltas are what the change cost or saved
        for c in checks:
            c["verdict"] = CHANGED
        notes.append(
            f"the model file changed since the baseline (sha256 {was[:12]}… -> {now[:12]}…): figures not judged; "
            "accept this run as the baseline once it is the model you mean"
        )
        return {"status": CHANGED, "checks": checks, "notes": notes}
    statuses = {c["verdict"] for c in checks}
    status = REGRESSION if REGRESSION in statuses else IMPROVED if IMPROVED in statuses else OK
    return {"status": status, "checks": checks, "notes": notes}


def _check(metric: str, kind: str, value: float, base: float, limit: float, resolution: float = 0.0) -> dict[str, Any]:
    delta = value - base
    pct = 100.0 * delta / base if base else (0.0 if delta == 0 else float("inf"))
    if kind == "pct":
        # never finer than the counter's own step: one tick may be one instruction
        band = max(limit * abs(base) / 100.0, resolution)
        worse, better = delta > band, delta < -band
        allowed = f"{limit:g} %" + (f" (at least {resolution:g})" if band == resolution and resolution > 1 else "")
    elif kind == "bytes":
        worse, better = delta > limit, delta < -limit
        allowed = f"{limit:g} B"
    else:  # accuracy in points: higher is better
        worse, better = delta < -limit, delta > limit
        allowed = f"{limit:g} points"
    verdict = REGRESSION if worse else IMPROVED if better else OK
    return {
        "metric": metric,
        "value": value,
        "baseline": base,
        "band": band if kind == "pct" else limit,  # how far from the baseline is within the threshold
        "delta": delta,
        "delta_pct": pct,
        "allowed": allowed,
        "verdict": verdict,
    }


def judge(cells: list[dict[str, Any]], baseline: dict[str, Any] | None, matrix: Matrix) -> list[dict[str, Any]]:
    by_key = {c.key: c for c in matrix.cells}
    base_cells = (baseline or {}).get("cells", {})
    out = []
    for res in cells:
        cell = by_key.get(res["cell"])
        th = cell.thresholds if cell else matrix.thresholds
        v = compare_cell(res, base_cells.get(res["cell"]), th, cell.expect_failure if cell else None)
        out.append({**res, "verdict": v})
    return out


def exit_code(judged: list[dict[str, Any]]) -> int:
    """0 clean, 1 a regression or a failed cell, 2 nothing could even be measured (the run itself broke)."""
    statuses = [c["verdict"]["status"] for c in judged]
    if not judged or all(s in (FAILED, XFAIL) for s in statuses) and all(not c.get("metrics") for c in judged):
        return EXIT_BROKEN
    if any(s in (REGRESSION, FAILED) for s in statuses):
        return EXIT_REGRESSION
    return EXIT_CLEAN


# --- baselines -----------------------------------------------------------------------------------------


def baselines_dir(results_dir: str | Path | None = None) -> Path:
    return results.results_dir(results_dir) / "baselines"


def baseline_path(matrix: str, results_dir: str | Path | None = None) -> Path:
    return baselines_dir(results_dir) / f"{matrix}.json"


def finished_runs(results_dir: str | Path | None = None) -> set[str]:
    """Ids of the nightly runs that reached a verdict (a killed run has cell lines but no run line)."""
    return {r["run_id"] for r in results.read(RUNS_KIND, results_dir) if "run_id" in r}


def _resumable_cells(run_id: str, matrix: Matrix, results_dir: str) -> dict[str, dict[str, Any]]:
    """The cells run `run_id` recorded before it stopped, by key (the last line of each wins)."""
    if run_id in finished_runs(results_dir):
        raise HarnessError(f"nightly run {run_id} finished already: nothing to resume (start a new run)")
    lines = run_cells_of(run_id, results_dir)
    if not lines:
        raise HarnessError(f"no nightly run {run_id} in {results_dir}: nothing to resume")
    other = {r.get("matrix") for r in lines} - {matrix.name}
    if other:
        raise HarnessError(f"run {run_id} ran matrix {', '.join(sorted(map(str, other)))}, not {matrix.name}")
    keys = {c.key for c in matrix.cells}
    return {r["cell"]: r for r in lines if r.get("cell") in keys}


def run_cells_of(run_id: str, results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    return [r for r in results.read(CELLS_KIND, results_dir) if r.get("nightly_run") == run_id]


def find_baseline(
    matrix: str, results_dir: str | Path | None = None, path: str | Path | None = None, exclude_run: str | None = None
) -> dict[str, Any] | None:
    """The baseline to judge against: the given file, else results/baselines/<matrix>.json, else the last
    run of this matrix that exited clean. None when there is none yet (every cell is then 'new')."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise HarnessError(f"baseline file {p} does not exist (accept a run with `harness baseline accept RUN_ID`)")
        return _read_baseline(p)
    p = baseline_path(matrix, results_dir)
    if p.is_file():
        return _read_baseline(p)
    runs = [
        r for r in results.read(RUNS_KIND, results_dir)
        if r.get("matrix") == matrix and r.get("exit_code") == EXIT_CLEAN and r.get("run_id") != exclude_run
    ]  # fmt: skip
    if not runs:
        return None
    last = runs[-1]["run_id"]
    cells = run_cells_of(last, results_dir)
    return {
        "matrix": matrix,
        "run_id": last,
        "source": f"last passing run {last}",
        "cells": {c["cell"]: c for c in cells},
    }


def _read_baseline(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HarnessError(f"baseline file {p} is unreadable ({e}): accept a run again to rewrite it") from e
    if not isinstance(data.get("cells"), dict):
        raise HarnessError(f"baseline file {p} has no `cells` table: accept a run again to rewrite it")
    data.setdefault("source", f"baseline file {p} (run {data.get('run_id')})")
    return data


def accept_baseline(
    run_id: str, results_dir: str | Path | None = None, path: str | Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Promote a nightly run's passing cells to results/baselines/<matrix>.json (or `path`)."""
    cells = run_cells_of(run_id, results_dir)
    if not cells:
        known = [r["run_id"] for r in results.read(RUNS_KIND, results_dir)][-5:]
        hint = f"; recent runs: {', '.join(known)}" if known else ""
        raise HarnessError(f"no nightly run {run_id!r} in {results.results_dir(results_dir)}{hint}")
    matrix = cells[0]["matrix"]
    ok = {c["cell"]: c for c in cells if c.get("status") == "ok"}
    data = {
        "matrix": matrix,
        "run_id": run_id,
        "accepted": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": results.git_sha(),
        "skipped_failed_cells": sorted(c["cell"] for c in cells if c.get("status") != "ok"),
        "cells": ok,
    }
    out = Path(path) if path else baseline_path(matrix, results_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return out, data


# --- the whole run -------------------------------------------------------------------------------------


@dataclass
class NightlyRun:
    run_id: str
    matrix: str
    exit_code: int
    cells: list[dict[str, Any]]
    baseline: str | None
    seconds: float
    report_dir: Path
    files: dict[str, str]


def run_nightly(
    matrix_path: str | Path,
    jobs: int = 1,
    results_dir: str | Path | None = None,
    baseline: str | Path | None = None,
    build_dir: str | None = None,
    say: Say = lambda _m: None,
    reports: bool = True,
    resume: str | None = None,
    status: Callable[[str], None] | None = None,
    scheduler: str | None = None,
) -> NightlyRun:
    """Run the matrix, judge it, write the reports; the exit code is in the returned run. `resume`: the id
    of a run that never finished (killed): its recorded cells are kept and only the others run.
    `scheduler`: run the cells on a Dask cluster (tcp://HOST:PORT, or local:N) instead of `jobs` local
    processes (harness.cluster)."""
    matrix = load_matrix(matrix_path)
    rdir = str(results.results_dir(results_dir))
    base = find_baseline(matrix.name, rdir, baseline, exclude_run=resume)
    run_id = resume or results.new_run_id()
    kept = _resumable_cells(resume, matrix, rdir) if resume else {}
    out_dir = results.results_dir(rdir) / "nightly" / run_id
    say(
        f"nightly {matrix.name}: run {run_id}, {len(matrix.cells)} cells, "
        f"{f'on the cluster at {scheduler}' if scheduler else f'{jobs} job(s)'}; baseline: "
        f"{base['source'] if base else 'none yet (every cell is new)'}"
    )
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    if kept:
        say(f"resuming run {run_id}: {len(kept)} of {len(matrix.cells)} cells already recorded, kept")
    todo = [c for c in matrix.cells if c.key not in kept]
    try:
        if scheduler:
            from harness.cluster import run_cells_cluster

            cells_run = run_cells_cluster(todo, run_id, matrix.name, scheduler, rdir, build_dir, say, status)
        else:
            cells_run = run_cells(todo, run_id, matrix.name, jobs, rdir, build_dir, out_dir / "cells", say, status)
        ran = {c["cell"]: c for c in cells_run}
    except KeyboardInterrupt:
        # Ctrl-C: a report of the cells that finished, so the time spent is not lost. The run is not
        # recorded as finished (history ignores it; --resume completes it and writes the full report).
        done = {r["cell"]: r for r in run_cells_of(run_id, rdir)}
        judged = judge([done[c.key] for c in matrix.cells if c.key in done], base, matrix)
        partial = {"run_id": run_id, "matrix": matrix.name, "matrix_file": str(matrix_path), "started": started,
                   "seconds": round(time.monotonic() - t0, 2), "jobs": jobs, "exit_code": 130, "interrupted": True,
                   "baseline": base["source"] if base else None, "report_dir": str(out_dir)}  # fmt: skip
        if judged:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "run.json").write_text(json.dumps({**partial, "cells": judged}, indent=1, default=str) + "\n")
        if reports and judged:
            from harness.report import write_nightly_reports

            write_nightly_reports({**partial, "cells": judged}, rdir, out_dir)
        where = f"a report of the {len(judged)} of {len(matrix.cells)} cells that finished is in {out_dir}"
        say(f"interrupted: {where if judged else 'no cell had finished'}; finish the run with --resume {run_id}")
        raise
    cells = [kept.get(c.key) or ran[c.key] for c in matrix.cells]
    for r in ratio_cells(cells, run_id, matrix.name):
        results.append(CELLS_KIND, r, rdir)
        say(f"{r['cell']}: native runs in {r['metrics'][RATIO]:.3f} x tflm-cmsis's count")
        cells.append(r)
    seconds = round(time.monotonic() - t0, 2)
    judged = judge(cells, base, matrix)
    code = exit_code(judged)
    counts: dict[str, int] = {}
    for c in judged:
        counts[c["verdict"]["status"]] = counts.get(c["verdict"]["status"], 0) + 1
    summary = {
        "run_id": run_id,
        "matrix": matrix.name,
        "matrix_file": str(matrix_path),
        "description": matrix.description,
        "started": started,
        "seconds": seconds,
        "jobs": jobs,
        "scheduler": scheduler,
        "exit_code": code,
        "verdicts": counts,
        "baseline": base["source"] if base else None,
        "baseline_run": base.get("run_id") if base else None,
        "report_dir": str(out_dir),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps({**summary, "cells": judged}, indent=1, default=str) + "\n")
    files: dict[str, str] = {"run": str(out_dir / "run.json")}
    if reports:
        from harness.report import write_nightly_reports

        files.update({k: str(v) for k, v in write_nightly_reports({**summary, "cells": judged}, rdir, out_dir).items()})
    results.append(RUNS_KIND, {**summary, "files": files}, rdir)
    return NightlyRun(run_id, matrix.name, code, judged, summary["baseline"], seconds, out_dir, files)
