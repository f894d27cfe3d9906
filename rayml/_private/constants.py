"""Every environment override rayml reads lives here, parsed by typed helpers.

``os.environ.get(x) or default`` turns a legitimate ``0`` into the default (Ray Serve #54944); these helpers do not.
"""

from __future__ import annotations

import os
from pathlib import Path

from rayml.errors import ConfigError

ENV_PREFIX = "RAYML_"


def env_str(name: str, default: str | None = None) -> str | None:
    """The value of ``name`` if it is set (even to an empty string), else ``default``."""
    value = os.environ.get(name)
    return default if value is None else value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer", hint=f"unset {name} or give it a whole number"
        ) from e


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"environment variable {name}={raw!r} is not a boolean", hint="use 1/0, true/false, yes/no or on/off")


def rayml_home() -> Path:
    """``$RAYML_HOME`` (default ``~/.rayml``): the root of every embedded default (MLflow DB, artifacts, runs)."""
    return Path(env_str("RAYML_HOME", str(Path.home() / ".rayml"))).expanduser().resolve()


def set_rayml_home(path: str | Path) -> Path:
    """Point ``$RAYML_HOME`` at ``path`` for this process (and the Ray workers it starts afterwards)."""
    resolved = Path(path).expanduser().resolve()
    os.environ["RAYML_HOME"] = str(resolved)
    return resolved


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else MLflow on SQLite under ``$RAYML_HOME``."""
    uri = env_str("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{rayml_home() / 'mlflow.db'}"


def default_storage_path() -> str:
    """Where checkpoints and run state go unless the config names a storage URI."""
    return str(rayml_home() / "runs")


def quiet_mlflow() -> None:
    """MLflow's migration logs and download progress bars are noise in rayml's output (unless the user set them)."""
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def git_commit_override() -> str | None:
    """``RAYML_GIT_COMMIT``: for Ray jobs whose working_dir has no ``.git``, the submitter passes the commit in."""
    return env_str("RAYML_GIT_COMMIT")


def fault_injection() -> str | None:
    """``RAYML_FAULT_INJECT``: test-only fault injection (see ``rayml._private.faults``)."""
    return env_str("RAYML_FAULT_INJECT")


def ray_address() -> str | None:
    return env_str("RAY_ADDRESS")


def ray_num_cpus() -> int | None:
    """``RAYML_RAY_NUM_CPUS``: CPUs of a local Ray started by rayml (default: Ray's own detection)."""
    value = env_int("RAYML_RAY_NUM_CPUS", 0)
    return value or None
