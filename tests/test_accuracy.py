"""On-device accuracy: figures, per-sample records, resume, parallel jobs, the report.

Everything runs on the real engine: the generated C on the host target (fast: most mechanics tests) and
on QEMU (@pytest.mark.qemu: counts, two QEMU instances side by side, a device that dies mid-run, and the
trained digits_cnn over the whole held-out split). The host side is always the real numpy reference.
The fast tests use `centroid_graph()`, a real int8 model built here by hand: a FULLY_CONNECTED
nearest-centroid classifier of the 8x8 digits that the TFLite interpreter runs too.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import threading
import zlib
from contextlib import contextmanager
from html.parser import HTMLParser

import numpy as np
import pytest

from harness import results
from harness.accuracy import Counting, compute_figures, load_samples, run_accuracy
from harness.bench import prepare
from harness.boards import get_board
from harness.datasets import fit_to_model, input_spec, load_dataset
from harness.errors import HarnessError, TargetError
from harness.model import Graph, Op, Quant, Tensor
from harness.protocol import Hello

F746 = get_board("nucleo-f746")
QEMU_COUNTING = Counting.of(F746, Hello(1, 25_000_000, 0, 0, 0, "qemu-m7", "cortex-m7", "qemu-icount", "", "m"))


@functools.cache
def centroid_graph() -> Graph:
    """Nearest centroid as one int8 FULLY_CONNECTED: score_c = w_c . x - |w_c|^2 / 2, w_c the mean training
    image of digit c (argmax score = nearest mean). Input 0..16 pixels as digits_cnn takes them; weights
    per-tensor symmetric int8, the half norms an int32 bias; the output scale spans the training scores."""
    from harness.zoo import digits_split

    x_tr, y_tr, _, _ = digits_split()
    means = np.stack([x_tr[y_tr == c].reshape(-1, 64).mean(axis=0) for c in range(10)])
    s_in, zp_in = float(np.float32(16 / 255)), -128
    s_w = float(np.float32(np.abs(means).max() / 127))
    wq = np.clip(np.round(means / s_w), -127, 127).astype(np.int8)
    s_b = float(np.float32(s_in) * np.float32(s_w))  # bias scale = input scale * weight scale, as TFLite has it
    w = wq.astype(np.float64) * s_w
    half_norms = 0.5 * np.sum(w**2, axis=1)
    scores = x_tr.reshape(-1, 64) @ w.T - half_norms
    lo, hi = float(scores.min()), float(scores.max())
    s_out = (hi - lo) / 255
    zp_out = int(np.clip(round(-128 - lo / s_out), -128, 127))
    tensors = [
        Tensor("pixels", (1, 8, 8, 1), "int8", Quant([s_in], [zp_in])),
        Tensor("flat", (1, 64), "int8", Quant([s_in], [zp_in])),
        Tensor("centroids", (10, 64), "int8", Quant([s_w], [0]), wq),
        Tensor("half_norms", (10,), "int32", Quant([s_b], [0]), np.round(-half_norms / s_b).astype(np.int32)),
        Tensor("scores", (1, 10), "int8", Quant([s_out], [zp_out])),
    ]
    ops = [
        Op("RESHAPE", [0], [1], {}, name="flatten"),
        Op("FULLY_CONNECTED", [1, 2, 3], [4], {"activation": "NONE", "keep_num_dims": False}, name="centroids"),
    ]
    return Graph("digits_centroids", tensors, ops, [0], [4])


def _key(x: np.ndarray) -> int:
    """Names a sample by its bytes, whatever order the jobs take the samples in."""
    return zlib.crc32(np.ascontiguousarray(x, dtype=np.int8).tobytes())


class Tap:
    """Fault injection on the REAL path, not a fake device: a thin proxy around a real Engine whose open()
    yields the real runner (host library or QEMU session) wrapped to count the samples it serves and, when
    asked, to raise TargetError at call `fail_at`, to kill the QEMU process before call `kill_at` (the
    protocol then finds a dead device by itself), or to flip one output byte of the samples `flip(key)`
    picks (a device that disagrees with the host). Every output still comes from the generated C."""

    def __init__(self, engine, fail_at=None, kill_at=None, flip=None):
        self._engine = engine
        self.fail_at, self.kill_at, self.flip = fail_at, kill_at, flip
        self.calls: list[int] = []  # keys of the samples served, in order
        self.runners: list[_TapRunner] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @contextmanager
    def open(self, timeout: float = 120.0, input_path: str = "auto"):
        with self._engine.open(timeout, input_path) as runner:
            tapped = _TapRunner(self, runner)
            with self._lock:
                self.runners.append(tapped)
            yield tapped

    def _next_call(self) -> int:
        with self._lock:
            return len(self.calls)


class _TapRunner:
    def __init__(self, tap: Tap, runner) -> None:
        self.tap, self.runner, self.hello = tap, runner, runner.hello
        self.served = 0

    run_batch = None  # one sample a call, so that each can be counted, failed or flipped

    def __getattr__(self, name):  # input_path, input_bytes...: the real runner's
        return getattr(self.runner, name)

    def run(self, inputs, repetitions=1):
        tap = self.tap
        n = tap._next_call()
        if n == tap.fail_at:
            raise TargetError(f"injected: the device stopped answering at call {n}")
        if n == tap.kill_at:
            self.runner.session.proc.kill()  # the QEMU process this session started
            self.runner.session.proc.wait()
        outputs, stats = self.runner.run(inputs, repetitions)
        key = _key(inputs[0])
        if tap.flip is not None and tap.flip(key):
            outputs = [o.copy() for o in outputs]
            outputs[0].reshape(-1)[3] ^= 1
        with tap._lock:
            tap.calls.append(key)
        self.served += 1
        return outputs, stats


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return tmp_path_factory.mktemp("builds")


@pytest.fixture(scope="module")
def host_engine(builds):
    """The centroid model's generated C, built once for the host target (open() loads the library)."""
    return prepare(F746, centroid_graph(), "host", build_dir=str(builds))


