"""On-device accuracy: figures, per-sample records, resume, parallel jobs, the report.

The run mechanics are tested with a fake engine standing in for a device (a numpy classifier behind the
same open()/run() interface); the end-to-end tests at the bottom run the real digits_cnn on the host build
and on QEMU.
"""

from __future__ import annotations

import base64
import io
import json
from contextlib import contextmanager
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from harness import results
from harness.accuracy import Counting, compute_figures, load_samples, run_accuracy
from harness.datasets import fit_to_model, input_spec, load_dataset
from harness.errors import HarnessError, TargetError
from harness.model.ir import Graph, Op, Quant, Tensor

BOARD = SimpleNamespace(name="fake-f746", clock_hz=216_000_000, qemu_machine=SimpleNamespace(icount_per_tick=40))
QEMU_COUNTING = Counting.of(BOARD, SimpleNamespace(counter_source="qemu-icount"))


def _graph() -> Graph:
    """digits-shaped: [1,8,8,1] int8 in (0..16 pixels), [1,10] int8 scores out."""
    x = Tensor("x", (1, 8, 8, 1), "int8", Quant([16 / 255], [-128]))
    w = Tensor("w", (10, 64), "int8", Quant([0.01], [0]), np.zeros((10, 64), np.int8))
    y = Tensor("y", (1, 10), "int8", Quant([1 / 16], [-128]))
    return Graph("fake_digits", [x, w, y], [Op("FULLY_CONNECTED", [0, 1, -1], [2])], [0], [2])


def _centroids() -> np.ndarray:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.stack([d.data[d.target == c].mean(axis=0) for c in range(10)])


CENTROIDS = _centroids()


def classify(_graph, inputs):
    """A stand-in model: int8 scores from the distance to each digit's mean image."""
    pixels = (inputs[0].reshape(-1).astype(np.float64) + 128) * 16 / 255
    d = np.linalg.norm(CENTROIDS - pixels, axis=1)
    return [np.clip(np.round(127 - 4 * d), -128, 127).astype(np.int8).reshape(1, 10)]


class FakeEngine:
    """The Engine interface run_accuracy uses, with a numpy 'device'. `corrupt(i, out)` may alter the
    device's output; `fail_at` makes the device fail on that call."""

    target_kind = "qemu"
    target_desc = "fake QEMU mps2-an500"
    digest = "f" * 64

    def __init__(self, corrupt=None, fail_at: int | None = None, hello="qemu-icount"):
        self.interior = _graph()
        self.corrupt = corrupt
        self.fail_at = fail_at
        self.calls: list[int] = []
        self.opened = 0
        self.hello = None if hello is None else SimpleNamespace(counter_source=hello, clock_hz=216e6)

    @contextmanager
    def open(self, timeout: float = 120.0):
        self.opened += 1
        yield FakeRunner(self)


class FakeRunner:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.hello = engine.hello

    def run(self, inputs, repetitions=1):
        e = self.engine
        n = len(e.calls)
        if e.fail_at is not None and n == e.fail_at:
            raise TargetError("the device stopped answering (fake)")
        out = classify(None, inputs)[0].copy()
        key = int(inputs[0].astype(np.int64).sum())  # identifies the sample whatever the order
        e.calls.append(key)
        if e.corrupt is not None:
            out = e.corrupt(key, out)
        stats = None if self.hello is None else SimpleNamespace(counts=[1000 + key % 13])
        return [out], stats


def _run(tmp_path, engine, **kw):
    kw.setdefault("limit", 60)
    return run_accuracy(
        BOARD,
        _graph(),
        "digits",
        results_dir=tmp_path / "results",
        engine=engine,
        reference_fn=classify,
        progress=False,
        **kw,
    )


# --- figures -------------------------------------------------------------------------------------------


def _rec(i, label, dev, host=None, count=None):
    return {"i": i, "label": label, "device": dev, "host": host or dev, "count": count}


