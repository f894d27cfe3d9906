"""Live model quality: captured predictions joined to their ground-truth labels, judged per version.

The join runs on Ray Data where the captures are read, so it scales with the cluster (:mod:`rayml.feedback._join`);
the driver only sums counts and computes each version's metrics and intervals (:mod:`rayml.feedback._bootstrap`).

A label joins every captured row with its ``(inference_id, row)``: the primary answer, a pinned one, and a shadow
version's answer to the same request are all judged. Labels whose id matches no captured row (at any time) are
``unknown``; captured rows without a label are ``unlabelled``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayml._private.jsonable import json_ready
from rayml.errors import ConfigError, DataError
from rayml.feedback._bootstrap import encode_rows, metrics_with_intervals
from rayml.feedback._join import TASK_COLUMNS, join_labels
from rayml.feedback._store import CAPTURES, class_text, list_files, read_labels
from rayml.models.metrics import primary_metric

if TYPE_CHECKING:
    from rayml.registry import Registry

logger = logging.getLogger("rayml.feedback")

OK, INSUFFICIENT_LABELS, GAP = "ok", "insufficient_labels", "gap"
ROUTES = ("primary", "pinned", "shadow", "batch")
# label delay histogram: upper edges in seconds (the last bin is everything above a week)
DELAY_EDGES_S = (1.0, 10.0, 60.0, 600.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)
DELAY_BINS = ("<1s", "1-10s", "10s-1m", "1-10m", "10m-1h", "1-6h", "6-24h", "1-7d", ">7d")

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A start time from an ISO-8601 time (``2024-05-01``, ``2024-05-01T12:00:00+02:00``; UTC when no zone is
    given) or a duration back from ``now`` (``90s``, ``30m``, ``24h``, ``7d``, ``2w``, ``1d12h``).

    Raises:
        ConfigError: neither.
    """
    raw = text.strip()
    if raw and _DURATION_RE.sub("", raw.lower()).strip() == "" and _DURATION_RE.search(raw.lower()):
        seconds = sum(float(v) * _UNIT_S[u] for v, u in _DURATION_RE.findall(raw.lower()))
        return (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(seconds=seconds)
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither an ISO-8601 time nor a duration",
            hint="write a time such as 2024-05-01T12:00:00Z (UTC when no zone is given) or a duration back from now "
            "such as 24h, 7d, 30m or 1d12h",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def quality_report(
    destination: str,
    model: str,
    *,
    registry: Registry | None = None,
    task: str | None = None,
    class_labels: Sequence[Any] | None = None,
    offline_metrics: Mapping[int, Mapping[str, float]] | None = None,
    since: dt.datetime | None = None,
    confidence: float = 0.95,
    max_gap: float = 0.1,
    min_labels: int = 30,
    bootstrap_samples: int = 200,
    bootstrap_max_rows: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Join ``model``'s stored labels to its captured predictions (on Ray) and judge each version's live quality.

    Runs on the connected Ray (a local one starts when none is, as every rayml command does).

    Per version: the task's metrics (regression ``rmse``, ``mae``; binary ``auc``, ``accuracy``, ``logloss``;
    multiclass ``accuracy``, ``macro_f1``, ``logloss``) with seeded percentile-bootstrap confidence intervals
    (resamples capped at ``bootstrap_max_rows`` rows and rescaled, see :mod:`rayml.feedback._bootstrap`); label
    coverage (labelled / captured rows); label delay (median and p90 of label arrival minus prediction time, and a
    histogram); captured and labelled rows per route; the offline validation metrics; and the gap: the relative
    degradation of the primary metric (RMSE, AUC, macro F1) from its offline value.

    A version's ``status`` is ``insufficient_labels`` below ``min_labels`` usable labelled rows (or when the primary
    metric is undefined, e.g. AUC with one class), ``gap`` when the primary metric is worse than offline by more than
    ``max_gap`` even at the favourable end of its interval, else ``ok`` (also when there is no offline value).

    Args:
        destination: where the captures and labels are (a local folder or a pyarrow URI).
        model: the served model's name.
        registry: where the task, class labels and offline metrics come from; None = ``Registry()`` unless ``task``
            is given (then none is consulted and ``offline_metrics`` is all there is).
        task, class_labels: the model's task and classes (None: the newest registered version's).
        offline_metrics: version -> its ``val_*`` metrics, instead of the registry's.
        since: only predictions made at or after this time (labels of older ones are still not ``unknown``).
        confidence: two-sided level of the intervals.
        max_gap: largest allowed relative degradation (0.1 = 10% worse than offline).
        min_labels: labelled rows a version needs to be judged.
        bootstrap_samples, bootstrap_max_rows, seed: the bootstrap.

    Returns:
        A JSON-ready dict: ``status`` (``gap`` if any version has one, else ``ok`` if any is judged, else
        ``insufficient_labels``), ``versions`` (one dict per version, newest last), ``captured_rows``,
        ``labelled_rows``, ``unlabelled_rows``, ``labels`` (``stored``, ``matched``, ``unknown``) and the settings.

    Raises:
        DataError: no captured predictions of ``model`` under ``destination``.
        ModelNotFoundError: the model is not registered (when the registry is consulted).
        ConfigError: a setting is out of range, or ``task`` is not one of the three.

    Example:
        >>> report = quality_report("/data/captures", "churn", since=parse_since("24h"))
        >>> [(v["version"], v["status"]) for v in report["versions"]]
        [(3, 'ok'), (4, 'gap')]
    """
    _check_settings(task, confidence, max_gap, min_labels, bootstrap_samples, bootstrap_max_rows)
    all_files = list_files(destination, CAPTURES, model)
    if not all_files:
        raise DataError(
            f"no captured predictions of model {model!r} under {destination}",
            hint=f"turn capture on for the served model (serve.models.{model}.capture in the serve config) and send "
            "requests, or point --destination (quality.destination) at where its captures are",
        )
    facts = _Facts.resolve(model, registry, task, class_labels, offline_metrics)
    wanted = ["inference_id", "row", "label", "received_at"]
    labels = read_labels(destination, model, columns=wanted).select(wanted)  # (all columns when none are stored)
    labels = labels.append_column("_li", pa.array(np.arange(labels.num_rows, dtype=np.int64)))
    joined, counts, matched = join_labels(all_files, labels, facts.task, since)
    stored = labels.num_rows
    report: dict[str, Any] = {
        "model": model,
        "destination": destination,
        "task": facts.task,
        "class_labels": facts.classes,
        "primary_metric": primary_metric(facts.task)[0],
        "higher_is_better": primary_metric(facts.task)[1],
        "since": since.isoformat() if since else None,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "confidence": confidence,
        "max_gap": max_gap,
        "min_labels": min_labels,
        "interval_method": f"percentile bootstrap, {bootstrap_samples} seeded resamples of at most {bootstrap_max_rows} "
        "rows (m-out-of-n, spread rescaled by sqrt(m/n))",
        "captured_rows": int(sum(counts.values())),
        "labelled_rows": joined.num_rows,
        "unlabelled_rows": int(sum(counts.values())) - joined.num_rows,
        "labels": {"stored": stored, "matched": matched, "unknown": stored - matched},
    }
    versions = sorted({v for v, _ in counts})
    version_col = joined["version"].to_numpy(zero_copy_only=False) if joined.num_rows else np.zeros(0, np.int64)
    out = []
    for v in versions:
        rows = joined.filter(pa.array(version_col == v)) if joined.num_rows else joined
        captured_by_route = {r: n for (ver, r), n in counts.items() if ver == v}
        out.append(
            _version_report(
                v,
                rows,
                captured_by_route,
                facts,
                confidence=confidence,
                max_gap=max_gap,
                min_labels=min_labels,
                bootstrap_samples=bootstrap_samples,
                bootstrap_max_rows=bootstrap_max_rows,
                seed=seed,
            )
        )
    report["versions"] = out
    statuses = {v["status"] for v in out}
    report["status"] = GAP if GAP in statuses else OK if OK in statuses else INSUFFICIENT_LABELS
    report["gap_versions"] = [v["version"] for v in out if v["status"] == GAP]
    return json_ready(report)


def _check_settings(task: str | None, confidence: float, max_gap: float, min_labels: int, samples: int, max_rows: int) -> None:
    problems = [
        p
        for p, bad in (
            (f"task {task!r} is not regression, binary or multiclass", task not in (None, *TASK_COLUMNS)),
            (f"confidence {confidence!r} is not between 0.5 and 1", not 0.5 < confidence < 1),
            (f"max_gap {max_gap!r} is negative", max_gap < 0),
            (f"min_labels {min_labels!r} is below 1", min_labels < 1),
            (f"bootstrap_samples {samples!r} is below 20", samples < 20),
            (f"bootstrap_max_rows {max_rows!r} is below 100", max_rows < 100),
        )
        if bad
    ]
    if problems:
        raise ConfigError(
            "invalid quality settings: " + "; ".join(problems),
            hint="see rayml.config.QualityConfig for each setting's range (e.g. confidence=0.95, max_gap=0.1)",
        )


class _Facts:
    """What the report knows of the model and each version: task, classes, offline metrics."""

    def __init__(
        self,
        task: str,
        classes: list[Any],
        offline: Mapping[int, Mapping[str, float]] | None,
        registry: Registry | None,
        model: str,
    ) -> None:
        self.task = task
        self.classes = [t for t in (class_text(c) for c in classes) if t is not None]
        if task == "binary" and len(self.classes) != 2:
            self.classes = ["0", "1"]  # a binary model that records no classes predicts class 1 of 0/1 targets
        self._offline = offline
        self._registry = registry
        self._model = model
        self._versions: dict[int, tuple[list[str], dict[str, float]]] = {}

    @classmethod
    def resolve(
        cls,
        model: str,
        registry: Registry | None,
        task: str | None,
        class_labels: Sequence[Any] | None,
        offline: Mapping[int, Mapping[str, float]] | None,
    ) -> _Facts:
        if registry is None and task is None:
            from rayml.registry import Registry

            registry = Registry()
        if registry is not None and (task is None or class_labels is None):
            md = registry.load(_newest_version(registry, model)).model_dir
            task = task or md.task
            class_labels = class_labels if class_labels is not None else md.class_labels
        return cls(task or "regression", list(class_labels or []), offline, registry, model)

    def version(self, version: int) -> tuple[list[str], dict[str, float]]:
        """The version's class texts (its probabilities' order) and its offline ``val_*`` metrics ({} if unknown)."""
        if version in self._versions:
            return self._versions[version]
        classes, offline = self.classes, dict(self._offline.get(version, {})) if self._offline is not None else {}
        if self._registry is not None:
            from rayml.errors import RaymlError

            try:
                md = self._registry.load(f"{self._model}:{version}").model_dir
            except RaymlError as e:  # an unregistered (deleted) version still gets its live metrics
                logger.warning("version %s of %s: no registry entry (%s); no offline metrics", version, self._model, e.message)
            else:
                if self.task == "multiclass" and md.class_labels:
                    classes = [t for t in (class_text(c) for c in md.class_labels) if t is not None]
                if self._offline is None:
                    offline = _finite_val_metrics(md.meta.get("metrics") or {})
        self._versions[version] = (classes, offline)
        return classes, offline


def _newest_version(registry: Registry, model: str) -> str:
    """``NAME:VERSION`` of ``model``'s newest registered version (its task and classes are the model's).

    Raises:
        ModelNotFoundError: the model is not registered, or has no versions.
    """
    from rayml.errors import ModelNotFoundError

    versions = registry.versions(model)
    if not versions:
        raise ModelNotFoundError(
            f"model {model!r} has no registered versions", hint="register one (rayml train, rayml models register)"
        )
    return versions[-1].ref


def _finite_val_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


# --- one version ------------------------------------------------------------------------------------------------


def _version_report(
    version: int,
    rows: pa.Table,
    captured_by_route: Mapping[str, int],
    facts: _Facts,
    *,
    confidence: float,
    max_gap: float,
    min_labels: int,
    bootstrap_samples: int,
    bootstrap_max_rows: int,
    seed: int,
) -> dict[str, Any]:
    classes, offline = facts.version(version)
    task = facts.task
    # Ray Data returns blocks in any order: the seeded bootstrap resamples the same rows only in the same order
    rows = rows.take(pc.sort_indices(rows, [("_li", "ascending"), ("route", "ascending")]))
    positive = classes[1] if task == "binary" else None
    encoded, unusable = encode_rows(task, rows, classes, positive)
    metrics = metrics_with_intervals(
        encoded, confidence=confidence, samples=bootstrap_samples, max_rows=bootstrap_max_rows, seed=seed + version
    )
    captured = int(sum(captured_by_route.values()))
    labelled = rows.num_rows
    routes_labelled = _value_counts(rows["route"]) if labelled else {}
    delays = rows["delay_s"].to_numpy(zero_copy_only=False) if labelled else np.zeros(0)
    delays = delays[np.isfinite(delays)]
    primary, higher = primary_metric(task)
    live = metrics.get(primary, {})
    offline_primary = offline.get(f"val_{primary}")
    gap, gap_favourable = _gaps(live, offline_primary, higher)
    if len(encoded) < min_labels:
        status, reason = INSUFFICIENT_LABELS, f"{len(encoded)} labelled predictions, fewer than min_labels={min_labels}"
    elif live.get("value") is None:
        status, reason = INSUFFICIENT_LABELS, f"live {primary} is undefined on these labels (e.g. a single class)"
    elif gap_favourable is not None and gap_favourable > max_gap:
        status = GAP
        reason = (
            f"live {primary} {live['value']:.4g} is {gap:.1%} worse than offline {offline_primary:.4g}; even the "
            f"favourable end of its interval is {gap_favourable:.1%} worse, over max_gap={max_gap:.1%}"
        )
    elif offline_primary is None:
        status, reason = OK, f"no offline val_{primary} to compare with"
    else:
        status, reason = OK, f"within max_gap={max_gap:.1%} of offline {primary}"
    return {
        "version": version,
        "status": status,
        "reason": reason,
        "captured": captured,
        "labelled": labelled,
        "unlabelled": captured - labelled,
        "unusable": unusable,
        "coverage": labelled / captured if captured else None,
        "routes": {
            r: {"captured": int(captured_by_route.get(r, 0)), "labelled": int(routes_labelled.get(r, 0))}
            for r in sorted(set(captured_by_route) | set(routes_labelled), key=lambda r: (r not in ROUTES, r))
        },
        "metrics": metrics,
        "label_delay_s": _delay_summary(delays),
        "offline": offline,
        "offline_primary": offline_primary,
        "live_primary": live.get("value"),
        "gap": gap,
        "gap_favourable": gap_favourable,
    }


def _gaps(live: Mapping[str, float | None], offline: float | None, higher_is_better: bool) -> tuple[float | None, float | None]:
    """Relative degradation of the live value from ``offline`` (positive = worse), at the point and at the
    favourable end of the interval."""
    value = live.get("value")
    if value is None or offline is None or offline == 0:
        return None, None

    def degradation(x: float) -> float:
        return (offline - x) / abs(offline) if higher_is_better else (x - offline) / abs(offline)

    end = live.get("high") if higher_is_better else live.get("low")
    return degradation(value), degradation(end) if end is not None else None


def _value_counts(values: pa.ChunkedArray) -> dict[str, int]:
    counted = pc.value_counts(values.combine_chunks())
    return {str(v): int(c) for v, c in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True)}


def _delay_summary(delays: np.ndarray) -> dict[str, Any]:
    """Median and p90 label delay (seconds), and counts per :data:`DELAY_BINS`."""
    counts = np.bincount(np.searchsorted(np.asarray(DELAY_EDGES_S), delays, side="right"), minlength=len(DELAY_BINS))
    return {
        "median": float(np.median(delays)) if len(delays) else None,
        "p90": float(np.percentile(delays, 90)) if len(delays) else None,
        "histogram": {"bins": list(DELAY_BINS), "counts": [int(c) for c in counts]},
    }
