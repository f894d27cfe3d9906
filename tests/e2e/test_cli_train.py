"""`rayml train`, `rayml models ...` and `rayml data generate` from the shell, including the driver-crash resume."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.helpers import RAYML, ROOT, run_cli

SMALL = ["--set", "data.synthetic.segments=4", "--set", "data.synthetic.rows_per_segment=80", "--set", "model.hidden_sizes=[16]"]


def test_user_mistakes_exit_2_with_a_hint(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 3\n")
    out = run_cli(["train", "--config", str(bad)], cli_env)
    assert out.returncode == 2
    assert "train.epocs: unknown field" in out.stderr and "Hint:" in out.stderr
    assert "Traceback" not in out.stderr

    missing = run_cli(["models", "show", "no-such-model"], cli_env)
    assert missing.returncode == 2 and "model 'no-such-model' is not registered" in missing.stderr

    bad_name = run_cli(["models", "alias", "../etc", "1", "production"], cli_env)
    assert bad_name.returncode == 2 and "is not allowed" in bad_name.stderr

    no_data = run_cli(["train", "--set", f"data.source={tmp_path / 'nothing'}", "--set", "data.target=sales"], cli_env)
    assert no_data.returncode == 2 and "does not exist" in no_data.stderr


def test_data_generate_with_drift(cli_env: dict[str, str], tmp_path: Path) -> None:
    import pandas as pd

    out_dir = tmp_path / "data"
    args = ["data", "generate", "--out", str(out_dir), "--segments", "3", "--rows-per-segment", "10", "--seed", "1"]
    out = run_cli([*args, "--files", "2", "--drift", "shift:price=3", "--drift", "new_category:category=gadgets"], cli_env)
    assert out.returncode == 0, out.stderr
    assert "Wrote 30 rows" in out.stdout and "Drift injected" in out.stdout
    df = pd.read_parquet(out_dir)
    assert len(df) == 30 and "gadgets" in set(df["category"])
    bad = run_cli([*args, "--drift", "price=3"], cli_env)
    assert bad.returncode == 2 and "KIND:COLUMN=VALUE" in bad.stderr


def _max_checkpoint_epoch(run_root: Path) -> int:
    epochs = [0]
    for meta in run_root.glob("*/checkpoint_*/rayml_checkpoint.json"):
        with contextlib.suppress(OSError, ValueError):  # a checkpoint being written
            epochs.append(json.loads(meta.read_text())["epoch"])
    return max(epochs)


def test_driver_killed_after_epoch_2_resumes_when_the_same_command_runs_again_then_models_show_and_alias(
    cli_env: dict[str, str],
) -> None:
    args = ["train", "--config", "jobs/configs/train.yaml", *SMALL, "--set", "train.epochs=5"]
    args += ["--set", "train.early_stopping_patience=0"]
    runs = Path(cli_env["RAYML_HOME"]) / "runs"
    slow = {**cli_env, "RAYML_FAULT_INJECT": "sleep@seconds=2"}  # epochs slow enough to kill the driver between them
    # own process group: killing it takes down the driver and the local Ray it started, like a crashed laptop
    proc = subprocess.Popen(
        [RAYML, *args], cwd=ROOT, env=slow, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while _max_checkpoint_epoch(runs) < 2:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no epoch-2 checkpoint in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ray's worker processes are not all in the killed group: one may finish writing the checkpoint it was on.
    # Wait until storage stops changing; the rerun must continue from whatever is newest then.
    at_kill, stable_since = _max_checkpoint_epoch(runs), time.monotonic()
    while time.monotonic() - stable_since < 4 and time.monotonic() < deadline + 30:
        time.sleep(0.5)
        now = _max_checkpoint_epoch(runs)
        if now != at_kill:
            at_kill, stable_since = now, time.monotonic()
    assert 2 <= at_kill < 5

    again = run_cli(args, cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from the checkpoint of epoch {at_kill}" in again.stdout
    assert "Trained 5 epoch(s)" in again.stdout
    assert "Registered model: sales-model version 1" in again.stdout
    assert "Next: rayml models show sales-model" in again.stdout

    from rayml.registry import Registry

    reg = Registry(f"sqlite:///{cli_env['RAYML_HOME']}/mlflow.db")
    v = reg.resolve("sales-model:1")
    steps = [m.step for m in reg.client.get_metric_history(v.run_id, "val_loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5]  # one MLflow run across both drivers, every epoch logged
    assert len(reg.versions("sales-model")) == 1

    # what a user does next with the registered version (one training serves both checks: the suite's time budget)
    shown = run_cli(["models", "show", "sales-model"], cli_env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"│ 1\s+│", shown.stdout) and "best_val_rmse=" in shown.stdout
    alias = run_cli(["models", "alias", "sales-model", "1", "production"], cli_env)
    assert alias.returncode == 0 and "sales-model@production -> version 1" in alias.stdout
    one = run_cli(["models", "show", "sales-model@production"], cli_env)
    assert "version 1" in one.stdout and "aliases: production" in one.stdout
    assert "rayml.data_fingerprint:" in one.stdout and "rayml.git_commit:" in one.stdout
    listed = run_cli(["models", "list"], cli_env)
    assert "sales-model" in listed.stdout and "production=v1" in listed.stdout
