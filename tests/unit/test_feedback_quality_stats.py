"""Live-quality statistics without Ray: metrics equal the numpy / scikit-learn values, bootstrap intervals contain
their estimate and keep the right width when resamples are capped, and `--since` parsing."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from rayml.errors import ConfigError
from rayml.feedback import parse_since
from rayml.feedback._bootstrap import encode_rows, metrics_with_intervals

NOW = dt.datetime(2024, 5, 2, 12, tzinfo=dt.timezone.utc)


def _intervals(rows, max_rows: int = 20_000, seed: int = 0):
    return metrics_with_intervals(rows, confidence=0.95, samples=200, max_rows=max_rows, seed=seed)


def test_regression_metrics_and_intervals() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=3000)
    pred = y + rng.normal(scale=0.5, size=3000)
    joined = pa.table({"label": [repr(float(v)) for v in y], "prediction": pred})
    rows, unusable = encode_rows("regression", joined, [], None)
    out = _intervals(rows)
    assert unusable == 0
    assert out["rmse"]["value"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
    assert out["mae"]["value"] == pytest.approx(np.mean(np.abs(pred - y)))
    for m in out.values():
        assert m["low"] < m["value"] < m["high"]
    # the normal-theory half width of the MAE, for comparison: the bootstrap agrees within sampling error
    half = 1.96 * np.std(np.abs(pred - y)) / np.sqrt(len(y))
    assert (out["mae"]["high"] - out["mae"]["low"]) / 2 == pytest.approx(half, rel=0.25)
    assert _intervals(rows) == out  # seeded


def test_capped_resamples_keep_the_interval_width() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=40_000)
    pred = y + rng.normal(size=40_000)
    rows, _ = encode_rows("regression", pa.table({"label": pa.array(y).cast(pa.string()), "prediction": pred}), [], None)
    full, capped = _intervals(rows, max_rows=40_000), _intervals(rows, max_rows=2_000)
    width = lambda m: m["high"] - m["low"]  # noqa: E731
    assert width(capped["rmse"]) == pytest.approx(width(full["rmse"]), rel=0.3)


def test_binary_metrics_equal_sklearns_and_unusable_rows_are_counted() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=800)
    p = np.clip(y * 0.3 + rng.random(800) * 0.7, 0, 1).round(2)  # rounded: ties in the scores
    labels = np.where(y == 1, "yes", "no").astype(object)
    prediction = pa.array(np.r_[p, [np.nan]], mask=np.r_[np.zeros(800, bool), [True]])
    rows, unusable = encode_rows(
        "binary", pa.table({"label": np.r_[labels, ["yes"]], "prediction": prediction}), ["no", "yes"], "yes"
    )
    out = _intervals(rows)
    assert unusable == 1
    assert out["auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert out["accuracy"]["value"] == pytest.approx(np.mean((p > 0.5) == y))
    assert out["logloss"]["value"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))
    for m in out.values():
        assert m["low"] <= m["value"] <= m["high"]
    assert out["auc"]["low"] >= 0.0 and out["auc"]["high"] <= 1.0
    one_class, _ = encode_rows("binary", pa.table({"label": ["yes"] * 50, "prediction": p[:50]}), ["no", "yes"], "yes")
    assert _intervals(one_class)["auc"] == {"value": None, "low": None, "high": None}


def test_multiclass_metrics_equal_sklearns() -> None:
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c"]
    y = rng.integers(0, 3, size=600)
    logits = np.eye(3)[y] * 1.5 + rng.normal(size=(600, 3))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = proba.argmax(1)
    joined = pa.table(
        {
            "label": [classes[i] for i in y],
            "predicted_label": [classes[i] for i in pred],
            "probabilities": pa.array(proba.tolist(), pa.list_(pa.float64())),
        }
    )
    rows, _ = encode_rows("multiclass", joined, classes, None)
    out = _intervals(rows)
    assert out["accuracy"]["value"] == pytest.approx(np.mean(pred == y))
    assert out["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert out["logloss"]["value"] == pytest.approx(log_loss(y, proba))
    for m in out.values():
        assert m["low"] < m["value"] < m["high"]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("24h", NOW - dt.timedelta(hours=24)),
        ("7d", NOW - dt.timedelta(days=7)),
        ("1d12h", NOW - dt.timedelta(hours=36)),
        ("90s", NOW - dt.timedelta(seconds=90)),
        ("2024-05-01", dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)),
        ("2024-05-01T10:00:00Z", dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc)),
        ("2024-05-01T12:00:00+02:00", dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc)),
    ],
)
def test_since_is_a_time_or_a_duration(text: str, want: dt.datetime) -> None:
    assert parse_since(text, now=NOW) == want


@pytest.mark.parametrize("text", ["yesterday", "24", "h24", "", "5x"])
def test_a_bad_since_says_what_to_write(text: str) -> None:
    with pytest.raises(ConfigError, match="neither an ISO-8601 time nor a duration") as e:
        parse_since(text, now=NOW)
    assert "24h" in (e.value.hint or "")


def test_bad_settings_fail_before_anything_is_read(tmp_path) -> None:
    from rayml.feedback import quality_report

    with pytest.raises(ConfigError, match="confidence 2 is not between 0.5 and 1; min_labels 0 is below 1") as e:
        quality_report(str(tmp_path), "m", task="binary", confidence=2, min_labels=0)
    assert "QualityConfig" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="task 'ranking' is not regression, binary or multiclass"):
        quality_report(str(tmp_path), "m", task="ranking")
