"""Reports of nightly runs and history: a self-contained HTML page (plots embedded as base64 PNG), a Markdown
summary fit for a CI comment, JUnit XML (one testcase per cell), cells.csv, tables of each metric by model and
board, and trend plots per metric.

Everything here reads the judged run (harness.nightly) and the results store; nothing measures."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from harness import results

STATUS_STYLE = {
    "ok": "green",
    "improved": "blue",
    "regression": "bold red",
    "failed": "bold red",
    "new": "white",
    "xfail": "dim",
    "model changed": "yellow",
}
STATUS_COLOUR = {  # table cell backgrounds in the HTML page
    "ok": "#d9f2d9",
    "improved": "#d6e6fa",
    "regression": "#f7c9c9",
    "failed": "#f7c9c9",
    "new": "#f2f2f2",
    "xfail": "#e8e8e8",
    "model changed": "#fbf0c8",
}
RATIO = "native_tflm_cmsis_ratio"  # harness.nightly.RATIO (no import back into nightly)
TREND_METRICS = ("instructions", "cycles", "peak_sram_bytes", "flash_bytes", "accuracy", RATIO)
METRIC_LABEL = {
    RATIO: "native / TFLM+CMSIS-NN count (lower is faster)",
    "instructions": "QEMU instructions (median; not cycles)",
    "cycles": "DWT cycles (median)",
    "peak_sram_bytes": "peak SRAM (bytes)",
    "flash_bytes": "flash (bytes)",
    "accuracy": "top-1 accuracy (%)",
}
HISTORY_RUNS = 30  # runs shown in the trend plots
ABSOLUTE = {"accuracy": "%", RATIO: "x"}  # plain tick labels (counts and bytes get k / M)


# --- text pieces -------------------------------------------------------------------------------------------


def fmt_value(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    if metric == "accuracy":
        return f"{v:.2f} %"
    if metric == RATIO:
        return f"{v:.3f} x"
    if metric == "latency_ms":
        return f"{v:,.3f} ms"
    return f"{int(v):,}"


def fmt_delta(check: dict[str, Any]) -> str:
    """Counts as a percentage (that is what the threshold is), bytes as bytes, accuracy in points."""
    d, pct, metric = check["delta"], check["delta_pct"], check["metric"]
    if metric == "accuracy":
        return f"{d:+.2f} pt"
    if metric in ("instructions", "cycles", RATIO):
        return f"{pct:+.3f} %"
    if d == 0:
        return "±0 B"
    return f"{int(d):+,} B" + ("" if math.isinf(pct) else f", {pct:+.2f} %")


def check_text(metric: str, metrics: dict[str, Any], checks: dict[str, dict[str, Any]]) -> str:
    """'1,234 (+0.500 %)' for a compared metric, '1,234' for one without a baseline, '-' when absent."""
    if metric not in metrics:
        return "-"
    s = fmt_value(metric, metrics[metric])
    if metric in checks:
        s += f" ({fmt_delta(checks[metric])})"
    return s


def counts(cells: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cells:
        s = c["verdict"]["status"]
        out[s] = out.get(s, 0) + 1
    return out


def verdict_line(matrix: str, run_id: str, cells: list[dict[str, Any]], exit_code: int) -> str:
    """The run in one line: what happened (a regression, or only cells that failed, which are no regression
    of anything), the counts, and the first cell that needs attention with its reason."""
    n = counts(cells)
    word = {0: "CLEAN", 1: "REGRESSION", 2: "BROKEN", 130: "INTERRUPTED (cells that finished)"}[exit_code]
    if exit_code == 1 and not n.get("regression"):
        word = "1 CELL FAILED" if n.get("failed") == 1 else f"{n.get('failed', 0)} CELLS FAILED"
    order = ("regression", "failed", "improved", "ok", "new", "model changed", "xfail")
    parts = [f"{n[s]} {s}" for s in order if n.get(s)]
    line = f"nightly {matrix} {run_id}: {word} (exit {exit_code}): {', '.join(parts)}"
    bad = [c for s in ("regression", "failed") for c in cells if c["verdict"]["status"] == s]
    if bad and exit_code == 1:
        what = problems(bad[0])
        line += f" — {bad[0]['cell']}: {what[0] if what else bad[0]['verdict']['status']}"
        line += f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return line


def problems(cell: dict[str, Any]) -> list[str]:
    """What went wrong in a cell, one line each: the metrics that regressed, or why it failed."""
    v = cell["verdict"]
    if v["status"] == "failed":
        return list(v["notes"])
    return [
        f"{c['metric']} {fmt_value(c['metric'], c['baseline'])} -> {fmt_value(c['metric'], c['value'])} "
        f"({fmt_delta(c)}, allowed {c['allowed']})"
        for c in v["checks"]
        if c["verdict"] == "regression"
    ]


def improvements(cell: dict[str, Any]) -> list[str]:
    return [
        f"{c['metric']} {fmt_value(c['metric'], c['baseline'])} -> {fmt_value(c['metric'], c['value'])} "
        f"({fmt_delta(c)})"
        for c in cell["verdict"]["checks"]
        if c["verdict"] == "improved"
    ]


# --- Markdown ----------------------------------------------------------------------------------------------


def ran_on(run: dict[str, Any]) -> str:
    """How the run's cells ran: its local jobs, or the Dask cluster it was given."""
    if run.get("scheduler"):
        return f"on the Dask cluster at {run['scheduler']}"
    return f"with {run.get('jobs', 1)} job(s)"


