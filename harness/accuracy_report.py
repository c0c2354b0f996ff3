"""The accuracy report: one self-contained HTML page (plots embedded as base64 PNG) and a Markdown summary.

`write_report(report, run_dir)` takes the dict harness.accuracy.run_accuracy builds and writes
report.html, summary.md and the plots (confusion.png, per_class.png, latency.png) into run_dir.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

MAX_LISTED = 200  # disagreements listed in full on the page; the JSON keeps every one


def write_report(report: dict[str, Any], run_dir: str | Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pngs = plots(report)
    files: dict[str, Path] = {}
    for name, data in pngs.items():
        p = run_dir / f"{name}.png"
        p.write_bytes(data)
        files[name] = p
    files["html"] = run_dir / "report.html"
    files["html"].write_text(render_html(report, pngs), encoding="utf-8")
    files["markdown"] = run_dir / "summary.md"
    files["markdown"].write_text(render_markdown(report, [n for n in pngs]), encoding="utf-8")
    return files


# --- plots ---------------------------------------------------------------------------------------------


def plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of each plot the data allows: confusion matrix, per-class accuracy, latency histogram."""
    import matplotlib

    matplotlib.use("Agg")  # no display, ever: this runs in CI and over ssh
    from matplotlib.figure import Figure

    f = report["figures"]
    out: dict[str, bytes] = {}
    if not f.get("samples"):
        return out
    names = [c["name"] for c in f["per_class"]]
    k = len(names)

    cm = np.asarray(f["confusion"])
    size = min(3.0 + 0.45 * k, 14.0)
    fig = Figure(figsize=(size + 1.2, size), dpi=100)
    ax = fig.add_subplot()
    # Row-normalised colour (so small classes still show their errors), raw counts written in the cells.
    rows = cm.sum(axis=1, keepdims=True)
    im = ax.imshow(cm / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), names, rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted on the device")
    ax.set_ylabel("true label")
    ax.set_title("confusion matrix (device)")
    if k <= 30:
        for r in range(k):
            for c in range(k):
                if cm[r, c]:
                    dark = cm[r, c] / max(rows[r, 0], 1) > 0.5
                    ax.text(c, r, str(cm[r, c]), ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")  # fmt: skip
    fig.tight_layout()
    out["confusion"] = _png(fig)

    fig = Figure(figsize=(min(4.0 + 0.4 * k, 16.0), 3.6), dpi=100)
    ax = fig.add_subplot()
    xs = np.arange(k)
    dev = np.array([np.nan if c["device_accuracy"] is None else 100 * c["device_accuracy"] for c in f["per_class"]])
    host = np.array([np.nan if c["host_accuracy"] is None else 100 * c["host_accuracy"] for c in f["per_class"]])
    # points, not bars: the axis zooms to where the classes are (95-100 % is common), and a bar cut off at
    # 90 % would draw differences ten times their size
    ax.plot(xs + 0.12, host, "D", mfc="none", color="#718096", ms=6, label="host reference", ls="none")
    ax.plot(xs - 0.12, dev, "o", color="#2b6cb0", ms=6, label="device", ls="none")
    ax.set_xticks(xs, names, rotation=90 if k > 12 else 0)
    floor = accuracy_floor(np.concatenate([dev, host, [100 * f["device_top1"]]]))
    ax.set_ylim(floor, 100.0 + (100.0 - floor) * 0.05)
    ax.set_xlim(-0.6, k - 0.4)
    ax.grid(axis="y", lw=0.4, alpha=0.6)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("accuracy per class" + (f" (axis from {floor:.0f} %)" if floor > 0 else ""))
    ax.axhline(100 * f["device_top1"], color="#2b6cb0", lw=0.8, ls="--", label="device, all classes")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out["per_class"] = _png(fig)

    lat = f.get("latency")
    if lat:
        fig = Figure(figsize=(6.4, 3.6), dpi=100)
        ax = fig.add_subplot()
        values = np.asarray(lat["all"], dtype=np.float64)
        bins = min(40, max(5, len(np.unique(values))))
        if latency_in_ms(lat):
            scale = lat["ms_median"] / lat["median"] if lat["median"] else 0.0
            ax.hist(values * scale, bins=bins, color="#2b6cb0")
            ax.axvline(lat["ms_median"], color="black", lw=1, ls="--", label=f"median {lat['ms_median']:.3f} ms")
            ax.set_xlabel(f"ms per inference ({lat['source'].upper()} {lat['unit']} at the board's clock)")
        else:
            ax.hist(values, bins=bins, color="#2b6cb0")
            ax.axvline(lat["median"], color="black", lw=1, ls="--", label=f"median {lat['median']:,.0f}")
            ax.set_xlabel(f"{lat['unit']} per inference ({lat['source']})")
        ax.set_ylabel("samples")
        title = "latency over samples"
        if lat["source"] == "qemu-icount":
            title += " (QEMU instructions, not cycles)"
        ax.set_title(title)
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["latency"] = _png(fig)
    return out


def accuracy_floor(percents: np.ndarray) -> float:
    """Where the per-class axis starts: a 5 % step at least 2 points below the lowest figure (0 at worst)."""
    finite = percents[np.isfinite(percents)]
    low = float(finite.min()) if finite.size else 0.0
    return max(0.0, 5.0 * float(np.floor((low - 2.0) / 5.0)))


def latency_in_ms(lat: dict[str, Any]) -> bool:
    """Cycles at a board's real clock read best as time; QEMU instructions and estimates stay counts."""
    return "ms_median" in lat and not lat.get("ms_is_estimate") and lat["source"] != "qemu-icount"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --- the texts -----------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def headline(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, note) rows shared by the HTML, the Markdown and the CLI."""
    f = report["figures"]
    rows: list[tuple[str, str, str]] = []
    if not f.get("samples"):
        return [("samples", "0", "nothing ran")]
    n = f["samples"]
    rows.append(("device top-1", _pct(f["device_top1"]), f"{n} samples"))
    if "device_top5" in f:
        rows.append(("device top-5", _pct(f["device_top5"]), ""))
    rows.append(("host reference top-1", _pct(f["host_top1"]), "numpy int8 reference (bit-exact TFLite)"))
    dis = len(f["disagreements"])
    rows.append(
        (
            "device = host (bit-exact)",
            _pct(f["agreement"]),
            "every output identical"
            if dis == 0
            else f"{dis} samples DIFFER: the engine has a bug"
            if report.get("engine", "native") == "native"
            else f"{dis} samples differ: a finding about {report['engine']}, which rounds differently",
        )
    )
    d = f["distance"]
    rows.append(
        (
            "output distance device vs host",
            f"max {d['max_abs_diff']:.4g}, mean {d['mean_abs_diff']:.4g}",
            f"dequantized; in int8 steps max {d['max_abs_diff_int8']}, cosine similarity mean "
            f"{d['cosine_mean']:.6f}, min {d['cosine_min']:.6f}",
        )
    )
    lat = f.get("latency")
    if lat:
        rows.append(
            (
                f"{lat['unit']} per inference",
                f"median {lat['median']:,.0f} (min {lat['min']:,}, p95 {lat['p95']:,.0f}, max {lat['max']:,})",
                lat["note"],
            )
        )
        if "ms_median" in lat:
            est = "ESTIMATE " if lat.get("ms_is_estimate") else ""
            rows.append(("latency", f"{est}{lat['ms_median']:.3f} ms median", f"p95 {lat['ms_p95']:.3f} ms"))
    t = report.get("throughput") or {}
    if t.get("samples_per_s"):
        rows.append(
            (
                "throughput of this session",
                f"{t['samples_per_s']:.1f} samples/s",
                f"{t['samples']} samples in {t['seconds']:.1f} s, {t['jobs']} job(s)",
            )
        )
    if t.get("input_path"):
        rate = t.get("input_bytes_per_s")
        what = "staging file written at " if t["input_path"] == "semihosting" else ""
        rows.append(
            (
                "inputs reached the device by",
                _INPUT_PATHS.get(t["input_path"], t["input_path"]),
                "; ".join(x for x in (f"{what}{rate / 1e3:,.0f} KB/s" if rate else "", t.get("input_note")) if x),
            )
        )
    return rows


_INPUT_PATHS = {"uart": "UART", "semihosting": "semihosting (QEMU)", "swd": "SWD (probe)"}


def _context(report: dict[str, Any]) -> list[tuple[str, str]]:
    c = report.get("counting") or {}
    target = report["target_desc"]
    if c.get("source") == "qemu-icount":
        target += " — counts are QEMU instructions, not cycles"
    data = report["dataset"] + (f" ({report['dataset_path']})" if report.get("dataset_path") else "")
    return [
        ("board", report["board"]),
        ("target", f"{report['target']}: {target}"),
        ("model", f"{report['model']} (sha256 {report['model_sha256'][:16]}…)"),
        ("engine", report.get("engine", "native")),
        ("data set", f"{data}: {report['samples_total']} of {report['samples_in_dataset']} samples"),
        ("preprocessing", report["preprocessing"]),
        (
            "harness",
            f"{report['harness']}" + (f" (git {report['git_sha']})" if report.get("git_sha") else ""),
        ),
        ("date", report["date"]),
        ("run id", report["run_id"] + (" (resumed)" if report.get("resumed") else "")),
    ]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1a202c;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;margin:.5rem 0} td,th{padding:.25rem .7rem;border-bottom:1px solid #edf2f7;
text-align:left;vertical-align:top} th{background:#f7fafc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}
.card{border:1px solid #e2e8f0;border-radius:8px;padding:.8rem 1.2rem;min-width:150px}
.card .v{font-size:1.8rem;font-weight:600} .card .l{color:#4a5568;font-size:.85rem}
.ok{color:#276749} .bad{color:#c53030} .note{color:#4a5568;font-size:.9rem}
img{max-width:100%;height:auto;border:1px solid #edf2f7}
"""


def render_html(report: dict[str, Any], pngs: dict[str, bytes]) -> str:
    e = html.escape
    f = report["figures"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>accuracy: {e(report['model'])} on {e(report['board'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(report['model'])} on {e(report['board'])}: accuracy on the device</h1>",
        '<table class="context">',
    ]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _context(report)]
    parts.append("</table>")
    if f.get("samples"):
        agree_ok = not f["disagreements"]
        cards = [
            ("device top-1", _pct(f["device_top1"]), ""),
            ("host top-1", _pct(f["host_top1"]), ""),
            ("device = host", _pct(f["agreement"]), "ok" if agree_ok else "bad"),
            ("samples", f"{f['samples']:,}", ""),
        ]
        if "device_top5" in f:
            cards.insert(1, ("device top-5", _pct(f["device_top5"]), ""))
        parts.append('<div class="cards">')
        parts += [
            f'<div class="card"><div class="v {cls}">{e(v)}</div><div class="l">{e(label)}</div></div>'
            for label, v, cls in cards
        ]
        parts.append("</div>")
    parts.append('<h2>Figures</h2><table class="figures"><tr><th>figure</th><th>value</th><th>note</th></tr>')
    parts += [
        f'<tr><td>{e(a)}</td><td class="num">{e(b)}</td><td class="note">{e(c)}</td></tr>'
        for a, b, c in headline(report)
    ]
    parts.append("</table>")
    titles = {"confusion": "Confusion matrix", "per_class": "Accuracy per class", "latency": "Latency"}
    for name, data in pngs.items():
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f"<h2>{titles.get(name, name)}</h2>")
        if name == "latency":
            parts.append(f'<p class="note">{e(f["latency"]["note"])}</p>')
        parts.append(f'<img id="plot-{name}" alt="{e(titles.get(name, name))}" src="data:image/png;base64,{b64}">')
    if f.get("samples"):
        parts.append('<h2>Per class</h2><table class="per-class"><tr><th>class</th><th>samples</th>'
                     "<th>device top-1</th><th>host top-1</th></tr>")  # fmt: skip
        parts += [
            f"<tr><td>{e(c['name'])}</td><td class='num'>{c['samples']}</td>"
            f"<td class='num'>{_pct(c['device_accuracy'])}</td>"
            f"<td class='num'>{_pct(c['host_accuracy'])}</td></tr>"
            for c in f["per_class"]
            if c["samples"]
        ]
        parts.append("</table>")
        parts.append("<h2>Device vs host disagreements</h2>")
        dis = f["disagreements"]
        if not dis:
            parts.append(
                f"<p class=\"ok\">None: the device's int8 output equals the host reference's, bit for bit, "
                f"on all {f['samples']} samples.</p>"
            )
        else:
            engine = report.get("engine", "native")
            parts.append(
                f'<p class="bad">{len(dis)} of {f["samples"]} samples differ. Bit-exactness is the contract: '
                "each of these is a bug in the generated engine or the firmware.</p>"
                if engine == "native"
                else f'<p class="bad">{len(dis)} of {f["samples"]} samples differ: {engine} is measured against '
                "the same reference, and its deviations are findings about it.</p>"
            )
            parts.append('<table class="disagreements"><tr><th>sample</th><th>label</th><th>device top-1</th>'
                         "<th>host top-1</th><th>elements differing</th>"
                         "<th>max |diff| (int8)</th></tr>")  # fmt: skip
            parts += [
                f"<tr><td class='num'>{d['i']}</td><td class='num'>{d['label']}</td>"
                f"<td class='num'>{d['device_top1']}</td><td class='num'>{d['host_top1']}</td>"
                f"<td class='num'>{d['elements_differing']}</td><td class='num'>{d['max_abs_diff']}</td></tr>"
                for d in dis[:MAX_LISTED]
            ]
            parts.append("</table>")
            if len(dis) > MAX_LISTED:
                parts.append(f'<p class="note">… and {len(dis) - MAX_LISTED} more: see report.json.</p>')
    notes = report.get("dataset_notes") or []
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(report: dict[str, Any], plot_names: list[str]) -> str:
    f = report["figures"]
    lines = [f"# {report['model']} on {report['board']}: accuracy on the device", ""]
    lines += [f"- **{k}**: {v}" for k, v in _context(report)]
    lines += ["", "| figure | value | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in headline(report)]
    if f.get("samples"):
        dis = f["disagreements"]
        lines.append("")
        if dis:
            lines.append(f"**{len(dis)} samples differ between device and host** (bit-exactness is the contract):")
            lines.append("")
            lines += [
                "| sample | label | device top-1 | host top-1 | elements differing |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {d['i']} | {d['label']} | {d['device_top1']} | {d['host_top1']} | {d['elements_differing']} |"
                for d in dis[:MAX_LISTED]
            ]
        else:
            lines.append(f"Device and host outputs are identical on all {f['samples']} samples.")
    lines.append("")
    lines += [f"![{name}]({name}.png)" for name in plot_names]
    lines += ["", "Full report: report.html (self-contained); every sample: samples.jsonl.", ""]
    return "\n".join(lines)
