"""Online drift: served rows counted into the reference bins of each version, merged over every replica, per window.

Where counting happens: in the model replicas, once per dynamic batch (numpy over the batch's columns), on a
one-thread executor after the answers are produced, so counting never delays or fails a prediction. A primary,
pinned or shadow call all count for the version that answered: a shadow version (the candidate) is counted on the
traffic mirrored to it, in its own replica, off the primary's path.

Windows: tumbling windows of ``drift_window_s`` seconds aligned to the wall clock (window ``i`` covers
``[i * window_s, (i + 1) * window_s)``), so every replica files a row under the same window and counts from many
replicas add up exactly. A replica keeps only the counts since its last flush (:class:`DriftRecorder`); the stats
deployment (:class:`DriftStore`) keeps, per model, version and reference, the current window and the one before it
(bounded memory: one integer per reference bin and data-quality counter, never rows).

What a report shows: per reference, the current window once it has ``min_rows`` rows, else the last complete window
(so a new window does not flap the gauges to ``insufficient_data`` while it fills), else the current one (whose status
is then ``insufficient_data``). ``complete`` in the report says which. Gauges keep their last value while no traffic
arrives.

Model sets: each segment's rows are counted against that segment's reference bins when the set has them, else
against the set's global reference. A version's metric is the largest over its references that have enough rows
(the worst segment), and its status the worst status; ``segments`` in the report has every reference's own result.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayml.config import DriftConfig
from rayml.monitor.drift import DriftCounter, drift_report

GLOBAL = "__global__"  # reference key of a single model, and of a model-set segment without its own bins
PREDICTION = "__prediction__"  # feature label of prediction drift in data-quality counters
STATUS_CODES = {"insufficient_data": -1, "ok": 0, "warn": 1, "alert": 2}
QUALITY_PROBLEMS = ("missing", "wrong_type", "out_of_range", "unseen")
_WORST = ["insufficient_data", "ok", "warn", "alert"]

Row = tuple[int, str, dict[str, Any]]  # (window index, reference key, DriftCounter.to_dict())


def has_bins(reference: Mapping[str, Any] | None) -> bool:
    """Whether a reference has bins to count against (tiny test models and old versions may have none)."""
    return bool(reference and reference.get("features"))


def compact_reference(reference: Mapping[str, Any]) -> dict[str, Any]:
    """What scoring needs (kinds and reference shares), without edges and the list of every seen category."""
    out: dict[str, Any] = {
        "features": {n: {"kind": f["kind"], "shares": list(f["shares"])} for n, f in reference.get("features", {}).items()}
    }
    if "prediction" in reference:  # numeric bins, or one bin per class for a multiclass model's labels
        out["prediction"] = {"kind": reference["prediction"]["kind"], "shares": list(reference["prediction"]["shares"])}
    return out


def window_index(t: float, window_s: float) -> int:
    return int(math.floor(t / window_s))


class DriftRecorder:
    """Replica side: counts since the last flush, per (window, reference key). Thread-safe.

    Args:
        window_s: window length in seconds.
        clock: wall-clock seconds (windows of different replicas line up by wall time).
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, str], DriftCounter] = {}
        self._compact: dict[str, dict[str, Any]] = {}

    def current_window(self) -> int:
        """The window rows answered now belong to."""
        return window_index(self._clock(), self.window_s)

    def observe(
        self,
        key: str,
        reference: Mapping[str, Any],
        columns: Mapping[str, Any],
        predictions: Any = None,
        window: int | None = None,
    ) -> int:
        """Count one batch of rows (``columns``: name -> array) and its predictions into ``window`` (default: the
        current one; a replica that counts buffered rows later passes the window they were answered in); returns the
        rows counted."""
        counter = DriftCounter(reference)
        counter.update(columns, predictions=predictions)  # the numpy work, outside the lock
        window = self.current_window() if window is None else window
        with self._lock:
            if key not in self._compact:
                self._compact[key] = compact_reference(reference)
            prev = self._pending.get((window, key))
            self._pending[(window, key)] = prev.merge(counter) if prev is not None else counter
        return counter.rows

    def drain(self) -> list[Row]:
        """Take every pending count as plain rows (for Ray)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return [(w, k, c.to_dict()) for (w, k), c in pending.items()]

    def restore(self, rows: list[Row]) -> None:
        """Put drained rows back (a flush failed), so no count is lost or counted twice."""
        with self._lock:
            for w, k, d in rows:
                counter = DriftCounter.from_dict(self._compact[k], d)
                prev = self._pending.get((w, k))
                self._pending[(w, k)] = prev.merge(counter) if prev is not None else counter

    def references(self, keys: set[str] | None = None) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: v for k, v in self._compact.items() if keys is None or k in keys}


@dataclass
class _Window:
    counter: DriftCounter
    replicas: set[str] = field(default_factory=set)


def quality_deltas(rows: list[Row]) -> dict[tuple[str, str], int]:
    """Data-quality counts in pushed rows: ``(feature, problem) -> count`` (predictions as ``__prediction__``)."""
    out: dict[tuple[str, str], int] = {}
    for _, _, d in rows:
        items = list(d.get("features", {}).items()) + ([(PREDICTION, d["prediction"])] if d.get("prediction") else [])
        for feature, fc in items:
            for problem in QUALITY_PROBLEMS:
                n = int(fc.get(problem, 0))
                if n:
                    out[(feature, problem)] = out.get((feature, problem), 0) + n
    return out


class DriftStore:
    """Stats-deployment side: merged counts of every replica, two windows per (model, version, reference key).

    Args:
        window_s: window length in seconds (the same as the replicas').
        thresholds: what decides each feature's status, and ``min_rows``.
        clock: wall-clock seconds.
    """

    def __init__(self, window_s: float, thresholds: DriftConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.thresholds = thresholds or DriftConfig()
        self._clock = clock
        self._windows: dict[tuple[str, int, str], dict[int, _Window]] = {}
        self._refs: dict[tuple[str, int, str], dict[str, Any]] = {}

    def push(self, replica: str, model: str, version: int, references: Mapping[str, Any], rows: list[Row]) -> int:
        """Merge one replica's counts; returns the rows merged (rows without a known reference are dropped)."""
        merged = 0
        for window, key, d in rows:
            k = (model, int(version), key)
            if key in references:
                self._refs[k] = dict(references[key])
            ref = self._refs.get(k)
            if ref is None:
                continue
            per_window = self._windows.setdefault(k, {})
            counter = DriftCounter.from_dict(ref, d)
            slot = per_window.get(int(window))
            if slot is None:
                per_window[int(window)] = slot = _Window(counter)
            else:
                slot.counter = slot.counter.merge(counter)
            slot.replicas.add(replica)
            merged += counter.rows
        self._prune()
        return merged

    def _prune(self) -> None:
        keep_from = window_index(self._clock(), self.window_s) - 1
        for per_window in self._windows.values():
            for w in [w for w in per_window if w < keep_from]:
                del per_window[w]

    def versions(self, model: str | None = None) -> list[tuple[str, int]]:
        return sorted({(m, v) for (m, v, _) in self._windows if model is None or m == model})

    def _chosen(self, per_window: dict[int, _Window]) -> tuple[int, _Window, bool] | None:
        now = window_index(self._clock(), self.window_s)
        cur, prev = per_window.get(now), per_window.get(now - 1)
        if cur is not None and cur.counter.rows >= self.thresholds.min_rows:
            return now, cur, False
        if prev is not None:
            return now - 1, prev, True
        if cur is not None:
            return now, cur, False
        return None

    def report(self, model: str, version: int) -> dict[str, Any] | None:
        """The drift of one served version (see the module docstring for which window); None without counts."""
        parts: dict[str, dict[str, Any]] = {}
        for (m, v, key), per_window in self._windows.items():
            if m != model or v != int(version):
                continue
            chosen = self._chosen(per_window)
            if chosen is None:
                continue
            window, slot, complete = chosen
            rep = drift_report(slot.counter, self.thresholds)
            rep.update(
                window_start=window * self.window_s,
                window_end=(window + 1) * self.window_s,
                complete=complete,
                replicas=len(slot.replicas),
            )
            parts[key] = rep
        if not parts:
            return None
        return _combine(model, int(version), self.window_s, parts)


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=_WORST.index) if statuses else "insufficient_data"