def markdown(run: dict[str, Any]) -> str:
    cells = run["cells"]
    lines = [f"### {verdict_line(run['matrix'], run['run_id'], cells, run['exit_code'])}", ""]
    lines.append(f"Baseline: {run.get('baseline') or 'none yet (every cell is new)'}; {len(cells)} cells in "
                 f"{run.get('seconds', 0):.0f} s {ran_on(run)}.")  # fmt: skip
    bad = [c for c in cells if c["verdict"]["status"] in ("regression", "failed")]
    good = [c for c in cells if c["verdict"]["status"] == "improved"]
    if bad:
        lines += ["", "**Needs attention**", "", "| cell | verdict | what |", "|---|---|---|"]
        lines += [f"| `{c['cell']}` | {c['verdict']['status']} | {_md('; '.join(problems(c)))} |" for c in bad]
    if good:
        lines += ["", "**Improved**", "", "| cell | what |", "|---|---|"]
        lines += [f"| `{c['cell']}` | {_md('; '.join(improvements(c)))} |" for c in good]
    lines += ["", "<details><summary>All cells</summary>", ""]
    lines += ["| cell | verdict | instructions/cycles | peak SRAM | flash | accuracy |", "|---|---|---|---|---|---|"]
    for c in cells:
        m, chk = c.get("metrics", {}), {x["metric"]: x for x in c["verdict"]["checks"]}
        cm = next((k for k in ("instructions", RATIO) if k in m), "cycles")
        lines.append(
            f"| `{c['cell']}` | {c['verdict']['status']} | {check_text(cm, m, chk)} | "
            f"{check_text('peak_sram_bytes', m, chk)} | {check_text('flash_bytes', m, chk)} | "
            f"{check_text('accuracy', m, chk)} |"
        )
    lines += ["", "</details>", ""]
    for metric, boards, rows in pivots(cells):
        lines += [f"**{METRIC_LABEL[metric]}** by model and board", ""]
        lines += ["| model | " + " | ".join(boards) + " |", "|---|" + "---|" * len(boards)]
        lines += [f"| `{v}` | " + " | ".join(r.get(b, "") for b in boards) + " |" for v, r in rows]
        lines.append("")
    lines.append(
        "QEMU figures are instruction counts (-icount), not cycles; exit 0 clean, 1 regression or failed cell, "
        "2 the run broke."
    )
    return "\n".join(lines) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


# --- JUnit -------------------------------------------------------------------------------------------------


def junit(run: dict[str, Any]) -> str:
    """One testcase per cell; <failure> for a regression or a failed cell, <skipped> for an expected failure."""
    cells = run["cells"]
    n = counts(cells)
    suite = ET.Element(
        "testsuite",
        name=f"nightly.{run['matrix']}",
        tests=str(len(cells)),
        failures=str(n.get("regression", 0) + n.get("failed", 0)),
        errors="0",
        skipped=str(n.get("xfail", 0)),
        time=f"{run.get('seconds', 0):.2f}",
        timestamp=str(run.get("started", "")),
    )
    props = ET.SubElement(suite, "properties")
    for k in ("run_id", "baseline", "report_dir"):
        ET.SubElement(props, "property", name=k, value=str(run.get(k)))
    for c in cells:
        tc = ET.SubElement(
            suite, "testcase", classname=f"nightly.{run['matrix']}.{c['board']}", name=c["cell"],
            time=f"{c.get('seconds') or 0:.2f}",
        )  # fmt: skip
        v = c["verdict"]
        if v["status"] in ("regression", "failed"):
            what = problems(c)
            f = ET.SubElement(tc, "failure", type=v["status"], message=f"{c['cell']}: {'; '.join(what)}")
            f.text = "\n".join(what)
        elif v["status"] == "xfail":
            ET.SubElement(tc, "skipped", message="; ".join(v["notes"]))
        out = [f"{k} = {val}" for k, val in sorted(c.get("metrics", {}).items())] + v["notes"] + improvements(c)
        ET.SubElement(tc, "system-out").text = "\n".join(out)
    root = ET.Element("testsuites", name="harness nightly", tests=suite.get("tests"), failures=suite.get("failures"))
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# --- history and plots -------------------------------------------------------------------------------------


