"""Many-models bookkeeping without Ray: segment table, min_rows fallback, chunking, failure accounting, retries, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayml._private import constants
from rayml.config import CandidateConfig, DataConfig, ManyModelsJobConfig, SyntheticConfig, load_config
from rayml.data import generate_sales, infer_schema
from rayml.errors import ConfigError
from rayml.manymodels import (
    SegmentOutcome,
    account,
    auto_segments_per_task,
    fit_segment,
    fit_settings,
    fit_with_retries,
    segment_table,
    split_trainable,
)
from rayml.manymodels._plan import VAL_COLUMN, chunk
from rayml.manymodels._state import RunState
from rayml.models import OnnxPredictor
from rayml.registry import segment_key


def test_segment_table_sorts_by_key_and_gives_every_segment_train_and_validation_rows() -> None:
    df = pd.DataFrame(
        {
            "region": ["b", "a", "b", "a", "c", "a", "b", "c", "d"],
            "x": np.arange(9.0),
        }
    )
    t = segment_table(df, ["region"], validation_fraction=0.5, seed=1)
    assert t.keys == ["a", "b", "c", "d"]  # index = position of the key in sorted order
    assert [s.index for s in t.segments] == [0, 1, 2, 3]
    for s in t.segments:
        part = t.frame.iloc[s.start : s.start + s.rows]
        assert set(part["region"]) == {s.key}  # contiguous
        if s.rows >= 2:
            assert part[VAL_COLUMN].any() and not part[VAL_COLUMN].all()
    a = t.frame[t.frame.region == "a"]["x"].tolist()
    assert a == [1.0, 3.0, 5.0]  # row order within a segment is kept
    assert t.segments[3].rows == 1 and not t.frame[VAL_COLUMN].iloc[-1]  # a 1-row segment keeps its row for training


def test_multi_column_segments_use_the_canonical_key() -> None:
    df = pd.DataFrame({"region": ["n", "n", "s"], "brand": [1, 2, 1], "x": [0.0, 1.0, 2.0]})
    t = segment_table(df, ["region", "brand"], 0.2, 0)
    assert t.keys == [segment_key(["n", 1]), segment_key(["n", 2]), segment_key(["s", 1])] == ["n|1", "n|2", "s|1"]


def test_min_rows_decides_fallback_and_chunks_cover_every_segment_once() -> None:
    df = pd.DataFrame({"s": ["a"] * 5 + ["b"] * 2 + ["c"] * 9, "x": np.zeros(16)})
    t = segment_table(df, ["s"], 0.2, 0)
    trainable, small = split_trainable(t.segments, min_rows=5)
    assert [s.key for s in trainable] == ["a", "c"] and [s.key for s in small] == ["b"]
    chunks = chunk(list(range(10)), 3)
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    with pytest.raises(ValueError):
        chunk([1], 0)


@pytest.mark.parametrize(
    "n, slots, expected",
    [(1000, 2, 32), (40, 2, 5), (3, 2, 1), (0, 2, 1), (100, 0, 25), (10_000, 64, 32)],
)
def test_auto_segments_per_task(n: int, slots: float, expected: int) -> None:
    assert auto_segments_per_task(n, slots) == expected


def _outcome(key: str, status: str, error: str | None = None) -> SegmentOutcome:
    return SegmentOutcome(key=key, index=0, rows=10, status=status, error=error)


def test_failure_accounting_and_share() -> None:
    acc = account(
        [_outcome("a", "trained"), _outcome("b", "fallback"), _outcome("c", "failed", "boom"), _outcome("d", "trained")]
    )
    assert acc.trained == ["a", "d"] and acc.fell_back == ["b"] and acc.failed == {"c": "boom"}
    assert acc.failed_share == 0.25
    assert not acc.too_many_failures(0.25)  # equal to the limit is allowed
    assert acc.too_many_failures(0.2)
    with pytest.raises(ValueError, match="two outcomes"):
        account([_outcome("a", "trained"), _outcome("a", "failed")])
    with pytest.raises(ValueError, match="unknown status"):
        account([_outcome("a", "skipped")])


# --- per-segment training --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_store():
    df = generate_sales(SyntheticConfig(segments=2, rows_per_segment=150, seed=4))
    schema = infer_schema(df, DataConfig())
    store = df[df.store_id == "store_001"].reset_index(drop=True)
    return store.iloc[:120], store.iloc[120:], schema


def _cfg(*overrides: str) -> ManyModelsJobConfig:
    return load_config(
        ManyModelsJobConfig,
        None,
        ["model.hidden_sizes=[8]", "train.epochs=4", "train.batch_size=32", "train.learning_rate=0.02", *overrides],
    )


def test_fit_segment_exports_a_parity_checked_model_that_beats_the_mean(one_store) -> None:
    train, val, schema = one_store
    out = fit_segment("store_001", train, val, schema, fit_settings(_cfg()))
    assert out.status == "trained" and out.rows == 150 and out.epochs == 4
    pred = OnnxPredictor(out.onnx).predict(val)
    rmse = float(np.sqrt(np.mean((pred - val["sales"].to_numpy()) ** 2)))
    assert rmse == pytest.approx(out.metrics["val_rmse"], rel=1e-4)
    assert rmse < float(val["sales"].std())  # learned something
    assert out.stats["rows"] == 120 and "price" in out.stats["features"] and "prediction" in out.stats


def test_candidates_search_keeps_the_best_on_the_segment_validation_split(one_store) -> None:
    train, val, schema = one_store
    cfg = _cfg("train.epochs=3")
    cfg.manymodels.candidates = [CandidateConfig(learning_rate=1e-6), CandidateConfig(learning_rate=0.03, epochs=6)]
    settings = fit_settings(cfg)
    assert [s.learning_rate for s in settings] == [1e-6, 0.03] and settings[1].epochs == 6 and settings[0].epochs == 3
    out = fit_segment("store_001", train, val, schema, settings)
    assert out.candidate == 1  # a learning rate of 1e-6 learns nothing in 3 epochs


def test_retries_cure_a_transient_failure_and_record_a_permanent_one(one_store) -> None:
    train, val, schema = one_store
    settings = fit_settings(_cfg("train.epochs=1"))
    ok = fit_with_retries("store_001", 7, train, val, schema, settings, max_retries=1, fail_attempts=1)
    assert ok.status == "trained" and ok.attempts == 2 and ok.index == 7
    bad = fit_with_retries("store_001", 7, train, val, schema, settings, max_retries=2, fail_attempts=-1)
    assert bad.status == "failed" and bad.attempts == 3 and bad.onnx is None
    assert "injected failure of segment 'store_001'" in bad.error and "attempt 3" in bad.error


def test_fail_segments_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYML_FAIL_SEGMENTS", "store_003, a|b@2,x@kill")
    assert constants.fail_segments() == {"store_003": -1, "a|b": 2, "x": constants.FAIL_SEGMENT_KILL}
    monkeypatch.setenv("RAYML_FAIL_SEGMENTS", "store_003@x")
    with pytest.raises(ConfigError, match="not a number of attempts"):
        constants.fail_segments()
    monkeypatch.delenv("RAYML_FAIL_SEGMENTS")
    assert constants.fail_segments() == {}


def test_run_state_keeps_trained_segments_for_a_rerun(tmp_path: Path, one_store) -> None:
    train, val, schema = one_store
    out = fit_segment("store_001", train, val, schema, fit_settings(_cfg("train.epochs=1")))
    out.index = 3
    state = RunState(str(tmp_path / "run"))
    state.save(out)
    state.save(_outcome("store_002", "failed", "boom"))  # failures are not kept: a rerun retries them
    again = state.load("store_001", 3)
    assert again is not None and again.onnx == out.onnx and again.metrics == out.metrics and again.stats == out.stats
    assert state.load("store_999", 3) is None  # same index, other data: never mixed up
    assert state.load("store_002", 0) is None
    (tmp_path / "run" / "segments" / "3.json").write_text("{torn")
    assert state.load("store_001", 3) is None


def test_many_models_config_needs_segments() -> None:
    with pytest.raises(ConfigError, match="data.segment is empty"):
        load_config(ManyModelsJobConfig, None, ["data.segment=[]"])
    with pytest.raises(ConfigError, match="min_rows"):
        load_config(ManyModelsJobConfig, None, ["manymodels.min_rows=1"])
