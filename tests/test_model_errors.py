"""Bad models get errors that say what is wrong, never a traceback from the flatbuffer code."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_model

from harness.errors import MalformedModelError, UnsupportedModelError
from harness.model import load_model, to_tflite_bytes
from harness.model.ir import Graph, Op, Quant, Tensor


def test_not_a_tflite_file(tmp_path):
    p = tmp_path / "notes.tflite"
    p.write_text("hello, this is not a model")
    with pytest.raises(MalformedModelError, match="not a .tflite file"):
        load_model(p)
    with pytest.raises(MalformedModelError, match="no such file"):
        load_model(tmp_path / "missing.tflite")
    with pytest.raises(MalformedModelError, match="not a .tflite file"):
        load_model(b"")


def test_truncated_and_corrupted_files():
    raw = shared_model("kws").read_bytes()
    for cut in (16, 200, len(raw) // 2, len(raw) - 100):
        with pytest.raises(MalformedModelError):
            load_model(raw[:cut])
    rng = np.random.default_rng(0)
    for _ in range(20):  # random damage past the header: a clear error or a valid graph, never a crash
        b = bytearray(raw)
        for i in rng.integers(8, len(b), 8):
            b[i] = rng.integers(0, 256)
        try:
            load_model(bytes(b))
        except (MalformedModelError, UnsupportedModelError):
            pass


def _q(s=0.1, z=0):
    return Quant(np.array([s], np.float32), np.array([z]))


def test_float_interior_says_quantize_first():
    t = [Tensor("a", (1, 4), "float32"), Tensor("w", (2, 4), "float32", None, np.ones((2, 4), np.float32)),
         Tensor("y", (1, 2), "float32")]  # fmt: skip
    g = Graph("f", t, [Op("FULLY_CONNECTED", [0, 1, -1], [2], {"activation": "NONE"})], [0], [2])
    blob = to_tflite_bytes(g, check=False)  # a float model's file: the IR itself refuses it
    with pytest.raises(UnsupportedModelError, match="quantize to int8 first"):
        load_model(blob)


def test_int16_interior_says_quantize_first():
    t = [Tensor("a", (1, 4), "int16", _q()), Tensor("w", (2, 4), "int8", _q(), np.ones((2, 4), np.int8)),
         Tensor("y", (1, 2), "int16", _q())]  # fmt: skip
    g = Graph("i16", t, [Op("FULLY_CONNECTED", [0, 1, -1], [2], {"activation": "NONE"})], [0], [2])
    blob = to_tflite_bytes(g, check=False)
    with pytest.raises(UnsupportedModelError, match="quantize to int8 first"):
        load_model(blob)


def test_unsupported_op_names_op_index_and_supported_list():
    import flatbuffers  # noqa: F401  (the writer refuses unknown ops, so patch a real file's opcode)
    import tflite

    g = load_model(shared_model("ad01"))
    blob = bytearray(to_tflite_bytes(g))
    model = tflite.Model.GetRootAs(bytes(blob), 0)
    oc = model.OperatorCodes(0)
    # Rewrite FULLY_CONNECTED (9) as TANH (28) in both code fields, in place.
    for field_pos in (oc._tab.Offset(4), oc._tab.Offset(10)):
        if field_pos:
            pos = oc._tab.Pos + field_pos
            blob[pos] = 28
    with pytest.raises(UnsupportedModelError) as e:
        load_model(bytes(blob))
    msg = str(e.value)
    assert "TANH" in msg and "op 0" in msg and "CONV_2D" in msg


def test_dynamic_shape_is_refused():
    import tflite

    blob = bytearray(to_tflite_bytes(load_model(shared_model("ad01"))))
    model = tflite.Model.GetRootAs(bytes(blob), 0)
    t = model.Subgraphs(0).Tensors(0)
    vec = t._tab.Vector(t._tab.Offset(4))  # shape [1, 640]: make the second dimension -1
    blob[vec + 4 : vec + 8] = (-1).to_bytes(4, "little", signed=True)
    with pytest.raises(UnsupportedModelError, match="dynamic shape"):
        load_model(bytes(blob))
