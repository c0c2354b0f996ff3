"""The numpy reference equals the real interpreter (reference kernels) exactly on the real models.
(Per-op edge cases are covered with the generated C in test_codegen_*.)"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import SHARED_MODEL_FILES, oracle_bytes, shared_model

from harness import reference
from harness.model import load_model
from harness.model.params import quantize_multiplier
from harness.oracle import run_tflite


@pytest.mark.parametrize("key", sorted(SHARED_MODEL_FILES))
def test_reference_is_bit_exact_with_the_interpreter(key):
    g = load_model(shared_model(key))
    blob = oracle_bytes(key)  # the original file, not our writer's copy
    rng = np.random.default_rng(11)
    shapes = [g.tensors[t].shape for t in g.inputs]
    cases = [[rng.integers(-128, 128, s, dtype=np.int8) for s in shapes] for _ in range(3)]
    cases += [[np.full(s, -128, np.int8) for s in shapes], [np.full(s, 127, np.int8) for s in shapes]]
    for xs in cases:
        got, want = reference.run(g, xs), run_tflite(blob, xs)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b.reshape(a.shape))


def test_quantize_multiplier_matches_tflite_values():
    # Hand-computed with TFLite's frexp-based rule: real = q * 2^(shift - 31).
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.0) == (0, 0)
    q, s = quantize_multiplier(0.0003)
    assert abs(q * 2.0 ** (s - 31) - 0.0003) < 1e-12
    assert quantize_multiplier(1 - 2**-40) == (1 << 30, 1)  # rounds up to 2^31: halved, shift + 1


def test_wrong_inputs_are_refused():
    from harness.errors import HarnessError

    g = load_model(shared_model("kws"))
    with pytest.raises(HarnessError, match="takes 1 input"):
        reference.run(g, [])
    with pytest.raises(HarnessError, match="needs shape"):
        reference.run(g, [np.zeros((3, 3), np.int8)])


def _widen_scales(raw: bytes, tensors: list[int], factor: float) -> bytes:
    """The file's own bytes with the listed tensors' (per-tensor) scales multiplied in place."""
    import tflite

    out = bytearray(raw)
    sub = tflite.Model.GetRootAsModel(out, 0).Subgraphs(0)
    for i in tensors:
        q = sub.Tensors(i).Quantization()
        pos = q._tab.Vector(q._tab.Offset(8))  # field 2: scale, a [float]
        (scale,) = struct.unpack_from("<f", out, pos)
        struct.pack_into("<f", out, pos, scale * factor)
    return bytes(out)


def test_person_detect_relu6_where_it_clamps():
    """person_detect's 27 RELU6 outputs are quantized at 6/255 with zero point -128: there RELU6 clamps where
    int8 does, so a reader that took RELU6 for RELU would still be bit-exact. Doubling those scales (in the
    original bytes, for the interpreter and our reader alike) puts the clamp at 0 inside the int8 range; the
    reference must still match the interpreter, and the clamp must be hit."""
    raw = oracle_bytes("person_detect")
    g = load_model(raw)
    convs = ("CONV_2D", "DEPTHWISE_CONV_2D")
    feeds = {t: [o.kind for o in g.ops if t in o.inputs] for t in range(len(g.tensors))}
    # the outputs of convolutions that only convolutions read: their scales are free to change
    widened = [o.outputs[0] for o in g.ops if o.kind in convs and set(feeds[o.outputs[0]]) <= set(convs)]
    assert len(widened) >= 20
    patched = _widen_scales(raw, widened, 2.0)
    g2 = load_model(patched)
    assert {g2.ops[k].options["activation"] for k, o in enumerate(g.ops) if o.outputs[0] in widened} == {"RELU6"}
    rng = np.random.default_rng(4)
    for _ in range(2):
        xs = [rng.integers(-128, 128, g2.tensors[t].shape, dtype=np.int8) for t in g2.inputs]
        want = run_tflite(patched, xs)
        got = reference.run(g2, xs)
        assert all(np.array_equal(a, b.reshape(a.shape)) for a, b in zip(got, want, strict=True))
    env = reference.run_all(g2, xs)
    assert sum(int(np.count_nonzero(env[t] == 0)) for t in widened) > 0  # 6.0 at scale 12/255, zp -128 is 0
    assert all(int(env[t].max()) <= 0 for t in widened)
