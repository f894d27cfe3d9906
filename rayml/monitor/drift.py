"""Drift statistics against the reference bins saved with every model.

Counting is separate from scoring: :class:`DriftCounter` turns rows into per-feature bin counts (bounded memory: one
integer per reference bin, plus data-quality counters), counters from many replicas or batches merge by addition,
and :func:`drift_report` scores merged counts against the reference shares.

Metrics per feature:
- numeric: PSI and Jensen-Shannon distance over the reference decile bins;
- categorical: L-infinity distance and Jensen-Shannon distance over the reference top-K + ``__other__`` buckets;
- predictions: PSI and Jensen-Shannon distance over the reference prediction bins ("prediction drift"); a multiclass
  model's predicted labels are categories (one bin per class: the predicted-class distribution), scored like a
  categorical feature.
Jensen-Shannon is the distance (square root of the divergence) with base 2, so it lies in [0, 1] (as scipy's
``jensenshannon(p, q, base=2)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayml.config import DriftConfig
from rayml.data.schema import UNKNOWN, as_category_strings
from rayml.data.stats import OTHER

EPS = 1e-4  # floor for empty bins, so PSI stays finite (the usual convention)


# --- distances -----------------------------------------------------------------------------------------------------
def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts, dtype="float64")


def psi(reference: np.ndarray, current: np.ndarray, eps: float = EPS) -> float:
    """Population stability index: sum((c - r) * ln(c / r)) over bins, empty bins floored at ``eps``."""
    r = np.clip(np.asarray(reference, dtype="float64"), eps, None)
    c = np.clip(np.asarray(current, dtype="float64"), eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (0 = same distribution, 1 = disjoint)."""
    p = np.asarray(reference, dtype="float64")
    q = np.asarray(current, dtype="float64")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return float(np.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2)))


def linf(reference: np.ndarray, current: np.ndarray) -> float:
    """The largest absolute difference between two share vectors."""
    return float(np.max(np.abs(np.asarray(reference, dtype="float64") - np.asarray(current, dtype="float64"))))


# --- counting ------------------------------------------------------------------------------------------------------
@dataclass
class FeatureCounts:
    """Counts for one column in one window: bins plus data-quality counters."""

    kind: str
    bins: np.ndarray
    missing: int = 0  # None / NaN
    wrong_type: int = 0  # text where a number belongs
    out_of_range: int = 0  # numbers outside the training min/max
    unseen: int = 0  # categories never seen in training

    @property
    def total(self) -> int:
        return int(self.bins.sum()) + self.missing + self.wrong_type

    def merge(self, other: FeatureCounts) -> FeatureCounts:
        return FeatureCounts(
            self.kind,
            self.bins + other.bins,
            self.missing + other.missing,
            self.wrong_type + other.wrong_type,
            self.out_of_range + other.out_of_range,
            self.unseen + other.unseen,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "bins": self.bins.tolist(),
            "missing": self.missing,
            "wrong_type": self.wrong_type,
            "out_of_range": self.out_of_range,
            "unseen": self.unseen,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureCounts:
        return cls(d["kind"], np.asarray(d["bins"], dtype="int64"), d["missing"], d["wrong_type"], d["out_of_range"], d["unseen"])


def count_numeric(values: Any, ref: Mapping[str, Any]) -> FeatureCounts:
    s = pd.Series(values)
    x = pd.to_numeric(s, errors="coerce")
    wrong = int((x.isna() & s.notna()).sum())
    arr = x.to_numpy(dtype="float64")
    finite = arr[np.isfinite(arr)]
    edges = np.asarray(ref.get("edges", []), dtype="float64")
    bins = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1).astype("int64")
    out = 0
    if "min" in ref and "max" in ref and len(finite):
        out = int(((finite < ref["min"]) | (finite > ref["max"])).sum())
    missing = int(len(arr) - len(finite) - wrong)
    return FeatureCounts("numeric", bins, missing=missing, wrong_type=wrong, out_of_range=out)


def count_values(values: Any, ref: Mapping[str, Any]) -> FeatureCounts:
    """Count values into a reference's bins, numeric or categorical as the reference says."""
    return count_numeric(values, ref) if ref["kind"] == "numeric" else count_categorical(values, ref)


def count_categorical(values: Any, ref: Mapping[str, Any]) -> FeatureCounts:
    cats = list(ref["categories"])
    known = {c: i for i, c in enumerate(cats) if c != OTHER}
    other_idx = cats.index(OTHER) if OTHER in cats else len(cats) - 1
    strings = as_category_strings(pd.Series(values))
    # look up each distinct value once (a request batch has few), then spread the answers with numpy
    uniq, inverse = np.unique(strings.astype(str), return_inverse=True)
    uniq_idx = np.fromiter((known.get(v, -2 if v == UNKNOWN else other_idx) for v in uniq), dtype="int64", count=len(uniq))
    idx = uniq_idx[inverse.reshape(-1)] if len(strings) else np.zeros(0, dtype="int64")
    missing = int((idx == -2).sum())
    present = idx[idx >= 0]
    bins = np.bincount(present, minlength=len(cats)).astype("int64")
    # "unseen" = not a category of the training data at all (not merely outside the top-K kept as bins)
    seen_all = set(ref.get("seen", cats))
    uniq_counts = np.bincount(inverse.reshape(-1), minlength=len(uniq)) if len(strings) else np.zeros(0, dtype="int64")
    unseen = int(
        sum(int(c) for v, c in zip(uniq, uniq_counts, strict=True) if v != UNKNOWN and v not in known and v not in seen_all)
    )
    return FeatureCounts("categorical", bins, missing=missing, unseen=unseen)


