"""`rayml manymodels train`."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, err_console, load
from rayml.cli._output import print_limited, start_output
from rayml.cli._progress import Bar
from rayml.config import ManyModelsJobConfig

FAILED_SHOWN = 10

app = typer.Typer(
    help="Many models: one model per segment, trained in parallel, registered as one model set.", no_args_is_help=True
)


@app.command("train")
def train(config: ConfigOpt = None, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Train one model per segment of `data.segment` in parallel Ray tasks and register them as ONE model set.

    Segments with fewer than `manymodels.min_rows` rows are served by a global fallback model trained on all rows.
    A failing segment is retried (`manymodels.max_retries`) and reported; the command exits 1 (and registers
    nothing) only when more than `manymodels.max_failed_share` of the segments failed. If the driver crashes, run
    the same command again: segments that already trained are reused.
    """
    from rayml.manymodels import train_model_set

    cfg = load(ManyModelsJobConfig, config, set_)
    log = start_output("manymodels-train", verbose)
    with Bar("segments") as bar:
        result = train_model_set(cfg, progress=lambda done, total: bar.update(done, total))
    if result.already_done:
        console.print(f"Run {result.run_name} already finished; nothing to train again.")
    elif result.reused:
        console.print(f"Run {result.run_name} resumed: {result.reused} segment model(s) reused from the interrupted attempt.")
    rows: list[list[Any]] = [
        ["segments", result.segments],
        ["trained (own model)", result.trained],
        ["fell back (fewer than min_rows rows)", result.fell_back],
        ["failed (after retries)", f"{len(result.failed)} ({result.failed_share:.1%}; allowed {result.max_failed_share:.1%})"],
    ]
    m = result.metrics
    for key, label in (
        ("median_segment_val_rmse", "median val_rmse, segment models"),
        ("median_global_val_rmse", "median val_rmse, global model, same rows"),
        ("median_segment_val_logloss", "median val_logloss, segment models"),
        ("median_global_val_logloss", "median val_logloss, global model, same rows"),
        ("segments_beating_global_share", "segments where their own model beats the global one"),
    ):
        if key in m:
            rows.append([label, f"{m[key]:.1%}" if key.endswith("share") else f"{m[key]:.4g}"])
    if not result.already_done:
        rows.append(["training wall time", f"{result.train_wall_s:.1f}s ({result.models_per_min:.0f} models/min)"])
    summary = Table(title=f"Model set {result.name} (run {result.run_name})", title_justify="left", show_header=False)
    for label, value in rows:
        summary.add_row(label, str(value))
    console.print(summary)
    where = f"all of them in {log}" if log else "all of them in the log above"
    failed = [f"failed segment {key!r}: {error}" for key, error in sorted(result.failed.items())]
    print_limited(failed, FAILED_SHOWN, where, out=err_console)
    if not result.ok:
        err_console.print(
            f"[bold red]failed:[/] {len(result.failed)} of {result.segments} segments failed, more than "
            f"manymodels.max_failed_share={result.max_failed_share}; nothing was registered (models in {result.model_dir})"
        )
        err_console.print("[yellow]Hint:[/] fix the failing segments' data, or raise manymodels.max_failed_share")
        raise typer.Exit(1)
    if result.model_version:
        v = result.model_version
        console.print(
            f"Registered model set: {v.name} version {v.version}" + (f" (aliases: {', '.join(v.aliases)})" if v.aliases else "")
        )
        source = cfg.data.source
        if source == "synthetic":  # no files to score yet: make some with the same generator
            n = cfg.data.synthetic.segments
            console.print(f"Next: rayml data generate --out data/sales --segments {n} --rows-per-segment 100 --files 4")
            source = "data/sales"
        console.print(
            f"Next: rayml batch --model {v.name}:{v.version} --input {source} --output out/{v.name}-v{v.version}   |   "
            f"rayml models alias {v.name} {v.version} production"
        )
    else:
        console.print(f"Model set written to {result.model_dir} (registry.register_version is false)")
