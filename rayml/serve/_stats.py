"""Per-version traffic statistics for rollout decisions, aggregated over every ingress replica.

Each ingress replica accumulates counts in a :class:`StatsRecorder` (one-second buckets, keyed by model, version and
route) and pushes the deltas to the app's single ``RaymlStats`` deployment every ``stats_flush_interval_s``; the
rollout controller asks that deployment for a time window and gets totals across all replicas. Latency is kept as a
fixed log-spaced histogram, so windows merge exactly and p95 is read from the merged counts.

Pure Python; the Serve deployment that holds a :class:`StatsStore` lives in :mod:`rayml.serve.app`. The store is in
memory: when its replica restarts, the counts of earlier buckets are gone, so it tells its start time
(:attr:`StatsStore.started_at`) and readers never take a window that began before it as complete.

Comparing error shares: :func:`wilson_interval` and :func:`excess_lower_bound` (Newcombe's hybrid score interval for a
difference of two proportions) let the rollout controller ask "is the candidate's share of failures higher than the
baseline's by more than a margin, beyond chance?" rather than compare one share with a fixed limit.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rayml._private.stats import excess_lower_bound, wilson_interval, z_score
from rayml.feedback import LABEL_FIELDS, LabelStats, LiveJoin

__all__ = ["excess_lower_bound", "wilson_interval", "z_score"]  # re-exported: the rollout logic imports them from here

# 0.5 ms .. ~70 s in steps of 10%: p95 is read to within 10% of its true value.
LATENCY_EDGES_S: list[float] = [0.0005 * 1.1**i for i in range(125)]
BUCKET_S = 1.0


def _latency_counts() -> list[int]:
    return [0] * (len(LATENCY_EDGES_S) + 1)


@dataclass
class VersionStats:
    """Totals for one (model, version, route) over some time.

    ``requests`` counts answered requests (any status); ``errors`` those answered with a 5xx (the model's fault);
    ``rejected`` those answered with a 4xx after routing. For the ``shadow`` route, ``requests`` counts completed
    shadow calls, ``errors`` failed ones and ``dropped`` those dropped because the in-flight bound was reached;
    ``compared_rows``/``diff_sum``/``primary_abs_sum``/``mismatches`` compare shadow outputs with the primary's.
    """

    requests: int = 0
    errors: int = 0
    rejected: int = 0
    dropped: int = 0
    latency_counts: list[int] = field(default_factory=_latency_counts)
    compared_rows: int = 0
    diff_sum: float = 0.0
    primary_abs_sum: float = 0.0
    # live quality: the version's predictions made in the window whose labels have arrived (see rayml.feedback)
    labelled: int = 0
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0
    wrong: int = 0
    logloss_sum: float = 0.0
    logloss_rows: int = 0
    delay_sum_s: float = 0.0

    def merge(self, other: VersionStats | dict[str, Any]) -> VersionStats:
        o = other if isinstance(other, VersionStats) else VersionStats(**other)
        self.requests += o.requests
        self.errors += o.errors
        self.rejected += o.rejected
        self.dropped += o.dropped
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, o.latency_counts, strict=True)]
        self.compared_rows += o.compared_rows
        self.diff_sum += o.diff_sum
        self.primary_abs_sum += o.primary_abs_sum
        self.add_labels(o.label_stats)
        return self

    @property
    def label_stats(self) -> LabelStats:
        return LabelStats(**{k: getattr(self, k) for k in LABEL_FIELDS})

    def add_labels(self, s: LabelStats) -> None:
        for k in LABEL_FIELDS:
            setattr(self, k, getattr(self, k) + getattr(s, k))

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_EDGES_S, seconds)] += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def rejected_rate(self) -> float:
        return self.rejected / self.requests if self.requests else 0.0

    def latency_quantile_ms(self, q: float) -> float | None:
        """The q-quantile of latency in ms (upper edge of its bucket); None without observations."""
        total = sum(self.latency_counts)
        if total == 0:
            return None
        rank = math.ceil(q * total)
        seen = 0
        for i, c in enumerate(self.latency_counts):
            seen += c
            if seen >= rank:
                edge = LATENCY_EDGES_S[min(i, len(LATENCY_EDGES_S) - 1)]
                return edge * 1000.0
        return LATENCY_EDGES_S[-1] * 1000.0

    @property
    def p95_ms(self) -> float | None:
        return self.latency_quantile_ms(0.95)

    def disagreement(self, task: str) -> float | None:
        """Regression: sum|shadow - primary| / sum|primary|; binary and multiclass: share of rows whose class differs."""
        if self.compared_rows == 0:
            return None
        if task in ("binary", "multiclass"):
            return self.diff_sum / self.compared_rows
        return self.diff_sum / max(self.primary_abs_sum, 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, task: str = "regression") -> dict[str, Any]:
        """A small, JSON-friendly view (what status output and the audit log show)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "rejected": self.rejected,
            "dropped": self.dropped,
            "p50_ms": _round(self.latency_quantile_ms(0.5)),
            "p95_ms": _round(self.p95_ms),
            "compared_rows": self.compared_rows,
            "disagreement": _round(self.disagreement(task), 6),
            **({"live_quality": self.label_stats.summary(task)} if self.labelled else {}),
        }


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


Key = tuple[str, int, str]  # (model, version, route)


