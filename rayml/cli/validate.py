"""`rayml validate`: the validation gate."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, table
from rayml.cli._output import print_limited, start_output
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

    overrides = list(set_ or []) + ([f"gate.max_regression={max_regression}"] if max_regression is not None else [])
    cfg = load(GateJobConfig, config, overrides)
    validate_name(model)
    validate_name(baseline, "alias")
    start_output("validate", verbose)
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
        worst = sorted(report.slices, key=lambda s: -s.get("regression", 0))
        srows = [
            [
                s["segment"],
                s["rows"],
                f"{s['candidate']:.4g}",
                f"{s.get('baseline', float('nan')):.4g}",
                f"{s.get('regression', 0):+.1%}",
            ]
            for s in worst[:SLICES_SHOWN]
        ]
        shown = f"worst {SLICES_SHOWN} of {len(worst)}" if len(worst) > SLICES_SHOWN else "worst first"
        console.print(
            table(
                f"Slices ({report.primary_metric}; {shown})", ["segment", "rows", "candidate", "baseline", "regression"], srows
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
    print_gate_failures(report, f"all of them in gate_report.json of MLflow run {report.mlflow_run_id}")
    raise typer.Exit(1)


SLICES_SHOWN = 10
FAILED_SEGMENTS_SHOWN = 3


def print_gate_failures(report: Any, more: str, indent: str = "  ") -> None:
    """The gate's failures: every model-level one, then the worst few failing segments and how many others failed.

    Args:
        report: the :class:`rayml.gate.GateReport`.
        more: where all of them can be read (a file, an MLflow run).
        indent: prefix of every line.
    """
    regression = {f"segment {s['segment']!r}:": s.get("regression", 0.0) for s in report.slices}
    segments = [f for f in report.failures if f.startswith("segment ")]
    overall = [f for f in report.failures if f not in segments]
    segments.sort(key=lambda f: -regression.get(f[: f.find(":") + 1], 0.0))
    print_limited([f"- {f}" for f in overall], len(overall), more, indent=indent)
    if segments:
        print_limited([f"- {f}" for f in segments], FAILED_SEGMENTS_SHOWN, more, indent=indent)
