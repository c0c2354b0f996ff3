"""The TFLite Micro engine: the model's own .tflite in flash, run by TFLM's MicroInterpreter with either
CMSIS-NN's kernels (`tflm-cmsis`) or TFLM's reference kernels (`tflm-ref`), behind the same runtime as the
native engine (firmware/tflm/adapter.cc).

TFLM and CMSIS-NN are compiled once per (variant, CPU flags, -O level, source tree) into a static library in
a cache; a model's firmware then compiles only the adapter. The arena is sized the way TFLM's users size it:
a first build with a large arena reports `arena_used_bytes()` after AllocateTensors (run on the board's QEMU
machine, the same core and ABI), and the firmware is rebuilt with exactly that arena.

The sources are never part of this project: `HARNESS_TFLM_ROOT` names a directory holding `tflite-micro/`,
`cmsis-nn/`, `flatbuffers/`, `gemmlowp/` and `ruy/`, or `harness engines fetch tflm` clones the pinned
commits into the cache.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from harness import ROOT
from harness.build import GCC, GXX, STACK_RESERVE, EngineParts, build_firmware, cpu_flags
from harness.errors import BuildError, DoesNotFitError, HarnessError, UnsupportedModelError

FIRMWARE_TFLM = ROOT / "firmware" / "tflm"
TREES = ("tflite-micro", "cmsis-nn", "flatbuffers", "gemmlowp", "ruy")

# The commits the engine is built and measured with (TFLM pins the other four itself).
PINNED = {
    "tflite-micro": ("https://github.com/tensorflow/tflite-micro", "90b983c2b3f1480642e040bbd2ddb37b998f3424"),
    "cmsis-nn": ("https://github.com/ARM-software/CMSIS-NN", "4ab83cc3cc98fb85ed6dafb55e8ca02f1628dcae"),
    "flatbuffers": ("https://github.com/google/flatbuffers", "v25.9.23"),
    "gemmlowp": ("https://github.com/google/gemmlowp", "719139ce755a0f31cbf1c37f7f98adcc7fc9f425"),
    "ruy": ("https://github.com/google/ruy", "d37128311b445e758136b8602d1bbd2a755e115d"),
}

# Our IR's ops -> the resolver call that registers each (int8 registrations where TFLM has them).
REGISTRATIONS = {
    "CONV_2D": "AddConv2D(tflite::Register_CONV_2D_INT8())",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D(tflite::Register_DEPTHWISE_CONV_2D_INT8())",
    "FULLY_CONNECTED": "AddFullyConnected(tflite::Register_FULLY_CONNECTED_INT8())",
    "ADD": "AddAdd(tflite::Register_ADD_INT8())",
    "AVERAGE_POOL_2D": "AddAveragePool2D(tflite::Register_AVERAGE_POOL_2D_INT8())",
    "MAX_POOL_2D": "AddMaxPool2D(tflite::Register_MAX_POOL_2D_INT8())",
    "SOFTMAX": "AddSoftmax(tflite::Register_SOFTMAX_INT8())",
    "MEAN": "AddMean()",
    "PAD": "AddPad()",
    "RESHAPE": "AddReshape()",
    "CONCATENATION": "AddConcatenation()",
    "QUANTIZE": "AddQuantize()",
    "DEQUANTIZE": "AddDequantize()",
}
# The kernel files behind those registrations; CMSIS-NN replaces some of them with its own.
_REF_KERNELS = (
    "conv", "conv_common", "depthwise_conv", "depthwise_conv_common", "fully_connected", "fully_connected_common",
    "add", "add_common", "pooling", "pooling_common", "softmax", "softmax_common", "reduce", "reduce_common",
    "pad", "reshape", "reshape_common", "concatenation", "quantize", "quantize_common", "dequantize",
    "dequantize_common", "kernel_util",
)  # fmt: skip
_CMSIS_KERNELS = ("conv", "depthwise_conv", "fully_connected", "add", "pooling", "softmax", "pad")
# The interpreter core: every .cc of these folders but tests, mocks and the platform hooks we provide.
_CORE_DIRS = (
    "tensorflow/lite/micro",
    "tensorflow/lite/micro/arena_allocator",
    "tensorflow/lite/micro/memory_planner",
    "tensorflow/lite/micro/tflite_bridge",
    "tensorflow/lite/kernels",
    "tensorflow/lite/kernels/internal",
    "tensorflow/lite/core/api",
    "tensorflow/lite/core/c",
    "tensorflow/compiler/mlir/lite/schema",
    "tensorflow/compiler/mlir/lite/core/api",
)
_CORE_SKIP = {
    "debug_log.cc", "system_setup.cc", "fake_micro_context.cc", "mock_micro_graph.cc", "test_helpers.cc",
    "test_helper_custom_ops.cc", "recording_micro_allocator.cc", "recording_single_arena_buffer_allocator.cc",
}  # fmt: skip

VARIANTS = {"tflm-cmsis": "cmsis", "tflm-ref": "ref"}


class SourcesMissing(BuildError):
    """TFLM's sources are not where the engine looks for them."""


