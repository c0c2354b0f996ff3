"""The command line. Thin by design: parse, call one function, print. Errors the harness raises on purpose
become one line on stderr and exit status 2; `--json` prints machine-readable output instead of tables."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.errors import HarnessError

EXTENSIONS = ("harness.cli_accuracy", "harness.cli_nightly", "harness.cli_boards", "harness.cli_engines")

console = Console()
err_console = Console(stderr=True)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _print_csv(columns: list[str], rows: list[list[Any]]) -> None:
    """Raw figures (no thousands separators, no units: the column says the unit) for a spreadsheet or pandas."""
    from harness.report import csv_text

    print(csv_text(columns, rows), end="")


def add_output_options(p: argparse.ArgumentParser, what: str) -> None:
    """--json or --csv: stdout is then the data alone."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help=f"print {what} as JSON")
    g.add_argument("--csv", action="store_true", help=f"print {what} as CSV, raw numbers with a header row")


def _shape(s: list[int]) -> str:
    return "x".join(map(str, s))


def _table(title: str, columns: list[str], rows: list[list[Any]], justify_from: int = 1) -> Table:
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        # figures are never wrapped (a number split over lines reads as two); prose wraps between words
        figures = all(len(str(r[i])) <= 24 and str(r[i])[:1] in "0123456789-+." for r in rows if str(r[i]))
        table.add_column(c, justify="right" if i >= justify_from and figures else "left", no_wrap=figures)
    for r in rows:
        table.add_row(*[str(x) for x in r])
    return table


def show(table: Table, out: Console | None = None, drop: tuple[str, ...] = ()) -> None:
    """Print `table` as a table where every column fits at its longest word (rich then wraps prose between
    words, never inside a name or a number), else as one block per row: nothing is ever cut or ellipsised,
    whatever the terminal's width. `drop`: secondary columns (by header) that may be left out, in this
    order, to keep it a table; the line under it says which were."""
    from rich.measure import Measurement
    from rich.text import Text

    out = out or console
    cols = table.columns
    cells = [list(c.cells) for c in cols]
    wide = out.options.update_width(10_000)  # a table's own measure is clamped to the terminal: measure cells

    def span(c, col) -> tuple[int, int]:  # narrowest without cutting a word (a no_wrap cell whole), natural
        sizes = [Measurement.get(out, wide, x) for x in [c.header, *col]]
        least = max(m.maximum if c.no_wrap else m.minimum for m in sizes)  # no_wrap holds the header too
        return least, max(least, max(m.maximum for m in sizes))

    spans = [span(c, col) for c, col in zip(cols, cells, strict=True)]

    def room(n: int) -> int:  # the terminal less n columns' padding and the borders between and around them
        borders = (n - 1 + 2 * table.show_edge) if table.box else 0
        return out.width - n * (table.padding[1] + table.padding[3]) - borders

    keep = list(range(len(cols)))
    dropped = []
    for header in drop:
        if sum(spans[i][0] for i in keep) <= room(len(keep)):
            break
        for i in keep:
            if str(cols[i].header) == header:
                keep.remove(i)
                dropped.append(header)
                break
    if sum(spans[i][0] for i in keep) <= room(len(keep)):
        for i in sorted(set(range(len(cols))) - set(keep), reverse=True):
            del table.columns[i]
        spans = [spans[i] for i in keep]
        least, most, space = sum(s[0] for s in spans), sum(s[1] for s in spans), room(len(keep))
        if most > space:
            # rich's own squeeze can take a column below its longest word: share the room out here instead,
            # each column its longest word plus a part of what is left in proportion to how much more it wants
            for c, (lo, hi) in zip(table.columns, spans, strict=True):
                c.width = lo + ((space - least) * (hi - lo)) // (most - least)
        out.print(table)
        if dropped:
            out.print(f"({', '.join(dropped)} left out to fit {out.width} columns: a wider terminal or --json "
                      "shows them)", style="dim")  # fmt: skip
        return
    if table.title:
        out.print(table.title, style="italic")
    label = max(len(str(c.header)) for c in cols[1:]) if len(cols) > 1 else 0
    for i in range(len(cells[0]) if cells else 0):
        out.print(Text.assemble("── ", _as_text(cells[0][i]), style="bold"))
        for c, col in zip(cols[1:], cells[1:], strict=True):
            text = _as_text(col[i])
            if text.plain:
                out.print(Text.assemble(f"   {str(c.header):<{label}}  ", text), overflow="fold")
    if table.caption:
        out.print(table.caption)


