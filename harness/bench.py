"""One benchmark: generate the engine, build the firmware, run it on a target, check and measure, record.

The bench does not know which target it runs on: it asks `harness.targets` for one and talks the protocol.
Every output is checked against the numpy reference (bit-exactness is the contract); the record is appended
to the results store the moment it exists, and a failure is recorded with its reason before it is raised.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness import results
from harness.errors import HarnessError, TargetError

Say = Callable[[str], None]
Step = Callable[..., None]
Oracle = Callable[[Any, list[np.ndarray]], list[np.ndarray]]  # (interior graph, inputs) -> expected outputs


@dataclass
class BenchOptions:
    board: str
    model: str
    target: str = "auto"  # auto | qemu | pyocd | host
    repetitions: int = 5
    inputs: int = 2
    warmup: int = 1
    opt: str = "-O2"
    seed: int = 0
    results_dir: str | None = None
    timeout: float = 120.0
    build_dir: str | None = None
    record: bool = True
    probe: str = ""  # a probe unique id (`remote:HOST:PORT` for `pyocd server`), else boards.toml / discovery
    serial: str = ""  # the board's serial port as a pyserial URL (`rfc2217://HOST:PORT` on another host)
    layers: bool = False  # a profiling build: the counter stamped after every layer (per-layer figures)
    engine: str = "native"  # native | tflm-cmsis | tflm-ref (harness.engines)
    fuse: bool = True  # the native engine may run layer chains row by row (False: the layer-by-layer plan)


MAX_INPUTS = 10_000


def check_options(opts: BenchOptions) -> None:
    """Every numeric option in range, or a HarnessError naming it (the CLI exits 2 on it)."""
    from harness.protocol import MAX_REPS

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HarnessError(what)

    need(
        isinstance(opts.inputs, int) and 1 <= opts.inputs <= MAX_INPUTS,
        f"--inputs must be 1..{MAX_INPUTS}, got {opts.inputs}",
    )
    need(1 <= opts.repetitions <= MAX_REPS, f"--repetitions must be 1..{MAX_REPS}, got {opts.repetitions}")
    need(0 <= opts.warmup <= MAX_REPS, f"--warmup must be 0..{MAX_REPS}, got {opts.warmup}")
    need(0 <= opts.seed < 2**63, f"--seed must be a non-negative integer, got {opts.seed}")
    need(opts.timeout > 0, f"--timeout must be > 0 seconds, got {opts.timeout}")


class OutputMismatch(HarnessError):
    """The device's output differs from the reference: the engine is wrong, whatever the speed."""


def build_root(path: str | None = None) -> Path:
    return Path(path or os.environ.get("HARNESS_BUILD_DIR") or "build")


def model_digest(graph) -> str:
    from harness.model import to_tflite_bytes

    return hashlib.sha256(to_tflite_bytes(graph)).hexdigest()


