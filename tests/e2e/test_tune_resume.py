"""A search survives its driver being killed: resuming keeps finished trials and continues unfinished ones.

The search runs as the tune stage of `rayml pipeline run` (continuous training with a `tune:` section), in a real
subprocess with its own RAYML_HOME (its own local Ray and MLflow). It is SIGKILLed once the experiment state on disk
shows a finished trial while another trial has checkpoints but has not finished. `rayml tune` then refuses to start
the same search over without `--resume`, and the same pipeline command resumes it, gates the best trial and promotes
it: one test for the search's resume, the CLI's refusal and the pipeline's tune path end to end.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

NAME = "resume-e2e"
EPOCHS = 4
CONFIG = f"""\
# rayml tune --config tune.yaml
data:
  source: synthetic
  synthetic: {{segments: 4, rows_per_segment: 100, seed: 0}}
model:
  name: resume-model
  hidden_sizes: [16]
train:
  epochs: {EPOCHS}
  batch_size: 32
tune:
  name: {NAME}
  metric: val_rmse
  scheduler: fifo
  search: grid
  max_concurrent_trials: 1
  space:
    train.learning_rate: {{grid: [0.02, 0.01, 0.005]}}
"""
# the same search as the tune stage of continuous training: `rayml pipeline run --config pipeline.yaml`
PIPELINE = f"""{CONFIG}gate:
  segment_columns: []
  permutation_repeats: 1
  require_reproducible_lineage: false   # the suite may run from a checkout with uncommitted changes
  linear_baseline: warn   # a 4-epoch search on 400 rows is about resuming, not about beating ridge
pipeline:
  rollout: never
"""


def _saved_trials(exp: Path) -> dict[str, tuple[str, int]]:
    """Trial id -> (status, last reported epoch) as Tune last saved them: what a restore will see."""
    # the newest session by its name (a timestamp): the end-of-run sync rewrites old files too, so mtime misleads
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        data = json.loads(Path(files[-1]).read_text())  # a resumed search writes a new file next to the old one
    except (OSError, ValueError):  # being rewritten right now
        return {}
    out = {}
    for trial_json, run_json in data.get("trial_data", []):
        trial, run = json.loads(trial_json), json.loads(run_json)
        out[trial["trial_id"]] = (trial["status"], int((run.get("last_result") or {}).get("epoch", 0)))
    return out


def _trial_statuses(exp: Path) -> dict[str, str]:
    return {t: status for t, (status, _) in _saved_trials(exp).items()}


def _rows(result_json: Path) -> list[dict]:
    return [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]


def _run(args: list[str], env: dict[str, str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    with log.open("w") as out:
        return subprocess.run(
            [sys.executable, "-m", "rayml.cli.main", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )


def test_killed_pipeline_search_resumes_without_rerunning_finished_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    config, search = tmp_path / "pipeline.yaml", tmp_path / "tune.yaml"
    config.write_text(PIPELINE)
    search.write_text(CONFIG)
    env = {
        **os.environ,
        "RAYML_HOME": str(home),
        "RAYML_RAY_NUM_CPUS": "2",
        # half a second after every epoch: a window to kill the driver between two checkpoints
        "RAYML_FAULT_INJECT": "sleep@seconds=0.5",
    }
    exp = home / "runs" / "tune" / NAME
    log1 = tmp_path / "first.log"

    with log1.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayml.cli.main", "pipeline", "run", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we clean up every process it started, and only those
        )
    finished: dict[str, bytes] = {}
    unfinished: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            saved = _saved_trials(exp)
            done = [t for t, (status, _) in saved.items() if status == "TERMINATED"]
            # Tune's saved state knows of at least one of its checkpoints (every epoch's report carries one)
            running = [t for t, (status, epoch) in saved.items() if status != "TERMINATED" and 1 <= epoch < EPOCHS]
            if done and running:
                os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a crash would
                proc.wait(timeout=30)
                finished = {t: (exp / f"trial_{t}" / "result.json").read_bytes() for t in done}
                unfinished = {t: saved[t][1] for t in running}
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Ray processes the killed driver left behind (our group only)
    assert finished and unfinished, f"never saw a finished and an unfinished trial; log:\n{log1.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL

    # without --resume the existing search is refused, with a hint
    refused = _run(["tune", "--config", str(search)], env, tmp_path / "refused.log", timeout=120)
    text = (tmp_path / "refused.log").read_text()
    assert refused.returncode == 2, text
    assert "already exists" in text and "--resume" in text and "tune.name" in text

    log2 = tmp_path / "resumed.log"
    # the same pipeline command resumes at its tune stage, then gates, registers and promotes the best trial
    resumed = _run(["pipeline", "run", "--config", str(config)], env, log2, timeout=240)
    text = " ".join(log2.read_text().split())
    assert resumed.returncode == 0, text[-4000:]
    assert "resume-model v1 is in production" in text, text[-4000:]
    from rayml.config import PipelineJobConfig, load_config
    from rayml.pipeline import DONE, load_run

    monkeypatch.setenv("RAYML_HOME", str(home))  # where the subprocess kept its pipeline state
    state, _ = load_run(load_config(PipelineJobConfig, config, []))
    assert state.status == DONE and state.stage("train").attempts == 2, state
    assert state.stage("train").outputs["search"] == NAME and state.stage("gate").outputs["passed"] is True

    # finished trials were not re-run: their result rows are byte-for-byte what they were at the kill
    for trial_id, before in finished.items():
        assert (exp / f"trial_{trial_id}" / "result.json").read_bytes() == before, trial_id
    # unfinished trials continued from a checkpoint (not from epoch 1) and completed
    for trial_id in unfinished:
        rows = _rows(exp / f"trial_{trial_id}" / "result.json")
        after = [r for r in rows if r["resumed_from_epoch"] > 0]
        assert after, f"trial {trial_id} did not resume from a checkpoint: {[r['epoch'] for r in rows]}"
        assert after[0]["epoch"] == after[0]["resumed_from_epoch"] + 1
        assert after[0]["resumed_from_epoch"] >= unfinished[trial_id]  # at least where Tune's saved state had it
        assert sorted({r["epoch"] for r in rows}) == list(range(1, EPOCHS + 1))
    # all three grid points ran to the end, each exactly once
    statuses = _trial_statuses(exp)
    assert len(statuses) == 3 and set(statuses.values()) == {"TERMINATED"}
    for trial_id in statuses:
        epochs = [r["epoch"] for r in _rows(exp / f"trial_{trial_id}" / "result.json")]
        assert max(epochs) == EPOCHS

    # MLflow: one child run per trial (the resumed search reused them), all closed; the parent finished
    from rayml.registry import Registry

    reg = Registry(f"sqlite:///{home / 'mlflow.db'}")
    state = json.loads((exp / "rayml_tune.json").read_text())
    parent = reg.client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = reg.client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["rayml.tune_trial_id"] for c in children) == sorted(statuses)
    assert {c.info.status for c in children} == {"FINISHED"}
    version = reg.get_version("resume-model", 1)
    assert version.tags["rayml.tune_search_id"] == NAME
    assert version.tags["rayml.tune_trial_id"] in statuses


@pytest.fixture(autouse=True)
def _no_inherited_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # the subprocess must start its own local Ray, never join one from the environment
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
