"""Read a .tflite flatbuffer into the Graph IR, and write a Graph IR back out as a valid .tflite file.

The reader trusts nothing in the file: every index, buffer and shape is checked, and whatever is wrong
comes back as a MalformedModelError or UnsupportedModelError that says what and where, never as an
IndexError from deep inside the flatbuffer code.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import tflite
from tflite.ActivationFunctionType import ActivationFunctionType as AF
from tflite.BuiltinOperator import BuiltinOperator as BO
from tflite.BuiltinOptions import BuiltinOptions as BOpt
from tflite.Padding import Padding
from tflite.TensorType import TensorType as TT

from harness.errors import MalformedModelError, UnsupportedModelError
from harness.model.checks import MAX_FILE_BYTES, REQUIRED_INPUTS
from harness.model.ir import ACTIVATIONS, SUPPORTED_OPS, Graph, Op, Quant, Tensor

_TYPE_NAMES = {
    TT.FLOAT32: "float32",
    TT.FLOAT16: "float16",
    TT.INT32: "int32",
    TT.UINT8: "uint8",
    TT.INT64: "int64",
    TT.BOOL: "bool",
    TT.INT16: "int16",
    TT.INT8: "int8",
    TT.FLOAT64: "float64",
}
_TYPE_CODES = {v: k for k, v in _TYPE_NAMES.items()}
_OP_NAMES = {v: k for k, v in vars(BO).items() if not k.startswith("_") and isinstance(v, int)}
_OP_CODES = {name: code for code, name in _OP_NAMES.items()}
_ACT_NAMES = {AF.NONE: "NONE", AF.RELU: "RELU", AF.RELU_N1_TO_1: "RELU_N1_TO_1", AF.RELU6: "RELU6"}
_ACT_CODES = {v: k for k, v in _ACT_NAMES.items()}
_PAD_NAMES = {Padding.SAME: "SAME", Padding.VALID: "VALID"}
_PAD_CODES = {v: k for k, v in _PAD_NAMES.items()}

# Float tensors may appear only at the model's edges: a QUANTIZE reading a float input, a DEQUANTIZE
# writing a float output.
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


# --- reading -------------------------------------------------------------------------------------------


def load_model(source: str | Path | bytes, name: str | None = None) -> Graph:
    """Read an int8 .tflite model (a path or its bytes) into the Graph IR."""
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
        label = name or "model"
        if len(data) > MAX_FILE_BYTES:
            raise MalformedModelError(f"{label}: {len(data):,} bytes, more than any microcontroller model")
    else:
        path = Path(source)
        data = _read_file(path)
        label = name or path.stem
    try:
        return _read(data, label)
    except (MalformedModelError, UnsupportedModelError):
        raise
    except (IndexError, struct.error, ValueError, TypeError, AttributeError, UnicodeDecodeError, OverflowError) as e:
        raise MalformedModelError(f"{label}: the flatbuffer is corrupt or truncated ({type(e).__name__}: {e})") from e
    except MemoryError:
        raise MalformedModelError(f"{label}: the flatbuffer declares more data than it could hold: corrupt") from None


def _read_file(path: Path) -> bytes:
    """The file's bytes, after checking what it is and its size (a model followed by gigabytes of junk,
    or a device file, is refused before anything is read)."""
    import os
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MalformedModelError(f"{path}: no such file") from None
    except OSError as e:
        raise MalformedModelError(f"{path}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MalformedModelError(f"{path} is a folder, not a .tflite file")
    if not stat.S_ISREG(st.st_mode):
        raise MalformedModelError(f"{path} is not a regular file (a device, FIFO or socket): give a .tflite file")
    if st.st_size > MAX_FILE_BYTES:
        raise MalformedModelError(
            f"{path}: {st.st_size:,} bytes, more than any microcontroller model ({MAX_FILE_BYTES:,}): not a model?"
        )
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise MalformedModelError(f"{path}: cannot be read ({e.strerror or e})") from None


def _read(data: bytes, label: str) -> Graph:
    if len(data) < 8 or data[4:8] != b"TFL3":
        got = data[4:8] if len(data) >= 8 else b""
        raise MalformedModelError(
            f"{label}: not a .tflite file (expected the identifier 'TFL3' at bytes 4..8, found {got!r}; "
            f"{len(data)} bytes)"
        )
    root = struct.unpack_from("<I", data, 0)[0]
    if root + 4 > len(data):
        raise MalformedModelError(f"{label}: the root table offset {root} lies outside the {len(data)}-byte file")
    model = tflite.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() < 1:
        raise MalformedModelError(f"{label}: the model has no subgraph")
    sg = model.Subgraphs(0)
    nbuf = model.BuffersLength()
    tensors = [_read_tensor(model, sg.Tensors(i), i, nbuf, data, label) for i in range(sg.TensorsLength())]
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode()))
    ops: list[Op] = []
    for k in range(sg.OperatorsLength()):
        o = sg.Operators(k)
        idx = o.OpcodeIndex()
        if not 0 <= idx < len(codes):
            raise MalformedModelError(f"{label}: op {k} uses operator code {idx}, out of range (0..{len(codes) - 1})")
        kind = _OP_NAMES.get(codes[idx], f"BUILTIN_{codes[idx]}")
        if codes[idx] == BO.CUSTOM:
            kind = f"CUSTOM({model.OperatorCodes(idx).CustomCode().decode(errors='replace')})"
        if kind not in SUPPORTED_OPS:
            raise UnsupportedModelError(
                f"{label}: op {k} is {kind}, which the harness does not support. Supported ops: "
                + ", ".join(SUPPORTED_OPS)
            )
        ins = [int(v) for v in o.InputsAsNumpy()] if o.InputsLength() else []
        outs = [int(v) for v in o.OutputsAsNumpy()] if o.OutputsLength() else []
        for t in ins + outs:
            if t != -1 and not 0 <= t < len(tensors):
                raise MalformedModelError(f"{label}: op {k} ({kind}) names tensor {t}, out of range")
        if not outs:
            raise MalformedModelError(f"{label}: op {k} ({kind}) has no output")
        need = REQUIRED_INPUTS.get(kind, 1)
        if len(ins) < need or any(t < 0 for t in ins[:need]):
            raise MalformedModelError(f"{label}: op {k} ({kind}) lacks a required input (inputs {ins})")
        try:
            options = _read_options(kind, o, ins, tensors, k, label)
        except MalformedModelError as e:
            if not str(e).startswith("its options"):
                raise
            raise MalformedModelError(f"{label}: op {k} ({kind}): {e}") from None
        # RESHAPE's shape and MEAN's axes live in options; PAD's paddings too. Their constant inputs stay
        # listed so the graph keeps the file's structure, and the writer re-creates them when absent.
        ops.append(Op(kind, ins, outs, options, name=tensors[outs[0]].name or f"{kind.lower()}_{k}"))
    inputs = [int(v) for v in sg.InputsAsNumpy()] if sg.InputsLength() else []
    outputs = [int(v) for v in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    desc = model.Description()
    graph = Graph(
        label, tensors, ops, inputs, outputs, description=desc.decode(errors="replace") if desc else "", source=data
    )
    graph.validate()
    _check_supported(graph, label)
    return graph


def _read_tensor(model, t, index: int, nbuf: int, data: bytes, label: str) -> Tensor:
    name = (t.Name() or b"").decode(errors="replace")
    code = t.Type()
    if code not in _TYPE_NAMES:
        raise UnsupportedModelError(f"{label}: tensor {index} '{name}' has type code {code}, which is not supported")
    dtype = _TYPE_NAMES[code]
    shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    if any(d < 0 for d in shape):
        raise UnsupportedModelError(f"{label}: tensor {index} '{name}' has a dynamic shape {shape}")
    if t.ShapeSignatureLength() and any(int(d) < 0 for d in t.ShapeSignatureAsNumpy()):
        sig = tuple(int(d) for d in t.ShapeSignatureAsNumpy())
        if any(d < 0 for d in sig[1:]):
            raise UnsupportedModelError(
                f"{label}: tensor {index} '{name}' has a dynamic shape {sig}: give the model fixed shapes"
            )
    quant = None
    q = t.Quantization()
    if q is not None and q.ScaleLength() > 0:
        scale = q.ScaleAsNumpy().astype(np.float32)
        zps = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(1, np.int64)
        axis = int(q.QuantizedDimension())
        if axis >= len(shape) and len(shape) <= 1:
            # TOCO-era files (person_detect) carry a stray axis 3 on 1-D biases; TFLM ignores it, so do we.
            axis = 0
        if scale.size > 1 and not 0 <= axis < len(shape):
            raise MalformedModelError(f"{label}: tensor {index} '{name}' is quantized along axis {axis} of {shape}")
        if scale.size > 1 and scale.size != shape[axis]:
            raise MalformedModelError(
                f"{label}: tensor {index} '{name}' has {scale.size} scales for {shape[axis]} channels"
            )
        if zps.size not in (1, scale.size):
            raise MalformedModelError(
                f"{label}: tensor {index} '{name}' has {zps.size} zero points, {scale.size} scales"
            )
        quant = Quant(scale, zps, axis)
    b = t.Buffer()
    if not 0 <= b < max(nbuf, 1):
        raise MalformedModelError(f"{label}: tensor {index} '{name}' names buffer {b}, out of range (0..{nbuf - 1})")
    values = None
    if b > 0 and nbuf:
        buf = model.Buffers(b)
        raw: bytes | None = None
        if buf.Offset() > 1:  # large models keep buffers after the flatbuffer
            off, size = int(buf.Offset()), int(buf.Size())
            if off + size > len(data):
                raise MalformedModelError(f"{label}: buffer {b} lies outside the file")
            raw = data[off : off + size]
        elif buf.DataLength() > 0:
            raw = buf.DataAsNumpy().tobytes()
        if raw:
            np_dtype = np.dtype(dtype).newbyteorder("<")
            count = math.prod(shape)  # Python ints: a corrupt shape cannot wrap around to match
            if len(raw) != count * np_dtype.itemsize:
                raise MalformedModelError(
                    f"{label}: tensor {index} '{name}' of shape {shape} {dtype} needs {count * np_dtype.itemsize} "
                    f"bytes, its buffer {b} holds {len(raw)}"
                )
            values = np.frombuffer(raw, dtype=np_dtype).astype(np.dtype(dtype)).reshape(shape)
    return Tensor(name, shape, dtype, quant, values)


# The options table each op reads, by its BuiltinOptions type code (a table of another type would be
# read with the wrong field layout).
_OPTION_TYPES = {
    "Conv2DOptions": BOpt.Conv2DOptions,
    "DepthwiseConv2DOptions": BOpt.DepthwiseConv2DOptions,
    "FullyConnectedOptions": BOpt.FullyConnectedOptions,
    "Pool2DOptions": BOpt.Pool2DOptions,
    "AddOptions": BOpt.AddOptions,
    "ConcatenationOptions": BOpt.ConcatenationOptions,
    "SoftmaxOptions": BOpt.SoftmaxOptions,
    "ReducerOptions": BOpt.ReducerOptions,
}


def _opts(table_cls, o):
    table = o.BuiltinOptions()
    if table is None:
        return None
    want = _OPTION_TYPES[table_cls.__name__]
    if o.BuiltinOptionsType() != want:
        raise MalformedModelError(
            f"its options are of type {o.BuiltinOptionsType()}, not {table_cls.__name__} ({want})"
        )
    obj = table_cls()
    obj.Init(table.Bytes, table.Pos)
    return obj


def _act(code: int, k: int, kind: str, label: str) -> str:
    if code not in _ACT_NAMES:
        raise UnsupportedModelError(f"{label}: op {k} ({kind}) has fused activation code {code}, not supported")
    return _ACT_NAMES[code]


def _const(tensors: list[Tensor], ins: list[int], pos: int, k: int, kind: str, label: str) -> np.ndarray:
    if len(ins) <= pos or ins[pos] < 0 or not tensors[ins[pos]].is_const:
        raise UnsupportedModelError(f"{label}: op {k} ({kind}) needs a constant input {pos}")
    return tensors[ins[pos]].data


def _read_options(kind: str, o, ins: list[int], tensors: list[Tensor], k: int, label: str) -> dict[str, Any]:
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions
        p = _opts(cls, o)
        if p is None:
            raise MalformedModelError(f"{label}: op {k} ({kind}) has no options")
        out = {
            "stride": (int(p.StrideH()), int(p.StrideW())),
            "dilation": (int(p.DilationHFactor()), int(p.DilationWFactor())),
            "padding": _PAD_NAMES.get(p.Padding(), "?"),
            "activation": _act(p.FusedActivationFunction(), k, kind, label),
        }
        if out["padding"] == "?" or min(out["stride"] + out["dilation"]) < 1:
            raise MalformedModelError(f"{label}: op {k} ({kind}) has invalid padding/stride/dilation")
        if kind == "DEPTHWISE_CONV_2D":
            w = tensors[ins[1]]
            x = tensors[ins[0]]
            # The stored depth multiplier is unreliable in old files: the shapes decide.
            out["depth_multiplier"] = max(1, w.shape[3] // max(1, x.shape[3])) if len(x.shape) == 4 else 1
        return out
    if kind == "FULLY_CONNECTED":
        p = _opts(tflite.FullyConnectedOptions, o)
        return {
            "activation": _act(p.FusedActivationFunction(), k, kind, label) if p else "NONE",
            "keep_num_dims": bool(p.KeepNumDims()) if p else False,
        }
    if kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        p = _opts(tflite.Pool2DOptions, o)
        if p is None:
            raise MalformedModelError(f"{label}: op {k} ({kind}) has no options")
        return {
            "filter": (int(p.FilterHeight()), int(p.FilterWidth())),
            "stride": (int(p.StrideH()), int(p.StrideW())),
            "padding": _PAD_NAMES.get(p.Padding(), "VALID"),
            "activation": _act(p.FusedActivationFunction(), k, kind, label),
        }
    if kind == "ADD":
        p = _opts(tflite.AddOptions, o)
        return {"activation": _act(p.FusedActivationFunction(), k, kind, label) if p else "NONE"}
    if kind == "CONCATENATION":
        p = _opts(tflite.ConcatenationOptions, o)
        rank = len(tensors[o.Outputs(0)].shape)
        axis = int(p.Axis()) if p else 0
        return {
            "axis": axis + rank if axis < 0 else axis,
            "activation": _act(p.FusedActivationFunction(), k, kind, label) if p else "NONE",
        }
    if kind == "SOFTMAX":
        p = _opts(tflite.SoftmaxOptions, o)
        return {"beta": float(p.Beta()) if p else 1.0}
    if kind == "MEAN":
        p = _opts(tflite.ReducerOptions, o)
        axes = _const(tensors, ins, 1, k, kind, label).reshape(-1)
        rank = len(tensors[ins[0]].shape)
        return {
            "axes": tuple(sorted({int(a) + rank if a < 0 else int(a) for a in axes})),
            "keep_dims": bool(p.KeepDims()) if p else False,
        }
    if kind == "PAD":
        pads = _const(tensors, ins, 1, k, kind, label)
        return {"paddings": tuple((int(a), int(b)) for a, b in pads.reshape(-1, 2))}
    return {}


def _check_supported(graph: Graph, label: str) -> None:
    """int8 interior only: float is allowed at the boundary (QUANTIZE in, DEQUANTIZE out)."""
    for k, op in enumerate(graph.ops):
        acts = [graph.tensors[t] for t in op.inputs + op.outputs if t >= 0 and not graph.tensors[t].is_const]
        if op.kind in _BOUNDARY_OPS:
            continue
        for t in acts:
            if t.dtype != "int8":
                raise UnsupportedModelError(
                    f"{label}: op {k} ({op.kind}) works on {t.dtype} tensor '{t.name}': the harness runs int8 "
                    "models; quantize to int8 first (full-integer post-training quantization)"
                )
            if t.quant is None:
                raise UnsupportedModelError(
                    f"{label}: int8 tensor '{t.name}' of op {k} ({op.kind}) has no quantization"
                )
    for t in graph.inputs + graph.outputs:
        ten = graph.tensors[t]
        if ten.dtype not in ("int8", "float32"):
            raise UnsupportedModelError(
                f"{label}: model input/output '{ten.name}' is {ten.dtype}: quantize to int8 first"
            )
        if len(ten.shape) == 0 or (len(ten.shape) > 1 and ten.shape[0] != 1):
            raise UnsupportedModelError(f"{label}: model input/output '{ten.name}' has shape {ten.shape}: batch 1 only")
    for k, op in enumerate(graph.ops):
        if op.kind not in _BOUNDARY_OPS:
            continue
        src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        ok = (src.dtype, dst.dtype) == ("int8", "int8")
        ok |= op.kind == "QUANTIZE" and src.dtype == "float32" and dst.dtype == "int8" and op.inputs[0] in graph.inputs
        ok |= (
            op.kind == "DEQUANTIZE"
            and src.dtype == "int8"
            and dst.dtype == "float32"
            and op.outputs[0] in graph.outputs
        )
        if not ok:
            raise UnsupportedModelError(
                f"{label}: op {k} ({op.kind}) converts {src.dtype} to {dst.dtype} inside the model: only int8 "
                "interiors are supported (float only at the model's input and output); quantize to int8 first"
            )


# --- writing -------------------------------------------------------------------------------------------


def save_model(graph: Graph, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(to_tflite_bytes(graph))
    return path


def to_tflite_bytes(graph: Graph, check: bool = True) -> bytes:
    """Serialise a Graph IR as a TFLite flatbuffer (schema version 3) that the interpreter loads.
    `check=False` writes a graph that does not validate (the fuzz tests make hostile files with it)."""
    if check:
        graph.validate()
    tensors = list(graph.tensors)
    ops = [_with_const_inputs(graph, op, tensors) for op in graph.ops]
    b = flatbuffers.Builder(1024 + sum(t.nbytes for t in tensors if t.is_const))

    # Buffers: 0 is the empty sentinel, then one per constant tensor.
    buffer_of: dict[int, int] = {}
    buf_offsets = [_buffer(b, None)]
    for i, t in enumerate(tensors):
        if t.is_const:
            buffer_of[i] = len(buf_offsets)
            buf_offsets.append(_buffer(b, np.ascontiguousarray(t.data, dtype=np.dtype(t.dtype).newbyteorder("<"))))

    kinds = sorted({op.kind for op in ops}, key=SUPPORTED_OPS.index)
    code_index = {k: i for i, k in enumerate(kinds)}
    code_offsets = []
    for k in kinds:
        code = _OP_CODES[k]
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        code_offsets.append(tflite.OperatorCodeEnd(b))

    tensor_offsets = [_tensor(b, t, buffer_of.get(i, 0)) for i, t in enumerate(tensors)]
    op_offsets = [_operator(b, graph, op, code_index[op.kind], tensors) for op in ops]

    t_vec = _vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
    in_vec = _int_vector(b, tflite.SubGraphStartInputsVector, graph.inputs)
    out_vec = _int_vector(b, tflite.SubGraphStartOutputsVector, graph.outputs)
    op_vec = _vector(b, tflite.SubGraphStartOperatorsVector, op_offsets)
    sg_name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, t_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    tflite.SubGraphAddOperators(b, op_vec)
    tflite.SubGraphAddName(b, sg_name)
    sg = tflite.SubGraphEnd(b)

    codes_vec = _vector(b, tflite.ModelStartOperatorCodesVector, code_offsets)
    sgs_vec = _vector(b, tflite.ModelStartSubgraphsVector, [sg])
    bufs_vec = _vector(b, tflite.ModelStartBuffersVector, buf_offsets)
    desc = b.CreateString(graph.description or f"harness: {graph.name}")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, sgs_vec)
    tflite.ModelAddDescription(b, desc)
    tflite.ModelAddBuffers(b, bufs_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _with_const_inputs(graph: Graph, op: Op, tensors: list[Tensor]) -> Op:
    """RESHAPE, MEAN and PAD carry their shape/axes/paddings in options; the file wants constant inputs."""

    def const(name: str, values) -> int:
        arr = np.asarray(values, dtype=np.int32)
        tensors.append(Tensor(name, tuple(arr.shape), "int32", None, arr))
        return len(tensors) - 1

    ins = list(op.inputs)
    if op.kind == "RESHAPE" and (len(ins) < 2 or ins[1] < 0):
        shape = graph.tensors[op.outputs[0]].shape
        ins = [ins[0], const(f"{op.name}/shape", list(shape))]
    elif op.kind == "MEAN" and len(ins) < 2:
        ins = [ins[0], const(f"{op.name}/axes", list(op.options["axes"]))]
    elif op.kind == "PAD" and len(ins) < 2:
        ins = [ins[0], const(f"{op.name}/paddings", [list(p) for p in op.options["paddings"]])]
    return Op(op.kind, ins, list(op.outputs), op.options, op.name)


def _buffer(b: flatbuffers.Builder, data: np.ndarray | None) -> int:
    vec = None
    if data is not None and data.size:
        raw = data.tobytes()
        # 16-byte aligned, as the converter writes them, so int32 biases can be used in place.
        b.StartVector(1, len(raw), 16)
        b.head = b.head - len(raw)
        b.Bytes[b.head : b.head + len(raw)] = raw
        vec = _end(b, len(raw))
    tflite.BufferStart(b)
    if vec is not None:
        tflite.BufferAddData(b, vec)
    return tflite.BufferEnd(b)


def _end(b: flatbuffers.Builder, n: int) -> int:
    return b.EndVector()  # flatbuffers >= 2 counts the elements itself


def _vector(b: flatbuffers.Builder, start, offsets: list[int]) -> int:
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return _end(b, len(offsets))


def _int_vector(b: flatbuffers.Builder, start, values, prepend=None, cast=int) -> int:
    start(b, len(values))
    for v in reversed(list(values)):
        (prepend or b.PrependInt32)(cast(v))
    return _end(b, len(values))


def _tensor(b: flatbuffers.Builder, t: Tensor, buffer: int) -> int:
    name = b.CreateString(t.name)
    shape = _int_vector(b, tflite.TensorStartShapeVector, t.shape)
    q = None
    if t.quant is not None:
        scale = _int_vector(b, tflite.QuantizationParametersStartScaleVector, t.quant.scale, b.PrependFloat32, float)
        zp = _int_vector(b, tflite.QuantizationParametersStartZeroPointVector, t.quant.zero_point, b.PrependInt64)
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zp)
        tflite.QuantizationParametersAddQuantizedDimension(b, t.quant.axis if t.quant.per_channel else 0)
        q = tflite.QuantizationParametersEnd(b)
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, _TYPE_CODES[t.dtype])
    tflite.TensorAddBuffer(b, buffer)
    tflite.TensorAddName(b, name)
    if q is not None:
        tflite.TensorAddQuantization(b, q)
    return tflite.TensorEnd(b)


def _operator(b: flatbuffers.Builder, graph: Graph, op: Op, code: int, tensors: list[Tensor]) -> int:
    opt_type, opt = _write_options(b, op, tensors)
    ins = _int_vector(b, tflite.OperatorStartInputsVector, op.inputs)
    outs = _int_vector(b, tflite.OperatorStartOutputsVector, op.outputs)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, code)
    tflite.OperatorAddInputs(b, ins)
    tflite.OperatorAddOutputs(b, outs)
    if opt is not None:
        tflite.OperatorAddBuiltinOptionsType(b, opt_type)
        tflite.OperatorAddBuiltinOptions(b, opt)
    return tflite.OperatorEnd(b)


def _write_options(b: flatbuffers.Builder, op: Op, tensors: list[Tensor]) -> tuple[int, int | None]:
    o = op.options
    act = _ACT_CODES[o.get("activation", "NONE")] if o.get("activation", "NONE") in ACTIVATIONS else AF.NONE
    k = op.kind
    if k == "CONV_2D":
        tflite.Conv2DOptionsStart(b)
        tflite.Conv2DOptionsAddPadding(b, _PAD_CODES[o["padding"]])
        tflite.Conv2DOptionsAddStrideH(b, o["stride"][0])
        tflite.Conv2DOptionsAddStrideW(b, o["stride"][1])
        tflite.Conv2DOptionsAddDilationHFactor(b, o.get("dilation", (1, 1))[0])
        tflite.Conv2DOptionsAddDilationWFactor(b, o.get("dilation", (1, 1))[1])
        tflite.Conv2DOptionsAddFusedActivationFunction(b, act)
        return BOpt.Conv2DOptions, tflite.Conv2DOptionsEnd(b)
    if k == "DEPTHWISE_CONV_2D":
        tflite.DepthwiseConv2DOptionsStart(b)
        tflite.DepthwiseConv2DOptionsAddPadding(b, _PAD_CODES[o["padding"]])
        tflite.DepthwiseConv2DOptionsAddStrideH(b, o["stride"][0])
        tflite.DepthwiseConv2DOptionsAddStrideW(b, o["stride"][1])
        tflite.DepthwiseConv2DOptionsAddDilationHFactor(b, o.get("dilation", (1, 1))[0])
        tflite.DepthwiseConv2DOptionsAddDilationWFactor(b, o.get("dilation", (1, 1))[1])
        tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, o.get("depth_multiplier", 1))
        tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(b, act)
        return BOpt.DepthwiseConv2DOptions, tflite.DepthwiseConv2DOptionsEnd(b)
    if k == "FULLY_CONNECTED":
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, act)
        tflite.FullyConnectedOptionsAddKeepNumDims(b, bool(o.get("keep_num_dims", False)))
        return BOpt.FullyConnectedOptions, tflite.FullyConnectedOptionsEnd(b)
    if k in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        tflite.Pool2DOptionsStart(b)
        tflite.Pool2DOptionsAddPadding(b, _PAD_CODES[o["padding"]])
        tflite.Pool2DOptionsAddStrideH(b, o["stride"][0])
        tflite.Pool2DOptionsAddStrideW(b, o["stride"][1])
        tflite.Pool2DOptionsAddFilterHeight(b, o["filter"][0])
        tflite.Pool2DOptionsAddFilterWidth(b, o["filter"][1])
        tflite.Pool2DOptionsAddFusedActivationFunction(b, act)
        return BOpt.Pool2DOptions, tflite.Pool2DOptionsEnd(b)
    if k == "ADD":
        tflite.AddOptionsStart(b)
        tflite.AddOptionsAddFusedActivationFunction(b, act)
        return BOpt.AddOptions, tflite.AddOptionsEnd(b)
    if k == "CONCATENATION":
        tflite.ConcatenationOptionsStart(b)
        tflite.ConcatenationOptionsAddAxis(b, o["axis"])
        tflite.ConcatenationOptionsAddFusedActivationFunction(b, act)
        return BOpt.ConcatenationOptions, tflite.ConcatenationOptionsEnd(b)
    if k == "SOFTMAX":
        tflite.SoftmaxOptionsStart(b)
        tflite.SoftmaxOptionsAddBeta(b, o.get("beta", 1.0))
        return BOpt.SoftmaxOptions, tflite.SoftmaxOptionsEnd(b)
    if k == "MEAN":
        tflite.ReducerOptionsStart(b)
        tflite.ReducerOptionsAddKeepDims(b, bool(o.get("keep_dims", False)))
        return BOpt.ReducerOptions, tflite.ReducerOptionsEnd(b)
    if k == "RESHAPE":
        shape = tensors[op.outputs[0]].shape
        vec = _int_vector(b, tflite.ReshapeOptionsStartNewShapeVector, shape)
        tflite.ReshapeOptionsStart(b)
        tflite.ReshapeOptionsAddNewShape(b, vec)
        return BOpt.ReshapeOptions, tflite.ReshapeOptionsEnd(b)
    if k == "PAD":
        tflite.PadOptionsStart(b)
        return BOpt.PadOptions, tflite.PadOptionsEnd(b)
    if k == "QUANTIZE":
        tflite.QuantizeOptionsStart(b)
        return BOpt.QuantizeOptions, tflite.QuantizeOptionsEnd(b)
    if k == "DEQUANTIZE":
        tflite.DequantizeOptionsStart(b)
        return BOpt.DequantizeOptions, tflite.DequantizeOptionsEnd(b)
    return BOpt.NONE, None
