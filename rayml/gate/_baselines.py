"""The baselines a candidate must beat: a constant model (the training mean or majority class) and a linear model.

The linear baseline is ridge regression (regression) or logistic regression (binary, multiclass) on the candidate's
own feature columns: numbers median-imputed and standardised, categories one-hot encoded (up to the 50 most frequent
values per column; the rest share a column). The gate only has the validation rows, so the linear model is
*cross-fitted* on them: 5 folds, each fold's rows predicted by a model fitted on the other four, so it never scores a
row it was fitted on. It sees less data than the candidate did, which only makes it easier to beat: a candidate that
cannot is almost always a bug (leaking, mis-scaled or badly trained), not a better model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayml.gate._predictions import Predictions, relative_regression
from rayml.models import ModelDir
from rayml.models.metrics import primary_metric

LINEAR_FOLDS = 5
LINEAR_MIN_ROWS = 20  # fewer validation rows: four per fold is already a coin toss
LINEAR_MAX_ROWS = 20_000  # more: compare on a seeded sample of this many rows (keeps the fit well under a second)
_MAX_CATEGORIES = 50  # one-hot columns per categorical feature (the most frequent values; the rest share one)
_MAX_ONEHOT = 400  # one-hot columns in all: fewer per feature when there are many categorical features


def trivial_baseline(task: str, y: np.ndarray, model: ModelDir) -> tuple[Predictions, Any]:
    """The trivial model the candidate must beat, and what it predicts (the training mean or majority class).

    Uses the training target's reference bins when the model has them, else the validation rows themselves.
    """
    target_ref = model.reference_stats().get("target", {})
    if task == "multiclass":
        classes = model.class_labels
        by_text = {str(c): c for c in classes}  # the bins hold labels as text, most frequent first
        ranked = [by_text[k] for k in target_ref.get("categories", []) if k in by_text]
        shares = dict(zip(target_ref.get("categories", []), target_ref.get("shares", []), strict=False))
        priors = np.asarray([float(shares.get(str(c), 0.0)) for c in classes])
        if target_ref.get("kind") != "categorical" or not ranked or priors.sum() <= 0:  # no class bins: validation counts
            priors = np.asarray([float(np.sum(y == c)) for c in classes])
            ranked = [classes[int(np.argmax(priors))]]
        priors = priors / max(priors.sum(), 1e-12)
        majority = ranked[0]
        return Predictions(np.full(len(y), majority, dtype=object), np.tile(priors, (len(y), 1))), majority
    if task == "binary":
        share = float(target_ref.get("mean", float(np.mean(y))))
        return Predictions(np.full(len(y), 1.0 if share > 0.5 else 0.0)), share
    mean = float(target_ref.get("mean", float(np.mean(y))))
    return Predictions(np.full(len(y), mean)), mean


def beats_trivial(task: str, cm: dict[str, float], tm: dict[str, float], trivial: Any) -> list[str]:
    """Why the candidate does not beat the trivial model ([] when it does)."""
    failures = []
    if task == "binary":
        if not cm["auc"] > 0.5:
            failures.append(f"AUC {cm['auc']:.3f} does not beat a random ranking (0.5)")
        if not cm["accuracy"] > tm["accuracy"]:
            failures.append(f"accuracy {cm['accuracy']:.3f} does not beat the majority class ({tm['accuracy']:.3f})")
    elif task == "multiclass":
        for metric, shown in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            if not cm[metric] > tm[metric]:
                failures.append(
                    f"{shown} {cm[metric]:.3f} does not beat always predicting the majority class {trivial!r} ({tm[metric]:.3f})"
                )
    elif not cm["rmse"] < tm["rmse"]:
        failures.append(f"RMSE {cm['rmse']:.4g} does not beat predicting the training mean ({tm['rmse']:.4g})")
    return failures


@dataclass
class LinearBaseline:
    """The cross-fitted linear model's answers for ``rows`` (indices into the validation rows)."""

    kind: str  # what was fitted, as shown to users: "ridge regression" | "logistic regression"
    rows: np.ndarray
    predictions: Predictions


