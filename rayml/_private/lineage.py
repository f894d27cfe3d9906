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


def lineage_tags(data_fingerprint: str, run_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Tags that make every version traceable to its data version, code and libraries (``rayml.*``)."""
    tags = {
        "rayml.data_fingerprint": data_fingerprint,
        "rayml.git_commit": git_commit(),
        "rayml.run_id": run_id,
    }
    tags.update({f"rayml.{k}_version": v for k, v in library_versions().items()})
    tags.update(extra or {})
    return tags
