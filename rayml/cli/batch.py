"""`rayml batch`."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, VerboseOpt, console, err_console, load
from rayml.cli._output import print_limited, start_output
from rayml.cli._progress import Bar
from rayml.config import BatchJobConfig

FAILED_SHOWN = 10

logger = logging.getLogger("rayml.cli")


def batch(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="NAME@ALIAS or NAME:VERSION (model or model set).", show_default=False)
    ] = None,
    input_: Annotated[
        str | None, typer.Option("--input", "-i", help="Parquet/CSV file, directory, glob or URI.", show_default=False)
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Output directory or URI (one parquet per input).", show_default=False)
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Start over: delete earlier outputs and the ledger (refused while another run writes OUTPUT)."
        ),
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Score files with a registered model or model set on Ray Data; exactly once per input file.

    Each input file's output is staged and committed atomically, and recorded in a ledger under
    OUTPUT/_rayml_batch/. If the job is killed, run the same command again: committed files are skipped and the rest
    are scored, with no duplicated and no missing rows. Model sets route each row to its segment's model (or the
    fallback model). One run per OUTPUT at a time: a second one exits 2 naming the first (a crashed run's lease is
    taken over RAYML_LEASE_TIMEOUT_S, default 60 s, after its last heartbeat). Exit code 1 when any input file failed
    (the others are committed).

    Every output row carries an inference_id, the same on every rerun, that ground-truth labels name. With
    --set batch.capture_destination=DIR the predictions are also captured there for `rayml monitor quality`; a file
    whose capture failed stays committed (the same command run again captures it).
    """
    from rayml.batch import run_batch

    cfg = load(BatchJobConfig, config, set_)
    log = start_output("batch", verbose)
    counts = {"rows": 0}
    with Bar("files") as bar:

        def on_file(r, done: int, total: int) -> None:
            counts["rows"] += r.rows
            bar.update(done, total, detail=f"{counts['rows']:,} rows")

        summary = run_batch(cfg, model=model, input=input_, output=output, overwrite=overwrite or None, progress=on_file)
    console.print(
        f"Scored with {summary.model_ref} (batch_run_id {summary.batch_run_id}): {summary.files} input file(s): "
        f"{summary.committed} committed, {summary.skipped} skipped (committed earlier), {len(summary.failed)} failed"
    )
    console.print(
        f"{summary.rows:,} rows in {summary.wall_s:.1f}s ({summary.rows_per_s:,.0f} rows/s, {summary.actors} actor(s))"
        + (f"; {summary.rows_skipped:,} rows were committed earlier" if summary.skipped else "")
    )
    console.print(f"Output: {summary.output}")
    if summary.drift is not None:
        d = summary.drift
        color = {"ok": "green", "warn": "yellow", "alert": "red"}.get(d["status"], "white")
        console.print(
            f"Drift vs training data: [{color}]{d['status']}[/]"
            + (f" ({', '.join(d['drifted_features'])})" if d["drifted_features"] else "")
            + f" over {d['rows']:,} rows of {d['files']} file(s); summary: {d['path']}"
        )
    if summary.capture is not None:
        console.print(
            f"Captured {summary.captured_rows:,} predictions of {summary.captured} file(s) to {summary.capture} "
            "(route batch; labels name their inference_id)"
        )
    if summary.capture_failed:
        for path, error in sorted(summary.capture_failed.items()):
            logger.info("capture failed for %s: %s", path, error)
        where = f"all of them in {log}" if log else "all of them in the log above"
        lines = [f"not captured: {path}: {error}" for path, error in sorted(summary.capture_failed.items())]
        print_limited(lines, FAILED_SHOWN, where, indent="", style="yellow", out=err_console)
        err_console.print("[yellow]Hint:[/] their outputs are committed; run the same command again to capture their predictions")
    if summary.failed:
        for path, error in sorted(summary.failed.items()):
            logger.info("failed input file %s: %s", path, error)  # the whole list, in the log file
        where = f"all of them in {log}" if log else "all of them in the log above"
        failed = [f"failed: {path}: {error}" for path, error in sorted(summary.failed.items())]
        print_limited(failed, FAILED_SHOWN, where, indent="", style="red", out=err_console)
        err_console.print(
            "[yellow]Hint:[/] fix or remove those files and run the same command again; committed files are skipped"
        )
        raise typer.Exit(1)
    console.print(
        f"Next: python -c \"import pandas as pd; print(pd.read_parquet('{summary.output}'))\"   |   "
        f"rayml monitor drift --model {summary.model_ref} --data {input_ or cfg.batch.input}"
        + (
            f"   |   rayml monitor quality --model {summary.model_name} --set quality.destination={summary.capture}"
            if summary.capture is not None
            else ""
        )
    )