def _as_text(cell: Any):
    """A table cell as Text: a str cell is console markup, as the table itself reads it."""
    from rich.text import Text

    return cell if isinstance(cell, Text) else Text.from_markup(str(cell))


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


# --- harness inspect --------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from harness.inspect import inspect_model
    from harness.zoo import resolve_model

    graph, label = resolve_model(args.model)
    info = inspect_model(graph, fuse=not args.no_fuse)
    if args.plot:
        from harness.inspect import schedule_plot

        try:
            schedule_plot(info, args.plot)
        except OSError as e:
            raise HarnessError(f"cannot write the plot to {args.plot}: {e.strerror or e}") from None
    if args.json:
        _print_json(info)
        return 0
    if args.csv:
        cols = ["index", "layer", "op", "inputs", "output", "macs", "weight_bytes", "activation_bytes", "arena_offset"]
        _print_csv(cols, [[r["index"], r["name"], r["op"], " ".join(map(_shape, r["input_shapes"])),
                           _shape(r["output_shape"]), r["macs"], r["weight_bytes"], r["activation_bytes"],
                           r.get("arena_offset")] for r in info["layers"]])  # fmt: skip
        return 0
    rows = [
        [
            r["index"],
            r["name"],
            r["op"],
            " ".join("x".join(map(str, s)) for s in r["input_shapes"]),
            "x".join(map(str, r["output_shape"])),
            f"{r['macs']:,}",
            f"{r['weight_bytes']:,}",
            f"{r['activation_bytes']:,}",
            "-" if r.get("arena_offset") is None else f"{r['arena_offset']:,}",
        ]
        for r in info["layers"]
    ]
    cols = ["#", "layer", "op", "inputs", "output", "MACs", "weights B", "act. B", "arena off."]
    show(_table(f"{label}", cols, rows, justify_from=5), drop=("inputs", "act. B"))
    t = info["totals"]
    console.print(
        f"MACs {t['macs']:,}   params {t['params']:,}   weight flash {_kib(t['weight_bytes'])}   "
        f"peak arena {_kib(t['arena_bytes'])}"
    )
    _print_schedule(info)
    if args.plot:
        console.print(f"memory over the schedule drawn in {args.plot}")
    # bench's flash can be larger: the native engine widens the busiest layers' weights where the board's
    # flash has room (engines/native/spec.py), which a board-less inspect cannot know
    console.print(
        "weight flash as int8; `harness bench` reports the board's build, which may widen some layers' "
        "weights to halfwords for speed where its flash has room"
    )
    return 0