@pytest.fixture(scope="module")
def qemu_engine(builds):
    from conftest import require_tools

    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    return prepare(F746, centroid_graph(), "qemu", build_dir=str(builds))


def _run(tmp_path, engine, **kw):
    kw.setdefault("limit", 60)
    return run_accuracy(
        F746,
        centroid_graph(),
        "digits",
        target=engine.target_kind,
        results_dir=tmp_path / "results",
        engine=engine,
        progress=False,
        **kw,
    )


def test_centroid_model_is_a_real_classifier():
    """The hand-built model is valid int8 TFLite: the interpreter's reference kernels give the numpy
    reference's outputs, and it classifies the held-out digits well (it is the fast tests' model)."""
    from harness import reference
    from harness.model import load_model, to_tflite_bytes
    from harness.oracle import run_tflite

    g = centroid_graph()
    blob = to_tflite_bytes(g)
    assert load_model(blob).ops[1].kind == "FULLY_CONNECTED"
    fitted = fit_to_model(load_dataset("digits"), input_spec(g), 10)
    outs = [reference.run(g, [x])[0] for x in fitted.x]
    for x, ref in list(zip(fitted.x, outs, strict=True))[:40]:
        assert np.array_equal(run_tflite(blob, [x])[0], ref)
    top1 = np.mean([np.argmax(o) == y for o, y in zip(outs, fitted.labels, strict=True)])
    assert top1 > 0.85
    assert len({tuple(o.reshape(-1)) for o in outs}) > len(outs) // 2  # scores spread, not saturated


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