def linear_baseline(
    task: str,
    df: pd.DataFrame,
    y: np.ndarray,
    numeric: list[str],
    categorical: list[str],
    class_labels: list[Any],
    seed: int,
) -> LinearBaseline | str:
    """Cross-fitted linear predictions for the validation rows, or why there are none.

    Args:
        task: regression | binary | multiclass.
        df: the validation rows.
        y: their labels (binary: 0/1; multiclass: labels among ``class_labels``).
        numeric, categorical: the candidate's feature columns, by kind.
        class_labels: multiclass: the model's classes (the probabilities' column order).
        seed: seeds the fold split and the row sample.

    Returns:
        A :class:`LinearBaseline`, or a sentence saying why it was not fitted (scikit-learn missing, too few rows).
    """
    try:
        from sklearn.exceptions import ConvergenceWarning
    except ImportError:
        return "scikit-learn is not installed (pip install 'rayml[sklearn]')"
    if len(df) < LINEAR_MIN_ROWS:
        return f"{len(df)} validation rows are too few to cross-fit it (at least {LINEAR_MIN_ROWS})"
    if not numeric and not categorical:
        return "the model has no feature columns"
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(df), LINEAR_MAX_ROWS, replace=False)) if len(df) > LINEAR_MAX_ROWS else np.arange(len(df))
    x, yy = _design(df.iloc[rows], numeric, categorical), y[rows]
    folds = np.arange(len(rows)) % LINEAR_FOLDS
    rng.shuffle(folds)
    if task == "multiclass":
        codes = {c: i for i, c in enumerate(class_labels)}
        target = np.fromiter((codes[v] for v in yy), dtype=np.int64, count=len(yy))
        out = np.zeros((len(rows), len(class_labels)))
    else:
        target = yy.astype(np.float64)
        out = np.zeros((len(rows), 1))
    with warnings.catch_warnings():
        # a baseline, not a product: an unconverged lbfgs after 100 steps is still a fair linear model
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in range(LINEAR_FOLDS):
            test, train = folds == k, folds != k
            out[test] = _fit_predict(task, x[train], target[train], x[test], out.shape[1])
    if task == "multiclass":
        labels = np.asarray([class_labels[i] for i in out.argmax(axis=1)], dtype=object)
        return LinearBaseline("logistic regression", rows, Predictions(labels, out))
    kind = "ridge regression" if task == "regression" else "logistic regression"
    return LinearBaseline(kind, rows, Predictions(out[:, 0]))


def _design(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> np.ndarray:
    """The linear model's input matrix: numbers median-imputed and standardised, categories one-hot encoded (the most
    frequent values of each column; the rest share one column).

    Computed once over all the rows, not per fold: these steps never look at the labels, so fitting them on every
    row leaks nothing into the cross-fitted predictions (and keeps the baseline well under a second).
    """
    parts: list[np.ndarray] = []
    for c in numeric:
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        values = np.where(np.isfinite(values), values, np.nan)
        finite = values[np.isfinite(values)]
        values = np.where(np.isnan(values), float(np.median(finite)) if len(finite) else 0.0, values)
        std = float(values.std())
        parts.append(((values - values.mean()) / (std if std > 0 else 1.0)).reshape(-1, 1))
    per_column = max(5, min(_MAX_CATEGORIES, _MAX_ONEHOT // max(1, len(categorical))))
    for c in categorical:
        text = df[c].astype(object).where(df[c].notna(), "<missing>").astype(str)
        top = text.value_counts().index[:per_column]
        codes = pd.Categorical(text, categories=top).codes  # -1: a rarer value
        onehot = np.zeros((len(df), len(top) + 1))
        onehot[np.arange(len(df)), np.where(codes < 0, len(top), codes)] = 1.0
        parts.append(onehot if (codes < 0).any() else onehot[:, :-1])
    return np.hstack(parts) if parts else np.zeros((len(df), 0))


def _fit_predict(task: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, width: int) -> np.ndarray:
    """One fold: fit on ``x``/``y``, predict ``x_test`` ([n, 1] values or P(1); multiclass [n, width] probabilities)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    seen = np.unique(y)
    if task != "regression" and len(seen) < 2:  # one class in the fitting rows: predict it
        out = np.zeros((len(x_test), width))
        out[:, int(seen[0]) if task == "multiclass" else 0] = 1.0 if task == "multiclass" else float(seen[0])
        return out
    if task == "regression":
        return np.asarray(Ridge(alpha=1.0).fit(x, y).predict(x_test), dtype=np.float64).reshape(-1, 1)
    model = LogisticRegression(C=1.0, max_iter=100).fit(x, y)
    proba = np.asarray(model.predict_proba(x_test), dtype=np.float64)
    if task == "binary":
        return proba[:, list(model.classes_).index(1.0)].reshape(-1, 1)
    out = np.zeros((len(x_test), width))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = proba
    return out


def beats_linear(
    task: str, candidate: Predictions, y: np.ndarray, class_labels: list[Any], linear: LinearBaseline, tolerance: float
) -> tuple[dict[str, float], float, str | None]:
    """The linear baseline's metrics, the candidate's relative regression against it, and why it does not beat it.

    Both are judged on the same rows (``linear.rows``).
    """
    name, _ = primary_metric(task)
    lm = linear.predictions.metrics(task, y[linear.rows], class_labels)
    cm = candidate.metrics(task, y, class_labels, linear.rows)
    regression = relative_regression(task, cm[name], lm[name])
    if regression < tolerance or (not np.isfinite(lm[name]) and np.isfinite(cm[name])):
        return lm, regression, None
    allowed = "must beat it" if tolerance == 0 else f"may be at most {tolerance:.1%} worse"
    sample = f" on a sample of {len(linear.rows)} rows" if len(linear.rows) < len(y) else ""
    why = (
        f"{name} {cm[name]:.4g} does not beat a linear baseline{sample} ({linear.kind} cross-fitted on the validation rows: "
        f"{lm[name]:.4g}; the candidate {allowed}, gate.linear_tolerance)"
    )
    return lm, regression, why
