"""Training health for Prometheus: run outcomes, duration, last success (staleness) and per-worker resources.

Two sources, because a training job's driver exits when it is done and its metrics would leave with it:

- :class:`TrainingStatus` is a detached, zero-CPU actor (``rayml_training_status`` in namespace ``rayml``) on the
  connected Ray. Every ``rayml train`` / ``tune`` / ``manymodels train`` records its outcome there (best effort:
  monitoring never fails a training run), and the actor exports ``rayml_training_runs_total{model,kind,outcome}``,
  ``rayml_training_failures_total{model,kind}``, ``rayml_training_duration_seconds{model,kind,outcome}`` (the last
  run's wall time) and ``rayml_last_training_success_timestamp_seconds{model}``. When the actor (re)starts it seeds the
  last-success gauge from the registry (the newest version's creation time), so a restarted cluster does not report
  every model as never trained. On a cluster that outlives the jobs (KubeRay, ``clusters/local.sh``, the Ray of
  ``rayml serve up`` via ``RAY_ADDRESS``) Prometheus scrapes these like any other Ray metric; a laptop run on a
  throw-away local Ray keeps the same numbers in MLflow only.
- :class:`WorkerResources` runs inside every training worker: each epoch it samples the process's CPU use, resident
  memory and (on GPU) peak CUDA memory for MLflow (``worker<rank>_cpu_percent`` ...), and a daemon thread keeps the
  ``rayml_training_worker_*{model,run,rank}`` gauges current (every second) while the worker trains.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger("rayml.monitor")

STATUS_ACTOR = "rayml_training_status"
NAMESPACE = "rayml"
RESOURCE_KEYS = ("cpu_percent", "memory_rss_bytes", "gpu_memory_bytes")
# Ray drops a gauge from its Prometheus export once it has not been set for two metrics report intervals (at least
# 1 s each): the gauges here are set again at this period.
GAUGE_REFRESH_S = 1.0


@dataclass(frozen=True)
class TrainingOutcome:
    """How one training run (train, tune or many models) ended."""

    model: str
    kind: str  # train | tune | manymodels
    ok: bool
    duration_s: float
    finished_at: float  # unix seconds
    run_id: str | None = None
    error: str | None = None


class _StatusActor:
    """The state behind the Prometheus metrics; also answers :func:`training_status` for tests and the CLI."""

    def __init__(self, tracking_uri: str | None) -> None:
        from ray.util import metrics

        self._runs = metrics.Counter(
            "rayml_training_runs_total",
            description="Finished training runs, by model, kind (train|tune|manymodels) and outcome (success|failure).",
            tag_keys=("model", "kind", "outcome"),
        )
        self._failures = metrics.Counter(
            "rayml_training_failures_total",
            description="Training runs that failed after their retries, by model and kind.",
            tag_keys=("model", "kind"),
        )
        self._duration = metrics.Gauge(
            "rayml_training_duration_seconds",
            description="Wall time of the model's last training run, in seconds.",
            tag_keys=("model", "kind", "outcome"),
        )
        self._last_success = metrics.Gauge(
            "rayml_last_training_success_timestamp_seconds",
            description="Unix time of the model's last successful training (alert on time() minus this: staleness).",
            tag_keys=("model",),
        )
        self._state: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._seed(tracking_uri)
        threading.Thread(target=self._refresh_forever, name="rayml-training-gauges", daemon=True).start()

    def _refresh_forever(self) -> None:
        """Set the gauges again every GAUGE_REFRESH_S: Ray stops exporting a gauge that has not been set for two metrics
        report intervals, and the last-success time must stay visible for days (the staleness alert reads it)."""
        while True:
            time.sleep(GAUGE_REFRESH_S)
            with self._lock:
                entries = [(m, dict(e)) for m, e in self._state.items()]
            for model, e in entries:
                if "last_success" in e:
                    self._last_success.set(e["last_success"], tags={"model": model})
                last = e.get("last_outcome")
                if last:
                    outcome = "success" if last["ok"] else "failure"
                    self._duration.set(last["duration_s"], tags={"model": model, "kind": last["kind"], "outcome": outcome})

    def _seed(self, tracking_uri: str | None) -> None:
        if not tracking_uri:
            return
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri)
            for rm in client.search_registered_models():
                newest = max((v.creation_timestamp for v in rm.latest_versions or []), default=None)
                if newest:
                    self._set_success(rm.name, newest / 1000.0)
        except Exception as e:  # the registry may be unreachable from this node: start empty
            logger.warning("training status: could not read last successes from %s: %s", tracking_uri, e)

    def _set_success(self, model: str, ts: float) -> None:
        with self._lock:
            entry = self._state.setdefault(model, {"runs": 0, "failures": 0})
            newer = ts >= entry.get("last_success", 0.0)
            if newer:
                entry["last_success"] = ts
        if newer:
            self._last_success.set(ts, tags={"model": model})

    def record(self, outcome: dict[str, Any]) -> None:
        o = TrainingOutcome(**outcome)
        result = "success" if o.ok else "failure"
        with self._lock:
            entry = self._state.setdefault(o.model, {"runs": 0, "failures": 0})
            entry["runs"] += 1
            entry["last_outcome"] = asdict(o)
            if not o.ok:
                entry["failures"] += 1
        self._runs.inc(tags={"model": o.model, "kind": o.kind, "outcome": result})
        self._duration.set(o.duration_s, tags={"model": o.model, "kind": o.kind, "outcome": result})
        if o.ok:
            self._set_success(o.model, o.finished_at)
        else:
            self._failures.inc(tags={"model": o.model, "kind": o.kind})

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._state.items()}


def _actor(tracking_uri: str | None, create: bool = True) -> Any:  # a handle to the _StatusActor
    import ray

    if create:
        return (
            ray.remote(_StatusActor)
            .options(
                name=STATUS_ACTOR,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,
            )
            .remote(tracking_uri)
        )
    return ray.get_actor(STATUS_ACTOR, namespace=NAMESPACE)


def record_training_outcome(outcome: TrainingOutcome, tracking_uri: str | None = None, timeout_s: float = 30.0) -> bool:
    """Record ``outcome`` in the connected Ray's training-status actor; False when not possible (logged) or pointless
    (a local Ray this process started and takes down with it).

    Never raises: a monitoring hiccup must not turn a finished training run into a failed one.
    """
    try:
        import ray

        from rayml._private.ray_session import is_throwaway

        if not ray.is_initialized() or is_throwaway():  # nothing would scrape it: the Ray ends with this process
            return False
        ray.get(_actor(tracking_uri).record.remote(asdict(outcome)), timeout=timeout_s)
        return True
    except Exception as e:
        logger.warning("could not record the training outcome of %s for Prometheus: %s", outcome.model, e)
        return False


def training_status() -> dict[str, dict[str, Any]]:
    """Per model: runs, failures, last successful training (unix s) and the last outcome, from the connected Ray.

    Returns {} when no training has been recorded on this Ray.
    """
    import ray

    try:
        actor = _actor(None, create=False)
    except ValueError:
        return {}
    status: dict[str, dict[str, Any]] = ray.get(actor.snapshot.remote())
    return status


class WorkerResources:
    """Per-epoch resource samples of one training worker (see the module docstring)."""

    def __init__(self, model: str, run: str, rank: int) -> None:
        import psutil

        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call starts the measurement interval
        self._tags = {"model": model, "run": run, "rank": str(rank)}
        self.rank = rank
        self._gauges: dict[str, Any] | None = None

    def sample(self, gpu_memory_bytes: float | None = None) -> dict[str, float]:
        """``worker<rank>_<metric>`` -> value since the previous sample (for MLflow, once per epoch)."""
        values = {"cpu_percent": self._proc.cpu_percent(None), "memory_rss_bytes": float(self._proc.memory_info().rss)}
        if gpu_memory_bytes is not None:
            values["gpu_memory_bytes"] = float(gpu_memory_bytes)
        return {f"worker{self.rank}_{k}": v for k, v in values.items()}

    @contextlib.contextmanager
    def live_export(self, gpu_memory_bytes: Callable[[], float] | None = None) -> Iterator[None]:
        """While the block runs, a daemon thread sets the Prometheus gauges every GAUGE_REFRESH_S (an epoch can outlast
        Ray's gauge expiry, so per-epoch samples alone would flicker)."""
        import psutil

        proc = psutil.Process()  # its own CPU interval: the per-epoch samples keep theirs
        proc.cpu_percent(None)
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(GAUGE_REFRESH_S):
                values = {"cpu_percent": proc.cpu_percent(None), "memory_rss_bytes": float(proc.memory_info().rss)}
                if gpu_memory_bytes is not None:
                    values["gpu_memory_bytes"] = float(gpu_memory_bytes())
                self._export(values)

        thread = threading.Thread(target=run, name="rayml-worker-gauges", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()

    def _export(self, values: dict[str, float]) -> None:
        try:
            if self._gauges is None:
                from ray.util import metrics

                keys = ("model", "run", "rank")
                self._gauges = {
                    "cpu_percent": metrics.Gauge(
                        "rayml_training_worker_cpu_percent", description="CPU use of a training worker (100 = one core).",
                        tag_keys=keys,
                    ),
                    "memory_rss_bytes": metrics.Gauge(
                        "rayml_training_worker_memory_bytes", description="Resident memory of a training worker.", tag_keys=keys
                    ),
                    "gpu_memory_bytes": metrics.Gauge(
                        "rayml_training_worker_gpu_memory_bytes",
                        description="Peak CUDA memory allocated by a training worker.",
                        tag_keys=keys,
                    ),
                }
            for k, v in values.items():
                self._gauges[k].set(v, tags=self._tags)
        except Exception as e:  # outside Ray (a plain loop) there is nothing to export to
            logger.debug("training worker gauges not exported: %s", e)
