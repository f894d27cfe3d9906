"""Model sets in the registry: the registered-model tag that marks a family, and the names the registry re-exports.

A model set (many models: one model per segment) is one model directory and one registered version; the directory,
the loaded family and the writer live in :mod:`rayml.models` (they need no MLflow). ``rayml.registry`` keeps
exporting their names so existing imports keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayml.models.model_dir import FALLBACK_FILE, KIND_MODEL, KIND_MODEL_SET
from rayml.models.model_set import FALLBACK, ModelSet, ModelSetWriter
from rayml.models.segments import segment_groups, segment_key, split_segment_key

if TYPE_CHECKING:
    from rayml.registry._registry import LoadedModel

KIND_TAG = "rayml.kind"  # registered-model tag: "model_set" for a family of segment models

__all__ = [
    "FALLBACK",
    "FALLBACK_FILE",
    "KIND_MODEL",
    "KIND_MODEL_SET",
    "KIND_TAG",
    "ModelSet",
    "ModelSetWriter",
    "is_model_set",
    "segment_groups",
    "segment_key",
    "split_segment_key",
]


def is_model_set(loaded: LoadedModel) -> bool:
    """Whether a loaded version is a model set (``"kind": "model_set"``) rather than a single model."""
    return loaded.model_dir.is_model_set
