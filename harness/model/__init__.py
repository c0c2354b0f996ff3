"""The model stage: the Graph IR and its .tflite reader and writer."""

from harness.model.ir import SUPPORTED_OPS, Graph, Op, Quant, Tensor
from harness.model.tflite_io import load_model, save_model, to_tflite_bytes

__all__ = ["SUPPORTED_OPS", "Graph", "Op", "Quant", "Tensor", "load_model", "save_model", "to_tflite_bytes"]
