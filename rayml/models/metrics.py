"""Metrics shared by training, tuning, many models, the validation gate and monitoring.

:func:`task_metrics` is the one place a task's metrics are defined: regression (``rmse``, ``mae``), binary (``auc``,
``accuracy``, ``logloss``) and multiclass (``accuracy``, ``macro_f1``, ``logloss``). :func:`primary_metric` names the
one each task is judged by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

_EPS = 1e-7


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties get average ranks. NaN with one class."""
    pos = np.asarray(y) > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(p)).rank().to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def primary_metric(task: str) -> tuple[str, bool]:
    """The metric a task is judged by, and whether higher is better."""
    if task == "binary":
        return "auc", True
    if task == "multiclass":
        return "macro_f1", True
    return "rmse", False


def macro_f1(y: Sequence[Any] | np.ndarray, pred: Sequence[Any] | np.ndarray, class_labels: Sequence[Any]) -> float:
    """Unweighted mean of the per-class F1 scores over ``class_labels`` (a class never true nor predicted counts 0)."""
    yt, yp = np.asarray(y, dtype=object), np.asarray(pred, dtype=object)
    scores = []
    for c in class_labels:
        tp = float(np.sum((yt == c) & (yp == c)))
        fp = float(np.sum((yt != c) & (yp == c)))
        fn = float(np.sum((yt == c) & (yp != c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def multiclass_logloss(y: Sequence[Any] | np.ndarray, proba: np.ndarray, class_labels: Sequence[Any]) -> float:
    """Mean negative log probability of the true class (``proba`` [N, K] in ``class_labels`` order).

    Raises:
        ValueError: a true label is not one of ``class_labels``.
    """
    index = {c: i for i, c in enumerate(class_labels)}
    try:
        cols = np.fromiter((index[v] for v in np.asarray(y, dtype=object)), dtype=np.int64, count=len(y))
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} is not one of the model's classes {list(class_labels)}") from None
    p = np.clip(np.asarray(proba, dtype=np.float64)[np.arange(len(cols)), cols], _EPS, 1.0)
    return float(-np.mean(np.log(p))) if len(p) else float("nan")


def task_metrics(
    task: str,
    y: Sequence[Any] | np.ndarray,
    pred: np.ndarray,
    *,
    proba: np.ndarray | None = None,
    class_labels: Sequence[Any] | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """A task's metrics, in the target's terms (comparable across versions, segments and the global model).

    Args:
        task: regression | binary | multiclass.
        y: true values (multiclass: true labels, of the same type as ``class_labels``).
        pred: regression: predicted values; binary: the probability of class 1; multiclass: predicted labels.
        proba: multiclass: probabilities [N, K] in ``class_labels`` order (``logloss`` needs them; left out without).
        class_labels: multiclass: the model's classes (default: the classes seen in ``y`` and ``pred``).
        prefix: put before every name (``val_``).

    Returns:
        {} for no rows.
    """
    if len(y) == 0:
        return {}
    out: dict[str, float]
    if task == "multiclass":
        yt, yp = np.asarray(y, dtype=object), np.asarray(pred, dtype=object)
        labels = list(class_labels) if class_labels is not None else sorted(set(yt) | set(yp), key=str)
        out = {"accuracy": float(np.mean(yt == yp)), "macro_f1": macro_f1(yt, yp, labels)}
        if proba is not None:
            out["logloss"] = multiclass_logloss(yt, proba, labels)
    elif task == "binary":
        yb = np.asarray(y, dtype=np.float64)
        p = np.asarray(pred, dtype=np.float64)
        pc = np.clip(p, _EPS, 1 - _EPS)
        out = {
            "auc": roc_auc(yb, p),
            "accuracy": float(np.mean((p > 0.5) == (yb > 0.5))),
            "logloss": float(-np.mean(yb * np.log(pc) + (1 - yb) * np.log(1 - pc))),
        }
    else:
        err = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
        out = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}
    return {f"{prefix}{k}": v for k, v in out.items()}
