"""Bring your own model: convert a model made elsewhere into a rayml model directory, checked for parity.

:func:`convert` takes a fitted scikit-learn estimator or Pipeline (skl2onnx), an XGBoost or LightGBM model
(onnxmltools), a ``torch.nn.Module`` (``torch.onnx``), an ONNX model, or an MLflow model with an ``onnx`` flavor. The
converted graph is wrapped so that it takes one raw input per column and answers with the model contract's outputs
(:mod:`rayml.models.predictor`), exactly like a model rayml trained; its answers are compared with the source model's
on the sample rows (:class:`rayml.errors.OnnxParityError` lists the worst rows when they differ). Registering the
result is the registry's business: :func:`rayml.register_model` and ``rayml models register``.

Files are read in safe formats only (:func:`load_onnx`, :func:`load_xgboost`, :func:`load_lightgbm`,
:func:`load_skops` with its trusted-types check), never a pickle. The frameworks and converters (``pip install
rayml[sklearn,xgboost,lightgbm]``) are imported only when a model of theirs is converted: serving needs none of them.
"""

from rayml.models.importers._convert import ACCEPTED, ConvertedModel, convert, is_mlflow_uri, prepare
from rayml.models.importers._lightgbm import load_lightgbm
from rayml.models.importers._onnx import load_mlflow, load_onnx
from rayml.models.importers._parity import PARITY_ATOL, PARITY_RTOL, Answers, check_parity, plain_labels
from rayml.models.importers._sklearn import load_skops
from rayml.models.importers._xgboost import load_xgboost

__all__ = [
    "ACCEPTED",
    "PARITY_ATOL",
    "PARITY_RTOL",
    "Answers",
    "ConvertedModel",
    "check_parity",
    "convert",
    "is_mlflow_uri",
    "load_lightgbm",
    "load_mlflow",
    "load_onnx",
    "load_skops",
    "load_xgboost",
    "plain_labels",
    "prepare",
]
