"""Per-epoch metrics to MLflow, live while training runs.

Rank 0 logs each epoch itself as soon as it is computed, when it can reach the tracking store: a tracking server, or a
file-based store (the embedded ``sqlite:///``) from the driver's own node. A worker on another node writing to
``sqlite:///...`` would silently create a second database on its own disk, so there the Ray Train controller logs
instead (it runs on the driver's node; :class:`MlflowReportCallback`). Worker-first matters: a report the
controller has not polled yet (about 2 s) is lost if the worker dies, its metrics with it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.train import UserCallback

from rayml.monitor.training import RESOURCE_KEYS

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RESOURCE_SUFFIXES = tuple(f"_{k}" for k in RESOURCE_KEYS)

logger = logging.getLogger("rayml.train")


def is_local_store(tracking_uri: str) -> bool:
    """A tracking store that lives on one machine's disk (SQLite file, file store, bare path)."""
    if tracking_uri.startswith(("sqlite:", "file:")):
        return True
    return ":" not in tracking_uri and tracking_uri != "databricks"  # a bare path is a file store


def worker_can_log(tracking_uri: str | None, driver_node_id: str | None) -> bool:
    """Whether this process can log to ``tracking_uri`` (see the module docstring)."""
    if not tracking_uri:
        return False
    if driver_node_id is None or not is_local_store(tracking_uri):
        return True
    import ray

    return ray.get_runtime_context().get_node_id() == driver_node_id


class EpochMetricsLogger:
    """Log a metrics dict at a step to one MLflow run; best effort (tracking must never kill training)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client: MlflowClient | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.tracking_uri and self.run_id)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.log_many([(metrics, step)])

    def log_many(self, rows: list[tuple[dict[str, Any], int]]) -> None:
        """Log several steps' metrics in one batch (the tree loop's rounds between two checkpoints)."""
        if not self.enabled or self.run_id is None:  # enabled: both are set
            return
        from mlflow.entities import Metric

        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        ts = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), ts, step)
            for metrics, step in rows
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        ]
        try:
            self._client.log_batch(self.run_id, metrics=batch)
        except Exception as e:
            logger.warning("could not log metrics to MLflow: %s", e)


class MlflowReportCallback(UserCallback):
    """Runs in the Ray Train controller: logs rank 0's metrics of every report (unless rank 0 logged them itself), each
    attempt's start epoch, and the resource samples of the other ranks."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.logger = EpochMetricsLogger(tracking_uri, run_id)
        self._attempt_start: int | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        for other in metrics[1:]:  # the other ranks' resource samples (rank 0's travel with its own metrics)
            resources = {k: v for k, v in other.items() if k.startswith("worker") and k.endswith(RESOURCE_SUFFIXES)}
            self.logger.log(resources, step=int(other.get("epoch", m["epoch"])))
        if m.get("logged_by_worker"):
            return
        start = int(m.get("resumed_from_epoch", 0))
        if start != self._attempt_start:  # a new attempt: from scratch, a restarted worker group or a new driver
            self._attempt_start = start
            self.logger.log({"resumed_from_epoch": start}, step=start)
        self.logger.log({k: v for k, v in m.items() if k not in ("resumed_from_epoch", "logged_by_worker")}, step=int(m["epoch"]))
