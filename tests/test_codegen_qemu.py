"""The kernels' DSP path (SMLAD/SXTB16, Cortex-M4) and their portable path (Cortex-M3) give exactly the
host's results, run bare-metal on QEMU. A standalone program: vector table, the generated model, the
input embedded as a constant, the output printed in hex over semihosting."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import require_tools

from harness.engines.native import generate
from harness.model import params as P
from harness.model.ir import Graph, Op, Quant, Tensor, conv_out_size
from harness.targets.host import HostModel

pytestmark = pytest.mark.qemu

MAIN_C = r"""
#include <stdint.h>
#include "model.h"
#include "input.h"

extern uint32_t __stack_top__;
static int8_t arena[MODEL_ARENA_BYTES + 16] __attribute__((aligned(16)));

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void reset_handler(void)
{
    static char line[2 * 64 + 2];
    static const char hex[] = "0123456789abcdef";
    for (uint32_t i = 0; i < sizeof(model_input); i++) {
        arena[model_inputs[0].offset + i] = model_input[i];
    }
    model_run(arena);
    const int8_t *y = arena + model_outputs[0].offset;
    uint32_t n = model_outputs[0].bytes, k = 0;
    for (uint32_t i = 0; i < n; i++) {
        line[k++] = hex[((uint8_t)y[i]) >> 4];
        line[k++] = hex[((uint8_t)y[i]) & 15];
        if (k == 2 * 64 || i + 1 == n) {
            line[k++] = '\n';
            line[k] = 0;
            semihost(0x04, line); /* SYS_WRITE0 */
            k = 0;
        }
    }
    semihost(0x18, (const void *)0x20026); /* SYS_EXIT, ADP_Stopped_ApplicationExit */
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) const void *const vectors[2] = {&__stack_top__, reset_handler};
"""

LINKER = """
MEMORY { FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 4M
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M }
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) } > FLASH
  .bss (NOLOAD) : { *(.bss*) *(COMMON) } > RAM
  __stack_top__ = ORIGIN(RAM) + LENGTH(RAM);
}
"""


def q(scale=0.05, zp=0):
    return Quant(np.array([scale], np.float32), np.array([zp]))


def mixed_graph(rng):
    """conv 3x3 (7 input channels: odd dot lengths) -> depthwise 3x3 -> pointwise 1x1 -> FC."""
    shapes = []
    t = [Tensor("in", (1, 9, 9, 7), "int8", q(0.05, -7))]
    ops, params = [], []

    def add_conv(kind, ic, oc, k, stride):
        x = len(t) - 1
        h = t[x].shape[1]
        oh, pad = conv_out_size(h, k, stride, 1, "SAME")
        wshape = (1, k, k, oc) if kind == "DEPTHWISE_CONV_2D" else (oc, k, k, ic)
        t.append(Tensor(f"w{x}", wshape, "int8", q(0.01), rng.integers(-128, 128, wshape, dtype=np.int8)))
        t.append(Tensor(f"b{x}", (oc,), "int32", q(0.0005), rng.integers(-3000, 3000, oc, dtype=np.int32)))
        t.append(Tensor(f"y{x}", (1, oh, oh, oc), "int8", q(0.05, 3)))
        opts = {"stride": (stride, stride), "padding": "SAME", "depth_multiplier": 1}
        ops.append(Op(kind, [x, x + 1, x + 2], [x + 3], opts, name=f"{kind.lower()}{x}"))
        mult = rng.integers(2**30, 2**31 - 1, size=oc)
        shift = rng.integers(-12, -8, size=oc)
        params.append(
            P.ConvParams(7 if x == 0 else -3, 3, mult, shift, -128, 127, (stride, stride), (1, 1), (pad, pad))
        )
        shapes.append(oh)

    add_conv("CONV_2D", 7, 12, 3, 2)
    add_conv("DEPTHWISE_CONV_2D", 12, 12, 3, 1)
    add_conv("CONV_2D", 12, 21, 1, 1)
    x = len(t) - 1
    n_in = t[x].size
    t.append(Tensor("fw", (10, n_in), "int8", q(0.01), rng.integers(-128, 128, (10, n_in), dtype=np.int8)))
    t.append(Tensor("out", (1, 10), "int8", q(0.1, 0)))
    ops.append(Op("FULLY_CONNECTED", [x, x + 1, -1], [x + 2], {}, name="fc"))
    params.append(P.FcParams(-3, 0, rng.integers(2**30, 2**31 - 1, size=10), np.full(10, -9), -128, 127))
    g = Graph("qemu_mixed", t, ops, [0], [len(t) - 1])
    return g, dict(zip((id(o) for o in ops), params, strict=True))


def run_bare_metal(cg, x: np.ndarray, cpu: str, machine: str, tmp_path) -> np.ndarray:
    """Build `cg` with the input embedded for `cpu`, run it on QEMU `machine`, return its output."""
    (tmp_path / "main.c").write_text(MAIN_C)
    (tmp_path / "input.h").write_text(
        "static const int8_t model_input[] = {" + ", ".join(str(v) for v in x.reshape(-1)) + "};\n"
    )
    (tmp_path / "link.ld").write_text(LINKER)
    elf = tmp_path / "prog.elf"
    cmd = ["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", "-O2", "-std=c99", "-Wall", "-Werror", "-ffreestanding"]
    cmd += ["-nostartfiles", "--specs=nano.specs", f"-T{tmp_path / 'link.ld'}", f"-I{tmp_path}"]
    cmd += [f"-I{d}" for d in cg.include_dirs] + ["-o", str(elf), str(tmp_path / "main.c")]
    cmd += [str(p) for p in cg.files if p.suffix == ".c"] + [str(p) for p in cg.kernel_sources]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    if cpu != "cortex-m3":
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True).stdout
        assert "smlad" in dis  # the DSP path is really the one under test
    run = subprocess.run(
        ["qemu-system-arm", "-M", machine, "-nographic", "-monitor", "none", "-serial", "none"]
        + ["-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Without a chardev, QEMU writes the semihosting console to stderr; keep only our hex lines.
    text = "".join(ln for ln in (run.stdout + run.stderr).splitlines() if ln and set(ln) <= set("0123456789abcdef"))
    spec = cg.outputs[0]
    return np.frombuffer(bytes.fromhex(text), dtype=np.int8).reshape(spec.shape)


CPUS = [("cortex-m4", "mps2-an386"), ("cortex-m7", "mps2-an500"), ("cortex-m3", "mps2-an385")]


@pytest.mark.parametrize("cpu,machine", CPUS)
def test_arm_build_matches_host(cpu, machine, monkeypatch, tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    rng = np.random.default_rng(7)
    g, table = mixed_graph(rng)
    monkeypatch.setattr(P, "derive", lambda graph, op: table[id(op)])
    cg = generate(g, tmp_path / "gen", dsp=cpu != "cortex-m3")
    x = rng.integers(-128, 128, size=(1, 9, 9, 7), dtype=np.int8)
    want = HostModel(cg, cache_dir=tmp_path / "host").run([x])[0]
    assert len(np.unique(want)) > 3
    assert np.array_equal(run_bare_metal(cg, x, cpu, machine, tmp_path), want)


@pytest.mark.parametrize("cpu,machine", CPUS[:1] + CPUS[2:])
@pytest.mark.parametrize("key", ["kws", "ic"])
def test_reference_model_on_arm_matches_reference(key, cpu, machine, tmp_path):
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from conftest import shared_model

    from harness import reference
    from harness.model import load_model

    g = load_model(shared_model(key))
    if key == "ic":  # end at the logits (more informative than a saturated softmax); kws keeps its softmax
        assert g.ops[-1].kind == "SOFTMAX"
        g.outputs = [g.ops[-1].inputs[0]]
        g.ops = g.ops[:-1]
    cg = generate(g, tmp_path / "gen", dsp=cpu != "cortex-m3")
    x = np.random.default_rng(1).integers(-128, 128, size=cg.inputs[0].shape, dtype=np.int8)
    want = reference.run(g, [x])[0]
    assert np.array_equal(run_bare_metal(cg, x, cpu, machine, tmp_path), np.asarray(want).reshape(cg.outputs[0].shape))


def spec_graph(rng):
    """A chain through every specialised path of tk_spec.h, with the awkward sizes: a 3-channel first
    layer (element-wise im2col) at stride 2 with SAME padding on an odd number of pixels (the lone last
    pixel), depthwise on channel counts that are not a multiple of 4 (the scalar tail) at 3x3, 5x5 stride
    2 and 7x7, a depthwise on one channel with a multiplier, pointwise with odd input and output counts,
    a 3x3 conv on 16 channels (word im2col with padding), and a fully connected layer of 10 outputs (not
    a multiple of the wide path's 4). Two channels are dead: a zero multiplier, and a bias that
    saturates at act_min whatever the input."""
    t = [Tensor("in", (1, 9, 9, 3), "int8", q(0.05, -7))]
    ops, params = [], []

    def add(kind, oc, k, stride, act=(-128, 127), m=1):
        x = len(t) - 1
        _, h, _, ic = t[x].shape
        oh, pad = conv_out_size(h, k, stride, 1, "SAME")
        wshape = (1, k, k, ic * m) if kind == "DEPTHWISE_CONV_2D" else (oc, k, k, ic)
        oc = ic * m if kind == "DEPTHWISE_CONV_2D" else oc
        bias = rng.integers(-3000, 3000, oc).astype(np.int32)
        mult = rng.integers(2**30, 2**31 - 1, size=oc)
        shift = rng.integers(-12, -8, size=oc)
        mult[0] = 0 if oc > 1 else mult[0]  # a dead channel
        if oc > 1:
            bias[1], shift[1] = -(2**29), -2  # saturated at act_min for every input
        t.append(Tensor(f"w{x}", wshape, "int8", q(0.01), rng.integers(-128, 128, wshape, dtype=np.int8)))
        t.append(Tensor(f"b{x}", (oc,), "int32", q(0.0005), bias))
        t.append(Tensor(f"y{x}", (1, oh, oh, oc), "int8", q(0.05, 3)))
        opts = {"stride": (stride, stride), "padding": "SAME", "depth_multiplier": m}
        ops.append(Op(kind, [x, x + 1, x + 2], [x + 3], opts, name=f"{kind.lower()}{x}"))
        in_off = 7 if x == 0 else -3
        params.append(P.ConvParams(in_off, 3, mult, shift, *act, (stride, stride), (1, 1), (pad, pad), m))

    add("CONV_2D", 10, 3, 2)
    add("DEPTHWISE_CONV_2D", 0, 3, 1, act=(-60, 100))
    add("CONV_2D", 21, 1, 1)  # the next pointwise's 21 inputs are 6 groups: tk_mm2x2 unrolled by 2, not 4
    add("DEPTHWISE_CONV_2D", 0, 5, 2)
    add("CONV_2D", 16, 1, 1, act=(3, 127))
    add("CONV_2D", 7, 3, 1)
    add("DEPTHWISE_CONV_2D", 0, 7, 1)
    add("CONV_2D", 1, 1, 1)
    add("DEPTHWISE_CONV_2D", 0, 3, 2, m=7)  # one channel times 7: the conv template
    x = len(t) - 1
    n_in = t[x].size
    t.append(Tensor("fw", (10, n_in), "int8", q(0.01), rng.integers(-128, 128, (10, n_in), dtype=np.int8)))
    t.append(Tensor("out", (1, 10), "int8", q(0.1, 0)))
    ops.append(Op("FULLY_CONNECTED", [x, x + 1, -1], [x + 2], {}, name="fc"))
    mult = rng.integers(2**30, 2**31 - 1, size=10)
    mult[3] = 0
    params.append(P.FcParams(-3, 0, mult, rng.integers(-12, -9, size=10), -128, 127))
    g = Graph("qemu_spec", t, ops, [0], [len(t) - 1])
    return g, dict(zip((id(o) for o in ops), params, strict=True))


@pytest.mark.parametrize("cpu,machine", CPUS)
def test_depthwise_over_widened_rows_on_arm_matches_the_reference(cpu, machine, monkeypatch, tmp_path):
    """The depthwise layers tk_dwp_spec takes over whole tensors: 3x3 stride 1 at 17 wide, 5x5 stride 2,
    7x7 and 5x5 VALID, on 5 channels, with a clamped activation. SMLAD on unaligned words on M4 and M7,
    portable C on M3; the outputs equal the numpy reference's byte for byte."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from harness import reference
    from harness.engines.native import planner, spec

    rng = np.random.default_rng(12)
    t = [Tensor("in", (1, 17, 17, 5), "int8", q(0.05, -7))]
    ops, params = [], []
    for k, stride, padding in [(3, 1, "SAME"), (5, 2, "SAME"), (7, 1, "SAME"), (5, 1, "VALID")]:
        x = len(t) - 1
        h = t[x].shape[1]
        oh, pad = conv_out_size(h, k, stride, 1, padding)
        assert spec.dw_by_rows(k, k, stride, oh, True)
        t.append(Tensor(f"w{x}", (1, k, k, 5), "int8", q(0.01), rng.integers(-128, 128, (1, k, k, 5), dtype=np.int8)))
        t.append(Tensor(f"b{x}", (5,), "int32", q(0.0005), rng.integers(-3000, 3000, 5, dtype=np.int32)))
        t.append(Tensor(f"y{x}", (1, oh, oh, 5), "int8", q(0.05, 3)))
        opts = {"stride": (stride, stride), "padding": padding, "depth_multiplier": 1}
        ops.append(Op("DEPTHWISE_CONV_2D", [x, x + 1, x + 2], [x + 3], opts, name=f"dw{x}"))
        mult, shift = rng.integers(2**30, 2**31 - 1, size=5), rng.integers(-12, -9, size=5)
        params.append(P.ConvParams(7 if x == 0 else -3, 3, mult, shift, -100, 110, (stride,) * 2, (1, 1), (pad, pad)))
    g = Graph("dw_rows", t, ops, [0], [len(t) - 1])
    table = dict(zip((id(o) for o in ops), params, strict=True))
    monkeypatch.setattr(P, "derive", lambda graph, op: table[id(op)])
    monkeypatch.setattr(planner, "inplace_candidates", lambda graph: [])  # in place is another kernel
    cg = generate(g, tmp_path / "gen", dsp=cpu != "cortex-m3", fuse=False)
    assert (tmp_path / "gen" / "model.c").read_text().count("tk_dwp_spec(") == len(ops)
    x = rng.integers(-128, 128, size=(1, 17, 17, 5), dtype=np.int8)
    want = np.asarray(reference.run(g, [x])[0]).reshape(cg.outputs[0].shape)
    assert len(np.unique(want)) > 3
    assert np.array_equal(run_bare_metal(cg, x, cpu, machine, tmp_path), want)


@pytest.mark.parametrize("cpu,machine", CPUS)
@pytest.mark.parametrize("wide", [False, True], ids=["int8-weights", "wide-weights"])
def test_specialised_layers_on_arm_match_the_reference(cpu, machine, wide, monkeypatch, tmp_path):
    """Every layer of spec_graph takes a tk_spec.h template (asm SMLAD paths on M4/M7, portable C on
    M3), with int8 or widened weights, and the outputs equal the numpy reference's byte for byte."""
    require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    from harness import reference

    rng = np.random.default_rng(11)
    g, table = spec_graph(rng)
    monkeypatch.setattr(P, "derive", lambda graph, op: table[id(op)])
    cg = generate(g, tmp_path / "gen", dsp=cpu != "cortex-m3", flash_bytes=(1 << 22) if wide else None)
    source = (tmp_path / "gen" / "model.c").read_text()
    assert source.count("_run(arena") == len(g.ops)  # no layer fell back to a generic kernel
    assert ("wide weights" in source) == wide
    inputs = [rng.integers(-128, 128, size=(1, 9, 9, 3), dtype=np.int8), np.full((1, 9, 9, 3), 127, np.int8)]
    for k, x in enumerate(inputs):
        want = np.asarray(reference.run(g, [x])[0]).reshape(cg.outputs[0].shape)
        if k == 0:
            assert len(np.unique(want)) > 3
        (tmp_path / f"x{k}").mkdir()
        assert np.array_equal(run_bare_metal(cg, x, cpu, machine, tmp_path / f"x{k}"), want)
