"""Model registry: an MLflow facade for versions, aliases, lineage tags and loading predictors by ref.

Model sets (many models: one model per segment, registered as one version) are loaded with :class:`ModelSet`.
"""

from rayml.registry._model_set import (
    FALLBACK,
    FALLBACK_FILE,
    KIND_MODEL,
    KIND_MODEL_SET,
    KIND_TAG,
    ModelSet,
    ModelSetWriter,
    is_model_set,
    segment_groups,
    segment_key,
    split_segment_key,
)
from rayml.registry._registry import (
    CANARY,
    META_FILE,
    MODEL_FILE,
    PREVIOUS,
    PRODUCTION,
    REF_STATS_FILE,
    LoadedModel,
    ModelVersionInfo,
    Registry,
    parse_ref,
    validate_name,
)

__all__ = [
    "CANARY",
    "FALLBACK",
    "FALLBACK_FILE",
    "KIND_MODEL",
    "KIND_MODEL_SET",
    "KIND_TAG",
    "META_FILE",
    "MODEL_FILE",
    "PREVIOUS",
    "PRODUCTION",
    "REF_STATS_FILE",
    "LoadedModel",
    "ModelSet",
    "ModelSetWriter",
    "ModelVersionInfo",
    "Registry",
    "is_model_set",
    "parse_ref",
    "segment_groups",
    "segment_key",
    "split_segment_key",
    "validate_name",
]