# --- harness models / export ---------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from harness.boards import load_boards
    from harness.zoo import models_table

    rows = models_table()
    if args.json:
        _print_json(rows)
        return 0
    if args.csv:
        cols = ["name", "task", "input", "macs", "params", "weight_bytes", "arena_bytes", "weights", "fits"]
        _print_csv(cols, [[r["name"], r["task"], _shape(r["input_shape"]), r["macs"], r["params"], r["weight_bytes"],
                           r["arena_bytes"], r["weights"], " ".join(r["fits"])] for r in rows])  # fmt: skip
        return 0
    real = [b.name for b in load_boards().values() if not b.is_qemu]

    def fits(names: list[str]) -> str:  # the common case in a few words; a short list spelled out
        return f"all {len(real)} boards" if sorted(names) == sorted(real) else ", ".join(names) or "none"

    table = _table(
        "model zoo",
        ["name", "task", "input", "MACs", "params", "flash", "arena", "weights", "fits"],
        [
            [
                r["name"],
                r["task"],
                "x".join(map(str, r["input_shape"])),
                f"{r['macs'] / 1e6:.2f} M",
                f"{r['params'] / 1e3:.1f} k",
                _kib(r["weight_bytes"]),
                _kib(r["arena_bytes"]),
                r["weights"].split(" (")[0],  # the note under the table says what synthetic means
                fits(r["fits"]),
            ]
            for r in rows
        ],
        justify_from=3,
    )
    show(table)
    console.print(
        "flash: the weights as int8; arena: the planner's peak. Synthetic weights give representative speed "
        "and memory, not accuracy: only models trained on real data (see 'weights') have meaningful accuracy."
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.zoo import export

    out = Path(args.output).expanduser()
    if out.is_dir():
        raise HarnessError(f"{out} is a folder: give a file name, e.g. {out / (args.name + '.tflite')}")
    if not out.parent.is_dir():
        raise HarnessError(f"cannot write {out}: the folder {out.parent} does not exist")
    try:
        path = export(args.name, out)
    except OSError as e:
        raise HarnessError(f"cannot write {out}: {e.strerror or e}") from e
    console.print(f"wrote {path}")
    return 0


# --- harness bench ------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.bench import BenchOptions, run_bench

    opts = BenchOptions(
        board=args.board,
        model=args.model,
        target=args.target,
        repetitions=args.repetitions,
        inputs=args.inputs,
        warmup=args.warmup,
        opt=args.opt,
        seed=args.seed,
        results_dir=args.results,
        timeout=args.timeout,
        probe=args.probe,
        serial=args.serial,
        layers=args.layers,
        engine=args.engine,
        fuse=not args.no_fuse,
    )
    if args.json or args.csv:  # stdout is the data: what is said goes to stderr
        result = run_bench(opts, say=lambda msg: err_console.print(msg))
        _print_json(result) if args.json else print_bench_csv(result)
        return 0 if result["status"] == "ok" else 1
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),  # "k/N" once there is an N; nothing while a stage has none
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("bench", total=None, count="")

        def step(description: str, done: int | None = None, total: int | None = None) -> None:
            count = f"{done or 0}/{total}" if total else ""
            progress.update(task, description=description, completed=done or 0, total=total, count=count)

        result = run_bench(opts, say=lambda msg: progress.console.print(msg), step=step)
    print_bench(result)
    return 0 if result["status"] == "ok" else 1


def _print_schedule(info: dict[str, Any]) -> None:
    """The fused groups, and the bytes live while each layer runs in both plans."""
    t = info["totals"]
    if not info["fused_groups"]:
        console.print(f"not fused: layer by layer (arena {t['arena_unfused_bytes']:,} B)")
        return
    rows = [
        [
            g["name"].removeprefix("layers "),
            str(len(g["layers"])),
            f"{g['line_buffer_bytes']:,}",
            ", ".join(f"{n}" for n in g["rings"].values()),
            "yes" if g["output_overwrites_input"] else "no",
        ]
        for g in info["fused_groups"]
    ]
    cols = ["fused layers", "n", "ring bytes", "ring rows", "output over input"]
    show(_table("fused groups (run row by row; rings hold the rows a window still needs)", cols, rows, 2))
    by_group: dict[str, list[dict[str, Any]]] = {}
    steps = []
    for s in info["schedule"]:  # one row per fused group, as it runs as one
        g = s["fused_group"]
        if g is None:
            steps.append((str(s["index"]), s["op"], s["live_bytes_unfused"], s["live_bytes"]))
        elif g not in by_group:
            by_group[g] = [s]
            steps.append((g.removeprefix("layers "), "fused", None, None))
        else:
            by_group[g].append(s)
    out = []
    for step, op, unf, fus in steps:
        if op == "fused":
            members = by_group["layers " + step]
            unf, fus = max(m["live_bytes_unfused"] for m in members), max(m["live_bytes"] for m in members)
        out.append([step, op, f"{unf:,}", f"{fus:,}"])
    show(_table("memory over the schedule: bytes live per step", ["layers", "op", "layer by layer", "fused"], out, 2))
    if info.get("considered"):
        rows = [[c["schedule"], f"{c['bytes']:,}"] for c in info["considered"]]
        show(_table("schedules the planner compared (bytes: the busiest step's)", ["schedule", "bytes"], rows))
    console.print(
        f"peak arena {t['arena_bytes']:,} B fused, {t['arena_unfused_bytes']:,} B layer by layer "
        f"({t['arena_unfused_bytes'] / max(t['arena_bytes'], 1):.2f}x); `--no-fuse` shows the layer-by-layer plan"
    )