@pytest.mark.qemu
def test_report_and_store_on_qemu(tmp_path, qemu_engine):
    """60 samples through the firmware on the M7 fallback: records, figures, counts, store, HTML, plots."""
    tap = Tap(qemu_engine)
    rep = _run(tmp_path, tap)
    f = rep["figures"]
    assert rep["target"] == "qemu" and rep["samples_total"] == 60 and f["samples"] == 60 and len(tap.calls) == 60
    # the figures are those of the records: recompute top-1 from the stored samples
    recs = load_samples(tmp_path / "results" / "reports" / rep["run_id"] / "samples.jsonl")
    assert sorted(recs) == list(range(60))
    top1 = np.mean([np.argmax(r["device"]) == r["label"] for r in recs.values()])
    assert f["device_top1"] == pytest.approx(top1) and f["host_top1"] == f["device_top1"] > 0.8
    assert f["agreement"] == 1.0 and f["disagreements"] == [] and f["distance"]["max_abs_diff"] == 0
    assert recs[0]["ticks"] > 0 and recs[0]["count"] == recs[0]["ticks"] * 40  # QEMU ticks -> instructions
    assert rep["counting"]["source"] == "qemu-icount"
    assert f["latency"]["unit"] == "instructions" and f["latency"]["samples"] == 60 and f["latency"]["min"] > 0
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
    for must in ("nucleo-f746", "digits_centroids", "digits", "not cycles", "0.1.0", rep["date"]):
        assert must in text, must
    plots = {img["id"]: img["src"] for img in page.imgs}
    assert set(plots) == {"plot-confusion", "plot-per_class", "plot-latency"}
    for pid, src in plots.items():
        assert src.startswith("data:image/png;base64,")
        w, h = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert 300 <= w <= 2000 and 200 <= h <= 2000, (pid, w, h)
    # the plots show the data: the confusion picture is not blank, the PNG files equal the embedded ones
    confusion = open(rep["files"]["confusion"], "rb").read()
    assert base64.b64encode(confusion).decode() == plots["plot-confusion"].split(",", 1)[1]
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(confusion)).convert("L"))
    assert arr.std() > 10
    md = open(rep["files"]["markdown"], encoding="utf-8").read()
    assert "device top-1" in md and "![confusion](confusion.png)" in md


def test_disagreements_are_listed(tmp_path, host_engine):
    def every_fifth(key):
        return key % 5 == 0

    rep = _run(tmp_path, Tap(host_engine, flip=every_fifth), limit=80)
    f = rep["figures"]
    fitted = fit_to_model(load_dataset("digits"), input_spec(centroid_graph()), 10)
    expected = {i for i in range(80) if every_fifth(_key(fitted.x[i]))}
    assert expected and {d["i"] for d in f["disagreements"]} == expected
    assert f["agreement"] == pytest.approx(1 - len(expected) / 80)
    assert all(d["elements_differing"] == 1 and d["max_abs_diff"] == 1 for d in f["disagreements"])
    html_text = open(rep["files"]["html"], encoding="utf-8").read()
    assert "DIFFER" in html_text and 'class="disagreements"' in html_text


def test_resume_does_not_redo_samples(tmp_path, host_engine):
    tap = Tap(host_engine)

    def stop_after_seven(done, total):
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tap, on_sample=stop_after_seven)
    (run_dir,) = (tmp_path / "results" / "reports").iterdir()
    first = load_samples(run_dir / "samples.jsonl")
    assert len(first) == 7 and len(tap.calls) == 7
    with open(run_dir / "samples.jsonl", "a") as f:
        f.write('{"i": 59, "label": 3, "dev')  # a line torn by the interruption: redone, not trusted

    again = Tap(host_engine)
    rep = _run(tmp_path, again)
    assert rep["run_id"] == run_dir.name and rep["resumed"]
    fitted = fit_to_model(load_dataset("digits"), input_spec(centroid_graph()), 10)
    assert sorted(again.calls) == sorted(_key(fitted.x[i]) for i in range(7, 60))  # only those not done
    lines = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()[:7]]
    assert [r["i"] for r in lines] == sorted(first)
    assert rep["figures"]["samples"] == 60 and rep["throughput"]["samples"] == 53
    # the same command again: nothing left to run in that (limited, so unfinished) run
    third = Tap(host_engine)
    rep3 = _run(tmp_path, third)
    assert rep3["run_id"] == rep["run_id"] and third.calls == [] and rep3["figures"]["samples"] == 60
    # the whole data set finishes the run; after that, the same command starts a new one
    fourth = Tap(host_engine)
    rep4 = _run(tmp_path, fourth, limit=None)
    assert rep4["run_id"] == rep["run_id"] and len(fourth.calls) == len(fitted.x) - 60
    assert rep4["figures"]["samples"] == len(fitted.x) and rep4["figures"]["agreement"] == 1.0
    fifth = Tap(host_engine)
    assert _run(tmp_path, fifth, limit=20)["run_id"] != rep["run_id"] and len(fifth.calls) == 20


