"""The notebooks run top to bottom, headless, as a person runs them: a fresh kernel, $RAYML_HOME and MLflow DB each.

Each notebook starts its own local Ray in the kernel and stops it in its last cell (03 also removes its Serve app), so
no Ray survives the test. A failing cell fails the test with the cell's source and the traceback.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from rayml._private.net import free_port

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = [
    "01_train_and_tune.ipynb",
    "02_many_models_batch.ipynb",
    "03_serving_canary_shadow.ipynb",
    "04_monitoring_drift.ipynb",
    "05_bring_your_own_model.ipynb",
    "06_closed_loop.ipynb",
]
CELL_TIMEOUT_S = 240  # one cell; a whole notebook takes ~30 s on a quiet laptop
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name: str, tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # an empty, already migrated DB in tmp_path (saves ~2 s)
    port = free_port()
    monkeypatch.setenv("NOTEBOOK_SERVE_PORT", str(port))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAYML_RAY_NUM_CPUS", raising=False)

    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
    )
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        pytest.fail(f"notebooks/{name} failed:\n{ANSI.sub('', str(e))}", pytrace=False)
    with pytest.raises(OSError):  # nothing serves any more: the last cell stopped Ray, and Serve with it
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
