"""Score data with any registered kind (single model or model set) for offline monitoring and the gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rayml.models import ModelDir

if TYPE_CHECKING:
    from rayml.registry import LoadedModel


def _dir(model: LoadedModel | ModelDir) -> ModelDir:
    return model if isinstance(model, ModelDir) else model.model_dir


def predict_frame(model: LoadedModel | ModelDir, df: pd.DataFrame) -> np.ndarray:
    """Predictions for raw rows: float64 values (regression, binary) or a multiclass model's predicted labels; a model
    set routes each row to its segment's model (or the fallback).

    Args:
        model: a version from ``Registry.load`` or a model directory.
        df: raw rows: the model's input columns (and a model set's segment columns).
    """
    md = _dir(model)
    preds = md.predict_frame(df)
    return preds if md.task == "multiclass" else np.asarray(preds, dtype="float64")


def global_reference(model: LoadedModel | ModelDir) -> dict[str, Any]:
    """The reference bins of all training data ({} when none; a model set also keeps per-segment ones)."""
    return _dir(model).reference_stats()
