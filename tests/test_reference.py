"""The numpy reference equals the real interpreter (reference kernels) exactly on the real models.
(Per-op edge cases are covered with the generated C in test_codegen_*.)"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_MODEL_FILES, shared_model

from harness import reference
from harness.model import load_model, to_tflite_bytes
from harness.model.params import quantize_multiplier
from harness.oracle import run_tflite


@pytest.mark.parametrize("key", sorted(SHARED_MODEL_FILES))
def test_reference_is_bit_exact_with_the_interpreter(key):
    g = load_model(shared_model(key))
    blob = to_tflite_bytes(g)  # our writer's copy: person_detect's original does not load in LiteRT
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
