"""`rayml monitor drift`, `rayml monitor quality` and `rayml monitor staleness`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, table
from rayml.cli._output import start_output
from rayml.config import MonitorJobConfig

app = typer.Typer(help="Drift, data quality, live model quality and staleness.", no_args_is_help=True)

EXIT_DRIFT = 2
EXIT_GAP = 2
EXIT_STALE = 2


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


@app.command("staleness")
def staleness(
    model: Annotated[str, typer.Option("--model", "-m", help="The registered model's name.")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Labelled Parquet/CSV file, directory, glob or URI (input columns and the target); default: the newest "
            "labelled captures (staleness.max_rows of them).",
        ),
    ] = None,
    versions: Annotated[
        int | None, typer.Option("--versions", "-n", help="How many newest versions to score (default staleness.versions).")
    ] = None,
    max_degradation: Annotated[
        float | None,
        typer.Option("--max-degradation", help="Tolerated relative degradation, e.g. 0.05 (default staleness.max_degradation)."),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", "-r", help="Directory for staleness.json, .html, .png and the alert rule (.rules.yml)."),
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option(
            "--destination",
            help="Without --data: where the captures and labels are (default quality.destination, else $RAYML_HOME/captures).",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Staleness measured: score the model's newest versions on the newest labelled data, show quality against age,
    fit the degradation per day of age and derive the max age at which it reaches the tolerated degradation (the
    threshold for the RaymlModelStale alert, printed as a rule).

    Exit code 2 when the newest version is already older than that max age (time to retrain), 0 otherwise.
    """
    from rayml._private import constants
    from rayml.config import DataConfig
    from rayml.data import load_table
    from rayml.feedback import local_destination
    from rayml.monitor import labelled_captures, measure_staleness, write_staleness_report
    from rayml.registry import Registry, validate_name

    overrides = list(set_ or [])
    overrides += [f"staleness.versions={versions}"] if versions is not None else []
    overrides += [f"staleness.max_degradation={max_degradation}"] if max_degradation is not None else []
    cfg = load(MonitorJobConfig, config, overrides)
    validate_name(model)
    start_output("monitor-staleness", verbose)
    registry = Registry(cfg.registry.tracking_uri)
    if data:
        frame, source = load_table(DataConfig(source=data)), data
    else:
        dest = local_destination(destination or cfg.quality.destination or constants.default_capture_dir())
        known = registry.versions(model)  # an unknown model fails here, naming the registered ones
        target = (registry.load(known[-1].ref).model_dir.target if known else None) or "label"
        frame, source = labelled_captures(dest, model, target, max_rows=cfg.staleness.max_rows)
    s = cfg.staleness
    result = measure_staleness(registry, model, frame, versions=s.versions, max_degradation=s.max_degradation, source=source)
    metric = result.primary_metric
    rows = [
        [
            f"v{v.version}" + (" (reference)" if v.version == result.reference else ""),
            v.created.replace("T", " ").removesuffix("+00:00"),
            _duration(v.age_days * 86400.0),
            v.rows if v.skipped is None else "-",
            _fmt(v.primary),
            "-" if v.degradation is None else f"{v.degradation:+.1%}",
            v.skipped or "",
        ]
        for v in result.versions
    ]
    console.print(
        table(
            f"Staleness of {model} on {source} ({result.rows} labelled rows)",
            ["version", "created (UTC)", "age", "rows", metric, "degradation", "skipped"],
            rows,
        )
    )
    if result.degradation_per_day is not None:
        console.print(f"Trend: {metric} degrades {result.degradation_per_day:+.2%} per day of age (least squares)")
    rule = result.alert_rule()
    if result.recommended_max_age_days is not None and rule:
        console.print(
            f"Recommended max age: {result.recommended_max_age_days:.3g} days (degradation reaches "
            f"{result.max_degradation:.1%}); the newest version is {_fmt(result.newest_age_days)} days old"
        )
        console.print("RaymlModelStale with this threshold (Prometheus rule):")
        console.print(rule.rstrip(), markup=False)
    else:
        console.print(f"No max age derived: {result.reason}")
    if report:
        paths = write_staleness_report(result, report)
        console.print(f"Report: {paths['html']}" + (f"; rule file: {paths['rules']}" if "rules" in paths else ""))
    if result.stale:
        console.print(f"Stale: retrain (e.g. rayml pipeline run --config jobs/configs/pipeline.yaml --set model.name={model})")
        raise typer.Exit(EXIT_STALE)
    if not report:
        console.print(f"Next: rayml monitor staleness --model {model} --report staleness-report   (HTML, plot, rule file)")


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