def test_figures_by_hand():
    recs = [
        _rec(0, 0, [10, 0, 0, 0, 0, 0, 0], count=100),
        _rec(1, 1, [0, 5, 9, 0, 0, 0, 0], count=300),  # wrong top-1, right top-5
        _rec(2, 2, [0, 0, 7, 0, 0, 0, 0], [0, 0, 7, 1, 0, 0, 0], count=200),  # one element differs
        _rec(3, 1, [0, 8, 0, 0, 0, 0, 0], count=400),
    ]
    f = compute_figures(recs, [str(c) for c in range(7)], (0.5, 0), QEMU_COUNTING)
    assert f["samples"] == 4
    assert f["device_top1"] == 0.75 and f["host_top1"] == 0.75 and f["device_top5"] == 1.0
    assert f["agreement"] == 0.75 and f["top1_agreement"] == 1.0
    assert f["disagreements"] == [
        {"i": 2, "label": 2, "device_top1": 2, "host_top1": 2, "elements_differing": 1, "max_abs_diff": 1}
    ]
    d = f["distance"]
    assert d["max_abs_diff_int8"] == 1 and d["max_abs_diff"] == 0.5
    assert d["mean_abs_diff_int8"] == pytest.approx(1 / 28)
    assert d["cosine_min"] == pytest.approx(7 / np.sqrt(50))  # [0,0,7,0] vs [0,0,7,1]
    assert f["confusion"][1] == [0, 1, 1, 0, 0, 0, 0] and f["confusion"][0][0] == 1
    pc = {c["class"]: c for c in f["per_class"]}
    assert pc[1]["samples"] == 2 and pc[1]["device_accuracy"] == 0.5 and pc[4]["device_accuracy"] is None
    lat = f["latency"]
    assert lat["unit"] == "instructions" and lat["min"] == 100 and lat["max"] == 400 and lat["median"] == 250
    assert lat["ms_is_estimate"] and lat["ms_median"] == pytest.approx(250 / 216e6 * 1e3)
    small = compute_figures([_rec(0, 1, [1, 2, 3])], ["a", "b", "c"], (1.0, 0), None)
    assert "device_top5" not in small and small["latency"] is None  # top-5 only when classes > 5


def test_all_zero_outputs_are_identical():
    f = compute_figures([_rec(0, 0, [0, 0], [0, 0])], ["a", "b"], (1.0, 0), None)
    assert f["distance"]["cosine_min"] == 1.0 and f["agreement"] == 1.0


# --- the run -------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag not in ("meta", "br", "hr", "img"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes every pixel: a truncated PNG fails here
        return im.size


def test_run_report_and_store(tmp_path):
    engine = FakeEngine()
    rep = _run(tmp_path, engine)
    f = rep["figures"]
    assert rep["samples_total"] == 60 and f["samples"] == 60 and len(engine.calls) == 60
    # the figures are those of the records: recompute top-1 from the stored samples
    recs = load_samples(tmp_path / "results" / "reports" / rep["run_id"] / "samples.jsonl")
    assert sorted(recs) == list(range(60))
    top1 = np.mean([np.argmax(r["device"]) == r["label"] for r in recs.values()])
    assert f["device_top1"] == pytest.approx(top1) and f["host_top1"] == f["device_top1"]
    assert f["agreement"] == 1.0 and f["disagreements"] == [] and f["distance"]["max_abs_diff"] == 0
    assert recs[0]["count"] == recs[0]["ticks"] * 40  # QEMU ticks -> instructions
    assert f["latency"]["unit"] == "instructions" and f["latency"]["samples"] == 60
    assert sum(map(sum, f["confusion"])) == 60

    store = list(results.read("accuracy", tmp_path / "results"))
    assert len(store) == 1 and store[0]["run_id"] == rep["run_id"] and store[0]["status"] == "ok"
    assert store[0]["figures"]["device_top1"] == f["device_top1"]

    html_text = open(rep["files"]["html"], encoding="utf-8").read()
    page = _Page()
    page.feed(html_text)
    page.close()
    assert page.open == [] and "table" in page.tags
    text = " ".join(page.text)
    for must in (
        "fake-f746",
        "fake_digits",
        "digits",
        "not cycles",
        "0.1.0",
        rep["date"],
        "None: the device",
    ):
        assert must in text, must
    plots = {img["id"]: img["src"] for img in page.imgs}
    assert set(plots) == {"plot-confusion", "plot-per_class", "plot-latency"}
    for pid, src in plots.items():
        assert src.startswith("data:image/png;base64,")
        w, h = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert 300 <= w <= 2000 and 200 <= h <= 2000, (pid, w, h)
    # the plots show the data: the per-class picture is not blank, the PNG files equal the embedded ones
    confusion = open(rep["files"]["confusion"], "rb").read()
    assert base64.b64encode(confusion).decode() == plots["plot-confusion"].split(",", 1)[1]
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(confusion)).convert("L"))
    assert arr.std() > 10
    md = open(rep["files"]["markdown"], encoding="utf-8").read()
    assert "device top-1" in md and "![confusion](confusion.png)" in md


def test_disagreements_are_listed(tmp_path):
    def corrupt(key, out):
        if key % 5 == 0:
            out = out.copy()
            out[0, 3] = np.int8(out[0, 3] ^ 1)
        return out

    rep = _run(tmp_path, FakeEngine(corrupt=corrupt), limit=80)
    f = rep["figures"]
    fitted = fit_to_model(load_dataset("digits"), input_spec(_graph()), 10)
    expected = {i for i in range(80) if int(fitted.x[i].astype(np.int64).sum()) % 5 == 0}
    assert expected and {d["i"] for d in f["disagreements"]} == expected
    assert f["agreement"] == pytest.approx(1 - len(expected) / 80)
    assert all(d["elements_differing"] == 1 and d["max_abs_diff"] == 1 for d in f["disagreements"])
    html_text = open(rep["files"]["html"], encoding="utf-8").read()
    assert "DIFFER" in html_text and 'class="disagreements"' in html_text