class StatsRecorder:
    """Ingress-side accumulator: cheap in-memory increments, drained as deltas for the stats deployment.

    Args:
        clock: wall-clock seconds (buckets from different replicas line up by wall time).
    """

    def __init__(self, clock: Callable[[], float] = time.time, max_predictions: int = 20_000) -> None:
        self._clock = clock
        self._pending: dict[tuple[int, Key], VersionStats] = {}
        self._predictions: list[tuple[Any, ...]] = []
        self.max_predictions = max_predictions  # per flush: bounds what one push carries (the rest are not joined live)
        self.predictions_dropped = 0

    def _slot(self, model: str, version: int, route: str) -> VersionStats:
        bucket = int(self._clock() // BUCKET_S)
        slot = self._pending.get((bucket, (model, version, route)))
        if slot is None:
            slot = self._pending[(bucket, (model, version, route))] = VersionStats()
        return slot

    def request(self, model: str, version: int, route: str, status: int, latency_s: float) -> None:
        s = self._slot(model, version, route)
        s.requests += 1
        if status >= 500:
            s.errors += 1
        elif status >= 400:
            s.rejected += 1
        s.observe_latency(latency_s)

    def shadow(
        self,
        model: str,
        version: int,
        *,
        latency_s: float | None = None,
        error: bool = False,
        dropped: bool = False,
        compared_rows: int = 0,
        diff_sum: float = 0.0,
        primary_abs_sum: float = 0.0,
    ) -> None:
        s = self._slot(model, version, "shadow")
        if dropped:
            s.dropped += 1
            return
        s.requests += 1
        s.errors += int(error)
        if latency_s is not None:
            s.observe_latency(latency_s)
        s.compared_rows += compared_rows
        s.diff_sum += diff_sum
        s.primary_abs_sum += primary_abs_sum

    def drain(self) -> list[tuple[int, str, int, str, dict[str, Any]]]:
        """Take every pending delta as ``(bucket, model, version, route, stats)`` rows (plain data for Ray)."""
        pending, self._pending = self._pending, {}
        return [(b, m, v, r, s.to_dict()) for (b, (m, v, r)), s in pending.items()]

    def prediction(
        self, model: str, inference_id: str, version: int, route: str, values: list[Any], labels: list[Any]
    ) -> None:
        """A captured answer, for the live join with labels (:class:`~rayml.feedback.LiveJoin`)."""
        if len(self._predictions) >= self.max_predictions:
            self.predictions_dropped += 1
            return
        self._predictions.append((model, inference_id, version, route, self._clock(), values, labels))

    def drain_predictions(self) -> list[tuple[Any, ...]]:
        taken, self._predictions = self._predictions, []
        return taken


class StatsStore:
    """Stats-deployment side: one-second buckets from every replica, kept for ``retention_s``.

    Args:
        retention_s: how long buckets are kept (bounds memory; windows older than this read as empty).
        clock: wall-clock seconds.
    """

    def __init__(self, retention_s: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.retention_s = retention_s
        self._clock = clock
        self._buckets: dict[int, dict[Key, VersionStats]] = {}
        self.started_at = clock()  # counts of buckets before this are lost (a restarted replica starts empty)
        self.live = LiveJoin()

    def push_predictions(self, rows: list[tuple[Any, ...]]) -> None:
        """Remember captured answers ``(model, inference_id, version, route, ts, values, labels)`` for their labels."""
        for model, inference_id, version, route, ts, values, labels in rows:
            self.live.add(model, inference_id, int(version), route, float(ts), values, labels)

    def label(self, model: str, task: str, positive: str | None, entries: list[tuple[str, int, str]]) -> dict[str, int]:
        """Join labels to remembered answers; each joined answer's quality goes to the bucket of its prediction time."""
        counts, contributions = self.live.label(model, task, positive, entries, self._clock())
        for version, route, ts, stats in contributions:
            per_key = self._buckets.setdefault(int(ts // BUCKET_S), {})
            per_key.setdefault((model, version, route), VersionStats()).add_labels(stats)
        return counts

    def push(self, rows: list[tuple[int, str, int, str, dict[str, Any]]]) -> None:
        for bucket, model, version, route, stats in rows:
            per_key = self._buckets.setdefault(int(bucket), {})
            key = (model, int(version), route)
            if key in per_key:
                per_key[key].merge(stats)
            else:
                per_key[key] = VersionStats(**stats)
        oldest = int((self._clock() - self.retention_s) // BUCKET_S)
        for b in [b for b in self._buckets if b < oldest]:
            del self._buckets[b]

    def window(self, model: str, since: float, until: float | None = None) -> dict[str, dict[str, Any]]:
        """Totals per ``"<version>/<route>"`` for buckets in [since, until) (wall-clock seconds)."""
        lo = int(since // BUCKET_S)
        hi = math.inf if until is None else int(until // BUCKET_S)
        out: dict[str, VersionStats] = {}
        for b, per_key in self._buckets.items():
            if lo <= b < hi:
                for (m, v, r), s in per_key.items():
                    if m == model:
                        out.setdefault(f"{v}/{r}", VersionStats()).merge(s)
        return {k: s.to_dict() for k, s in out.items()}


def by_version(window: dict[str, dict[str, Any]]) -> dict[tuple[int, str], VersionStats]:
    """Parse :meth:`StatsStore.window` output into ``(version, route) -> VersionStats``."""
    out = {}
    for k, v in window.items():
        version, _, route = k.partition("/")
        out[(int(version), route)] = VersionStats(**v)
    return out