def cache_home() -> Path:
    base = os.environ.get("HARNESS_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "harness"


def sources_root() -> Path:
    """The directory holding the five source trees: HARNESS_TFLM_ROOT, else what `fetch` cloned."""
    env = os.environ.get("HARNESS_TFLM_ROOT")
    root = Path(env) if env else cache_home() / "tflm-src"
    missing = [t for t in TREES if not (root / t).is_dir()]
    if missing:
        where = f"HARNESS_TFLM_ROOT={env}" if env else f"{root} (no HARNESS_TFLM_ROOT is set)"
        raise SourcesMissing(
            f"the TFLM engine needs TensorFlow Lite Micro's sources; {where} lacks {', '.join(missing)}. "
            "Run `harness engines fetch tflm` (clones the pinned commits) or set HARNESS_TFLM_ROOT to a "
            f"directory with {', '.join(t + '/' for t in TREES)}"
        )
    return root


def fetch(say=print) -> Path:
    """Clone the pinned commits into the cache (needs git and the network) and apply TFLM's flatbuffers patch."""
    if shutil.which("git") is None:
        raise HarnessError("`harness engines fetch tflm` needs git (apt install git)")
    root = cache_home() / "tflm-src"
    root.mkdir(parents=True, exist_ok=True)
    for name, (url, rev) in PINNED.items():
        dest = root / name
        if dest.is_dir():
            say(f"{name}: already at {dest}")
            continue
        say(f"{name}: cloning {url} at {rev}")
        tmp = root / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        for cmd in (["git", "init", "-q", str(tmp)], ["git", "-C", str(tmp), "fetch", "-q", "--depth", "1", url, rev],
                    ["git", "-C", str(tmp), "checkout", "-q", "FETCH_HEAD"]):  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise HarnessError(f"fetching {name} failed ({' '.join(cmd[:4])}): {proc.stderr.strip()[-500:]}")
        if name == "flatbuffers":
            patch = root / "tflite-micro" / "tensorflow/lite/micro/tools/make/flatbuffers.patch"
            proc = subprocess.run(["git", "-C", str(tmp), "apply", str(patch)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise HarnessError(f"applying TFLM's flatbuffers patch failed: {proc.stderr.strip()[-500:]}")
        tmp.rename(dest)
    return root


def include_dirs(root: Path) -> tuple[Path, ...]:
    return (
        root / "tflite-micro", root / "flatbuffers" / "include", root / "gemmlowp", root / "ruy",
        root / "cmsis-nn", root / "cmsis-nn" / "Include",
    )  # fmt: skip


def _defines(variant: str) -> list[str]:
    """`core` (the interpreter, shared by both variants), `ref` or `cmsis`."""
    d = ["-DTF_LITE_STATIC_MEMORY", "-DNDEBUG"]
    if variant == "cmsis":  # CMSIS-NN picks its DSP / MVE paths from the core's __ARM_FEATURE_* macros
        d += ["-DCMSIS_NN", "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0"]
    return d


def cxx_flags(board, opt: str, variant: str) -> list[str]:
    return [
        *cpu_flags(board), opt, "-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics",
        "-fno-use-cxa-atexit", "-ffunction-sections", "-fdata-sections", *_defines(variant),
    ]  # fmt: skip


def c_flags(board, opt: str, variant: str) -> list[str]:
    return [*cpu_flags(board), opt, "-std=c11", "-ffunction-sections", "-fdata-sections", *_defines(variant)]


def library_sources(root: Path, variant: str) -> tuple[list[Path], list[Path]]:
    """(the interpreter core, the kernels of `variant`)."""
    tf = root / "tflite-micro"
    # a full clone (`harness engines fetch`) also holds TFLM's own tests beside the sources
    core = [
        p
        for d in _CORE_DIRS
        for p in sorted((tf / d).glob("*.cc"))
        if p.name not in _CORE_SKIP and not p.name.endswith("_test.cc")
    ]
    kdir = tf / "tensorflow/lite/micro/kernels"
    replaced = set(_CMSIS_KERNELS) if variant == "cmsis" else set()
    kernels = [kdir / f"{k}.cc" for k in _REF_KERNELS if k not in replaced]
    if variant == "cmsis":
        kernels += [kdir / "cmsis_nn" / f"{k}.cc" for k in _CMSIS_KERNELS]
        # its float kernels are neither needed nor buildable without float16_t
        kernels += sorted(
            p for p in (root / "cmsis-nn" / "Source").rglob("*.c") if not p.stem.endswith(("_f16", "_f32"))
        )
    return core, kernels


@functools.cache
def _tree_digest(root: Path) -> str:
    """The content of every source and header of the five trees (0.1 s): the library's identity."""
    h = hashlib.sha256()
    for tree in TREES:
        for p in sorted((root / tree).rglob("*")):
            if p.suffix in (".h", ".hpp", ".cc", ".c", ".inc") and p.is_file():
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def library(board, opt: str, variant: str, say=lambda _m: None) -> tuple[Path, str]:
    """The static library for `variant` built with the board's CPU flags at `opt`, from the cache when it is
    there. Returns its path and its key. Objects are cached one by one, and the interpreter core (which no
    variant define touches) is shared by both variants, so the second variant compiles only its kernels."""
    root = sources_root()
    cxx, cc = cxx_flags(board, opt, variant), c_flags(board, opt, variant)
    gcc = subprocess.run([GXX, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    tree = _tree_digest(root)
    core, kernels = library_sources(root, variant)
    names = [str(p.relative_to(root)) for p in core + kernels]  # which files, as well as their content
    key = hashlib.sha256(json.dumps([variant, cxx, cc, gcc, tree, names]).encode()).hexdigest()[:20]
    lib = cache_home() / "tflm-lib" / f"{variant}-{board.core}-{opt.lstrip('-')}-{key}" / "libtflm.a"
    if lib.is_file():
        return lib, key
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Parallel nightly cells may want the same library: one builds it, the others wait and reuse it.
    with open(lib.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not lib.is_file():
            _build_library(root, lib, board, opt, variant, (core, kernels), cxx, cc, gcc, tree, say)
    return lib, key


def _build_library(root: Path, lib: Path, board, opt: str, variant: str, sources, cxx, cc, gcc, tree: str, say) -> None:
    core, kernels = sources
    jobs = [(src, cxx_flags(board, opt, "core")) for src in core]
    jobs += [(src, cxx if src.suffix == ".cc" else cc) for src in kernels]
    objs = cache_home() / "tflm-obj"
    objs.mkdir(parents=True, exist_ok=True)
    incs = [f"-I{d}" for d in include_dirs(root)]

    def obj_path(src: Path, flags: list[str]) -> Path:
        rel = str(src.relative_to(root))
        digest = hashlib.sha256(json.dumps([rel, flags, gcc, tree]).encode()).hexdigest()[:20]
        return objs / f"{src.stem}-{digest}.o"

    todo = [(s, f) for s, f in jobs if not obj_path(s, f).is_file()]
    if todo:
        say(f"building the TFLM library ({variant}, {board.core}, {opt}): {len(todo)} of {len(jobs)} files")

    def compile_one(job) -> None:
        src, flags = job
        obj = obj_path(src, flags)
        tool = GXX if src.suffix == ".cc" else GCC
        tmp = obj.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([tool, *flags, *incs, "-c", str(src), "-o", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise BuildError(f"building TFLM: {src.relative_to(root)} failed:\n{proc.stderr.strip()[-3000:]}")
        os.replace(tmp, obj)

    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(compile_one, todo))
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    members = [str(obj_path(s, f)) for s, f in jobs]
    proc = subprocess.run(["arm-none-eabi-ar", "rcs", str(tmp), *members], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"archiving the TFLM library failed: {proc.stderr.strip()[-2000:]}")
    os.replace(tmp, lib)


def registrations(graph) -> list[str]:
    """The resolver calls for the ops `graph` uses, once each; an op the engine does not register is refused."""
    calls: list[str] = []
    for k, op in enumerate(graph.ops):
        if op.kind not in REGISTRATIONS:
            raise UnsupportedModelError(
                f"{graph.name}: layer {k} ({op.name or op.kind}) is {op.kind}, which the TFLM engine does not "
                f"register; it registers {', '.join(REGISTRATIONS)}"
            )
        if REGISTRATIONS[op.kind] not in calls:
            calls.append(REGISTRATIONS[op.kind])
    return calls


def io_specs(graph, tensors: list[int]) -> list:
    """The int8 I/O as the host sees it. Offsets are TFLM's to choose in AllocateTensors: the device reports
    them in HELLO, so they are 0 here."""
    from harness.engines.native import IOSpec

    specs = []
    for t in tensors:
        x = graph.tensors[t]
        specs.append(IOSpec(t, x.name, 0, x.nbytes, tuple(x.shape), x.quant.s, x.quant.zp))
    return specs


def _c_io_table(specs) -> str:
    from harness.engines.native.emit import c_float

    rows = []
    for s in specs:
        dims = list(s.shape) + [0] * (4 - len(s.shape))
        rows.append(
            f"    {{0u, {s.bytes}u, {c_float(s.scale)}, {s.zero_point}, {len(s.shape)}, "
            f"{{{', '.join(str(d) for d in dims)}}}}},"
        )
    return "\n".join(rows)


def write_model(
    out: Path, graph, tflite: bytes, inputs, outputs, arena_bytes: int, macs: int, sizing: bool = False
) -> None:
    """The model directory the adapter builds against: model.h (the runtime's ABI), the I/O specs, the ops
    to register, and the .tflite itself, included into flash by the assembler. A `sizing` build searches,
    at boot, for the smallest arena AllocateTensors succeeds in, and reports it as the arena it needs."""
    from harness.engines.native import c_string

    out.mkdir(parents=True, exist_ok=True)
    calls = registrations(graph)
    (out / "model.tflite").write_bytes(tflite)
    (out / "model.h").write_text(f"""/* Generated by harness.engines.tflm: the model ABI of firmware/README.md. */
#ifndef MODEL_H
#define MODEL_H
#include <stdint.h>

#include "model_abi.h"
#ifdef __cplusplus
extern "C" {{
#endif
#define MODEL_NAME {c_string(graph.name)}
#define MODEL_ARENA_BYTES {arena_bytes}u
#define MODEL_NUM_INPUTS {len(inputs)}
#define MODEL_NUM_OUTPUTS {len(outputs)}
#define MODEL_NUM_LAYERS {len(graph.ops)}  /* TFLM's operators, one per layer of the graph */
#define MODEL_MACS {macs}u
#define MODEL_INPUT_BYTES {sum(s.bytes for s in inputs)}u
#define MODEL_HAS_INIT 1
#define MODEL_ARENA_TWO_ENDED 1
#define MODEL_ARENA_USED model_arena_used()
#define TFLM_SIZING {int(sizing)}
#define MODEL_ARENA_NEEDED {"model_arena_needed()" if sizing else "MODEL_ARENA_BYTES"}

/* Filled in by model_init once TFLM has placed the tensors in the arena. */
extern model_tensor_t model_inputs[MODEL_NUM_INPUTS];
extern model_tensor_t model_outputs[MODEL_NUM_OUTPUTS];
extern const model_tensor_t model_input_specs[MODEL_NUM_INPUTS];
extern const model_tensor_t model_output_specs[MODEL_NUM_OUTPUTS];
int model_init(int8_t *arena, uint32_t arena_bytes, const char **why);
uint32_t model_arena_used(void);
uint32_t model_arena_needed(void);
void model_run(int8_t *arena);
void model_failed(const char *why);
#ifdef __cplusplus
}}
#endif
#endif
""")
    (out / "model_io.c").write_text(f"""/* Generated by harness.engines.tflm. */
#include "model.h"

const model_tensor_t model_input_specs[MODEL_NUM_INPUTS] = {{
{_c_io_table(inputs)}
}};
const model_tensor_t model_output_specs[MODEL_NUM_OUTPUTS] = {{
{_c_io_table(outputs)}
}};
""")
    ops = " ".join(f"X({c})" for c in calls)
    (out / "tflm_ops.h").write_text(
        f"/* Generated by harness.engines.tflm: the ops {c_string(graph.name)} uses. */\n"
        f"#define TFLM_NUM_OPS {len(calls)}\n#define TFLM_OPS(X) {ops}\n"
    )
    (out / "model_data.S").write_text(
        "/* Generated by harness.engines.tflm: the .tflite, byte for byte, in flash. */\n"
        '    .section .rodata.model_tflite, "a"\n    .balign 16\n    .global model_tflite\nmodel_tflite:\n'
        f'    .incbin "{_as_string(out / "model.tflite")}"\n'
    )


def _as_string(path: Path) -> str:
    """A path inside an assembler string literal (the build folder is the user's to name)."""
    return str(path).replace("\\", "\\\\").replace('"', '\\"')


def engine_parts(board, opt: str, variant: str, say) -> EngineParts:
    lib, key = library(board, opt, variant, say)
    return EngineParts(
        sources=(FIRMWARE_TFLM / "adapter.cc",),
        include_dirs=include_dirs(sources_root()),
        libraries=(lib,),
        cxx_flags=tuple(cxx_flags(board, opt, variant)),
        key=key,
    )


def size_arena(work: Path, board, graph, tflite: bytes, inputs, outputs, macs: int, parts: EngineParts,
               opt: str, input_bytes: int) -> tuple[int, int]:  # fmt: skip
    """(the smallest arena AllocateTensors succeeds in, arena_used_bytes() after it), from a sizing build with
    a large arena run on the board's QEMU machine (its memory, the board's core and flags). Cached beside
    that build."""
    from dataclasses import replace

    from harness.protocol import EngineFailed
    from harness.targets.qemu import QemuTarget

    machine = board.qemu_machine
    big = replace(board, ram_bytes=machine.ram_bytes, flash_bytes=machine.flash_bytes)
    # all the machine's RAM but the stack reserve, the input copy and 64 KiB for the firmware's static data
    arena = (machine.ram_bytes - STACK_RESERVE - input_bytes - 64 * 1024) // 16 * 16
    if arena < 4096:
        raise DoesNotFitError(f"{machine.name} has too little RAM ({machine.ram_bytes:,} B) to size a TFLM arena in")
    write_model(work / "sizing", graph, tflite, inputs, outputs, arena, macs, sizing=True)
    build = build_firmware(work / "sizing", big, qemu=True, opt=opt, cache_dir=work / "fw",
                           input_bytes=input_bytes, engine=parts)  # fmt: skip
    memo = build.elf.parent / "arena.json"
    if not memo.is_file():
        try:
            with QemuTarget(big).open(build, timeout=120) as session:
                hello = session.hello
        except EngineFailed as e:
            raise DoesNotFitError(
                f"TFLM cannot allocate {graph.name} in the {arena:,} B its sizing run on {machine.name} offers: {e}"
            ) from e
        memo.write_text(json.dumps({"needed": hello.arena_bytes, "used": hello.arena_used}))
    sized = json.loads(memo.read_text())
    return int(sized["needed"]), int(sized["used"])
