"""`harness compare` (engines side by side) and `harness engines` (which engines, and fetching TFLM's sources)."""

from __future__ import annotations

import argparse
import json

from harness.engines import DEFAULT, ENGINES


def register(subparsers) -> None:
    from harness.cli import opt_flag

    c = subparsers.add_parser(
        "compare",
        help="one model on one board through several engines, side by side",
        description="Runs the same model, input and flags through each engine and prints one row per engine: "
        "instructions (cycles on a board), the ratio to the first engine, arena, stack, peak SRAM, code and "
        "model flash, and whether its outputs equal the TFLite interpreter's.",
    )
    c.add_argument("--board", required=True, help="a board from boards.toml, e.g. nucleo-f746")
    c.add_argument("--model", required=True, help="a zoo name or a path to a .tflite")
    c.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help=f"comma-separated, the first is the baseline ({', '.join(ENGINES)})",
    )
    c.add_argument(
        "--target", choices=["auto", "qemu", "pyocd"], default="auto",
        help="auto: the board when a probe for it is attached, else its QEMU fallback",
    )  # fmt: skip
    c.add_argument("--inputs", "-m", type=int, default=1, help="random inputs (seeded) through every engine")
    c.add_argument("--repetitions", "-n", type=int, default=1, help="timed inferences per input")
    c.add_argument("--opt", default="-O2", type=opt_flag, help="optimisation flag for every engine's build")
    c.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds one device request may take")
    c.add_argument("--results", default=None, help="results folder (default ./results or $HARNESS_RESULTS)")
    out = c.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true", help="print the table as CSV")
    c.set_defaults(func=cmd_compare)

    e = subparsers.add_parser("engines", help="the engines, and fetching TFLite Micro's sources")
    esub = e.add_subparsers(dest="engines_command", required=True, metavar="{list,fetch}")
    ls = esub.add_parser("list", help="each engine and whether it can build here")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_engines_list)
    f = esub.add_parser("fetch", help="clone TFLite Micro, CMSIS-NN and their dependencies at the pinned commits")
    f.add_argument("what", choices=["tflm"], help="what to fetch: tflm (TFLite Micro, CMSIS-NN and their dependencies)")
    f.set_defaults(func=cmd_engines_fetch)


def add_engine_option(parser) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT,
        help="native: harness's generated C; tflm-cmsis / tflm-ref: TFLite Micro with CMSIS-NN or its reference "
        "kernels",
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from harness import engines
    from harness.cli import _print_json, console, err_console, show
    from harness.compare import CompareOptions, run_compare, to_csv

    opts = CompareOptions(
        board=args.board, model=args.model, engines=tuple(engines.parse_list(args.engines)), target=args.target,
        inputs=args.inputs, repetitions=args.repetitions, opt=args.opt, seed=args.seed, timeout=args.timeout,
        results_dir=args.results,
    )  # fmt: skip
    if args.json or args.csv:  # stdout is the data: what is said goes to stderr
        report = run_compare(opts, say=lambda m: err_console.print(m, highlight=False))
    else:  # said through the spinner's own console, so the two do not overprint each other
        with console.status("comparing", spinner="dots") as status:
            report = run_compare(
                opts,
                say=lambda m: console.print(m, highlight=False),
                step=lambda what, *_a: status.update(f"comparing: {what}"),
            )
    if args.json:
        _print_json(report)
    elif args.csv:
        print(to_csv(report), end="")
    else:
        unit = report["count_unit"] or "count"
        t = Table(
            title=f"{report['model']} on {report['board']}: {unit}"
            + (" (QEMU: not cycles)" if unit == "instructions" else ""),
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        cols = ("engine", "count", "x 1st", "arena", "stack", "SRAM", "code", "model", "= TFLite")
        for col in cols:
            t.add_column(col, justify="left" if col in ("engine", "= TFLite") else "right", no_wrap=True)
        for r in report["rows"]:
            if r["status"] != "ok":
                t.add_row(r["engine"], "-", "-", "-", "-", "-", "-", "-", "FAILED")
                continue
            t.add_row(
                r["engine"], f"{r['count']:,}", "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                _k(r["arena_bytes"]), f"{r['peak_stack_bytes']:,}", _k(r["peak_sram_bytes"]), _k(r["code_bytes"]),
                _k(r["weight_bytes"]), "yes" if r["outputs_match"] else "DIFFER",
            )  # fmt: skip
        show(t)
        console.print(
            f"count: {unit}; x 1st: to the first engine; sizes in KiB, stack in B; SRAM = arena + stack + static "
            f"RAM; model = the .tflite (TFLM) or the emitted weights (native). Outputs checked against the "
            f"{report['expected_from']}; {report['inputs']} input(s), seed {report['seed']}, {report['opt']}.",
            highlight=False,
        )
        for r in report["rows"]:
            if r["status"] != "ok":
                console.print(f"{r['engine']} failed: {r['reason']}", highlight=False)
            used = r.get("arena_used_bytes")
            if used is not None and r["arena_bytes"] > (used + 15) // 16 * 16:  # more than alignment
                console.print(
                    f"{r['engine']}: TFLM reports arena_used_bytes() {r['arena_used_bytes']:,} B; AllocateTensors "
                    f"needs {r['arena_bytes']:,} B (its planner's scratch is not counted)",
                    highlight=False,
                )
        if report.get("result_file"):
            console.print(f"recorded in {report['result_file']}")
    return 0 if all(r["status"] == "ok" for r in report["rows"]) else 1


def _k(n: int) -> str:
    return f"{n / 1024:,.1f}"


def cmd_engines_list(args: argparse.Namespace) -> int:
    from harness.cli import console
    from harness.engines import tflm
    from harness.errors import HarnessError

    rows = [{"engine": "native", "available": True, "detail": "harness's generated C (firmware/kernels)"}]
    try:
        root = tflm.sources_root()
        detail, ok = f"TFLite Micro sources at {root}", True
    except HarnessError as e:
        detail, ok = str(e), False
    rows += [{"engine": n, "available": ok, "detail": detail} for n in ("tflm-cmsis", "tflm-ref")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        console.print(f"{r['engine']:<11} {'yes' if r['available'] else 'NO ':<4} {r['detail']}", highlight=False)
    return 0


def cmd_engines_fetch(args: argparse.Namespace) -> int:
    from harness.cli import console
    from harness.engines import tflm

    root = tflm.fetch(say=lambda m: console.print(m, highlight=False))
    console.print(f"TFLite Micro sources ready at {root}")
    return 0
