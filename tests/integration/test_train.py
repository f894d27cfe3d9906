"""Ray Train on the shared local Ray: learning, checkpoint recovery, reproducibility, early stopping, DDP."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rayml.config import TrainJobConfig, load_config
from rayml.errors import DataValidationError, TrainingError
from rayml.monitor.training import training_status
from rayml.registry import Registry
from rayml.testing import sales_columns
from rayml.train import train

pytestmark = pytest.mark.usefixtures("ray_session")


def small_cfg(tmp_path: Path, tracking_uri: str, *extra: str) -> TrainJobConfig:
    return load_config(
        TrainJobConfig,
        None,
        [
            "data.synthetic.segments=4",
            "data.synthetic.rows_per_segment=100",
            "train.epochs=3",
            "train.batch_size=32",
            "train.learning_rate=0.01",
            "model.hidden_sizes=[16]",
            f"train.storage_path={tmp_path / 'runs'}",
            f"registry.tracking_uri={tracking_uri}",
            *extra,
        ],
    )


def val_losses(registry: Registry, run_id: str) -> list[float]:
    history = sorted(registry.client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)
    return [m.value for m in history]


def test_loss_falls_early_stopping_registers_the_best_epoch_with_lineage_seeded_runs_match_and_rerun_is_a_noop(
    tmp_path: Path, tracking_uri: str
) -> None:
    # min_delta so large that nothing after epoch 1 counts as an improvement: stop after patience=2 more epochs
    settings = ("train.epochs=6", "train.early_stopping_patience=2", "train.early_stopping_min_delta=100", "model.dropout=0.2")
    cfg = small_cfg(tmp_path, tracking_uri, "train.run_name=seeded-a", *settings)
    result = train(cfg)
    reg = Registry(tracking_uri)

    losses = val_losses(reg, result.mlflow_run_id)
    assert len(losses) == 3 and losses[2] < losses[0]  # it learns
    assert result.epoch_history == [1, 2, 3] and result.resumed_from == [0]
    assert result.epochs_completed == 3 and result.early_stopped
    best = int(np.argmin(losses)) + 1
    assert result.best_epoch == best  # the registered model is the lowest-val_loss checkpoint
    assert result.model_version.tags["rayml.best_epoch"] == str(best)

    v = result.model_version
    assert v is not None and (v.name, v.version) == ("sales-model", 1)
    for tag in ("rayml.data_fingerprint", "rayml.git_commit", "rayml.run_id", "rayml.ray_version", "rayml.torch_version"):
        assert v.tags[tag], tag
    assert v.tags["rayml.data_fingerprint"] == result.data_fingerprint
    assert v.tags["rayml.run_id"] == result.mlflow_run_id == v.run_id
    params = reg.client.get_run(result.mlflow_run_id).data.params
    assert params["train.learning_rate"] == "0.01" and params["model.hidden_sizes"] == "[16]"

    loaded = reg.load("sales-model:1")
    meta = json.loads((loaded.path / "rayml_model.json").read_text())
    assert meta["parity_max_abs_diff"] <= 1e-4
    assert set(loaded.reference_stats["features"]) == {i["name"] for i in meta["inputs"]}
    from rayml.config import DataConfig
    from rayml.data import load_table

    rows = load_table(DataConfig(synthetic=cfg.data.synthetic)).head(50)
    preds = loaded.predict(rows)
    assert preds.shape == (50,) and np.isfinite(preds).all()

    again = train(cfg)  # the same command after success: nothing retrained, nothing registered twice
    assert again.already_done and again.model_version.version == 1
    assert [v.version for v in reg.versions("sales-model")] == [1]

    # the same seed again (dropout on): the same losses and metrics, as a second run and version
    b = train(small_cfg(tmp_path, tracking_uri, "train.run_name=seeded-b", *settings))
    assert val_losses(reg, b.mlflow_run_id) == losses
    assert result.metrics["val_rmse"] == b.metrics["val_rmse"]
    assert b.model_version.version == 2  # two runs, two versions


# a killed worker process is the harder case of the two (no exception reaches Ray Train, the actor just dies); an
# exception in the loop takes the same restart path and is covered with max_failures=0 below and in the pipeline test.
# DDP with two workers: rank 0 dies, the whole group restarts (one run covers both promises: the suite's time budget)
def test_ddp_worker_killed_in_epoch_3_resumes_from_epoch_2_and_records_each_workers_resources(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYML_FAULT_INJECT", "kill_worker@epoch=3")
    result = train(
        small_cfg(tmp_path, tracking_uri, "train.num_workers=2", "train.epochs=4", "train.max_failures=2", "model.name=ddp-model")
    )
    # the first attempt ran epochs 1-2 and died inside 3; the restarted worker group started from epoch 2's checkpoint
    assert result.resumed_from == [0, 2]
    assert result.epoch_history == [1, 2, 3, 4]  # no epoch trained twice to completion, none skipped
    assert result.epochs_completed == 4
    assert result.model_version is not None and result.model_version.name == "ddp-model"
    assert np.isfinite(result.metrics["val_rmse"])

    client = Registry(tracking_uri).client
    for rank in (0, 1):
        rss = client.get_metric_history(result.mlflow_run_id, f"worker{rank}_memory_rss_bytes")
        cpu = client.get_metric_history(result.mlflow_run_id, f"worker{rank}_cpu_percent")
        steps = sorted(m.step for m in rss)
        assert all(m.value > 50e6 for m in rss) and all(m.value >= 0 for m in cpu)  # a torch worker: > 50 MB
        assert sorted(m.step for m in cpu) == steps and len(set(steps)) == len(steps)  # one sample per epoch
        if rank == 0:  # rank 0 logs its own, as it reports
            assert steps == [1, 2, 3, 4]
        else:  # rank 1's reach MLflow through the controller, which collects reports every poll: the reports of
            # epochs before the kill that it had not collected yet die with the worker group
            assert {3, 4} <= set(steps) <= {1, 2, 3, 4}, steps
    assert client.get_run(result.mlflow_run_id).data.metrics["train_time_s"] > 0

    status = training_status()["ddp-model"]
    assert status["runs"] == 1 and status["failures"] == 0
    assert abs(status["last_success"] - time.time()) < 120


def test_a_failed_run_is_marked_in_mlflow_and_counted_for_prometheus(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYML_FAULT_INJECT", "raise@epoch=1")
    with pytest.raises(TrainingError) as e:
        train(small_cfg(tmp_path, tracking_uri, "train.epochs=2", "train.max_failures=0", "model.name=failing-model"))
    assert "re-run the same command" in e.value.hint

    reg = Registry(tracking_uri)
    (run,) = reg.client.search_runs([reg.experiment_id("rayml")])
    assert run.info.status == "FAILED" and "injected" in run.data.tags["rayml.failure"]
    assert run.data.metrics["train_time_s"] > 0
    status = training_status()["failing-model"]
    assert status["failures"] == 1 and "last_success" not in status
    assert status["last_outcome"]["ok"] is False and status["last_outcome"]["kind"] == "train"

    # and Ray exports it (the session Ray reports metrics every second, see conftest)
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    line = None
    deadline = time.monotonic() + 30
    while line is None and time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        line = next(
            (x for x in text.splitlines() if x.startswith("ray_rayml_training_failures_total{") and 'model="failing-model"' in x),
            None,
        )
        time.sleep(0.5)
    assert line is not None and float(line.rsplit(" ", 1)[1]) == 1.0


def test_a_diverged_ray_run_fails_at_once_without_retries_and_registers_nothing(tmp_path: Path, tracking_uri: str) -> None:
    # a NaN loss is deterministic: a retried worker group would diverge again from the same checkpoint
    cfg = small_cfg(tmp_path, tracking_uri, "train.learning_rate=1e30", "train.max_failures=1", "model.name=diverging")
    with pytest.raises(TrainingError) as e:
        train(cfg)
    msg = str(e.value)  # the worker's own words
    assert "training diverged: the training loss is " in msg and " at epoch 1, batch " in msg
    assert e.value.hint and "lower the learning rate (now 1e+30)" in e.value.hint
    reg = Registry(tracking_uri)
    (run,) = reg.client.search_runs([reg.experiment_id("rayml")])
    assert run.info.status == "FAILED" and "training diverged" in run.data.tags["rayml.failure"]
    assert [p.value for p in reg.metric_history(run.info.run_id, "resumed_from_epoch")] == [0.0]  # one attempt only
    assert reg.list_models() == [] and not list((tmp_path / "runs").glob("*/checkpoint_*"))


def test_bad_data_fails_before_any_run_is_created(tmp_path: Path, tracking_uri: str) -> None:
    import pandas as pd

    (tmp_path / "d").mkdir()
    pd.DataFrame({"price": [1.0, 2.0], "store_id": ["a", "b"]}).to_parquet(tmp_path / "d" / "x.parquet")
    with pytest.raises(DataValidationError) as e:
        train(small_cfg(tmp_path, tracking_uri, f"data.source={tmp_path / 'd'}", *sales_columns()))
    assert "target column 'sales' is missing" in str(e.value)
    reg = Registry(tracking_uri)
    assert reg.client.search_runs([reg.experiment_id("rayml")]) == []


def test_multiclass_wine_with_the_users_own_network_registers_labels_probabilities_and_its_factory(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multiclass (string labels) on a real dataset, trained with a torch network of the user's (model.factory) from
    a module outside rayml that only the driver can import: the Ray Train worker finds it through the driver's path."""
    import pandas as pd
    from sklearn.datasets import load_wine

    import rayml
    from rayml.models import ModelDir

    bunch = load_wine(as_frame=True)
    df = bunch.frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})
    df["cultivar"] = bunch.target_names[df.pop("target")]  # "class_0", "class_1", "class_2"
    df.to_parquet(tmp_path / "wine.parquet")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "jobs" / "examples"))
    result = rayml.train_model(
        None,
        overrides={
            "data.source": str(tmp_path / "wine.parquet"),
            "data.target": "cultivar",
            "data.task": "multiclass",
            "data.segment": [],
            "data.ignore_columns": [],
            "data.validation_fraction": 0.3,
            "model.name": "wine",
            "model.factory": "tabular_nets:resnet_mlp",
            "model.factory_kwargs": {"width": 16, "depth": 1},
            "train.epochs": 8,
            "train.batch_size": 16,
            "train.learning_rate": 0.02,
            "train.storage_path": str(tmp_path / "runs"),
            "registry.tracking_uri": tracking_uri,
        },
    )
    majority = float(df["cultivar"].value_counts(normalize=True).iloc[0])  # about 0.4
    assert {"val_loss", "val_accuracy", "val_macro_f1", "val_logloss"} <= set(result.metrics)
    assert result.metrics["val_accuracy"] > majority + 0.3 and result.metrics["val_macro_f1"] > 0.6

    md: ModelDir = Registry(tracking_uri).load("wine:1").model_dir
    assert md.task == "multiclass" and md.class_labels == ["class_0", "class_1", "class_2"]
    assert md.schema is not None and md.schema.classes == ("class_0", "class_1", "class_2")
    assert [(o.name, o.datatype, o.shape) for o in md.outputs] == [("label", "BYTES", [-1]), ("probabilities", "FP32", [-1, 3])]
    got = md.predictor().predict_all(df)
    assert got["probabilities"].shape == (len(df), 3)
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert set(got["label"].tolist()) <= set(md.class_labels)
    assert float(np.mean(got["label"] == df["cultivar"].to_numpy())) > majority + 0.3
    assert md.meta["parity_max_abs_diff"] <= 1e-4
    assert md.reference_stats()["prediction"]["kind"] == "categorical"  # predicted classes, binned per class
    assert isinstance(pd.Series(got["label"]).iloc[0], str)
    source = md.meta["source"]  # the lineage names the network, and the spec rebuilds it from a checkpoint
    assert (source["framework"], source["factory"], source["factory_kwargs"]) == (
        "torch-factory",
        "tabular_nets:resnet_mlp",
        {"width": 16, "depth": 1},
    )
    spec = md.meta["spec"]
    assert (spec["factory"], spec["factory_kwargs"]) == ("tabular_nets:resnet_mlp", {"width": 16, "depth": 1})
