"""Closing the loop on the shared Ray: captured predictions of real scikit-learn models (two versions each, one
primary and one shadow) joined to their labels on Ray Data; the metrics equal scikit-learn's, the counts add up, a
version worse than its offline metric is a `gap`; and the CLI: `rayml labels upload` (all or nothing) and
`rayml monitor quality` (exit 2 on a gap, with a report)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from rayml.cli.main import app
from rayml.errors import ModelNotFoundError
from rayml.feedback import CAPTURE_SCHEMA, list_files, quality_report, validate_labels, write_labels
from rayml.feedback._store import capture_dir, hour_partition, write_table

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
WEAK = ["mean fractal dimension"]  # on its own, a poor predictor of the diagnosis


@pytest.fixture(scope="module")
def cancer():
    """Breast cancer: a good model (all features) and a weak one (one feature), scored on rows neither saw."""
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x_train, x_live, y_train, y_live = train_test_split(x, y, test_size=0.5, random_state=0, stratify=y)
    good = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x_train, y_train)
    weak = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_train[WEAK], y_train)
    return {
        "x_train": x_train,
        "y_train": y_train,
        "y": y_live.to_numpy(),
        "good": good,
        "p_good": good.predict_proba(x_live)[:, 1],
        "p_weak": weak.predict_proba(x_live[WEAK])[:, 1],
        "auc_good_train": roc_auc_score(y_train, good.predict_proba(x_train)[:, 1]),
    }


def _capture(dest: str, model: str, version: int, route: str, ids: list[str], ts: dt.datetime, **outputs) -> None:
    n = len(ids)
    columns = {
        "inference_id": ids,
        "row": pa.array([0] * n, pa.int32()),
        "ts": pa.array([ts] * n, pa.timestamp("ms", tz="UTC")),
        "model": [model] * n,
        "version": [version] * n,
        "route": [route] * n,
        "segment": [None] * n,
        "prediction": outputs.get("prediction", [None] * n),
        "predicted_label": outputs.get("predicted_label", [None] * n),
        "probabilities": pa.array(outputs.get("probabilities", [None] * n), pa.list_(pa.float64())),
        "inputs": ["{}"] * n,  # never read by the join
    }
    write_table(capture_dir(dest, model, version, hour_partition(ts)), pa.table(columns, schema=CAPTURE_SCHEMA))


def _label(dest: str, model: str, entries: list[dict], task: str, classes: list, at: dt.datetime) -> None:
    batch = validate_labels(entries, model, task, classes, "upload", at)
    assert batch.problem_count == 0, batch.problems
    write_labels(dest, model, batch.table)


def _binary_captures(dest: str, cancer: dict, model: str = "cancer") -> tuple[list[str], np.ndarray]:
    """v1 answers every live row (primary), v2 mirrors them (shadow); ~80% get a label an hour later."""
    y = cancer["y"]
    ids = [f"req-{i}" for i in range(len(y))]
    made = NOW - dt.timedelta(hours=2)
    _capture(dest, model, 1, "primary", ids, made, prediction=cancer["p_good"].tolist())
    _capture(dest, model, 2, "shadow", ids, made, prediction=cancer["p_weak"].tolist())
    labelled = np.random.default_rng(0).random(len(y)) < 0.8
    entries = [{"inference_id": ids[i], "label": int(y[i])} for i in np.flatnonzero(labelled)]
    _label(dest, model, entries, "binary", [0, 1], made + dt.timedelta(hours=1))
    return ids, labelled


def test_quality_joins_every_version_and_a_worse_one_is_a_gap(ray_session, cancer: dict, tmp_path: Path) -> None:
    dest = str(tmp_path)
    y = cancer["y"]
    ids, labelled = _binary_captures(dest, cancer)
    # older predictions (outside --since), labelled too: those labels are matched, not unknown
    old = NOW - dt.timedelta(days=3)
    _capture(dest, "cancer", 1, "primary", ["old-1", "old-2"], old, prediction=[0.9, 0.1])
    _label(dest, "cancer", [{"inference_id": "old-1", "label": 1}, {"inference_id": "old-2", "label": 0}], "binary", [0, 1], old)
    # labels nobody asked for, and a later, different label for a labelled row (the first one stays)
    first = ids[int(np.flatnonzero(labelled)[0])]
    _label(dest, "cancer", [{"inference_id": f"ghost-{i}", "label": 1} for i in range(5)], "binary", [0, 1], NOW)
    _label(dest, "cancer", [{"inference_id": first, "label": 1 - int(y[ids.index(first)])}], "binary", [0, 1], NOW)

    offline = {1: {"val_auc": cancer["auc_good_train"]}, 2: {"val_auc": cancer["auc_good_train"]}}
    report = quality_report(
        dest, "cancer", task="binary", class_labels=[0, 1], offline_metrics=offline, since=NOW - dt.timedelta(days=1)
    )
    v1, v2 = report["versions"]
    n, n_lab = len(y), int(labelled.sum())
    assert (report["captured_rows"], report["labelled_rows"], report["unlabelled_rows"]) == (2 * n, 2 * n_lab, 2 * (n - n_lab))
    assert report["labels"] == {"stored": n_lab + 2 + 5, "matched": n_lab + 2, "unknown": 5}
    for v, p, route in ((v1, cancer["p_good"], "primary"), (v2, cancer["p_weak"], "shadow")):
        yl, pl = y[labelled], p[labelled]
        m = v["metrics"]
        assert m["auc"]["value"] == pytest.approx(roc_auc_score(yl, pl))
        assert m["accuracy"]["value"] == pytest.approx(accuracy_score(yl, pl > 0.5))
        assert m["logloss"]["value"] == pytest.approx(log_loss(yl, np.clip(pl, 1e-7, 1 - 1e-7)))
        for name, metric in m.items():
            assert metric["low"] <= metric["value"] <= metric["high"], name
        assert v["routes"] == {route: {"captured": n, "labelled": n_lab}}
        assert v["coverage"] == pytest.approx(n_lab / n)
        assert v["label_delay_s"]["median"] == pytest.approx(3600.0)
    assert v1["status"] == "ok" and v1["gap"] < 0.1
    assert v2["status"] == "gap" and v2["gap_favourable"] > 0.1 and report["status"] == "gap" and report["gap_versions"] == [2]
    assert "even the favourable end of its interval" in v2["reason"]

    few = quality_report(dest, "cancer", task="binary", offline_metrics=offline, min_labels=10_000)
    assert {v["status"] for v in few["versions"]} == {"insufficient_labels"} and few["status"] == "insufficient_labels"
    assert few["captured_rows"] == 2 * n + 2  # without --since, the old predictions count


def test_multiclass_quality_equals_sklearn(ray_session, tmp_path: Path) -> None:
    x, y = load_wine(return_X_y=True, as_frame=True)
    names = np.array(["barolo", "grignolino", "barbera"])
    x_train, x_live, y_train, y_live = train_test_split(x, names[y], test_size=0.5, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x_train, y_train)
    classes = list(model.classes_)
    proba = model.predict_proba(x_live)
    pred = model.predict(x_live)
    ids = [f"w{i}" for i in range(len(pred))]
    dest = str(tmp_path)
    _capture(dest, "wine", 4, "primary", ids, NOW, predicted_label=pred.tolist(), probabilities=proba.tolist())
    unlabelled = quality_report(dest, "wine", task="multiclass", class_labels=classes, offline_metrics={})
    assert unlabelled["labels"] == {"stored": 0, "matched": 0, "unknown": 0} and unlabelled["labelled_rows"] == 0
    assert unlabelled["versions"][0]["status"] == "insufficient_labels" and unlabelled["versions"][0]["coverage"] == 0.0
    _label(dest, "wine", [{"inference_id": i, "label": t} for i, t in zip(ids, y_live, strict=True)], "multiclass", classes, NOW)
    report = quality_report(dest, "wine", task="multiclass", class_labels=classes, offline_metrics={}, min_labels=10)
    (v,) = report["versions"]
    m = v["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y_live, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y_live, pred, average="macro"))
    assert m["logloss"]["value"] == pytest.approx(log_loss(y_live, proba, labels=classes))
    assert v["status"] == "ok" and v["offline_primary"] is None and v["coverage"] == 1.0


def _register(registry, cancer: dict, name: str, metrics: dict[str, float]):
    """Register the good scikit-learn model (converted to ONNX) with the given offline validation metrics."""
    from rayml._private.lineage import lineage_tags
    from rayml.models.importers import prepare

    sample = cancer["x_train"].head(50).assign(y=cancer["y_train"].head(50))
    converted = prepare(cancer["good"], sample=sample, target="y")
    converted.meta["metrics"] = metrics
    out = converted.write()
    run_id = registry.create_run("tests", name)
    return registry.register(name, out.path, run_id, lineage_tags("test", run_id))


def test_labels_upload_and_monitor_quality_cli(ray_session, registry, cancer: dict, tmp_path: Path) -> None:
    auc = cancer["auc_good_train"]
    _register(registry, cancer, "cancer", {"val_auc": auc, "val_accuracy": 0.97})
    _register(registry, cancer, "cancer", {"val_auc": auc})  # v2: as good offline, weak live (its shadow answers)
    dest = str(tmp_path / "captures")
    y = cancer["y"]
    ids = [f"req-{i}" for i in range(len(y))]
    _capture(dest, "cancer", 1, "primary", ids, NOW - dt.timedelta(minutes=5), prediction=cancer["p_good"].tolist())
    _capture(dest, "cancer", 2, "shadow", ids, NOW - dt.timedelta(minutes=5), prediction=cancer["p_weak"].tolist())
    common = ["--destination", dest, "--set", f"registry.tracking_uri={registry.tracking_uri}"]
    runner = CliRunner()

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"inference_id": ids[:3], "label": ["1", "maybe", "0"]}).to_csv(bad, index=False)
    refused = runner.invoke(app, ["labels", "upload", "--model", "cancer", "--labels", str(bad), *common], terminal_width=200)
    assert refused.exit_code == 1, refused.output
    assert (
        "1 of 3 labels" in refused.output
        and "nothing was stored" in refused.output
        and "entry 1: label 'maybe'" in refused.output
    )
    assert list_files(dest, "labels", "cancer") == []

    unknown = runner.invoke(app, ["labels", "upload", "--model", "nope", "--labels", str(bad), *common])
    assert isinstance(unknown.exception, ModelNotFoundError) and "registered models: cancer" in str(unknown.exception)

    good = tmp_path / "labels.jsonl"
    rows = [{"inference_id": i, "label": int(t)} for i, t in zip(ids, y, strict=True)] + [{"inference_id": "ghost", "label": 1}]
    good.write_text("\n".join(json.dumps(r) for r in rows))
    ok = runner.invoke(app, ["labels", "upload", "--model", "cancer", "--labels", str(good), *common], terminal_width=200)
    assert ok.exit_code == 0, ok.output
    n = len(y)
    assert f"{n + 1} accepted, {n + 1} stored, {n} matched a captured prediction, 1 unknown" in ok.output
    assert "Next: rayml monitor quality --model cancer" in ok.output
    again = runner.invoke(app, ["labels", "upload", "--model", "cancer", "--labels", str(good), *common], terminal_width=200)
    assert "0 stored" in again.output and f"{n + 1} duplicate" in again.output

    out = runner.invoke(
        app,
        ["monitor", "quality", "--model", "cancer", "--since", "1h", "--report", str(tmp_path / "rep"), *common],
        terminal_width=250,
    )
    assert out.exit_code == 2, out.output
    assert "Overall: gap (gap: v2)" in out.output and "Next: inspect v2" in out.output
    report = json.loads((tmp_path / "rep" / "quality.json").read_text())
    future = runner.invoke(app, ["monitor", "quality", "--model", "cancer", "--since", "2999-01-01", *common], terminal_width=250)
    assert future.exit_code == 0 and "No predictions of cancer were captured since 2999-01-01" in future.output
    assert [v["status"] for v in report["versions"]] == ["ok", "gap"]
    assert report["versions"][0]["offline"] == {"val_auc": pytest.approx(auc), "val_accuracy": 0.97}  # from the registry
    assert (tmp_path / "rep" / "quality.html").is_file()
    assert {p.name for p in (tmp_path / "rep" / "plots").glob("*.png")} == {
        "primary_metric.png",
        "label_delay.png",
        "coverage.png",
    }