@dataclass
class DriftCounter:
    """Per-feature (and prediction) counts for one window, in bounded memory; merge counters from many replicas."""

    reference: Mapping[str, Any]
    features: dict[str, FeatureCounts] = field(default_factory=dict)
    prediction: FeatureCounts | None = None
    rows: int = 0

    def update(self, rows: pd.DataFrame | Mapping[str, Any], predictions: Any = None) -> None:
        cols = rows if isinstance(rows, Mapping) else {c: rows[c] for c in rows.columns}
        n = 0
        for name, ref in self.reference["features"].items():
            if name not in cols:
                continue
            fc = count_values(cols[name], ref)
            n = max(n, fc.total)
            self.features[name] = self.features[name].merge(fc) if name in self.features else fc
        if predictions is not None and "prediction" in self.reference:
            pc = count_values(np.asarray(predictions).ravel(), self.reference["prediction"])
            self.prediction = self.prediction.merge(pc) if self.prediction else pc
        self.rows += n

    def merge(self, other: DriftCounter) -> DriftCounter:
        merged = DriftCounter(self.reference, dict(self.features), self.prediction, self.rows + other.rows)
        for name, fc in other.features.items():
            merged.features[name] = merged.features[name].merge(fc) if name in merged.features else fc
        if other.prediction is not None:
            merged.prediction = merged.prediction.merge(other.prediction) if merged.prediction else other.prediction
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "prediction": self.prediction.to_dict() if self.prediction else None,
        }

    @classmethod
    def from_dict(cls, reference: Mapping[str, Any], d: Mapping[str, Any]) -> DriftCounter:
        return cls(
            reference,
            {k: FeatureCounts.from_dict(v) for k, v in d["features"].items()},
            FeatureCounts.from_dict(d["prediction"]) if d.get("prediction") else None,
            int(d["rows"]),
        )


# --- scoring -------------------------------------------------------------------------------------------------------
def _status(values: dict[str, float], t: DriftConfig) -> str:
    alert = warn = False
    for metric, v in values.items():
        a, w = {"psi": (t.psi_alert, t.psi_warn), "js": (t.js_alert, t.js_warn), "linf": (t.linf_alert, t.linf_warn)}[metric]
        alert |= v >= a
        warn |= v >= w
    return "alert" if alert else "warn" if warn else "ok"


def score(kind: str, ref_shares: list[float], counts: FeatureCounts, t: DriftConfig) -> dict[str, Any]:
    ref = np.asarray(ref_shares, dtype="float64")
    cur = _shares(counts.bins.astype("float64"))
    n = int(counts.bins.sum())
    values = (
        {"psi": psi(ref, cur), "js": js_distance(ref, cur)}
        if kind == "numeric"
        else {
            "linf": linf(ref, cur),
            "js": js_distance(ref, cur),
        }
    )
    if n == 0:
        values = dict.fromkeys(values, 0.0)
    status = "insufficient_data" if n < t.min_rows else _status(values, t)
    total = max(counts.total, 1)
    return {
        "kind": kind,
        "metrics": values,
        "status": status,
        "rows": n,
        "reference_shares": ref.tolist(),
        "current_shares": cur.tolist(),
        "quality": {
            "missing_share": counts.missing / total,
            "wrong_type": counts.wrong_type,
            "out_of_range": counts.out_of_range,
            "unseen": counts.unseen,
        },
    }


def drift_report(counter: DriftCounter, thresholds: DriftConfig | None = None) -> dict[str, Any]:
    """Score a (merged) counter against its reference: per-feature metrics and status, prediction drift, overall."""
    t = thresholds or DriftConfig()
    ref = counter.reference
    features = {
        name: score(ref["features"][name]["kind"], ref["features"][name]["shares"], fc, t)
        for name, fc in counter.features.items()
    }
    out: dict[str, Any] = {"rows": counter.rows, "features": features}
    if counter.prediction is not None and "prediction" in ref:
        out["prediction"] = score(ref["prediction"]["kind"], ref["prediction"]["shares"], counter.prediction, t)
    statuses = [f["status"] for f in features.values()]
    out["status"] = "alert" if "alert" in statuses else "warn" if "warn" in statuses else "ok"
    out["drifted_features"] = sorted(n for n, f in features.items() if f["status"] == "alert")
    return out
