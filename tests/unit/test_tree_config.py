"""model.type and the trees' settings: defaults, bad values with clear errors, no setting of another model type applies
silently; the tree loop's encoding and round faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from rayml._private import faults
from rayml.config import (
    LightGBMSettings,
    ModelConfig,
    TrainConfig,
    TrainJobConfig,
    XGBoostSettings,
    load_config,
    model_type_problems,
)
from rayml.errors import ConfigError
from rayml.train._trees import UNKNOWN_CODE, TreeEncoding, lightgbm_params, xgboost_params


def test_defaults_and_a_tree_config() -> None:
    assert ModelConfig().type == "mlp" and not ModelConfig().is_tree
    assert TrainConfig().checkpoint_every_rounds == 10
    cfg = load_config(TrainJobConfig, None, ["model.type=xgboost", "model.xgboost.max_depth=3", "data.target=sales"])
    assert cfg.model.is_tree and cfg.model.xgboost.max_depth == 3
    assert cfg.model.xgboost.num_boost_round == XGBoostSettings().num_boost_round
    lgb = load_config(TrainJobConfig, None, ["model.type=lightgbm", "model.lightgbm.num_leaves=7"])
    assert lgb.model.lightgbm.num_leaves == 7 and model_type_problems(lgb.model, lgb.train) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.type=catboost"], "model.type"),
        (["model.type=xgboost", "model.factory=nets:mlp"], "model.factory"),
        (["model.type=lightgbm", "model.hidden_sizes=[8]"], "model.hidden_sizes"),
        (["model.type=xgboost", "model.lightgbm.num_leaves=8"], "model.lightgbm"),
        (["model.xgboost.max_depth=3"], "model.xgboost"),  # type mlp (the default)
        (["model.type=xgboost", "model.xgboost.learning_rate=0"], "learning_rate"),
        (["model.type=xgboost", "model.xgboost.subsample=1.5"], "subsample"),
        (["model.type=xgboost", "model.xgboost.eta=0.1"], "eta"),  # a typo of the section's names
        (["model.type=lightgbm", "model.lightgbm.num_leaves=1"], "num_leaves"),
        (["train.checkpoint_every_rounds=0"], "checkpoint_every_rounds"),
    ],
)
def test_bad_values_fail_with_the_field_and_value(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainJobConfig, None, overrides)


def test_mlp_training_settings_are_refused_for_trees_and_rounds_for_the_mlp() -> None:
    cfg = load_config(TrainJobConfig, None, ["model.type=xgboost", "train.epochs=3", "train.batch_size=8"])
    [problem] = model_type_problems(cfg.model, cfg.train)
    assert "train.epochs, train.batch_size" in problem and "model.xgboost.num_boost_round" in problem
    mlp = load_config(TrainJobConfig, None, ["train.checkpoint_every_rounds=5"])
    assert "train.checkpoint_every_rounds" in model_type_problems(mlp.model, mlp.train)[0]
    gpu = load_config(TrainJobConfig, None, ["model.type=lightgbm", "train.use_gpu=true"])
    assert "train.use_gpu" in model_type_problems(gpu.model, gpu.train)[0]
    from rayml.train import train

    with pytest.raises(ConfigError, match="train.epochs"):  # refused before any data is read or Ray started
        train(cfg)


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(sorted(LightGBMSettings.model_fields)),
    value=st.one_of(st.floats(max_value=-1.01), st.text(alphabet="abcxyz_ ", min_size=1)),
)
def test_generated_bad_lightgbm_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        LightGBMSettings(**{field: value})


def test_encoding_codes_categories_from_the_vocabulary_and_maps_labels() -> None:
    enc = TreeEncoding(
        features=("x", "c"), categories={"c": ("a", "b")}, task="multiclass", target="y", class_labels=("cat", "dog")
    )
    df = pd.DataFrame({"x": [1.5, np.nan, 3.0], "c": ["b", None, "zz"], "y": ["dog", "cat", "dog"]})
    m = enc.matrix(df)
    assert m[:, 1].tolist() == [2.0, UNKNOWN_CODE, UNKNOWN_CODE] and np.isnan(m[1, 0])
    assert enc.labels(df).tolist() == [1.0, 0.0, 1.0]
    assert TreeEncoding.from_dict(enc.to_dict()) == enc and enc.categorical_indices == [1]
    xp = xgboost_params(XGBoostSettings().model_dump(), enc, seed=1, threads=1)
    assert xp["objective"] == "multi:softprob" and xp["num_class"] == 2 and xp["eta"] == XGBoostSettings().learning_rate
    lp = lightgbm_params(LightGBMSettings(bagging_fraction=0.5).model_dump(), enc, seed=1, threads=1)
    assert lp["objective"] == "multiclass" and lp["bagging_freq"] == 1


def test_round_faults_parse_and_fire_once(tmp_path: Path) -> None:
    spec = faults.parse("raise@round=7")
    assert spec == [faults.Fault("raise", round=7)]
    marker = str(tmp_path / "m")
    faults.mid_epoch(spec, epoch=0, rank=0, marker=marker)  # a round fault is not an epoch fault
    faults.after_round(spec, 6, rank=0, marker=marker)
    faults.after_round(spec, 7, rank=1, marker=marker)  # only rank 0
    with pytest.raises(RuntimeError, match="after round 7"):
        faults.after_round(spec, 7, rank=0, marker=marker)
    faults.after_round(spec, 7, rank=0, marker=marker)  # once
    with pytest.raises(ConfigError, match="not a number"):
        faults.parse("kill_worker@round=x")


def test_commands_without_tree_support_refuse_a_tree_type_instead_of_training_an_mlp() -> None:
    from rayml.train import spec_for

    cfg = load_config(TrainJobConfig, None, ["model.type=xgboost"])
    with pytest.raises(ConfigError, match="rayml train"):
        spec_for(cfg, None)  # type: ignore[arg-type]  # refused before the data is looked at


def test_xgboost_trains_on_the_gpu_with_device_cuda_and_a_cpu_build_is_refused_with_a_hint() -> None:
    from rayml.train._tree_fit import check_gpu_build
    from rayml.train._trees import TreeEncoding, xgboost_params

    cfg = load_config(TrainJobConfig, None, ["model.type=xgboost", "train.use_gpu=true"])
    assert model_type_problems(cfg.model, cfg.train) == []  # XGBoost may train on GPU; LightGBM may not (above)
    enc = TreeEncoding(features=("a",), task="binary", target="y")
    settings = cfg.model.xgboost.model_dump()
    assert xgboost_params(settings, enc, 0, 1, use_gpu=True)["device"] == "cuda"
    assert "device" not in xgboost_params(settings, enc, 0, 1)
    # every metric of the task is evaluated in the Ray Train loop; the loss stays first (early stopping's)
    assert xgboost_params(settings, enc, 0, 1, all_metrics=True)["eval_metric"] == ["logloss", "auc", "error"]
    import xgboost

    if xgboost.build_info().get("USE_CUDA"):
        check_gpu_build(cfg)  # a CUDA build passes
    else:
        with pytest.raises(ConfigError, match="without CUDA") as e:
            check_gpu_build(cfg)
        assert "pip install xgboost" in (e.value.hint or "")


def test_tree_metrics_get_raymls_names() -> None:
    from rayml.train._trees import rayml_metrics

    assert rayml_metrics({"logloss": 0.3, "auc": 0.9, "error": 0.25}) == {
        "val_logloss": 0.3,
        "val_auc": 0.9,
        "val_accuracy": 0.75,
    }
    assert rayml_metrics({"rmse": 2.0, "l1": 1.5}) == {"val_rmse": 2.0, "val_mae": 1.5}