def test_limit_then_full_run_continues(tmp_path, host_engine):
    r1 = _run(tmp_path, Tap(host_engine), limit=10)
    tap = Tap(host_engine)
    r2 = _run(tmp_path, tap, limit=25)
    assert r2["run_id"] == r1["run_id"] and len(tap.calls) == 15 and r2["figures"]["samples"] == 25


def test_explicit_resume_checks_the_run(tmp_path, host_engine, builds):
    rep = _run(tmp_path, host_engine, limit=5)
    with pytest.raises(HarnessError, match="no accuracy run 'nope'"):
        _run(tmp_path, host_engine, resume="nope")
    # another real model on the same board and data: its results cannot continue this run
    graph, _ = _digits_cnn()
    with pytest.raises(HarnessError, match="cannot be resumed"):
        run_accuracy(
            F746, graph, "digits", target="host", resume=rep["run_id"], results_dir=tmp_path / "results",
            build_dir=str(builds), progress=False,
        )  # fmt: skip
    again = Tap(host_engine)
    r = _run(tmp_path, again, resume=rep["run_id"], limit=8)
    assert r["run_id"] == rep["run_id"] and len(again.calls) == 3


def test_an_engine_for_another_model_is_refused(tmp_path, host_engine):
    graph, _ = _digits_cnn()
    with pytest.raises(HarnessError, match="prepared for another model"):
        run_accuracy(F746, graph, "digits", engine=host_engine, results_dir=tmp_path, progress=False)
    assert not (tmp_path / "reports").exists()


def test_parallel_jobs_split_the_samples(tmp_path, host_engine):
    tap = Tap(host_engine)
    rep = _run(tmp_path, tap, jobs=3, limit=150)
    assert len(tap.runners) == 3 and len(tap.calls) == 150
    recs = load_samples(tmp_path / "results" / "reports" / rep["run_id"] / "samples.jsonl")
    assert sorted(recs) == list(range(150))
    assert rep["throughput"]["jobs"] == 3 and rep["figures"]["agreement"] == 1.0


def test_device_failure_is_recorded_and_kept(tmp_path, host_engine):
    with pytest.raises(TargetError, match="stopped answering"):
        _run(tmp_path, Tap(host_engine, fail_at=5))
    (store,) = list(results.read("accuracy", tmp_path / "results"))
    assert store["status"] == "failed" and "stopped answering" in store["reason"]
    (run_dir,) = (tmp_path / "results" / "reports").iterdir()
    assert len(load_samples(run_dir / "samples.jsonl")) == 5
    tap = Tap(host_engine)
    _run(tmp_path, tap)
    assert len(tap.calls) == 55


@pytest.mark.qemu
def test_qemu_dying_mid_run_is_recorded_and_resumed(tmp_path, qemu_engine):
    """The QEMU process is killed before the 9th sample: the protocol itself finds the dead device."""
    with pytest.raises(TargetError, match="connection to the device broke at sample 8.*QEMU exited"):
        _run(tmp_path, Tap(qemu_engine, kill_at=8), limit=20, timeout=5.0)
    (store,) = list(results.read("accuracy", tmp_path / "results"))
    assert store["status"] == "failed" and store["error"] == "LinkBroken" and "broke" in store["reason"]
    (run_dir,) = (tmp_path / "results" / "reports").iterdir()
    assert sorted(load_samples(run_dir / "samples.jsonl")) == list(range(8))
    tap = Tap(qemu_engine)
    rep = _run(tmp_path, tap, limit=20)
    assert rep["run_id"] == run_dir.name and len(tap.calls) == 12 and rep["figures"]["agreement"] == 1.0


