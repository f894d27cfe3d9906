"""`run_batch` on the shared local Ray: output equals a straightforward per-segment reference, unknown segments (fallback), bad
files, restart and overwrite, single models and version pinning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from rayml.batch import run_batch
from rayml.config import BatchJobConfig, DataConfig, SyntheticConfig
from rayml.data import generate_sales, infer_schema, write_dataset
from rayml.errors import ConfigError
from rayml.models import build_model, build_spec, export_onnx
from rayml.registry import KIND_MODEL_SET, KIND_TAG, ModelSetWriter, Registry

TRAINED = ["store_000", "store_001", "store_002"]
# two actors: this machine has two cores, and every extra actor is one more process to start
CFG = BatchJobConfig.model_validate({"batch": {"concurrency": 2}})


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    return generate_sales(SyntheticConfig(segments=5, rows_per_segment=60, seed=21))


def _onnx(df: pd.DataFrame, seed: int) -> bytes:
    schema = infer_schema(df, DataConfig())
    return export_onnx(build_model(build_spec(df, schema, [8], 0.0, 2), seed=seed))


def _register_set(reg: Registry, df: pd.DataFrame, tmp: Path, name: str = "stores", fallback: bool = True) -> int:
    w = ModelSetWriter(tmp / f"set-{name}-{fallback}", ["store_id"])
    for i, key in enumerate(TRAINED):
        w.add_segment(key, i, _onnx(df[df.store_id == key], seed=i), rows=60)
    meta = {"task": "regression", "target": "sales"}
    d = w.finish(_onnx(df, seed=99), serve_fallback=fallback, meta=meta, reference_stats={"global": {}, "segments": {}})
    info = reg.register(name, d, reg.create_run("rayml", "set"), {})
    reg.set_model_tag(name, KIND_TAG, KIND_MODEL_SET)
    reg.set_alias(name, info.version, "production")
    return info.version


def _reference(model_dir: Path, meta: dict, rows: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The straightforward computation: pandas groupby + one onnxruntime session per segment model."""
    preds = np.full(len(rows), np.nan)
    served = [""] * len(rows)
    feeds = [i["name"] for i in meta["inputs"]]
    for key, part in rows.groupby("store_id", sort=False):
        entry = meta["segments"].get(key)
        model = key if entry is not None and not entry["fallback"] else "__fallback__"
        path = model_dir / (entry["file"] if model == key else "fallback.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {
            c: part[c].astype(str).to_numpy(dtype=object) if part[c].dtype.kind not in "fiu" else part[c].to_numpy(np.float32)
            for c in feeds
        }
        out = sess.run(None, feed)[0]
        idx = rows.index.get_indexer(part.index)
        preds[idx] = out
        for i in idx:
            served[i] = model
    return preds, served


