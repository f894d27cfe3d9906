"""Predict with any registered kind (single model or model set) for offline monitoring and the gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rayml.registry import LoadedModel


def kind_of(loaded: LoadedModel) -> str:
    return str(loaded.meta.get("kind", "model"))


def predict_frame(loaded: LoadedModel, df: pd.DataFrame) -> np.ndarray:
    """Predictions for raw rows; a model set routes each row to its segment's model (or the fallback)."""
    if kind_of(loaded) == "model_set":
        from rayml.registry import ModelSet  # provided with many-models support

        preds, _ = ModelSet.from_loaded(loaded).predict(df)
        return np.asarray(preds, dtype="float64")
    return np.asarray(loaded.predict(df), dtype="float64")


def global_reference(loaded: LoadedModel) -> dict[str, Any]:
    """The reference bins of all training data (a model set also keeps per-segment ones)."""
    stats = loaded.reference_stats
    return stats.get("global", stats) if isinstance(stats, dict) else {}
