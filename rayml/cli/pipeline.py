"""`rayml pipeline run | status`: continuous training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from rayml._private.logs import redact_override
from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, setup_logging, table
from rayml.cli._output import start_output
from rayml.config import PipelineJobConfig

app = typer.Typer(
    help="Continuous training: validate new data -> train or tune -> gate -> register -> roll out or promote; "
    "resumable at the stage that failed.",
    no_args_is_help=True,
)


def _flags(config: Path | None, set_: list[str] | None) -> str:
    parts = [f"--config {config}"] if config else []
    parts += [f"--set {redact_override(s)}" for s in set_ or []]  # a key given with --set is not printed back
    return (" " + " ".join(parts)) if parts else ""


def _summary(name: str, out: dict[str, Any]) -> str:
    if not out:
        return ""
    if name == "validate_data":
        prod = f"vs production v{out['production']}" if out.get("production") else "no production model yet"
        drift = f", drift {out['drift_status']}" if out.get("drift_status") else ""
        alert = f" ({', '.join(out['drifted_features'])})" if out.get("drifted_features") else ""
        return f"{out.get('rows')} rows, data {out.get('data_fingerprint')}, {prod}{drift}{alert}"
    if name == "train":
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted((out.get("metrics") or {}).items()) if v is not None)
        return f"{out.get('ref')} {metrics}".strip()
    if name == "gate":
        verdict = "passed" if out.get("passed") else "FAILED"
        reg = out.get("regression")
        vs = f" vs v{out['baseline']}, regression {reg:+.1%} (max {out['max_regression']:.1%})" if reg is not None else ""
        value = out.get("candidate_metric")
        return f"{verdict}: {out.get('metric')} {value if value is None else format(value, '.4g')}{vs}"
    if name == "register":
        return f"v{out.get('version')} -> @{out.get('alias')}"
    if name == "promote":
        how = {"rollout": "by rollout", "alias": "by alias (serving not up)", "none": ""}.get(out.get("mode", ""), "")
        return f"{out.get('outcome', '')} {how}".strip() + (f": {out['reason']}" if out.get("reason") else "")
    if name == "staleness":
        if out.get("status") == "error":
            return f"not measured: {out.get('error')}"
        per_day, max_age = out.get("degradation_per_day"), out.get("recommended_max_age_days")
        trend = f", {out.get('primary_metric')} {per_day:+.2%}/day" if per_day is not None else ""
        age = f", max age {max_age:.1f} days" if max_age is not None else ""
        return f"{out.get('status')}{trend}{age}"
    return ""


def print_state(state: Any, run_dir: str) -> None:
    rows = []
    for s in state.stages:
        dur = f"{s.duration_s:.1f}" if s.duration_s is not None else ""
        started = time.strftime("%H:%M:%S", time.localtime(s.started)) if s.started else ""
        rows.append([s.name, s.status, started, dur, s.attempts, _summary(s.name, s.outputs), (s.error or "")[:160]])
    console.print(
        table(
            f"Pipeline {state.pipeline} run {state.run_id} ({state.status})",
            ["stage", "status", "started", "duration_s", "attempts", "outputs", "error"],
            rows,
        )
    )
    console.print(f"State: {run_dir}/state.json; MLflow run {state.mlflow_run_id}")


@app.command("run")
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Run every stage again instead of resuming at the first unfinished one.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Validate new data against production, train or tune a candidate, gate it against production, register it,
    then roll it out through serving when that is up (else move `production` to it).

    Every stage is recorded with its duration in $RAYML_HOME/pipelines/<name>/<run-id>/state.json and in MLflow.
    A failure anywhere leaves production untouched; run the same command again to resume at the failed stage
    (finished stages, e.g. training, are not run again). Exit 0 promoted, 1 a stage failed, 2 bad config or data.
    """
    from rayml.errors import RaymlError
    from rayml.pipeline import load_run, run_pipeline

    cfg = load(PipelineJobConfig, config, set_)
    start_output("pipeline-run", verbose)
    flags = _flags(config, set_)
    started = time.time()
    try:
        result = run_pipeline(cfg, restart=restart)
    except RaymlError:
        state, run_dir = load_run(cfg)
        if state is not None and state.updated >= started:  # not an older run's table when this one never started
            print_state(state, run_dir)
            console.print(f"Stage {state.next_stage} failed; production is unchanged. Next (resume): rayml pipeline run{flags}")
        raise
    state = result.state
    print_state(state, result.run_dir)
    if result.resumed_at is None:
        console.print("This run had already finished; nothing ran again (--restart runs it again).")
    promote = state.stage("promote").outputs
    model = cfg.model.name
    if promote.get("outcome") == "awaiting_promotion":
        console.print(f"{model} v{result.version} is at @canary. Next: rayml models alias {model} {result.version} production")
    else:
        console.print(f"{model} v{result.version} is in production. Next: rayml models show {model}")


@app.command("status")
def status(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="A run id (default: the most recent run).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Show the stages of the pipeline's most recent run (or --run-id): status, duration, attempts, outputs, errors."""
    from rayml.pipeline import list_runs, load_run

    setup_logging(verbose)
    cfg = load(PipelineJobConfig, config, set_)
    state, run_dir = load_run(cfg, run_id)
    if state is None:
        console.print(f"No run of pipeline {cfg.pipeline_name} recorded. Next: rayml pipeline run{_flags(config, set_)}")
        raise typer.Exit(1)
    print_state(state, run_dir)
    others = [r for r in list_runs(cfg) if r.run_id != state.run_id][:5]
    if others:
        rows = [[r.run_id, r.status, time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated))] for r in others]
        console.print(table("Other runs", ["run id", "status", "updated"], rows))
    if state.next_stage:
        console.print(f"Next (resume at {state.next_stage}): rayml pipeline run{_flags(config, set_)}")
