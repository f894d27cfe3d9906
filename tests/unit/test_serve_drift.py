"""Online drift bookkeeping without Ray: replica recorders, merge across replicas, windows (fake clock), gauges."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayml.config import DriftConfig
from rayml.data.stats import categorical_reference, label_reference, numeric_reference
from rayml.serve._drift import GLOBAL, DriftRecorder, DriftStore, gauge_values, quality_deltas


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


RNG = np.random.default_rng(0)
TRAIN = pd.DataFrame({"price": RNG.normal(10, 2, 5000), "category": RNG.choice(["a", "b", "c"], 5000, p=[0.5, 0.3, 0.2])})
REF = {
    "features": {"price": numeric_reference(TRAIN["price"]), "category": categorical_reference(TRAIN["category"])},
    "prediction": numeric_reference(TRAIN["price"] * 3),
}


def batch(n: int, shift: float = 0.0, cats: list[str] | None = None, p: list[float] | None = None, seed: int = 1):
    rng = np.random.default_rng(seed)
    price = rng.normal(10 + shift, 2, n).astype("float32")
    cat = rng.choice(cats or ["a", "b", "c"], n, p=p or [0.5, 0.3, 0.2]).astype(object)
    return {"price": price, "category": cat}, price * 3


def test_counts_from_replicas_merge_to_the_exact_total_and_windows_roll() -> None:
    clock = Clock(1000.0)  # window 10 of 100 s
    store = DriftStore(100.0, DriftConfig(min_rows=50), clock=clock)
    replicas = {name: DriftRecorder(100.0, clock=clock) for name in ("r1", "r2", "r3")}
    sent = 0
    for i, (name, rec) in enumerate(replicas.items()):
        for j in range(4):
            cols, preds = batch(7 + i + j, seed=10 * i + j)
            sent += rec.observe(GLOBAL, REF, cols, preds)
        store.push(name, "m", 1, rec.references(), rec.drain())
        assert rec.drain() == []  # drained once
    report = store.report("m", 1)
    assert report["rows"] == sent and report["replicas"] == 3 and report["complete"] is False
    assert report["features"]["price"]["rows"] == sent and report["prediction"]["rows"] == sent

    # next window: too few rows yet, so the last complete window is shown (no flapping to insufficient_data)
    clock.t = 1100.0
    cols, preds = batch(10, seed=99)
    replicas["r1"].observe(GLOBAL, REF, cols, preds)
    store.push("r1", "m", 1, {}, replicas["r1"].drain())  # references already known to the store
    shown = store.report("m", 1)
    assert shown["complete"] is True and shown["rows"] == sent and shown["window_start"] == 1000.0
    # two windows later only the newest is kept: memory stays bounded
    clock.t = 1300.0
    cols, preds = batch(60, seed=5)
    replicas["r2"].observe(GLOBAL, REF, cols, preds)
    store.push("r2", "m", 1, {}, replicas["r2"].drain())
    now = store.report("m", 1)
    assert now["rows"] == 60 and now["complete"] is False and now["window_start"] == 1300.0
    assert len(store._windows[("m", 1, GLOBAL)]) == 1


def test_drifted_rows_alert_and_clean_rows_stay_ok() -> None:
    clock = Clock()
    store = DriftStore(60.0, DriftConfig(min_rows=100), clock=clock)
    clean, drifted = DriftRecorder(60.0, clock=clock), DriftRecorder(60.0, clock=clock)
    cols, preds = batch(600, seed=3)
    clean.observe(GLOBAL, REF, cols, preds)
    cols, preds = batch(600, shift=4.0, cats=["a", "c", "new"], p=[0.2, 0.4, 0.4], seed=4)
    drifted.observe(GLOBAL, REF, cols, preds)
    store.push("r", "m", 1, clean.references(), clean.drain())
    store.push("r", "m", 2, drifted.references(), drifted.drain())
    ok, bad = store.report("m", 1), store.report("m", 2)
    assert ok["status"] == "ok" and ok["drifted_features"] == [], ok
    assert bad["status"] == "alert" and set(bad["drifted_features"]) == {"price", "category"}
    assert bad["features"]["price"]["metrics"]["psi"] > 0.25 and bad["features"]["category"]["metrics"]["linf"] > 0.1
    assert bad["prediction"]["status"] == "alert"
    g = gauge_values(bad)
    assert g["feature_status"] == {"price": 2, "category": 2} and g["prediction_status"] == 2
    assert g["feature"][("price", "psi")] > 0.25 and ("category", "linf") in g["feature"] and g["rows"] == 600
    assert gauge_values(ok)["feature_status"] == {"price": 0, "category": 0}


def test_few_rows_are_insufficient_and_quality_problems_are_counted() -> None:
    clock = Clock()
    store = DriftStore(60.0, DriftConfig(min_rows=100), clock=clock)
    rec = DriftRecorder(60.0, clock=clock)
    cols = {
        "price": np.array([np.nan, 1e6, 10.0], dtype="float32"),
        "category": np.array(["a", "zzz", "__unknown__"], dtype=object),
    }
    rec.observe(GLOBAL, REF, cols, np.array([1.0, 2.0, 3.0]))
    rows = rec.drain()
    deltas = quality_deltas(rows)
    assert deltas[("price", "missing")] == 1 and deltas[("price", "out_of_range")] == 1
    assert deltas[("category", "unseen")] == 1 and deltas[("category", "missing")] == 1
    store.push("r", "m", 1, rec.references(), rows)
    report = store.report("m", 1)
    assert report["status"] == "insufficient_data" and gauge_values(report)["feature_status"]["price"] == -1


def test_model_set_segments_use_their_own_reference_and_the_worst_segment_wins() -> None:
    clock = Clock()
    store = DriftStore(60.0, DriftConfig(min_rows=100), clock=clock)
    rec = DriftRecorder(60.0, clock=clock)
    cols, preds = batch(1000, seed=1)
    rec.observe("store_1", REF, cols, preds)
    cols, preds = batch(300, shift=4.0, seed=2)
    rec.observe("store_2", REF, cols, preds)
    store.push("r", "set", 3, rec.references(), rec.drain())
    report = store.report("set", 3)
    assert report["rows"] == 1300 and report["drifted_features"] == ["price"]
    assert report["segments"]["store_1"]["status"] == "ok" and report["segments"]["store_2"]["status"] == "alert"


def test_a_failed_flush_is_restored_without_loss_or_double_count() -> None:
    clock = Clock()
    rec = DriftRecorder(60.0, clock=clock)
    cols, preds = batch(25, seed=1)
    rec.observe(GLOBAL, REF, cols, preds)
    rows = rec.drain()
    rec.restore(rows)  # the push failed
    cols, preds = batch(5, seed=2)
    rec.observe(GLOBAL, REF, cols, preds)
    again = rec.drain()
    assert len(again) == 1 and again[0][2]["rows"] == 30


def test_a_multiclass_models_predicted_classes_are_counted_per_class() -> None:
    classes = RNG.choice(["low", "medium", "high"], 5000, p=[0.5, 0.3, 0.2]).astype(object)
    ref = {**REF, "prediction": label_reference(classes)}  # what reference_stats saves for predicted labels
    clock = Clock()
    store = DriftStore(60.0, DriftConfig(min_rows=100), clock=clock)
    steady, shifted = DriftRecorder(60.0, clock=clock), DriftRecorder(60.0, clock=clock)
    cols, _ = batch(600, seed=3)
    steady.observe(GLOBAL, ref, cols, np.random.default_rng(3).choice(["low", "medium", "high"], 600, p=[0.5, 0.3, 0.2]))
    shifted.observe(GLOBAL, ref, cols, np.full(600, "high", dtype=object))  # the model now predicts one class only
    store.push("r", "m", 1, steady.references(), steady.drain())
    store.push("r", "m", 2, shifted.references(), shifted.drain())
    ok, bad = store.report("m", 1), store.report("m", 2)
    assert ok["prediction"]["kind"] == "categorical" and ok["prediction"]["status"] == "ok"
    assert bad["prediction"]["status"] == "alert" and bad["prediction"]["metrics"]["linf"] > 0.7
    assert gauge_values(bad)["prediction"].keys() == {"linf", "js"} and gauge_values(bad)["prediction_status"] == 2