def test_output_equals_the_reference_row_by_row_and_a_rerun_is_a_no_op(ray_session, registry, tmp_path: Path, sales) -> None:
    version = _register_set(registry, sales, tmp_path)
    write_dataset(sales, tmp_path / "in", files=4)  # stores 3 and 4 have no model: the fallback serves them
    out = tmp_path / "out"
    seen = []
    s = run_batch(
        CFG,
        model="stores@production",
        input=str(tmp_path / "in"),
        output=str(out),
        registry=registry,
        progress=lambda r, done, total: seen.append((r.status, done, total)),
    )
    assert s.ok and (s.files, s.committed, s.skipped, s.rows) == (4, 4, 0, len(sales))
    assert seen[-1][1:] == (4, 4) and {st for st, _, _ in seen} == {"committed"}

    got = pd.read_parquet(out)
    assert len(got) == len(sales) and not got.duplicated(["store_id", "date"]).any()
    assert set(zip(got.store_id, got.date, strict=True)) == set(zip(sales.store_id, sales.date, strict=True))
    assert {"sales", "high_sales"} <= set(got.columns) and "price" not in got.columns  # ids: the non-feature columns
    merged = sales.merge(got, on=["store_id", "date"], suffixes=("", "_out"))
    loaded = registry.load(f"stores:{version}")
    ref, served = _reference(loaded.path, loaded.meta, merged)
    np.testing.assert_allclose(merged["prediction"].to_numpy(), ref, rtol=1e-5, atol=1e-4)
    assert list(merged["segment_model"]) == served
    assert set(merged.loc[merged.store_id.isin(["store_003", "store_004"]), "segment_model"]) == {"__fallback__"}
    assert set(got.model_name) == {"stores"} and set(got.model_version) == {version} and got.batch_run_id.nunique() == 1
    ids = got.set_index(["store_id", "date"])["inference_id"]  # what ground-truth labels name
    assert ids.is_unique and ids.str.fullmatch(r"b-[0-9a-f]{16}-\d+").all()
    captures = tmp_path / "captures"
    assert s.capture is None and s.captured == 0 and not captures.exists()  # no capture unless configured

    # capture turned on for the rerun: nothing is scored again, and the committed files' predictions are captured
    capture = {"batch.capture_destination": str(captures)}
    again = run_batch(
        CFG, overrides=capture, model="stores@production", input=str(tmp_path / "in"), output=str(out), registry=registry
    )
    assert (again.committed, again.skipped, again.rows, again.rows_skipped) == (0, 4, 0, len(sales))
    assert again.batch_run_id == s.batch_run_id
    assert len(pd.read_parquet(out)) == len(sales)
    assert (again.captured, again.captured_rows, again.capture_failed) == (4, len(sales), {})

    def captured() -> pd.DataFrame:
        files = sorted(captures.glob(f"captures/model=stores/version={version}/hour=*/batch-*.parquet"))
        assert len(files) == 4, files  # one per input file, never duplicated
        return pd.concat([pd.read_parquet(f) for f in files])

    cap = captured()
    assert set(cap.inference_id) == set(ids) and set(cap.route) == {"batch"} and set(cap.version) == {version}

    fresh = run_batch(
        CFG,
        overrides=capture,
        model="stores@production",
        input=str(tmp_path / "in"),
        output=str(out),
        overwrite=True,
        registry=registry,
    )
    assert (fresh.committed, fresh.skipped) == (4, 0) and fresh.batch_run_id != s.batch_run_id
    rescored = pd.read_parquet(out)
    assert len(rescored) == len(sales)
    # the same ids as the first attempt: labels posted against it still match
    pd.testing.assert_series_equal(rescored.set_index(["store_id", "date"])["inference_id"].loc[ids.index], ids)
    assert (fresh.captured, fresh.captured_rows) == (4, len(sales))  # by the scoring actors this time
    cap = captured()
    assert sorted(cap.inference_id) == sorted(ids) and set(cap.segment) == set(sales.store_id)


def test_bad_files_fail_alone_and_a_rerun_finishes_after_the_fix(ray_session, registry, tmp_path: Path, sales) -> None:
    _register_set(registry, sales, tmp_path)
    inp = tmp_path / "in"
    paths = write_dataset(sales, inp, files=4)
    good_2 = pd.read_parquet(paths[2])
    good_2.drop(columns=["temperature"]).to_parquet(paths[2])  # a missing column
    paths[3].write_bytes(b"PAR1\x00\x01 definitely not parquet")  # corrupt
    out = tmp_path / "out"
    s = run_batch(CFG, model="stores:1", input=str(inp), output=str(out), registry=registry)
    assert not s.ok and (s.committed, len(s.failed)) == (2, 2)
    assert "missing column(s) ['temperature']" in s.failed[str(paths[2])]
    assert "cannot read parquet file" in s.failed[str(paths[3])]
    assert len(pd.read_parquet(out)) == 180  # the good files (stores 0-2) are committed

    good_2.to_parquet(paths[2])
    sales[sales.store_id == "store_004"].to_parquet(paths[3])
    fixed = run_batch(CFG, model="stores:1", input=str(inp), output=str(out), registry=registry)
    assert fixed.ok and (fixed.committed, fixed.skipped) == (2, 2)
    got = pd.read_parquet(out)
    assert len(got) == len(sales) and not got.duplicated(["store_id", "date"]).any()


