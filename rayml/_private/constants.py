"""Every environment override rayml reads lives here, parsed by typed helpers.

``os.environ.get(x) or default`` turns a legitimate ``0`` into the default (Ray Serve #54944); these helpers do not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, overload

from rayml.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import SecretStr

ENV_PREFIX = "RAYML_"


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: str | None = None) -> str | None: ...
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


def default_capture_dir() -> str:
    """Where captured predictions and ground-truth labels go unless a config names a destination."""
    return str(rayml_home() / "captures")


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


def lease_timeout_s() -> int:
    """``RAYML_LEASE_TIMEOUT_S``: a pipeline run's or batch output's lease whose last heartbeat is older than this is
    stale and may be taken over (default 60; the holder renews it every quarter of it)."""
    return max(1, env_int("RAYML_LEASE_TIMEOUT_S", 60))


FAIL_SEGMENT_KILL = -2  # fail_segments(): the worker training this segment dies (SIGKILL)


def fail_segments() -> dict[str, int]:
    """``RAYML_FAIL_SEGMENTS``: test-only; many-models training raises for these segments.

    Comma-separated segment keys; ``KEY@N`` fails only the first N attempts (a transient failure that a retry cures),
    ``KEY@kill`` SIGKILLs the worker process that trains it (:data:`FAIL_SEGMENT_KILL`), a bare ``KEY`` fails every
    attempt. Example: ``store_003,store_005@1``. Read on the driver and passed to the training tasks, so it works
    with a Ray cluster that was started before the variable was set.
    """
    raw = env_str("RAYML_FAIL_SEGMENTS")
    out: dict[str, int] = {}
    for item in filter(None, (i.strip() for i in (raw or "").split(","))):
        key, sep, attempts = item.rpartition("@")
        if not sep:
            out[item] = -1
            continue
        if attempts == "kill":
            out[key] = FAIL_SEGMENT_KILL
            continue
        if not attempts.isdigit():
            raise ConfigError(
                f"RAYML_FAIL_SEGMENTS item {item!r}: {attempts!r} is not a number of attempts",
                hint="write KEY, KEY@N or KEY@kill, e.g. store_003,store_005@1",
            )
        out[key] = int(attempts)
    return out


def serve_api_keys() -> list[tuple[SecretStr, list[str] | None]]:
    """``RAYML_SERVE_API_KEYS``: serving API keys, so secrets need not sit in config files.

    Comma-separated entries, each ``KEY`` (every model) or ``KEY:MODEL|MODEL`` (only those models), e.g.
    ``s3cr3t-key-for-all-models,k3y-for-sales-only:sales-model``. Unset or empty = no keys from the environment.
    The keys come back as ``SecretStr`` (printed as ``**********``); errors never quote them.
    """
    from pydantic import SecretStr

    raw = env_str("RAYML_SERVE_API_KEYS")
    out: list[tuple[SecretStr, list[str] | None]] = []
    for item in filter(None, (i.strip() for i in (raw or "").split(","))):
        key, sep, models = item.partition(":")
        scope = [m.strip() for m in models.split("|") if m.strip()] if sep else None
        if len(key) < 16 or (sep and not scope):
            raise ConfigError(
                "RAYML_SERVE_API_KEYS has an entry that is too short (keys need 16+ characters) or has an empty model list",
                hint="write KEY or KEY:MODEL|MODEL, comma-separated, e.g. k3y-with-16-chars-or-more:sales-model",
            )
        out.append((SecretStr(key), scope))
    return out


def serve_head_dir() -> Path:
    """Temp dir of the local Ray that `rayml serve up` starts when no cluster is given (one per ``$RAYML_HOME``).

    Kept short (Unix socket paths under it must fit in 107 bytes) and out of /tmp/ray, so a plain ``ray.init()``
    elsewhere on the machine never attaches to it by accident.
    """
    import hashlib

    digest = hashlib.sha256(str(rayml_home()).encode()).hexdigest()[:10]
    return Path(env_str("RAYML_SERVE_RAY_DIR", f"/tmp/rayml-serve-{digest}"))
