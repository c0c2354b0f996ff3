"""Careless options and bad configuration: each is refused before any work with a message naming it,
never a traceback, never silently accepted."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from harness import results
from harness.bench import BenchOptions, run_bench
from harness.cli import main
from harness.errors import HarnessError


def _opts(tmp_path, **kw) -> BenchOptions:
    return BenchOptions(board="qemu-m4", model="mlperf_ad", results_dir=str(tmp_path / "r"),
                        build_dir=str(tmp_path / "b"), **kw)  # fmt: skip


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"inputs": 0}, "--inputs"),
        ({"inputs": -1}, "--inputs"),
        ({"seed": -1}, "--seed"),
        ({"repetitions": 0}, "--repetitions"),
        ({"repetitions": -1}, "--repetitions"),
        ({"repetitions": 121}, "--repetitions"),
        ({"warmup": -1}, "--warmup"),
        ({"timeout": 0}, "--timeout"),
    ],
)
def test_bench_options_are_checked_before_any_work(kw, words, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match=words):
        run_bench(_opts(tmp_path, target="host", **kw))
    assert time.monotonic() - t0 < 2 and not (tmp_path / "b").exists()  # nothing was generated or built


def test_the_cli_says_it_in_one_line_and_exits_non_zero(tmp_path, capsys):
    assert main(["bench", "--board", "qemu-m4", "--model", "mlperf_ad", "-m", "0", "--results", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "--inputs must be" in err and "Traceback" not in err


def test_a_crash_inside_a_run_is_still_recorded(tmp_path, monkeypatch):
    import harness.bench as bench

    def boom(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(bench, "_bench", boom)
    with pytest.raises(RuntimeError):
        run_bench(_opts(tmp_path, target="host"))
    (rec,) = list(results.read("bench", tmp_path / "r"))
    assert rec["status"] == "failed" and "internal error RuntimeError: a bug" in rec["reason"]


BOARD = """
[qemu.qemu-x]
core = "cortex-m4"
dsp = true
clock_hz = {clock}
flash_origin = 0
flash_bytes = {flash}
ram_origin = 0x20000000
ram_bytes = {ram}
machine = "mps2-an386"
uart = {{ kind = "cmsdk", base = 0x40004000{uart} }}
"""


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"clock": "0"}, "clock_hz = 0 must be >= 1"),
        ({"clock": "-5"}, "clock_hz = -5 must be >= 1"),
        ({"flash": "-1"}, "flash_bytes = -1 must be >= 1"),
        ({"ram": '"lots"'}, "ram_bytes = 'lots' must be a number"),
        ({"uart": ", rx_irq = 40"}, "rx_irq = 40 must be an integer in -1..15"),
        ({"uart": ', rx_irq = "0"'}, "rx_irq = '0' must be an integer"),
    ],
)
def test_boards_toml_is_checked_on_load(fields, words, tmp_path):
    from harness.boards import load_boards

    values = {"clock": "25000000", "flash": "4194304", "ram": "4194304", "uart": "", **fields}
    path = tmp_path / "boards.toml"
    path.write_text(BOARD.format(**values))
    with pytest.raises(HarnessError, match=words):
        load_boards(path)


def test_a_board_name_cannot_inject_a_line_into_c(tmp_path):
    from harness.boards import load_boards
    from harness.build import _c_str

    path = tmp_path / "boards.toml"
    text = BOARD.format(clock="25000000", flash="4194304", ram="4194304", uart="")
    path.write_text(text.replace("[qemu.qemu-x]", '[qemu."x\\n#define BOARD_QEMU 0"]'))
    with pytest.raises(HarnessError, match="board name"):
        load_boards(path)
    assert "\n" not in _c_str("x\n#define EVIL 1") and _c_str('a"b\\c') == '"a\\"b\\\\c"'


def test_an_empty_npz_and_a_limit_below_one_are_refused(tmp_path):
    from harness.accuracy import run_accuracy
    from harness.datasets import DatasetError, load_npz

    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 8, 8, 1), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(DatasetError, match="no samples"):
        load_npz(path)
    for limit in (0, -5):
        with pytest.raises(HarnessError, match="--limit must be a positive"):
            run_accuracy("qemu-m4", "digits_cnn", "digits", target="host", limit=limit, results_dir=tmp_path)


def test_nightly_cell_timeouts_and_counts_must_be_positive():
    from harness.nightly import MatrixError, parse_matrix

    base = {"name": "t", "matrix": {"boards": ["qemu-m4"], "models": ["mlperf_ad"]}}
    for field, value in (("cell_timeout", -1), ("inputs", 0), ("warmup", -1)):
        with pytest.raises(MatrixError, match=f"{field} = {value} must be"):
            parse_matrix({**base, "defaults": {field: value}})
    json.dumps(base)
