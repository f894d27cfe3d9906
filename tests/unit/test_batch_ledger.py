"""Batch exactly-once logic without Ray: output names, staging + commit + ledger, crash windows, and the file scorer."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayml.batch import CONTROL_DIR, FileScorer, InputFile, OutputDir, ScoreSpec, key_columns, list_inputs
from rayml.batch._capture import BatchCapture
from rayml.config import DataConfig, SyntheticConfig
from rayml.data import generate_sales, infer_schema
from rayml.errors import DataValidationError
from rayml.feedback import CAPTURE_SCHEMA, class_text
from rayml.models import ModelDir, OnnxPredictor, build_model, build_spec, export_onnx
from rayml.registry import FALLBACK, ModelSet, ModelSetWriter
from rayml.testing import multiclass_frame, sample_frame, write_tiny_model, write_tiny_model_set


def _input(tmp: Path, name: str, rows: int = 3) -> InputFile:
    p = tmp / "in" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"x": range(rows)}).to_parquet(p)
    return list_inputs(pafs.LocalFileSystem(), [str(p)])[0]


def _stage(out: OutputDir, attempt: str, f: InputFile, rows: int) -> None:
    with out.open_staging(attempt, f) as s:
        pd.DataFrame({"x": range(rows)}).to_parquet(s)


def test_output_names_are_safe_and_unique() -> None:
    a = InputFile("/data/a/part-0.parquet", 1, 1)
    b = InputFile("/data/b/part-0.parquet", 1, 1)
    assert a.output_name.startswith("part-0-") and a.output_name.endswith(".parquet")
    assert a.output_name != b.output_name  # same file name in two directories
    evil = InputFile("/data/../../etc/pa ss|wd.csv", 1, 1)
    assert "/" not in evil.output_name and ".." not in evil.output_name and " " not in evil.output_name
    assert InputFile("/x/...", 1, 1).output_name.startswith("part-")


def test_commit_then_pending_skips_it_until_the_input_changes(tmp_path: Path) -> None:
    f = _input(tmp_path, "a.parquet")
    g = _input(tmp_path, "b.parquet")
    out = OutputDir(str(tmp_path / "out"))
    assert out.pending([f, g]) == ([f, g], [])
    _stage(out, "att1", f, 3)
    entry = out.commit("att1", f, rows=3)
    assert entry.output == f.output_name and entry.rows == 3
    assert (tmp_path / "out" / f.output_name).is_file()
    assert not (tmp_path / "out" / CONTROL_DIR / "staging" / "att1" / f.output_name).exists()
    assert out.pending([f, g]) == ([g], [f])
    # the input was rewritten (new size/mtime): it is scored again
    changed = _input(tmp_path, "a.parquet", rows=5)
    assert out.pending([changed, g]) == ([changed, g], [])


def test_crash_between_move_and_ledger_is_redone_without_duplicates(tmp_path: Path) -> None:
    f = _input(tmp_path, "a.parquet")
    out = OutputDir(str(tmp_path / "out"))
    _stage(out, "att1", f, 3)
    out.fs.move(out.staging_path("att1", f), out.output_path(f))  # the crash: moved, but no ledger entry
    assert out.pending([f]) == ([f], [])  # not committed: it will be scored again
    out.discard_staging()  # what a rerun does first
    _stage(out, "att2", f, 3)
    out.commit("att2", f, rows=3)
    files = [p for p in os.listdir(tmp_path / "out") if not p.startswith("_")]
    assert files == [f.output_name]  # replaced under the same name: no duplicate rows
    assert len(pd.read_parquet(tmp_path / "out")) == 3  # readers skip _rayml_batch/


def test_staging_of_an_interrupted_attempt_never_commits(tmp_path: Path) -> None:
    f = _input(tmp_path, "a.parquet")
    out = OutputDir(str(tmp_path / "out"))
    _stage(out, "att1", f, 3)  # the crash: staged only
    assert out.pending([f]) == ([f], [])
    out.discard_staging()
    assert not (tmp_path / "out" / CONTROL_DIR / "staging").exists()
    assert not (tmp_path / "out" / f.output_name).exists()


def test_ledger_ignores_torn_entries_and_reset_deletes_only_its_own_files(tmp_path: Path) -> None:
    f = _input(tmp_path, "a.parquet")
    out = OutputDir(str(tmp_path / "out"))
    _stage(out, "att1", f, 3)
    out.commit("att1", f, rows=3)
    (tmp_path / "out" / CONTROL_DIR / "ledger" / "torn.json").write_text("{")
    (tmp_path / "out" / CONTROL_DIR / "ledger" / "x.json.123.tmp").write_text("{}")
    assert list(out.ledger()) == [f.path]
    (tmp_path / "out" / "mine.txt").write_text("the user's file")
    assert out.reset([f]) == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["mine.txt"]


# --- the scorer, without Ray -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_set_dir(tmp_path_factory: pytest.TempPathFactory):
    df = generate_sales(SyntheticConfig(segments=4, rows_per_segment=40, seed=2))
    schema = infer_schema(df, DataConfig())
    root = tmp_path_factory.mktemp("set")

    def model(part: pd.DataFrame, seed: int) -> bytes:
        return export_onnx(build_model(build_spec(part, schema, [8], 0.0, 2), seed=seed))

    out = {}
    for fallback in (True, False):
        w = ModelSetWriter(root / f"fb-{fallback}", ["store_id"])
        for i, key in enumerate(["store_000", "store_001"]):
            w.add_segment(key, i, model(df[df.store_id == key], i), rows=40)
        out[fallback] = w.finish(
            model(df, 9),
            serve_fallback=fallback,
            meta={"task": "regression", "target": "sales"},
            reference_stats={"global": {}, "segments": {}},
        )
    return out, df


def _scorer(tmp: Path, path: Path, id_columns=None, fmt: str = "parquet", kind: str = "model_set", capture=None) -> FileScorer:
    spec = ScoreSpec(
        model_name="sales-stores",
        model_version=3,
        model_path=str(path),
        tracking_uri="sqlite:///unused",
        kind=kind,
        output_uri=str(tmp / "out"),
        input_fs=pafs.LocalFileSystem(),
        fmt=fmt,
        attempt="att",
        batch_run_id="run1",
        batch_size=25,
        id_columns=id_columns,
        prediction_column="prediction",
        max_cached_models=8,
        capture=capture,
    )
    return FileScorer(spec)


def test_scorer_output_matches_each_segment_model_row_by_row(tmp_path: Path, model_set_dir) -> None:
    sets, df = model_set_dir
    f = tmp_path / "in.parquet"
    df.sample(frac=1.0, random_state=1).to_parquet(f)  # segments interleaved, several chunks of 25 rows
    inp = list_inputs(pafs.LocalFileSystem(), [str(f)])[0]
    r = _scorer(tmp_path, sets[True], id_columns=["date"]).score_file(inp)
    assert r["status"] == "committed" and r["rows"] == len(df), r
    got = pd.read_parquet(tmp_path / "out" / inp.output_name)
    src = pd.read_parquet(f)
    assert list(got.columns) == [
        "store_id",
        "date",
        "prediction",
        "model_name",
        "model_version",
        "segment_model",
        "batch_run_id",
        "inference_id",
        "error",
    ]
    assert (got["store_id"].to_numpy() == src["store_id"].to_numpy()).all()  # input order kept
    ms = ModelSet(sets[True])
    expected_by = np.where(src.store_id.isin(["store_000", "store_001"]), src.store_id, FALLBACK)
    assert list(got["segment_model"]) == list(expected_by)
    for model in set(expected_by):
        mask = expected_by == model
        ref = OnnxPredictor(ms._file_of(model)).predict(src[mask])
        np.testing.assert_allclose(got["prediction"].to_numpy()[mask], ref, rtol=1e-6, atol=1e-5)
    assert set(got["model_version"]) == {3} and set(got["batch_run_id"]) == {"run1"} and got["error"].isna().all()
    assert json.loads((tmp_path / "out" / CONTROL_DIR / "ledger" / f"{inp.input_id}.json").read_text())["rows"] == len(df)


def test_scorer_without_fallback_keeps_unknown_rows_with_an_error(tmp_path: Path, model_set_dir) -> None:
    sets, df = model_set_dir
    f = tmp_path / "in.parquet"
    df.to_parquet(f)
    inp = list_inputs(pafs.LocalFileSystem(), [str(f)])[0]
    assert _scorer(tmp_path, sets[False], id_columns=[]).score_file(inp)["status"] == "committed"
    got = pd.read_parquet(tmp_path / "out" / inp.output_name)
    assert len(got) == len(df)  # never silently dropped
    unknown = ~got.store_id.isin(["store_000", "store_001"])
    assert got.loc[unknown, "prediction"].isna().all() and got.loc[unknown, "segment_model"].isna().all()
    assert (
        got.loc[unknown, "error"]
        == got.loc[unknown, "store_id"].map(lambda k: f"segment {k!r} has no model and the model set has no fallback")
    ).all()
    assert got.loc[~unknown, "error"].isna().all()


def test_bad_files_fail_alone_with_a_clear_message(tmp_path: Path, model_set_dir) -> None:
    sets, df = model_set_dir
    (tmp_path / "missing.parquet").parent.mkdir(exist_ok=True)
    df.drop(columns=["price", "promo"]).to_parquet(tmp_path / "missing.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    scorer = _scorer(tmp_path, sets[True])
    fs = pafs.LocalFileSystem()
    missing = scorer.score_file(list_inputs(fs, [str(tmp_path / "missing.parquet")])[0])
    assert missing["status"] == "failed" and "missing column(s) ['price', 'promo']" in missing["error"]
    assert "missing.parquet" in missing["error"] and missing["hint"]
    corrupt = scorer.score_file(list_inputs(fs, [str(tmp_path / "corrupt.parquet")])[0])
    assert corrupt["status"] == "failed" and "cannot read parquet file" in corrupt["error"]
    out = OutputDir(str(tmp_path / "out"))
    assert out.ledger() == {}  # nothing committed, nothing left staged
    assert not any((tmp_path / "out").glob("*.parquet"))


def test_csv_input_and_an_empty_file(tmp_path: Path, model_set_dir) -> None:
    sets, df = model_set_dir
    df.head(30).to_csv(tmp_path / "a.csv", index=False)
    df.head(0).to_parquet(tmp_path / "empty.parquet")
    fs = pafs.LocalFileSystem()
    r = _scorer(tmp_path, sets[True], fmt="csv").score_file(list_inputs(fs, [str(tmp_path / "a.csv")])[0])
    assert r["status"] == "committed" and r["rows"] == 30
    e = _scorer(tmp_path, sets[True]).score_file(list_inputs(fs, [str(tmp_path / "empty.parquet")])[0])
    assert e["status"] == "committed" and e["rows"] == 0
    assert len(pd.read_parquet(tmp_path / "out" / e["output"])) == 0


def test_multiclass_output_is_the_label_and_one_probability_column_per_class(tmp_path: Path) -> None:
    frame = multiclass_frame()
    f = tmp_path / "in.parquet"
    frame.to_parquet(f)
    inp = list_inputs(pafs.LocalFileSystem(), [str(f)])[0]
    single = write_tiny_model(tmp_path / "model", task="multiclass")  # string labels
    r = _scorer(tmp_path / "a", single.path, id_columns=["date"], kind="model").score_file(inp)
    assert r["status"] == "committed", r
    got = pq.read_table(tmp_path / "a" / "out" / inp.output_name)
    assert got.column_names[:6] == ["date", "prediction", "proba_low", "proba_medium", "proba_high", "model_name"]
    assert got.schema.field("prediction").type == pa.string() and got.schema.field("proba_low").type == pa.float32()
    outputs, _ = single.predict_outputs(frame)
    out = got.to_pandas()
    assert list(out["prediction"]) == list(outputs["label"])
    probs = out[["proba_low", "proba_medium", "proba_high"]].to_numpy()
    np.testing.assert_allclose(probs, outputs["probabilities"], rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    drift = OutputDir(str(tmp_path / "a" / "out")).drift_counts([inp])[inp.path]  # the predicted-class distribution
    assert drift["prediction"]["kind"] == "categorical" and sum(drift["prediction"]["bins"]) == len(frame)

    # a model set with integer labels: int64 labels, each row routed to its segment's model (or the fallback)
    int_frame = multiclass_frame(class_labels=[0, 1, 2])
    int_frame.to_parquet(f)
    inp = list_inputs(pafs.LocalFileSystem(), [str(f)])[0]
    sets = write_tiny_model_set(tmp_path / "set", task="multiclass", class_labels=[0, 1, 2])
    r = _scorer(tmp_path / "b", sets, id_columns=[]).score_file(inp)
    assert r["status"] == "committed", r
    got = pq.read_table(tmp_path / "b" / "out" / inp.output_name)
    assert got.column_names[:5] == ["store_id", "prediction", "proba_0", "proba_1", "proba_2"]
    assert got.schema.field("prediction").type == pa.int64()
    labels, _ = ModelSet(sets).predict(int_frame)
    assert got.column("prediction").to_pylist() == labels.tolist()


def test_key_columns() -> None:
    present = ["store_id", "date", "price", "sales"]
    assert key_columns(present, ["price"], ["store_id"], None, "prediction") == ["store_id", "date", "sales"]
    assert key_columns(present, ["price"], ["store_id"], ("date",), "prediction") == ["store_id", "date"]
    assert key_columns(present + ["prediction"], ["price"], ["store_id"], None, "prediction")[-1] == "sales"
    with pytest.raises(DataValidationError, match="clash"):
        key_columns(present, ["price"], ["store_id"], ("model_name",), "prediction")
    with pytest.raises(DataValidationError, match="clash"):  # a multiclass model adds its probability columns
        key_columns(present + ["proba_a"], ["price"], ["store_id"], ("proba_a",), "prediction", ["proba_a", "proba_b"])


def test_arrow_feed_is_what_the_predictor_makes_of_the_same_rows(tmp_path: Path) -> None:
    """Batch builds the ONNX feed from Arrow (the per-row Python path it replaces cost a third of scoring a file)."""
    from rayml.batch._score import _arrow_feed

    model = write_tiny_model(tmp_path / "model")
    kinds = {t.name: t.datatype for t in model.inputs}
    assert set(kinds.values()) == {"FP32", "BYTES"}
    table = pa.Table.from_pandas(sample_frame(rows_per_segment=5), preserve_index=False).select(list(kinds))
    numbers = [c for c, k in kinds.items() if k == "FP32"]
    categories = [c for c, k in kinds.items() if k == "BYTES"]
    # missing values in both kinds, an int column, and a dictionary-encoded (pandas categorical) column
    with_nulls = {c: pa.array([None, *table.column(c).to_pylist()[1:]], type=table.schema.field(c).type) for c in kinds}
    with_nulls[numbers[0]] = pa.array([None, *range(1, table.num_rows)], type=pa.int64())
    with_nulls[categories[0]] = with_nulls[categories[0]].dictionary_encode()
    for t in (table, pa.table(with_nulls), table.schema.empty_table()):
        got = _arrow_feed(t, kinds)
        df = t.to_pandas()
        expected = model.predictor().feed({c: df[c] for c in df.columns})
        assert got is not None and list(got) == list(expected)
        for name, values in expected.items():
            assert got[name].dtype == values.dtype, name
            if values.dtype == object:
                assert got[name].tolist() == values.tolist(), name
            else:
                np.testing.assert_array_equal(got[name], values, err_msg=name)  # NaN where NaN
    # other types (integer categories, text where a number belongs) go through the predictor's own conversion
    assert _arrow_feed(pa.table({categories[0]: [1, 2]}), {categories[0]: "BYTES"}) is None
    assert _arrow_feed(pa.table({numbers[0]: ["1.5", "x"]}), {numbers[0]: "FP32"}) is None


# --- inference ids and capture -----------------------------------------------------------------------------------------
def test_scorer_captures_each_committed_file_under_one_name_and_a_rescore_replaces_it(tmp_path: Path, model_set_dir) -> None:
    sets, df = model_set_dir
    f = tmp_path / "in.parquet"
    df.to_parquet(f)
    inp = list_inputs(pafs.LocalFileSystem(), [str(f)])[0]
    dest = tmp_path / "captures"
    capture = BatchCapture.of(str(dest), ModelDir.read(sets[False]), "sales-stores", 3, "prediction")
    scorer = _scorer(tmp_path, sets[False], id_columns=[], capture=capture)
    r = scorer.score_file(inp)
    got = pd.read_parquet(tmp_path / "out" / inp.output_name)
    ids = got["inference_id"]
    assert ids.is_unique and ids.str.fullmatch(r"b-[0-9a-f]{16}-\d+").all() and ids.iloc[0].endswith("-0")
    known = got.store_id.isin(["store_000", "store_001"])  # the others have no model: not predictions, not captured
    assert r["status"] == "committed" and r["captured"] == known.sum() and r["capture_error"] == ""
    (path,) = dest.glob("captures/model=sales-stores/version=3/hour=*/batch-*.parquet")
    cap = pq.read_table(path)
    assert cap.schema == CAPTURE_SCHEMA
    cap = cap.to_pandas()
    assert list(cap["inference_id"]) == list(ids[known]) and list(cap["segment"]) == list(got.store_id[known])
    assert set(cap["route"]) == {"batch"} and set(cap["row"]) == {0} and cap["inputs"].isna().all()
    np.testing.assert_allclose(cap["prediction"], got.loc[known, "prediction"], rtol=1e-6)
    assert cap["predicted_label"].isna().all() and cap["probabilities"].isna().all()  # regression

    # scored again (a rerun of an uncommitted file, or --overwrite): the same ids, the capture replaced, not added
    again = _scorer(tmp_path, sets[False], id_columns=[], capture=capture)
    assert again.score_file(inp)["captured"] == known.sum()
    assert list(pd.read_parquet(tmp_path / "out" / inp.output_name)["inference_id"]) == list(ids)
    assert len(list(dest.glob("captures/**/*.parquet"))) == 1
    record = OutputDir(str(tmp_path / "out")).capture_record(inp)
    assert record is not None and Path(record["path"]).is_file()

    # a destination that cannot be written: the file still commits, and the failure is reported
    (tmp_path / "not-a-dir").write_text("x")
    broken = BatchCapture.of(str(tmp_path / "not-a-dir"), ModelDir.read(sets[False]), "sales-stores", 3, "prediction")
    r = _scorer(tmp_path / "b", sets[False], id_columns=[], capture=broken).score_file(inp)
    assert r["status"] == "committed" and r["captured"] == -1 and r["capture_error"]
    assert OutputDir(str(tmp_path / "b" / "out")).ledger()[inp.path].rows == len(df)


def test_capture_rows_of_classifiers() -> None:
    ts = dt.datetime(2024, 5, 1, 13, 30, tzinfo=dt.timezone.utc)
    binary = BatchCapture("d", "m", 2, "binary", ("no", "yes"), (), "prediction", ())
    out = pa.table(
        {
            "inference_id": ["a", "b", "c"],
            "prediction": pa.array([0.2, 0.7, float("nan")], pa.float32()),
            "error": [None, None, "segment 'x' has no model"],
        }
    )
    rows = binary.rows(out, ts).to_pylist()
    assert [(r["inference_id"], r["predicted_label"]) for r in rows] == [("a", "no"), ("b", "yes")]
    assert rows[1]["prediction"] == pytest.approx(0.7) and rows[0]["ts"] == ts and rows[0]["segment"] is None
    multi = BatchCapture("d", "m", 2, "multiclass", (0, 1, 2), ("store_id",), "label", ("proba_0", "proba_1", "proba_2"))
    out = pa.table(
        {
            "inference_id": ["a", "b"],
            "store_id": ["s1", "s2"],
            "label": pa.array([2, 0], pa.int64()),
            "proba_0": pa.array([0.1, 0.8], pa.float32()),
            "proba_1": pa.array([0.2, 0.1], pa.float32()),
            "proba_2": pa.array([0.7, 0.1], pa.float32()),
            "error": pa.nulls(2, pa.string()),
        }
    )
    rows = multi.rows(out, ts).to_pylist()
    assert [r["predicted_label"] for r in rows] == [class_text(2), class_text(0)] == ["2", "0"]
    assert [r["segment"] for r in rows] == ["s1", "s2"] and rows[0]["prediction"] is None
    np.testing.assert_allclose(rows[0]["probabilities"], [0.1, 0.2, 0.7], rtol=1e-6)
    assert multi.rows(out.slice(0, 0), ts).num_rows == 0
