"""Nightly runs for real on QEMU, kept small: digits_cnn (~250 k instructions) on nucleo-f412's M4 fallback.

One test walks the life of a matrix: a first run (no baseline), accepted as the baseline, a second run that
exits 0 against it, and a run after a change that adds instructions (-O0 against the -O2 baseline) that exits 1
naming the cell and the metric; the HTML then shows the three runs' trends. Another shows a cell whose firmware
cannot fit being recorded while the other cell completes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import require_tools

from harness import results
from harness.cli import main
from harness.report import nightly_history

pytestmark = pytest.mark.qemu

MATRIX = """
name = "t"
[defaults]
target = "qemu"
opt = "{opt}"
inputs = 1
repetitions = 1
warmup = 0
[matrix]
boards = ["nucleo-f412"]
models = ["digits_cnn"]
{extra}
"""


def _matrix(tmp_path: Path, opt: str = "-O2", extra: str = "") -> str:
    path = tmp_path / f"m{opt}{len(extra)}.toml"
    path.write_text(MATRIX.format(opt=opt, extra=extra))
    return str(path)


def _nightly(tmp_path: Path, matrix: str, capsys, jobs: int = 1) -> tuple[int, dict]:
    argv = ["nightly", "--matrix", matrix, "--results", str(tmp_path / "r"), "--build-dir", str(tmp_path / "b")]
    code = main([*argv, "--jobs", str(jobs), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_clean_against_own_baseline_then_O0_regresses_and_the_trend_shows(tmp_path, capsys):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    o2 = _matrix(tmp_path)
    code, first = _nightly(tmp_path, o2, capsys)
    assert code == 0 and first["cells"][0]["verdict"]["status"] == "new"
    assert main(["baseline", "accept", first["run_id"], "--results", str(tmp_path / "r")]) == 0
    capsys.readouterr()

    code, second = _nightly(tmp_path, o2, capsys)
    assert code == 0, second
    (c,) = second["cells"]
    assert c["cell"] == "nucleo-f412:digits_cnn" and c["verdict"]["status"] == "ok"
    assert {x["metric"] for x in c["verdict"]["checks"]} == {"instructions", "peak_sram_bytes", "flash_bytes"}
    same = {x["metric"]: x["delta"] for x in c["verdict"]["checks"]}
    assert same["peak_sram_bytes"] == same["flash_bytes"] == 0
    assert same["instructions"] == 0  # QEMU -icount: the same build and inputs count the same

    code, third = _nightly(tmp_path, _matrix(tmp_path, "-O0"), capsys)
    assert code == 1
    (c,) = third["cells"]
    assert c["verdict"]["status"] == "regression"
    worse = {x["metric"] for x in c["verdict"]["checks"] if x["verdict"] == "regression"}
    assert "instructions" in worse
    md = Path(third["files"]["markdown"]).read_text()
    assert "`nucleo-f412:digits_cnn` | regression | instructions" in md

    # every bench record is tagged with its nightly run and cell
    tagged = [r for r in results.read("bench", tmp_path / "r") if r.get("nightly")]
    assert [r["nightly"]["run_id"] for r in tagged] == [first["run_id"], second["run_id"], third["run_id"]]
    assert {r["nightly"]["cell"] for r in tagged} == {"nucleo-f412:digits_cnn"}
    assert nightly_history("t", tmp_path / "r")["run"].nunique() == 3
    page = Path(third["files"]["html"]).read_text()
    assert page.count("data:image/png;base64,") >= 3  # instructions, peak SRAM, flash


def test_a_cell_that_cannot_fit_is_recorded_and_the_others_complete(tmp_path, capsys):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    # mcunet_vww2's weights alone (~650 KB) exceed the 512 KB of code memory of the M55 machine
    extra = '[[cells]]\nboard = "qemu-m55"\nmodel = "mcunet_vww2"\n'
    code, run = _nightly(tmp_path, _matrix(tmp_path, extra=extra), capsys, jobs=2)
    assert code == 1
    by = {c["cell"]: c for c in run["cells"]}
    assert by["nucleo-f412:digits_cnn"]["status"] == "ok"
    big = by["qemu-m55:mcunet_vww2"]
    assert big["status"] == "failed" and big["error"] == "DoesNotFitError"
    assert "Error" not in big["reason"].split(":")[0]  # the message a user reads, no class name before it
    failed = [r for r in results.read("bench", tmp_path / "r") if r["status"] == "failed"]
    assert [r["nightly"]["cell"] for r in failed] == ["qemu-m55:mcunet_vww2"]
    suite = ET.parse(run["files"]["junit"]).getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert [t.get("name") for t in suite.iter("testcase") if t.find("failure") is not None] == ["qemu-m55:mcunet_vww2"]
