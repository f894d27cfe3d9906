"""Model registry: an MLflow facade for versions, aliases, lineage tags and loading predictors by ref."""

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
    "META_FILE",
    "MODEL_FILE",
    "PREVIOUS",
    "PRODUCTION",
    "REF_STATS_FILE",
    "LoadedModel",
    "ModelVersionInfo",
    "Registry",
    "parse_ref",
    "validate_name",
]
