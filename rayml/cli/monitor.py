"""`rayml monitor drift` and `rayml monitor quality`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, table
from rayml.cli._output import start_output
from rayml.config import MonitorJobConfig

app = typer.Typer(help="Drift, data quality and live model quality.", no_args_is_help=True)

EXIT_DRIFT = 2
EXIT_GAP = 2


@app.command("drift")
def drift(
    model: Annotated[str, typer.Option("--model", "-m", help="NAME@ALIAS or NAME:VERSION whose training data is the reference.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Parquet/CSV file, directory, glob or URI to check.")],
    report: Annotated[Path | None, typer.Option("--report", "-r", help="Directory for drift.json, drift.html and PNGs.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Compare a dataset with a model's training data: per-feature PSI / Jensen-Shannon / L-inf, prediction drift and
    label drift (when the target column is present), plus data quality (missing, unseen, out of range).

    Exit code 2 when any feature is over its alert threshold (for pipelines), 0 otherwise.
    """
    from rayml.config import DataConfig
    from rayml.data import load_table
    from rayml.monitor import drift_of_frame, global_reference, predict_frame, write_report
    from rayml.registry import Registry

    cfg = load(MonitorJobConfig, config, set_)
    start_output("monitor-drift", verbose)
    loaded = Registry(cfg.registry.tracking_uri).load(model)
    df = load_table(DataConfig(source=data))
    reference = global_reference(loaded)
    result = drift_of_frame(reference, df, predict_frame(loaded, df), loaded.model_dir.target, cfg.drift)
    rows = []
    for name, f in sorted(result["features"].items(), key=lambda kv: kv[0]):
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in f["metrics"].items())
        q = f["quality"]
        rows.append([name, f["kind"], f["status"], metrics, f"{q['missing_share']:.1%}", q["unseen"], q["out_of_range"]])
    for extra in ("prediction", "label"):
        if extra in result:
            f = result[extra]
            rows.append(
                [f"({extra})", f["kind"], f["status"], ", ".join(f"{k}={v:.3f}" for k, v in f["metrics"].items()), "", "", ""]
            )
    console.print(
        table(
            f"Drift of {data} vs {loaded.info.ref}",
            ["column", "kind", "status", "metrics", "missing", "unseen", "out of range"],
            rows,
        )
    )
    if report:
        paths = write_report(result, reference, report, title=f"Drift: {data} vs {loaded.info.ref}")
        console.print(f"Report: {paths['html']}")
    console.print(
        f"Overall: {result['status']}"
        + (f" (alert: {', '.join(result['drifted_features'])})" if result["drifted_features"] else "")
    )
    if result["status"] == "alert":
        console.print(f"Next: retrain on fresh data, e.g. rayml train --config jobs/configs/train.yaml --set data.source={data}")
        raise typer.Exit(EXIT_DRIFT)
    if not report:
        console.print(f"Next: rayml monitor drift --model {model} --data {data} --report drift-report   (HTML and plots)")


@app.command("quality")
def quality(
    model: Annotated[str, typer.Option("--model", "-m", help="The served model's name (every captured version is judged).")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only predictions made since: an ISO-8601 time (UTC if no zone) or a duration such as 24h, 7d."
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", "-r", help="Directory for quality.json, quality.html and PNGs.")
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option(
            "--destination",
            "-d",
            help="Where the captures and labels are (default: quality.destination, else $RAYML_HOME/captures).",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Live model quality: join captured predictions with their ground-truth labels (on Ray) and judge each version:
    metrics with confidence intervals, label coverage and delay, and the gap to the version's offline validation metric.

    Exit code 2 when any version is worse than offline by more than quality.max_gap even at the favourable end of its
    confidence interval (for pipelines), 0 otherwise.
    """
    from rayml._private import constants
    from rayml.feedback import local_destination, parse_since, quality_report, write_quality_report
    from rayml.registry import Registry, validate_name

    cfg = load(MonitorJobConfig, config, set_)
    validate_name(model)
    start = parse_since(since) if since else None
    q = cfg.quality
    dest = local_destination(destination or q.destination or constants.default_capture_dir())
    start_output("monitor-quality", verbose)
    result = quality_report(
        dest,
        model,
        registry=Registry(cfg.registry.tracking_uri),
        since=start,
        confidence=q.confidence,
        max_gap=q.max_gap,
        min_labels=q.min_labels,
        bootstrap_samples=q.bootstrap_samples,
        bootstrap_max_rows=q.bootstrap_max_rows,
        seed=q.seed,
    )
    if not result["versions"]:
        console.print(f"No predictions of {model} were captured since {result['since']} (under {dest}).")
        console.print(f"Next: rayml monitor quality --model {model} --since 7d   (a longer window)")
        return
    primary = result["primary_metric"]
    rows = []
    for v in result["versions"]:
        delay = v["label_delay_s"]
        rows.append(
            [
                v["version"],
                v["status"],
                "\n".join(_metric_cell(k, m) for k, m in v["metrics"].items()) or "-",
                _fmt(v["offline_primary"]),
                "-" if v["gap"] is None else f"{v['gap']:+.1%}",
                f"{v['labelled']}/{v['captured']}" + ("" if v["coverage"] is None else f" ({v['coverage']:.0%})"),
                ", ".join(f"{r} {c['labelled']}/{c['captured']}" for r, c in v["routes"].items()),
                f"{_duration(delay['median'])} / {_duration(delay['p90'])}",
            ]
        )
    window = f" since {result['since']}" if result["since"] else ""
    console.print(
        table(
            f"Live quality of {model}{window} ({result['confidence']:.0%} intervals)",
            [
                "version",
                "status",
                "live metrics [interval]",
                f"offline {primary}",
                "gap",
                "labelled/captured",
                "routes",
                "delay p50 / p90",
            ],
            rows,
        )
    )
    labels = result["labels"]
    console.print(
        f"Captured rows: {result['captured_rows']} ({result['unlabelled_rows']} never labelled); stored labels: "
        f"{labels['stored']} ({labels['unknown']} unknown: no captured prediction has their id)"
    )
    for v in result["versions"]:
        if v["status"] != "ok":
            console.print(f"  v{v['version']} {v['status']}: {v['reason']}")
    if report:
        paths = write_quality_report(result, report)
        console.print(f"Report: {paths['html']}")
    console.print(
        f"Overall: {result['status']}"
        + (f" (gap: {', '.join(f'v{v}' for v in result['gap_versions'])})" if result["gap_versions"] else "")
    )
    if result["status"] == "gap":
        worst = result["gap_versions"][-1]
        console.print(
            f"Next: inspect v{worst} (rayml models show {model}:{worst}); if it serves traffic, roll it back "
            f"(rayml rollback --model {model}) or retrain on fresh labelled data"
        )
        raise typer.Exit(EXIT_GAP)
    if result["status"] == "insufficient_labels":
        console.print(
            f"Next: send more labels (rayml labels upload --model {model} --labels FILE, or POST /v2/models/{model}/labels)"
        )
    elif not report:
        console.print(f"Next: rayml monitor quality --model {model} --report quality-report   (HTML and plots)")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _metric_cell(name: str, m: dict) -> str:
    if m.get("value") is None:
        return f"{name}=n/a"
    interval = f" [{m['low']:.4g}, {m['high']:.4g}]" if m.get("low") is not None else ""
    return f"{name}={m['value']:.4g}{interval}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"
