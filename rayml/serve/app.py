"""Build the rayml Serve application from an :class:`~rayml.serve._spec.AppSpec`.

``rayml.serve.app:build_app`` is the import path for ``serve deploy`` and KubeRay's RayService ``serveConfigV2``
(``rayml serve build`` prints a ready config); ``rayml serve up`` calls :func:`build_application` directly.

Every deployment gets an explicit ``version`` derived from the serving code and its own settings, so redeploying
the application restarts only what changed: a new weight reconfigures the ingress, a new version adds one
deployment, and untouched versions keep their replicas.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

from ray import serve
from ray.serve import Application

from rayml._private import faults
from rayml.config import ServeJobConfig
from rayml.feedback import LabelStats
from rayml.serve._drift import DriftStore, Row, gauge_values, quality_deltas
from rayml.serve._ingress import Ingress
from rayml.serve._metrics import GAUGE_REFRESH_S
from rayml.serve._model import ModelServer
from rayml.serve._spec import INGRESS, STATS, AppSpec, ModelSpec, VersionSpec, check_spec, code_version
from rayml.serve._stats import StatsStore, VersionStats

logger = logging.getLogger("rayml.serve")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class RaymlStats:
    """Aggregates what every replica pushes: per-version request counts from the ingress replicas (the rollout
    controller reads windows) and online drift counts from the model replicas (it sets the drift gauges).

    Args:
        drift_window_s: online drift window (see :mod:`rayml.serve._drift`).
        drift: thresholds and ``min_rows`` as a :class:`~rayml.config.DriftConfig` dict.
    """

    def __init__(
        self,
        drift_window_s: float = 300.0,
        drift: dict[str, Any] | None = None,
        live_quality_window_s: float = 3600.0,
        live_join_max_predictions: int = 200_000,
    ) -> None:
        from rayml.config import DriftConfig
        from rayml.serve._metrics import DriftMetrics, QualityMetrics

        # labels may come an hour after their predictions: keep the buckets of the whole live-quality window
        self.store = StatsStore(retention_s=max(3600.0, live_quality_window_s))
        self.store.live.max_predictions = live_join_max_predictions
        self.live_quality_window_s = live_quality_window_s
        self._tasks: dict[str, str] = {}  # model -> task, of models that received labels
        self._quality_metrics = QualityMetrics()
        self.drift = DriftStore(drift_window_s, DriftConfig.model_validate(drift or {}))
        self._drift_metrics = DriftMetrics()
        self._lock = threading.Lock()  # the drift and stats stores are read by the gauge refresher thread too
        threading.Thread(target=self._refresh_gauges_forever, name="rayml-drift-gauges", daemon=True).start()

    def push(self, rows: list[tuple[int, str, int, str, dict[str, Any]]]) -> None:
        with self._lock:
            self.store.push(rows)

    def push_predictions(self, rows: list[tuple[Any, ...]]) -> None:
        """Captured answers from an ingress replica, held for the live join with their labels."""
        with self._lock:
            self.store.push_predictions(rows)

    def label(self, model: str, task: str, positive: str | None, entries: list[tuple[str, int, str]]) -> dict[str, int]:
        """Join labels to held answers (their quality counts in the buckets of the predictions' time)."""
        with self._lock:
            self._tasks[model] = task
            counts = self.store.label(model, task, positive, entries)
        self._publish_quality(model)
        return counts

    def live_quality(self, model: str, since: float | None = None) -> dict[int, dict[str, Any]]:
        """Per version: labelled predictions and live metrics since ``since`` (default: the live-quality window)."""
        since = time.time() - self.live_quality_window_s if since is None else since
        with self._lock:
            window = self.store.window(model, since, None)
            task = self._tasks.get(model, "regression")
        per_version: dict[int, LabelStats] = {}
        for key, stats in window.items():
            version = int(key.partition("/")[0])
            s = VersionStats(**stats).label_stats
            if s.labelled:
                per_version.setdefault(version, LabelStats()).merge(s)
        return {v: {"task": task, **s.summary(task)} for v, s in sorted(per_version.items())}

    def _publish_quality(self, model: str) -> None:
        for version, q in self.live_quality(model).items():
            metrics = {k: v for k, v in q.items() if k in ("mae", "rmse", "accuracy", "error_rate", "logloss")}
            self._quality_metrics.publish(model, version, q["labelled"], metrics)

    def window(self, model: str, since: float, until: float | None = None) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self.store.window(model, since, until)

    def started_at(self) -> float:
        """When this replica's counts begin (a rollout never judges a window that began before)."""
        return self.store.started_at

    def push_drift(self, replica: str, model: str, version: int, references: dict[str, Any], rows: list[Row]) -> int:
        """Merge one model replica's drift counts, count data-quality problems and refresh the version's gauges."""
        with self._lock:
            merged = self.drift.push(replica, model, version, references, rows)
            report = self.drift.report(model, version)
        tags = {"model": model, "version": str(version)}
        for (feature, problem), n in quality_deltas(rows).items():
            self._drift_metrics.quality.inc(n, tags={**tags, "feature": feature, "problem": problem})
        if report is not None:
            self._drift_metrics.publish(model, version, gauge_values(report))
        return merged

    def drift_report(self, model: str | None = None) -> dict[str, dict[int, dict[str, Any]]]:
        """``{model: {version: report}}`` for every served version with counts (see :mod:`rayml.serve._drift`)."""
        out: dict[str, dict[int, dict[str, Any]]] = {}
        with self._lock:
            for m, v in self.drift.versions(model):
                report = self.drift.report(m, v)
                if report is not None:
                    out.setdefault(m, {})[v] = report
        return out

    def _refresh_gauges_forever(self) -> None:
        """Keep every version's drift gauges exported while it has a window to show (see GAUGE_REFRESH_S); a version
        with no counts in its last two windows drops out of the export."""
        while True:
            time.sleep(GAUGE_REFRESH_S)
            try:
                for model, versions in self.drift_report().items():
                    for version, report in versions.items():
                        self._drift_metrics.publish(model, version, gauge_values(report))
                for model in list(self._tasks):
                    self._publish_quality(model)
            except Exception as e:  # never let the refresher die: the next tick tries again
                logger.warning("could not refresh the drift and quality gauges: %s", e)


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pin_version(deployment: Any, version: str) -> Any:
    """Give a deployment a fixed code version, so redeploying the application leaves its replicas alone.

    Ray 2.60 removed the public ``version`` option and gives every ``serve.run`` a random code version, which
    restarts every replica on each update; the internal flag still sets it (Serve's own config path does the same).
    Should a future Ray drop it, updates fall back to Serve's rolling restarts (slower, still no dropped requests).
    """
    try:
        return deployment.options(version=version, _internal=True)
    except (TypeError, ValueError) as e:
        logger.warning("cannot pin the version of deployment %s (%s): updates will restart its replicas", deployment.name, e)
        return deployment


def _scaling(settings: dict[str, Any]) -> dict[str, Any]:
    auto = settings.get("autoscaling")
    if auto:
        return {
            "autoscaling_config": {
                "min_replicas": auto["min_replicas"],
                "max_replicas": auto["max_replicas"],
                "initial_replicas": max(auto["min_replicas"], 1),
                "target_ongoing_requests": auto["target_ongoing_requests"],
                "upscale_delay_s": auto["upscale_delay_s"],
                "downscale_delay_s": auto["downscale_delay_s"],
            }
        }
    return {"num_replicas": settings["num_replicas"]}


def model_deployment(spec: AppSpec, m: ModelSpec, v: VersionSpec) -> Application:
    """The bound deployment of one served version."""
    d = m.deployment
    init = {
        "model": m.name,
        "version": v.version,
        "tracking_uri": spec.tracking_uri,
        "local_path": v.local_path,
        "intra_op_threads": d.intra_op_threads,
        "max_batch_size": d.max_batch_size,
        "batch_wait_timeout_s": d.batch_wait_timeout_s,
        "drift_window_s": spec.drift_window_s,
        "drift_flush_interval_s": spec.stats_flush_interval_s,
    }
    fault = faults.serve_fault(m.name, v.version)
    if fault:  # only under rayml.testing.serve_faults, in the deploying process (see rayml._private.faults)
        init["_fault"] = fault
    cls: Any = ModelServer
    if m.kind == "model_set":
        from rayml.serve._model_set import ModelSetServer

        cls = ModelSetServer
        init["max_models_per_replica"] = d.max_models_per_replica
    options = {
        "name": v.deployment,
        "ray_actor_options": {"num_cpus": d.num_cpus},
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_constructor_retry_count": d.max_constructor_retry_count,
        **_scaling(d.model_dump()),
    }
    # init args are not part of Serve's restart check, so they go into the version
    return _pin_version(cls.options(**options), _hash(code_version(), init)).bind(**init)


def build_application(spec: AppSpec) -> Application:
    """The Serve application for ``spec``: ingress (with ``spec`` as user_config), stats, and one deployment per version
    of every model placed in ``replicas`` (models placed in the ingress run inside it)."""
    check_spec(spec)
    bound = {
        v.deployment: model_deployment(spec, m, v) for m in spec.models.values() if m.placement == "replicas" for v in m.versions
    }
    drift = {
        "drift_window_s": spec.drift_window_s,
        "drift": spec.drift.model_dump(),
        "live_quality_window_s": spec.live_quality_window_s,
        "live_join_max_predictions": spec.live_join_max_predictions,
    }
    # @serve.deployment made both Deployments; mypy keeps a class decorator's input type (python/mypy#3135)
    stats = _pin_version(RaymlStats.options(name=STATS), _hash(code_version(), "stats", drift)).bind(**drift)  # type: ignore[attr-defined]
    ingress = Ingress.options(  # type: ignore[attr-defined]
        name=INGRESS,
        user_config=spec.to_user_config(),
        ray_actor_options={"num_cpus": spec.ingress.num_cpus},
        max_ongoing_requests=spec.ingress.max_ongoing_requests,
        **_scaling(spec.ingress.model_dump()),
    )
    # only under rayml.testing.serve_faults (see rayml._private.faults): the faults of versions placed in the ingress
    inline_faults = {
        f"{m.name}:{v.version}": fault
        for m in spec.models.values()
        if m.placement == "ingress"
        for v in m.versions
        if (fault := faults.serve_fault(m.name, v.version))
    }
    init = {"_faults": inline_faults} if inline_faults else {}
    ingress = _pin_version(ingress, _hash(code_version(), "ingress", init))
    return ingress.bind(_stats=stats, **init, **bound)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve deploy`` / KubeRay: ``args = {"spec": <AppSpec as JSON>}``.

    Example:
        ``import_path: rayml.serve.app:build_app`` with ``args: {spec: {...}}`` (``rayml serve build`` writes it).
    """
    return build_application(AppSpec.model_validate(args["spec"]))


def build_serve_config(cfg: ServeJobConfig, registry: Any = None) -> str:
    """The Ray Serve config YAML (``serve deploy`` / KubeRay ``serveConfigV2``) of the application ``cfg`` describes.

    Versions are resolved to numbers now (aliases move; a manifest must not), and model directories are fetched
    from the registry by the replicas (``registry.tracking_uri`` must be reachable from the cluster).

    Args:
        cfg: the serve job config (what `rayml serve up` would deploy).
        registry: a :class:`rayml.registry.Registry` (default: from ``cfg.registry``).

    Example:
        >>> open("serve_config.yaml", "w").write(build_serve_config(cfg))   # then: serve deploy serve_config.yaml
    """
    import yaml

    from rayml.registry import Registry
    from rayml.serve._spec import resolve_spec

    registry = registry or Registry(cfg.registry.tracking_uri)
    spec = resolve_spec(cfg, registry, local=False)
    user_config = spec.to_user_config()
    doc = {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.serve.host, "port": cfg.serve.port},
        "applications": [
            {
                "name": spec.app_name,
                "route_prefix": spec.route_prefix,
                "import_path": "rayml.serve.app:build_app",
                "args": {"spec": user_config},
                "deployments": [{"name": INGRESS, "user_config": user_config}],
            }
        ],
    }
    header = (
        "# Generated by `rayml serve build`. Use: `serve deploy THIS_FILE`, or put `applications` under a KubeRay\n"
        "# RayService's spec.serveConfigV2. Weights and shadow: edit deployments[Ingress].user_config (the ingress\n"
        "# reconfigures, no replica restarts). Editing `args` (e.g. adding a version) restarts every replica.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)
