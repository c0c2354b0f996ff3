"""Engines side by side: the same model, board, input and flags through each engine, one row each.

Every engine's outputs are checked against the TFLite interpreter (LiteRT with its reference kernels) when it
is installed, else against the numpy reference (bit-exact with it, and said so). A deviation is a finding
about that engine, shown in its row; only the native engine is held to bit-exactness by contract. One engine
failing (it does not fit, it does not build) fills its row with the reason, and the others still run.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from harness import results
from harness.bench import BenchOptions, Say, Step, run_bench
from harness.errors import HarnessError

COLUMNS = (
    "engine", "count", "ratio", "arena_bytes", "arena_used_bytes", "peak_stack_bytes", "peak_sram_bytes",
    "code_bytes", "weight_bytes", "flash_bytes", "outputs_match", "deviation", "status", "reason",
)  # fmt: skip


@dataclass
class CompareOptions:
    board: str
    model: str
    engines: tuple[str, ...] = ("native", "tflm-cmsis", "tflm-ref")
    target: str = "auto"
    inputs: int = 1
    repetitions: int = 1
    warmup: int = 0
    opt: str = "-O2"
    seed: int = 0
    timeout: float = 300.0
    results_dir: str | None = None
    build_dir: str | None = None
    record: bool = True


def interpreter_oracle(graph, say: Say):
    """The interpreter on the model's own bytes (the int8 interior, as written by harness, when the model has
    a float boundary), or None when LiteRT is not installed."""
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        say("LiteRT is not installed (pip install ai-edge-litert): outputs are checked against the numpy "
            "reference, which is bit-exact with the TFLite interpreter")  # fmt: skip
        return None
    from harness.model import to_tflite_bytes
    from harness.model.boundary import split_boundary
    from harness.oracle import litert_compatible, run_tflite

    interior = split_boundary(graph)[0]
    if len(interior.ops) != len(graph.ops) or graph.source is None:
        blob = to_tflite_bytes(interior)
    else:
        blob = litert_compatible(graph.source)
    return lambda _g, xs: run_tflite(blob, xs)


def run_compare(
    opts: CompareOptions, say: Say = lambda _m: None, step: Step = lambda *_a, **_k: None
) -> dict[str, Any]:
    from harness.zoo import resolve_model

    graph, label = resolve_model(opts.model)
    said: set[str] = set()

    def say_once(msg: str) -> None:  # each engine's bench says the same things (the QEMU fallback, ...)
        if msg not in said:
            said.add(msg)
            say(msg)

    oracle = interpreter_oracle(graph, say_once)
    compare_id = results.new_run_id()
    rows: list[dict[str, Any]] = []
    unit = None
    for name in opts.engines:
        step(f"{name}")
        bench = BenchOptions(
            board=opts.board, model=opts.model, target=opts.target, repetitions=opts.repetitions,
            inputs=opts.inputs, warmup=opts.warmup, opt=opts.opt, seed=opts.seed, results_dir=opts.results_dir,
            timeout=opts.timeout, build_dir=opts.build_dir, record=opts.record, engine=name,
        )  # fmt: skip
        row: dict[str, Any] = {"engine": name, "status": "failed"}
        try:
            r = run_bench(
                bench, say=say_once, step=lambda what, *_a, _n=name, **_k: step(f"{_n}: {what}"), oracle=oracle
            )
        except HarnessError as e:
            row["reason"] = str(e)  # shown with the table, the others still run
            rows.append(row)
            continue
        f = r["figures"]
        row.update(status="ok", outputs_match=r["outputs_match"], bench_run_id=r["run_id"])
        row["deviation"] = "; ".join(r.get("output_deviations", [])) or None
        if f is not None:
            unit = f["count_unit"]
            row.update({k: f[k] for k in COLUMNS if k in f and k != "count"}, count=f["count"]["median"])
        rows.append(row)
    first = rows[0].get("count")  # the first engine is the baseline of every ratio
    for row in rows:
        c = row.get("count")
        row["ratio"] = c / first if c and first else None
    out = {
        "compare_id": compare_id,
        "board": opts.board,
        "model": label,
        "engines": list(opts.engines),
        "count_unit": unit,
        "expected_from": "numpy reference (bit-exact with TFLite)" if oracle is None else "TFLite interpreter",
        "inputs": opts.inputs,
        "seed": opts.seed,
        "opt": opts.opt,
        "rows": rows,
    }
    if opts.record:
        for row in rows:
            results.append("compare", {"run_id": compare_id, "board": opts.board, "model": label, **row},
                           opts.results_dir)  # fmt: skip
        out["result_file"] = str(results.results_dir(opts.results_dir) / "compare.jsonl")
    return out


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["board", "model", "count_unit", *COLUMNS])
    for row in report["rows"]:
        w.writerow([report["board"], report["model"], report["count_unit"], *(_csv(row.get(c)) for c in COLUMNS)])
    return buf.getvalue()


def _csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
