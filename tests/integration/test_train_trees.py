"""Gradient-boosted trees on Ray Train (model.type xgboost | lightgbm): multiclass and binary (regression: notebook 01
trains XGBoost on Ray Train, many models train LightGBM), categorical strings, the registered ONNX answering like the
booster, a killed worker and a failed driver run resuming from the last checkpoint's round, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine

from rayml.config import TrainJobConfig, load_config
from rayml.errors import TrainingError
from rayml.models.predictor import OnnxPredictor
from rayml.registry import Registry
from rayml.train import train
from rayml.train._tree_fit import booster_answers
from rayml.train._trees import BOOSTER_FILES, TreeEncoding, read_tree_checkpoint

pytestmark = pytest.mark.usefixtures("ray_session")


def write(tmp_path: Path, frame: pd.DataFrame, name: str) -> str:
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path)
    return str(path)


def tree_cfg(tmp_path: Path, tracking_uri: str, source: str, target: str, task: str, *extra: str) -> TrainJobConfig:
    return load_config(
        TrainJobConfig,
        None,
        [
            f"data.source={source}",
            f"data.target={target}",
            f"data.task={task}",
            f"train.storage_path={tmp_path / 'runs'}",
            f"registry.tracking_uri={tracking_uri}",
            "train.checkpoint_every_rounds=5",
            *extra,
        ],
    )


def assert_onnx_answers_like_the_booster(tracking_uri: str, ref: str, rows: pd.DataFrame, model_type: str) -> dict:
    """The registered version is a rayml model, from the booster's framework, parity-checked at export."""
    loaded = Registry(tracking_uri).load(ref)
    meta = json.loads((loaded.path / "rayml_model.json").read_text())
    assert meta["source"]["framework"] == model_type and meta["model_type"] == model_type
    # checked at export: within 1e-4 (regression: 1e-4 of the largest value, float32 sums of many leaves)
    assert meta["parity"]["parity_rows"] > 0 and meta["parity_max_abs_diff"] <= 2 * meta["parity"]["parity_atol"]
    assert meta["parity"]["parity_atol"] == 1e-4 or meta["task"] == "regression"
    return meta


def test_xgboost_multiclass_worker_killed_resumes_from_last_checkpoint_round(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wine = load_wine(as_frame=True).frame
    wine["target"] = wine["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})  # labels recorded as they are
    # killed right after round 8: the last checkpoint is round 5's, so the restarted worker group boosts 6..12
    monkeypatch.setenv("RAYML_FAULT_INJECT", "kill_worker@round=8")
    cfg = tree_cfg(
        tmp_path,
        tracking_uri,
        write(tmp_path, wine, "wine"),
        "target",
        "multiclass",
        "model.type=xgboost",
        "model.name=wine-xgb",
        "model.xgboost.num_boost_round=12",
        "model.xgboost.max_depth=3",
        "train.max_failures=2",
    )
    result = train(cfg)
    assert result.resumed_from == [0, 5]  # not from round 0
    assert result.epochs_completed == 12
    assert result.epoch_history == list(range(1, 13))  # every round logged once, none skipped
    assert result.metrics["val_accuracy"] > 0.8
    v = result.model_version
    assert v is not None and v.tags["rayml.model_type"] == "xgboost" and v.tags["rayml.run_id"] == result.mlflow_run_id
    assert v.tags["rayml.best_epoch"] == str(result.best_epoch)

    meta = assert_onnx_answers_like_the_booster(tracking_uri, v.ref, wine, "xgboost")
    assert meta["class_labels"] == ["barbera", "barolo", "grignolino"] and meta["best_iteration"] == result.best_epoch
    loaded = Registry(tracking_uri).load(v.ref)
    out = OnnxPredictor((loaded.path / "model.onnx").read_bytes()).predict_all(wine.head(40))
    # the final checkpoint's booster, cut to the best round, is what the ONNX graph answers for
    run_dir = Path(result.storage_path) / result.run_name
    newest = max(
        (p for p in run_dir.glob("checkpoint_*") if p.is_dir()),
        key=lambda p: json.loads((p / "rayml_checkpoint.json").read_text())["epoch"],
    )
    import ray.train

    booster, ck = read_tree_checkpoint(ray.train.Checkpoint(str(newest)), "xgboost")
    assert ck["epoch"] == 12 and (newest / BOOSTER_FILES["xgboost"]).is_file()
    booster = booster[: result.best_epoch]
    enc = TreeEncoding(
        features=tuple(meta["feature_order"]), task="multiclass", target="target", class_labels=tuple(meta["class_labels"])
    )
    np.testing.assert_allclose(out["probabilities"], booster_answers(booster, "xgboost", enc, wine.head(40)), atol=1e-5)
    assert set(out["label"]) <= {"barbera", "barolo", "grignolino"}

    again = train(cfg)  # finished and registered: not trained twice
    assert again.already_done and again.model_version.version == v.version


def test_lightgbm_binary_two_workers_with_a_string_column_early_stops_and_a_failed_driver_run_resumes_on_rerun(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LightGBM: binary, two data-parallel workers, a raw string column; a failed driver run is resumed by the same
    command, and boosting stops early."""
    bc = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 3, 4, 20, 21, 22, 30]]
    rng = np.random.default_rng(0)
    bc["site"] = rng.choice(["north", "south", "east"], size=len(bc))
    bc.loc[bc["target"] == 1, "site"] = rng.choice(["north", "west"], size=int(bc["target"].sum()))
    cfg = tree_cfg(
        tmp_path,
        tracking_uri,
        write(tmp_path, bc, "bc"),
        "target",
        "binary",
        "model.type=lightgbm",
        "model.name=bc-lgb",
        "model.lightgbm.num_boost_round=150",
        "model.lightgbm.num_leaves=7",
        "model.lightgbm.min_data_in_leaf=5",
        "model.lightgbm.early_stopping_rounds=3",
        "model.lightgbm.learning_rate=0.2",
        "train.num_workers=2",
        "train.max_failures=0",
    )
    # the first command fails after round 7 (no retries left): running it again continues from round 5's checkpoint
    monkeypatch.setenv("RAYML_FAULT_INJECT", "raise@round=7")
    with pytest.raises(TrainingError, match="re-run the same command"):
        train(cfg)
    monkeypatch.delenv("RAYML_FAULT_INJECT")
    result = train(cfg)
    assert result.resumed_from == [0, 5]
    reg = Registry(tracking_uri)
    history = sorted(reg.client.get_metric_history(result.mlflow_run_id, "val_loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, result.epochs_completed + 1))  # one value per round
    losses = [m.value for m in history]
    assert losses[result.best_epoch - 1] == min(losses)
    assert result.early_stopped and result.epochs_completed == result.best_epoch + 3 < 150
    assert result.metrics["val_auc"] > 0.9

    meta = assert_onnx_answers_like_the_booster(tracking_uri, result.model_version.ref, bc, "lightgbm")
    assert meta["best_iteration"] == result.best_epoch and meta["task"] == "binary"
    assert meta["categorical_encoding"]["columns"]["site"]  # the raw strings are coded inside the graph
    assert "categories" in meta["categorical_encoding"]["booster_sees_codes_as"]
    md = reg.load(result.model_version.ref)
    inputs = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert inputs["site"] == "BYTES" and inputs["mean radius"] == "FP32"
    p = md.predict(bc.head(20).assign(site=["mars"] * 20))  # an unseen category is the reserved code, not an error
    assert p.shape == (20,) and ((p >= 0) & (p <= 1)).all()
