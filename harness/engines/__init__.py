"""Engines: what turns a model into firmware. One interface, several engines:

- `native`: the generated C of harness.engines.native (a static memory plan, one call per layer) over the
  kernels in firmware/kernels;
- `tflm-cmsis` / `tflm-ref`: TensorFlow Lite Micro running the model's .tflite with CMSIS-NN's kernels or
  its reference kernels (harness.engines.tflm).

`prepare` hands back an EngineSpec (the int8 I/O, the arena, the weights' flash, the per-layer rows) and the
firmware build. The bench, accuracy and nightly read only that; the runtime
(protocol, counters, painting, fault reports) is shared by every engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

ENGINES = ("native", "tflm-cmsis", "tflm-ref")
DEFAULT = "native"


@dataclass
class EngineSpec:
    """What one engine made of a model."""

    engine: str
    inputs: list  # IOSpec per int8 input (offsets: the native plan's; TFLM's come from the device)
    outputs: list
    arena_bytes: int  # the arena the firmware holds: the native plan, or the least TFLM allocates in
    weight_bytes: int  # flash for the model's constants: emitted weights, or the whole .tflite
    macs: int
    layers: list = field(default_factory=list)  # per-layer rows (op, shape, MACs) for profiling builds
    host: Any = None  # the native engine's generated C, which the host target also builds
    notes: list[str] = field(default_factory=list)  # what the engine did to the model, said to the user
    arena_used: int | None = None  # TFLM's arena_used_bytes() (its planner's scratch is not counted in it)


def check(name: str) -> str:
    if name not in ENGINES:
        raise HarnessError(f"unknown engine {name!r}; engines: {', '.join(ENGINES)}")
    return name


def parse_list(text: str) -> list[str]:
    """`native,tflm-cmsis` -> the engines, checked, in order, once each."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise HarnessError("no engine named: give one or more of " + ", ".join(ENGINES))
    seen: list[str] = []
    for n in names:
        if check(n) not in seen:
            seen.append(n)
    return seen


def prepare(
    name: str,
    board,
    graph,
    interior,
    work: Path,
    *,
    build: bool,
    qemu: bool,
    opt: str,
    profile: bool,
    say,
    step,
    fuse: bool = True,
):
    """(EngineSpec, BuildResult | None) for `interior` (the int8 graph the device runs) on `board`; `build`
    False asks only for what the host target needs (the native engine's C)."""
    check(name)
    if name == "native":
        return _native(board, interior, work, build=build, qemu=qemu, opt=opt, profile=profile, step=step, fuse=fuse)
    if not build:
        raise HarnessError(
            f"the {name} engine runs on a board or its QEMU fallback, not on the host target: use --target qemu"
        )
    return _tflm(name, board, graph, interior, work, qemu=qemu, opt=opt, profile=profile, say=say, step=step)


def _native(board, interior, work: Path, *, build: bool, qemu: bool, opt: str, profile: bool, step, fuse=True):
    from harness.build import build_firmware
    from harness.engines.native import generate
    from harness.errors import DoesNotFitError

    step("generating C")
    src = work / ("model" if fuse else "model-unfused")  # parallel cells may build both forms of one model
    # the budget a previous build of this model learned for this flash size (see below), else the estimate
    learned = work / f"wide-budget-{board.flash_bytes}"
    budget = int(learned.read_text()) if learned.is_file() and learned.read_text().strip().isdigit() else None
    while True:
        cg = generate(interior, src, dsp=board.dsp, flash_bytes=board.flash_bytes, fuse=fuse, budget=budget)
        spec = EngineSpec("native", cg.inputs, cg.outputs, cg.arena_bytes, cg.weight_bytes, cg.macs, cg.layers, cg)
        if not build:
            return spec, None
        step("building firmware")
        try:
            result = build_firmware(
                src, board, qemu=qemu, opt=opt, cache_dir=work / "fw",
                input_bytes=sum(s.bytes for s in cg.inputs),
                extra_cflags=("-DHARNESS_LAYER_PROFILE=1",) if profile else (),
            )  # fmt: skip
            return spec, result
        except DoesNotFitError as e:
            # Wide weights are a speed-up bought with flash: where the estimate spent more than the board
            # has, the widening gives back what the linker says overflowed (and 4 KiB), and it links again.
            if e.memory != "flash" or cg.wide_bytes == 0:
                raise
            budget = max(0, cg.wide_bytes - e.over - 4096)
            learned.write_text(str(budget))
            step(f"{e.over:,} bytes over the board's flash: fewer layers with wide weights")


def _tflm(name: str, board, graph, interior, work: Path, *, qemu: bool, opt: str, profile: bool, say, step):
    from harness.build import build_firmware
    from harness.engines import tflm
    from harness.engines.native import analyse
    from harness.model import to_tflite_bytes

    variant = tflm.VARIANTS[name]
    tflm.registrations(interior)  # an op TFLM does not register is refused before anything is built
    notes = []
    if len(interior.ops) != len(graph.ops):
        # The float QUANTIZE/DEQUANTIZE at the edges run on the host for every engine (the device sees int8).
        blob = to_tflite_bytes(interior)
        notes.append("TFLM runs the model's int8 interior (float boundary ops on the host), as written by harness")
    else:
        blob = graph.source if graph.source is not None else to_tflite_bytes(graph)
    inputs, outputs = tflm.io_specs(interior, interior.inputs), tflm.io_specs(interior, interior.outputs)
    step("building the TFLM library")
    parts = tflm.engine_parts(board, opt, variant, say)
    macs = interior.macs()
    in_bytes = sum(s.bytes for s in inputs)
    step("sizing the TFLM arena")
    arena, used = tflm.size_arena(work / name, board, interior, blob, inputs, outputs, macs, parts, opt, in_bytes)
    tflm.write_model(work / name / "model", interior, blob, inputs, outputs, arena, macs)
    step("building firmware")
    result = build_firmware(
        work / name / "model", board, qemu=qemu, opt=opt, cache_dir=work / name / "fw", input_bytes=in_bytes,
        engine=parts, extra_cflags=("-DHARNESS_LAYER_PROFILE=1",) if profile else (),
    )  # fmt: skip
    layers = analyse(interior)[1]  # the graph's layers: TFLM runs one operator for each
    spec = EngineSpec(name, inputs, outputs, arena, len(blob), macs, layers, notes=notes, arena_used=used)
    return spec, result
