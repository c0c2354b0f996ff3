"""Whole models: the generated C (built for the host) == the numpy reference == the TFLite interpreter,
exactly, on several inputs including the extremes. Small edge-case graphs from tests/opmodels.py and the
five reference models in ../shared/models."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_MODEL_FILES, shared_model

reference = pytest.importorskip("harness.reference", reason="harness.reference (engineer B) is not there yet")
oracle = pytest.importorskip("harness.oracle", reason="harness.oracle (engineer A) is not there yet")
model_io = pytest.importorskip("harness.model.tflite_io", reason="the .tflite reader/writer is not there yet")

from harness.codegen import generate  # noqa: E402
from harness.model import load_model, to_tflite_bytes  # noqa: E402
from harness.model.boundary import quantize_input, split_boundary  # noqa: E402
from harness.targets.host import HostModel  # noqa: E402

try:
    from opmodels import ALL as OPMODELS
except ImportError:  # engineer B's graph factory not there yet
    OPMODELS = {}


def input_sets(specs, seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    sets = [[rng.integers(-128, 128, size=s.shape, dtype=np.int8) for s in specs] for _ in range(3)]
    sets.append([np.full(s.shape, -128, np.int8) for s in specs])
    sets.append([np.full(s.shape, 127, np.int8) for s in specs])
    return sets


def check_model(graph, model_bytes: bytes, tmp_path, seed: int = 0) -> None:
    interior, in_bounds, _ = split_boundary(graph)
    cg = generate(graph, tmp_path / "gen")
    cg.plan.check()
    host = HostModel(cg, cache_dir=tmp_path / "host")
    for xs in input_sets(cg.inputs, seed):
        got = host.run(xs)
        want = reference.run(interior, xs)
        for j, (g, w) in enumerate(zip(got, want, strict=True)):
            assert np.array_equal(g, np.asarray(w).reshape(g.shape)), f"output {j}: C != reference"
        # The interpreter runs the whole file (float boundaries included): feed it what the host would.
        if all(b is None for b in in_bounds):
            oracle_out = oracle.run_tflite(model_bytes, xs)
            for j, (g, o) in enumerate(zip(got, oracle_out, strict=True)):
                if o.dtype == np.int8:
                    assert np.array_equal(g, o.reshape(g.shape)), f"output {j}: C != interpreter"


@pytest.mark.parametrize("name", sorted(OPMODELS))
def test_opmodel(name, tmp_path):
    graph = OPMODELS[name]()
    check_model(graph, to_tflite_bytes(graph), tmp_path, seed=len(name))


@pytest.mark.parametrize("key", sorted(SHARED_MODEL_FILES))
def test_shared_model(key, tmp_path):
    path = shared_model(key)
    data = path.read_bytes()
    if key == "person_detect":
        data = oracle.litert_compatible(data)
    check_model(load_model(path), data, tmp_path)


def test_float_boundary_quantize_matches_interpreter(tmp_path):
    floats = [k for k, f in OPMODELS.items() if "float" in k or "boundary" in k]
    if not floats:
        pytest.skip("no opmodel with a float boundary")
    graph = OPMODELS[floats[0]]()
    interior, in_bounds, out_bounds = split_boundary(graph)
    cg = generate(graph, tmp_path / "gen")
    host = HostModel(cg, cache_dir=tmp_path / "host")
    rng = np.random.default_rng(1)
    xf = [rng.uniform(-2, 2, size=s.shape).astype(np.float32) for s in cg.inputs]
    xs = [quantize_input(x, b) if b is not None else x.astype(np.int8) for x, b in zip(xf, in_bounds, strict=True)]
    assert all(np.array_equal(g, w) for g, w in zip(host.run(xs), reference.run(interior, xs), strict=True))
    assert len(out_bounds) == len(cg.outputs)
