"""`rayml monitor drift`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, load, table
from rayml.cli._output import start_output
from rayml.config import MonitorJobConfig

app = typer.Typer(help="Drift and data quality.", no_args_is_help=True)

EXIT_DRIFT = 2


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
