"""Prometheus metrics of the serving path, through ``ray.serve.metrics`` (exported on Ray's metrics port).

Ray prefixes application metrics with ``ray_`` on export, so ``rayml_requests_total`` is scraped as
``ray_rayml_requests_total``; Serve adds ``deployment``, ``replica`` and ``application`` tags. Metric objects are
created lazily inside replicas (they need a running Ray).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, cast

# Fewer, coarser buckets than the stats histogram: every bucket is a Prometheus time series per label set.
LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
DISAGREEMENT_BOUNDARIES = [1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0, 1000.0]
LOAD_BOUNDARIES_S = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
# Ray drops a gauge from its Prometheus export once it has not been set for two metrics report intervals (at least
# 1 s each; seen on `ray start` clusters): gauges that must stay visible between changes are set again at this period.
GAUGE_REFRESH_S = 1.0


def _tag_keys(*keys: str) -> tuple[str]:
    """``keys`` as ray.serve.metrics annotates its ``tag_keys`` (``Tuple[str]``: one key), though it takes any number."""
    return cast("tuple[str]", keys)


class IngressMetrics:
    """Counters and histograms recorded by every ingress replica."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "rayml_requests_total",
            description="Requests answered, by model, version, route (primary|shadow|pinned) and HTTP status code.",
            tag_keys=_tag_keys("model", "version", "route", "code"),
        )
        self.latency = metrics.Histogram(
            "rayml_request_latency_seconds",
            description="Request latency in the ingress, in seconds (shadow calls: their own latency).",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=_tag_keys("model", "version", "route"),
        )
        self.weight = metrics.Gauge(
            "rayml_traffic_weight",
            description="Current share of a model's traffic routed to a version (0..1).",
            tag_keys=_tag_keys("model", "version"),
        )
        self.shadow_percent = metrics.Gauge(
            "rayml_shadow_percent",
            description="Percent of a model's requests mirrored to its shadow version.",
            tag_keys=_tag_keys("model", "version"),
        )
        self.shadow_dropped = metrics.Counter(
            "rayml_shadow_dropped_total",
            description="Shadow calls dropped because the in-flight shadow queue was full.",
            tag_keys=_tag_keys("model", "version"),
        )
        self.shadow_errors = metrics.Counter(
            "rayml_shadow_errors_total",
            description="Shadow calls that failed or timed out (never returned to callers).",
            tag_keys=_tag_keys("model", "version"),
        )
        self.disagreement = metrics.Histogram(
            "rayml_shadow_disagreement",
            description="Per row |shadow - primary| (regression, target units) or class mismatch 0/1 (binary: at 0.5; "
            "multiclass: the predicted label changed).",
            boundaries=DISAGREEMENT_BOUNDARIES,
            tag_keys=_tag_keys("model", "version"),
        )

        self.capture_rows = metrics.Counter(
            "rayml_capture_rows_total",
            description="Rows of requests and answers written by payload capture (serve.models.<m>.capture).",
            tag_keys=_tag_keys("model", "version", "route"),
        )
        self.capture_dropped = metrics.Counter(
            "rayml_capture_dropped_total",
            description="Captured rows dropped (the capture queue was full, or writing failed); never a failed request.",
            tag_keys=_tag_keys("model"),
        )
        self.labels = metrics.Counter(
            "rayml_labels_total",
            description="Ground-truth labels posted to the app: outcome joined (to a captured prediction held live), "
            "unknown (no such prediction held live; stored for `rayml monitor quality`), duplicate, conflict (a "
            "different label for an already labelled prediction: ignored), invalid (refused).",
            tag_keys=_tag_keys("model", "outcome"),
        )
        self.offline_quality = metrics.Gauge(
            "rayml_offline_quality",
            description="A served version's validation metric as registered (mae, rmse, accuracy, error_rate, logloss), "
            "next to rayml_live_quality.",
            tag_keys=_tag_keys("model", "version", "metric"),
        )

        # requests answered since the last flush_counts(), per (model, version, route, code): one counter update per
        # label set and second instead of one per request (recording a Ray metric costs tens of microseconds)
        self._counts: dict[tuple[str, str, str, str], int] = {}

    def request(self, model: str, version: Any, route: str, code: int, latency_s: float | None) -> None:
        key = (model, str(version), route, str(code))
        self._counts[key] = self._counts.get(key, 0) + 1
        if latency_s is not None:
            self.latency.observe(latency_s, tags={"model": model, "version": key[1], "route": route})

    def flush_counts(self) -> None:
        """Add the requests counted since the last call to ``rayml_requests_total`` (the ingress calls it every
        GAUGE_REFRESH_S, well inside any Prometheus scrape interval)."""
        counts, self._counts = self._counts, {}
        for (model, version, route, code), n in counts.items():
            self.requests.inc(n, tags={"model": model, "version": version, "route": route, "code": code})


class ModelMetrics:
    """Recorded by whatever runs a version: a model replica, or an ingress replica that runs its small models."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.load_time = metrics.Histogram(
            "rayml_model_load_seconds",
            description="Time to load a model (download + ONNX Runtime session) in a replica, in seconds.",
            boundaries=LOAD_BOUNDARIES_S,
            tag_keys=_tag_keys("model", "version"),
        )
        self.batch_rows = metrics.Histogram(
            "rayml_batch_rows",
            description="Rows per ONNX Runtime call after dynamic batching (versions in deployments of their own).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096],
            tag_keys=_tag_keys("model", "version"),
        )
        self.model_errors = metrics.Counter(
            "rayml_model_errors_total",
            description="Exceptions raised by model code (answered 500).",
            tag_keys=_tag_keys("model", "version"),
        )
        self.drift_errors = metrics.Counter(
            "rayml_drift_errors_total",
            description="Batches not counted for online drift (counting failed, or its queue was full); answered anyway.",
            tag_keys=_tag_keys("model", "version"),
        )
        self.quality_rows = metrics.Counter(
            "rayml_data_quality_rows_total",
            description="Served rows checked for data quality (the rows counted for online drift): what "
            "rayml_data_quality_total is a share of.",
            tag_keys=_tag_keys("model", "version"),
        )


@functools.cache
def model_metrics() -> ModelMetrics:
    """This process's :class:`ModelMetrics` (one set of metric objects, however many versions the process runs)."""
    return ModelMetrics()