def test_resume_does_not_redo_samples(tmp_path):
    engine = FakeEngine()

    def stop_after_seven(done, total):
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, engine, on_sample=stop_after_seven)
    (run_dir,) = (tmp_path / "results" / "reports").iterdir()
    first = load_samples(run_dir / "samples.jsonl")
    assert len(first) == 7 and len(engine.calls) == 7
    with open(run_dir / "samples.jsonl", "a") as f:
        f.write('{"i": 59, "label": 3, "dev')  # a line torn by the interruption: redone, not trusted

    again = FakeEngine()
    rep = _run(tmp_path, again)
    assert rep["run_id"] == run_dir.name and rep["resumed"]
    assert len(again.calls) == 60 - 7  # only the samples not done before
    lines = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()[:7]]
    assert [r["i"] for r in lines] == sorted(first)
    assert rep["figures"]["samples"] == 60 and rep["throughput"]["samples"] == 53
    # the same command again: nothing left to run in that (limited, so unfinished) run
    third = FakeEngine()
    rep3 = _run(tmp_path, third)
    assert rep3["run_id"] == rep["run_id"] and third.calls == [] and rep3["figures"]["samples"] == 60
    # the whole data set finishes the run; after that, the same command starts a new one
    fourth = FakeEngine()
    assert (
        _run(tmp_path, fourth, limit=None)["run_id"] == rep["run_id"]
        and len(fourth.calls) == len(load_dataset("digits")) - 60
    )
    fifth = FakeEngine()
    assert _run(tmp_path, fifth, limit=20)["run_id"] != rep["run_id"] and len(fifth.calls) == 20


def test_limit_then_full_run_continues(tmp_path):
    e1 = FakeEngine()
    r1 = _run(tmp_path, e1, limit=10)
    e2 = FakeEngine()
    r2 = _run(tmp_path, e2, limit=25)
    assert r2["run_id"] == r1["run_id"] and len(e2.calls) == 15 and r2["figures"]["samples"] == 25


def test_explicit_resume_checks_the_run(tmp_path):
    rep = _run(tmp_path, FakeEngine(), limit=5)
    with pytest.raises(HarnessError, match="no accuracy run 'nope'"):
        _run(tmp_path, FakeEngine(), resume="nope")
    other = FakeEngine()
    other.digest = "0" * 64  # a different model: its results cannot continue this run
    with pytest.raises(HarnessError, match="cannot be resumed"):
        _run(tmp_path, other, resume=rep["run_id"])
    again = FakeEngine()
    r = _run(tmp_path, again, resume=rep["run_id"], limit=8)
    assert r["run_id"] == rep["run_id"] and len(again.calls) == 3


def test_parallel_jobs_split_the_samples(tmp_path):
    engine = FakeEngine()
    rep = _run(tmp_path, engine, jobs=3, limit=50)
    assert engine.opened == 3 and len(engine.calls) == 50 and len(set(rep["figures"]["confusion"][0])) >= 1
    recs = load_samples(tmp_path / "results" / "reports" / rep["run_id"] / "samples.jsonl")
    assert sorted(recs) == list(range(50))
    assert rep["throughput"]["jobs"] == 3


def test_device_failure_is_recorded_and_kept(tmp_path):
    with pytest.raises(TargetError, match="stopped answering"):
        _run(tmp_path, FakeEngine(fail_at=5))
    (store,) = list(results.read("accuracy", tmp_path / "results"))
    assert store["status"] == "failed" and "stopped answering" in store["reason"]
    (run_dir,) = (tmp_path / "results" / "reports").iterdir()
    assert len(load_samples(run_dir / "samples.jsonl")) == 5
    engine = FakeEngine()
    _run(tmp_path, engine)
    assert len(engine.calls) == 55


def test_host_target_has_no_counts(tmp_path):
    rep = _run(tmp_path, FakeEngine(hello=None), limit=10)
    assert rep["figures"]["latency"] is None and "plot-latency" not in open(rep["files"]["html"]).read()


def test_mismatched_dataset_fails_before_the_engine(tmp_path):
    np.savez(tmp_path / "cats.npz", x=np.zeros((3, 8, 8)), y=np.array([0, 1, 11]))
    engine = FakeEngine()
    with pytest.raises(HarnessError, match="only 10 outputs"):
        run_accuracy(BOARD, _graph(), str(tmp_path / "cats.npz"), engine=engine, results_dir=tmp_path, progress=False)
    assert engine.opened == 0 and not (tmp_path / "reports").exists()