def test_host_target_has_no_counts(tmp_path, host_engine):
    rep = _run(tmp_path, host_engine, limit=10)
    assert rep["target"] == "host" and rep["counting"]["source"] is None
    assert rep["figures"]["latency"] is None
    page = _Page()
    page.feed(open(rep["files"]["html"], encoding="utf-8").read())
    page.close()
    assert page.open == [] and "host compiler: no counts" in " ".join(page.text)
    plots = {img["id"]: img["src"] for img in page.imgs}
    assert set(plots) == {"plot-confusion", "plot-per_class"}  # no latency plot without counts
    for src in plots.values():
        w, h = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert 300 <= w <= 2000 and 200 <= h <= 2000
    recs = load_samples(tmp_path / "results" / "reports" / rep["run_id"] / "samples.jsonl")
    assert len(recs) == 10 and all(r["ticks"] is None and r["count"] is None for r in recs.values())


def test_mismatched_dataset_fails_before_the_engine(tmp_path):
    np.savez(tmp_path / "cats.npz", x=np.zeros((3, 8, 8)), y=np.array([0, 1, 11]))
    with pytest.raises(HarnessError, match="only 10 outputs"):
        run_accuracy(
            F746, centroid_graph(), str(tmp_path / "cats.npz"), target="host", results_dir=tmp_path,
            build_dir=str(tmp_path / "b"), progress=False,
        )  # fmt: skip
    assert not (tmp_path / "b").exists() and not (tmp_path / "reports").exists()  # nothing generated or built


def test_folder_and_npz_data_sets_on_the_real_engine(tmp_path, host_engine):
    """The same 40 held-out digits as PNG files in class folders and as a uint8 .npz: stretched over the
    model's 0..16 input, a pixel round(p * 255 / 16) quantizes to the very int8 the built-in set gives, so
    the device classifies them the same way."""
    from PIL import Image

    from harness.zoo import digits_split

    _, _, x_te, y_te = digits_split()
    imgs = np.round(x_te[:40] * 255 / 16).astype(np.uint8)
    for k, (img, y) in enumerate(zip(imgs, y_te[:40], strict=True)):
        (tmp_path / "png" / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "png" / str(y) / f"{k:03d}.png")
    np.savez(tmp_path / "d.npz", x=imgs, y=y_te[:40])
    builtin = _run(tmp_path, host_engine, limit=40)["figures"]
    for source in (tmp_path / "png", tmp_path / "d.npz"):
        f = run_accuracy(
            F746, centroid_graph(), str(source), target="host", engine=host_engine, results_dir=tmp_path / "r",
            progress=False,
        )["figures"]  # fmt: skip
        assert f["samples"] == 40 and f["agreement"] == 1.0, source
        assert f["device_top1"] == builtin["device_top1"] and f["confusion"] == builtin["confusion"], source


def test_cli_registers_accuracy():
    from harness.cli import build_parser

    args = build_parser().parse_args(
        ["accuracy", "--board", "nucleo-f746", "--model", "digits_cnn", "--dataset", "digits", "-j", "2"]
    )
    assert args.jobs == 2 and args.target == "auto" and args.func.__name__ == "cmd_accuracy"


