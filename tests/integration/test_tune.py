"""Real searches on the shared local Ray: ASHA stops trailing trials, the best model is registered with its lineage,
MLflow has a parent run and one child run per trial; Optuna drives trials that each run a 2-worker TorchTrainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayml.config import TuneJobConfig
from rayml.registry import Registry
from rayml.tune import tune

pytestmark = pytest.mark.usefixtures("ray_session")


def _cfg(tmp_path: Path, tracking_uri: str, tune_section: dict, train: dict | None = None) -> TuneJobConfig:
    # the model name follows the search: Registry caches downloads by name and version under the session's RAYML_HOME
    return TuneJobConfig.model_validate(
        {
            "data": {"synthetic": {"segments": 4, "rows_per_segment": 100, "seed": 0}},
            "model": {"name": f"model-{tune_section['name']}", "hidden_sizes": [16]},
            "train": {"epochs": 4, "batch_size": 32, "storage_path": str(tmp_path / "runs"), **(train or {})},
            "registry": {"tracking_uri": tracking_uri, "experiment": "tune-test"},
            "tune": tune_section,
        }
    )


def test_asha_stops_trailing_trials_and_the_best_model_is_registered(tmp_path: Path, tracking_uri: str) -> None:
    # One trial at a time, in grid order: the good learning rate sets each rung's bar, the tiny ones fall below it.
    cfg = _cfg(
        tmp_path,
        tracking_uri,
        {
            "name": "asha-it",
            "metric": "val_rmse",
            "scheduler": "asha",
            "asha": {"grace_period": 1, "reduction_factor": 2},
            "search": "grid",
            "max_concurrent_trials": 1,
            "space": {
                "train.learning_rate": {"grid": [0.02, 0.00001, 0.01, 0.00002]},
                "model.hidden_sizes": {"grid": [[16]]},
            },
        },
    )
    result = tune(cfg)

    trials = result.trials
    assert len(trials) == 4 and result.total_epochs == sum(t.epochs_run for t in trials)
    killed = [t for t in trials if t.status == "KILLED"]
    assert all(t.stopped_by == "asha" and t.epochs_run < 4 for t in killed)
    # the tiny learning rates trail the first trial at the first rung (epoch 1) and stop there
    tiny = [t for t in trials if t.params["train.learning_rate"] < 0.001]
    assert len(tiny) == 2 and all(t in killed and t.epochs_run == 1 for t in tiny), [
        (t.params, t.epochs_run, t.status) for t in trials
    ]
    assert result.total_epochs < 4 * 4  # ASHA saved epochs
    # best first, and the best is the lowest validation RMSE any trial reached
    assert [t.best_metric for t in trials] == sorted(t.best_metric for t in trials)
    best = result.best
    assert best.best_metric == min(v for t in trials for _, v in t.curve)
    assert best.params["train.learning_rate"] in (0.02, 0.01) and best.status == "FINISHED"
    assert result.best_config.train.learning_rate == best.params["train.learning_rate"]

    # registered like `rayml train`: lineage tags plus the search and trial, run = the best trial's child run
    reg = Registry(tracking_uri)
    v = result.model_version
    assert v is not None and (v.name, v.version) == ("model-asha-it", 1)
    assert v.tags["rayml.tune_search_id"] == "asha-it"
    assert v.tags["rayml.tune_trial_id"] == best.trial_id
    assert v.tags["rayml.best_epoch"] == str(best.best_epoch)
    for key in ("rayml.data_fingerprint", "rayml.git_commit", "rayml.ray_version", "rayml.torch_version"):
        assert v.tags[key]
    assert v.run_id == best.mlflow_run_id

    # the registered ONNX model is the best epoch's: its validation RMSE matches what the trial reported
    from rayml.config import DataConfig
    from rayml.train import prepare_data

    prepared = prepare_data(DataConfig.model_validate(cfg.data.model_dump()), cfg.train.seed)
    loaded = reg.load("model-asha-it:1")
    pred = np.asarray(loaded.predict(prepared.validation), dtype="float64").reshape(-1)
    rmse = float(np.sqrt(np.mean((pred - prepared.validation["sales"].to_numpy()) ** 2)))
    assert rmse == pytest.approx(best.best_metric, rel=1e-3)

    # MLflow: a finished parent run with the results and curves; a child run per trial with per-epoch metrics
    parent = reg.client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_stopped_early"] == len(killed)
    artifacts = {a.path for a in reg.client.list_artifacts(result.parent_run_id)}
    assert {"results.csv", "learning_curves.png"} <= artifacts
    for t in trials:
        child = reg.client.get_run(t.mlflow_run_id)
        assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert child.data.tags["rayml.tune_trial_id"] == t.trial_id
        assert child.info.status == ("KILLED" if t in killed else "FINISHED")
        assert float(child.data.params["train.learning_rate"]) == pytest.approx(t.params["train.learning_rate"])
        steps = [m.step for m in reg.client.get_metric_history(t.mlflow_run_id, "val_rmse")]
        assert sorted(steps) == list(range(1, t.epochs_run + 1))

    # results and learning curves next to the experiment
    csv_lines = Path(result.results_path).read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[1].split(",")[1] == best.trial_id
    assert Path(result.plot_path).read_bytes()[:4] == b"\x89PNG"


def test_optuna_search_with_a_torch_trainer_per_trial(tmp_path: Path, tracking_uri: str) -> None:
    cfg = _cfg(
        tmp_path,
        tracking_uri,
        {
            "name": "optuna-ddp-it",
            "search": "optuna",
            "scheduler": "fifo",
            "num_samples": 2,
            "max_concurrent_trials": 2,
            "workers_per_trial": 2,
            "seed": 3,
            "space": {"train.learning_rate": {"loguniform": [1e-3, 3e-2]}, "model.hidden_sizes": {"choice": [[8], [16, 8]]}},
        },
        train={"epochs": 2},
    )
    result = tune(cfg)

    assert len(result.trials) == 2
    for t in result.trials:
        assert t.status == "FINISHED" and t.epochs_run == 2 and t.best_metric is not None
        assert 1e-3 <= t.params["train.learning_rate"] <= 3e-2
        assert t.params["model.hidden_sizes"] in ([8], [16, 8])
        # each trial ran a TorchTrainer whose checkpoints live under the experiment's _train/ directory
        assert list((Path(result.experiment_path) / "_train" / f"trial_{t.trial_id}").glob("checkpoint_*"))
    assert result.model_version is not None
    meta = Registry(tracking_uri).load(result.model_version.ref).meta
    assert meta["spec"]["hidden_sizes"] == result.best.params["model.hidden_sizes"]
    assert meta["tune"]["trial_id"] == result.best.trial_id


def test_a_diverging_trial_ends_without_retries_and_the_search_goes_on(tmp_path: Path, tracking_uri: str) -> None:
    # learning rate 1e30: the loss is inf/NaN within the first epoch. Retried, it would diverge again (forever here)
    cfg = _cfg(
        tmp_path,
        tracking_uri,
        {
            "name": "diverge-it",
            "metric": "val_rmse",
            "scheduler": "fifo",
            "search": "grid",
            "max_concurrent_trials": 1,
            "space": {"train.learning_rate": {"grid": [1e30, 0.01]}},
        },
        train={"epochs": 2, "max_failures": -1},
    )
    result = tune(cfg)
    assert result.best.params["train.learning_rate"] == 0.01 and result.model_version is not None
    diverged = [t for t in result.trials if t.params["train.learning_rate"] == 1e30]
    assert len(diverged) == 1 and diverged[0].epochs_run == 0, [(t.params, t.status, t.epochs_run) for t in result.trials]