def nightly_history(
    matrix: str, results_dir: str | Path | None = None, last: int = HISTORY_RUNS, current_run: str | None = None
):
    """A long table (run, cell, metric, value) of the matrix's passing cells over its last `last` runs."""
    import pandas as pd

    from harness.nightly import CELLS_KIND, finished_runs

    rows = []
    done = finished_runs(results_dir)
    for r in results.read(CELLS_KIND, results_dir):
        if r.get("matrix") != matrix or r.get("status") != "ok":
            continue
        if r.get("nightly_run") not in done and r.get("nightly_run") != current_run:
            continue  # a killed run's cells: never judged, not a trend point
        for metric in TREND_METRICS:
            v = r.get("metrics", {}).get(metric)
            if v is not None:
                rows.append({"run": r["nightly_run"], "cell": r["cell"], "metric": metric, "value": float(v)})
    df = pd.DataFrame(rows, columns=["run", "cell", "metric", "value"])
    if df.empty:
        return df
    runs = sorted(df["run"].unique())[-last:]  # run ids start with their UTC time: sorting is chronological
    return df[df["run"].isin(runs)]


def run_time(run_id: str):
    """The UTC time a nightly run id starts with (20260101T000000Z-...), else None."""
    from datetime import UTC, datetime

    try:
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def baseline_bands(cells: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(cell, metric) -> (baseline value, the distance from it that is within the threshold)."""
    return {
        (c["cell"], x["metric"]): (float(x["baseline"]), float(x["band"]))
        for c in cells
        for x in c["verdict"]["checks"]
        if "band" in x
    }


def _si(v: float, _pos=None) -> str:
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(v) >= div:
            return f"{v / div:.4g}{suffix}"
    return f"{v:.4g}"


def trend_plots(df, out_dir: Path, bands: dict[tuple[str, str], tuple[float, float]] | None = None) -> dict[str, Path]:
    """One PNG per metric, small multiples: a panel per model (with its engine and options), a line per board,
    dates on x, and the baseline with its threshold band shaded, so a point outside the band is what the
    verdict called a regression or an improvement. Figures are plotted as they are: one model's boards share
    a scale, and the band gives a flat line an honest axis."""
    from datetime import timedelta

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out: dict[str, Path] = {}
    if df.empty:
        return out
    bands = bands or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    df = df.assign(
        board=df["cell"].str.split(":").str[0],
        panel=df["cell"].map(cell_model),
        when=df["run"].map(run_time),
    )
    dated = df["when"].notna().all()
    boards = sorted(df["board"].unique())
    colour = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(boards)}
    for metric in TREND_METRICS:
        sub = df[df["metric"] == metric]
        if sub.empty:
            continue
        panels = sorted(sub["panel"].unique())
        cols = min(3, len(panels))
        nrows = math.ceil(len(panels) / cols)
        # never narrower than two panels: the title and the legend need the width
        width, height = max(4.3 * cols, 8.6), 2.6 * nrows + 0.7
        fig, axes = plt.subplots(nrows, cols, figsize=(width, height), dpi=90, squeeze=False)
        runs = sorted(sub["run"].unique())
        if dated:  # every panel over the same dates, with room at both ends (12 h around a single run)
            first, last = sub["when"].min(), sub["when"].max()
            pad = max((last - first) * 0.08, timedelta(hours=12))
            span = (first - pad, last + pad)
        for ax, panel in zip(axes.flat, panels, strict=False):
            for (board, cell), g in sub[sub["panel"] == panel].groupby(["board", "cell"], sort=True):
                g = g.sort_values("run")
                x = g["when"] if dated else g["run"].map(runs.index)
                ax.plot(x, g["value"], marker="o", markersize=4, linewidth=1.2, color=colour[board], label=board)
                if (cell, metric) in bands:
                    base, band = bands[(cell, metric)]
                    ax.axhspan(base - band, base + band, color=colour[board], alpha=0.13, linewidth=0)
                    ax.axhline(base, color=colour[board], linewidth=0.8, linestyle="--")
            lo, hi = ax.get_ylim()
            mid = (lo + hi) / 2
            least = 1.0 if metric == "accuracy" else 0.01 * abs(mid) or 1.0  # a flat line: +-1 % (1 point)
            if hi - lo < least:
                ax.set_ylim(mid - least / 2, mid + least / 2)
            if metric == RATIO:
                ax.axhline(1.0, color="0.4", linestyle=":", linewidth=0.8)  # parity with TFLM + CMSIS-NN
            ax.set_title(panel, fontsize=9, loc="left")
            ax.yaxis.set_major_formatter(FuncFormatter(_si if metric not in ABSOLUTE else lambda v, _p: f"{v:.4g}"))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if dated:
                ax.set_xlim(*span)
                loc = mdates.AutoDateLocator(minticks=2, maxticks=6)
                ax.xaxis.set_major_locator(loc)
                ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        handles = [plt.Line2D([], [], color=colour[b], marker="o", linewidth=1.2) for b in boards]
        fig.suptitle(f"{METRIC_LABEL[metric]}; dashed: baseline, shaded: its threshold band",
                     x=0.01, y=1 - 0.06 / height, ha="left", va="top", fontsize=10)  # fmt: skip
        fig.legend(handles, boards, loc="upper left", bbox_to_anchor=(0.0, 1 - 0.3 / height),
                   ncol=min(len(boards), 6), fontsize=8, frameon=False)  # fmt: skip
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.62 / height))
        path = out_dir / f"trend_{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        out[metric] = path
    return out


def metric_history(
    board: str,
    model: str,
    metric: str,
    results_dir: str | Path | None = None,
    opt: str | None = None,
    nightly_only: bool = False,
    digest: str | None = None,
) -> list[dict[str, Any]]:
    """Every recorded value of `metric` for `model` on `board`, oldest first, from the bench and accuracy stores:
    runs under its name (or an alias), and with `digest`, runs of the same model file under any name."""
    from harness.errors import HarnessError

    known = ("instructions", "cycles", "count", "peak_sram_bytes", "flash_bytes", "arena_bytes", "peak_stack_bytes",
             "latency_ms", "accuracy")  # fmt: skip
    if metric not in known:
        raise HarnessError(f"unknown metric {metric!r}; one of: {', '.join(known)}")
    from harness.nightly import CELLS_KIND, finished_runs

    rows: list[dict[str, Any]] = []
    done = finished_runs(results_dir)
    if metric == "accuracy":
        # an accuracy record carries no nightly tag: the nightly's cell names the accuracy run it made
        made_by = {c["accuracy_run_id"]: c.get("nightly_run") for c in results.read(CELLS_KIND, results_dir)
                   if c.get("accuracy_run_id")}  # fmt: skip
        for r in results.read("accuracy", results_dir):
            if r.get("status") != "ok" or r.get("board") != board or not _is_model(r, model, digest):
                continue
            nightly_run = made_by.get(r["run_id"])
            if (nightly_only and not nightly_run) or (nightly_run and nightly_run not in done):
                continue
            f = r.get("figures") or {}
            if f.get("device_top1") is not None:
                rows.append({"time": r.get("time"), "run_id": r["run_id"], "value": round(100.0 * f["device_top1"], 4),
                             "dataset": r.get("dataset"), "dataset_sha256": r.get("dataset_sha256"),
                             "samples": f.get("samples"), "nightly_run": nightly_run, "opt": None})  # fmt: skip
        return rows
    for r in results.read("bench", results_dir):
        if r.get("status") != "ok" or r.get("board") != board or not _is_model(r, model, digest):
            continue
        tag = r.get("nightly") or {}
        if nightly_only and not tag:
            continue
        if tag and tag.get("run_id") not in done:
            continue  # a cell of a nightly run that never finished (killed): no verdict stands behind it
        r_opt = (r.get("options") or {}).get("opt")
        if opt is not None and r_opt != opt:
            continue
        f = r.get("figures") or {}
        if metric in ("instructions", "cycles", "count"):
            if not f.get("count") or (metric != "count" and f.get("count_unit") != metric):
                continue
            v = f["count"]["median"]
        else:
            v = f.get(metric)
        if v is None:
            continue
        rows.append({"time": r.get("time"), "run_id": r["run_id"], "nightly_run": tag.get("run_id"), "opt": r_opt,
                     "source": f.get("count_source"), "value": v})  # fmt: skip
    return rows


def _same_model(recorded: str | None, wanted: str) -> bool:
    """One model whichever name it was run under: a path or its file name, a zoo alias or its model."""
    from harness.zoo import ALIASES

    def canon(name: str) -> str:
        base = Path(name).name
        return ALIASES.get(base, base)

    return recorded is not None and (recorded == wanted or canon(recorded) == canon(wanted))


def _is_model(record: dict[str, Any], model: str, digest: str | None) -> bool:
    return _same_model(record.get("model"), model) or (digest is not None and record.get("model_sha256") == digest)


def _recorded(field: str, results_dir: str | Path | None) -> set[str]:
    return {r[field] for kind in ("bench", "accuracy") for r in results.read(kind, results_dir) if r.get(field)}


def recorded_digests(results_dir: str | Path | None = None) -> set[str]:
    """Every model sha256 the bench and accuracy stores hold a record of."""
    return _recorded("model_sha256", results_dir)


def recorded_models(results_dir: str | Path | None = None) -> set[str]:
    """Every model name the bench and accuracy stores hold a record of."""
    return _recorded("model", results_dir)


def history_plot(
    rows: list[dict[str, Any]],
    board: str,
    model: str,
    metric: str,
    results_dir: str | Path | None = None,
    path: str | Path | None = None,
) -> Path:
    """The metric over time as a PNG (default results/history/<board>__<model>__<metric>.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out = (
        Path(path) if path else results.results_dir(results_dir) / "history" / _safe(f"{board}__{model}__{metric}.png")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    t = pd.to_datetime(df["time"], utc=True, errors="coerce")
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=90)
    ax.plot(t if t.notna().all() else range(len(df)), df["value"], marker="o", markersize=3)
    label = METRIC_LABEL.get(metric, metric)
    if metric == "count" and "source" in df and df["source"].eq("qemu-icount").all():
        label = METRIC_LABEL["instructions"]
    ax.set_title(f"{model} on {board}: {label}")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# --- HTML --------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: right; }
th { background: #eee; } td.l { text-align: left; }
.ok { background: #d9f2d9; } .improved { background: #d6e6fa; } .regression, .failed { background: #f7c9c9; }
.new { background: #f2f2f2; } .xfail { background: #e8e8e8; } .model.changed { background: #fbf0c8; }
.worse { color: #b00; font-weight: bold; } .better { color: #0550ae; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; margin: 6px 0; }
"""


def html_page(run: dict[str, Any], plots: dict[str, Path]) -> str:
    cells = run["cells"]
    e = html.escape
    head = verdict_line(run["matrix"], run["run_id"], cells, run["exit_code"])
    colour = "#b00" if run["exit_code"] else "#070"
    rows = []
    for c in cells:
        v = c["verdict"]
        m, chk = c.get("metrics", {}), {x["metric"]: x for x in v["checks"]}
        cm = next((k for k in ("instructions", RATIO) if k in m), "cycles")
        tds = [f"<td class=l>{e(c['cell'])}</td>", f"<td class='l {v['status']}'>{e(v['status'])}</td>"]
        for metric in (cm, "peak_sram_bytes", "flash_bytes", "accuracy"):
            cls = ""
            if metric in chk:
                cls = {"regression": "worse", "improved": "better"}.get(chk[metric]["verdict"], "")
            tds.append(f"<td class='{cls}'>{e(check_text(metric, m, chk))}</td>")
        tds.append(f"<td>{c.get('seconds') or 0:.1f}</td>")
        notes = problems(c) if v["status"] in ("failed", "regression") else improvements(c) + v["notes"]
        tds.append(f"<td class=l>{e('; '.join(notes))}</td>")
        rows.append(f"<tr class='{v['status']}'>{''.join(tds)}</tr>")
    pivot_html = []
    for metric, boards, prow in pivots(cells):
        head_row = "".join(f"<th>{e(b)}</th>" for b in boards)
        body = "".join(
            f"<tr><td class=l>{e(v)}</td>" + "".join(f"<td>{e(r.get(b, ''))}</td>" for b in boards) + "</tr>"
            for v, r in prow
        )
        pivot_html.append(f"<h3>{e(METRIC_LABEL[metric])}</h3><table><tr><th>model</th>{head_row}</tr>{body}</table>")
    imgs = []
    for metric, p in plots.items():
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        imgs.append(
            f"<h3>{e(METRIC_LABEL[metric])}</h3><img alt='trend of {e(metric)}' src='data:image/png;base64,{data}'>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>nightly {e(run["matrix"])} {e(run["run_id"])}</title>
<style>{CSS}</style></head><body>
<h1>Nightly <code>{e(run["matrix"])}</code></h1>
<p style="font-size:16px;color:{colour}"><b>{e(head)}</b></p>
<p>{e(run.get("description") or "")}<br>Started {e(str(run.get("started")))}, {run.get("seconds", 0):.0f} s
{e(ran_on(run))}. Baseline: {e(run.get("baseline") or "none yet (every cell is new)")}.</p>
<p>Green: within thresholds; red: regression or failure; blue: improved beyond the threshold; grey: no baseline
or an expected failure; yellow: the model file changed since the baseline (shown, not judged).
QEMU figures are instruction counts (-icount), not cycles.</p>
<table><tr><th>cell</th><th>verdict</th><th>instructions / cycles</th><th>peak SRAM (B)</th><th>flash (B)</th>
<th>accuracy</th><th>s</th><th>notes</th></tr>
{chr(10).join(rows)}
</table>
<h2>By model and board</h2>
{chr(10).join(pivot_html)}
<p>Every cell's figures, raw: <a href="cells.csv">cells.csv</a>.</p>
<h2>Trends (last {HISTORY_RUNS} runs of this matrix)</h2>
{chr(10).join(imgs) or "<p>No history yet.</p>"}
</body></html>
"""


CELLS_CSV = ["cell", "board", "model", "engine", "opt", "target", "verdict", "count_source", "instructions",
             "cycles", "peak_sram_bytes", "flash_bytes", "accuracy", RATIO, "seconds", "model_sha256",
             "reason"]  # fmt: skip


def csv_text(columns: list[str], rows: list[list[Any]]) -> str:
    """A header and the rows, raw (None as an empty field): a spreadsheet's or pandas' input."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()


def cells_csv(run: dict[str, Any]) -> str:
    """One row per cell, raw figures."""
    rows = [{**c, **c.get("metrics", {}), "verdict": c["verdict"]["status"]} for c in run["cells"]]
    return csv_text(CELLS_CSV, [[r.get(k) for k in CELLS_CSV] for r in rows])


def cell_model(key: str) -> str:
    """A cell key without its board: the model with its engine and options (board:model[:engine][:opt])."""
    return key.split(":", 1)[1] if ":" in key else key


PIVOT_METRICS = ("instructions", "cycles", RATIO, "peak_sram_bytes", "flash_bytes", "accuracy")


def pivots(cells: list[dict[str, Any]]) -> list[tuple[str, list[str], list[tuple[str, dict[str, str]]]]]:
    """Per metric any cell has: (metric, boards, rows of (model and variant, {board: figure})). The row is
    the cell key without its board, so a model's engines and options stay apart."""
    boards = sorted({c["board"] for c in cells})
    out = []
    for metric in PIVOT_METRICS:
        rows: dict[str, dict[str, str]] = {}
        for c in cells:
            variant = cell_model(c["cell"])
            value = c.get("metrics", {}).get(metric)
            if value is not None:
                rows.setdefault(variant, {})[c["board"]] = fmt_value(metric, value)
            elif c["verdict"]["status"] == "failed":
                rows.setdefault(variant, {}).setdefault(c["board"], "failed")
        if any(v != "failed" for r in rows.values() for v in r.values()):
            out.append((metric, boards, sorted(rows.items())))
    return out


def write_nightly_reports(run: dict[str, Any], results_dir: str | Path | None, out_dir: Path) -> dict[str, Path]:
    """report.html, summary.md, junit.xml, cells.csv and the trend PNGs under results/nightly/<run id>/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    history = nightly_history(run["matrix"], results_dir, current_run=run["run_id"])
    plots = trend_plots(history, out_dir / "plots", baseline_bands(run["cells"]))
    files = {
        "markdown": out_dir / "summary.md",
        "junit": out_dir / "junit.xml",
        "html": out_dir / "report.html",
        "csv": out_dir / "cells.csv",
    }
    files["csv"].write_text(cells_csv(run), encoding="utf-8")
    files["markdown"].write_text(markdown(run), encoding="utf-8")
    files["junit"].write_text(junit(run), encoding="utf-8")
    files["html"].write_text(html_page(run, plots), encoding="utf-8")
    return {**files, **{f"plot_{k}": v for k, v in plots.items()}}
