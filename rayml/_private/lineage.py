"""Lineage facts recorded with every run and model version."""

from __future__ import annotations

import subprocess
from importlib import metadata

from rayml._private import constants


def git_commit(cwd: str | None = None) -> str:
    """The code commit (``-dirty`` when the tree has changes), ``RAYML_GIT_COMMIT`` if set, else ``unknown``."""
    override = constants.git_commit_override()
    if override:
        return override
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str]:
    return {name: _version(name) for name in ("rayml", "ray", "torch", "onnxruntime", "onnx", "mlflow")}
