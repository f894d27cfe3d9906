"""`rayml validate`: the validation gate."""

from __future__ import annotations

from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, setup_logging, table
from rayml.config import GateJobConfig


def validate(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name.")],
    candidate: Annotated[int, typer.Option("--candidate", help="Candidate version number.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Labelled validation data: parquet/CSV path, directory or URI.")],
    baseline: Annotated[str, typer.Option("--baseline", help="Alias of the version to beat.")] = "production",
    max_regression: Annotated[
        float | None, typer.Option("--max-regression", help="Allowed relative regression of the primary metric (0.02 = 2%).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Judge a candidate version against the baseline alias on a fixed validation set. Exit 1 when the gate fails.

    Fails when the primary metric (RMSE / AUC) regresses more than --max-regression, when an important segment slice
    regresses beyond its own limit, when the candidate does not beat a trivial model, or when it outputs NaN/inf.
    The report (printed and logged to MLflow, experiment `rayml-gate`) also shows permutation feature importance and
    what changed between the versions.
    """
    from rayml.config import DataConfig
    from rayml.data import load_table
    from rayml.gate import run_gate
    from rayml.registry import Registry, validate_name

    setup_logging(verbose)
    overrides = list(set_ or []) + ([f"gate.max_regression={max_regression}"] if max_regression is not None else [])
    cfg = load(GateJobConfig, config, overrides)
    validate_name(model)
    validate_name(baseline, "alias")
    df = load_table(DataConfig(source=data))
    report = run_gate(Registry(cfg.registry.tracking_uri), model, candidate, df, cfg.gate, baseline_alias=baseline)

    base = f"v{report.baseline}" if report.baseline is not None else "(none)"
    console.print(
        f"Gate for {model}: candidate v{report.candidate} vs {baseline} {base} "
        f"on {report.rows} rows (data {report.data_fingerprint})"
    )
    names = sorted(report.candidate_metrics)
    rows = [
        [
            n,
            f"{report.candidate_metrics[n]:.4g}",
            f"{report.baseline_metrics.get(n, float('nan')):.4g}",
            f"{report.trivial_metrics.get(n, float('nan')):.4g}",
        ]
        for n in names
    ]
    console.print(table("Metrics", ["metric", "candidate", "baseline", "trivial"], rows))
    if report.slices:
        srows = [
            [
                s["segment"],
                s["rows"],
                f"{s['candidate']:.4g}",
                f"{s.get('baseline', float('nan')):.4g}",
                f"{s.get('regression', 0):+.1%}",
            ]
            for s in report.slices[:20]
        ]
        console.print(
            table(
                f"Slices ({report.primary_metric}; first 20)", ["segment", "rows", "candidate", "baseline", "regression"], srows
            )
        )
    imp = [[f, f"{v:.4g}"] for f, v in list(report.feature_importance.items())[:10]]
    console.print(table(f"Permutation importance ({report.primary_metric} lost when shuffled)", ["feature", "importance"], imp))
    for key, change in report.changes.items():
        console.print(f"changed {key}: {change}")
    if report.passed:
        console.print(f"[bold green]PASSED[/]  (MLflow run {report.mlflow_run_id})")
        console.print(f"Next: rayml models alias {model} {report.candidate} production")
        return
    console.print("[bold red]FAILED[/]")
    for failure in report.failures:
        console.print(f"  - {failure}")
    raise typer.Exit(1)