def test_single_model_and_the_version_is_pinned_for_the_whole_run(ray_session, registry, tmp_path: Path, sales) -> None:
    def register_single(seed: int) -> int:
        d = tmp_path / f"single-{seed}"
        d.mkdir()
        (d / "model.onnx").write_bytes(_onnx(sales, seed))
        (d / "rayml_model.json").write_text(json.dumps({"kind": "model", "task": "regression", "target": "sales"}))
        info = registry.register("global", d, registry.create_run("rayml", "g"), {})
        registry.set_alias("global", info.version, "production")
        return info.version

    register_single(1)
    paths = write_dataset(sales, tmp_path / "in", files=2)
    out = tmp_path / "out"
    only_first = tmp_path / "first"
    only_first.mkdir()
    paths[0].rename(only_first / paths[0].name)  # the first run sees one file
    s = run_batch(CFG, model="global@production", input=str(only_first), output=str(out), registry=registry)
    assert s.ok and s.model_version == 1
    paths[1].rename(only_first / paths[1].name)  # a second file arrives, and production moves to version 2
    register_single(2)
    more = run_batch(CFG, model="global@production", input=str(only_first), output=str(out), registry=registry)
    assert (more.committed, more.skipped, more.model_version) == (1, 1, 1)  # finished with the version it started with
    got = pd.read_parquet(out)
    assert set(got.model_version) == {1} and got.segment_model.isna().all() and len(got) == len(sales)
    with pytest.raises(ConfigError, match="it was started with global:1, not global:2"):
        run_batch(CFG, model="global:2", input=str(only_first), output=str(out), registry=registry)


def test_the_run_records_a_drift_summary_that_counts_every_row_once(ray_session, registry, tmp_path: Path, sales) -> None:
    from rayml.data import reference_stats
    from rayml.data.synthetic import apply_drift, parse_drift

    d = tmp_path / "with-reference"
    d.mkdir()
    from rayml.models import OnnxPredictor

    onnx = _onnx(sales, 3)
    (d / "model.onnx").write_bytes(onnx)
    (d / "rayml_model.json").write_text(json.dumps({"kind": "model", "task": "regression", "target": "sales"}))
    stats = reference_stats(sales, infer_schema(sales, DataConfig()), predictions=OnnxPredictor(onnx).predict(sales))
    (d / "reference_stats.json").write_text(json.dumps(stats))
    registry.register("withref", d, registry.create_run("rayml", "r"), {})
    inp = tmp_path / "in"
    inp.mkdir()
    sales.to_parquet(inp / "a-clean.parquet")

    clean = run_batch(CFG, model="withref:1", input=str(inp), output=str(tmp_path / "out"), registry=registry)
    assert clean.drift["status"] == "ok" and clean.drift["rows"] == len(sales) and clean.drift["files"] == 1

    (shift,) = parse_drift(["shift:price=3"])
    apply_drift(sales, shift, np.random.default_rng(0)).to_parquet(inp / "b-drifted.parquet")  # a new file arrives
    more = run_batch(CFG, model="withref:1", input=str(inp), output=str(tmp_path / "out"), registry=registry)
    assert (more.committed, more.skipped) == (1, 1)
    assert more.drift["status"] == "alert" and "price" in more.drift["drifted_features"]
    summary = json.loads(Path(more.drift["path"]).read_text())
    assert summary["files"] == 2 and summary["report"]["rows"] == 2 * len(sales)  # the earlier file once, the new one once
    assert summary["counts"]["prediction"] is not None and summary["report"]["features"]["price"]["metrics"]["psi"] > 0.25
    assert len(pd.read_parquet(tmp_path / "out")) == 2 * len(sales)  # the summary file does not disturb the output


def test_a_multiclass_model_writes_its_label_and_one_probability_column_per_class(ray_session, registry, tmp_path: Path) -> None:
    from rayml.testing import MULTICLASS_TARGET, multiclass_frame, register_tiny_model

    register_tiny_model(registry, "bands", task="multiclass")  # string labels low / medium / high
    frame = multiclass_frame()
    write_dataset(frame, tmp_path / "in", files=2)
    s = run_batch(CFG, model="bands:1", input=str(tmp_path / "in"), output=str(tmp_path / "out"), registry=registry)
    assert s.ok and s.committed == 2
    got = pd.read_parquet(tmp_path / "out")
    probas = ["proba_low", "proba_medium", "proba_high"]
    assert [c for c in got.columns if c.startswith(("prediction", "proba_"))] == ["prediction", *probas]
    assert MULTICLASS_TARGET in got.columns and len(got) == len(frame)  # ids and labels pass through
    rows = got[["store_id", "date"]].merge(frame, on=["store_id", "date"], how="left")  # each output row's input row
    outputs, _ = registry.load("bands:1").model_dir.predict_outputs(rows)
    assert list(got["prediction"]) == list(outputs["label"])
    np.testing.assert_allclose(got[probas].to_numpy(), outputs["probabilities"], rtol=1e-5)
    # the run's drift summary compares the predicted-class distribution with training's
    assert s.drift["rows"] == len(frame) and s.drift["status"] == "ok"
    assert json.loads(Path(s.drift["path"]).read_text())["report"]["prediction"]["kind"] == "categorical"
