"""`rayml validate`: the validation gate."""

from __future__ import annotations

from pathlib import Path
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
    release: Annotated[
        bool,
        typer.Option(
            "--release",
            help="Judge a release, as the pipeline does: null gate options take their release defaults (against "
            "production, the candidate must come from a clean commit: gate.require_reproducible_lineage).",
        ),
    ] = False,
    report_dir: Annotated[
        Path | None, typer.Option("--report", "-r", help="Also write gate_report.json and the group plots (PNG) here.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Judge a candidate version against the baseline alias on a fixed validation set. Exit 1 when the gate fails.

    Fails when the primary metric (RMSE / AUC / macro-F1) regresses more than --max-regression, when an important
    segment slice regresses beyond its own limit, when the candidate does not beat a trivial model or a linear
    baseline (gate.linear_baseline), when it outputs NaN/inf, when one group of gate.group_columns is served much
    worse than another (gate.max_group_gap), or (--release, gate.require_reproducible_lineage) when it was trained
    from uncommitted code. Features not above noise and performance regressions (latency and throughput probed
    side by side; training time and memory from the tags) warn by default. The report (printed and logged to
    MLflow, experiment `rayml-gate`) also shows each feature's importance, noise and cost, and what changed between
    the versions.
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
    report = run_gate(
        Registry(cfg.registry.tracking_uri),
        model,
        candidate,
        df,
        cfg.gate,
        baseline_alias=baseline,
        release=release,
        report_dir=report_dir,
    )

    base = f"v{report.baseline}" if report.baseline is not None else "(none)"
    console.print(
        f"Gate for {model}: candidate v{report.candidate} vs {baseline} {base} "
        f"on {report.rows} rows (data {report.data_fingerprint})"
    )
    print_report(report)
    if report_dir is not None:
        plots = f" and {len(report.plots)} plot(s) under {report_dir / 'plots'}" if report.plots else ""
        console.print(f"Report: {report_dir / 'gate_report.json'}{plots}")
    if report.passed:
        console.print(f"[bold green]PASSED[/]  (MLflow run {report.mlflow_run_id})")
        console.print(f"Next: rayml models alias {model} {report.candidate} production")
        return
    console.print("[bold red]FAILED[/]")
    print_gate_failures(report, f"all of them in gate_report.json of MLflow run {report.mlflow_run_id}")
    raise typer.Exit(1)


def _num(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def print_report(report: Any) -> None:
    """Every section of a :class:`rayml.gate.GateReport` as tables: metrics against the baselines, slices, groups,
    feature value, performance, lineage, changes and warnings."""
    names = sorted(report.candidate_metrics)
    rows = [
        [
            n,
            _num(report.candidate_metrics[n]),
            _num(report.baseline_metrics.get(n)),
            _num(report.linear_metrics.get(n)),
            _num(report.trivial_metrics.get(n)),
        ]
        for n in names
    ]
    linear = report.linear.get("kind", "linear")
    console.print(table("Metrics", ["metric", "candidate", "baseline", f"linear ({linear})", "trivial"], rows))
    if report.slices:
        worst = sorted(report.slices, key=lambda s: -s.get("regression", 0))
        srows = [
            [s["segment"], s["rows"], _num(s["candidate"]), _num(s.get("baseline")), f"{s.get('regression', 0):+.1%}"]
            for s in worst[:SLICES_SHOWN]
        ]
        shown = f"worst {SLICES_SHOWN} of {len(worst)}" if len(worst) > SLICES_SHOWN else "worst first"
        console.print(
            table(f"Slices ({report.primary_metric}; {shown})", ["segment", "rows", "candidate", "baseline", "regression"], srows)
        )
    for g in report.groups:
        gap = "n/a (fewer than 2 groups judged)" if g["gap"] is None else f"{g['gap']:.1%}, {g['worst']!r} vs {g['best']!r}"
        grows = [
            [x["group"], x["rows"], _num(x["candidate"]), _num(x.get("baseline")), "yes" if x["judged"] else "no (too few rows)"]
            for x in g["groups"][:GROUPS_SHOWN]
        ]
        title = f"Groups by {g['column']} ({g['metric']}; gap {gap})"
        console.print(table(title, ["group", "rows", "candidate", "baseline", "judged"], grows))
    _print_feature_value(report)
    _print_performance(report.performance)
    lineage = report.lineage
    if lineage:
        state = "reproducible" if lineage.get("reproducible") else "NOT reproducible"
        required = "required" if lineage.get("required") else "not required (--release or gate.require_reproducible_lineage)"
        console.print(f"lineage: commit {lineage.get('git_commit')} ({state}; {required})", markup=False)
    for key, change in report.changes.items():
        console.print(f"changed {key}: {change}", markup=False)
    if report.warnings:
        console.print(f"[yellow]{len(report.warnings)} warning(s)[/] (not failures):")
        more = "all of them in gate_report.json (--report DIR, or the MLflow run)"
        print_limited([f"- {w}" for w in report.warnings], WARNINGS_SHOWN, more, style="yellow")


def _print_feature_value(report: Any) -> None:
    rows = []
    for r in report.feature_value[:FEATURES_SHOWN]:
        verdict = {True: "yes", False: "NO", None: "?"}[r["above_noise"]]
        cost = "-" if "size_share" not in r else f"{r['size_share']:.1%}"
        ops = "-" if "nodes" not in r else str(int(r["nodes"]))
        rows.append([r["feature"], _num(r["importance"]), _num(r["stderr"]), verdict, cost, ops])
    more = f"; top {FEATURES_SHOWN} of {len(report.feature_value)}" if len(report.feature_value) > FEATURES_SHOWN else ""
    title = f"Feature value ({report.primary_metric} lost when shuffled, ± its standard error; cost in the ONNX graph{more})"
    console.print(table(title, ["feature", "importance", "std err", "above noise", "model size", "own ops"], rows))


def _print_performance(perf: dict[str, Any]) -> None:
    if not perf:
        return
    cand, base, regression = perf.get("candidate", {}), perf.get("baseline", {}), perf.get("regression", {})
    rows = [
        [
            figure,
            _num(cand.get(figure)),
            _num(base.get(figure)),
            "-" if figure not in regression else f"{regression[figure]:+.0%}",
            f"{limit:.0%}",
        ]
        for figure, limit in perf.get("limits", {}).items()
        if figure in cand or figure in base
    ]
    title = "Performance (latency and throughput probed here, side by side; + = worse)"
    console.print(table(title, ["figure", "candidate", "baseline", "regression", "limit"], rows))


SLICES_SHOWN = 10
GROUPS_SHOWN = 20
FEATURES_SHOWN = 15
WARNINGS_SHOWN = 10
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
