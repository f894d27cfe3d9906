"""The model directory (rayml.models.ModelDir) without Ray or MLflow: write/read round trips of a model and a model
set, reference statistics per segment, predicting with either kind, and clear errors for broken directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rayml.config import DataConfig, SyntheticConfig
from rayml.data import Schema, generate_sales, infer_schema, reference_stats
from rayml.errors import InvalidModelDirError, ModelError, ModelNotFoundError
from rayml.models import (
    FALLBACK,
    KIND_MODEL,
    KIND_MODEL_SET,
    ModelDir,
    ModelSetWriter,
    OnnxPredictor,
    TensorInfo,
    build_model,
    build_spec,
    export_onnx,
)
from rayml.models.model_dir import META_FILE, MLMODEL_FILE, MODEL_FILE, REF_STATS_FILE
from rayml.testing import multiclass_frame, multiclass_onnx, write_tiny_model


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, Schema]:
    df = generate_sales(SyntheticConfig(segments=3, rows_per_segment=40, seed=5))
    return df, infer_schema(df, DataConfig(segment=["store_id"]))


def _onnx(df: pd.DataFrame, schema: Schema, seed: int) -> bytes:
    return export_onnx(build_model(build_spec(df, schema, [8], 0.0, 2), seed=seed))


@pytest.fixture(scope="module")
def single(data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, dict]:
    df, schema = data
    onnx_bytes = _onnx(df, schema, seed=1)
    stats = reference_stats(df, schema, predictions=OnnxPredictor(onnx_bytes).predict(df))
    out = tmp_path_factory.mktemp("single") / "model"
    meta = {
        "task": schema.task,
        "target": schema.target,
        "schema": schema.to_dict(),
        "data_fingerprint": "fp-1",
        "lineage": {"rayml.run_id": "run-1", "rayml.git_commit": "abc"},
        "kind": "something the caller made up",  # the writer's, not the caller's
        "name": "sales-model",
    }
    ModelDir.write_model(out, onnx_bytes=onnx_bytes, meta=meta, reference_stats=stats)
    return out, onnx_bytes, stats


@pytest.fixture(scope="module")
def model_set(data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], dict]:
    df, schema = data
    writer = ModelSetWriter(tmp_path_factory.mktemp("set") / "set", ["store_id"])
    models = {}
    for i, key in enumerate(["store_000", "store_001"]):
        models[key] = _onnx(df[df.store_id == key], schema, seed=10 + i)
        writer.add_segment(key, i, models[key], rows=40)
    writer.add_fallback_segment("store_002", rows=2)
    models[FALLBACK] = _onnx(df, schema, seed=9)
    stats = {"global": {"rows": len(df)}, "segments": {"store_000": {"rows": 40}}}
    out = writer.finish(
        models[FALLBACK],
        serve_fallback=True,
        meta={"task": "regression", "target": "sales", "schema": schema.to_dict(), "name": "stores"},
        reference_stats=stats,
    )
    return out, models, stats


# --- round trips ---------------------------------------------------------------------------------------------------------
def test_a_single_model_round_trips(single, data) -> None:
    path, onnx_bytes, stats = single
    _, schema = data
    md = ModelDir.read(path)
    assert ModelDir.is_complete(path)
    assert md.kind == KIND_MODEL and not md.is_model_set and md.format_version == 1
    assert md.task == "regression" and md.target == "sales" and md.class_labels == []
    assert md.schema == schema
    graph = OnnxPredictor(onnx_bytes)
    assert md.inputs == graph.inputs and md.outputs == graph.outputs  # the signature is the graph's
    assert all(isinstance(t, TensorInfo) for t in md.inputs)
    assert md.input_names == graph.input_names and md.segment_columns == []
    assert md.lineage == {"rayml.run_id": "run-1", "rayml.git_commit": "abc"} and md.data_fingerprint == "fp-1"
    assert md.meta["name"] == "sales-model"  # what the writer recorded besides the known fields stays
    assert md.model_file == path / MODEL_FILE and md.model_file.read_bytes() == onnx_bytes
    assert md.all_reference_stats == stats == md.reference_stats()
    assert (path / MLMODEL_FILE).is_file()  # also an MLflow model (tests/unit/test_mlflow_model.py)


def test_a_model_set_round_trips(model_set, data) -> None:
    path, _, stats = model_set
    _, schema = data
    md = ModelDir.read(path)
    assert md.kind == KIND_MODEL_SET and md.is_model_set
    assert md.segment_columns == ["store_id"] and md.schema == schema and md.task == "regression"
    assert md.input_names == OnnxPredictor(md.model_file).input_names
    ms = md.model_set(max_cached=4)
    assert ms.segments == ["store_000", "store_001", "store_002"] and ms.has_fallback and ms.max_cached == 4
    assert md.model_set() is ms  # one set per directory: one session cache
    assert md.all_reference_stats == stats
    assert (path / MLMODEL_FILE).is_file()


def test_reading_a_written_dir_gives_what_the_writer_returned(data, tmp_path: Path) -> None:
    df, schema = data
    written = ModelDir.write_model(tmp_path / "m", onnx_bytes=_onnx(df, schema, seed=2), meta={"task": "binary"})
    read = ModelDir.read(tmp_path / "m")
    assert written.meta == read.meta and written.path == read.path
    assert not (tmp_path / "m" / REF_STATS_FILE).exists() and read.reference_stats() == {}


def test_without_recorded_signature_the_graph_is_the_signature(single, tmp_path: Path) -> None:
    path, onnx_bytes, _ = single
    (tmp_path / MODEL_FILE).write_bytes(onnx_bytes)
    (tmp_path / META_FILE).write_text(json.dumps({"kind": "model", "task": "regression", "target": "sales"}))
    md = ModelDir.read(tmp_path)
    assert md.input_names == OnnxPredictor(onnx_bytes).input_names and md.schema is None


# --- reference statistics ---------------------------------------------------------------------------------------------------
def test_reference_stats_per_segment(model_set) -> None:
    md = ModelDir.read(model_set[0])
    assert md.reference_stats("store_000") == {"rows": 40}  # its own
    assert md.reference_stats("store_001") == md.reference_stats() == {"rows": 120}  # none of its own: global
    assert md.reference_stats("store_999") == {"rows": 120}  # unknown segment: global
    assert md.reference_stats("store_001", own_only=True) == {} and md.reference_stats("store_000", own_only=True)


def test_a_single_models_stats_are_its_global_stats(single) -> None:
    path, _, stats = single
    md = ModelDir.read(path)
    assert md.reference_stats() == md.reference_stats("store_000") == stats and stats["features"]
    assert md.reference_stats("store_000", own_only=True) == {}


def test_a_dir_without_stats_has_empty_stats(single, tmp_path: Path) -> None:
    path, onnx_bytes, _ = single
    (tmp_path / MODEL_FILE).write_bytes(onnx_bytes)
    (tmp_path / META_FILE).write_text((path / META_FILE).read_text())
    md = ModelDir.read(tmp_path)
    assert md.all_reference_stats == {} and md.reference_stats() == {} and md.reference_stats("store_000") == {}


# --- predicting ------------------------------------------------------------------------------------------------------------
def test_predict_frame_with_a_single_model(single, data) -> None:
    path, onnx_bytes, _ = single
    df, _ = data
    md = ModelDir.read(path)
    np.testing.assert_allclose(md.predict_frame(df), OnnxPredictor(onnx_bytes).predict(df))
    preds, served_by = md.predict_and_route(df)
    assert served_by is None and len(preds) == len(df)
    assert len(md.predict_frame(df.head(0))) == 0
    assert md.predictor() is md.predictor()  # one session, created once


def test_predict_frame_with_a_model_set_routes_rows_by_segment(model_set, data) -> None:
    path, models, _ = model_set
    df, _ = data
    rows = df.sample(frac=1.0, random_state=1).reset_index(drop=True)  # segments interleaved
    md = ModelDir.read(path)
    preds, served_by = md.predict_and_route(rows)
    expected_by = np.where(rows.store_id.isin(["store_000", "store_001"]), rows.store_id, FALLBACK)
    assert list(served_by) == list(expected_by)
    for model, raw in models.items():
        mask = expected_by == model
        np.testing.assert_allclose(preds[mask], OnnxPredictor(raw).predict(rows[mask]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(md.predict_frame(rows), preds)


# --- broken directories ------------------------------------------------------------------------------------------------
def test_a_missing_model_file_is_a_clear_error(single, tmp_path: Path) -> None:
    path, _, _ = single
    (tmp_path / META_FILE).write_text((path / META_FILE).read_text())
    assert not ModelDir.is_complete(tmp_path)
    with pytest.raises(InvalidModelDirError, match=f"{MODEL_FILE} is missing") as e:
        ModelDir.read(tmp_path)
    assert e.value.hint and MODEL_FILE in e.value.hint


def test_missing_metadata_is_a_clear_error(single, tmp_path: Path) -> None:
    (tmp_path / MODEL_FILE).write_bytes(single[1])
    assert not ModelDir.is_complete(tmp_path)
    with pytest.raises(InvalidModelDirError, match=f"has no {META_FILE}"):
        ModelDir.read(tmp_path)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / REF_STATS_FILE).write_text("{not json")
    with pytest.raises(InvalidModelDirError) as e:
        ModelDir.read(tmp_path)
    assert MODEL_FILE in e.value.message and META_FILE in e.value.message and REF_STATS_FILE in e.value.message


def test_a_missing_dir_and_an_unknown_kind_are_clear_errors(single, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelDirError, match="does not exist"):
        ModelDir.read(tmp_path / "nope")
    (tmp_path / MODEL_FILE).write_bytes(single[1])
    (tmp_path / META_FILE).write_text(json.dumps({"kind": "ensemble"}))
    with pytest.raises(InvalidModelDirError, match="kind 'ensemble'"):
        ModelDir.read(tmp_path)


def test_a_single_model_is_not_a_model_set(single) -> None:
    with pytest.raises(ModelNotFoundError, match="is a single model"):
        ModelDir.read(single[0]).model_set()


def _not_a_json_object(raw: bytes) -> bool:
    try:
        return not isinstance(json.loads(raw), dict)
    except ValueError:  # also UnicodeDecodeError
        return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8), st.lists, max_leaves=5)
        .filter(lambda v: not isinstance(v, dict))
        .map(lambda v: json.dumps(v).encode()),
    ).filter(_not_a_json_object)
)
def test_corrupt_metadata_is_always_a_clear_error(single, tmp_path: Path, raw: bytes) -> None:
    (tmp_path / MODEL_FILE).write_bytes(b"onnx")  # only checked to exist: reading never needs onnxruntime
    (tmp_path / META_FILE).write_bytes(raw)
    with pytest.raises(InvalidModelDirError, match=META_FILE) as e:
        ModelDir.read(tmp_path)
    assert e.value.hint


def test_reading_a_model_dir_imports_no_mlflow_ray_torch_or_onnxruntime(single) -> None:
    code = (
        "import sys; from rayml.models import ModelDir; "
        f"md = ModelDir.read({str(single[0])!r}); md.reference_stats(); md.schema; md.input_names; "
        "print(sorted(m for m in ('mlflow', 'ray', 'torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- every output (multiclass) -------------------------------------------------------------------------------------------
def test_predict_outputs_gives_labels_and_probabilities_whatever_the_kind(tmp_path: Path) -> None:
    df = multiclass_frame()
    md = write_tiny_model(tmp_path / "single", task="multiclass")
    outputs, served_by = md.predict_outputs(df)
    assert served_by is None and list(outputs) == ["label", "probabilities"]
    assert set(outputs["label"]) <= {"low", "medium", "high"} and outputs["probabilities"].shape == (len(df), 3)
    assert list(outputs["label"]) == list(md.predict_frame(df))  # the first output is "the prediction"
    empty, _ = md.predict_outputs(df.head(0))
    assert empty["label"].shape == (0,) and empty["probabilities"].shape == (0, 3)

    # a set with integer labels and no fallback: routed per segment; unknown segments answered blank on request
    labels = [0, 1, 2]
    writer = ModelSetWriter(tmp_path / "set", ["store_id"])
    for i, key in enumerate(["store_000", "store_001"]):
        writer.add_segment(key, i, multiclass_onnx(seed=i, class_labels=labels), rows=50)
    meta = {"task": "multiclass", "target": "sales_band", "class_labels": labels}
    ms = ModelDir.read(writer.finish(multiclass_onnx(class_labels=labels), serve_fallback=False, meta=meta, reference_stats={}))
    known = df[df.store_id.isin(["store_000", "store_001"])]
    outputs, served_by = ms.predict_outputs(known)
    assert outputs["label"].dtype == np.int64 and set(served_by) == {"store_000", "store_001"}
    own = OnnxPredictor(multiclass_onnx(seed=1, class_labels=labels)).predict_all(known[known.store_id == "store_001"])
    np.testing.assert_allclose(outputs["probabilities"][(known.store_id == "store_001").to_numpy()], own["probabilities"])
    with pytest.raises(ModelNotFoundError):
        ms.predict_outputs(df)
    outputs, served_by = ms.predict_outputs(df, unknown="nan")
    unknown = ~df.store_id.isin(["store_000", "store_001"]).to_numpy()
    assert all(v is None for v in outputs["label"][unknown]) and np.isnan(outputs["probabilities"][unknown]).all()
    assert (served_by[unknown] == "").all() and not np.isnan(outputs["probabilities"][~unknown]).any()

    # a segment model with another number of classes than the set records is a clear error, not garbage
    writer = ModelSetWriter(tmp_path / "bad", ["store_id"])
    writer.add_segment("store_000", 0, multiclass_onnx(class_labels=["a", "b"]), rows=50)
    bad_meta = {"task": "multiclass", "target": "sales_band", "class_labels": ["a", "b", "c"]}
    bad = ModelDir.read(
        writer.finish(multiclass_onnx(class_labels=["a", "b", "c"]), serve_fallback=True, meta=bad_meta, reference_stats={})
    )
    with pytest.raises(ModelError, match="same outputs"):
        bad.predict_outputs(df[df.store_id == "store_000"])
