"""Nightly reports from recorded-looking runs: JUnit parses and counts the cells, Markdown names the cell and
the metric, the HTML page embeds trend plots over the history, and `harness history` reads the bench store."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET

from harness import nightly, report, results
from harness.nightly import Thresholds, compare_cell


def _cell(key, status="ok", **metrics):
    board = key.split(":")[0]
    return {"nightly_run": None, "matrix": "t", "cell": key, "board": board, "model": key.split(":")[1],
            "status": status, "metrics": {"outputs_match": True, "count_source": "qemu-icount", **metrics},
            "seconds": 1.5}  # fmt: skip


def _run(rdir, run_id, cells, baseline=None):
    """Store the cells as a nightly run would, judge them, and return the run dict reports read."""
    judged = []
    for c in cells:
        c = {**c, "nightly_run": run_id}
        results.append(nightly.CELLS_KIND, c, rdir)
        judged.append({**c, "verdict": compare_cell(c, (baseline or {}).get(c["cell"]), Thresholds())})
    code = nightly.exit_code(judged)
    results.append(nightly.RUNS_KIND, {"run_id": run_id, "matrix": "t", "exit_code": code}, rdir)  # it finished
    return {"run_id": run_id, "matrix": "t", "exit_code": code, "seconds": 3.0, "jobs": 1, "started": "now",
            "baseline": "test", "cells": judged}  # fmt: skip


def _three_runs(rdir):
    a = _cell("qemu-m4:ad", instructions=1000, peak_sram_bytes=400, flash_bytes=9000)
    d = _cell("qemu-m4:digits", instructions=500, peak_sram_bytes=300, flash_bytes=5000, accuracy=97.0)
    _run(rdir, "20260101T000000Z-000001", [a, d])
    _run(rdir, "20260102T000000Z-000002", [a, d])
    base = {"qemu-m4:ad": a, "qemu-m4:digits": d}
    worse = _cell("qemu-m4:ad", instructions=1500, peak_sram_bytes=400, flash_bytes=9000)
    better = _cell("qemu-m4:digits", instructions=400, peak_sram_bytes=300, flash_bytes=5000, accuracy=97.0)
    broken = {**_cell("qemu-m7:kws"), "status": "failed", "error": "DoesNotFitError", "reason": "DoesNotFitError: big",
              "metrics": {}}  # fmt: skip
    return _run(rdir, "20260103T000000Z-000003", [worse, better, broken], base)


def test_junit_has_one_testcase_per_cell_and_fails_regressions_and_failures(tmp_path):
    run = _three_runs(tmp_path)
    root = ET.fromstring(report.junit(run))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["qemu-m4:ad", "qemu-m4:digits", "qemu-m7:kws"]
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    failures = {c.get("name"): c.find("failure") for c in cases}
    assert failures["qemu-m4:digits"] is None
    assert failures["qemu-m4:ad"].get("type") == "regression" and "instructions" in failures["qemu-m4:ad"].get(
        "message"
    )
    assert failures["qemu-m7:kws"].get("type") == "failed" and "DoesNotFitError" in failures["qemu-m7:kws"].get(
        "message"
    )


def test_markdown_names_the_cell_the_metric_and_the_improvement(tmp_path):
    md = report.markdown(_three_runs(tmp_path))
    assert "REGRESSION (exit 1)" in md.splitlines()[0]
    attention = md.split("**Needs attention**")[1].split("**Improved**")[0]
    assert "`qemu-m4:ad`" in attention and "instructions 1,000 -> 1,500 (+50.000 %, allowed 0.1 %)" in attention
    assert "`qemu-m7:kws`" in attention and "DoesNotFitError" in attention
    improved = md.split("**Improved**")[1].split("<details>")[0]
    assert "`qemu-m4:digits`" in improved and "-20.000 %" in improved
    assert "3 s with 1 job(s)." in md
    # a run over a Dask cluster says so, here and in the HTML, not "1 job(s)"
    on_cluster = {**_three_runs(tmp_path / "c"), "scheduler": "tcp://lab1:8786"}
    assert "3 s on the Dask cluster at tcp://lab1:8786." in report.markdown(on_cluster)
    assert "on the Dask cluster at tcp://lab1:8786." in report.html_page(on_cluster, {})


def test_the_headline_says_what_happened(tmp_path):
    line = report.markdown(_three_runs(tmp_path)).splitlines()[0]
    assert "REGRESSION (exit 1)" in line and "— qemu-m4:ad: instructions 1,000 -> 1,500" in line
    assert "(and 1 more)" in line
    # a run whose only problem is a new cell that does not fit is no regression: it says the cell failed
    a = _cell("qemu-m4:ad", instructions=1000, peak_sram_bytes=400, flash_bytes=9000)
    big = {**_cell("nucleo-f412:mcunet"), "status": "failed", "error": "DoesNotFitError",
           "reason": "peak SRAM 300,000 B is more than nucleo-f412's 262,144 B", "metrics": {}}  # fmt: skip
    run = _run(tmp_path, "20260104T000000Z-000004", [a, big], {"qemu-m4:ad": a})
    line = report.verdict_line("t", run["run_id"], run["cells"], run["exit_code"])
    assert "REGRESSION" not in line
    assert "1 CELL FAILED (exit 1): 1 failed, 1 ok — nucleo-f412:mcunet: peak SRAM 300,000 B" in line


def test_html_embeds_trend_plots_over_three_runs(tmp_path):
    run = _three_runs(tmp_path)
    history = report.nightly_history("t", tmp_path)
    assert history["run"].nunique() == 3
    files = report.write_nightly_reports(run, tmp_path, tmp_path / "out")
    page = files["html"].read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    plots = {k for k in files if k.startswith("plot_")}
    assert plots >= {"plot_instructions", "plot_peak_sram_bytes", "plot_flash_bytes", "plot_accuracy"}
    assert len(images) == len(plots)
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "src='http" not in page and "<link" not in page  # self-contained
    for key, cls in (("qemu-m4:ad", "regression"), ("qemu-m4:digits", "improved"), ("qemu-m7:kws", "failed")):
        assert re.search(rf"<tr class='{cls}'><td class=l>{re.escape(key)}</td>", page)
    ET.parse(files["junit"])  # the written file parses too
    assert files["markdown"].read_text().startswith("### nightly t")


def test_cells_csv_and_the_tables_by_model_and_board(tmp_path):
    import csv
    import io

    run = _three_runs(tmp_path)
    files = report.write_nightly_reports(run, tmp_path, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert [(r["cell"], r["verdict"], r["instructions"]) for r in rows] == [
        ("qemu-m4:ad", "regression", "1500"),
        ("qemu-m4:digits", "improved", "400"),
        ("qemu-m7:kws", "failed", ""),
    ]
    assert rows[2]["reason"] == "DoesNotFitError: big"
    by_metric = {m: (boards, dict(r)) for m, boards, r in report.pivots(run["cells"])}
    assert set(by_metric) == {"instructions", "peak_sram_bytes", "flash_bytes", "accuracy"}
    boards, instructions = by_metric["instructions"]
    assert boards == ["qemu-m4", "qemu-m7"]
    assert instructions == {"ad": {"qemu-m4": "1,500"}, "digits": {"qemu-m4": "400"}, "kws": {"qemu-m7": "failed"}}
    page = files["html"].read_text()
    assert "<h2>By model and board</h2>" in page and "<td class=l>digits</td><td>400</td><td></td>" in page
    assert "| `ad` | 1,500 |  |" in files["markdown"].read_text()


def test_trend_plots_are_small_multiples_with_dates_and_the_baseline_band(tmp_path):
    import struct

    run = _three_runs(tmp_path)
    bands = report.baseline_bands(run["cells"])
    # the 0.1 % band of 1,000 instructions is one instruction, so the counter's tick (0 here) does not widen it
    assert bands[("qemu-m4:ad", "instructions")] == (1000.0, 1.0)
    assert bands[("qemu-m4:digits", "accuracy")] == (97.0, Thresholds().accuracy_points)
    assert report.run_time("20260103T000000Z-000003").isoformat() == "2026-01-03T00:00:00+00:00"
    assert report.run_time("R1") is None
    history = report.nightly_history("t", tmp_path)
    plots = report.trend_plots(history, tmp_path / "p", bands)
    w, h = struct.unpack(">II", plots["instructions"].read_bytes()[16:24])
    # a panel per model that has the metric (ad, digits; kws failed), in one row
    assert (w, h) == (round(2 * 4.3 * 90), round((2.6 + 0.7) * 90))
    one = report.trend_plots(history[history["cell"] == "qemu-m4:ad"], tmp_path / "q", bands)
    assert struct.unpack(">I", one["instructions"].read_bytes()[16:20])[0] == round(8.6 * 90)  # never narrower


def _bench(rdir, board, model, median, opt="-O2", nightly_run=None, status="ok"):
    rec = {"run_id": results.new_run_id(), "board": board, "model": model, "status": status, "options": {"opt": opt},
           "figures": {"count_source": "qemu-icount", "count_unit": "instructions", "count": {"median": median},
                       "peak_sram_bytes": 100, "flash_bytes": 200}}  # fmt: skip
    if nightly_run:
        rec["nightly"] = {"run_id": nightly_run, "matrix": "t", "cell": f"{board}:{model}"}
        if not any(r["run_id"] == nightly_run for r in results.read(nightly.RUNS_KIND, rdir)):
            results.append(nightly.RUNS_KIND, {"run_id": nightly_run, "matrix": "t", "exit_code": 0}, rdir)
    results.append("bench", rec, rdir)


def test_history_and_trends_leave_out_runs_that_never_finished(tmp_path):
    _bench(tmp_path, "nucleo-f412", "mlperf_ad", 100, nightly_run="N0")
    rec = {"run_id": "x", "board": "nucleo-f412", "model": "mlperf_ad", "status": "ok", "options": {"opt": "-O2"},
           "figures": {"count_unit": "instructions", "count": {"median": 5}},
           "nightly": {"run_id": "KILLED", "matrix": "t", "cell": "nucleo-f412:mlperf_ad"}}  # fmt: skip
    results.append("bench", rec, tmp_path)  # a cell of a run killed before its verdict
    results.append(nightly.CELLS_KIND, {**_cell("qemu-m4:ad", instructions=5), "nightly_run": "KILLED"}, tmp_path)
    assert [r["value"] for r in report.metric_history("nucleo-f412", "mlperf_ad", "instructions", tmp_path)] == [100]
    assert "KILLED" not in set(report.nightly_history("t", tmp_path)["run"])


def test_history_table_json_and_plot(tmp_path, capsys):
    from harness.cli import main

    for i, v in enumerate((100, 110, 105)):
        _bench(tmp_path, "nucleo-f412", "mlperf_ad", v, nightly_run=f"N{i}")
    _bench(tmp_path, "nucleo-f412", "mlperf_ad", 999, opt="-O0")
    _bench(tmp_path, "nucleo-f412", "mlperf_ad", 1, status="failed")
    _bench(tmp_path, "nucleo-f746", "mlperf_ad", 7)
    rows = report.metric_history("nucleo-f412", "mlperf_ad", "instructions", tmp_path)
    assert [r["value"] for r in rows] == [100, 110, 105, 999]
    assert [r["value"] for r in report.metric_history("nucleo-f412", "mlperf_ad", "count", tmp_path, opt="-O2")] == [
        100,
        110,
        105,
    ]
    assert report.metric_history("nucleo-f412", "mlperf_ad", "cycles", tmp_path) == []
    argv = ["history", "--board", "nucleo-f412", "--model", "mlperf_ad", "--metric", "instructions"]
    assert main([*argv, "--nightly-only", "--results", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["value"] for p in out["points"]] == [100, 110, 105]
    with open(out["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main([*argv, "--results", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "+10.000 %" in text and "plot:" in text
    assert main(["history", "--board", "b", "--model", "m", "--metric", "speed", "--results", str(tmp_path)]) == 2
