"""Models: the tabular MLP (preprocessing inside), ONNX export with a parity check, and the ONNX predictor."""

from rayml.models.mlp import (
    ModelSpec,
    TabularMLP,
    build_model,
    build_spec,
    encode_categorical,
    encode_numeric,
    torch_predict,
)
from rayml.models.onnx_export import PARITY_ATOL, check_parity, export_onnx
from rayml.models.predictor import OnnxPredictor, TensorInfo

__all__ = [
    "PARITY_ATOL",
    "ModelSpec",
    "OnnxPredictor",
    "TabularMLP",
    "TensorInfo",
    "build_model",
    "build_spec",
    "check_parity",
    "encode_categorical",
    "encode_numeric",
    "export_onnx",
    "torch_predict",
]
