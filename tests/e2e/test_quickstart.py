"""`rayml quickstart` finishes and tells the story it promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.helpers import run_cli


def test_quickstart_runs_end_to_end(cli_env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "qs"
    args = ["quickstart", "--workdir", str(work), "--stores", "6", "--days", "60", "--epochs", "2", "--trials", "2"]
    out = run_cli(args, cli_env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _assert_only_raymls_own_lines(out, work)
    text = out.stdout
    for step in ("Step 1", "Step 2", "Step 3", "Step 4", "Step 8", "Step 9", "Step 10", "Done in"):
        assert step in text, step
    assert "sales-model version 1" in text and "data fingerprint" in text
    assert "predicted" in text and "ONNX inputs: price:FP32" in text
    assert "best config:" in text and "trials (best first" in text  # tuning
    assert "6 segments: 6 trained" in text  # many models
    assert "6 LightGBM boosters trained" in text and "median store val RMSE" in text  # trees next to the MLPs
    families = {line.split("│")[1].strip() for line in text.splitlines() if line.count("│") >= 6}
    assert {"mlp", "lightgbm"} <= families, text[text.index("Many models") :][:3000]
    assert "the same command again: 0 committed, 2 skipped" in text  # batch, exactly once
    assert "REFUSED" in text and "does not beat predicting the training mean" in text  # the gate
    assert "as a 10% canary" in text and "failed 0" in text and "promoted v2" in text  # serving
    drift = text[text.index("Online drift") :]  # drifted traffic alerts on price for v2; clean traffic on v1 does not
    v1 = next(line for line in drift.splitlines() if "│ v1 " in line)
    v2 = next(line for line in drift.splitlines() if "│ v2 " in line)
    assert "alert" in v2 and "price" in v2, drift[:2000]
    assert v1.split("│")[5].strip() == "-" and float(v1.split("│")[4]) < 0.1, drift[:2000]  # no feature alerts on v1
    assert "rayml models list" in text  # the next command to try
    assert (work / "mlflow.db").is_file() and any((work / "runs").iterdir())


def _assert_only_raymls_own_lines(out: subprocess.CompletedProcess, work: Path) -> None:
    """A successful run shows no engine output: no traceback, no ERROR line; those are in the log file it names."""
    shown = out.stdout + out.stderr
    assert "Traceback" not in shown and "ERROR" not in shown, shown[-5000:]
    assert out.stderr.strip() == "", out.stderr[-3000:]  # nothing went wrong, so nothing to say on stderr
    logs = re.findall(r"Logs of Ray, MLflow and the workers: (\S+\.log)", out.stdout)
    assert len(logs) == 1, out.stdout[:2000]  # printed once
    log = Path(logs[0])
    assert log.parent == work / "logs" and log.is_file() and log.stat().st_size > 0
    assert "Started a local Ray instance" in log.read_text()  # Ray's own lines went there


def test_train_job_entrypoint_exit_code_for_bad_config(cli_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.e2e.helpers import ROOT

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: 'has spaces'\n")
    out = subprocess.run(
        [sys.executable, "jobs/train.py", "--config", str(bad)],
        cwd=ROOT,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "model.name" in out.stderr and "Hint:" in out.stderr
