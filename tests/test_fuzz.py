"""Hostile models: every malformed file is a clean MalformedModelError (or UnsupportedModelError) that says
what is wrong, before anything is computed; what loads runs bit-exact, and the generated C stays inside
its buffers (AddressSanitizer). tests/fuzz_models.py is the fuzzer; a fixed-seed sample runs here."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from conftest import require_tools, shared_model
from fuzz_models import fuzz, summary

from harness.errors import HarnessError, MalformedModelError, UnsupportedModelError
from harness.model import load_model, tflite_io
from harness.model.tflite_io import to_tflite_bytes


def kws():
    return load_model(shared_model("kws"))


def reload(g):
    return load_model(to_tflite_bytes(g, check=False), name="mutant")


def first(g, kind):
    return next(k for k, op in enumerate(g.ops) if op.kind == kind)


def test_a_fixed_seed_sample_of_fuzzed_models_never_crashes_or_mismatches(tmp_path):
    require_tools("gcc")
    t = fuzz(120, seed=7, work=tmp_path)
    assert not t.crashes, summary(t) + "".join(f"\n{c[0]} | {c[1]} | {c[2]}" for c in t.crashes)
    assert not t.mismatches and not t.slow, summary(t)
    assert t.ran_ok > 10 and sum(t.clean_errors.values()) > 30  # both outcomes were exercised


def test_a_stride_changed_to_2_is_a_shape_error_not_c_that_reads_out_of_bounds():
    g = kws()
    k = next(k for k, op in enumerate(g.ops) if op.kind == "CONV_2D" and op.options["stride"] == (1, 1))
    g.ops[k].options["stride"] = (2, 2)
    with pytest.raises(MalformedModelError, match=rf"op {k} \(CONV_2D .*output .* has shape .* imply"):
        reload(g)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda g: g.tensors[g.ops[0].outputs[0]].__setattr__("shape", (1, 25, 5, 63)), "imply"),
        (lambda g: g.ops[first(g, "CONV_2D")].inputs.__setitem__(1, -1), "required input"),
        (lambda g: g.tensors[0].quant.scale.__setitem__(0, np.nan), "finite and > 0"),
        (lambda g: g.tensors[0].quant.scale.__setitem__(0, np.inf), "finite and > 0"),
        (lambda g: g.tensors[0].quant.scale.__setitem__(0, 0.0), "finite and > 0"),
        (lambda g: g.tensors[0].quant.zero_point.__setitem__(0, 300), "outside -128..127"),
        (lambda g: g.tensors[0].quant.zero_point.__setitem__(0, -1000), "outside -128..127"),
        (lambda g: g.ops[first(g, "CONV_2D")].options.__setitem__("dilation", (0, 1)), "dilation"),
        (lambda g: g.ops[first(g, "AVERAGE_POOL_2D")].options.__setitem__("filter", (0, 5)), "filter"),
        (lambda g: g.tensors[g.ops[2].outputs[0]].__setattr__("shape", (1, 25, 5, 64 << 14)), "more than any"),
        (lambda g: g.tensors[g.ops[first(g, "RESHAPE")].outputs[0]].__setattr__("shape", (1, 65)), "reshapes"),
        (lambda g: g.tensors[g.ops[0].inputs[0]].__setattr__("shape", (1, 49, 10)), "4-D"),
    ],
    ids=[
        "shape",
        "weights-1",
        "nan",
        "inf",
        "zero-scale",
        "zp300",
        "zp-1000",
        "dilation",
        "filter",
        "huge",
        "reshape",
        "rank",
    ],  # fmt: skip
)
def test_each_contradiction_is_a_malformed_model_error_naming_it(mutate, words):
    g = copy.deepcopy(kws())
    g.source = None
    mutate(g)
    with pytest.raises((MalformedModelError, UnsupportedModelError), match=words) as e:
        reload(g)
    assert "op " in str(e.value) or "tensor " in str(e.value)


def test_an_options_table_of_another_type_is_refused(monkeypatch):
    from tflite.BuiltinOptions import BuiltinOptions as BOpt

    orig = tflite_io._write_options

    def wrong(b, op, tensors):
        kind, table = orig(b, op, tensors)
        return (BOpt.AddOptions if op.kind == "CONV_2D" else kind), table

    monkeypatch.setattr(tflite_io, "_write_options", wrong)
    data = to_tflite_bytes(kws())
    with pytest.raises(MalformedModelError, match="options are of type"):
        load_model(data)


def test_files_that_are_not_models_are_refused_before_reading(tmp_path):
    big = tmp_path / "padded.tflite"
    with open(big, "wb") as f:  # a valid model followed by 300 MB of (sparse) junk
        f.write(shared_model("kws").read_bytes())
        f.truncate(300 << 20)
    with pytest.raises(MalformedModelError, match="more than any microcontroller model"):
        load_model(big)
    with pytest.raises(MalformedModelError, match="is a folder"):
        load_model(tmp_path)
    fifo = tmp_path / "fifo.tflite"
    os.mkfifo(fifo)
    with pytest.raises(MalformedModelError, match="not a regular file"):
        load_model(fifo)  # would block forever if it were opened
    link = tmp_path / "zero.tflite"
    link.symlink_to("/dev/zero")
    with pytest.raises(MalformedModelError, match="not a regular file"):
        load_model(link)
    with pytest.raises(MalformedModelError, match="no such file"):
        load_model(tmp_path / "missing.tflite")


@pytest.mark.parametrize("model", ["kws", "digits_cnn"])
def test_the_generated_c_under_address_sanitizer_matches_the_reference(model, tmp_path):
    """The host target built with -fsanitize=address,undefined, the arena its own heap block: a read or
    write past any buffer, or undefined arithmetic, fails the run."""
    require_tools("gcc")
    from harness import reference
    from harness.engines.native import generate
    from harness.model.boundary import split_boundary
    from harness.targets.host import run_sanitized
    from harness.zoo import resolve_model

    g = kws() if model == "kws" else resolve_model(model)[0]
    interior = split_boundary(g)[0]
    cg = generate(g, tmp_path / "gen")
    x = np.random.default_rng(3).integers(-128, 128, size=interior.tensors[interior.inputs[0]].shape, dtype=np.int8)
    want = reference.run(interior, [x])
    got = run_sanitized(cg, [x], tmp_path / "asan")
    assert all(np.array_equal(a.reshape(-1), np.asarray(b).reshape(-1)) for a, b in zip(got, want, strict=True))


def test_the_sanitizer_reports_an_out_of_bounds_read(tmp_path):
    """The check can fail: a model.c whose layer reads past the arena is caught."""
    require_tools("gcc")
    from harness.engines.native import generate
    from harness.targets.host import run_sanitized

    cg = generate(kws(), tmp_path / "gen")
    src = tmp_path / "gen" / "model.c"
    text = src.read_text()
    src.write_text(text.replace("void model_run(int8_t *arena)\n{\n", "void model_run(int8_t *arena)\n{\n"
                                "    arena[MODEL_ARENA_BYTES + 64] += 1;\n", 1))  # fmt: skip
    with pytest.raises(HarnessError, match="AddressSanitizer|heap-buffer-overflow"):
        run_sanitized(cg, [np.zeros(cg.inputs[0].shape, np.int8)], tmp_path / "asan")
