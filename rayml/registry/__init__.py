"""Model registry: an MLflow facade for versions, aliases, lineage tags and loading predictors by ref.

A version is a model directory (:class:`rayml.models.ModelDir`); model sets (many models: one model per segment,
registered as one version) are loaded with :class:`ModelSet`; :func:`register_model` registers a model made elsewhere
(scikit-learn, XGBoost, LightGBM, torch, ONNX, MLflow), converted and parity-checked by :func:`rayml.models.convert`.
The model-directory names exported here (file names, kinds, ``ModelSet``, ``ModelSetWriter``, segment keys) are
defined in :mod:`rayml.models`.
"""

from rayml.models.model_dir import META_FILE as META_FILE, MODEL_FILE as MODEL_FILE, REF_STATS_FILE as REF_STATS_FILE
from rayml.registry._import import IMPORT_EXPERIMENT as IMPORT_EXPERIMENT, register_model
from rayml.registry._model_set import (
    FALLBACK as FALLBACK,
    FALLBACK_FILE as FALLBACK_FILE,
    KIND_MODEL as KIND_MODEL,
    KIND_MODEL_SET as KIND_MODEL_SET,
    KIND_TAG as KIND_TAG,
    ModelSet,
    ModelSetWriter as ModelSetWriter,
    is_model_set as is_model_set,
    segment_groups as segment_groups,
    segment_key as segment_key,
    split_segment_key as split_segment_key,
)
from rayml.registry._registry import (
    CANARY,
    PREVIOUS,
    PRODUCTION,
    LoadedModel,
    ModelVersionInfo,
    Registry,
    parse_ref,
    validate_name,
)
from rayml.registry._runs import MetricPoint as MetricPoint, RunRecord as RunRecord

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "CANARY",
    "PREVIOUS",
    "PRODUCTION",
    "LoadedModel",
    "ModelSet",
    "ModelVersionInfo",
    "Registry",
    "parse_ref",
    "register_model",
    "validate_name",
]