def test_cli_runs_and_prints(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_BUILD_DIR", str(tmp_path / "build"))
    argv = ["accuracy", "--board", "nucleo-f746", "--model", "digits_cnn", "--dataset", "digits", "--target", "host"]
    assert main([*argv, "--limit", "12", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "device top-1" in out and "report.html" in out
    assert main([*argv, "--limit", "12", "--results", str(tmp_path), "--json", "--no-resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["figures"]["samples"] == 12 and summary["disagreements"] == 0
    assert summary["model"] == "digits_cnn" and summary["target"] == "host"
    assert len(list(results.read("accuracy", tmp_path))) == 2


def test_cli_refuses_data_of_another_shape_and_says_what_it_did_to_data(tmp_path, monkeypatch, capsys):
    """A shape that is not the input's is an error (exit 2, no traceback) until --resize is asked for; every
    transformation is printed in the terminal, not only in the report."""
    from harness.cli import main

    monkeypatch.setenv("HARNESS_BUILD_DIR", str(tmp_path / "build"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), y=[0, 1, 2, 3, 4, 5])
    argv = ["accuracy", "--board", "nucleo-f746", "--model", "digits_cnn", "--dataset", str(tmp_path / "rgb.npz"),
            "--target", "host", "--results", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "16x16x3 image; the model takes 8x8x1" in err and "--resize" in err and "Traceback" not in err
    assert not list(results.read("accuracy", tmp_path))  # refused before anything ran
    main([*argv, "--resize", "nearest"])
    err = capsys.readouterr().err
    assert "resized to 8x8 (nearest)" in err and "grey by BT.601" in err and "stretched to the input's" in err


# --- end to end: the real digits_cnn -------------------------------------------------------------------


def _digits_cnn():
    from harness.zoo import resolve_model

    return resolve_model("digits_cnn")


def test_digits_cnn_on_the_host_build(tmp_path, builds):
    graph, _ = _digits_cnn()
    rep = run_accuracy(F746, graph, "digits", target="host", results_dir=tmp_path, build_dir=str(builds))
    f = rep["figures"]
    assert f["samples"] == len(load_dataset("digits"))
    assert f["agreement"] == 1.0 and f["device_top1"] == f["host_top1"] >= 0.95


@pytest.mark.qemu
def test_digits_cnn_on_qemu_whole_split(tmp_path, builds):
    """The trained model over the whole held-out split on nucleo-f746 (its QEMU fallback here), two QEMU
    instances side by side: the device gets the host's top-1 on every sample, bit for bit."""
    from conftest import require_tools, skip_external

    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    graph, _ = _digits_cnn()
    engine = prepare(F746, graph, "auto", build_dir=str(builds))
    if engine.target_kind != "qemu":
        skip_external(f"a probe for {F746.name} is attached: this test is about its QEMU fallback")
    tap = Tap(engine)
    rep = run_accuracy(F746, graph, "digits", jobs=2, results_dir=tmp_path, engine=tap)
    f = rep["figures"]
    assert rep["target"] == "qemu" and rep["counting"]["source"] == "qemu-icount"
    pids = {r.runner.session.proc.pid for r in tap.runners}
    assert len(pids) == 2 and all(r.served > 0 for r in tap.runners)  # two QEMU processes, both worked
    assert f["samples"] == len(load_dataset("digits")) == len(tap.calls)
    assert f["agreement"] == 1.0 and f["disagreements"] == []
    assert f["device_top1"] == f["host_top1"] >= 0.95
    assert f["latency"]["unit"] == "instructions" and f["latency"]["min"] > 0
    assert "not cycles" in open(rep["files"]["html"], encoding="utf-8").read()


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


def test_the_per_class_axis_zooms_to_the_data_and_board_cycles_read_as_ms():
    from harness.accuracy_report import accuracy_floor, latency_in_ms

    assert accuracy_floor(np.array([95.0, 100.0, np.nan, 97.5])) == 90.0  # 95-100 % is not drawn on 0-100
    assert accuracy_floor(np.array([99.9, 100.0])) == 95.0
    assert accuracy_floor(np.array([1.0, 100.0])) == 0.0
    assert accuracy_floor(np.array([np.nan])) == 0.0
    dwt = Counting.of(F746, Hello(1, 216_000_000, 0, 0, 0, "nucleo-f746", "cortex-m7", "dwt", "", "m"))
    recs = [_rec(i, i % 2, [10, -10] if i % 2 == 0 else [-10, 10], count=216_000) for i in range(20)]
    lat = compute_figures(recs, ["a", "b"], (1 / 256, -128), dwt)["latency"]
    assert latency_in_ms(lat) and lat["ms_median"] == 1.0  # 216,000 cycles at 216 MHz
    assert not latency_in_ms(compute_figures(recs, ["a", "b"], (1 / 256, -128), QEMU_COUNTING)["latency"])


def test_html_renders_in_headless_chromium(tmp_path, host_engine):
    """Where a Chromium is installed, the page renders to a non-blank screenshot (elsewhere the structure is
    checked with html.parser in test_report_and_store_on_qemu)."""
    import shutil
    import subprocess

    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        pytest.skip("no Chromium installed: the page's structure is checked with html.parser instead")
    rep = _run(tmp_path, host_engine, limit=30)
    shot = tmp_path / "page.png"
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--screenshot={shot}"]
    args += ["--window-size=1200,2400", f"file://{rep['files']['html']}"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("L"))
    assert arr.shape == (2400, 1200) and arr.std() > 5
