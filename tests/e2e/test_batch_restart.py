"""`rayml manymodels train` then `rayml batch` from the shell; the batch process group is SIGKILLed mid-run and the same
command, run again, finishes: every input row exactly once in the output, with the inference ids it had."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd

from rayml.config import SyntheticConfig
from rayml.data import generate_sales, write_dataset
from tests.e2e.helpers import RAYML, ROOT, run_cli

FILES = 10


def _committed(out: Path) -> int:
    ledger = out / "_rayml_batch" / "ledger"
    return len(list(ledger.glob("*.json"))) if ledger.is_dir() else 0


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _session_leftovers(sid: int) -> list[int]:
    """Processes still in the killed command's session (its local Ray, if any part of it outlived the kill)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines() if line.strip()) if int(s) == sid]


def test_batch_killed_mid_run_then_rerun_scores_every_row_exactly_once(cli_env: dict[str, str], tmp_path: Path) -> None:
    trained = run_cli(
        [
            "manymodels", "train", "--config", "jobs/configs/manymodels.yaml",
            "--set", "data.synthetic.segments=6", "--set", "data.synthetic.rows_per_segment=80",
            "--set", "model.hidden_sizes=[8]", "--set", "train.epochs=2", "--set", "manymodels.min_rows=20",
        ],
        cli_env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Registered model set: sales-stores version 1" in trained.stdout
    assert "Next: rayml batch --model sales-stores:1" in trained.stdout

    # 8 stores: stores 6 and 7 are unknown to the set and go to its fallback model
    data = generate_sales(SyntheticConfig(segments=8, rows_per_segment=40, seed=3))
    write_dataset(data, tmp_path / "in", files=FILES)
    out = tmp_path / "out"
    cmd = [RAYML, "batch", "--model", "sales-stores:1", "--input", str(tmp_path / "in"), "--output", str(out)]
    slow = {**cli_env, "RAYML_FAULT_INJECT": "sleep@seconds=1.5"}  # each actor pauses after a commit: time to kill
    proc = subprocess.Popen(cmd, cwd=ROOT, env=slow, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _committed(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert 2 <= _committed(out) < FILES
    finally:
        _kill_group(proc)
    for pid in _session_leftovers(proc.pid):  # never leave a half-dead local Ray behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed_at = _committed(out)
    assert killed_at < FILES
    entries = [json.loads(p.read_text()) for p in (out / "_rayml_batch" / "ledger").glob("*.json")]
    before = pd.concat([pd.read_parquet(out / e["output"]) for e in entries])  # committed before the kill

    again = subprocess.run(cmd, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{killed_at} skipped (committed earlier)" in again.stdout
    assert f"{FILES - killed_at} committed" in again.stdout and "Next:" in again.stdout

    got = pd.read_parquet(out)
    keys = list(zip(got.store_id, got.date, strict=True))
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert set(keys) == set(zip(data.store_id, data.date, strict=True)), "missing or extra rows"
    assert set(got.loc[got.store_id.isin(["store_006", "store_007"]), "segment_model"]) == {"__fallback__"}
    assert set(got.model_version) == {1} and got.batch_run_id.nunique() == 1  # one logical run across the restart
    # every row has its own inference id, and the restart kept the ids of the rows committed before the kill
    assert got.inference_id.is_unique and got.inference_id.str.fullmatch(r"b-[0-9a-f]{16}-\d+").all()
    kept = before.merge(got, on=["store_id", "date"], suffixes=("_before", ""))
    assert len(kept) == len(before) and (kept.inference_id_before == kept.inference_id).all()
    # the drift summary counts every row once too: files committed before the kill keep their counts
    assert "Drift vs training data:" in again.stdout
    summary = json.loads((out / "_rayml_batch" / "drift.json").read_text())
    assert summary["files"] == FILES and summary["report"]["rows"] == len(data)
