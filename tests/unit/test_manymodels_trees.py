"""Many models with gradient-boosted trees, without Ray: the config refuses what does not apply to the model type, and
one segment's booster (single-threaded, early-stopped on its validation split) becomes a raw-column ONNX graph that
answers like the booster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayml.config import DataConfig, ManyModelsJobConfig, SyntheticConfig, load_config
from rayml.data import generate_sales, infer_schema
from rayml.errors import ConfigError
from rayml.manymodels import fit_segment, fit_settings, fit_with_retries
from rayml.models import OnnxPredictor
from rayml.train._tree_fit import boost_in_process, booster_answers
from rayml.train._trees import TreeEncoding

ROOT = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str) -> ManyModelsJobConfig:
    return load_config(ManyModelsJobConfig, None, list(overrides))


# --- config -----------------------------------------------------------------------------------------------------------
def test_the_segment_model_type_is_model_type_and_its_own_section() -> None:
    cfg = _cfg("model.type=lightgbm", "model.lightgbm.num_leaves=7", "model.lightgbm.early_stopping_rounds=3")
    (s,) = fit_settings(cfg)
    assert s.model_type == "lightgbm" and s.tree_settings["num_leaves"] == 7 and s.tree_settings["early_stopping_rounds"] == 3
    (x,) = fit_settings(_cfg("model.type=xgboost", "model.xgboost.max_depth=3"))
    assert x.model_type == "xgboost" and x.tree_settings["max_depth"] == 3
    (m,) = fit_settings(_cfg())
    assert m.model_type == "mlp" and m.tree_settings == {}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.type=lightgbm", "model.hidden_sizes=[8]"], "model.hidden_sizes"),
        (["model.type=lightgbm", "model.xgboost.max_depth=3"], "model.xgboost"),
        (["model.type=xgboost", "train.epochs=7"], "train.epochs"),
        (["model.type=lightgbm", "train.learning_rate=0.1"], "train.learning_rate"),
        (["model.type=lightgbm", "manymodels.candidates=[{hidden_sizes: [8]}]"], "manymodels.candidates"),
        (["model.type=lightgbm", "manymodels.candidates=[{xgboost: {max_depth: 3}}]"], "only `lightgbm:`"),
        (["model.type=lightgbm", "manymodels.candidates=[{lightgbm: {num_leaves: 1}}]"], "lightgbm.num_leaves"),
        (["model.type=lightgbm", "manymodels.candidates=[{lightgbm: {nope: 1}}]"], "lightgbm.nope"),
        (["manymodels.candidates=[{lightgbm: {num_leaves: 7}}]"], "model.type is 'mlp'"),
        (["model.type=xgboost", "manymodels.global_batch_size=64"], "manymodels.global_batch_size"),
        (["model.type=lightgbm", "train.use_gpu=true"], "train.use_gpu"),
        (["model.lightgbm.num_leaves=7"], "model.lightgbm"),  # mlp (the default) with tree settings
        (["train.checkpoint_every_rounds=5"], "train.checkpoint_every_rounds"),  # a tree-only train field with mlp
    ],
)
def test_settings_of_another_model_type_are_refused_not_ignored(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        _cfg(*overrides)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        _cfg("model.type=lightgbm", "train.epochs=7", "manymodels.candidates=[{epochs: 3}]", "manymodels.global_batch_size=64")
    text = str(e.value)
    assert "3 problem(s)" in text and "train.epochs" in text and "candidates" in text and "global_batch_size" in text


def test_the_shipped_lightgbm_config_loads_as_a_lightgbm_model_set() -> None:
    cfg = load_config(ManyModelsJobConfig, ROOT / "jobs/configs/manymodels_lightgbm.yaml", [])
    assert cfg.model.type == "lightgbm" and cfg.data.segment == ["store_id"] and not cfg.manymodels.candidates
    assert cfg.model.lightgbm.early_stopping_rounds > 0


# --- one segment's booster --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_store():
    df = generate_sales(SyntheticConfig(segments=2, rows_per_segment=150, seed=4))
    schema = infer_schema(df, DataConfig())
    store = df[df.store_id == "store_001"].reset_index(drop=True)
    return store.iloc[:120], store.iloc[120:], schema


@pytest.mark.parametrize("model_type", ["lightgbm", "xgboost"])
def test_a_segment_booster_becomes_onnx_that_answers_like_it(one_store, model_type: str) -> None:
    train, val, schema = one_store
    cfg = _cfg(
        f"model.type={model_type}",
        f"model.{model_type}.num_boost_round=300",
        f"model.{model_type}.learning_rate=0.3",
        f"model.{model_type}.early_stopping_rounds=5",
        *(["model.lightgbm.min_data_in_leaf=5"] if model_type == "lightgbm" else []),
    )
    settings = fit_settings(cfg)
    out = fit_segment("store_001", train, val, schema, settings)
    assert out.status == "trained" and out.rows == 150 and out.candidate == 0
    assert 1 <= out.epochs < 300  # early stopping on the segment's validation split cut the rounds
    # the booster the task trained (same seed, one thread: deterministic) answers like the exported graph
    enc = TreeEncoding.of(schema)
    from rayml.manymodels._fit import segment_seed

    booster, _loss, rounds = boost_in_process(
        model_type, settings[0].tree_settings, enc, train, val, segment_seed(settings[0].seed, "store_001")
    )
    assert rounds == out.epochs
    pred = OnnxPredictor(out.onnx).predict(val)
    expected = booster_answers(booster, model_type, enc, val)
    np.testing.assert_allclose(pred, expected, rtol=1e-4, atol=1e-3)
    rmse = float(np.sqrt(np.mean((pred - val["sales"].to_numpy()) ** 2)))
    assert rmse == pytest.approx(out.metrics["val_rmse"], rel=1e-4)
    assert rmse < float(val["sales"].std())  # learned something
    assert out.stats["rows"] == 120 and "prediction" in out.stats


def test_a_booster_that_cannot_train_fails_its_segment_and_is_retried(one_store) -> None:
    train, val, schema = one_store
    settings = fit_settings(_cfg("model.type=lightgbm"))
    out = fit_with_retries("store_001", 3, train.iloc[:0], val, schema, settings, max_retries=1)  # no training rows
    assert out.status == "failed" and out.attempts == 2 and out.error


def test_tree_candidates_replace_the_boosters_settings_and_the_best_on_validation_is_kept(one_store) -> None:
    cfg = _cfg(
        "model.type=lightgbm",
        "model.lightgbm.num_leaves=15",
        "manymodels.candidates=[{lightgbm: {learning_rate: 0.0001, num_boost_round: 5}}, {lightgbm: {learning_rate: 0.2}}]",
    )
    weak, strong = fit_settings(cfg)
    assert weak.tree_settings["learning_rate"] == 0.0001 and weak.tree_settings["num_boost_round"] == 5
    assert strong.tree_settings["learning_rate"] == 0.2 and strong.tree_settings["num_leaves"] == 15  # the rest kept
    train_df, val_df, schema = one_store
    out = fit_segment("store_001", train_df, val_df, schema, [weak, strong], with_stats=False)
    assert out.status == "trained" and out.candidate == 1  # 5 tiny steps from the mean cannot beat 100 real ones
    alone = fit_segment("store_001", train_df, val_df, schema, [weak], with_stats=False)
    assert out.metrics["val_loss"] < alone.metrics["val_loss"]


def test_the_shipped_xgboost_config_is_the_lightgbm_configs_twin() -> None:
    xgb = load_config(ManyModelsJobConfig, ROOT / "jobs/configs/manymodels_xgboost.yaml", [])
    lgbm = load_config(ManyModelsJobConfig, ROOT / "jobs/configs/manymodels_lightgbm.yaml", [])
    assert xgb.model.type == "xgboost" and xgb.model.xgboost.early_stopping_rounds > 0
    assert xgb.data == lgbm.data and xgb.manymodels == lgbm.manymodels and xgb.train == lgbm.train
