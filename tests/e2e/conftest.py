"""E2E fixtures: every CLI subprocess gets its own $RAYML_HOME and a small local Ray."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture
def cli_env(tmp_path: Path, _registry_template: Path) -> dict[str, str]:
    # RAY_AUTH_*: a test in this process may have joined a serving Ray (which points os.environ at its token)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYML_", "MLFLOW_", "RAY_ADDRESS", "RAY_AUTH_"))}
    home = tmp_path / "home"
    home.mkdir()
    # the default registry ($RAYML_HOME/mlflow.db) with MLflow's migrations already applied: the first CLI call of a
    # test would otherwise spend ~5 s migrating an empty database, which `rayml` does on a user's first call only
    shutil.copy(_registry_template, home / "mlflow.db")
    env.update(
        {
            "RAYML_HOME": str(home),
            "RAYML_RAY_NUM_CPUS": "2",
            "PYTHONUNBUFFERED": "1",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "COLUMNS": "200",
        }
    )
    return env
