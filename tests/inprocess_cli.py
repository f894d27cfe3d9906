"""`rayml ...` in the test's own process (its Ray session, its MLflow), through the real entry point."""

from __future__ import annotations

import logging
import sys

import pytest


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run ``rayml *args`` with its exit-code mapping; returns (exit code, stdout + stderr on one line)."""
    from rayml.cli.main import main

    monkeypatch.setattr(sys, "argv", ["rayml", *args])
    # the CLI points the `rayml` logger at this (captured) stderr; later tests must not log into the closed stream
    log = logging.getLogger("rayml")
    monkeypatch.setattr(log, "handlers", list(log.handlers))
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(log, "level", log.level)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())  # rich wraps at 80 columns here
