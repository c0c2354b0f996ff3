"""Nightly runs without QEMU: matrix parsing, verdicts on recorded-looking cells, baselines, exit codes, and the
scheduler (a hung cell is killed and recorded while the others complete) with a stand-in for the bench."""

from __future__ import annotations

import json
import re
import time

import pytest

from harness import nightly, results
from harness.nightly import Cell, MatrixError, Thresholds, compare_cell, exit_code, parse_matrix


def cell(status="ok", **metrics):
    return {"cell": "b:m", "board": "b", "status": status, "metrics": {"outputs_match": True, **metrics}}


def qemu(**m):
    return cell(count_source="qemu-icount", **m)


# --- matrix ----------------------------------------------------------------------------------------------


def test_matrix_is_the_product_of_its_axes_with_overrides_and_exclusions():
    m = parse_matrix(
        {
            "name": "t",
            "defaults": {"inputs": 2},
            "matrix": {"boards": ["nucleo-f412", "nucleo-f746"], "models": ["mlperf_ad", "digits_cnn"]},
            "cells": [{"board": "nucleo-f412", "model": "digits_cnn", "dataset": "digits", "limit": 10}],
            "exclude": [{"board": "nucleo-f746", "model": "mlperf_ad"}],
            "thresholds": {"instructions_pct": 0.5},
        }
    )
    keys = sorted(c.key for c in m.cells)
    assert keys == ["nucleo-f412:digits_cnn", "nucleo-f412:mlperf_ad", "nucleo-f746:digits_cnn"]
    by = {c.key: c for c in m.cells}
    assert by["nucleo-f412:digits_cnn"].dataset == "digits" and by["nucleo-f412:digits_cnn"].limit == 10
    assert by["nucleo-f412:digits_cnn"].inputs == 2  # the override kept the defaults
    assert by["nucleo-f746:digits_cnn"].dataset is None
    assert all(c.thresholds.instructions_pct == 0.5 and c.thresholds.cycles_pct == 2.0 for c in m.cells)


def test_opt_enters_the_key_only_when_the_matrix_varies_it():
    one = parse_matrix(
        {"name": "t", "defaults": {"opt": "-O0"}, "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]}}
    )
    assert [c.key for c in one.cells] == ["qemu-m4:mlperf_ad"] and one.cells[0].opt == "-O0"
    two = parse_matrix({"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"], "opt": ["-O2", "-Os"]}})
    assert sorted(c.key for c in two.cells) == ["qemu-m4:mlperf_ad:O2", "qemu-m4:mlperf_ad:Os"]


