"""Fused execution (harness/engines/native/fuse.py): schedules, rings, the planner's choice, and fused C
that equals the reference (and the unfused build) byte for byte on the host and on QEMU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_tools

from harness import reference
from harness.engines.native import emit, fuse, generate
from harness.engines.native.planner import live_bytes, plan_memory
from harness.model.ir import Graph, Op, Quant, Tensor, conv_out_size
from harness.targets.host import HostModel


def q(scale, zp=0):
    return Quant(np.array([scale], np.float32), np.array([zp]))


class Chain:
    """A graph built layer by layer on one running tensor (real quantization: P.derive computes the
    parameters from the scales, as for a loaded model)."""

    def __init__(self, rng, shape, name="fuse_case"):
        self.rng, self.name = rng, name
        self.t = [Tensor("x", (1, *shape), "int8", q(0.05, -3))]
        self.ops: list[Op] = []
        self.cur = 0

    def _out(self, shape, zp=2):
        self.t.append(Tensor(f"y{len(self.t)}", shape, "int8", q(0.04 + 0.01 * (len(self.t) % 3), zp)))
        return len(self.t) - 1

    def conv(self, oc, k=1, stride=1, padding="SAME", act="NONE", dw=False):
        x = self.t[self.cur]
        _, h, w, ic = x.shape
        oh, _ = conv_out_size(h, k, stride, 1, padding)
        ow, _ = conv_out_size(w, k, stride, 1, padding)
        oc = ic if dw else oc
        wshape = (1, k, k, oc) if dw else (oc, k, k, ic)
        wt = Tensor(f"w{len(self.t)}", wshape, "int8", q(0.02), self.rng.integers(-127, 128, wshape, dtype=np.int8))
        self.t.append(wt)
        bias = self.rng.integers(-800, 800, oc).astype(np.int32)
        self.t.append(Tensor(f"b{len(self.t)}", (oc,), "int32", q(0.05 * 0.02), bias))
        y = self._out((1, oh, ow, oc))
        kind = "DEPTHWISE_CONV_2D" if dw else "CONV_2D"
        opts = {"stride": (stride, stride), "padding": padding, "activation": act}
        if dw:
            opts["depth_multiplier"] = 1
        self.ops.append(Op(kind, [self.cur, y - 2, y - 1], [y], opts, name=f"{kind.lower()}_{len(self.ops)}"))
        self.cur = y
        return y

    def add(self, other):
        y = self._out(self.t[self.cur].shape, zp=-1)
        self.ops.append(Op("ADD", [self.cur, other], [y], {"activation": "NONE"}, name=f"add_{len(self.ops)}"))
        self.cur = y
        return y

    def graph(self) -> Graph:
        return Graph(self.name, self.t, self.ops, [0], [self.cur])


def block_graph(rng) -> Graph:
    """Inverted-residual blocks on odd sizes: stride 2 SAME on 15x13, 3x3 / 5x5 / 7x7 depthwise, a
    residual ADD, a conv 3x3 inside a chain, and pointwise layers on odd widths (two rows a step)."""
    c = Chain(rng, (15, 13, 4))
    c.conv(12)  # expand
    c.conv(0, 3, 2, dw=True, act="RELU6")  # 8x7
    r = c.conv(8)  # project: the residual source
    c.conv(16)
    c.conv(0, 5, 1, dw=True)
    c.conv(8)
    c.add(r)
    c.conv(8, 3, 1)  # a regular 3x3 conv reading a ring
    c.conv(0, 7, 1, dw=True, act="RELU")
    c.conv(6)
    return c.graph()


def force(monkeypatch, spans):
    """Make the generator fuse exactly these layer spans (to cover paths whatever the choice)."""

    def chosen(graph, wide):
        gs = [fuse.make_group(graph, list(range(a, b + 1))) for a, b in spans]
        assert all(g is not None for g in gs), spans
        return fuse.Choice(gs, 0, 0, [])

    monkeypatch.setattr(emit, "_choose_fusion", chosen)


def test_rings_hold_exactly_what_the_windows_reach():
    c = Chain(np.random.default_rng(0), (12, 10, 4))
    a = c.conv(8)
    b = c.conv(0, 3, 1, dw=True)
    c.conv(6)
    g = c.graph()
    grp = fuse.make_group(g, [0, 1, 2])
    assert grp.rings == {a: 3, b: 1} and grp.mirror == {a: 2}  # a 3x3 window, a 1x1 one
    assert grp.inputs == [0] and grp.output == c.cur
    assert len(grp.steps) == 3 * 12 and grp.steps[:3] == [0, 0, 1]  # the depthwise pulls two rows first
    # the planner sizes the rings with their mirror slots and keeps input and output for the whole group
    plan = plan_memory(g, fused=[grp])
    assert plan.buffer_of(a).size == (3 + 2) * 10 * 8 and plan.buffer_of(b).size == 10 * 8
    assert plan.lifetimes[0] == (-1, 2) and plan.lifetimes[c.cur][0] == 0


def test_odd_widths_make_two_rows_a_step_in_even_rings():
    c = Chain(np.random.default_rng(0), (9, 7, 4))
    a = c.conv(8)
    c.conv(0, 3, 1, dw=True)
    grp = fuse.make_group(c.graph(), [0, 1])
    assert fuse.rows_per_step(c.graph(), c.ops[0]) == 2
    assert grp.rings[a] % 2 == 0 and grp.rings[a] >= 3


def test_a_chain_whose_intermediate_is_read_later_must_be_cut_there():
    c = Chain(np.random.default_rng(0), (8, 8, 8))
    r = c.conv(8)
    c.conv(0, 3, 1, dw=True)
    c.conv(8)
    c.add(r)
    g = c.graph()
    assert fuse.make_group(g, [0, 1, 2]) is None  # r is read by the ADD after the group
    assert fuse.make_group(g, [1, 2, 3]) is not None  # r is then the group's (whole) input
    assert fuse.make_group(g, [0, 1, 2, 3]) is not None  # or fuse through the ADD
    (run,) = fuse.runs(g, lambda k: True)
    assert run == [0, 1, 2, 3] and fuse.clean_cuts(g, run) == [0, 3]


def test_overwriting_the_input_is_proven_by_the_schedule():
    c = Chain(np.random.default_rng(0), (16, 16, 3))
    c.conv(8, 3, 2)  # stride 2: the input's rows die faster than the output's are written
    c.conv(0, 3, 1, dw=True)
    c.conv(4)  # reads the group's output after it
    g = c.graph()
    grp = fuse.make_group(g, [0, 1])
    assert grp.overwrites == 0
    # one buffer for both, holding the input's bytes only while the group runs
    plan = plan_memory(g, fused=[grp])
    plan.check()
    buf = plan.buffer_of(grp.output)
    assert plan.offsets[0] == plan.offsets[grp.output] and buf is plan.buffer_of(0)
    assert buf.size_during(0, 1) == 16 * 16 * 3 and buf.size_during(2, 2) == 8 * 8 * 8
    c = Chain(np.random.default_rng(0), (8, 8, 4))
    c.conv(16)  # four times the bytes a row: it would overwrite rows still to be read
    c.conv(0, 3, 1, dw=True)
    assert fuse.make_group(c.graph(), [0, 1]).overwrites is None


def test_fusing_that_does_not_lower_the_peak_is_not_chosen():
    c = Chain(np.random.default_rng(0), (16, 16, 4))
    c.conv(4)
    c.conv(32)  # the peak is this layer's input + output; fused, its input would only add a ring row
    g = c.graph()
    choice = emit._choose_fusion(g, set())
    assert choice.groups == [] and choice.arena == plan_memory(g).arena_bytes
    assert choice.considered[0][0] == "layer by layer"


def test_the_choice_lowers_the_peak_of_inverted_residual_blocks():
    g = block_graph(np.random.default_rng(1))
    choice = emit._choose_fusion(g, set())
    assert choice.groups and choice.arena < choice.unfused_arena
    plan = plan_memory(g, fused=choice.groups)
    plan.check()
    assert choice.arena == plan.arena_bytes
    assert max(live_bytes(g, choice.groups)) <= choice.arena


@pytest.mark.parametrize(
    "spans", [[(0, 9)], [(0, 2), (3, 6), (7, 9)], [(1, 2), (4, 6), (7, 8)]], ids=["all", "blocks", "odd"]
)
def test_fused_host_build_equals_the_reference_and_the_unfused_build(spans, monkeypatch, tmp_path):
    g = block_graph(np.random.default_rng(1))
    rng = np.random.default_rng(5)
    xs = [rng.integers(-128, 128, (1, 15, 13, 4), dtype=np.int8), np.full((1, 15, 13, 4), 127, np.int8)]
    plain = HostModel(generate(g, tmp_path / "plain", fuse=False), cache_dir=tmp_path / "hp")
    force(monkeypatch, spans)
    cg = generate(g, tmp_path / "fused")
    assert len(cg.plan.fused) == len(spans) and "_steps[" in (tmp_path / "fused" / "model.c").read_text()
    host = HostModel(cg, cache_dir=tmp_path / "hf")
    for x in xs:
        want = np.asarray(reference.run(g, [x])[0])
        got = host.run([x])[0]
        assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} of {want.size} differ"
        assert np.array_equal(plain.run([x])[0], want)


@pytest.mark.parametrize("cpu,machine", [("cortex-m7", "mps2-an500"), ("cortex-m3", "mps2-an385")])
def test_fused_arm_build_equals_the_reference(cpu, machine, monkeypatch, tmp_path):
    """The DSP (asm) and portable paths of the row kernels, every group kind, on QEMU."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from test_codegen_qemu import run_bare_metal

    g = block_graph(np.random.default_rng(1))
    force(monkeypatch, [(0, 2), (3, 9)])
    cg = generate(g, tmp_path / "gen", dsp=cpu != "cortex-m3")
    assert cg.plan.fused[0].overwrites is None or cg.plan.fused[0].overwrites == 0
    x = np.random.default_rng(9).integers(-128, 128, (1, 15, 13, 4), dtype=np.int8)
    want = np.asarray(reference.run(g, [x])[0])
    assert len(np.unique(want)) > 3
    assert np.array_equal(run_bare_metal(cg, x, cpu, machine, tmp_path), want)
