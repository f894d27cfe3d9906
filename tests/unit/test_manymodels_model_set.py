"""Model sets without Ray or MLflow: segment keys, the directory contract, routing, LRU cache, mixed-segment predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayml.config import DataConfig, SyntheticConfig
from rayml.data import generate_sales, infer_schema
from rayml.errors import ModelNotFoundError, PredictionInputError
from rayml.models import OnnxPredictor, build_model, build_spec, export_onnx
from rayml.registry import (
    FALLBACK,
    FALLBACK_FILE,
    KIND_MODEL_SET,
    META_FILE,
    MODEL_FILE,
    REF_STATS_FILE,
    ModelSet,
    ModelSetWriter,
    segment_groups,
    segment_key,
    split_segment_key,
)


# --- keys ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, key",
    [
        (["store_001"], "store_001"),
        ("store_001", "store_001"),  # a scalar is one value, not a sequence of characters
        (["north", "brand_a"], "north|brand_a"),
        ([3], "3"),
        ([3.0], "3"),  # CSV turns an integer id with gaps into floats: still the same segment
        ([np.int64(3)], "3"),
        ([2.5], "2.5"),
        ([None], "__missing__"),
        ([float("nan")], "__missing__"),
        (["a|b", "c"], "a\\|b|c"),  # a separator inside a value cannot forge another segment
        (["../etc"], "../etc"),
    ],
)
def test_segment_key(values, key: str) -> None:
    assert segment_key(values) == key


def test_split_segment_key_undoes_the_escaping() -> None:
    for parts in (["a|b", "c"], ["x\\y", "|"], ["plain"]):
        assert split_segment_key(segment_key(parts)) == parts


def test_segment_groups_is_vectorised_segment_key() -> None:
    df = pd.DataFrame(
        {
            "region": ["north", "south", "north", None, "north", "south"],
            "brand": [1, 2, 1.0, 3, 2, 2],
        }
    )
    codes, keys = segment_groups(df, ["region", "brand"])
    per_row = [keys[c] for c in codes]
    assert per_row == [segment_key([r, b]) for r, b in zip(df["region"], df["brand"], strict=True)]
    assert len(set(keys)) == len(keys)  # one group per distinct key
    one_codes, one_keys = segment_groups(pd.DataFrame({"s": [1, 1.0, 2]}), ["s"])
    assert one_keys == ["1", "2"] and list(one_codes) == [0, 0, 1]
    with pytest.raises(PredictionInputError, match="segment column"):
        segment_groups(df, ["store_id"])


# --- a small set ---------------------------------------------------------------------------------------------------------
def _model(df: pd.DataFrame, schema, seed: int) -> bytes:
    spec = build_spec(df, schema, [8], 0.0, 2)
    return export_onnx(build_model(spec, seed=seed))


@pytest.fixture(scope="module")
def data():
    df = generate_sales(SyntheticConfig(segments=4, rows_per_segment=30, seed=3))
    schema = infer_schema(df, DataConfig())
    return df, schema


def _write_set(tmp: Path, data, serve_fallback: bool = True) -> tuple[Path, dict[str, bytes]]:
    df, schema = data
    writer = ModelSetWriter(tmp / "set", ["store_id"])
    models = {}
    for i, key in enumerate(["store_000", "store_001"]):
        models[key] = _model(df[df.store_id == key], schema, seed=i)
        writer.add_segment(key, i, models[key], rows=30, metrics={"val_rmse": 1.0 + i})
    if serve_fallback:
        writer.add_fallback_segment("store_002", rows=3)
    models[FALLBACK] = _model(df, schema, seed=9)
    stats = {"global": {"rows": len(df)}, "segments": {"store_000": {"rows": 30}}}
    out = writer.finish(
        models[FALLBACK],
        serve_fallback=serve_fallback,
        meta={"task": "regression", "target": "sales", "schema": schema.to_dict()},
        reference_stats=stats,
    )
    return out, models


def test_directory_contract(tmp_path: Path, data) -> None:
    out, _ = _write_set(tmp_path, data)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["kind"] == KIND_MODEL_SET
    assert meta["segment_columns"] == ["store_id"]
    assert meta["fallback"] == FALLBACK_FILE
    assert meta["segments"]["store_000"] == {
        "file": "segments/0.onnx",
        "rows": 30,
        "fallback": False,
        "status": "trained",
        "metrics": {"val_rmse": 1.0},
    }
    assert meta["segments"]["store_002"]["fallback"] is True and meta["segments"]["store_002"]["file"] == FALLBACK_FILE
    assert meta["task"] == "regression" and meta["target"] == "sales" and "schema" in meta
    assert [i["name"] for i in meta["inputs"]][:2] == ["price", "temperature"]
    assert (out / MODEL_FILE).is_file() and (out / FALLBACK_FILE).is_file() and (out / "segments/1.onnx").is_file()
    stats = json.loads((out / REF_STATS_FILE).read_text())
    assert set(stats) == {"global", "segments"}


def test_routing_and_mixed_segment_predict_match_each_model(tmp_path: Path, data) -> None:
    df, _ = data
    out, models = _write_set(tmp_path, data)
    ms = ModelSet(out, max_cached=2)
    assert ms.segments == ["store_000", "store_001", "store_002"] and ms.has_fallback
    assert ms.segment_model_for("store_001") == "store_001"
    assert ms.segment_model_for("store_002") == FALLBACK  # too few rows: recorded as fallback
    assert ms.segment_model_for("store_999") == FALLBACK  # unknown
    # rows of several segments, interleaved: each row gets its own segment's model, in input order
    rows = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    preds, served_by = ms.predict(rows)
    expected_by = np.where(rows.store_id.isin(["store_000", "store_001"]), rows.store_id, FALLBACK)
    assert list(served_by) == list(expected_by)
    for model, raw in models.items():
        mask = expected_by == model
        ref = OnnxPredictor(raw).predict(rows[mask])
        np.testing.assert_allclose(preds[mask], ref, rtol=1e-6, atol=1e-6)
    assert ms.reference_stats("store_000") == {"rows": 30}
    assert ms.reference_stats("store_003") == {"rows": len(df)}


def test_lru_cache_is_bounded(tmp_path: Path, data) -> None:
    out, _ = _write_set(tmp_path, data)
    ms = ModelSet(out, max_cached=2)
    ms.predictor("store_000")
    ms.predictor("store_001")
    ms.predictor("store_000")  # hit: store_000 becomes most recent
    ms.predictor("store_777")  # fallback: evicts store_001
    assert ms.cached == ["store_000", FALLBACK]
    assert ms.loads == 3


def test_without_fallback_unknown_segments_are_errors(tmp_path: Path, data) -> None:
    df, _ = data
    out, _ = _write_set(tmp_path, data, serve_fallback=False)
    ms = ModelSet(out)
    assert not ms.has_fallback and not (out / FALLBACK_FILE).exists()
    with pytest.raises(ModelNotFoundError, match="segment 'store_003' has no model") as e:
        ms.predictor("store_003")
    assert "store_000" in str(e.value)  # the hint lists the known segments
    with pytest.raises(ModelNotFoundError):
        ms.predict(df)
    preds, served_by = ms.predict(df, unknown="nan")
    unknown = ~df.store_id.isin(["store_000", "store_001"]).to_numpy()
    assert np.isnan(preds[unknown]).all() and not np.isnan(preds[~unknown]).any()
    assert set(served_by[unknown]) == {""}


def test_a_single_model_is_not_a_model_set(tmp_path: Path, data) -> None:
    d = tmp_path / "single"
    d.mkdir()
    (d / META_FILE).write_text(json.dumps({"kind": "model"}))
    with pytest.raises(ModelNotFoundError, match="is a single model"):
        ModelSet(d)


def test_index_cannot_point_outside_the_set(tmp_path: Path, data) -> None:
    out, _ = _write_set(tmp_path, data)
    meta = json.loads((out / META_FILE).read_text())
    meta["segments"]["store_000"]["file"] = "../../elsewhere.onnx"
    ms = ModelSet(out, meta=meta)
    with pytest.raises(Exception, match="outside"):
        ms.predictor("store_000")
