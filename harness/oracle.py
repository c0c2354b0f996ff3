"""The real TFLite interpreter as an oracle: LiteRT with its REFERENCE kernels (OpResolverType.BUILTIN_REF),
whose integer arithmetic the numpy reference and the generated C must match bit for bit. (The default,
optimised kernels round differently in places: person_detect gives [73, -73] there and [72, -72] here.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import HarnessError


def _interpreter(model: bytes):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as e:  # a test extra, not a runtime dependency
        raise HarnessError("the TFLite oracle needs LiteRT: pip install ai-edge-litert") from e
    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    return it


def run_tflite(model: bytes | Path | str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run one inference in the interpreter; outputs in the subgraph's output order."""
    blob = model if isinstance(model, bytes) else Path(model).read_bytes()
    it = _interpreter(blob)
    details = it.get_input_details()
    if len(details) != len(inputs):
        raise HarnessError(f"the model takes {len(details)} inputs, got {len(inputs)}")
    for d, x in zip(details, inputs, strict=True):
        it.set_tensor(d["index"], np.asarray(x, dtype=d["dtype"]).reshape(d["shape"]))
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def litert_compatible(model: bytes) -> bytes:
    """The model's own bytes with one patch LiteRT needs. Files from the old TOCO converter (person_detect)
    carry quantized_dimension 3 on 1-D (bias) tensors, which TFLM tolerates and LiteRT rejects. The stray
    field is overwritten in place with 0, and nothing else changes, so the interpreter stays an oracle
    independent of our reader and writer (a round trip through them would hide a bug that survives it)."""
    import tflite

    out = bytearray(model)
    root = tflite.Model.GetRootAsModel(out, 0)
    for si in range(root.SubgraphsLength()):
        sub = root.Subgraphs(si)
        for ti in range(sub.TensorsLength()):
            t = sub.Tensors(ti)
            q = t.Quantization()
            if q is None or t.ShapeLength() > 1:
                continue
            slot = q._tab.Offset(16)  # vtable slot of quantized_dimension (field 6)
            if slot and q.QuantizedDimension() >= max(t.ShapeLength(), 1):
                pos = q._tab.Pos + slot
                out[pos : pos + 4] = (0).to_bytes(4, "little")
    return bytes(out)
