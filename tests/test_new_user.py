"""What a new user hits at the command line: option spellings, typos, paths that cannot be written, errors a
script can parse, and a reader that leaves early. Through the real entry point (`main` or the installed
`harness` script), as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import results
from harness.cli import build_parser, main


@pytest.mark.parametrize("spelling", [["--opt", "-Os"], ["--opt=-Os"], ["--opt", "Os"], ["--opt", "Os"]])
def test_every_spelling_of_an_optimisation_level_is_one_level(spelling):
    from harness.cli import _join_opt

    for cmd in (
        ["bench", "--board", "b", "--model", "m"],
        ["history", "--board", "b", "--model", "m", "--metric", "x"],
    ):
        args = build_parser().parse_args(_join_opt([*cmd, *spelling]))
        assert args.opt == "-Os"


def test_a_wrong_optimisation_level_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--board", "nucleo-f746", "--model", "digits_cnn", "--opt", "-O9"])
    assert e.value.code == 2 and "'-O9' is not an optimisation level" in capsys.readouterr().err


def test_bench_with_opt_os_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_BUILD_DIR", str(tmp_path / "build"))
    argv = ["bench", "--board", "nucleo-f746", "--model", "digits_cnn", "--target", "host", "-n", "1", "-m", "1",
            "--opt", "-Os", "--results", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    (rec,) = results.read("bench", tmp_path)
    assert rec["options"]["opt"] == "-Os"


def test_typos_get_the_nearest_name(capsys):
    assert main(["bench", "--board", "nucleo-f476", "--model", "digits_cnn"]) == 2
    assert "unknown board 'nucleo-f476' (did you mean nucleo-f746?)" in " ".join(capsys.readouterr().err.split())
    assert main(["inspect", "digts_cnn"]) == 2
    assert "(did you mean digits_cnn?)" in " ".join(capsys.readouterr().err.split())


def test_export_to_a_missing_folder_or_onto_a_folder(tmp_path, capsys):
    assert main(["export", "digits_cnn", "-o", str(tmp_path / "missing" / "m.tflite")]) == 2
    err = capsys.readouterr().err
    # one line whatever the path's length, the path whole in it
    assert err.count("\n") == 1 and f"{tmp_path / 'missing'} does not exist" in err and "Traceback" not in err
    assert main(["export", "digits_cnn", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder: give a file name" in err
    assert main(["export", "digits_cnn", "-o", str(tmp_path / "m.tflite")]) == 0 and (tmp_path / "m.tflite").is_file()


def test_errors_under_json_are_a_json_object_on_stdout(tmp_path, capsys):
    assert main(["bench", "--board", "nosuch", "--model", "digits_cnn", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": json.loads(out)["error"], "exit_code": 2}
    assert "unknown board 'nosuch'" in json.loads(out)["error"] and "unknown board" in err


def test_history_of_a_model_never_run_is_an_error_and_aliases_are_one_model(tmp_path, monkeypatch, capsys):
    argv = ["history", "--board", "nucleo-f746", "--metric", "arena_bytes", "--results", str(tmp_path)]
    assert main([*argv, "--model", "nosuch", "--json"]) == 2
    assert "no runs of model 'nosuch'" in json.loads(capsys.readouterr().out)["error"]
    for name in ("mcunet_vww", "mcunet_vww1"):  # an alias and the model it names, as users run them
        results.append("bench", {"status": "ok", "board": "nucleo-f746", "model": name, "run_id": name,
                                 "figures": {"arena_bytes": 23360}}, tmp_path)  # fmt: skip
    for name in ("mcunet_vww", "mcunet_vww1"):
        assert main([*argv, "--model", name, "--json", "--plot", str(tmp_path / "h.png")]) == 0
        assert len(json.loads(capsys.readouterr().out)["points"]) == 2  # both halves of one history
    assert main([*argv, "--model", "mcunet_vww", "--opt", "-O3"]) == 1  # runs of it, none with -O3
    assert "no recorded arena_bytes" in capsys.readouterr().out
    results.append("bench", {"status": "ok", "board": "nucleo-f746", "model": "mcunet_vww", "run_id": "L",
                             "figures": {"latency_ms": 99.37222222222222}}, tmp_path)  # fmt: skip
    lat = ["history", "--board", "nucleo-f746", "--metric", "latency_ms", "--model", "mcunet_vww"]
    assert main([*lat, "--results", str(tmp_path), "--plot", str(tmp_path / "l.png")]) == 0
    assert "99.372 ms" in capsys.readouterr().out  # not 99.37222222222222


def test_a_reader_that_leaves_early_gets_no_traceback():
    harness = Path(sys.executable).with_name("harness")
    proc = subprocess.Popen([str(harness), "models", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head` does once it has its lines
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# --- output a person can read: nothing cut, at 80 and 120 columns -------------------------------------------


def _cli(*argv: str, columns: int) -> str:
    import os

    harness = Path(sys.executable).with_name("harness")
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.run([str(harness), *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("columns", [80, 120])
def test_models_and_inspect_never_cut_a_name_or_a_number(columns):
    from harness.inspect import inspect_model
    from harness.zoo import models_table, resolve_model

    out = _cli("models", columns=columns)
    assert "…" not in out and max(map(len, out.splitlines())) <= columns
    for r in models_table():
        assert r["name"] in out and f"{r['macs'] / 1e6:.2f} M" in out
    out = _cli("inspect", "mcunet_vww", columns=columns)
    assert "…" not in out and max(map(len, out.splitlines())) <= columns
    for layer in inspect_model(resolve_model("mcunet_vww")[0])["layers"]:
        assert layer["name"] in out and f"{layer['macs']:,}" in out


@pytest.mark.qemu
@pytest.mark.parametrize("columns", [80, 120])
def test_bench_and_doctor_keep_figures_whole(columns, tmp_path):
    import re

    from conftest import require_tools

    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    out = _cli("bench", "--board", "nucleo-f746", "--model", "digits_cnn", "-n", "1", "-m", "1",
               "--results", str(tmp_path), columns=columns)  # fmt: skip
    assert "…" not in out and max(map(len, out.splitlines())) <= columns
    assert re.search(r"\d[\d,]* / [\d,]+ / [\d,]+", out)  # min / median / max on one line
    out = _cli("doctor", columns=columns)
    assert "…" not in out and "arm-none-eabi-gcc" in out  # a tool's name is not split over two lines


@pytest.mark.qemu
def test_a_qemu_machine_has_no_probe_and_no_latency_and_json_prints_the_stored_record(tmp_path, capsys):
    from conftest import require_tools

    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    argv = ["bench", "--board", "qemu-m55", "--model", "digits_cnn", "-n", "1", "-m", "1", "--results", str(tmp_path)]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert "probe" not in err and "qemu-m55 is QEMU's mps3-an547" in " ".join(err.split())
    assert printed["figures"]["latency_ms"] is None and "no real clock" in printed["figures"]["latency_note"]
    (stored,) = results.read("bench", tmp_path)
    assert {k: printed[k] for k in stored} == stored  # the record as stored: schema, time, git sha and all
    assert {"schema", "time", "git_sha"} <= set(printed)
    assert main(argv) == 0
    assert "latency" not in capsys.readouterr().out  # no row for a figure that does not exist


def test_baseline_list_and_show(tmp_path, capsys):
    from harness import nightly

    rdir = tmp_path / "r"
    assert main(["baseline", "list", "--results", str(rdir)]) == 0
    assert "no baselines yet" in capsys.readouterr().out
    cell = {"nightly_run": "R1", "matrix": "lab", "cell": "qemu-m4:digits_cnn", "status": "ok",
            "metrics": {"instructions": 123_456, "peak_sram_bytes": 4_096}}  # fmt: skip
    results.append(nightly.CELLS_KIND, cell, rdir)
    assert main(["baseline", "accept", "R1", "--results", str(rdir)]) == 0
    capsys.readouterr()
    assert main(["baseline", "list", "--results", str(rdir), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["matrix"] == "lab" and row["run_id"] == "R1" and row["cells"] == 1
    assert main(["baseline", "show", "lab", "--results", str(rdir)]) == 0
    out = capsys.readouterr().out
    assert "qemu-m4:digits_cnn" in out and "123,456" in out and "4,096" in out
    assert main(["baseline", "show", "lb", "--results", str(rdir)]) == 2
    assert "(did you mean lab?)" in capsys.readouterr().err


def test_every_option_has_help_and_shows_its_default():
    import argparse

    parser = build_parser()
    assert parser.description.startswith("Benchmark int8 TinyML models") and "130" in parser.epilog
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]

    def walk(sub, path):
        for name, p in sub.choices.items():
            assert p.description, (*path, name)
            for a in p._actions:
                if isinstance(a, argparse._SubParsersAction):
                    walk(a, (*path, name))  # baseline accept/list/show, engines list/fetch
                elif a.dest != "help":
                    assert a.help, (*path, name, a.option_strings or a.dest)

    walk(sub, ())
    bench = " ".join(sub.choices["bench"].format_help().split())
    assert "(default: 5)" in bench and "(default: -O2)" in bench


@pytest.mark.parametrize("columns", [80, 120])
def test_boards_lists_each_board_whole(columns):
    from harness.boards import load_boards

    out = _cli("boards", columns=columns)
    assert "…" not in out and max(map(len, out.splitlines())) <= columns
    for b in load_boards().values():
        assert b.name in out and f"{b.ram_bytes // 1024:,} KiB" in out
    f746 = [r for r in json.loads(_cli("boards", "--json", columns=columns)) if r["name"] == "nucleo-f746"][0]
    assert f746["qemu_fallback"] == "qemu-m7" and f746["clock_mhz"] == 216 and f746["sram_bytes"] == 320 * 1024


def test_bench_progress_names_each_stage(tmp_path, monkeypatch):
    from harness.bench import BenchOptions, run_bench

    monkeypatch.setenv("HARNESS_BUILD_DIR", str(tmp_path / "build"))
    stages = []
    opts = BenchOptions("nucleo-f746", "digits_cnn", target="host", inputs=2, repetitions=1, results_dir=str(tmp_path))
    run_bench(opts, step=lambda what, done=None, total=None: stages.append((what, done, total)))
    names = [s[0] for s in stages]
    assert "generating C" in names and any(n.startswith("starting host") for n in names)
    assert ("input 2/2: 1 warm-up + 1 timed", 1, 2) in stages and stages[-1] == ("done", 2, 2)


def _csv_rows(text: str) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def test_csv_from_models_inspect_and_history_is_raw_figures(tmp_path, capsys):
    from harness.zoo import models_table

    assert main(["models", "--csv"]) == 0
    rows = _csv_rows(capsys.readouterr().out)
    want = {r["name"]: r for r in models_table()}
    assert [r["name"] for r in rows] == list(want)
    digits = next(r for r in rows if r["name"] == "digits_cnn")
    assert int(digits["macs"]) == want["digits_cnn"]["macs"] and digits["input"] == "1x8x8x1"

    assert main(["inspect", "digits_cnn", "--csv"]) == 0
    layers = _csv_rows(capsys.readouterr().out)
    assert [int(r["index"]) for r in layers] == list(range(len(layers))) and all(r["macs"].isdigit() for r in layers)

    argv = ["history", "--board", "nucleo-f746", "--metric", "arena_bytes", "--model", "digits_cnn"]
    for run in ("a", "b"):
        results.append("bench", {"status": "ok", "board": "nucleo-f746", "model": "digits_cnn", "run_id": run,
                                 "figures": {"arena_bytes": 23360}}, tmp_path)  # fmt: skip
    assert main([*argv, "--results", str(tmp_path), "--csv", "--plot", str(tmp_path / "h.png")]) == 0
    points = _csv_rows(capsys.readouterr().out)
    assert [(p["run_id"], p["arena_bytes"]) for p in points] == [("a", "23360"), ("b", "23360")]

    with pytest.raises(SystemExit):  # one format at a time
        main(["models", "--csv", "--json"])
    assert "not allowed with" in capsys.readouterr().err


def test_bench_csv_is_the_record_as_one_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_BUILD_DIR", str(tmp_path / "build"))
    argv = ["bench", "--board", "qemu-m4", "--model", "digits_cnn", "-n", "1", "-m", "1", "--results", str(tmp_path)]
    assert main([*argv, "--csv"]) == 0
    (row,) = _csv_rows(capsys.readouterr().out)
    (rec,) = results.read("bench", tmp_path)
    f = rec["figures"]
    assert row["run_id"] == rec["run_id"] and row["git_sha"] == (rec["git_sha"] or "")
    assert row["count_unit"] == "instructions" and int(row["count_median"]) == f["count"]["median"]
    assert int(row["peak_sram_bytes"]) == f["peak_sram_bytes"] and int(row["flash_bytes"]) == f["flash_bytes"]
    assert row["outputs_match"] == "True" and row["fits"] == "True"


@pytest.mark.parametrize("columns", [80, 120])
def test_accuracy_history_shows_samples_and_points_and_nightly_only_filters_it(columns, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))

    def acc(run_id, top1, samples, data="d1"):
        results.append("accuracy", {"status": "ok", "board": "nucleo-f746", "model": "digits_cnn", "run_id": run_id,
                                    "dataset": "digits", "dataset_sha256": data,
                                    "figures": {"device_top1": top1, "samples": samples}}, tmp_path)  # fmt: skip

    acc("full1", 0.9500, 450)
    acc("lim30", 0.9000, 30, data="d2")  # a --limit 30 run: other samples, no change computed against it
    acc("full2", 0.9550, 450)
    acc("night", 0.9550, 450)
    results.append("nightly", {"nightly_run": "N1", "cell": "nucleo-f746:digits_cnn", "accuracy_run_id": "night"},
                   tmp_path)  # fmt: skip
    results.append("nightly_runs", {"run_id": "N1", "matrix": "t", "exit_code": 0}, tmp_path)
    argv = ["history", "--board", "nucleo-f746", "--model", "digits_cnn", "--metric", "accuracy",
            "--results", str(tmp_path), "--plot", str(tmp_path / "a.png")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    # one block (or row) per run, whatever layout 80 columns get
    name = re.compile(r"full1|lim30|full2|night")
    runs = {name.search(b).group(0): " ".join(b.split()) for b in re.split(r"──|\n(?=│)", out) if name.search(b)}
    assert " 30 " in runs["lim30"] and " pt" not in runs["lim30"]  # the first run over its samples
    assert "+0.50 pt" in runs["full2"]  # against full1, over the same 450 samples, not the --limit run
    assert all(w in runs["night"] for w in (" N1 ", " 450 ", "+0.00 pt"))
    assert main([*argv, "--nightly-only", "--csv"]) == 0
    (row,) = _csv_rows(capsys.readouterr().out)
    assert (row["run_id"], row["nightly_run"], row["samples"], row["accuracy"]) == ("night", "N1", "450", "95.5")


def test_history_keys_a_model_by_its_hash_as_well_as_its_name(tmp_path, capsys):
    """The same model file under another name (a copy, a renamed export) is one history."""
    from harness.bench import model_digest
    from harness.zoo import resolve_model

    digest = model_digest(resolve_model("digits_cnn")[0])
    for run_id, name, sha in (("a", "digits_cnn", digest), ("b", "/data/renamed.tflite", digest),
                              ("c", "other.tflite", "f" * 64)):  # fmt: skip
        results.append("bench", {"status": "ok", "board": "nucleo-f746", "model": name, "run_id": run_id,
                                 "model_sha256": sha, "figures": {"arena_bytes": 960}}, tmp_path)  # fmt: skip
    argv = ["history", "--board", "nucleo-f746", "--metric", "arena_bytes", "--results", str(tmp_path), "--csv",
            "--plot", str(tmp_path / "h.png")]  # fmt: skip
    assert main([*argv, "--model", "digits_cnn"]) == 0
    assert [r["run_id"] for r in _csv_rows(capsys.readouterr().out)] == ["a", "b"]
    exported = tmp_path / "mine.tflite"  # never run under this name: found by its hash
    assert main(["export", "digits_cnn", "-o", str(exported)]) == 0
    capsys.readouterr()
    assert main([*argv, "--model", str(exported)]) == 0
    assert [r["run_id"] for r in _csv_rows(capsys.readouterr().out)] == ["a", "b"]
