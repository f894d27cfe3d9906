"""`rayml tune` with gradient-boosted trees, on a real dataset (scikit-learn's breast cancer, with a string column):
ASHA decides every `train.checkpoint_every_rounds` boosting rounds, a trial that raises boosts on from its last
checkpoint, a search whose driver stops is resumed with `resume=True`, and the best booster is registered as a
raw-column ONNX model with its lineage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayml.config import TuneJobConfig
from rayml.errors import TrainingError
from rayml.registry import Registry
from rayml.tune import tune
from rayml.tune._mlflow import MlflowTrialCallback

pytestmark = pytest.mark.usefixtures("ray_session")

ROUNDS, EVERY = 40, 10


def _breast_cancer(path: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    df = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    # a string column the booster must take raw (coded in the ONNX graph): the tumour's size band
    df["size_band"] = pd.qcut(df["mean_radius"], 3, labels=["small", "medium", "large"]).astype(str)
    df = df.drop(columns=["mean_radius"])
    df.to_csv(path, index=False)
    return path


def _cfg(tmp_path: Path, tracking_uri: str) -> TuneJobConfig:
    return TuneJobConfig.model_validate(
        {
            "data": {"source": str(_breast_cancer(tmp_path / "cancer.csv")), "target": "target", "task": "binary"},
            "model": {"name": "cancer-lgbm", "type": "lightgbm", "lightgbm": {"num_boost_round": ROUNDS}},
            "train": {"checkpoint_every_rounds": EVERY, "max_failures": 1, "storage_path": str(tmp_path / "runs")},
            "registry": {"tracking_uri": tracking_uri, "experiment": "tune-trees"},
            "tune": {
                "name": "cancer-search",
                "metric": "val_auc",
                "search": "random",
                "scheduler": "asha",
                "asha": {"grace_period": EVERY, "reduction_factor": 2},
                "num_samples": 4,
                "max_concurrent_trials": 2,
                "space": {
                    "model.lightgbm.num_leaves": {"randint": [2, 24]},
                    "model.lightgbm.learning_rate": {"loguniform": [0.001, 0.3]},
                },
            },
        }
    )


def _result_rows(exp: Path) -> dict[str, list[dict]]:
    return {
        d.name.removeprefix("trial_"): [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line]
        for d in exp.glob("trial_*")
        if (d / "result.json").exists()
    }


def test_a_tree_search_decides_by_rounds_survives_a_failed_trial_and_a_stopped_driver(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path, tracking_uri)
    assert cfg.max_epochs == ROUNDS and cfg.epoch_word == "round"
    # the first trial to reach round 20 raises once (the marker is per search): Tune restarts it from round 20
    monkeypatch.setenv("RAYML_FAULT_INJECT", f"raise@round={2 * EVERY}")

    # the driver "dies" at the first report of round 30: tune() stops with a TrainingError that says to --resume
    original = MlflowTrialCallback.on_trial_result
    seen = {"stopped": False}

    def stop_once(self, iteration, trials, trial, result, **info):
        original(self, iteration, trials, trial, result, **info)
        if not seen["stopped"] and result.get("epoch", 0) >= 3 * EVERY:
            seen["stopped"] = True
            raise RuntimeError("driver lost (test)")

    monkeypatch.setattr(MlflowTrialCallback, "on_trial_result", stop_once)
    with pytest.raises(TrainingError, match="--resume"):
        tune(cfg)
    monkeypatch.setattr(MlflowTrialCallback, "on_trial_result", original)
    monkeypatch.delenv("RAYML_FAULT_INJECT")

    result = tune(cfg, resume=True)
    assert result.resumed and len(result.trials) == 4
    exp = Path(result.experiment_path)
    rows = _result_rows(exp)
    # every report is at a checkpoint round; the raised trial went on from round 20, not from round 0
    assert {r["epoch"] for rs in rows.values() for r in rs} <= set(range(EVERY, ROUNDS + 1, EVERY))
    restarts = {t: {r["resumed_from_epoch"] for r in rs} for t, rs in rows.items()}
    assert any(2 * EVERY in starts for starts in restarts.values()), restarts
    # ...and the search itself continued after the driver stopped: some trial resumed from a checkpoint past round 0
    assert sum(1 for starts in restarts.values() if starts - {0}) >= 1
    assert all(t.status in ("FINISHED", "KILLED") for t in result.trials), [(t.trial_id, t.error) for t in result.trials]
    # ASHA's rungs are in rounds: a stopped trial stopped at a rung (10 or 20 rounds), the others boosted all 40 --
    # except that a trial running when the driver stopped may have its 20-round rung judged at its first report after
    # the resume (round 30), when the scheduler's saved state predates that rung
    for t in result.trials:
        assert t.max_epochs == ROUNDS
        rungs = (EVERY, 2 * EVERY, 3 * EVERY) if restarts.get(t.trial_id, {0}) - {0} else (EVERY, 2 * EVERY)
        assert (t.status, t.epochs_run in rungs) == ("KILLED", True) or t.epochs_run == ROUNDS, (t, restarts)
    best = result.best
    assert best.best_metric is not None and best.best_metric > 0.95  # AUC on held-out tumours

    # the best booster is registered: raw columns in (the string column too), the task's metrics, lineage
    v = result.model_version
    assert v is not None and v.name == "cancer-lgbm"
    loaded = Registry(tracking_uri).load(v.ref)
    meta = loaded.meta
    assert meta["model_type"] == "lightgbm" and meta["tune"]["trial_id"] == best.trial_id
    assert 1 <= meta["best_iteration"] <= best.best_epoch and meta["rounds_trained"] == best.best_epoch
    assert v.tags["rayml.model_type"] == "lightgbm" and v.tags["rayml.tune_search_id"] == "cancer-search"
    assert v.tags["rayml.best_epoch"] == str(meta["best_iteration"]) and v.tags["rayml.data_fingerprint"]
    assert abs(meta["metrics"]["val_auc"] - best.best_metric) < 0.02
    rows_in = pd.read_csv(tmp_path / "cancer.csv").drop(columns=["target"]).head(20)
    p = np.asarray(loaded.predict(rows_in), dtype=float)
    assert p.shape[0] == 20 and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()

    # the same command again: the search is done, nothing runs
    again = tune(cfg, resume=True)
    assert again.already_done and again.model_version.version == v.version
