"""A trained booster becomes a rayml model directory whose ONNX graph takes raw columns (strings coded inside the graph)
and answers like the booster; no Ray needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayml.config import DataConfig
from rayml.data import infer_schema
from rayml.models import ModelDir
from rayml.train import PreparedData
from rayml.train._tree_fit import best_booster, booster_answers, export_tree_model_dir
from rayml.train._trees import TreeEncoding, lightgbm_params, xgboost_params


def _frame(task: str, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    shop = rng.choice(["north", "south", "east", "west"], size=n)
    x = rng.normal(size=n)
    effect = pd.Series(shop).map({"north": 2.0, "south": -1.0, "east": 0.5, "west": -2.0}).to_numpy()
    value = x + effect + rng.normal(scale=0.3, size=n)
    y = value if task == "regression" else (value > 0).astype(int)
    return pd.DataFrame({"x": x, "shop": shop, "y": y})


def _train(model_type: str, enc: TreeEncoding, df: pd.DataFrame, rounds: int) -> object:
    x, y = enc.matrix(df), enc.labels(df)
    if model_type == "xgboost":
        import xgboost

        from rayml.config import XGBoostSettings

        params = xgboost_params(XGBoostSettings(max_depth=3).model_dump(), enc, seed=0, threads=1)
        return xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=rounds)
    import lightgbm

    from rayml.config import LightGBMSettings

    params = lightgbm_params(LightGBMSettings(num_leaves=7, min_data_in_leaf=5).model_dump(), enc, seed=0, threads=1)
    params["min_data_per_group"] = 5
    data = lightgbm.Dataset(x, label=y, categorical_feature=enc.categorical_indices)
    return lightgbm.train(params, data, num_boost_round=rounds)


@pytest.mark.parametrize(("model_type", "task"), [("xgboost", "regression"), ("xgboost", "binary"), ("lightgbm", "binary")])
def test_exported_graph_takes_raw_strings_and_answers_like_the_booster(model_type: str, task: str, tmp_path: Path) -> None:
    df = _frame(task)
    schema = infer_schema(df, DataConfig(source="mem", target="y", task=task))
    prepared = PreparedData(df.iloc[:300], df.iloc[300:].reset_index(drop=True), schema, "fp", "mem")
    enc = TreeEncoding.of(schema)
    assert enc.categories == {"shop": schema.categorical[0].categories}
    booster = best_booster(_train(model_type, enc, prepared.train, rounds=12), model_type, best_round=10)
    if model_type == "lightgbm":  # native categorical splits, converted by onnxmltools
        assert '"decision_type": "=="' in str(booster.dump_model()).replace("'", '"')

    out = export_tree_model_dir(tmp_path / "m", booster, model_type, enc, prepared, {"name": "m", "model_type": model_type})
    md = ModelDir.read(out)
    meta = md.meta
    assert meta["task"] == task and meta["source"]["framework"] == model_type and meta["parity_max_abs_diff"] <= 1e-4
    assert meta["categorical_encoding"]["columns"]["shop"] == list(enc.categories["shop"])
    inputs = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert inputs == {"x": "FP32", "shop": "BYTES"}
    rows = prepared.validation.head(50)
    np.testing.assert_allclose(
        md.predictor().predict(rows), booster_answers(booster, model_type, enc, rows), rtol=1e-4, atol=1e-4
    )
    unseen = md.predictor().predict(rows.assign(shop="mars"))  # an unknown category: the reserved code, as in training
    np.testing.assert_allclose(unseen, booster_answers(booster, model_type, enc, rows.assign(shop=None)), rtol=1e-4, atol=1e-4)
