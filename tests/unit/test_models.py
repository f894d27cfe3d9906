"""The MLP with in-graph preprocessing, ONNX export and the parity check, and the ONNX predictor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rayml.config import DataConfig, SyntheticConfig
from rayml.data import generate_sales, infer_schema
from rayml.errors import OnnxParityError, PredictionInputError
from rayml.models import OnnxPredictor, build_model, build_spec, check_parity, export_onnx


@pytest.fixture(scope="module")
def data():
    df = generate_sales(SyntheticConfig(segments=4, rows_per_segment=60, seed=1))
    return df, infer_schema(df, DataConfig())


@pytest.mark.parametrize("task", ["regression", "binary"])
def test_onnx_takes_raw_columns_and_matches_torch(data, task: str) -> None:
    df, _ = data
    target, other = ("high_sales", "sales") if task == "binary" else ("sales", "high_sales")
    cfg = DataConfig(task=task, target=target, ignore_columns=["date", other])
    schema = infer_schema(df, cfg)
    model = build_model(build_spec(df, schema, [16, 8], 0.1, 4), seed=0)
    onnx_bytes = export_onnx(model)
    predictor = OnnxPredictor(onnx_bytes)
    # one named input per raw column: numbers as FP32, categories as strings (BYTES)
    assert {i.name: i.datatype for i in predictor.inputs} == {
        **{n: "FP32" for n in schema.numeric},
        **{f.name: "BYTES" for f in schema.categorical},
    }
    assert [o.name for o in predictor.outputs] == ["prediction"]
    diff = check_parity(model, onnx_bytes, df)
    assert diff <= 1e-4
    preds = predictor.predict(df)
    if task == "binary":
        assert ((preds >= 0) & (preds <= 1)).all()


def test_unknown_categories_and_missing_numbers_match_torch(data) -> None:
    df, schema = data
    model = build_model(build_spec(df, schema, [8], 0.0, 3), seed=0)
    onnx_bytes = export_onnx(model)
    odd = df.head(20).copy()
    odd.loc[odd.index[0], "category"] = "never-seen"
    odd.loc[odd.index[1], "price"] = np.nan
    odd.loc[odd.index[2], "promo"] = None
    assert check_parity(model, onnx_bytes, odd) <= 1e-4
    assert np.isfinite(OnnxPredictor(onnx_bytes).predict(odd)).all()


def test_standardisation_lives_in_the_model(data) -> None:
    df, schema = data
    spec = build_spec(df, schema, [8], 0.0, 3)
    i = spec.numeric.index("price")
    assert spec.numeric_mean[i] == pytest.approx(df["price"].mean(), rel=1e-6)
    model = build_model(spec, seed=0)
    assert torch.allclose(model.num_mean[0, i], torch.tensor(spec.numeric_mean[i], dtype=torch.float32))


def test_parity_failure_is_loud(data) -> None:
    df, schema = data
    spec = build_spec(df, schema, [8], 0.0, 3)
    exported = export_onnx(build_model(spec, seed=0))
    other = build_model(spec, seed=1)  # different weights than the exported graph
    with pytest.raises(OnnxParityError, match="max abs diff"):
        check_parity(other, exported, df.head(50))


def test_predictor_input_errors_list_every_problem(data) -> None:
    df, schema = data
    predictor = OnnxPredictor(export_onnx(build_model(build_spec(df, schema, [8], 0.0, 3), seed=0)))
    rows = df.head(3).drop(columns=["price", "month"]).copy()
    rows["temperature"] = ["warm", "20", "21"]
    with pytest.raises(PredictionInputError) as e:
        predictor.predict(rows)
    msg = str(e.value)
    assert "missing column(s) ['price', 'month']" in msg
    assert "'temperature' must be numeric; got 'warm'" in msg
    with pytest.raises(PredictionInputError, match="different lengths"):
        predictor.predict({**{c: df[c].head(3) for c in predictor.input_names}, "price": [1.0]})
    assert predictor.predict(df.head(0)).shape == (0,)
    # extra columns are ignored; values arriving as JSON-ish python lists work
    cols = {c: df[c].head(4).tolist() for c in predictor.input_names}
    np.testing.assert_allclose(predictor.predict(cols), predictor.predict(df.head(4).assign(extra=1)), atol=1e-6)


def test_bad_model_bytes_are_a_model_error() -> None:
    from rayml.errors import ModelError

    with pytest.raises(ModelError, match="cannot load ONNX model"):
        OnnxPredictor(b"definitely not onnx")


def test_frames_with_pandas_string_dtype(data) -> None:
    df, schema = data
    predictor = OnnxPredictor(export_onnx(build_model(build_spec(df, schema, [8], 0.0, 3), seed=0)))
    as_str = df.head(5).astype({"category": "string", "region": "string", "promo": "string"})
    np.testing.assert_allclose(predictor.predict(as_str), predictor.predict(df.head(5)), atol=1e-6)
    assert isinstance(pd.Series(predictor.predict(as_str)).iloc[0], float | np.floating)


def test_roc_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from rayml.models.metrics import roc_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200) * 0.5 + y * 0.3, 2)  # with ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert np.isnan(roc_auc(np.ones(5), np.arange(5.0)))
