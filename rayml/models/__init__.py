"""Models: the model contract (:class:`ModelDir`, model sets), the tabular MLP (preprocessing inside), ONNX export
with a parity check, and the ONNX predictor.

:class:`ModelDir` is the one type that reads and writes a model directory (a single model or a model set): every
other package goes through it. The predictor needs only onnxruntime, loaded when the first predictor is created;
the MLP and the export need torch. Those names load on first use (PEP 562), so serving replicas and batch actors that
only predict never import torch (about a second and 230 MB each). :func:`convert` brings a model made elsewhere
(scikit-learn, XGBoost, LightGBM, torch, ONNX, MLflow) into a model directory (:mod:`rayml.models.importers`); it
loads on first use too, and imports a framework only to convert one of its models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayml._private.lazy import lazy_getattr
from rayml.models._probe import PERF_TAGS as PERF_TAGS, probe_serving
from rayml.models.model_dir import KIND_MODEL, KIND_MODEL_SET, ModelDir
from rayml.models.model_set import FALLBACK as FALLBACK, ModelSet, ModelSetWriter
from rayml.models.predictor import OnnxPredictor, TensorInfo
from rayml.models.segments import segment_groups as segment_groups, segment_key, split_segment_key as split_segment_key

if TYPE_CHECKING:
    from rayml.models.importers import convert
    from rayml.models.mlp import (
        ModelSpec as ModelSpec,
        TabularMLP as TabularMLP,
        build_model as build_model,
        build_spec as build_spec,
        encode_categorical as encode_categorical,
        encode_numeric as encode_numeric,
        torch_predict as torch_predict,
    )
    from rayml.models.onnx_export import PARITY_ATOL as PARITY_ATOL, check_parity as check_parity, export_onnx as export_onnx

# loaded on first use: the torch-backed builders, shared with train / tune / manymodels (importable, not in __all__),
# and convert (public)
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
    "convert": "rayml.models.importers",
}


__getattr__ = lazy_getattr(__name__, {name: (module, name) for name, module in _LAZY.items()}, globals())


# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "KIND_MODEL",
    "KIND_MODEL_SET",
    "ModelDir",
    "ModelSet",
    "ModelSetWriter",
    "OnnxPredictor",
    "TensorInfo",
    "convert",
    "probe_serving",
    "segment_key",
]
