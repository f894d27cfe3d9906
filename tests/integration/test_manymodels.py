"""Many models on the shared local Ray: parallel per-segment training, fallback, failures, one registered model set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayml.config import ManyModelsJobConfig, SyntheticConfig, load_config
from rayml.data import generate_sales
from rayml.manymodels import train_model_set
from rayml.models import OnnxPredictor
from rayml.registry import FALLBACK, KIND_TAG, ModelSet, Registry
from rayml.testing import sales_columns


@pytest.fixture
def stores(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    df = generate_sales(SyntheticConfig(segments=8, rows_per_segment=100, seed=11))
    small = df.index[df.store_id == "store_006"][20:]
    df = df.drop(small).reset_index(drop=True)  # store_006 keeps 20 rows: below min_rows
    path = tmp_path / "data.parquet"
    df.to_parquet(path)
    return df, path


def _cfg(path: Path, tracking_uri: str, tmp_path: Path, *extra: str) -> ManyModelsJobConfig:
    return load_config(
        ManyModelsJobConfig,
        None,
        [
            f"data.source={path}",
            *sales_columns(),
            "model.name=stores",
            "model.hidden_sizes=[8]",
            "train.epochs=12",
            "train.batch_size=16",
            "train.learning_rate=0.03",
            f"train.storage_path={tmp_path / 'runs'}",
            "manymodels.min_rows=40",
            "manymodels.max_retries=1",
            "manymodels.max_failed_share=0.2",
            "manymodels.segments_per_task=3",
            f"registry.tracking_uri={tracking_uri}",
            *extra,
        ],
    )


def test_model_set_round_trip_through_the_registry(
    ray_session, tracking_uri: str, tmp_path: Path, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    df, path = stores
    # store_003 fails every attempt; store_004 fails once and its retry succeeds
    monkeypatch.setenv("RAYML_FAIL_SEGMENTS", "store_003,store_004@1")
    progress: list[tuple[int, int]] = []
    result = train_model_set(_cfg(path, tracking_uri, tmp_path), progress=lambda d, t: progress.append((d, t)))
    assert result.ok and result.segments == 8
    assert (result.trained, result.fell_back) == (6, 1)
    assert list(result.failed) == ["store_003"] and "injected failure" in result.failed["store_003"]
    assert progress[-1] == (7, 7)  # every segment with enough rows reported
    assert result.metrics["median_segment_val_rmse"] < result.metrics["median_global_val_rmse"]

    reg = Registry(tracking_uri)
    info = result.model_version
    assert info is not None and info.ref == "stores:1" and info.tags["rayml.segments_failed"] == "1"
    assert reg.client.get_registered_model("stores").tags[KIND_TAG] == "model_set"
    reg.set_alias("stores", 1, "production")  # aliases move the whole family
    loaded = reg.load("stores@production")
    assert loaded.kind == "model_set"
    ms = ModelSet.from_loaded(loaded, max_cached=4)
    assert ms.info.version == 1 and ms.segment_columns == ["store_id"] and ms.has_fallback
    assert ms.segments == [f"store_{i:03d}" for i in range(8)]
    assert ms.segment_info("store_003")["status"] == "failed" and ms.segment_model_for("store_003") == FALLBACK
    assert ms.segment_info("store_004")["attempts"] == 2 and ms.segment_model_for("store_004") == "store_004"
    assert ms.segment_info("store_006") == {
        "file": "fallback.onnx",
        "rows": 20,
        "fallback": True,
        "status": "fallback",
        "metrics": {},
        "attempts": 0,
    }
    entry = ms.segment_info("store_001")
    assert entry["file"] == "segments/1.onnx" and entry["rows"] == 100 and "global_val_rmse" in entry["metrics"]
    assert set(loaded.reference_stats) == {"global", "segments"}
    assert sorted(loaded.reference_stats["segments"]) == sorted(k for k in ms.segments if k not in ("store_003", "store_006"))
    # mixed rows: each row served by its own segment's model, the others by the fallback
    preds, served_by = ms.predict(df)
    rows = df.store_id == "store_001"
    np.testing.assert_allclose(preds[rows.to_numpy()], OnnxPredictor(loaded.path / "segments/1.onnx").predict(df[rows]))
    assert set(served_by[(df.store_id == "store_006").to_numpy()]) == {FALLBACK}

    again = train_model_set(_cfg(path, tracking_uri, tmp_path))  # the same command: nothing is trained twice
    assert again.already_done and again.model_version.version == 1 and again.trained == 6


def test_too_many_failures_register_nothing_and_the_fixed_rerun_reuses_trained_segments(
    ray_session, tracking_uri: str, tmp_path: Path, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = stores
    monkeypatch.setenv("RAYML_FAIL_SEGMENTS", "store_000,store_001,store_002")
    first = train_model_set(_cfg(path, tracking_uri, tmp_path))
    assert not first.ok and len(first.failed) == 3 and first.failed_share == 3 / 8
    assert first.model_version is None and Registry(tracking_uri).list_models() == []

    monkeypatch.delenv("RAYML_FAIL_SEGMENTS")
    second = train_model_set(_cfg(path, tracking_uri, tmp_path))
    assert second.ok and second.failed == {} and second.trained == 7
    assert second.reused == 4  # the segments that trained in the failed run are not trained again
    assert second.mlflow_run_id == first.mlflow_run_id and second.model_version.version == 1


def test_a_model_set_cannot_become_a_version_of_a_single_model(ray_session, tracking_uri: str, tmp_path: Path, stores) -> None:
    from rayml.errors import ConfigError

    reg = Registry(tracking_uri)
    reg.client.create_registered_model("stores")
    run = reg.create_run("rayml", "single")
    d = tmp_path / "single"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"x")
    (d / "rayml_model.json").write_text('{"kind": "model"}')
    reg.register("stores", d, run, {})
    with pytest.raises(ConfigError, match="already holds single models"):
        train_model_set(_cfg(stores[1], tracking_uri, tmp_path))


def test_a_segment_that_kills_its_worker_fails_alone(
    ray_session, tracking_uri: str, tmp_path: Path, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = stores
    # store_001 kills the worker of its 3-segment task; the task's other segments are retried one per task
    monkeypatch.setenv("RAYML_FAIL_SEGMENTS", "store_001@kill")
    result = train_model_set(_cfg(path, tracking_uri, tmp_path, "manymodels.max_retries=0", "registry.register_version=false"))
    assert result.ok and list(result.failed) == ["store_001"] and result.trained == 6
    assert "Error" in result.failed["store_001"]  # the worker's death, as Ray reported it


def test_multi_column_segments(ray_session, tracking_uri: str, tmp_path: Path, stores) -> None:
    df, path = stores
    cfg = _cfg(
        path, tracking_uri, tmp_path, "data.segment=[region, category]", "data.ignore_columns=[date, high_sales, store_id]"
    )
    result = train_model_set(cfg)
    assert result.ok and result.segments == df.groupby(["region", "category"]).ngroups
    ms = ModelSet.from_loaded(Registry(tracking_uri).load(result.model_version.ref))
    assert ms.segment_columns == ["region", "category"]
    big = df.groupby(["region", "category"]).size().idxmax()
    key = "|".join(big)
    assert key in ms.segments and ms.segment_model_for(key) == key
    preds, served_by = ms.predict(df)
    rows = ((df.region == big[0]) & (df.category == big[1])).to_numpy()
    assert set(served_by[rows]) == {key} and not np.isnan(preds).any()


def test_a_multiclass_model_set_answers_one_global_class_list(ray_session, tracking_uri: str, tmp_path: Path) -> None:
    df = generate_sales(SyntheticConfig(segments=3, rows_per_segment=90, seed=5))
    df["level"] = pd.qcut(df["sales"].rank(method="first"), 3, labels=["low", "mid", "high"]).astype(str)
    df = df[~((df.store_id == "store_001") & (df.level == "high"))].reset_index(drop=True)  # store_001 never sees "high"
    path = tmp_path / "levels.parquet"
    df.to_parquet(path)
    cfg = _cfg(
        path,
        tracking_uri,
        tmp_path,
        "data.target=level",
        "data.task=multiclass",
        "data.ignore_columns=[date, sales, high_sales]",
        "model.name=levels",
        "manymodels.min_rows=20",
    )
    result = train_model_set(cfg)
    assert result.ok and result.trained == 3
    assert {"median_segment_val_logloss", "global_val_accuracy", "global_val_macro_f1"} <= set(result.metrics)

    md = Registry(tracking_uri).load(result.model_version.ref).model_dir
    assert md.is_model_set and md.task == "multiclass" and md.class_labels == ["high", "low", "mid"]
    ms = md.model_set()
    for key in ms.segments:  # every segment model answers the set's three classes, in its order
        assert {"val_accuracy", "val_macro_f1", "global_val_logloss"} <= set(ms.segment_info(key)["metrics"])
        got = ms.predictor(key).predict_all(df)
        assert got["probabilities"].shape == (len(df), 3) and set(got["label"].tolist()) <= {"high", "low", "mid"}
    assert md.reference_stats("store_001")["prediction"]["kind"] == "categorical"


def _train_tree_set(config: Path | None, path: Path, tmp_path: Path, tracking_uri: str, *sets: str):
    """A tree model set of the 8 stores (store_006 is small: the fallback), checked to train 7 boosters that beat the
    global model's median validation RMSE."""
    cfg = load_config(
        ManyModelsJobConfig,
        config,
        [
            f"data.source={path}",
            *sales_columns(),
            *sets,
            f"train.storage_path={tmp_path / 'runs'}",
            "manymodels.min_rows=40",
            "manymodels.segments_per_task=4",
            f"registry.tracking_uri={tracking_uri}",
        ],
    )
    result = train_model_set(cfg)
    assert result.ok and (result.trained, result.fell_back, result.failed) == (7, 1, {})
    assert result.metrics["median_segment_val_rmse"] < result.metrics["median_global_val_rmse"]
    return cfg, result


