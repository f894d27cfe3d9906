"""`rayml labels upload`."""

from __future__ import annotations

from typing import Annotated

import typer

from rayml.cli._common import ConfigOpt, SetOpt, console, err_console, load
from rayml.config import LabelsJobConfig

app = typer.Typer(help="Ground-truth labels for captured predictions (the closed loop).", no_args_is_help=True)

EXIT_REFUSED = 1


@app.command("upload")
def upload(
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="The served model's name (its newest version's task and classes check the labels)."),
    ],
    labels: Annotated[
        str,
        typer.Option(
            "--labels", "-l", help="CSV, Parquet, JSON (list of objects) or JSONL file (path or URI): inference_id, label[, row]."
        ),
    ],
    destination: Annotated[
        str | None,
        typer.Option(
            "--destination",
            "-d",
            help="Where the model's captures are and labels go (default: quality.destination, else $RAYML_HOME/captures).",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Store ground-truth labels for captured predictions, from a file.

    Every entry is checked against the model's task (a finite number, or one of its classes) first: one invalid
    entry refuses the whole file (exit 1, nothing stored). Labels of predictions that already have one are counted as
    duplicates and not stored again, so uploading the same file twice changes nothing.
    """
    from rayml._private import constants
    from rayml.errors import ModelNotFoundError
    from rayml.feedback import local_destination, read_label_file, upload_labels
    from rayml.registry import Registry, validate_name

    cfg = load(LabelsJobConfig, config, set_)
    validate_name(model)
    dest = local_destination(destination or cfg.quality.destination or constants.default_capture_dir())
    entries = read_label_file(labels)
    registry = Registry(cfg.registry.tracking_uri)
    versions = registry.versions(model)
    if not versions:
        raise ModelNotFoundError(f"model {model!r} has no registered versions", hint="register one first (rayml train ...)")
    newest = versions[-1].ref
    md = registry.load(newest).model_dir
    result = upload_labels(dest, model, entries, md.task, md.class_labels)
    if result.refused:
        err_console.print(
            f"[bold red]error:[/] {result.problem_count} of {result.entries} labels in {labels} are invalid for "
            f"{newest} ({md.task}); nothing was stored:"
        )
        for p in result.problems:
            err_console.print(f"  - {p}")
        if result.problem_count > len(result.problems):
            err_console.print(f"  ... and {result.problem_count - len(result.problems)} more")
        err_console.print("[yellow]Hint:[/] fix or remove those entries and upload the file again (all or nothing).")
        raise typer.Exit(EXIT_REFUSED)
    console.print(
        f"Labels for {model}: {result.accepted} accepted, {result.new} stored, {result.matched} matched a captured "
        f"prediction, {result.unknown} unknown (no captured prediction has their id yet), {result.duplicates} duplicate"
        + (f" ({result.conflicts} disagree with the label kept)" if result.conflicts else "")
    )
    if result.written:
        console.print(f"Stored: {result.written}")
    if result.unknown and not result.matched:
        console.print(
            f"No label matched: are the captures of {model} under {dest}? (--destination, or turn on "
            f"serve.models.{model}.capture)"
        )
    console.print(f"Next: rayml monitor quality --model {model}" + (f" --destination {dest}" if destination else ""))
