"""`rayml validate` (the gate) and `rayml monitor drift` against real registered models (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rayml.cli.main import app
from rayml.config import DriftSpec, GateConfig, SyntheticConfig
from rayml.data import generate_sales
from rayml.data.synthetic import apply_drift
from rayml.gate import _slices, relative_regression, run_gate
from rayml.registry import Registry
from tests.quickmodels import register_quick


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    return generate_sales(SyntheticConfig(segments=6, rows_per_segment=200, seed=2))


def _holdout(df: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "holdout.parquet"
    df.to_parquet(path)
    return path


def test_gate_passes_a_good_candidate_and_explains(registry: Registry, sales: pd.DataFrame, tmp_path: Path) -> None:
    register_quick(registry, "m", sales, epochs=60, alias="production")
    cand = register_quick(registry, "m", sales.iloc[: len(sales) - 10], epochs=80, seed=1)
    cfg = GateConfig(max_regression=0.10, group_columns=["region"], max_group_gap=1.0)
    report = run_gate(registry, "m", cand.version, sales, cfg, report_dir=tmp_path / "gate")
    assert report.passed, report.failures
    assert report.baseline == 1 and report.primary_metric == "rmse"
    assert report.candidate_metrics["rmse"] < report.trivial_metrics["rmse"]
    # a trained MLP beats ridge regression cross-fitted on the same rows by far
    assert report.candidate_metrics["rmse"] < 0.8 * report.linear_metrics["rmse"] < report.trivial_metrics["rmse"]
    assert report.linear == {
        "kind": "ridge regression",
        "rows": len(sales),
        "folds": 5,
        "regression": pytest.approx(report.candidate_metrics["rmse"] / report.linear_metrics["rmse"] - 1),
    }
    (groups,) = report.groups
    assert groups["column"] == "region" and sum(g["rows"] for g in groups["groups"]) == len(sales)
    assert {r["feature"] for r in report.feature_value} == set(report.feature_importance)
    assert all(r["stderr"] > 0 and "size_share" in r for r in report.feature_value)
    perf = report.performance  # probed side by side; training figures only when the versions were tagged with them
    assert perf["candidate"]["latency_ms"] > 0 and perf["baseline"]["throughput_rows_s"] > 0
    assert set(perf["regression"]) >= {"latency_ms", "throughput_rows_s"}
    assert (tmp_path / "gate" / "gate_report.json").is_file() and (tmp_path / "gate" / "plots" / "groups_region.png").is_file()
    assert [a.path for a in registry.client.list_artifacts(report.mlflow_run_id, "plots")] == ["plots/groups_region.png"]
    assert {"linear_rmse", "perf_candidate_latency_ms", "group_gap_region"} <= set(
        registry.client.get_run(report.mlflow_run_id).data.metrics
    )
    assert max(report.feature_importance, key=report.feature_importance.get) in {"price", "promo", "category", "temperature"}
    assert "data_fingerprint" in report.changes  # trained on different rows
    assert {s["segment"] for s in report.slices} == set(sales["store_id"])  # sliced by the model's segment column
    run = registry.client.get_run(report.mlflow_run_id)
    assert run.data.tags["rayml.gate_passed"] == "true"
    assert registry.get_version("m", cand.version).tags["rayml.gate"] == "passed"


def test_gate_refuses_wild_and_nan_candidates(registry: Registry, sales: pd.DataFrame, tmp_path: Path) -> None:
    register_quick(registry, "m", sales, epochs=60, alias="production")
    wild = register_quick(registry, "m", sales, epochs=60, wild=True)
    report = run_gate(registry, "m", wild.version, sales, GateConfig())
    assert not report.passed
    assert any("regressed" in f and "over --max-regression" in f for f in report.failures)
    assert any("does not beat predicting the training mean" in f for f in report.failures)
    assert registry.get_version("m", wild.version).tags["rayml.gate"] == "failed"

    nan = register_quick(registry, "m", sales, nan_output=True)
    assert any("NaN/inf" in f for f in run_gate(registry, "m", nan.version, sales, GateConfig()).failures)

    # the CLI: exit 1 on failure, 0 on success, the failure reasons printed
    data = _holdout(sales, tmp_path)
    uri = registry.tracking_uri
    failed = CliRunner().invoke(
        app,
        [
            "validate",
            "--model",
            "m",
            "--candidate",
            str(wild.version),
            "--data",
            str(data),
            "--set",
            f"registry.tracking_uri={uri}",
        ],
    )
    assert failed.exit_code == 1 and "FAILED" in failed.output and "regressed" in failed.output
    ok = CliRunner().invoke(
        app,
        [
            "validate",
            "--model",
            "m",
            "--candidate",
            "1",
            "--baseline",
            "production",
            "--data",
            str(data),
            "--max-regression",
            "0.5",
            "--report",
            str(tmp_path / "report"),
            "--set",
            f"registry.tracking_uri={uri}",
            "--set",
            "gate.group_columns=[region]",
            "--set",
            "gate.max_group_gap=1.0",
        ],
        terminal_width=200,
    )
    assert ok.exit_code == 0, ok.output
    assert "Next: rayml models alias m 1 production" in ok.output
    for section in ("linear (ridge regression)", "Groups by region", "Feature value", "Performance", "lineage: commit"):
        assert section in ok.output, section
    assert f"Report: {tmp_path / 'report' / 'gate_report.json'} and 1 plot(s)" in ok.output
    assert (tmp_path / "report" / "plots" / "groups_region.png").is_file()


def test_a_regressing_slice_fails_the_gate() -> None:
    cfg = GateConfig(min_segment_rows=2, max_segment_regression=0.1)
    df = pd.DataFrame({"store": ["a"] * 4 + ["b"] * 4})
    y = np.zeros(8)
    base = np.full(8, 1.0)
    cand = np.r_[np.full(4, 0.5), np.full(4, 1.5)]  # better on a, 50% worse on b
    slices, failures = _slices("regression", df, y, cand, base, ["store"], cfg)
    assert [s["segment"] for s in slices] == ["a", "b"]
    assert len(failures) == 1 and "segment 'b'" in failures[0] and "regressed 50.0%" in failures[0]
    only_a, none = _slices("regression", df, y, cand, base, ["store"], GateConfig(min_segment_rows=2, important_segments=["a"]))
    assert [s["segment"] for s in only_a] == ["a"] and none == []
    assert relative_regression("binary", 0.72, 0.8) == pytest.approx(0.1)  # AUC: higher is better
    assert relative_regression("regression", 9.0, 10.0) == pytest.approx(-0.1)  # RMSE: lower is better


def test_monitor_drift_cli_exit_codes_and_report(registry: Registry, tmp_path: Path) -> None:
    # thousands of rows per side: with a few hundred, sampling noise alone approaches the JS warn level
    sales = generate_sales(SyntheticConfig(segments=6, rows_per_segment=1000, seed=2))
    train, fresh = sales.iloc[::2].reset_index(drop=True), sales.iloc[1::2].reset_index(drop=True)
    register_quick(registry, "d", train, epochs=20, alias="production")
    clean_path = _holdout(fresh, tmp_path)
    rng = np.random.default_rng(0)
    drifted = apply_drift(fresh, DriftSpec(kind="shift", column="temperature", value=2.0), rng)
    drifted_path = tmp_path / "drifted.parquet"
    drifted.to_parquet(drifted_path)
    base = ["monitor", "drift", "--model", "d@production", "--set", f"registry.tracking_uri={registry.tracking_uri}"]

    clean = CliRunner().invoke(app, [*base, "--data", str(clean_path)], terminal_width=200)
    assert clean.exit_code == 0, clean.output
    assert "Overall: ok" in clean.output

    out = CliRunner().invoke(app, [*base, "--data", str(drifted_path), "--report", str(tmp_path / "rep")], terminal_width=200)
    assert out.exit_code == 2, out.output
    assert "alert: temperature" in out.output
    report = json.loads((tmp_path / "rep" / "drift.json").read_text())
    assert report["drifted_features"] == ["temperature"] and "label" in report and "prediction" in report
    assert (tmp_path / "rep" / "drift.html").is_file() and list((tmp_path / "rep" / "plots").glob("*.png"))
