"""Continuous training on the real local Ray and MLflow (SQLite): a gate refusal and its resume, a crash in training
and its resume, bad config/data. Serving is not up here, so the last stage promotes by alias; the rollout path is
covered by the rollout integration tests (tests/integration/test_serve_rollout.py) plus the promote-stage unit tests
with a fake serving (tests/unit/test_pipeline_state.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rayml.config import PipelineJobConfig, SyntheticConfig, load_config
from rayml.data import generate_sales
from rayml.errors import ModelNotFoundError
from rayml.pipeline import (
    DONE,
    FAILED,
    PENDING,
    STAGE_NAMES,
    PipelineState,
    ServeRelease,
    StageContext,
    _stages as stages,
    load_run,
)
from rayml.registry import Registry
from rayml.testing import sales_columns
from rayml.train import prepare_data
from tests.inprocess_cli import run_cli
from tests.quickmodels import register_quick

MODEL = "pipe-model"


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    return generate_sales(SyntheticConfig(segments=4, rows_per_segment=250, seed=3))


def _data(df: pd.DataFrame, tmp_path: Path, name: str = "new.parquet") -> Path:
    path = tmp_path / name
    df.to_parquet(path)
    return path


def _sets(tmp_path: Path, data: Path, uri: str, *extra: str) -> list[str]:
    return [
        f"data.source={data}",
        *sales_columns(),
        f"model.name={MODEL}",
        "model.hidden_sizes=[16]",
        "train.epochs=2",
        "train.batch_size=128",
        "train.learning_rate=0.01",
        "train.max_failures=0",
        f"train.storage_path={tmp_path / 'runs'}",
        f"registry.tracking_uri={uri}",
        "gate.segment_columns=[]",
        "gate.permutation_repeats=1",
        # the pipeline's gate refuses candidates trained from a dirty checkout; tests run from a working tree
        "gate.require_reproducible_lineage=false",
        f"pipeline.state_dir={tmp_path / 'pipelines'}",
        *extra,
    ]


def _production(registry: Registry) -> int | None:
    try:
        return registry.resolve(f"{MODEL}@production").version
    except ModelNotFoundError:
        return None


def _train_runs(registry: Registry) -> int:
    exp = registry.client.get_experiment_by_name("rayml")
    return len(registry.client.search_runs([exp.experiment_id])) if exp else 0


def test_crash_and_gate_failure_leave_production_and_reruns_resume_where_they_stopped(
    ray_session, registry: Registry, sales: pd.DataFrame, tmp_path: Path, monkeypatch, capsys
) -> None:
    prod = register_quick(registry, MODEL, sales, epochs=80, alias="production")  # strong: 80 full-batch steps
    sets = _sets(tmp_path, _data(sales, tmp_path), registry.tracking_uri, "gate.max_regression=0.0")
    args = ["pipeline", "run", *[a for s in sets for a in ("--set", s)]]
    cfg = load_config(PipelineJobConfig, None, sets)

    # 1. training crashes (after epoch 1's checkpoint; train.max_failures=0): exit 1, production untouched
    monkeypatch.setenv("RAYML_FAULT_INJECT", "raise@epoch=2")
    code, out = run_cli(args, monkeypatch, capsys)
    assert code == 1 and "injected failure" in out and "Next (resume): rayml pipeline run" in out, out
    state, run_dir = load_run(cfg)
    assert [s.status for s in state.stages] == [DONE, FAILED, PENDING, PENDING, PENDING, PENDING]
    assert "injected failure" in state.stage("train").error and state.stage("train").duration_s > 0
    assert state.stage("validate_data").outputs["production"] == prod.version
    assert (Path(run_dir) / "drift" / "drift.html").is_file()
    assert _production(registry) == prod.version and len(registry.versions(MODEL)) == 1

    # 2. the same command resumes training from its checkpoint; the weaker candidate fails the strict gate
    monkeypatch.delenv("RAYML_FAULT_INJECT")
    code, out = run_cli(args, monkeypatch, capsys)
    assert code == 1 and "the gate refused" in out, out
    state, _ = load_run(cfg)
    assert [s.status for s in state.stages] == [DONE, DONE, FAILED, PENDING, PENDING, PENDING]
    assert state.stage("validate_data").attempts == 1 and state.stage("train").attempts == 2
    assert state.stage("train").outputs["resumed_from_epoch"] == 1
    gate = state.stage("gate").outputs
    assert gate["passed"] is False and gate["baseline"] == prod.version and gate["regression"] > 0
    assert Path(gate["report"]).is_file()
    candidate = state.stage("train").outputs["version"]
    assert _production(registry) == prod.version  # untouched
    assert "canary" not in registry.get_version(MODEL, candidate).aliases
    versions, runs = len(registry.versions(MODEL)), _train_runs(registry)

    # 3. a looser gate: the run resumes at the gate and judges the same candidate; nothing is trained again
    # (the 2-epoch candidate does not beat ridge regression either: that check only warns now)
    code, out = run_cli([*args, "--set", "gate.max_regression=10", "--set", "gate.linear_baseline=warn"], monkeypatch, capsys)
    assert code == 0, out
    assert f"{MODEL} v{candidate} is in production" in out
    state, _ = load_run(cfg)
    assert state.status == DONE and state.stage("train").attempts == 2
    assert state.stage("gate").attempts == 2 and state.stage("gate").outputs["passed"] is True
    assert state.stage("promote").outputs["mode"] == "alias" and "not deployed" in state.stage("promote").outputs["serving"]
    assert len(registry.versions(MODEL)) == versions and _train_runs(registry) == runs
    assert _production(registry) == candidate
    assert registry.resolve(f"{MODEL}@previous").version == prod.version
    assert registry.get_version(MODEL, candidate).tags["rayml.pipeline_run"] == state.run_id
    assert all(r.duration_s is not None for r in state.stages)
    # the record-only last stage scored production and the candidate on the run's held-out data
    staleness = state.stage("staleness").outputs
    assert [v["version"] for v in staleness["versions"]] == [prod.version, candidate] and staleness["reference"] == candidate
    # both versions were scored, but they are seconds apart: too short a span for a trend per day
    assert all(v["primary"] is not None for v in staleness["versions"]) and Path(staleness["report"]).is_file()
    assert staleness["status"] == "insufficient_versions" and "span only" in staleness["reason"], staleness

    # one MLflow run for the pipeline run, with every stage attempt's duration
    run = registry.client.get_run(state.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["rayml.stage.promote"] == DONE
    assert len(registry.client.get_metric_history(state.mlflow_run_id, "gate_duration_s")) == 2
    code, out = run_cli(["pipeline", "status", *[a for s in sets for a in ("--set", s)]], monkeypatch, capsys)
    assert code == 0 and f"run {state.run_id} (done)" in out and "duration_s" in out

    # 4. a complete run does nothing again
    code, out = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "had already finished" in out and load_run(cfg)[0].stage("train").attempts == 2


def test_a_first_model_skips_the_comparisons_and_is_promoted(registry: Registry, sales: pd.DataFrame, tmp_path: Path) -> None:
    """The stages after training on a model with no production version yet (training itself is tested above)."""
    cfg = load_config(PipelineJobConfig, None, _sets(tmp_path, _data(sales, tmp_path), registry.tracking_uri))
    state = PipelineState.new(MODEL, "r1", STAGE_NAMES)
    prepared = prepare_data(cfg.data, cfg.train.seed)
    ctx = StageContext(cfg, registry, state, str(tmp_path / "run"), prepared, ServeRelease(cfg.serve_job(), registry))
    out = stages.validate_data(ctx)
    assert out["production"] is None and out["rows"] == len(sales) and "drift_status" not in out
    state.stage("train").outputs = {"version": register_quick(registry, MODEL, sales, epochs=40).version}
    state.stage("gate").outputs = stages.gate(ctx)
    assert state.stage("gate").outputs["passed"] and state.stage("gate").outputs["baseline"] is None
    assert stages.register(ctx)["alias"] == "canary" and _production(registry) is None
    out = stages.promote(ctx)
    assert out["outcome"] == "promoted" and out["mode"] == "alias" and _production(registry) == 1


def test_bad_config_and_data_exit_2_with_a_hint(
    registry: Registry, sales: pd.DataFrame, tmp_path: Path, monkeypatch, capsys
) -> None:
    prod = register_quick(registry, MODEL, sales, epochs=5, alias="production")
    data = _data(sales, tmp_path)
    base = ["pipeline", "run", "--set", f"registry.tracking_uri={registry.tracking_uri}"]
    for bad, says in [
        ("pipeline.rollout=sometimes", "pipeline.rollout"),
        ("registry.alias=production", "the pipeline moves aliases itself"),
        ("pipeline.gate_dta=x", "allowed here"),
    ]:
        code, out = run_cli([*base, "--set", bad], monkeypatch, capsys)
        assert code == 2 and says in out and "Hint:" in out, out

    # new data without a column production needs: refused before any training
    no_price = _data(sales.drop(columns=["price"]), tmp_path, "no_price.parquet")
    sets = _sets(tmp_path, no_price, registry.tracking_uri)
    code, out = run_cli(["pipeline", "run", *[a for s in sets for a in ("--set", s)]], monkeypatch, capsys)
    assert code == 2 and "missing column(s) ['price']" in out and "Hint:" in out, out
    state, _ = load_run(load_config(PipelineJobConfig, None, sets))
    assert state.stage("validate_data").status == FAILED and state.stage("train").status == PENDING
    assert _production(registry) == prod.version and len(registry.versions(MODEL)) == 1
    assert data.is_file()
