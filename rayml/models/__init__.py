"""Models: the tabular MLP (preprocessing inside), ONNX export with a parity check, and the ONNX predictor.

The predictor needs only onnxruntime; the MLP and the export need torch. Those names load on first use (PEP 562),
so serving replicas and batch actors that only predict never import torch (about a second and 230 MB each).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rayml.models.predictor import OnnxPredictor, TensorInfo

if TYPE_CHECKING:
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

_LAZY = {
    "ModelSpec": "rayml.models.mlp",
    "TabularMLP": "rayml.models.mlp",
    "build_model": "rayml.models.mlp",
    "build_spec": "rayml.models.mlp",
    "encode_categorical": "rayml.models.mlp",
    "encode_numeric": "rayml.models.mlp",
    "torch_predict": "rayml.models.mlp",
    "PARITY_ATOL": "rayml.models.onnx_export",
    "check_parity": "rayml.models.onnx_export",
    "export_onnx": "rayml.models.onnx_export",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rayml.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


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
