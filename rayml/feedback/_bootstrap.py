"""Live metrics of one version with seeded bootstrap confidence intervals (no Ray: plain numpy on the driver).

The point estimates are :func:`rayml.models.metrics.task_metrics` (the one definition of each metric). The intervals
are percentile bootstrap intervals over the labelled rows, resampled with replacement. A version with more rows than
``max_rows`` is resampled ``max_rows`` at a time (an m-out-of-n bootstrap) and the spread around the full-sample
estimate is rescaled by ``sqrt(m / n)``: every metric here (means of per-row losses, RMSE, AUC, macro F1) is
root-n consistent, so the cost stays flat as the data grows while the interval keeps the right width. An interval
always contains its point estimate and stays within the metric's range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayml.models.metrics import task_metrics

_EPS = 1e-7
# metrics bounded to [0, 1]; every other one is >= 0
_UNIT_METRICS = {"auc", "accuracy", "macro_f1"}


@dataclass
class Rows:
    """The labelled rows of one version, encoded for fast resampling (every row has a valid prediction).

    ``y``: regression values, binary 0/1, multiclass class codes (``K`` = a label that is not one of the classes).
    ``pred``: regression values, binary probabilities of class 1, multiclass predicted class codes (``K`` = other).
    ``proba``: multiclass [N, K] probabilities in class order (None when a row lacks them: no logloss).
    """

    task: str
    y: np.ndarray
    pred: np.ndarray
    classes: list[str]
    proba: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


def point_metrics(rows: Rows) -> dict[str, float]:
    """The task's metrics over every row (:func:`rayml.models.metrics.task_metrics`)."""
    if len(rows) == 0:
        return {}
    if rows.task != "multiclass":
        return task_metrics(rows.task, rows.y, rows.pred)
    known = rows.y < len(rows.classes)  # logloss is defined on the model's classes only
    labels = np.asarray([*rows.classes, "\x00other"], dtype=object)
    out = task_metrics("multiclass", labels[rows.y], labels[rows.pred], class_labels=rows.classes)
    if rows.proba is not None and known.any():
        out["logloss"] = task_metrics(
            "multiclass", labels[rows.y[known]], labels[rows.pred[known]], proba=rows.proba[known], class_labels=rows.classes
        )["logloss"]
    return out


def _resample_fn(rows: Rows) -> Callable[[np.ndarray], dict[str, float]]:
    """The metrics of the rows at ``idx`` (same definitions as :func:`point_metrics`, without its per-call cost)."""
    if rows.task == "regression":
        err = rows.pred - rows.y
        sq, ab = err * err, np.abs(err)
        return lambda idx: {"rmse": math.sqrt(float(sq[idx].mean())), "mae": float(ab[idx].mean())}
    if rows.task == "binary":
        pos = rows.y > 0.5
        correct = ((rows.pred > 0.5) == pos).astype(np.float64)
        p = np.clip(rows.pred, _EPS, 1 - _EPS)
        ll = -(rows.y * np.log(p) + (1 - rows.y) * np.log(1 - p))
        codes = np.unique(rows.pred, return_inverse=True)[1].ravel()  # equal probabilities share a code: ties
        return lambda idx: {
            "auc": _auc(codes[idx], pos[idx]),
            "accuracy": float(correct[idx].mean()),
            "logloss": float(ll[idx].mean()),
        }
    k = len(rows.classes)
    correct = (rows.y == rows.pred).astype(np.float64)
    known = rows.y < k
    if rows.proba is not None:
        ll_all = np.full(len(rows), np.nan)
        ll_all[known] = -np.log(np.clip(rows.proba[np.flatnonzero(known), rows.y[known]], _EPS, 1.0))
    else:
        ll_all = None

    def multiclass(idx: np.ndarray) -> dict[str, float]:
        out = {"accuracy": float(correct[idx].mean()), "macro_f1": _macro_f1(rows.y[idx], rows.pred[idx], k)}
        if ll_all is not None:
            ll = ll_all[idx]
            ll = ll[np.isfinite(ll)]
            out["logloss"] = float(ll.mean()) if len(ll) else math.nan
        return out

    return multiclass


