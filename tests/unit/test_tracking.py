"""Who logs per-epoch metrics to MLflow: the worker when it can reach the store, else the Ray Train controller."""

from __future__ import annotations

from pathlib import Path

from rayml.registry import Registry
from rayml.train._tracking import MlflowReportCallback, is_local_store, worker_can_log


def test_local_stores_are_recognised() -> None:
    assert is_local_store("sqlite:////tmp/x/mlflow.db") and is_local_store("file:///tmp/mlruns") and is_local_store("/tmp/mlruns")
    assert not is_local_store("http://mlflow:5000") and not is_local_store("databricks")
    assert worker_can_log("http://mlflow:5000", driver_node_id="other-node")  # a server is reachable from anywhere
    assert worker_can_log("sqlite:////tmp/x.db", driver_node_id=None)  # no driver node given: the Tune trial path
    assert not worker_can_log(None, None)


def test_controller_callback_logs_only_what_workers_could_not(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = Registry(uri)
    run_id = reg.create_run("t", "r")
    cb = MlflowReportCallback(uri, run_id)
    cb.after_report(None, [{"epoch": 1, "val_loss": 1.0, "resumed_from_epoch": 0, "logged_by_worker": 0}], None)
    cb.after_report(None, [{"epoch": 2, "val_loss": 0.5, "resumed_from_epoch": 0, "logged_by_worker": 1}], None)  # skip
    cb.after_report(None, [{"epoch": 3, "val_loss": 0.4, "resumed_from_epoch": 2, "logged_by_worker": 0}], None)
    history = reg.client.get_metric_history(run_id, "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (3, 0.4)]
    assert [m.value for m in sorted(reg.client.get_metric_history(run_id, "resumed_from_epoch"), key=lambda m: m.step)] == [0, 2]
    assert "logged_by_worker" not in reg.client.get_run(run_id).data.metrics
