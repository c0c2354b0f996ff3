"""The edge-case graphs are what they claim: every layer's output spreads over many int8 values on random
inputs (a saturated or collapsed layer would hide arithmetic errors), and ReLU6 layers really clamp."""

from __future__ import annotations

import numpy as np
import pytest
from opmodels import ALL

from harness import reference


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_layer_spreads_its_outputs(name):
    g = ALL[name]()
    rng = np.random.default_rng(0)
    xs = [rng.integers(-128, 128, g.tensors[i].shape, dtype=np.int8) for i in g.inputs]
    values = reference.run_all(g, xs)
    for k, op in enumerate(g.ops):
        y = values[op.outputs[0]]
        assert len(np.unique(y)) >= min(5, y.size), f"{name} op {k} ({op.kind}) collapsed: {np.unique(y)}"
        assert np.mean(y == 127) < 0.9, f"{name} op {k} ({op.kind}) saturated"
        if op.options.get("activation") == "RELU6":  # 6.0 falls on 127 with scale 6/255 and zero point -128
            assert (y == 127).any() and (y == -128).any(), f"{name} op {k}: ReLU6 never clamped"
