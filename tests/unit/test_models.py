"""The MLP with in-graph preprocessing, ONNX export and the parity check, and the ONNX predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rayml.config import DataConfig, SyntheticConfig
from rayml.data import Schema, generate_sales, infer_schema
from rayml.errors import DataValidationError, OnnxParityError, PredictionInputError
from rayml.models import ModelDir, OnnxPredictor, build_model, build_spec, check_parity, export_onnx
from rayml.models.mlp import decode_target, encode_categorical, encode_numeric, encode_target, torch_outputs, torch_predict


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


# --- multiclass ----------------------------------------------------------------------------------------------------------
def _multiclass(labels: list) -> tuple[pd.DataFrame, Schema]:
    rng = np.random.default_rng(0)
    n = 240
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y", "z"], n)})
    df["y"] = [labels[i % len(labels)] for i in range(n)]
    return df, infer_schema(df, DataConfig(source="frame", target="y", task="multiclass"))


@pytest.mark.parametrize(
    ("labels", "datatype"), [([30, 4, 7], "INT64"), (["setosa", "virginica", "versicolor", "other"], "BYTES")]
)
def test_multiclass_graph_answers_label_then_probabilities_like_torch(tmp_path: Path, labels: list, datatype: str) -> None:
    df, schema = _multiclass(labels)
    spec = build_spec(df, schema, [8], 0.0, 3)
    k = len(labels)
    assert spec.task == "multiclass" and spec.class_labels == sorted(labels) and spec.n_outputs == k
    model = build_model(spec, seed=0)
    num, cat = (torch.from_numpy(encode_numeric(df, spec)), torch.from_numpy(encode_categorical(df, spec)))
    assert model.forward_raw(num, cat).shape == (len(df), k)  # logits
    proba = model(num, cat)
    assert proba.shape == (len(df), k) and torch.allclose(proba.sum(dim=1), torch.ones(len(df)))

    onnx_bytes = export_onnx(model)
    predictor = OnnxPredictor(onnx_bytes)
    assert [(o.name, o.datatype, o.shape) for o in predictor.outputs] == [
        ("label", datatype, [-1]),
        ("probabilities", "FP32", [-1, k]),
    ]
    odd = df.head(30).copy()
    odd.loc[odd.index[0], "c"] = "never-seen"
    odd.loc[odd.index[1], "a"] = np.nan
    assert check_parity(model, onnx_bytes, pd.concat([df, odd], ignore_index=True)) <= 1e-4
    got, expected = predictor.predict_all(df), torch_outputs(model, df)
    assert got["label"].tolist() == expected["label"].tolist() == torch_predict(model, df).tolist()
    assert set(got["label"].tolist()) <= set(labels) and [type(v) for v in got["label"].tolist()[:1]] == [type(labels[0])]
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(predictor.predict(df), got["label"])  # "the prediction" is the label

    # the model contract holds, with the labels in their original types
    md = ModelDir.write_model(
        tmp_path / "m", onnx_bytes=onnx_bytes, meta={"task": "multiclass", "class_labels": spec.class_labels}
    )
    assert ModelDir.read(md.path).class_labels == sorted(labels)


def test_encode_target_gives_class_indices_and_refuses_unseen_labels() -> None:
    df, schema = _multiclass(["b", "a", "c"])
    spec = build_spec(df, schema, [8], 0.0, 3)
    y = encode_target(df.head(6), spec, "y")
    assert y.dtype == np.int64 and y.tolist() == [1, 0, 2, 1, 0, 2]
    assert decode_target(spec, y).tolist() == df["y"].head(6).tolist()
    later = df.head(4).assign(y=["a", "d", "e", "d"])
    with pytest.raises(DataValidationError, match=r"3 row\(s\) with label\(s\) the model was not trained on: \['d', 'e'\]"):
        encode_target(later, spec, "y")


def test_multiclass_parity_failure_names_the_worst_rows() -> None:
    df, schema = _multiclass([0, 1, 2])
    spec = build_spec(df, schema, [8], 0.0, 3)
    exported = export_onnx(build_model(spec, seed=0))
    with pytest.raises(OnnxParityError) as e:
        check_parity(build_model(spec, seed=1), exported, df.head(50))
    msg = str(e.value)
    assert "probabilities: max abs diff" in msg and "(worst: row " in msg
    assert "label differs on" in msg and "torch " in msg and " vs onnx " in msg