class DependencyMetrics:
    """Library versions a served version was registered with against those of the process that runs it (see
    :mod:`rayml.serve._dependencies` for which differences count)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.mismatch = metrics.Gauge(
            "rayml_dependency_mismatch",
            description="1: the version runs here on a library version that differs from the one it was registered "
            "with (rayml: any; onnxruntime, its converter and torch: major.minor); 0: the same (an info series "
            "naming both versions). One series per compared library.",
            tag_keys=_tag_keys("model", "version", "library", "recorded", "installed"),
        )

    def publish(self, model: str, version: int, dependencies: Iterable[Any]) -> None:
        """Set one series per compared library (``dependencies``: :class:`rayml.serve._dependencies.Dependency`)."""
        for d in dependencies:
            tags = {"model": model, "version": str(version), "library": d.library, "recorded": d.recorded}
            self.mismatch.set(1 if d.mismatch else 0, tags={**tags, "installed": d.installed})


class DriftMetrics:
    """Online drift gauges and data-quality counters, set by the stats deployment from counts merged over every model
    replica (see :mod:`rayml.serve._drift` for the window they show)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.feature = metrics.Gauge(
            "rayml_feature_drift",
            description="Drift of a served feature against its training reference bins in the drift window: "
            "metric psi|js (numeric), linf|js (categorical).",
            tag_keys=_tag_keys("model", "version", "feature", "metric"),
        )
        self.feature_status = metrics.Gauge(
            "rayml_feature_drift_status",
            description="Drift status of a served feature: -1 insufficient data, 0 ok, 1 warn, 2 alert (serve.drift thresholds).",
            tag_keys=_tag_keys("model", "version", "feature"),
        )
        self.prediction = metrics.Gauge(
            "rayml_prediction_drift",
            description="Drift of a version's predictions against its reference prediction bins: metric psi|js (a "
            "multiclass model's predicted-class distribution: linf|js).",
            tag_keys=_tag_keys("model", "version", "metric"),
        )
        self.prediction_status = metrics.Gauge(
            "rayml_prediction_drift_status",
            description="Prediction drift status: -1 insufficient data, 0 ok, 1 warn, 2 alert.",
            tag_keys=_tag_keys("model", "version"),
        )
        self.window_rows = metrics.Gauge(
            "rayml_drift_window_rows",
            description="Rows counted (all replicas) in the drift window the drift gauges show.",
            tag_keys=_tag_keys("model", "version"),
        )
        self.quality = metrics.Counter(
            "rayml_data_quality_total",
            description="Served values with a data-quality problem: missing (null/NaN), wrong_type, out_of_range "
            "(outside the training min/max), unseen (a category never seen in training); feature __prediction__ for outputs.",
            tag_keys=_tag_keys("model", "version", "feature", "problem"),
        )

    def publish(self, model: str, version: int, values: dict[str, Any]) -> None:
        """Set every gauge of one version from :func:`rayml.serve._drift.gauge_values`."""
        base = {"model": model, "version": str(version)}
        for (feature, metric), v in values["feature"].items():
            self.feature.set(v, tags={**base, "feature": feature, "metric": metric})
        for feature, code in values["feature_status"].items():
            self.feature_status.set(code, tags={**base, "feature": feature})
        for metric, v in values["prediction"].items():
            self.prediction.set(v, tags={**base, "metric": metric})
        if values["prediction_status"] is not None:
            self.prediction_status.set(values["prediction_status"], tags=base)
        self.window_rows.set(values["rows"], tags=base)


class QualityMetrics:
    """Live quality gauges, set by the stats deployment from the labelled predictions of the live-quality window."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.live = metrics.Gauge(
            "rayml_live_quality",
            description="A version's quality on its labelled predictions of the last serve.live_quality_window_s "
            "(every route): mae, rmse (regression); accuracy, error_rate, logloss (binary; logloss needs probabilities).",
            tag_keys=_tag_keys("model", "version", "metric"),
        )
        self.labelled = metrics.Gauge(
            "rayml_live_labelled_rows",
            description="Labelled predictions behind rayml_live_quality.",
            tag_keys=_tag_keys("model", "version"),
        )

    def publish(self, model: str, version: int, labelled: int, values: dict[str, float]) -> None:
        base = {"model": model, "version": str(version)}
        self.labelled.set(labelled, tags=base)
        for metric, v in values.items():
            self.live.set(v, tags={**base, "metric": metric})


OFFLINE_METRICS = {"val_mae": "mae", "val_rmse": "rmse", "val_accuracy": "accuracy", "val_logloss": "logloss"}


def offline_quality(metrics: dict[str, float]) -> dict[str, float]:
    """A version's registered validation metrics under the names of rayml_live_quality."""
    out = {name: metrics[k] for k, name in OFFLINE_METRICS.items() if k in metrics}
    if "accuracy" in out:
        out["error_rate"] = 1.0 - out["accuracy"]
    return out