def test_cli_registers_accuracy():
    from harness.cli import build_parser

    args = build_parser().parse_args(
        ["accuracy", "--board", "nucleo-f746", "--model", "digits_cnn", "--dataset", "digits", "-j", "2"]
    )
    assert args.jobs == 2 and args.target == "auto" and args.func.__name__ == "cmd_accuracy"


# --- end to end: the real digits_cnn -------------------------------------------------------------------


def _digits_cnn():
    zoo = pytest.importorskip("harness.zoo")
    pytest.importorskip("harness.codegen")
    pytest.importorskip("harness.reference")
    if "digits_cnn" not in getattr(zoo, "ZOO", {}):
        pytest.skip("the zoo has no digits_cnn yet")
    return zoo.resolve_model("digits_cnn")[0]


def test_digits_cnn_on_the_host_build(tmp_path):
    graph = _digits_cnn()
    pytest.importorskip("harness.targets.host")
    rep = run_accuracy(
        "nucleo-f746", graph, "digits", target="host", results_dir=tmp_path, build_dir=str(tmp_path / "b")
    )
    f = rep["figures"]
    assert f["samples"] == len(load_dataset("digits"))
    assert f["agreement"] == 1.0 and f["device_top1"] == f["host_top1"] >= 0.95


@pytest.mark.qemu
def test_digits_cnn_on_qemu_whole_split(tmp_path):
    from conftest import require_tools

    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    graph = _digits_cnn()
    rep = run_accuracy(
        "nucleo-f746",
        graph,
        "digits",
        target="auto",
        jobs=2,
        results_dir=tmp_path,
        build_dir=str(tmp_path / "b"),
    )
    f = rep["figures"]
    assert rep["target"] == "qemu" and rep["counting"]["source"] == "qemu-icount"
    assert f["samples"] == len(load_dataset("digits"))
    assert f["agreement"] == 1.0 and f["disagreements"] == []
    assert f["device_top1"] == f["host_top1"] >= 0.95
    assert f["latency"]["unit"] == "instructions" and f["latency"]["min"] > 0
    assert "not cycles" in open(rep["files"]["html"], encoding="utf-8").read()


def test_cli_runs_and_prints(tmp_path, monkeypatch, capsys):
    import harness.accuracy as acc
    from harness.cli import main

    real = acc.run_accuracy

    def with_fake_device(board, model, dataset, **kw):
        assert (board, model, dataset) == ("nucleo-f746", "digits_cnn", "digits")
        kw.update(engine=FakeEngine(), reference_fn=classify, progress=False)
        return real(BOARD, _graph(), dataset, **kw)

    monkeypatch.setattr(acc, "run_accuracy", with_fake_device)
    argv = ["accuracy", "--board", "nucleo-f746", "--model", "digits_cnn", "--dataset", "digits"]
    assert main([*argv, "--limit", "12", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "device top-1" in out and "report.html" in out
    assert main([*argv, "--limit", "12", "--results", str(tmp_path), "--json", "--no-resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["figures"]["samples"] == 12 and summary["disagreements"] == 0
    assert len(list(results.read("accuracy", tmp_path))) == 2


@pytest.mark.parametrize("classes", [2, 40])
def test_plots_for_few_and_many_classes(classes):
    from harness.accuracy_report import plots

    rng = np.random.default_rng(classes)
    recs = []
    for i in range(120):
        dev = rng.integers(-128, 128, size=classes).tolist()
        recs.append(_rec(i, i % classes, dev, count=5000))  # constant latency: a one-bar histogram
    figs = compute_figures(recs, [f"c{k}" for k in range(classes)], (1 / 256, -128), QEMU_COUNTING)
    assert ("device_top5" in figs) == (classes > 5)
    report = {"figures": figs, "throughput": None}
    pngs = plots(report)
    assert set(pngs) == {"confusion", "per_class", "latency"}
    for data in pngs.values():
        w, h = _png_size(data)
        assert w >= 300 and h >= 200
    assert _png_size(pngs["confusion"])[0] > (600 if classes == 40 else 300)


def test_html_renders_in_headless_chromium(tmp_path):
    """Where a Chromium is installed, the page renders to a non-blank screenshot (elsewhere the structure is
    checked with html.parser in test_run_report_and_store)."""
    import shutil
    import subprocess

    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        pytest.skip("no Chromium installed: the page's structure is checked with html.parser instead")
    rep = _run(tmp_path, FakeEngine(), limit=30)
    shot = tmp_path / "page.png"
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}"]
    args += ["--window-size=1200,2400", f"file://{rep['files']['html']}"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("L"))
    assert arr.shape == (2400, 1200) and arr.std() > 5
