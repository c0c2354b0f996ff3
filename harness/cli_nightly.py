"""`harness nightly`, `harness baseline accept`, `harness history`: regression runs and their trends.

Exit codes of `harness nightly`: 0 clean (no regression, no failed cell), 1 a regression or a failed cell,
2 the run itself broke (invalid matrix, unreadable baseline, or no cell could measure anything)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers) -> None:
    from harness.cli import add_output_options, opt_flag

    n = subparsers.add_parser(
        "nightly",
        help="run a matrix of boards x models x options and judge it against a baseline",
        description="Runs every cell of the matrix (bench, and accuracy where the cell names a data set), "
        "judges it against results/baselines/<matrix>.json or the last passing run, and writes "
        "results/nightly/<run id>/report.html, summary.md and junit.xml. Exit: 0 clean, 1 regression or "
        "failed cell, 2 the run itself broke.",
    )
    n.add_argument("--matrix", default="nightly.toml", help="the matrix file (default ./nightly.toml)")
    n.add_argument("--jobs", "-j", type=int, default=1, help="cells run side by side (each its own QEMU)")
    n.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="run the cells on a Dask cluster: tcp://HOST:8786 (lab hosts running `harness worker`), or local:N "
        "(N worker processes on this machine); --jobs is then unused",
    )  # fmt: skip
    n.add_argument("--results", default=None, help="results folder (default ./results or $HARNESS_RESULTS)")
    n.add_argument("--baseline", default=None, help="a baseline file (default results/baselines/<matrix>.json)")
    n.add_argument("--build-dir", default=None, help="build cache root (default ./build or $HARNESS_BUILD_DIR)")
    n.add_argument("--json", action="store_true", help="print the run's verdict as JSON")
    n.add_argument(
        "--resume", default=None, metavar="RUN_ID",
        help="finish a run that was killed: keep the cells it recorded, run the others, then judge and report",
    )  # fmt: skip
    n.set_defaults(func=cmd_nightly)

    w = subparsers.add_parser(
        "worker",
        help="serve nightly cells to a Dask scheduler from this host (its boards and QEMU slots)",
        description="Starts a Dask worker that advertises, as worker resources, each board this host reaches "
        "through an attached probe (board-<name>: 1, probe-<unique id>: 1) and its QEMU slots (qemu: N). "
        "`harness nightly --scheduler` then sends it the cells those resources can run.",
    )
    w.add_argument("--scheduler", required=True, metavar="ADDRESS", help="the scheduler, e.g. tcp://lab1:8786")
    w.add_argument("--qemu", type=int, default=None, metavar="N", help="QEMU slots (default: this host's cores)")
    w.add_argument("--name", default=None, help="the worker's name on the dashboard (default: Dask's)")
    w.add_argument("--dry-run", action="store_true", help="print what it would advertise and run, then exit")
    w.set_defaults(func=cmd_worker)

    b = subparsers.add_parser("baseline", help="manage nightly baselines")
    bsub = b.add_subparsers(dest="baseline_command", required=True, metavar="{accept,list,show}")
    acc = bsub.add_parser("accept", help="promote a nightly run to results/baselines/<matrix>.json")
    acc.add_argument("run_id", help="the nightly run to promote (see `harness baseline list` or the report)")
    acc.add_argument("--results", default=None)
    acc.add_argument("--output", default=None, help="write the baseline here instead")
    acc.set_defaults(func=cmd_baseline_accept)
    ls = bsub.add_parser("list", help="each matrix's baseline: its run, when it was accepted, its cells")
    ls.add_argument("--results", default=None)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_baseline_list)
    sh = bsub.add_parser("show", help="one matrix's baseline, cell by cell")
    sh.add_argument("matrix", help="the matrix's name (the `name` in its .toml, e.g. default)")
    sh.add_argument("--results", default=None)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_baseline_show)

    h = subparsers.add_parser(
        "history",
        help="one metric of one board and model over time: table and plot",
        description="Every recorded value of one metric for one model on one board, oldest first, with a plot. "
        "Exit codes: 0 values shown, 1 none recorded for this board and metric, 2 an error (such as a model "
        "with no runs at all).",
    )
    h.add_argument("--board", required=True, help="a board from boards.toml, e.g. nucleo-f746")
    h.add_argument(
        "--model",
        required=True,
        help="a zoo name (aliases too) or a .tflite; runs of the same model file under another name count too",
    )
    h.add_argument(
        "--metric",
        required=True,
        help="instructions | cycles | count | peak_sram_bytes | flash_bytes | arena_bytes | peak_stack_bytes | "
        "latency_ms | accuracy",
    )
    h.add_argument("--opt", default=None, type=opt_flag, help="only runs built with this flag, e.g. -O2")
    h.add_argument("--nightly-only", action="store_true", help="only runs made by `harness nightly`")
    h.add_argument("--results", default=None)
    h.add_argument("--plot", default=None, help="PNG path (default results/history/<board>__<model>__<metric>.png)")
    add_output_options(h, "the points")
    h.set_defaults(func=cmd_history)


def cmd_worker(args: argparse.Namespace) -> int:
    from harness.cli import console
    from harness.cluster import run_worker

    if args.qemu is not None and args.qemu < 0:
        from harness.errors import HarnessError

        raise HarnessError(f"--qemu must be >= 0 slots, got {args.qemu}")
    # not wrapped: the command it prints is one to copy
    say = lambda text: console.print(text, soft_wrap=True, highlight=False)  # noqa: E731
    return run_worker(args.scheduler, args.qemu, args.dry_run, say, args.name)


def cmd_nightly(args: argparse.Namespace) -> int:
    import contextlib

    from harness.cli import _print_json, console, err_console
    from harness.errors import HarnessError
    from harness.nightly import EXIT_BROKEN, run_nightly

    # at a terminal a live line says what each running cell is doing; a log gets the finished cells only
    live = console.status("starting") if console.is_terminal and not args.json else contextlib.nullcontext()
    try:
        with live as st:
            say = err_console.print if args.json else console.print
            run = run_nightly(
                args.matrix, max(1, args.jobs), args.results, args.baseline, args.build_dir, say=say,
                resume=args.resume, status=None if st is None else (lambda text: st.update(text)),
                scheduler=args.scheduler,
            )  # fmt: skip
    except HarnessError as e:  # the run itself broke: exit 2 (the CLI's HarnessError path also gives 2)
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        return EXIT_BROKEN
    if args.json:
        _print_json(
            {
                "run_id": run.run_id,
                "matrix": run.matrix,
                "exit_code": run.exit_code,
                "baseline": run.baseline,
                "seconds": run.seconds,
                "files": run.files,
                "cells": [
                    {k: c.get(k) for k in ("cell", "status", "error", "reason", "metrics", "verdict", "seconds")}
                    for c in run.cells
                ],
            }
        )
        return run.exit_code
    _print_cells(run.cells)
    from harness.report import verdict_line

    console.print(verdict_line(run.matrix, run.run_id, run.cells, run.exit_code), highlight=False)
    console.print(
        f"{run.seconds:.1f} s; reports: {run.files.get('html')}, {run.files.get('markdown')}, "
        f"{run.files.get('junit')}, {run.files.get('csv')}"
    )
    return run.exit_code


def _print_cells(cells: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from harness.cli import show
    from harness.report import STATUS_STYLE, check_text

    t = Table(title="nightly cells", title_justify="left")
    for c in ("cell", "verdict", "instructions/cycles", "peak SRAM", "flash", "accuracy", "notes"):
        # a figure and its change stay on one line; show() lays the rows out as blocks when they do not fit
        t.add_column(c, no_wrap=c not in ("cell", "notes"))
    for c in cells:
        v = c["verdict"]
        checks = {x["metric"]: x for x in v["checks"]}
        m = c.get("metrics", {})
        count_metric = "instructions" if "instructions" in m else "cycles"
        t.add_row(
            c["cell"],
            f"[{STATUS_STYLE[v['status']]}]{v['status']}[/]",
            check_text(count_metric, m, checks),
            check_text("peak_sram_bytes", m, checks),
            check_text("flash_bytes", m, checks),
            check_text("accuracy", m, checks),
            "; ".join(v["notes"]),
        )
    show(t)


def cmd_baseline_accept(args: argparse.Namespace) -> int:
    from harness.cli import console
    from harness.nightly import accept_baseline

    path, data = accept_baseline(args.run_id, args.results, args.output)
    console.print(f"baseline for matrix {data['matrix']}: run {data['run_id']}, {len(data['cells'])} cells -> {path}")
    if data["skipped_failed_cells"]:
        console.print(f"not in the baseline (failed in that run): {', '.join(data['skipped_failed_cells'])}")
    return 0


def _baselines(results_dir) -> dict[str, dict[str, Any]]:
    from harness.errors import HarnessError
    from harness.nightly import baselines_dir

    out = {}
    for f in sorted(baselines_dir(results_dir).glob("*.json")):
        try:
            out[f.stem] = {**json.loads(f.read_text()), "file": str(f)}
        except (OSError, json.JSONDecodeError) as e:
            raise HarnessError(f"{f}: not a readable baseline ({e})") from e
    return out


def cmd_baseline_list(args: argparse.Namespace) -> int:
    from harness.cli import _print_json, _table, console, show

    found = _baselines(args.results)
    rows = [{"matrix": m, "run_id": b.get("run_id"), "accepted": b.get("accepted"), "git_sha": b.get("git_sha"),
             "cells": len(b.get("cells", {})), "file": b["file"]} for m, b in found.items()]  # fmt: skip
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        console.print("no baselines yet: `harness baseline accept RUN_ID` makes one from a nightly run")
        return 0
    cols = ["matrix", "run", "accepted", "git sha", "cells"]
    show(_table("nightly baselines", cols, [[r["matrix"], r["run_id"], r["accepted"], (r["git_sha"] or "-")[:10],
                                             r["cells"]] for r in rows], justify_from=4))  # fmt: skip
    return 0


def cmd_baseline_show(args: argparse.Namespace) -> int:
    from harness.cli import _print_json, _table, console, show
    from harness.errors import HarnessError, did_you_mean
    from harness.report import fmt_value

    found = _baselines(args.results)
    if args.matrix not in found:
        raise HarnessError(
            f"no baseline for matrix {args.matrix!r}{did_you_mean(args.matrix, found)}; "
            + (f"baselines: {', '.join(found)}" if found else "there are none yet (`harness baseline accept RUN_ID`)")
        )
    b = found[args.matrix]
    if args.json:
        _print_json(b)
        return 0
    metrics = ["instructions", "cycles", "peak_sram_bytes", "flash_bytes", "accuracy"]
    cells = b.get("cells", {})
    used = [m for m in metrics if any(m in (c.get("metrics") or {}) for c in cells.values())]
    rows = [[key, *[fmt_value(m, c["metrics"][m]) if m in (c.get("metrics") or {}) else "-" for m in used]]
            for key, c in sorted(cells.items())]  # fmt: skip
    show(_table(f"baseline of {args.matrix}: run {b.get('run_id')}, accepted {b.get('accepted')}", ["cell", *used],
                rows))  # fmt: skip
    if b.get("skipped_failed_cells"):
        console.print(f"not in it (failed in that run): {', '.join(b['skipped_failed_cells'])}")
    console.print(f"file: {b['file']}")
    return 0


def _model_digest(model: str) -> str | None:
    """The sha256 bench records for `model` (a zoo name or a .tflite), or None when it cannot be read here:
    then history goes by name alone."""
    from harness.bench import model_digest
    from harness.errors import HarnessError
    from harness.zoo import resolve_model

    try:
        return model_digest(resolve_model(model)[0])
    except HarnessError:
        return None


def cmd_history(args: argparse.Namespace) -> int:
    from harness.cli import _print_csv, _table, console, show
    from harness.errors import HarnessError, did_you_mean
    from harness.report import _same_model, fmt_value, history_plot, metric_history, recorded_digests, recorded_models

    digest = _model_digest(args.model)  # the same model file under another name is the same history
    known = recorded_models(args.results)
    if not any(_same_model(m, args.model) for m in known) and digest not in recorded_digests(args.results):
        names = sorted(known)
        raise HarnessError(
            f"no runs of model {args.model!r} are recorded{did_you_mean(args.model, names)}; "
            + (f"recorded models: {', '.join(names)}" if names else "the results store is empty")
        )
    rows = metric_history(
        args.board, args.model, args.metric, args.results, opt=args.opt, nightly_only=args.nightly_only,
        digest=digest,
    )  # fmt: skip
    plot = history_plot(rows, args.board, args.model, args.metric, args.results, args.plot) if rows else None
    if args.json:
        print(json.dumps({"board": args.board, "model": args.model, "metric": args.metric, "plot": plot and str(plot),
                          "points": rows}, indent=2, default=str))  # fmt: skip
        return 0 if rows else 1
    if not rows:
        console.print(f"no recorded {args.metric} for {args.model} on {args.board}")
        return 1
    acc = args.metric == "accuracy"
    if args.csv:
        cols = ["time", "run_id", "nightly_run", *(("dataset", "samples") if acc else ("opt",)), args.metric]
        _print_csv(cols, [[r["time"], r["run_id"], r.get("nightly_run"),
                           *((r.get("dataset"), r.get("samples")) if acc else (r.get("opt"),)), r["value"]]
                          for r in rows])  # fmt: skip
        return 0
    table_rows = []
    prev = None
    last_over: dict[tuple, float] = {}  # accuracy: the last figure over each set of samples
    for r in rows:
        if acc:  # in points, as the nightly judges it, against the last run over the same samples
            over = (r.get("dataset_sha256"), r.get("samples"))
            delta = f"{r['value'] - last_over[over]:+.2f} pt" if over in last_over else ""
            last_over[over] = r["value"]
            middle = [r.get("dataset") or "", "" if r.get("samples") is None else f"{r['samples']:,}"]
        else:
            p = prev and prev["value"]
            delta = f"{100.0 * (r['value'] - p) / p:+.3f} %" if p else ""
            middle = [r.get("opt") or ""]
        table_rows.append([r["time"], r["run_id"], r.get("nightly_run") or "", *middle,
                           fmt_value(args.metric, r["value"]), delta])  # fmt: skip
        prev = r
    cols = ["time", "run", "nightly run", *(("data set", "samples") if acc else ("opt",)), args.metric, "change"]
    show(_table(f"{args.metric} of {args.model} on {args.board}", cols, table_rows, justify_from=4))
    console.print(f"plot: {plot}")
    return 0