def add_fuse_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-fuse",
        action="store_true",
        help="native engine: the layer-by-layer memory plan (by default chains of layers run row by row "
        "where that lowers the peak SRAM)",
    )


def print_bench(r: dict[str, Any]) -> None:
    f = r["figures"]
    if f is None:  # the host target checks outputs but measures nothing
        verdict = "bit-exact" if r["outputs_match"] else "MISMATCH"
        console.print(f"{r['model']} on {r['target_desc']}: outputs {verdict} over {r['inputs']} inputs")
        return
    unit = f["count_unit"]
    engine = "" if r.get("engine", "native") == "native" else f", engine {r['engine']}"
    table = Table(
        title=f"{r['model']} on {r['board']} ({r['target_desc']}{engine})", title_justify="left", show_header=False
    )
    table.add_column("figure")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("note")
    c = f["count"]
    table.add_row(f"{unit} (min / median / max)", f"{c['min']:,} / {c['median']:,} / {c['max']:,}", f["count_note"])
    table.add_row(
        f"MACs per {unit[:-1] if unit.endswith('s') else unit}",
        f"{f['macs_per_count']:.3f}",
        f"{f['macs']:,} MACs",
    )
    if f.get("latency_ms") is not None:
        table.add_row("latency", f"{f['latency_ms']:.3f} ms", f["latency_note"])
    table.add_row(
        "peak SRAM",
        _kib(f["peak_sram_bytes"]),
        f"arena {f['arena_bytes']:,} + stack {f['peak_stack_bytes']:,} + static {f['static_ram_bytes']:,} B",
    )
    used = f.get("arena_used_bytes", f["arena_bytes"])
    table.add_row(
        "  arena (planned / touched)",
        f"{f['arena_bytes']:,} B",
        f"high water painted on device: {f['arena_high_water_bytes']:,} B"
        + ("" if used == f["arena_bytes"] else f"; TFLM arena_used_bytes() {used:,} B"),
    )
    if f.get("fused_groups"):
        table.add_row(
            "  fused row by row",
            f"{len(f['fused_groups'])} groups",
            f"{', '.join(f['fused_groups'])}; layer by layer the plan needs {f['arena_unfused_bytes']:,} B",
        )
    weights = "weights" if r.get("engine", "native") == "native" else "the .tflite"
    table.add_row("flash", _kib(f["flash_bytes"]), f"code+data {f['code_bytes']:,} + {weights} {f['weight_bytes']:,} B")
    table.add_row(
        "fits the board",
        "yes" if f["fits"] else "NO",
        f"SRAM {_kib(f['board_sram_bytes'])}, flash {_kib(f['board_flash_bytes'])}",
    )
    table.add_row(
        "outputs vs reference",
        "bit-exact" if r["outputs_match"] else "DIFFER",
        f"{r['inputs']} inputs x {r['repetitions']} repetitions"
        + (f"; {len(r['output_deviations'])} input(s) differ, said above" if r.get("output_deviations") else ""),
    )
    show(table)
    if r.get("layers"):
        print_layers(r["layers"], unit)
    if r.get("result_file"):
        console.print(f"recorded in {r['result_file']}")


