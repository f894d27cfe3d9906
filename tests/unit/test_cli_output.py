"""What a command shows: its own lines on the terminal, the engines' output in a log file, long lists cut short."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

from rayml._private.logs import LogCapture, log_path
from rayml.cli._progress import Bar
from rayml.cli.validate import print_gate_failures


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_a_bar_prints_a_line_only_when_it_moved_and_at_most_every_interval() -> None:
    out = io.StringIO()
    clock = FakeClock()
    with Bar("epochs", total=10, out=Console(file=out, width=120), interval_s=15, clock=clock) as bar:
        bar.update(1)  # too soon
        clock.now = 16
        bar.update(2, detail="val_loss 0.5")
        clock.now = 40
        bar.update(2)  # not moved
        clock.now = 60
        bar.update(10)  # the last one: the step's summary line follows
    assert out.getvalue() == "  epochs: 2/10 val_loss 0.5 (16s)\n"


def test_print_limited_shows_the_first_lines_and_where_the_rest_is(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # the console follows sys.stdout
    from rayml.cli._output import print_limited

    print_limited([f"- item {i}" for i in range(10)], 3, "all of them in report.json")
    assert out.getvalue().splitlines() == [
        "  - item 0",
        "  - item 1",
        "  - item 2",
        "  … and 7 more; all of them in report.json",
    ]


@dataclass
class _Report:
    failures: list[str]
    slices: list[dict] = field(default_factory=list)


def test_gate_failures_show_every_model_level_one_then_the_worst_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # the console follows sys.stdout
    regressions = {f"s{i}": float(i) for i in range(8)}
    report = _Report(
        failures=["RMSE 90 does not beat predicting the training mean (50)"]
        + [f"segment {k!r}: rmse regressed {v:.0%}" for k, v in regressions.items()],
        slices=[{"segment": k, "regression": v} for k, v in regressions.items()],
    )
    print_gate_failures(report, "see gate.json")
    assert out.getvalue().splitlines() == [
        "  - RMSE 90 does not beat predicting the training mean (50)",
        "  - segment 's7': rmse regressed 700%",
        "  - segment 's6': rmse regressed 600%",
        "  - segment 's5': rmse regressed 500%",
        "  … and 5 more; see gate.json",
    ]


def test_capture_sends_prints_and_engine_logs_to_the_file_and_rayml_warnings_to_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal_out, terminal_err = io.StringIO(), io.StringIO()  # no file descriptors: the in-process (test) mode
    monkeypatch.setattr(sys, "stdout", terminal_out)
    monkeypatch.setattr(sys, "stderr", terminal_err)
    rayml = logging.getLogger("rayml")
    monkeypatch.setattr(rayml, "handlers", [])
    capture = LogCapture(tmp_path / "logs" / "x.log")
    capture.start()
    try:
        print("Trial status: 2 RUNNING")  # Tune's tables
        sys.stderr.write("(TrainController pid=1) ERROR something internal\n")  # a worker's log, forwarded
        logging.getLogger("rayml.train").info("resolved config")
        for i in range(5):
            logging.getLogger("rayml.manymodels").warning("segment %r failed", i)
        capture.stdout.write("Registered model: m version 1\n")
    finally:
        capture.stop()
    assert sys.stdout is terminal_out and sys.stderr is terminal_err
    assert terminal_out.getvalue() == "Registered model: m version 1\n"
    err = terminal_err.getvalue().splitlines()
    assert err[:3] == ["warning: segment 0 failed", "warning: segment 1 failed", "warning: segment 2 failed"]
    assert err[3].startswith("warning: … and 2 more like 'segment %r failed'") and str(capture.path) in err[3]
    logged = capture.path.read_text()
    for text in ("Trial status: 2 RUNNING", "ERROR something internal", "resolved config", "segment 4 failed"):
        assert text in logged
    assert rayml.handlers == []


def test_capture_moves_file_descriptor_2_for_cxx_logs_and_child_processes(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys
        from pathlib import Path
        from rayml._private.logs import LogCapture
        capture = LogCapture(Path({str(log)!r}))
        capture.start()
        os.write(2, b"[E core_worker.cc:2465] written by C++\\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child noise\\\\n')"])
        capture.stderr.write("error: ours\\n")
        capture.stop()
        sys.stderr.write("after\\n")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "error: ours\nafter\n"
    assert "written by C++" in log.read_text() and "child noise" in log.read_text()


def test_log_paths_are_per_command_and_never_reused(tmp_path: Path) -> None:
    first = log_path("serve up", tmp_path)
    assert first.parent == tmp_path / "logs" and first.name.startswith("rayml-serve-up-") and first.suffix == ".log"
    first.parent.mkdir()
    first.touch()
    assert log_path("serve up", tmp_path) != first


def test_pollers_follow_the_running_training_run_and_search_through_the_registry(registry) -> None:
    from rayml.cli._progress import FollowSearch, FollowTraining

    quiet = Console(file=io.StringIO(), force_terminal=False)
    # an older, finished run of another model must not be followed
    other = registry.create_run("exp", "other", tags={"rayml.train_run_name": "other-abc"})
    registry.log_metrics(other, {"epoch": 9}, step=9)
    registry.end_run(other)
    run = registry.create_run("exp", "m", tags={"rayml.train_run_name": "m-0123456789"})
    registry.log_metrics(run, {"epoch": 3, "val_loss": 0.25}, step=3)
    with Bar("epochs", total=10, out=quiet) as bar:
        follow = FollowTraining(bar, registry.tracking_uri, "exp", "m")
        follow.poll(registry)
        assert (bar.completed, bar.detail) == (3, "val_loss 0.25")
        FollowTraining(bar, registry.tracking_uri, "nope", "m").poll(registry)  # no experiment yet: no move
        assert bar.completed == 3

    parent = registry.create_run("tune-exp", "search", tags={"rayml.tune_search_id": "m-tune-1"})
    for status, epochs in (("FINISHED", 4), ("KILLED", 2), ("RUNNING", 1)):
        child = registry.create_run("tune-exp", "trial", tags={"mlflow.parentRunId": parent})
        registry.log_metrics(child, {"epoch": epochs}, step=epochs)
        if status != "RUNNING":
            registry.end_run(child, status)
    with Bar("trials", total=3, out=quiet) as bar:
        FollowSearch(bar, registry.tracking_uri, "tune-exp").poll(registry)
        assert (bar.completed, bar.detail) == (2, "7 epochs")


def test_the_console_script_exits_with_a_commands_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # non-standalone click returns typer.Exit's code instead of raising it: `rayml validate` refusing a candidate
    # and `rayml batch` with failed files must still exit 1 from the console script, not 0
    import typer

    from rayml.cli import main as cli_main

    fake = typer.Typer(add_completion=False)

    @fake.command()
    def refuse() -> None:
        raise typer.Exit(1)

    @fake.command()
    def fine() -> None:
        pass

    monkeypatch.setattr(cli_main, "app", fake)
    monkeypatch.setattr(sys, "argv", ["rayml", "refuse"])
    with pytest.raises(SystemExit) as e:
        cli_main.main()
    assert e.value.code == 1
    monkeypatch.setattr(sys, "argv", ["rayml", "fine"])
    cli_main.main()  # success: no SystemExit at all
