"""Options and helpers shared by every sub-command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from rayml.config import load_config

# soft_wrap: a printed line is never broken at the console width, so a command it names ("Next: rayml ...") can be
# copied whole; tables still fit the width
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

C = TypeVar("C", bound=BaseModel)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (examples in jobs/configs/).", show_default=False)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config field: --set train.epochs=3 (repeatable).", show_default=False),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Show Ray's, MLflow's and the workers' logs here (not in a log file), and rayml's debug logs."
    ),
]


def setup_logging(verbose: bool = False, default_level: int = logging.INFO) -> None:
    """The ``rayml`` logger to stderr: every command with ``--verbose``, and the light ones (no Ray) always."""
    level = logging.DEBUG if verbose else default_level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("rayml")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def load(cls: type[C], config: Path | None, overrides: list[str] | None) -> C:
    return load_config(cls, config, overrides or [])


def table(title: str, columns: list[str], rows: Sequence[Sequence[object]]) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def fmt_metrics(metrics: dict[str, float], keys: list[str] | None = None) -> str:
    items = [(k, v) for k, v in sorted(metrics.items()) if keys is None or k in keys]
    return ", ".join(f"{k}={v:.4g}" for k, v in items)