BENCH_CSV = ["run_id", "time", "git_sha", "board", "model", "engine", "target", "opt", "count_unit", "count_min",
             "count_median", "count_max", "macs", "latency_ms", "peak_sram_bytes", "arena_bytes", "peak_stack_bytes",
             "static_ram_bytes", "flash_bytes", "code_bytes", "weight_bytes", "fits", "outputs_match", "inputs",
             "repetitions"]  # fmt: skip


def print_bench_csv(r: dict[str, Any]) -> None:
    """One row for the run (columns as the record names them); with --layers, one row per layer instead."""
    f = r.get("figures") or {}
    if r.get("layers"):
        cols = ["run_id", "board", "model", "layers", "layer", "op", "output", "macs", f["count_unit"], "share"]
        _print_csv(cols, [[r["run_id"], r["board"], r["model"],
                           "-".join(map(str, (x["layers"][0], x["layers"][-1]))) if x.get("layers") else x["index"],
                           x["name"], f"{len(x['layers'])} fused" if x.get("layers") else x["op"],
                           _shape(x["output_shape"]), x["macs"], x["count"], round(x["share"], 6)]
                          for x in r["layers"]])  # fmt: skip
        return
    c = f.get("count") or {}
    flat = {
        **r,
        **f,
        "opt": (r.get("options") or {}).get("opt"),
        "count_min": c.get("min"),
        "count_median": c.get("median"),
        "count_max": c.get("max"),
    }
    _print_csv(BENCH_CSV, [[flat.get(k) for k in BENCH_CSV]])


def print_layers(layers: list[dict[str, Any]], unit: str) -> None:
    rows = [
        [
            f"{x['layers'][0]}-{x['layers'][-1]}" if x.get("layers") else x["index"],
            x["name"],
            f"{len(x['layers'])} fused" if x.get("layers") else x["op"],
            "x".join(map(str, x["output_shape"])),
            f"{x['macs']:,}",
            f"{x['count']:,}",
            f"{100 * x['share']:.1f}",
            "-" if x["macs_per_count"] is None else f"{x['macs_per_count']:.3f}",
        ]
        for x in layers
    ]
    macs, count = sum(x["macs"] for x in layers), sum(x["count"] for x in layers)
    share = sum(x["share"] for x in layers)
    # the layers' sum, which the whole inference's count exceeds by what runs between them
    rows.append(["total", "", "", "", f"{macs:,}", f"{count:,}", f"{100 * share:.1f}",
                 f"{macs / count:.3f}" if count else "-"])  # fmt: skip
    cols = ["#", "layer", "op", "output", "MACs", unit, "%", f"MACs/{unit[:-1] if unit.endswith('s') else unit}"]
    show(_table(f"per layer ({unit}, median over the inputs)", cols, rows, justify_from=3), drop=("output", "op"))


