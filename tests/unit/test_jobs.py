"""Every job entrypoint in jobs/ keeps the exit-code contract: 2 for a user mistake (before any Ray work), with the message.

0 (success) and 1 (failure) are exercised by the e2e job tests; here a config typo and a missing file, in-process.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted(p for p in (ROOT / "jobs").glob("*.py"))


def _run(job: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", [str(job), *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(job), run_name="__main__")
    return done.value.code


def test_every_job_is_a_flat_entrypoint_with_a_config_flag() -> None:
    assert {p.name for p in JOBS} >= {"train.py", "tune.py", "manymodels_train.py", "batch_infer.py", "deploy.py"}
    for job in JOBS:
        text = job.read_text()
        assert '"--config"' in text and "sys.exit(main())" in text, job.name
        assert "ray job submit" in text.split('"""')[1], f"{job.name}: the docstring gives the submit command"


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_a_user_mistake_exits_2_with_what_was_wrong(
    job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_section:\n  x: 1\n")
    assert _run(job, ["--config", str(bad)], monkeypatch) == 2
    assert "no_such_section" in capsys.readouterr().err

    assert _run(job, ["--config", str(tmp_path / "missing.yaml")], monkeypatch) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_runtime_envs_ship_the_same_files_and_the_pip_one_lists_rayml_dependencies() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    plain = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    pip = yaml.safe_load((ROOT / "jobs" / "runtime_env_pip.yaml").read_text())
    assert plain["working_dir"] == pip["working_dir"] == "." and plain["excludes"] == pip["excludes"]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pip["pip"]["packages"] == [d for d in deps if not d.startswith("ray[")]  # the cluster's Ray stays