def _auc(codes: np.ndarray, pos: np.ndarray) -> float:
    """AUC by the rank-sum formula with average ranks for ties (``codes`` orders the scores; equal code = tie)."""
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    ends = np.r_[starts[1:], len(codes)]
    ranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average rank of each tie group
    return float((ranks[pos[order]].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Macro F1 over classes ``0..k-1`` from codes (``k`` = not a class); a class never true nor predicted counts 0."""
    confusion = np.bincount(y * (k + 1) + pred, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)[:k, :k]
    tp = np.diag(confusion).astype(np.float64)
    true = np.bincount(y, minlength=k + 1)[:k]
    predicted = np.bincount(pred, minlength=k + 1)[:k]
    denom = true + predicted  # = 2tp + fp + fn
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def metrics_with_intervals(
    rows: Rows, *, confidence: float, samples: int, max_rows: int, seed: int
) -> dict[str, dict[str, float | None]]:
    """Each metric's value with its bootstrap interval: ``{"rmse": {"value": v, "low": lo, "high": hi}, ...}``.

    Args:
        rows: the version's labelled rows.
        confidence: two-sided level of the intervals (0.95).
        samples: bootstrap resamples.
        max_rows: rows per resample at most (m-out-of-n above it; see the module docstring).
        seed: the same rows and seed give the same intervals.

    Returns:
        {} for no rows; ``low`` / ``high`` are None where the metric is undefined (AUC of a single class) or too
        few resamples define it.
    """
    points = point_metrics(rows)
    n = len(rows)
    if n == 0:
        return {}
    m = min(n, max_rows)
    rng = np.random.default_rng(seed)
    fn = _resample_fn(rows)
    draws: dict[str, list[float]] = {k: [] for k in points}
    for _ in range(samples):
        for k, v in fn(rng.integers(0, n, size=m)).items():
            if k in draws:
                draws[k].append(v)
    alpha = 1.0 - confidence
    scale = math.sqrt(m / n)
    out: dict[str, dict[str, float | None]] = {}
    for name, point in points.items():
        value = float(point)
        boot = np.asarray(draws[name], dtype=np.float64)
        boot = boot[np.isfinite(boot)]
        if not math.isfinite(value) or len(boot) < max(10, samples // 2):
            out[name] = {"value": value if math.isfinite(value) else None, "low": None, "high": None}
            continue
        spread = value + scale * (boot - value)
        low, high = (float(q) for q in np.quantile(spread, [alpha / 2, 1 - alpha / 2]))
        top = 1.0 if name in _UNIT_METRICS else math.inf
        out[name] = {"value": value, "low": max(0.0, min(low, value)), "high": min(top, max(high, value))}
    return out


def encode_rows(task: str, joined: pa.Table, classes: list[str], positive: str | None) -> tuple[Rows, int]:
    """Encode one version's joined rows for :func:`metrics_with_intervals`.

    Args:
        task: regression | binary | multiclass.
        joined: ``label`` (the stored text) and ``prediction`` (regression, binary) or ``predicted_label`` and
            ``probabilities`` (multiclass, in ``classes`` order).
        classes: the version's class labels as text (multiclass).
        positive: binary: the text of class 1.

    Returns:
        The rows, and how many were left out: no usable prediction, or a regression label that is not a number.
    """
    label = joined["label"].combine_chunks()
    if task in ("regression", "binary"):
        pred = _floats(joined["prediction"].combine_chunks())
        if task == "regression":
            y = _floats(label)
        else:
            y = pc.fill_null(pc.equal(label, pa.scalar(positive or "1")), False).to_numpy(zero_copy_only=False)
            y = y.astype(np.float64)
        keep = np.isfinite(y) & np.isfinite(pred)
        return Rows(task, y[keep], pred[keep], []), int((~keep).sum())
    k = len(classes)
    value_set = pa.array(classes, pa.string())
    y_codes = _codes(label, value_set, k)
    predicted = joined["predicted_label"].combine_chunks()
    keep = pc.is_valid(predicted).to_numpy(zero_copy_only=False)
    p_codes = _codes(predicted, value_set, k)
    proba = None
    probabilities = joined["probabilities"].combine_chunks() if "probabilities" in joined.column_names else None
    if probabilities is not None and k and keep.any():
        chosen = probabilities.filter(pa.array(keep))
        lengths = pc.list_value_length(chosen).to_numpy(zero_copy_only=False)
        if chosen.null_count == 0 and (lengths == k).all():
            values = _floats(pc.list_flatten(chosen)).reshape(-1, k)
            proba = values if np.isfinite(values).all() else None
    return Rows(task, y_codes[keep], p_codes[keep], classes, proba), int((~keep).sum())


def _floats(values: pa.Array) -> np.ndarray:
    """float64 values, NaN for nulls and for text that is not a number."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            values = pc.cast(values, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = pa.array([_number(v) for v in values.to_pylist()], pa.float64())
    return pc.fill_null(pc.cast(values, pa.float64()), math.nan).to_numpy(zero_copy_only=False)


def _codes(values: pa.Array, value_set: pa.Array, k: int) -> np.ndarray:
    """The index of each value in ``value_set`` (``k`` for one that is not there, or null)."""
    return pc.fill_null(pc.index_in(values, value_set=value_set), k).to_numpy(zero_copy_only=False).astype(np.int64)


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
