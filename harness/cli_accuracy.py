"""`harness accuracy`: a labelled data set through the device, with a report a person can look at."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers) -> None:
    from harness.cli import opt_flag

    a = subparsers.add_parser(
        "accuracy",
        help="run a labelled data set through the device; HTML + Markdown report",
        description="Runs every sample of a data set through the model on the device, checks each output "
        "against the host reference, and writes results/reports/<run id>/report.html and summary.md.",
    )
    a.add_argument("--board", required=True, help="a board from boards.toml, e.g. nucleo-f746")
    a.add_argument("--model", required=True, help="a zoo name (e.g. digits_cnn) or a path to a .tflite")
    a.add_argument(
        "--dataset",
        required=True,
        help="'digits' (held-out split), a folder with one sub-folder of images per class, or an .npz (x, y)",
    )
    a.add_argument(
        "--target",
        choices=["auto", "qemu", "pyocd", "host"],
        default="auto",
        help="auto: the board when a probe for it is attached, else its QEMU fallback",
    )
    a.add_argument("--limit", type=int, default=None, help="run only the first N samples")
    a.add_argument("--jobs", "-j", type=int, default=1, help="parallel QEMU instances (QEMU and host targets)")
    a.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="shard the samples over a Dask cluster's workers: tcp://HOST:8786 or local:N (docs/cluster.md)",
    )  # fmt: skip
    a.add_argument("--resume", metavar="RUN_ID", default=None, help="continue this interrupted run")
    a.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh (default: continue the last unfinished run of the same model/board/data)",
    )
    a.add_argument(
        "--input-range",
        default=None,
        help="how sample values become the model's input: 'raw' (they are real values in the model's units, "
        "quantized with the input's scale and zero point), 'auto' (stretch the data's range over the input's), "
        "LO:HI (stretch it over LO..HI), or 'int8' (they are the input tensor's values, sent as they are) "
        "(default: int8 for int8 data, auto for uint8 data and image folders, raw otherwise)",
    )
    a.add_argument(
        "--resize",
        choices=["bilinear", "nearest"],
        default=None,
        help="resize images of another size to the input's, and convert their channels (default: refuse "
        "data whose shape is not the input's)",
    )
    a.add_argument(
        "--channel-order", choices=["rgb", "bgr"], default="rgb", help="colour order the model takes (default: rgb)"
    )
    a.add_argument("--opt", default="-O2", type=opt_flag, help="optimisation flag for the firmware build")
    a.add_argument("--timeout", type=float, default=120.0, help="seconds one device request may take")
    a.add_argument(
        "--input-path",
        choices=["auto", "uart"],
        default="auto",
        help="how inputs reach the device: auto (the target's fastest: semihosting on QEMU; the UART "
        "otherwise) or uart (the protocol of record, everywhere) (default: auto)",
    )
    a.add_argument("--results", default=None, help="results folder (default ./results or $HARNESS_RESULTS)")
    from harness.cli_engines import add_engine_option

    add_engine_option(a)
    a.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    a.set_defaults(func=cmd_accuracy)


def cmd_accuracy(args: argparse.Namespace) -> int:
    from harness.accuracy import run_accuracy
    from harness.cli import console, err_console
    from harness.datasets import parse_mapping

    if args.jobs < 1:
        from harness.errors import HarnessError

        raise HarnessError("--jobs must be at least 1")
    resume: bool | str = False if args.no_resume else (args.resume or True)
    report = run_accuracy(
        args.board,
        args.model,
        args.dataset,
        target=args.target,
        limit=args.limit,
        jobs=args.jobs,
        results_dir=args.results,
        resume=resume,
        mapping=parse_mapping(args.input_range),
        resize_method=args.resize,
        channel_order=args.channel_order,
        opt=args.opt,
        timeout=args.timeout,
        say=lambda m: err_console.print(m, highlight=False),
        progress=not args.json,
        engine_name=args.engine,
        input_path=args.input_path,
        scheduler=args.scheduler,
    )
    if args.json:
        from harness.accuracy import _summary

        print(json.dumps(_summary(report), indent=2, sort_keys=True, default=str))
    else:
        print_report(report, console)
    f = report["figures"]
    return 0 if f.get("samples") and not f.get("disagreements") else 1


def print_report(report: dict[str, Any], console) -> None:
    from rich.table import Table

    from harness.accuracy_report import headline

    table = Table(
        title=f"{report['model']} on {report['board']} ({report['target_desc']}), data set {report['dataset']}",
        title_justify="left",
        show_header=False,
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("note")
    for a, b, c in headline(report):
        style = "bold red" if a.startswith("device = host") and report["figures"].get("disagreements") else None
        table.add_row(a, b, c, style=style)
    from harness.cli import show

    show(table, console)
    files = report.get("files") or {}
    if "html" in files:
        console.print(f"report: {files['html']}  (summary: {files['markdown']})", highlight=False)