def _combine_scores(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """One feature's result over several references: the worst reference that has enough rows."""
    judged = [s for s in scores if s["status"] != "insufficient_data"] or scores
    metrics: dict[str, float] = {}
    for s in judged:
        for name, value in s["metrics"].items():
            metrics[name] = max(metrics.get(name, 0.0), value)
    quality = {
        "missing": sum(int(round(s["quality"]["missing_share"] * max(s["rows"], 1))) for s in scores),
        "out_of_range": sum(s["quality"]["out_of_range"] for s in scores),
        "unseen": sum(s["quality"]["unseen"] for s in scores),
    }
    return {
        "kind": scores[0]["kind"],
        "metrics": metrics,
        "status": _worst([s["status"] for s in judged]),
        "rows": sum(s["rows"] for s in scores),
        "quality": quality,
    }


def _combine(model: str, version: int, window_s: float, parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    names = sorted({n for p in parts.values() for n in p["features"]})
    features = {n: _combine_scores([p["features"][n] for p in parts.values() if n in p["features"]]) for n in names}
    preds = [p["prediction"] for p in parts.values() if "prediction" in p]
    prediction = _combine_scores(preds) if preds else None
    statuses = [f["status"] for f in features.values()] + ([prediction["status"]] if prediction else [])
    judged = [s for s in statuses if s != "insufficient_data"]
    newest = max(parts.values(), key=lambda p: p["window_start"])
    out: dict[str, Any] = {
        "model": model,
        "version": version,
        "window_s": window_s,
        "window_start": newest["window_start"],
        "window_end": newest["window_end"],
        "complete": all(p["complete"] for p in parts.values()),
        "rows": sum(p["rows"] for p in parts.values()),
        "replicas": max(p["replicas"] for p in parts.values()),
        "status": _worst(judged) if judged else "insufficient_data",
        "features": features,
        "prediction": prediction,
        "drifted_features": sorted(n for n, f in features.items() if f["status"] == "alert"),
        "warned_features": sorted(n for n, f in features.items() if f["status"] == "warn"),
    }
    if len(parts) > 1 or GLOBAL not in parts:
        out["segments"] = {
            k: {"rows": p["rows"], "status": p["status"], "drifted": p["drifted_features"]} for k, p in parts.items()
        }
    return out


def gauge_values(report: Mapping[str, Any]) -> dict[str, Any]:
    """Gauge values of one version's report: per-feature metrics and status codes, prediction drift, rows."""
    feature_metrics = {(n, m): float(v) for n, f in report["features"].items() for m, v in f["metrics"].items()}
    feature_status = {n: STATUS_CODES[f["status"]] for n, f in report["features"].items()}
    pred = report.get("prediction")
    return {
        "feature": feature_metrics,
        "feature_status": feature_status,
        "prediction": {m: float(v) for m, v in (pred["metrics"].items() if pred else [])},
        "prediction_status": STATUS_CODES[pred["status"]] if pred else None,
        "rows": int(report["rows"]),
    }


def concat_columns(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per column for a batch of request feeds (the shape counting wants)."""
    if len(feeds) == 1:
        return {n: np.asarray(a).reshape(-1) for n, a in feeds[0].items()}
    return {n: np.concatenate([np.asarray(f[n]).reshape(-1) for f in feeds]) for n in feeds[0]}
