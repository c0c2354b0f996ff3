"""The emitter's output: the model ABI, safe C from hostile names, per-layer rows, errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import require_tools

from harness.engines.native import c_string, generate
from harness.errors import BuildError, UnsupportedModelError
from harness.model import params as P
from harness.model.ir import Graph, Op, Quant, Tensor
from harness.targets.host import HostModel, build_host_library

HOSTILE = [
    'x"; system("rm -rf /"); //',
    "*/ int evil = 1; /*",
    "back\\slash\nnew line ??/ trigraph",
    "ünïcode ✓ \t tab",
    "",
]


def q(scale=0.1, zp=0):
    return Quant(np.array([scale], np.float32), np.array([zp]))


def maxpool_graph(model_name: str, layer_name: str) -> tuple[Graph, Op]:
    tensors = [
        Tensor("in", (1, 4, 4, 2), "int8", q(0.5, -3)),
        Tensor("out", (1, 2, 2, 2), "int8", q(0.5, -3)),
    ]
    op = Op("MAX_POOL_2D", [0], [1], {"filter": (2, 2), "stride": (2, 2), "padding": "VALID"}, name=layer_name)
    return Graph(model_name, tensors, [op], [0], [1]), op


@pytest.fixture
def pool_params(monkeypatch):
    monkeypatch.setattr(P, "derive", lambda g, op: P.PoolParams((2, 2), (2, 2), (0, 0), -128, 127))


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_come_out_harmless(name, pool_params, tmp_path):
    require_tools("gcc")
    g, _ = maxpool_graph(name, name)
    cg = generate(g, tmp_path / "gen")
    text = "".join(p.read_text() for p in cg.files)
    if len(name) > 3:
        assert name not in text  # never raw
    # The literal means exactly the original bytes: a C program prints MODEL_NAME back.
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "model.h"\nint main(void){fputs(MODEL_NAME, stdout);return 0;}\n')
    exe = tmp_path / "main"
    incs = [f"-I{d}" for d in cg.include_dirs]
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", *incs, str(main), "-o", str(exe)], check=True)
    assert subprocess.run([str(exe)], capture_output=True, check=True).stdout == name.encode("utf-8")
    # And the whole engine still compiles with -Werror and runs.
    x = np.arange(32, dtype=np.int8).reshape(1, 4, 4, 2)
    got = HostModel(cg, cache_dir=tmp_path / "host").run([x])[0]
    assert np.array_equal(got, x.reshape(1, 2, 2, 2, 2, 2).max(axis=(2, 4)))


def test_c_string_escapes_everything_outside_a_safe_set():
    assert c_string("abc_1") == '"abc_1"'
    assert c_string('"') == '"\\042"'
    assert c_string("*/") == '"\\052\\057"'


def test_model_h_follows_the_abi(pool_params, tmp_path):
    g, _ = maxpool_graph("tiny", "pool")
    cg = generate(g, tmp_path)
    h = (tmp_path / "model.h").read_text()
    for line in (
        '#define MODEL_NAME        "tiny"',
        f"#define MODEL_ARENA_BYTES {cg.arena_bytes}u",
        "#define MODEL_NUM_INPUTS  1",
        "#define MODEL_NUM_OUTPUTS 1",
        "#define MODEL_NUM_LAYERS  1",
        "#define MODEL_MACS        0u",
        "void model_run(int8_t *arena);",
    ):
        assert line in h
    assert cg.arena_bytes % 16 == 0
    assert cg.arena_bytes == 32 + 16  # 32-byte input and 8-byte output, each aligned to 16
    c = (tmp_path / "model.c").read_text()
    assert "tk_max_pool(&l0_pool, arena + " in c
    spec_in, spec_out = cg.inputs[0], cg.outputs[0]
    assert (spec_in.bytes, spec_in.shape, spec_in.zero_point) == (32, (1, 4, 4, 2), -3)
    assert spec_in.scale == pytest.approx(0.5)
    assert spec_out.offset != spec_in.offset
    assert [r.op for r in cg.layers] == ["MAX_POOL_2D"]
    assert cg.layers[0].activation_bytes == 40
    assert [p.name for p in cg.kernel_sources] == ["tk_pool.c"]


def test_unsupported_op_names_op_and_layer(tmp_path):
    tensors = [Tensor("in", (1, 4), "int8", q()), Tensor("out", (1, 4), "int8", q())]
    g = Graph("m", tensors, [Op("TANH", [0], [1], name="the_tanh")], [0], [1])
    with pytest.raises(UnsupportedModelError) as e:
        generate(g, tmp_path)
    assert "TANH" in str(e.value) and "the_tanh" in str(e.value)


def test_float_activation_inside_is_refused(tmp_path):
    tensors = [Tensor("in", (1, 4), "float32"), Tensor("out", (1, 4), "float32")]
    g = Graph("m", tensors, [Op("MAX_POOL_2D", [0], [1], name="fp")], [0], [1])
    with pytest.raises(UnsupportedModelError, match="int8"):
        generate(g, tmp_path)


def test_compiler_failure_is_a_build_error_with_stderr(pool_params, tmp_path):
    require_tools("gcc")
    g, _ = maxpool_graph("tiny", "pool")
    cg = generate(g, tmp_path / "gen")
    (tmp_path / "gen" / "model.c").write_text("this is not C;\n")
    with pytest.raises(BuildError, match="error"):
        build_host_library(cg, tmp_path / "host")


def test_host_library_is_cached_by_content(pool_params, tmp_path):
    g, _ = maxpool_graph("tiny", "pool")
    cg = generate(g, tmp_path / "gen")
    a = build_host_library(cg, tmp_path / "host")
    mtime = a.stat().st_mtime_ns
    assert build_host_library(cg, tmp_path / "host") == a and a.stat().st_mtime_ns == mtime
    assert build_host_library(cg, tmp_path / "host", flags=["-O0", "-shared", "-fPIC"]) != a


def test_wide_weights_go_to_the_most_macs_per_byte_within_the_budget():
    from harness.engines.native import spec

    # (layer, MACs, weight bytes): 100, 10 and 1 MAC per byte
    layers = [(0, 1000, 100), (1, 100000, 1000), (2, 5000, 500)]
    assert spec.choose_wide(layers, 0) == set()
    assert spec.choose_wide(layers, 1000) == {1}
    assert spec.choose_wide(layers, 1100) == {0, 1}
    assert spec.choose_wide(layers, 10**6) == {0, 1, 2}


def test_wide_budget_leaves_a_model_near_the_flash_limit_int8():
    from harness.engines.native import wide_budget
    from harness.zoo import resolve_model

    g, _ = resolve_model("mlperf_kws")
    weights = sum(t.nbytes for t in g.tensors if t.is_const)
    assert wide_budget(weights + 128 * 1024, g) == 0
    assert wide_budget(weights + 128 * 1024 + 2000, g) == 1000
