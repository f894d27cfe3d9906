"""Drift math against hand-computed values and scipy; merging replica counts; clean vs drifted data; the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from rayml.config import DataConfig, DriftConfig, DriftSpec, SyntheticConfig
from rayml.data import generate_sales, infer_schema, reference_stats
from rayml.data.stats import label_reference
from rayml.data.synthetic import apply_drift
from rayml.monitor import DriftCounter, drift_of_frame, drift_report, js_distance, linf, predict_frame, psi, write_report
from rayml.testing import MULTICLASS_TARGET, multiclass_frame, write_tiny_model


def test_psi_by_hand() -> None:
    ref, cur = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(ref, cur) == pytest.approx(expected)
    assert psi(ref, ref) == 0.0
    assert math.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))  # empty bins are floored, not infinite


@pytest.mark.parametrize(
    "p, q", [([0.1, 0.2, 0.7], [0.3, 0.3, 0.4]), ([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]), ([1, 0], [0, 1]), ([0.2, 0.8], [0.2, 0.8])]
)
def test_js_matches_scipy(p: list[float], q: list[float]) -> None:
    assert js_distance(np.array(p), np.array(q)) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)


def test_linf_by_hand() -> None:
    assert linf(np.array([0.2, 0.3, 0.5]), np.array([0.1, 0.6, 0.3])) == pytest.approx(0.3)


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    return generate_sales(SyntheticConfig(segments=10, rows_per_segment=400, seed=0))


@pytest.fixture(scope="module")
def reference(population: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    df = population.iloc[::2].reset_index(drop=True)  # "training" half; the other half is fresh traffic of the same stores
    schema = infer_schema(df, DataConfig())
    return df, reference_stats(df, schema, predictions=df["sales"].to_numpy() * 0.9)


def test_counts_from_replicas_merge_to_the_counts_of_all_rows(reference) -> None:
    df, ref = reference
    whole = DriftCounter(ref)
    whole.update(df, predictions=df["sales"])
    parts = [DriftCounter(ref) for _ in range(3)]
    for part, chunk in zip(parts, np.array_split(np.arange(len(df)), 3), strict=True):
        part.update(df.iloc[chunk], predictions=df["sales"].iloc[chunk])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.to_dict() == whole.to_dict()
    # and round-trips through JSON (how replicas ship counts)
    again = DriftCounter.from_dict(ref, json.loads(json.dumps(merged.to_dict())))
    assert again.to_dict() == whole.to_dict()


def test_clean_data_is_ok_and_drifted_data_alerts(reference, population: pd.DataFrame) -> None:
    df, ref = reference
    clean = population.iloc[1::2].reset_index(drop=True)
    c = DriftCounter(ref)
    c.update(clean)
    clean_report = drift_report(c)
    assert clean_report["status"] == "ok", {n: f["metrics"] for n, f in clean_report["features"].items()}

    rng = np.random.default_rng(0)
    drifted = apply_drift(clean, DriftSpec(kind="shift", column="price", value=1.5), rng)
    drifted = apply_drift(drifted, DriftSpec(kind="new_category", column="category", fraction=0.4), rng)
    d = DriftCounter(ref)
    d.update(drifted)
    report = drift_report(d)
    assert report["status"] == "alert"
    assert set(report["drifted_features"]) == {"price", "category"}
    assert report["features"]["price"]["metrics"]["psi"] > 0.25
    assert report["features"]["category"]["quality"]["unseen"] > 0.3 * len(drifted)
    assert report["features"]["temperature"]["status"] == "ok"


def test_data_quality_counters(reference) -> None:
    _, ref = reference
    c = DriftCounter(ref)
    c.update(
        pd.DataFrame({"price": [10.0, None, "cheap", 1e9], "category": ["grocery", None, "rockets", "toys"], "promo": ["no"] * 4})
    )
    price, cat = c.features["price"], c.features["category"]
    assert (price.missing, price.wrong_type, price.out_of_range) == (1, 1, 1)
    assert (cat.missing, cat.unseen) == (1, 1)
    report = drift_report(c)
    assert report["features"]["price"]["status"] == "insufficient_data"  # 2 rows never raise an alert


def test_offline_report_files_and_label_drift(reference, tmp_path: Path) -> None:
    df, ref = reference
    drifted = df.assign(price=df["price"] * 2, sales=df["sales"] + 100)
    report = drift_of_frame(ref, drifted, predictions=drifted["sales"].to_numpy(), target="sales", thresholds=DriftConfig())
    assert report["features"]["price"]["status"] == "alert"
    assert report["label"]["status"] == "alert" and "prediction" in report
    paths = write_report(report, ref, tmp_path / "r", title="sales-model@production")
    page = paths["html"].read_text()
    assert "Overall status: <b>alert</b>" in page and "price" in page
    pngs = sorted((tmp_path / "r" / "plots").glob("*.png"))
    assert len(pngs) == len(report["features"]) + 2  # + prediction + label
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["status"] == "alert"


def test_report_leaves_the_matplotlib_backend_alone(reference, tmp_path: Path) -> None:
    """A notebook's inline backend must survive writing a report (it used to be switched to Agg for good)."""
    import matplotlib

    df, ref = reference
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's backend: anything but Agg
    try:
        write_report(drift_of_frame(ref, df, None, None, DriftConfig()), ref, tmp_path / "r", title="t")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_a_multiclass_models_predictions_and_labels_drift_as_class_distributions(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model", task="multiclass")
    ref = model.reference_stats()
    # one bin per class (the majority first), for the predicted classes and the true ones
    assert ref["prediction"]["kind"] == "categorical" and ref["target"]["kind"] == "categorical"
    assert set(ref["target"]["categories"]) == {"low", "medium", "high", "__other__"}
    traffic = multiclass_frame().sample(frac=1.0, replace=True, random_state=1)  # a resample of the training rows
    predicted = predict_frame(model, traffic)
    assert set(predicted) <= {"low", "medium", "high"}  # labels, not numbers
    same = drift_of_frame(ref, traffic, predicted, MULTICLASS_TARGET, DriftConfig())
    assert same["prediction"]["status"] == "ok" and same["label"]["status"] == "ok", (same["prediction"], same["label"])
    assert set(same["prediction"]["metrics"]) == {"linf", "js"}
    high = traffic[traffic[MULTICLASS_TARGET] == "high"]  # only high-sales rows: the predicted classes shift
    shifted = drift_of_frame(ref, high, predict_frame(model, high), MULTICLASS_TARGET, DriftConfig(min_rows=30))
    assert shifted["prediction"]["status"] == "alert" and shifted["label"]["status"] == "alert"
    assert shifted["label"]["current_shares"][ref["target"]["categories"].index("high")] == 1.0
    paths = write_report(shifted, ref, tmp_path / "report", title="multiclass")
    assert len(list((tmp_path / "report" / "plots").glob("*.png"))) == len(shifted["features"]) + 2
    assert "categorical" in paths["html"].read_text()
    # integer labels are classes too (binned by their text, so 1 and "1" are one class), never decile edges
    ints = label_reference(np.asarray([2, 0, 2, 1, 2]))
    assert ints["kind"] == "categorical" and ints["categories"][:3] == ["2", "0", "1"] and ints["shares"][0] == 0.6
    counter = DriftCounter({"features": {}, "prediction": ints})
    counter.update({}, predictions=np.asarray([0, 0, 1, 7]))
    assert counter.prediction is not None and counter.prediction.bins.tolist() == [0, 2, 1, 1]
    assert counter.prediction.unseen == 1  # class 7 was never predicted in training
