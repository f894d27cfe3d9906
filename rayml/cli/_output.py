"""What a command shows on the terminal: rayml's own lines; the engines' logs go to a file whose path is printed.

Every command that runs Ray or MLflow calls :func:`start_output` once its config has loaded (a config mistake should
print only the mistake). Without ``--verbose``, Ray's, Tune's, Serve's, MLflow's and the workers' output goes to
``$RAYML_HOME/logs/rayml-<command>-<timestamp>.log`` (see :mod:`rayml._private.logs`), rayml's warnings still reach
the terminal, and the command's own lines (``console``, ``err_console``) go to the terminal as before. With
``--verbose`` nothing is redirected: everything shows on the terminal, rayml's debug logs included.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from rayml._private.logs import LogCapture, log_path
from rayml.cli._common import console, err_console, setup_logging

logger = logging.getLogger("rayml")

_capture: LogCapture | None = None
_ray_was_up = False
_last_path: Path | None = None


def start_output(command: str, verbose: bool = False) -> Path | None:
    """Send the engines' output to a log file for the rest of this command, and print the file's path once.

    Args:
        command: names the file (``train``, ``serve up``, ...).
        verbose: show everything on the terminal instead, rayml's debug logs included (no file).

    Returns:
        The log file's path (None with ``verbose``).
    """
    global _capture, _ray_was_up, _last_path
    if verbose:
        setup_logging(verbose=True)
        return None
    stop_output()  # a command run before in this process (tests invoke several)
    _ray_was_up = _ray_initialized()
    capture = LogCapture(log_path(command))
    capture.start()
    _capture, _last_path = capture, capture.path
    console.file, err_console.file = capture.stdout, capture.stderr
    ctx = _click_context()
    if ctx is not None:
        ctx.call_on_close(stop_output)  # runs when the command returns or raises, before main() reports an error
    else:
        atexit.register(stop_output)
    console.print(f"[dim]Logs of Ray, MLflow and the workers: {capture.path} (--verbose shows them here)[/]")
    return capture.path


def stop_output() -> None:
    """End the redirection :func:`start_output` began; a no-op when none is active.

    A Ray this command started or joined is shut down first, while its last words still go to the file: Ray would
    otherwise flush worker logs and shutdown messages onto the terminal at exit.
    """
    global _capture
    capture, _capture = _capture, None
    if capture is None:
        return
    try:
        if not _ray_was_up and _ray_initialized():
            import ray

            ray.shutdown()
    except Exception as e:  # the command's outcome is already decided: never let cleanup change it
        logger.debug("ray.shutdown() failed: %s", e)
    finally:
        capture.stop()
        console.file = None  # type: ignore[assignment]  # back to following sys.stdout / sys.stderr
        err_console.file = None  # type: ignore[assignment]


def last_log_path() -> Path | None:
    """The log file of the latest command in this process (for error messages), if it wrote one."""
    return _last_path if _last_path is not None and _last_path.is_file() else None


def print_limited(
    lines: Sequence[str], limit: int, more: str, indent: str = "  ", style: str = "", out: Console | None = None
) -> None:
    """Print the first ``limit`` lines (callers sort worst first), then ``… and N more; <more>``.

    Args:
        lines: the lines, most important first.
        limit: how many to show.
        more: where the rest can be read (a file, a command).
        indent: prefix of every line.
        style: rich style of the lines (markup in ``lines`` is not interpreted).
        out: where to print (default: the command's stdout console; failures go to ``err_console``).
    """
    out = out or console
    for line in lines[:limit]:
        out.print(f"{indent}{line}", markup=False, style=style or None)
    if len(lines) > limit:
        out.print(f"{indent}… and {len(lines) - limit} more; {more}", markup=False)


def _ray_initialized() -> bool:
    # importing ray only to ask would cost a second per command: a process that never imported it has no Ray
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _click_context():
    """The running command's context: typer bundles its own copy of click (``typer._click``), whose contexts the real
    click package does not see, so ask typer's copy first."""
    for module in ("typer._click.globals", "click.globals"):
        with contextlib.suppress(Exception):
            ctx = importlib.import_module(module).get_current_context(silent=True)
            if ctx is not None:
                return ctx
    return None
