"""Reference statistics of training data: the bins that monitoring compares live traffic against.

Numbers: decile edges (10 bins, open at both ends) with the training share in each bin, plus mean/std/min/max and
the missing share. Categories: the top-K values with their shares and one ``__other__`` bucket. Class labels (a
multiclass target, and a multiclass model's predicted labels) are categories with one bin per class, so drift of the
predicted-class distribution and the majority class (the gate's trivial baseline) come from the same bins. The result
is plain JSON so it travels with the model in the registry.

A sensitive feature (``data.sensitive_columns``, unless ``data.allow_sensitive_in`` has ``reference_stats``) never
reaches the bins as raw values: a categorical one gets no bins at all (its categories are raw values; hashing them
would still let anyone who guesses a value confirm it, and drift counting would need the same hash), a numeric one
keeps its decile edges, shares, mean and std (aggregates over many rows, what drift needs) but not its min and max
(one row's value each). :func:`withhold_sensitive` does it; the ``withheld`` entry lists the features left out, so
their drift is known to be unmonitored rather than missing by accident.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rayml.data.schema import UNKNOWN, Schema, as_category_strings

OTHER = "__other__"
REFERENCE_STATS_VERSION = 1
WITHHELD = "withheld"  # the stats' list of sensitive features without bins
_ONE_ROW = ("min", "max")  # numeric statistics that are one row's raw value
MAX_SEEN = 10_000
MAX_CLASS_BINS = 1_000  # class labels get one bin each, up to this many (the rest share __other__)


def numeric_reference(values: pd.Series, n_bins: int = 10) -> dict[str, Any]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    finite = x[np.isfinite(x)]
    missing = float(np.mean(~np.isfinite(x))) if len(x) else 0.0
    if len(finite) == 0:
        return {"kind": "numeric", "edges": [], "shares": [1.0], "missing_share": missing, "count": int(len(x))}
    qs = np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = np.unique(qs)  # constant columns collapse to fewer bins
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1)
    return {
        "kind": "numeric",
        "edges": [float(e) for e in edges],
        "shares": [float(c) / len(finite) for c in counts],
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "missing_share": missing,
        "count": int(len(x)),
    }


def categorical_reference(values: pd.Series, top_k: int = 20) -> dict[str, Any]:
    s = pd.Series(as_category_strings(values))
    n = len(s)
    missing = float((s == UNKNOWN).mean()) if n else 0.0
    present = s[s != UNKNOWN]
    counts = present.value_counts()
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ordered[:top_k]
    other = int(sum(c for _, c in ordered[top_k:]))
    total = max(len(present), 1)
    return {
        "kind": "categorical",
        "seen": [k for k, _ in ordered[:MAX_SEEN]],  # every training category (capped): "unseen" means not in here
        "categories": [k for k, _ in top] + [OTHER],
        "shares": [c / total for _, c in top] + [other / total],
        "missing_share": missing,
        "count": int(n),
    }


def is_label_values(values: np.ndarray | pd.Series, task: str) -> bool:
    """Whether model outputs or target values are class labels (binned as categories) rather than numbers.

    A multiclass task's are, whatever their type; so are values that are not floats (a multiclass model's ``label``
    output is INT64 or strings, while regression and binary outputs are always floats).
    """
    return task == "multiclass" or np.asarray(values).dtype.kind not in "fc"


def label_reference(values: pd.Series | np.ndarray) -> dict[str, Any]:
    """Categorical bins of class labels: one per class (up to :data:`MAX_CLASS_BINS`), most frequent first.

    ``categories[0]`` is the majority class; labels are binned as strings (``1`` and ``"1"`` are one class).
    """
    return categorical_reference(pd.Series(np.asarray(values, dtype=object)), top_k=MAX_CLASS_BINS)


def reference_stats(df: pd.DataFrame, schema: Schema, predictions: np.ndarray | None = None) -> dict[str, Any]:
    """Reference bins for every feature (and the target and predictions when given).

    The target of a multiclass schema, and predictions that are class labels (see :func:`is_label_values`), get
    categorical bins (:func:`label_reference`); other targets and predictions get numeric ones.
    """
    features = {}
    for f in schema.features:
        if f.kind == "categorical" and schema.is_sensitive(f.name, "reference_stats"):
            continue  # withhold_sensitive records it; never count its raw values at all
        features[f.name] = numeric_reference(df[f.name]) if f.kind == "numeric" else categorical_reference(df[f.name])
    out: dict[str, Any] = {"version": REFERENCE_STATS_VERSION, "rows": int(len(df)), "features": features}
    if schema.target in df.columns:
        y = df[schema.target]
        out["target"] = label_reference(y) if schema.task == "multiclass" else numeric_reference(y)
    if predictions is not None:
        preds = np.asarray(predictions)
        out["prediction"] = (
            label_reference(preds)
            if is_label_values(preds, schema.task)
            else numeric_reference(pd.Series(preds.astype("float64")))
        )
    return withhold_sensitive(out, schema)


def withhold_sensitive(stats: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """``stats`` (one set of bins: :func:`reference_stats`'s form) without raw values of ``schema``'s sensitive
    features (see the module docstring); ``stats`` itself when it has none, else a new dict."""
    if not schema.sensitive:
        return stats
    features = dict(stats.get("features") or {})
    withheld = set(stats.get(WITHHELD) or [])
    for f in schema.features:
        if not schema.is_sensitive(f.name, "reference_stats"):
            continue
        if f.kind == "categorical":
            features.pop(f.name, None)
            withheld.add(f.name)
        elif f.name in features:
            features[f.name] = {k: v for k, v in features[f.name].items() if k not in _ONE_ROW}
    out = {**stats, "features": features}
    if withheld:
        out[WITHHELD] = sorted(withheld)
    return out
