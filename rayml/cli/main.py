"""`rayml`: train, tune, register, batch-score and serve tabular models on Ray.

Every command takes ``--config FILE`` (YAML) and ``--set key=value`` overrides. User mistakes print a message and a
hint and exit 2; failures exit 1.
"""

from __future__ import annotations

import sys

import typer

from rayml.cli import batch as batch_cmd
from rayml.cli import data as data_cmd
from rayml.cli import manymodels as manymodels_cmd
from rayml.cli import models as models_cmd
from rayml.cli import monitor as monitor_cmd
from rayml.cli import pipeline as pipeline_cmd
from rayml.cli import quickstart as quickstart_cmd
from rayml.cli import rollout as rollout_cmd
from rayml.cli import serve as serve_cmd
from rayml.cli import train as train_cmd
from rayml.cli import tune as tune_cmd
from rayml.cli import validate as validate_cmd
from rayml.cli._common import err_console
from rayml.errors import RaymlError, UserError

app = typer.Typer(
    name="rayml",
    help="Take tabular ML models from experiment to production on Ray: train, tune, register, batch, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
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


def main() -> None:
    """Console-script entry point: runs the app and turns rayml errors into clear messages and exit codes."""
    try:
        app(standalone_mode=False)
    except UserError as e:
        err_console.print(f"[bold red]error:[/] {e.message}")
        if e.hint:
            err_console.print(f"[yellow]Hint:[/] {e.hint}")
        sys.exit(2)
    except RaymlError as e:
        err_console.print(f"[bold red]failed:[/] {e.message}")
        if e.hint:
            err_console.print(f"[yellow]Hint:[/] {e.hint}")
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
