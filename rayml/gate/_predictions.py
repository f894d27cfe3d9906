"""What a model answers for the validation rows, and the labels it is judged against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayml.data.schema import class_labels_of
from rayml.errors import DataError
from rayml.models import ModelDir
from rayml.models.metrics import primary_metric, task_metrics
from rayml.models.predictor import LABEL, PROBABILITIES
from rayml.registry import LoadedModel


def relative_regression(task: str, candidate: float, baseline: float) -> float:
    """How much worse the candidate is, relative to the baseline (negative = better)."""
    _, higher = primary_metric(task)
    if not np.isfinite(baseline) or baseline == 0:
        return 0.0 if candidate == baseline else float("inf")
    return (baseline - candidate) / abs(baseline) if higher else (candidate - baseline) / abs(baseline)


@dataclass
class Predictions:
    """What one model answered for the validation rows: values (regression), P(class 1) (binary) or labels and
    probabilities [N, K] in class-label order (multiclass)."""

    values: np.ndarray
    proba: np.ndarray | None = None

    def metrics(self, task: str, y: np.ndarray, class_labels: Sequence[Any], mask: Any = slice(None)) -> dict[str, float]:
        """:func:`task_metrics` of these predictions (of the rows ``mask`` selects) against ``y``."""
        proba = self.proba[mask] if self.proba is not None else None
        return task_metrics(task, y[mask], self.values[mask], proba=proba, class_labels=list(class_labels) or None)


def predict(model: LoadedModel | ModelDir, df: pd.DataFrame) -> Predictions:
    """Score ``df`` with any registered kind (a model set routes rows to its segments' models)."""
    md = model if isinstance(model, ModelDir) else model.model_dir
    outputs, _ = md.predict_outputs(df)
    if md.task == "multiclass":
        return Predictions(np.asarray(outputs[LABEL], dtype=object), np.asarray(outputs[PROBABILITIES], dtype="float64"))
    return Predictions(np.asarray(outputs[md.outputs[0].name], dtype="float64"))


def true_labels(data: pd.DataFrame, target: str, model: ModelDir) -> np.ndarray:
    """The target column as the model's task reads it: numbers, or (multiclass) labels that must be its classes.

    Raises:
        DataError: a multiclass label is not one of the model's class labels (they are listed).
    """
    if model.task == "regression":
        return data[target].to_numpy(dtype="float64")
    if model.task == "binary":
        return _binary_truth(data[target], target, model)
    y = class_labels_of(data[target], target)
    classes = model.class_labels
    known = set(classes)
    unknown = sorted({v for v in y.tolist() if v not in known}, key=str)
    if unknown:
        rows = int(sum(1 for v in y.tolist() if v not in known))
        raise DataError(
            f"the validation data's target {target!r} has {len(unknown)} label(s) that are not classes of "
            f"{model.name}: {unknown[:20]} ({rows} row(s)); its classes are {classes}",
            hint="validate on data labelled with the model's classes (or retrain the model on data that has "
            "these classes); note that 1 and '1' are different labels",
        )
    return y


def _binary_truth(values: pd.Series, target: str, model: ModelDir) -> np.ndarray:
    """A binary target as 0/1: 1 where the label is the model's positive class (``class_labels[1]``; 1 by default).

    Raises:
        DataError: a label is neither of the model's two classes.
    """
    negative, positive = (model.class_labels or [0, 1])[:2]
    seen = pd.unique(values.dropna())
    known = {negative, positive}
    unknown = [v for v in seen.tolist() if v not in known]
    if unknown or values.isna().any():
        raise DataError(
            f"the validation data's target {target!r} holds {sorted(map(str, unknown))[:10] or 'missing values'}, "
            f"not only the classes of {model.name}: {[negative, positive]}",
            hint="validate on data labelled with the model's two classes (no missing labels)",
        )
    truth: np.ndarray = (values == positive).to_numpy(dtype="float64")
    return truth
