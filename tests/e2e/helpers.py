"""Run the `rayml` CLI as a user would: a subprocess in the repo root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAYML = str(Path(sys.executable).parent / "rayml")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([RAYML, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
