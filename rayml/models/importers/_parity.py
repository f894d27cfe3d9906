"""Parity: the converted graph answers as the source model does, row by row, on the sample.

Numbers (a regression value, a probability) may differ by ``atol + rtol * |expected|``: converters compute in float32,
so tree ensembles and long sums differ in the last digits. Classes must agree on every row, except where the
converted model's probabilities are tied within ``atol`` (the source may break the tie the other way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayml.errors import OnnxParityError

# float32 trees and sums: ~1e-6 relative in practice; these leave room without hiding a wrong conversion
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4
SHOWN_ROWS = 5


@dataclass(frozen=True)
class Answers:
    """A model's answers on the sample rows.

    Attributes:
        values: regression: the values [N]; binary: P(class_labels[1]) [N]; multiclass: the probabilities [N, K].
        labels: classifiers: the predicted class of each row (plain ints or strs), or None when the source only
            gives probabilities (the class of the highest probability is then expected).
    """

    values: np.ndarray
    labels: np.ndarray | None = None


def plain_label(value: Any) -> int | str:
    """A class label as JSON and the ``label`` output hold it: ints for integers (and whole floats, bools), else str."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def plain_labels(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    return np.asarray([plain_label(v) for v in np.asarray(values).ravel()], dtype=object)


def labels_of(task: str, values: np.ndarray, class_labels: Sequence[Any]) -> np.ndarray:
    """The class each row gets from its probabilities: P(class 1) > 0.5 (binary), else the highest."""
    index = (values > 0.5).astype(int) if task == "binary" else np.argmax(values, axis=1)
    return np.asarray([class_labels[i] for i in index], dtype=object)


def check_parity(
    expected: Answers,
    got: Answers,
    *,
    task: str,
    class_labels: Sequence[Any],
    index: pd.Index,
    source: str,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
) -> dict[str, float]:
    """Compare the source model's answers with the converted graph's on the same rows.

    Args:
        expected: the source model's answers (its own ``predict`` / ``predict_proba``).
        got: the converted graph's (onnxruntime).
        task: ``regression`` | ``binary`` | ``multiclass``.
        class_labels: classifiers: the classes in probability order.
        index: the sample's row index (rows are named by it in the error).
        source: what the source is, for the message (e.g. ``xgboost XGBRegressor``).

    Returns:
        The parity figures: ``parity_rows``, ``parity_max_abs_diff`` and (classifiers) ``parity_label_agreement``.

    Raises:
        OnnxParityError: some row differs; the message lists the worst rows (index, expected, got).
    """
    e = np.asarray(expected.values, dtype=np.float64)
    g = np.asarray(got.values, dtype=np.float64)
    if e.shape != g.shape:
        raise OnnxParityError(
            f"the converted model answers with shape {list(g.shape)}, the {source} model with {list(e.shape)}",
            hint="the model's outputs were mapped wrongly; pass task= (and class_labels=) to say what it predicts",
        )
    with np.errstate(invalid="ignore"):  # inf - inf
        # a missing answer (NaN) matches only a missing answer; NaN or inf where the source has a number never passes
        diff = np.where((e == g) | (np.isnan(e) & np.isnan(g)), 0.0, np.abs(e - g))
    diff[np.isnan(diff)] = np.inf
    excess = diff - (atol + rtol * np.abs(np.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0)))
    if excess.ndim == 2:
        excess, diff = excess.max(axis=1), diff.max(axis=1)
    bad = excess > 0
    figures = {"parity_rows": float(len(e)), "parity_max_abs_diff": float(diff.max()) if len(diff) else 0.0}
    mislabeled = np.zeros(len(e), dtype=bool)
    if task != "regression":
        want = plain_labels(expected.labels) if expected.labels is not None else labels_of(task, e, class_labels)
        have = plain_labels(got.labels) if got.labels is not None else labels_of(task, g, class_labels)
        mislabeled = want != have
        mislabeled &= ~_tied(task, g, want, have, class_labels, atol)
        figures["parity_label_agreement"] = float(1 - mislabeled.mean()) if len(e) else 1.0
    failed = bad | mislabeled
    if failed.any():
        # mislabeled rows first, then by how far past the tolerance
        order = np.lexsort((-np.nan_to_num(excess, nan=np.inf, posinf=np.inf), ~mislabeled))
        worst = [i for i in order if failed[i]][:SHOWN_ROWS]
        rows = "; ".join(_row(index[i], i, task, e, g, expected, got, class_labels) for i in worst)
        raise OnnxParityError(
            f"the converted ONNX model does not match the {source} model on {int(failed.sum())} of {len(e)} sample "
            f"row(s) (numbers may differ by {atol:g} + {rtol:g} x |value|"
            + (", classes must agree" if task != "regression" else "")
            + f"); worst rows: {rows}",
            hint="a converter computes some part differently (float32 tree thresholds are the usual cause); look at "
            "those rows, loosen atol/rtol if the differences are acceptable, or export the model to ONNX yourself and "
            "register the file (--onnx)",
        )
    return figures


def _tied(task: str, g: np.ndarray, want: np.ndarray, have: np.ndarray, class_labels: Sequence[Any], atol: float) -> np.ndarray:
    """Rows where the converted model's probabilities of the expected and of the given class are both within ``atol``
    of its best class: a tie that the source may break the other way."""
    if task == "binary":
        return np.abs(g - 0.5) <= atol
    position = {c: k for k, c in enumerate(class_labels)}
    best = g.max(axis=1) - atol
    tied = np.ones(len(g), dtype=bool)
    for labels in (want, have):
        cols = np.asarray([position.get(label, -1) for label in labels])
        known = cols >= 0
        tied &= known
        rows = np.flatnonzero(known)
        tied[rows] &= g[rows, cols[rows]] >= best[rows]
    return tied


def _row(
    label: Any,
    i: int,
    task: str,
    e: np.ndarray,
    g: np.ndarray,
    expected: Answers,
    got: Answers,
    class_labels: Sequence[Any],
) -> str:
    if task == "regression":
        return f"row {label!r}: expected {e[i]:.6g}, got {g[i]:.6g}"
    want = plain_label(expected.labels[i]) if expected.labels is not None else labels_of(task, e[i : i + 1], class_labels)[0]
    have = plain_label(got.labels[i]) if got.labels is not None else labels_of(task, g[i : i + 1], class_labels)[0]
    probs = (lambda p: f"{p:.4g}") if task == "binary" else (lambda p: "[" + ", ".join(f"{x:.4g}" for x in p) + "]")
    return f"row {label!r}: expected {want!r} (p={probs(e[i])}), got {have!r} (p={probs(g[i])})"