def random_inputs(specs, count: int, seed: int) -> list[list[np.ndarray]]:
    """`count` sets of uniformly random int8 inputs (seeded: the same every run, so counts compare)."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(-128, 128, size=tuple(s.shape), dtype=np.int8) for s in specs] for _ in range(count)]


def first_difference(got: np.ndarray, want: np.ndarray) -> str:
    flat_g, flat_w = got.reshape(-1), want.reshape(-1)
    idx = int(np.flatnonzero(flat_g != flat_w)[0])
    n = int(np.count_nonzero(flat_g != flat_w))
    pos = np.unravel_index(idx, want.shape)
    where = tuple(int(p) for p in pos)
    return f"first at {where}: device {flat_g[idx]}, reference {flat_w[idx]} ({n} of {want.size} differ)"


def choose_target(board, kind: str, say: Say):
    """The target to run on and a plain description of it. auto = the board when its probe is attached,
    otherwise its QEMU fallback (said plainly, since QEMU counts instructions, not cycles)."""
    from harness import targets

    if kind == "host":
        return None, "host (generated C built with the host compiler: no counts)"
    if kind in ("auto", "pyocd"):
        probe = targets.find_probe(board) if hasattr(targets, "find_probe") else None
        if probe is not None:
            return targets.pyocd_target(board, probe), f"board via pyOCD probe {probe}"
        if kind == "pyocd":
            raise TargetError(f"no debug probe for {board.name} is attached (see `harness probes`)")
        machine = board.qemu_machine
        if board.is_qemu:  # a QEMU machine itself: there is no probe to look for
            say(f"{board.name} is QEMU's {board.machine}: counts are QEMU instructions, not cycles")
        else:
            say(
                f"no probe for {board.name} is attached: running on its QEMU fallback {machine.name} "
                f"({machine.machine}); counts are QEMU instructions, not cycles"
            )
    from harness.targets.qemu import QemuTarget

    machine = board.qemu_machine
    return QemuTarget(board), f"QEMU {machine.machine}, {board.name} memory limits"


@dataclass
class Engine:
    """A model made ready to run on one board and target by one engine: firmware built (not for host)."""

    board: Any
    graph: Any  # as given (may have a float boundary)
    interior: Any  # the int8 graph the device runs
    spec: Any  # harness.engines.EngineSpec: I/O, arena, weights, layers
    build: Any  # BuildResult, None on the host target
    target: Any  # a harness.targets Target, None on the host target
    target_kind: str  # qemu | pyocd | host
    target_desc: str
    digest: str
    work: Path
    profile: bool = False  # built with HARNESS_LAYER_PROFILE: per-layer counter stamps

    @contextmanager
    def open(self, timeout: float = 120.0, input_path: str = "auto") -> Iterator[Runner]:
        """A running device (or host library), always shut down afterwards. `input_path` "uart" sends
        inputs over the UART even where the target has a faster path (semihosting, SWD)."""
        if input_path not in INPUT_PATHS:
            raise HarnessError(f"--input-path must be one of {', '.join(INPUT_PATHS)}, got {input_path!r}")
        if self.target is None:
            from harness.targets.host import HostModel

            yield Runner(self, HostModel(self.spec.host, cache_dir=self.work / "host"), None)
            return
        with self.target.open(self.build, timeout=timeout) as session:
            _check_hello(session.hello, self.spec)
            if input_path == "uart" and hasattr(session, "input_path"):
                session.input_path = "uart"
            yield Runner(self, None, session)


@dataclass
class RunStats:
    counts: list[int]  # raw counter ticks, one per repetition
    peak_stack: int
    arena_high_water: int
    layer_ends: list[int] | None = None  # profiling builds: raw ticks at each layer's end, last repetition


INPUT_PATHS = ("auto", "uart")


class Runner:
    """Runs int8 inputs through an open engine: `run(inputs) -> (outputs, stats)`."""

    def __init__(self, engine: Engine, host, session) -> None:
        self.engine = engine
        self._host = host
        self.session = session
        self.hello = session.hello if session is not None else None
        self.input_bytes = 0  # moved to the device so far, and the seconds that took
        self.input_seconds = 0.0

    @property
    def input_path(self) -> str | None:
        """How inputs reach the device: "uart" (the protocol's PUT_INPUT), or the target's faster path
        ("semihosting" on QEMU, "swd" through a probe); None on the host target."""
        if self.session is None:
            return None
        return getattr(self.session, "input_path", "uart")

    def _put_input(self, index: int, data: bytes) -> None:
        t0 = time.perf_counter()
        put = getattr(self.session, "put_input", None)
        if put is not None:
            put(index, data)
        else:
            self.session.device.set_input(index, data)
        self.input_seconds += time.perf_counter() - t0
        self.input_bytes += len(data)

    def run_batch(self, batch: list[list[np.ndarray]]):
        """Each sample of `batch` run once in one request where the target can (RUN_STAGED on QEMU): a
        list of (outputs, stats) as `run` gives, or None where it cannot (then call `run`)."""
        runner = getattr(self.session, "run_batch", None)
        if runner is None or self.engine.profile:
            return None
        raw = [[np.ascontiguousarray(x, dtype=np.int8).tobytes() for x in inputs] for inputs in batch]
        specs = self.engine.spec.outputs
        got = runner(raw, [s.bytes for s in specs])
        if got is None:
            return None
        self.input_seconds += self.session.stage_seconds
        self.input_bytes += sum(len(b) for inputs in raw for b in inputs)
        results, stack, hw = got
        return [
            (
                [np.frombuffer(o, dtype=np.int8).reshape(tuple(s.shape)) for o, s in zip(outs, specs, strict=True)],
                RunStats([count], stack, hw),
            )
            for outs, count in results
        ]

    def run(self, inputs: list[np.ndarray], repetitions: int = 1, warmup: int = 0):
        specs = self.engine.spec.outputs
        if self._host is not None:
            return [np.asarray(o) for o in self._host.run(inputs)], None
        dev = self.session.device
        for i, x in enumerate(inputs):
            self._put_input(i, np.ascontiguousarray(x, dtype=np.int8).tobytes())
        if warmup:
            dev.infer(warmup)
        stats = dev.infer(repetitions)
        get = getattr(self.session, "get_output", dev.get_output)  # a probe reads large outputs over SWD
        outputs = [np.frombuffer(get(j, s.bytes), dtype=np.int8).reshape(tuple(s.shape)) for j, s in enumerate(specs)]
        ends = dev.get_layers() if self.engine.profile else None
        return outputs, RunStats([int(c) for c in stats.counts], stats.peak_stack, stats.arena_high_water, ends)


def prepare(
    board,
    graph,
    target: str = "auto",
    opt: str = "-O2",
    build_dir: str | None = None,
    say: Say = lambda _m: None,
    step: Step = lambda *_a, **_k: None,
    profile: bool = False,
    engine: str = "native",
    fuse: bool = True,
) -> Engine:
    """Make `graph` ready with `engine` and build its firmware for `board` on the chosen target; `profile`
    builds it to stamp the counter after every layer (engines with per-layer rows)."""
    from harness import engines
    from harness.model.boundary import split_boundary

    engines.check(engine)
    interior, _, _ = split_boundary(graph)
    digest = model_digest(graph)
    tgt, desc = choose_target(board, target, say)
    kind = "host" if tgt is None else tgt.kind
    work = build_root(build_dir) / digest[:16]
    profile = profile and tgt is not None
    spec, build = engines.prepare(
        engine, board, graph, interior, work, build=tgt is not None, qemu=kind == "qemu", opt=opt,
        profile=profile, say=say, step=step, fuse=fuse,
    )  # fmt: skip
    for note in spec.notes:
        say(note)
    return Engine(board, graph, interior, spec, build, tgt, kind, desc, digest, work, profile)


def run_bench(
    opts: BenchOptions, say: Say = lambda _m: None, step: Step = lambda *_a, **_k: None, oracle: Oracle | None = None
) -> dict[str, Any]:
    """Run one benchmark and return its record (also appended to the results store). The device's outputs
    are checked against the numpy reference, or against `oracle` (the TFLite interpreter) when given."""
    from harness.boards import get_board
    from harness.zoo import resolve_model

    check_options(opts)  # before any work: a bad option costs no build and no boot
    board = get_board(opts.board)
    if opts.probe or opts.serial:  # the command line pins the board's probe / port over boards.toml
        board = replace(board, probe=opts.probe or board.probe, serial=opts.serial or board.serial)
    graph, label = resolve_model(opts.model)
    record: dict[str, Any] = {
        "run_id": results.new_run_id(),
        "board": board.name,
        "model": label,
        "target": opts.target,
        "engine": opts.engine,
        "options": {k: v for k, v in asdict(opts).items() if k not in ("results_dir", "build_dir", "record")},
        "status": "failed",
    }
    try:
        _bench(opts, board, graph, record, say, step, oracle)
        record["status"] = "ok"
    except HarnessError as e:
        record["reason"] = str(e)  # what the user reads; the kind of failure goes beside it
        record["error"] = type(e).__name__
        if opts.record:
            results.append("bench", record, opts.results_dir)
        raise
    except Exception as e:  # a harness bug: the run is still recorded as failed, with what went wrong
        record["reason"] = f"internal error {type(e).__name__}: {e}"
        if opts.record:
            results.append("bench", record, opts.results_dir)
        raise
    if opts.record:  # the record as stored (schema, time, git sha), so --json prints what the store holds
        record = results.append("bench", record, opts.results_dir)
        record["result_file"] = str(results.results_dir(opts.results_dir) / "bench.jsonl")
    return record


def _bench(opts: BenchOptions, board, graph, record: dict[str, Any], say: Say, step: Step, oracle) -> None:
    from harness import reference
    from harness.build import toolchain_versions

    record["versions"] = toolchain_versions()
    engine = prepare(
        board,
        graph,
        opts.target,
        opts.opt,
        opts.build_dir,
        say,
        step,
        profile=opts.layers,
        engine=opts.engine,
        fuse=opts.fuse,
    )
    if opts.layers and not engine.profile:
        say("--layers: the host target counts nothing, so there are no per-layer figures")
    if engine.spec.notes:
        record["engine_notes"] = engine.spec.notes
    record["model_sha256"] = engine.digest
    record["target"] = engine.target_kind
    record["target_desc"] = engine.target_desc
    if engine.build is not None:
        b = engine.build
        record["build"] = {
            "elf": str(b.elf),
            "build_id": b.build_id,
            "cached": b.cached,
            "text": b.text,
            "rodata": b.rodata,
            "data": b.data,
            "bss": b.bss,
        }
    input_sets = random_inputs(engine.spec.inputs, opts.inputs, opts.seed)
    step("reference outputs")
    record["expected_from"] = "numpy reference (bit-exact with TFLite)" if oracle is None else "TFLite interpreter"
    if oracle is None:
        prepared = reference.Prepared(engine.interior)
        expected = [prepared.run(xs) for xs in input_sets]
    else:
        expected = [oracle(engine.interior, xs) for xs in input_sets]
    deviations: list[str] = []
    counts: list[int] = []
    layer_ends: list[list[int]] = []
    peak_stack = arena_hw = 0
    total = len(input_sets)
    step(f"starting {engine.target_desc}")
    with engine.open(opts.timeout) as runner:
        for k, (xs, want) in enumerate(zip(input_sets, expected, strict=True)):
            step(f"input {k + 1}/{total}: {opts.warmup} warm-up + {opts.repetitions} timed", k, total)
            got, stats = runner.run(xs, opts.repetitions, opts.warmup)
            diff = _difference(got, want, "the reference" if oracle is None else "the TFLite interpreter")
            if diff and opts.engine == "native":  # the generated code is bit-exact by contract
                raise OutputMismatch(diff)
            if diff:  # another engine's deviation is a finding about that engine, reported, not an error
                deviations.append(f"input {k}: {diff}")
            if stats is not None:
                counts.extend(stats.counts)
                peak_stack = max(peak_stack, stats.peak_stack)
                arena_hw = max(arena_hw, stats.arena_high_water)
                if stats.layer_ends is not None:
                    layer_ends.append(stats.layer_ends)
        step("done", total, total)
        hello = runner.hello
    record["outputs_match"] = not deviations
    if deviations:
        record["output_deviations"] = deviations
        say(f"{opts.engine}: {'; '.join(deviations)}")
    record["inputs"] = total
    record["repetitions"] = opts.repetitions
    record["figures"] = (
        None if hello is None else figures(board, hello, engine.build, engine.spec, counts, peak_stack, arena_hw)
    )
    if engine.profile and hello is not None:
        record["layers"] = layer_figures(board, hello, engine.spec, layer_ends)
        record["figures"]["count_note"] += (
            "; a profiling build: each layer's end reads the counter, which the total includes"
        )


def _difference(got: list[np.ndarray], want: list[np.ndarray], what: str) -> str:
    """'' when every output equals the expected one, else where the first differing output differs."""
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        w = np.asarray(w)
        g = np.asarray(g).reshape(w.shape)
        if not np.array_equal(g, w):
            return f"output {j} differs from {what}: {first_difference(g, w)}"
    return ""


def _check_hello(hello, spec) -> None:
    """The firmware must be the one we just built: the same arena (TFLM: and the same arena_used_bytes())."""
    if hello.arena_bytes != spec.arena_bytes or spec.arena_used not in (None, hello.arena_used):
        raise TargetError(
            f"the device reports an arena of {hello.arena_bytes} B ({hello.arena_used} B used), the build "
            f"planned {spec.arena_bytes} B ({spec.arena_used} B used): stale firmware?"
        )


def _per_count(board, hello) -> float:
    """Counter ticks -> the unit shown: QEMU instructions per SysTick tick, or 1 (DWT counts cycles)."""
    return board.qemu_machine.icount_per_tick if hello.counter_source == "qemu-icount" else 1.0


def layer_figures(board, hello, spec, layer_ends: list[list[int]]) -> list[dict[str, Any]]:
    """Per layer: its count (the median over the inputs of the difference between its end stamp and the one
    before), its share of the inference and its MACs per count. RESHAPE layers alias their input and count
    only the stamp itself."""
    if not layer_ends or any(len(e) != len(spec.layers) for e in layer_ends):
        raise TargetError(
            f"the device returned {len(layer_ends[0]) if layer_ends else 0} layer stamps for {len(spec.layers)} "
            "layers: firmware built without layer profiling?"
        )
    per = _per_count(board, hello)
    ends = np.asarray(layer_ends, dtype=np.int64)
    spans = np.diff(ends, axis=1, prepend=0) * per
    median = np.median(spans, axis=0)
    total = float(np.median(ends[:, -1])) * per
    rows: list[dict[str, Any]] = []
    for row, value in zip(spec.layers, median, strict=True):
        group = getattr(row, "group", None)
        if group is not None and rows and rows[-1].get("group") == group:
            # a fused group's layers interleave row by row: one stamp after the group, one row here
            last = rows[-1]
            last["layers"].append(row.index)
            last["macs"] += row.macs
            last["count"] += int(round(value))
            last["output_shape"] = list(row.output_shape)
            continue
        rows.append(
            {
                "index": row.index,
                "name": row.name if group is None else "fused",
                "op": row.op if group is None else "FUSED",
                "output_shape": list(row.output_shape),
                "macs": row.macs,
                "count": int(round(value)),
                **({} if group is None else {"group": group, "layers": [row.index]}),
            }
        )
    for r in rows:
        r["share"] = float(r["count"] / total) if total else 0.0
        r["macs_per_count"] = r["macs"] / r["count"] if r["count"] and r["macs"] else None
    return rows


def _fusion_figures(spec) -> dict[str, Any]:
    """The native engine's fused groups and the layer-by-layer plan's arena beside the fused one (planned
    bytes: the firmware built holds only one of the two)."""
    cg = spec.host
    if spec.engine != "native" or cg is None or not hasattr(cg, "plan"):
        return {}
    return {
        "fused_groups": [g.describe() for g in cg.plan.fused],
        "arena_unfused_bytes": cg.unfused_arena_bytes,
    }


def figures(board, hello, build, spec, counts: list[int], peak_stack: int, arena_hw: int) -> dict[str, Any]:
    """The reported figures, each labelled with its source (DESIGN.md: measurements carry their source)."""
    source = hello.counter_source
    per_tick = _per_count(board, hello)
    values = [round(c * per_tick) for c in counts]
    if source == "qemu-icount":
        unit = "instructions"
        note = f"QEMU instruction count (-icount shift=0, {per_tick:g} per SysTick tick): not cycles"
        if board.is_qemu:  # an emulated machine's clock (an FPGA image's, say) times no chip anyone ships
            latency, latency_note = None, "none: a QEMU machine has no real clock to estimate at"
        else:
            latency = statistics.median(values) / board.clock_hz * 1e3
            latency_note = f"ESTIMATE: instructions at 1 per cycle at the board's {board.clock_hz / 1e6:g} MHz"
    else:
        unit = "cycles"
        note = f"{source} cycle counter at {hello.clock_hz / 1e6:g} MHz"
        latency = statistics.median(values) / hello.clock_hz * 1e3
        latency_note = "measured: cycles / clock"
    macs = spec.macs
    med = statistics.median(values)
    static_ram = build.static_ram_bytes
    peak_sram = spec.arena_bytes + peak_stack + static_ram
    flash = build.flash_bytes
    return {
        "count_source": source,
        "count_unit": unit,
        "count_note": note,
        "count": {"min": min(values), "median": int(med), "max": max(values), "all": values},
        "macs": macs,
        "macs_per_count": macs / med if med else 0.0,
        "latency_ms": latency,
        "latency_note": latency_note,
        "arena_bytes": spec.arena_bytes,
        "arena_used_bytes": spec.arena_bytes if spec.arena_used is None else spec.arena_used,
        "arena_high_water_bytes": arena_hw,
        **_fusion_figures(spec),
        "peak_stack_bytes": peak_stack,
        "static_ram_bytes": static_ram,
        "harness_ram_bytes": build.harness,
        "peak_sram_bytes": peak_sram,
        "weight_bytes": spec.weight_bytes,
        "code_bytes": flash - spec.weight_bytes,
        "flash_bytes": flash,
        "board_sram_bytes": board.sram_bytes,
        "board_flash_bytes": board.flash_bytes,
        "fits": peak_sram <= board.sram_bytes and flash <= board.flash_bytes,
    }