# --- entry point ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__

    p = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark int8 TinyML models on Cortex-M boards: speed (cycles on a board, instructions on "
        "its QEMU fallback), SRAM and flash, and whether the device gives the right answers. Start with "
        "`harness bench --board nucleo-f746 --model mcunet_vww`; `harness doctor` checks the tools.",
        epilog="Exit codes: 0 ok, 1 a failed check (a regression, a wrong output), 2 an error, 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="build, run and measure one model on one board")
    b.add_argument("--board", required=True, help="a board from boards.toml, e.g. nucleo-f746")
    b.add_argument("--model", required=True, help="a zoo name (see `harness models`) or a path to a .tflite")
    b.add_argument(
        "--target",
        choices=["auto", "qemu", "pyocd", "host"],
        default="auto",
        help="auto: the board when a probe for it is attached, else its QEMU fallback",
    )
    b.add_argument("--repetitions", "-n", type=int, default=5, help="timed inferences per input")
    b.add_argument("--inputs", "-m", type=int, default=2, help="random inputs to run and check")
    b.add_argument("--warmup", type=int, default=1, help="untimed inferences before timing")
    b.add_argument("--opt", default="-O2", type=opt_flag, help="optimisation flag for the firmware build")
    b.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    b.add_argument("--timeout", type=float, default=120.0, help="seconds one device request may take")
    b.add_argument("--results", default=None, help="results folder (default ./results or $HARNESS_RESULTS)")
    b.add_argument("--probe", default="", help="probe unique id (see `harness probes`), or remote:HOST:PORT")
    b.add_argument("--serial", default="", help="the board's serial port: /dev/ttyACM0, COM5, rfc2217://HOST:PORT")
    b.add_argument(
        "--layers", action="store_true", help="per-layer counts (a profiling build: the counter read after each layer)"
    )
    from harness.cli_engines import add_engine_option

    add_engine_option(b)
    add_fuse_option(b)
    add_output_options(b, "the run's record (with --csv and --layers: one row per layer)")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("inspect", help="per-layer table: shapes, MACs, weights, arena plan")
    i.add_argument("model", help="a zoo name (see `harness models`) or a path to a .tflite")
    add_fuse_option(i)
    i.add_argument("--plot", default=None, metavar="FILE.png", help="draw the memory over the schedule")
    add_output_options(i, "the layers")
    i.set_defaults(func=cmd_inspect)

    m = sub.add_parser("models", help="the model zoo")
    add_output_options(m, "the models")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("export", help="write a zoo model as a .tflite file")
    e.add_argument("name", help="a zoo model (see `harness models`)")
    e.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    e.set_defaults(func=cmd_export)

    # Feature areas register their own subcommands (each module: `register(subparsers)`), so the areas
    # can grow without all editing this file.
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    _finish_help(sub)
    return p


_HELP = {"--json": "print machine-readable JSON instead of tables", "--results": "results folder (default ./results "
         "or $HARNESS_RESULTS)"}  # fmt: skip


def _finish_help(sub) -> None:
    """Every subcommand (nested ones too) a description and every option a help that names its default: one
    pass here, so no command is left out as they grow."""
    for parser in {id(p): p for p in sub.choices.values()}.values():
        if not parser.description:
            choice = next((c for c in sub._choices_actions if sub.choices.get(c.dest) is parser), None)
            parser.description = choice.help[:1].upper() + choice.help[1:] + "." if choice and choice.help else None
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):  # baseline accept/list/show, engines list/fetch
                _finish_help(a)
                continue
            if a.dest == "help" or a.help == argparse.SUPPRESS:
                continue
            if a.help is None:
                a.help = next((_HELP[o] for o in a.option_strings if o in _HELP), None)
            # `is`, not `in`: a default of 0 equals False and must still be shown
            shown = not any(a.default is v for v in (None, False, argparse.SUPPRESS)) and a.default != ""
            shown = shown and not a.required
            if a.help and shown and "default" not in a.help and "%(default)" not in a.help:
                a.help += " (default: %(default)s)"


_OPT = re.compile(r"-?O([0-3sgz]|fast)?")


def opt_flag(text: str) -> str:
    """An optimisation level as gcc takes it: -Os, Os and O2 all name one (argparse reads a bare `-Os` after
    --opt as an option, so main() joins the two first)."""
    if not _OPT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an optimisation level: one of -O0..-O3, -Os, -Oz, -Og")
    return text if text.startswith("-") else "-" + text


def _join_opt(argv: list[str]) -> list[str]:
    """`--opt -Os` as `--opt=-Os`: a value that starts with '-' would otherwise be taken for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--opt" and i + 1 < len(argv) and argv[i + 1].startswith("-O"):
            out.append(f"--opt={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_opt(list(sys.argv[1:] if argv is None else argv)))
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that left shows here, not at exit
        return code
    except HarnessError as e:
        # one line, wrapped by the terminal, not by rich: a path in it stays whole to copy or to grep
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        if getattr(args, "json", False):  # a script reading stdout gets an answer it can parse
            print(json.dumps({"error": str(e), "exit_code": 2}))
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except BrokenPipeError:  # `harness ... | head`: the reader left; nothing more to say to it
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
