"""Multiclass on rayml's own training side, without Ray: the loop's validation metrics, a segment model of a model set
(global class list), and the search metric of a multiclass tune."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rayml.config import DataConfig, TuneJobConfig, load_config
from rayml.data import infer_schema, train_validation_split
from rayml.errors import ConfigError
from rayml.models import OnnxPredictor, build_model, build_spec
from rayml.models.mlp import tensors


@pytest.fixture(scope="module")
def iris() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    df = bunch.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    df["species"] = bunch.target_names[df.pop("target")]  # string labels
    return df


IRIS = DataConfig(source="iris", target="species", task="multiclass")


def test_loop_metrics_keep_their_names_and_multiclass_matches_sklearn(iris: pd.DataFrame) -> None:
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    from rayml.train._loop import evaluate

    schema = infer_schema(iris, IRIS)
    spec = build_spec(iris, schema, [8], 0.0, 2)
    model = build_model(spec, seed=0)
    num, cat, y = tensors(iris, spec, "species")
    metrics = evaluate(model, num, cat, y, torch.device("cpu"))
    assert set(metrics) == {"val_loss", "val_accuracy", "val_macro_f1", "val_logloss"}
    with torch.no_grad():
        proba = model(num, cat).numpy()
    labels = np.asarray(spec.class_labels, dtype=object)
    truth, pred = iris["species"].to_numpy(), labels[proba.argmax(axis=1)]
    assert metrics["val_accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert metrics["val_macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", labels=labels))
    assert metrics["val_logloss"] == pytest.approx(log_loss(truth, proba, labels=labels), rel=1e-4)
    assert metrics["val_loss"] == pytest.approx(metrics["val_logloss"], rel=1e-4)  # cross-entropy is the objective

    # the names tests, tune and the gate rely on stay as they were for the other tasks
    sales = iris.assign(big=(iris["petal_length"] > 4).astype(int))
    for task, target, other, names in (
        ("binary", "big", "sepal_length", {"val_loss", "val_auc", "val_accuracy", "val_logloss"}),
        ("regression", "sepal_length", "big", {"val_loss", "val_rmse", "val_mae"}),
    ):
        cfg = DataConfig(source="iris", target=target, task=task, ignore_columns=["species", other])
        s = build_spec(sales, infer_schema(sales, cfg), [8], 0.0, 2)
        assert set(evaluate(build_model(s, seed=0), *tensors(sales, s, target), torch.device("cpu"))) == names


def test_segment_models_answer_the_global_class_list_and_learn(iris: pd.DataFrame) -> None:
    from rayml.manymodels import FitSettings, fit_segment

    schema = infer_schema(iris, IRIS)
    settings = [FitSettings((16,), 0.0, 2, 0.05, 0.0, epochs=60, batch_size=16, seed=0, patience=0, min_delta=0.0)]
    split = train_validation_split(iris, 0.3, 0, stratify="species")
    out = fit_segment("all", split.train, split.validation, schema, settings)
    assert {"val_loss", "val_accuracy", "val_macro_f1", "val_logloss"} <= set(out.metrics)
    assert out.metrics["val_accuracy"] > 0.8  # the majority class is a third of the rows
    assert out.stats is not None and out.stats["prediction"]["kind"] == "categorical"

    # a segment that never saw "virginica" still answers three probability columns, in the set's class order
    no_virginica = split.train[split.train["species"] != "virginica"]
    val = split.validation[split.validation["species"] != "virginica"]
    seg = fit_segment("two-classes", no_virginica, val, schema, settings)
    assert seg.onnx is not None
    got = OnnxPredictor(seg.onnx).predict_all(split.validation)
    assert got["probabilities"].shape == (len(split.validation), 3)
    assert set(got["label"].tolist()) <= set(schema.classes) == {"setosa", "versicolor", "virginica"}


def test_multiclass_search_metrics_and_their_direction() -> None:
    base = [
        "data.task=multiclass",
        "data.target=y",
        "data.source=x.parquet",
        "tune.space.train.learning_rate={loguniform: [0.001, 0.1]}",
    ]
    cfg = load_config(TuneJobConfig, None, [*base, "tune.metric=val_macro_f1"])
    assert cfg.resolved_mode == "max"
    assert load_config(TuneJobConfig, None, base).tune.metric == "val_loss"  # the default, as for binary
    assert load_config(TuneJobConfig, None, [*base, "tune.metric=val_logloss"]).resolved_mode == "min"
    with pytest.raises(ConfigError, match="val_auc"):
        load_config(TuneJobConfig, None, [*base, "tune.metric=val_auc"])