def test_a_lightgbm_model_set_answers_like_its_boosters_and_falls_back(
    ray_session, tracking_uri: str, tmp_path: Path, stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rayml.manymodels._fit import segment_seed
    from rayml.manymodels._plan import VAL_COLUMN, segment_table
    from rayml.train._tree_fit import boost_in_process, booster_answers
    from rayml.train._trees import TreeEncoding

    df, path = stores
    monkeypatch.setenv("RAYML_FAIL_SEGMENTS", "store_004@1")  # fails once; its retry trains
    cfg, result = _train_tree_set(
        None,
        path,
        tmp_path,
        tracking_uri,
        "model.name=stores-lgbm",
        "model.type=lightgbm",
        "model.lightgbm.num_boost_round=100",
        "model.lightgbm.min_data_in_leaf=5",
        "model.lightgbm.early_stopping_rounds=5",
    )

    md = Registry(tracking_uri).load(result.model_version.ref).model_dir
    ms = md.model_set()
    assert md.is_model_set and ms.has_fallback and ms.segment_info("store_004")["attempts"] == 2
    assert md.meta["source"]["framework"] == "lightgbm" and md.meta["lineage"]["rayml.kind"] == "model_set"
    rounds = {k: ms.segment_info(k)["epochs"] for k in ms.segments if k != "store_006"}
    assert all(1 <= r <= 100 for r in rounds.values()) and min(rounds.values()) < 100  # early stopping per segment

    # store_001's model answers like the booster its task trained (same rows, seed and one thread: deterministic)
    table = segment_table(df, cfg.data.segment, cfg.data.validation_fraction, cfg.train.seed)
    seg = next(s for s in table.segments if s.key == "store_001")
    part = table.frame.iloc[seg.start : seg.start + seg.rows]
    is_val = part[VAL_COLUMN].to_numpy(dtype=bool)
    assert md.schema is not None
    enc = TreeEncoding.of(md.schema)
    settings = cfg.model.lightgbm.model_dump()
    booster, _loss, kept = boost_in_process(
        "lightgbm", settings, enc, part[~is_val], part[is_val], segment_seed(cfg.train.seed, "store_001")
    )
    assert kept == rounds["store_001"]
    unknown = df[df.store_id == "store_002"].head(5).assign(store_id="store_999")  # a segment the set never saw
    rows = pd.concat([df[df.store_id == "store_001"], df[df.store_id == "store_006"], unknown], ignore_index=True)
    outputs, served_by = md.predict_outputs(rows)
    mine = (rows.store_id == "store_001").to_numpy()
    np.testing.assert_allclose(
        outputs["prediction"][mine], booster_answers(booster, "lightgbm", enc, rows[mine]), rtol=1e-4, atol=1e-3
    )
    assert set(served_by[mine]) == {"store_001"} and set(served_by[~mine]) == {FALLBACK}
    fallback = OnnxPredictor(md.path / "fallback.onnx").predict(rows[~mine])
    np.testing.assert_allclose(outputs["prediction"][~mine], fallback, rtol=1e-6)


def test_the_shipped_xgboost_config_trains_a_model_set_of_boosters(
    ray_session, tracking_uri: str, tmp_path: Path, stores
) -> None:
    df, path = stores
    shipped = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "manymodels_xgboost.yaml"
    sets = ("model.name=stores-xgb", "model.xgboost.num_boost_round=30")
    _, result = _train_tree_set(shipped, path, tmp_path, tracking_uri, *sets)
    md = Registry(tracking_uri).load(result.model_version.ref).model_dir
    assert md.meta["source"]["framework"] == "xgboost" and md.model_set().has_fallback
    rows = df[df.store_id.isin(["store_001", "store_006"])]
    outputs, served_by = md.predict_outputs(rows)
    assert np.isfinite(outputs["prediction"]).all()
    assert set(served_by[(rows.store_id == "store_006").to_numpy()]) == {FALLBACK}
    assert set(served_by[(rows.store_id == "store_001").to_numpy()]) == {"store_001"}