@pytest.mark.parametrize(
    "data, words",
    [
        ({"matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]}}, "name"),
        ({"name": "t", "matrix": {"boards": ["nope"], "models": ["mlperf_ad"]}}, "unknown board 'nope'"),
        ({"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["nomodel"]}}, "neither a zoo name"),
        ({"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]}, "defaults": {"opt": "-O9"}}, "opt"),
        (
            {"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]}, "defaults": {"inptus": 1}},
            "inptus",
        ),
        (
            {"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]}, "thresholds": {"x": 1}},
            "threshold",
        ),
        (
            {
                "name": "t",
                "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]},
                "thresholds": {"flash_bytes": -1},
            },
            "non-negative",
        ),
        ({"name": "t"}, "no cells"),
    ],
)
def test_invalid_matrices_say_what_is_wrong(data, words):
    with pytest.raises(MatrixError, match=words):
        parse_matrix(data)


def test_the_default_matrix_parses(tmp_path):
    from pathlib import Path

    m = nightly.load_matrix(Path(__file__).resolve().parent.parent / "nightly.toml")
    boards = {c.board for c in m.cells}
    assert boards == {"nucleo-f412", "nucleo-f746"}
    assert all(c.target == "qemu" for c in m.cells)
    assert any(c.dataset == "digits" for c in m.cells)
    tflm = [c for c in m.cells if c.engine == "tflm-cmsis"]
    # each TFLM cell has its native twin, so the nightly can track the ratio
    assert tflm and all(any(n.key == c.key.removesuffix(":tflm-cmsis") for n in m.cells) for c in tflm)


def test_invalid_matrix_exits_2(tmp_path, capsys):
    from harness.cli import main

    bad = tmp_path / "m.toml"
    bad.write_text("name = 'x'\n[matrix\n")
    assert main(["nightly", "--matrix", str(bad), "--results", str(tmp_path / "r")]) == 2
    assert "valid TOML" in " ".join(capsys.readouterr().err.split())
    assert main(["nightly", "--matrix", str(tmp_path / "absent.toml"), "--results", str(tmp_path / "r")]) == 2


# --- verdicts --------------------------------------------------------------------------------------------


def test_qemu_instruction_counts_regress_above_a_tenth_of_a_percent():
    th = Thresholds()
    base = qemu(instructions=1_000_000, peak_sram_bytes=5000, flash_bytes=20000)
    assert (
        compare_cell(qemu(instructions=1_000_900, peak_sram_bytes=5000, flash_bytes=20000), base, th)["status"] == "ok"
    )
    v = compare_cell(qemu(instructions=1_001_100, peak_sram_bytes=5000, flash_bytes=20000), base, th)
    assert v["status"] == "regression"
    bad = [c for c in v["checks"] if c["verdict"] == "regression"]
    assert [c["metric"] for c in bad] == ["instructions"] and bad[0]["delta"] == 1100


def test_hardware_cycles_get_a_two_percent_band_and_a_stack_jitter_budget():
    th = Thresholds()
    base = cell(count_source="dwt", cycles=100_000, peak_sram_bytes=5000)
    assert compare_cell(cell(count_source="dwt", cycles=101_900, peak_sram_bytes=5100), base, th)["status"] == "ok"
    v = compare_cell(cell(count_source="dwt", cycles=102_100, peak_sram_bytes=5000), base, th)
    assert v["status"] == "regression"
    assert (
        compare_cell(cell(count_source="dwt", cycles=100_000, peak_sram_bytes=5105), base, th)["status"] == "regression"
    )


def test_bytes_are_a_budget_and_any_growth_past_it_regresses():
    base = qemu(instructions=10, peak_sram_bytes=5000, flash_bytes=20000)
    v = compare_cell(qemu(instructions=10, peak_sram_bytes=5001, flash_bytes=20000), base, Thresholds())
    assert v["status"] == "regression"
    assert [c["metric"] for c in v["checks"] if c["verdict"] == "regression"] == ["peak_sram_bytes"]
    lenient = Thresholds(peak_sram_bytes=8)
    assert compare_cell(qemu(instructions=10, peak_sram_bytes=5008, flash_bytes=20000), base, lenient)["status"] == "ok"


def test_improvements_are_reported_and_do_not_fail():
    base = qemu(instructions=1_000_000, flash_bytes=20000)
    v = compare_cell(qemu(instructions=900_000, flash_bytes=19990), base, Thresholds())
    assert v["status"] == "improved"
    assert {c["metric"]: c["verdict"] for c in v["checks"]} == {"instructions": "improved", "flash_bytes": "improved"}
    # one metric better, another worse: a regression still
    assert compare_cell(qemu(instructions=900_000, flash_bytes=20001), base, Thresholds())["status"] == "regression"


def test_accuracy_drop_in_points():
    base = qemu(instructions=10, accuracy=97.0)
    assert compare_cell(qemu(instructions=10, accuracy=96.6), base, Thresholds())["status"] == "ok"
    v = compare_cell(qemu(instructions=10, accuracy=96.0), base, Thresholds())
    assert v["status"] == "regression" and v["checks"][-1]["metric"] == "accuracy"
    assert compare_cell(qemu(instructions=10, accuracy=98.0), base, Thresholds())["status"] == "improved"


def test_mismatch_and_failure_are_failures_whatever_the_baseline():
    base = qemu(instructions=10)
    mismatch = qemu(instructions=5)
    mismatch["metrics"]["outputs_match"] = False
    assert compare_cell(mismatch, base, Thresholds())["status"] == "failed"
    assert compare_cell(mismatch, None, Thresholds())["status"] == "failed"
    failed = {"cell": "b:m", "status": "failed", "error": "BuildError", "reason": "BuildError: boom", "metrics": {}}
    v = compare_cell(failed, base, Thresholds())
    assert v["status"] == "failed" and "boom" in v["notes"][0]
    assert compare_cell(failed, base, Thresholds(), expect_failure="BuildError")["status"] == "xfail"
    assert compare_cell(failed, base, Thresholds(), expect_failure="DoesNotFitError")["status"] == "failed"


def test_no_baseline_or_a_failed_baseline_cell_is_new_and_other_sources_are_not_compared():
    assert compare_cell(qemu(instructions=10), None, Thresholds())["status"] == "new"
    assert compare_cell(qemu(instructions=10), {"status": "failed", "metrics": {}}, Thresholds())["status"] == "new"
    v = compare_cell(cell(count_source="dwt", cycles=10**6), qemu(instructions=10), Thresholds())
    assert v["status"] == "ok" and not v["checks"] and any("not comparable" in n for n in v["notes"])


def test_a_cell_whose_model_file_changed_says_so_and_is_not_judged_against_the_old_model():
    base = {**qemu(instructions=10**6, peak_sram_bytes=1000), "model_sha256": "a" * 64}
    bigger = {**qemu(instructions=2 * 10**6, peak_sram_bytes=5000), "model_sha256": "b" * 64}
    v = compare_cell(bigger, base, Thresholds())
    assert v["status"] == "model changed"
    assert {c["metric"]: c["verdict"] for c in v["checks"]} == {
        "instructions": "model changed",
        "peak_sram_bytes": "model changed",
    }
    assert any("aaaaaaaaaaaa… -> bbbbbbbbbbbb…" in n for n in v["notes"])
    assert exit_code([{**bigger, "verdict": v}]) == 0
    # the same model file is judged as always
    assert compare_cell({**bigger, "model_sha256": "a" * 64}, base, Thresholds())["status"] == "regression"


def test_exit_codes():
    def judged(status, metrics=True):
        return {"verdict": {"status": status}, "metrics": {"instructions": 1} if metrics else {}}

    assert exit_code([judged("ok"), judged("improved"), judged("new"), judged("xfail", False)]) == 0
    assert exit_code([judged("ok"), judged("regression")]) == 1
    assert exit_code([judged("ok"), judged("failed", False)]) == 1
    assert exit_code([judged("failed", False), judged("failed", False)]) == 2  # nothing measured at all
    assert exit_code([]) == 2


# --- baselines -------------------------------------------------------------------------------------------


def _fake_run(rdir, run_id, code, instructions, matrix="t"):
    results.append(
        nightly.CELLS_KIND, {"nightly_run": run_id, "matrix": matrix, **qemu(instructions=instructions)}, rdir
    )
    results.append(nightly.RUNS_KIND, {"run_id": run_id, "matrix": matrix, "exit_code": code}, rdir)


def test_baseline_is_the_file_else_the_last_passing_run(tmp_path):
    rdir = tmp_path / "r"
    assert nightly.find_baseline("t", rdir) is None
    _fake_run(rdir, "20260101T000000Z-aaaaaa", 0, 100)
    _fake_run(rdir, "20260102T000000Z-bbbbbb", 1, 200)  # a regressed run is never a baseline
    _fake_run(rdir, "20260103T000000Z-cccccc", 0, 110, matrix="other")
    b = nightly.find_baseline("t", rdir)
    assert b["run_id"] == "20260101T000000Z-aaaaaa" and b["cells"]["b:m"]["metrics"]["instructions"] == 100
    path, data = nightly.accept_baseline("20260102T000000Z-bbbbbb", rdir)
    assert path == rdir / "baselines" / "t.json" and data["cells"]["b:m"]["metrics"]["instructions"] == 200
    b = nightly.find_baseline("t", rdir)
    assert b["run_id"] == "20260102T000000Z-bbbbbb" and "baseline file" in b["source"]
    with pytest.raises(nightly.HarnessError, match="no nightly run"):
        nightly.accept_baseline("nope", rdir)
    with pytest.raises(nightly.HarnessError, match="does not exist"):
        nightly.find_baseline("t", rdir, tmp_path / "absent.json")


def test_baseline_accept_cli(tmp_path, capsys):
    from harness.cli import main

    rdir = tmp_path / "r"
    _fake_run(rdir, "20260101T000000Z-aaaaaa", 0, 100)
    assert main(["baseline", "accept", "20260101T000000Z-aaaaaa", "--results", str(rdir)]) == 0
    assert json.loads((rdir / "baselines" / "t.json").read_text())["run_id"] == "20260101T000000Z-aaaaaa"
    assert main(["baseline", "accept", "missing", "--results", str(rdir)]) == 2


# --- the scheduler, with a stand-in bench ----------------------------------------------------------------


def _stand_in(cell, run_id, matrix, results_dir, build_dir, stage=lambda _s: None):
    """What run_cell returns, without building anything: 'hang' sleeps past its cell_timeout, 'slow' says
    its stage and takes 2.5 s."""
    if cell.model.startswith("hang"):
        time.sleep(60)
    if cell.model.startswith("slow"):
        stage("input 3/10: 1 warm-up + 5 timed")
        time.sleep(2.5)
    return {**nightly._cell_head(cell, run_id, matrix), "status": "ok", "metrics": qemu(instructions=7)["metrics"],
            "seconds": 0.0, "pid": __import__("os").getpid()}  # fmt: skip


def test_a_hung_cell_is_killed_and_recorded_while_the_others_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(nightly, "run_cell", _stand_in)  # the forked workers inherit the stand-in
    cells = [Cell("qemu-m4", "hang.tflite", cell_timeout=1.0)] + [Cell("qemu-m4", f"m{i}.tflite") for i in range(3)]
    lines = []
    t0 = time.monotonic()
    out = nightly.run_cells(cells, "R1", "t", 2, str(tmp_path / "r"), None, tmp_path / "w", lines.append)
    assert time.monotonic() - t0 < 20
    assert [c["cell"] for c in out] == [c.key for c in cells]
    assert out[0]["status"] == "failed" and out[0]["error"] == "Hung" and "hung" in out[0]["reason"]
    assert all(c["status"] == "ok" for c in out[1:])
    assert len({c["pid"] for c in out[1:]}) == 3  # each cell in its own process
    stored = list(results.read(nightly.CELLS_KIND, tmp_path / "r"))
    assert sorted(r["cell"] for r in stored) == sorted(c.key for c in cells)
    failed = [r for r in results.read("bench", tmp_path / "r") if r["status"] == "failed"]
    assert failed and failed[0]["nightly"] == {"run_id": "R1", "matrix": "t", "cell": "qemu-m4:hang.tflite"}
    assert len(lines) == 4


def test_a_running_cell_says_what_it_is_doing(tmp_path, monkeypatch):
    monkeypatch.setattr(nightly, "run_cell", _stand_in)
    cells = [Cell("qemu-m4", "slow.tflite"), Cell("qemu-m4", "m0.tflite")]
    seen: list[str] = []
    nightly.run_cells(cells, "R", "t", 2, str(tmp_path / "r"), None, tmp_path / "w", lambda _m: None, seen.append)
    assert any(re.search(r"^\[1/2 done\] qemu-m4:slow\.tflite: input 3/10: 1 warm-up \+ 5 timed \(\d+ s\)$", s)
               for s in seen), seen  # fmt: skip


def test_cells_on_one_physical_board_never_overlap(tmp_path, monkeypatch):
    spans = tmp_path / "spans"
    spans.mkdir()

    def timed(cell, run_id, matrix, results_dir, build_dir, stage):
        t0 = time.time()
        time.sleep(0.3)
        (spans / cell.model).write_text(f"{t0} {time.time()} {cell.board}")
        return {**nightly._cell_head(cell, run_id, matrix), "status": "ok", "metrics": {}}

    monkeypatch.setattr(nightly, "run_cell", timed)
    cells = [Cell("nucleo-f412", f"a{i}.tflite", target="pyocd") for i in range(3)]
    cells += [Cell("qemu-m4", f"q{i}.tflite") for i in range(2)]
    nightly.run_cells(cells, "R", "t", 4, str(tmp_path / "r"), None, tmp_path / "w", lambda _m: None)
    board = sorted(tuple(map(float, (spans / f"a{i}.tflite").read_text().split()[:2])) for i in range(3))
    assert all(board[i][1] <= board[i + 1][0] for i in range(2))  # one after another on the board
    qemu_spans = [tuple(map(float, (spans / f"q{i}.tflite").read_text().split()[:2])) for i in range(2)]
    assert any(q[0] < board[0][1] for q in qemu_spans)  # while QEMU cells ran beside them


def test_qemu_counts_never_regress_within_one_tick():
    base = qemu(instructions=20_000, count_resolution=40.0)
    assert compare_cell(qemu(instructions=20_040, count_resolution=40.0), base, Thresholds())["status"] == "ok"
    assert compare_cell(qemu(instructions=19_960, count_resolution=40.0), base, Thresholds())["status"] == "ok"
    v = compare_cell(qemu(instructions=20_080, count_resolution=40.0), base, Thresholds())
    assert v["status"] == "regression" and "at least 40" in v["checks"][0]["allowed"]


def test_count_resolution_is_the_qemu_tick():
    rec = {"board": "nucleo-f412", "figures": {"count_source": "qemu-icount"}}
    assert nightly.count_resolution(rec) == 40.0
    assert nightly.count_resolution({"board": "nucleo-f412", "figures": {"count_source": "dwt"}}) == 1.0


def test_ratio_cells_pair_native_with_tflm_cmsis_and_judge_the_ratio():
    from harness.nightly import RATIO, Thresholds, compare_cell, ratio_cells

    def cell(engine, count, status="ok", model="m"):
        key = f"b:{model}" + ("" if engine == "native" else f":{engine}")
        metrics = {"instructions": count, "count_source": "qemu-icount", "outputs_match": True}
        if engine != "native":
            metrics = {**metrics, "engine": engine, "outputs_deviate": True}
            del metrics["outputs_match"]
        return {"cell": key, "board": "b", "model": model, "opt": "-O2", "engine": engine, "status": status,
                "metrics": metrics}  # fmt: skip

    cells = [cell("native", 900), cell("tflm-cmsis", 1000), cell("tflm-ref", 5000),
             cell("native", 10, model="x"), cell("tflm-cmsis", 20, "failed", model="x")]  # fmt: skip
    (r,) = ratio_cells(cells, "run", "mx")  # the failed pair has no ratio
    assert r["cell"] == "b:m:native/tflm-cmsis" and r["metrics"][RATIO] == 0.9 and r["status"] == "ok"
    th = Thresholds()
    worse = {**r, "metrics": {**r["metrics"], RATIO: 0.9 * 1.002}}
    assert compare_cell(worse, r, th)["status"] == "regression"
    assert compare_cell(r, r, th)["status"] == "ok"
    # a TFLM cell's deviation is noted, never a failure
    v = compare_cell(cells[1], cells[1], th)
    assert v["status"] == "ok" and any("finding about tflm-cmsis" in n for n in v["notes"])


def test_fuse_is_an_axis_and_a_cell_field_and_the_unfused_build_has_its_own_key():
    m = parse_matrix(
        {
            "name": "t",
            "matrix": {
                "boards": ["qemu-m4"],
                "models": ["mlperf_ad"],
                "engines": ["native", "tflm-cmsis"],
                "fuse": [True, False],
            },  # fmt: skip
            "cells": [{"board": "qemu-m4", "model": "digits_cnn", "fuse": False}],
        }
    )
    by = {c.key: c for c in m.cells}
    # the fused build keeps the old key (old baselines hold); the engine axis does not multiply TFLM
    assert sorted(by) == ["qemu-m4:digits_cnn:unfused", "qemu-m4:mlperf_ad", "qemu-m4:mlperf_ad:tflm-cmsis",
                          "qemu-m4:mlperf_ad:unfused"]  # fmt: skip
    assert by["qemu-m4:mlperf_ad"].fuse and not by["qemu-m4:mlperf_ad:unfused"].fuse
    with pytest.raises(MatrixError, match="true or false"):
        parse_matrix({"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]}, "defaults": {"fuse": 1}})
    with pytest.raises(MatrixError, match="fuse must be a list"):
        parse_matrix({"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"], "fuse": "no"}})


def test_the_default_matrix_tracks_fused_and_unfused_vww_models():
    from pathlib import Path

    m = nightly.load_matrix(Path(__file__).resolve().parent.parent / "nightly.toml")
    unfused = {c.model for c in m.cells if not c.fuse}
    assert {"mlperf_vww", "mbv2_vww", "mcunet_vww0", "mcunet_vww1", "mcunet_vww2"} <= unfused
    assert all(any(f.fuse and f.board == c.board and f.model == c.model for f in m.cells) for c in m.cells)


def test_the_tflm_ratio_pairs_the_fused_native_build():
    from harness.nightly import RATIO, ratio_cells

    def cell(engine, count, fuse=True):
        c = {"cell": "b:m", "board": "b", "model": "m", "opt": "-O2", "engine": engine, "status": "ok",
             "metrics": {"instructions": count, "count_source": "qemu-icount"}}  # fmt: skip
        if engine != "native":
            c["cell"] = f"b:m:{engine}"
        return {**c, **({} if fuse else {"fuse": False, "cell": "b:m:unfused"})}

    for order in (
        [cell("native", 900), cell("native", 800, fuse=False)],
        [cell("native", 800, fuse=False), cell("native", 900)],
    ):
        (r,) = ratio_cells([*order, cell("tflm-cmsis", 1000)], "run", "mx")
        assert r["metrics"][RATIO] == 0.9


def test_ctrl_c_writes_a_report_of_the_cells_that_finished_and_exits_130(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    matrix = tmp_path / "m.toml"
    matrix.write_text('name = "t"\n[matrix]\nboards = ["qemu-m4"]\nmodels = ["a.tflite", "b.tflite", "c.tflite"]\n')

    def interrupted(cells, run_id, name, jobs, results_dir, *_a):  # the first cell finishes, then Ctrl-C
        res = {**nightly._cell_head(cells[0], run_id, name), "status": "ok", "metrics": qemu(instructions=7)["metrics"]}
        results.append(nightly.CELLS_KIND, res, results_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(nightly, "run_cells", interrupted)
    rdir = tmp_path / "r"
    assert main(["nightly", "--matrix", str(matrix), "--results", str(rdir)]) == 130
    err = " ".join(capsys.readouterr().out.split())
    (run_dir,) = (rdir / "nightly").iterdir()
    assert "a report of the 1 of 3 cells that finished" in err and f"--resume {run_dir.name}" in err
    run = json.loads((run_dir / "run.json").read_text())
    assert run["interrupted"] and run["exit_code"] == 130 and [c["cell"] for c in run["cells"]] == ["qemu-m4:a.tflite"]
    assert "INTERRUPTED" in (run_dir / "summary.md").read_text().splitlines()[0]
    assert run_dir.name not in nightly.finished_runs(str(rdir))  # not a finished run: --resume completes it
