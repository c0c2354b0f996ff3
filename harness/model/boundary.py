"""The float boundary. Published int8 models often take float32 in and give float32 out around an int8
interior (QUANTIZE first, DEQUANTIZE last). The device only ever sees the int8 interior: the host quantizes
inputs and dequantizes outputs with the boundary ops' own parameters."""

from __future__ import annotations

import numpy as np

from harness.model.ir import Graph
from harness.model.params import BoundaryParams


def split_boundary(graph: Graph) -> tuple[Graph, list[BoundaryParams | None], list[BoundaryParams | None]]:
    """The int8 interior graph, and per original input/output the float boundary's params (None: int8)."""
    producer = graph.producer()
    consumers = graph.consumers()
    drop: set[int] = set()
    inputs: list[int] = []
    in_bounds: list[BoundaryParams | None] = []
    for t in graph.inputs:
        users = consumers.get(t, [])
        op = graph.ops[users[0]] if len(users) == 1 else None
        if graph.tensors[t].dtype == "float32" and op is not None and op.kind == "QUANTIZE":
            q = graph.tensors[op.outputs[0]].quant
            drop.add(users[0])
            inputs.append(op.outputs[0])
            in_bounds.append(BoundaryParams(q.s, q.zp))
        else:
            inputs.append(t)
            in_bounds.append(None)
    outputs: list[int] = []
    out_bounds: list[BoundaryParams | None] = []
    for t in graph.outputs:
        k = producer.get(t)
        op = graph.ops[k] if k is not None else None
        if graph.tensors[t].dtype == "float32" and op is not None and op.kind == "DEQUANTIZE":
            q = graph.tensors[op.inputs[0]].quant
            drop.add(k)
            outputs.append(op.inputs[0])
            out_bounds.append(BoundaryParams(q.s, q.zp))
        else:
            outputs.append(t)
            out_bounds.append(None)
    if not drop:
        return graph, in_bounds, out_bounds
    ops = [op for i, op in enumerate(graph.ops) if i not in drop]
    interior = Graph(graph.name, graph.tensors, ops, inputs, outputs, graph.description)
    interior.validate()
    return interior, in_bounds, out_bounds


def quantize_input(x: np.ndarray, bp: BoundaryParams | None) -> np.ndarray:
    """float32 -> int8 as TFLite's QUANTIZE does: round half away from zero, add the zero point, clamp."""
    if bp is None:
        return np.asarray(x, dtype=np.int8)
    scaled = np.asarray(x, dtype=np.float32) / np.float32(bp.scale)
    q = np.round(np.abs(scaled)) * np.sign(scaled)  # np.round is half-to-even; TFLite rounds away from zero
    q = np.where(np.abs(scaled) - np.floor(np.abs(scaled)) == 0.5, np.sign(scaled) * np.ceil(np.abs(scaled)), q)
    return np.clip(q + bp.zero_point, -128, 127).astype(np.int8)


def dequantize_output(q: np.ndarray, bp: BoundaryParams | None) -> np.ndarray:
    """int8 -> float32: scale * (q - zero_point)."""
    if bp is None:
        return np.asarray(q)
    return (np.float32(bp.scale) * (np.asarray(q, dtype=np.int32) - bp.zero_point)).astype(np.float32)
