"""`rayml`: train, tune, register, batch-score and serve tabular models on Ray.

Every command takes ``--config FILE`` (YAML) and ``--set key=value`` overrides. User mistakes print a message and a
hint and exit 2; failures exit 1.
"""

from __future__ import annotations

import sys

import typer

from rayml.cli import (
    batch as batch_cmd,
    data as data_cmd,
    labels as labels_cmd,
    manymodels as manymodels_cmd,
    models as models_cmd,
    monitor as monitor_cmd,
    pipeline as pipeline_cmd,
    quickstart as quickstart_cmd,
    rollout as rollout_cmd,
    scorecard as scorecard_cmd,
    serve as serve_cmd,
    train as train_cmd,
    tune as tune_cmd,
    validate as validate_cmd,
)
from rayml.cli._common import err_console
from rayml.cli._output import last_log_path, stop_output
from rayml.errors import RaymlError, UserError

app = typer.Typer(
    name="rayml",
    help="Take tabular ML models from experiment to production on Ray: train, tune, register, batch, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(labels_cmd.app, name="labels")
app.add_typer(models_cmd.app, name="models")
app.add_typer(manymodels_cmd.app, name="manymodels")
app.add_typer(monitor_cmd.app, name="monitor")
app.add_typer(pipeline_cmd.app, name="pipeline")
app.add_typer(serve_cmd.app, name="serve")
app.add_typer(rollout_cmd.app, name="rollout")
app.command("rollback")(rollout_cmd.rollback_previous)
app.command("train")(train_cmd.train)
app.command("tune")(tune_cmd.tune)
app.command("batch")(batch_cmd.batch)
app.command("validate")(validate_cmd.validate)
app.command("quickstart")(quickstart_cmd.quickstart)
app.command("scorecard")(scorecard_cmd.scorecard)


def main() -> None:
    """Console-script entry point: runs the app and turns rayml errors into clear messages and exit codes."""
    try:
        try:
            # non-standalone click returns a typer.Exit's code instead of raising it: pass it on as the exit status
            code = app(standalone_mode=False)
            if isinstance(code, int) and code != 0:
                sys.exit(code)
        finally:
            stop_output()  # the command's own close did it already, unless it never got that far
    except UserError as e:
        err_console.print(f"[bold red]error:[/] {e.message}")
        if e.hint:
            err_console.print(f"[yellow]Hint:[/] {e.hint}")
        sys.exit(2)
    except RaymlError as e:
        err_console.print(f"[bold red]failed:[/] {e.message}")
        if e.hint:
            err_console.print(f"[yellow]Hint:[/] {e.hint}")
        _point_at_logs()
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as e:  # usage errors come through here in non-standalone mode
        import click
        from typer.exceptions import TyperException  # typer's bundled click raises these, not click's own

        if isinstance(e, (click.exceptions.ClickException, TyperException)) and hasattr(e, "show"):
            e.show()
            sys.exit(e.exit_code)
        _point_at_logs()
        raise


def _point_at_logs() -> None:
    path = last_log_path()
    if path is not None:
        err_console.print(f"Logs of Ray, MLflow and the workers: {path}")


if __name__ == "__main__":
    main()
