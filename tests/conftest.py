"""Shared fixtures: markers from the path, an isolated $RAYML_HOME, one local Ray per session, Ray Serve per module
(cleaned between tests), fresh registries."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Isolate every test run from the user's ~/.rayml and MLflow server before anything reads them.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="rayml-test-home-"))
os.environ["RAYML_HOME"] = str(_SESSION_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("RAYML_FAULT_INJECT", None)
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[1]))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 cores here: num_cpus=4 lets a trainer and its data tasks co-exist)."""
    import ray

    from rayml._private.ray_session import quiet_ray_data

    quiet_ray_data()
    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            # export application metrics every second (default 10 s) so tests can read them from the metrics port
            _system_config={"metrics_report_interval_ms": 1000},
        )
    yield ray
    ray.shutdown()


def remove_serve_apps() -> None:
    """Stop every rollout controller and delete every Serve application (whatever a test left behind)."""
    from ray import serve

    from rayml.serve._rollout_runtime import stop_controllers

    for app in serve.status().applications:
        stop_controllers(app)  # detached actors: they outlive the application and Serve
        serve.delete(app)


@pytest.fixture(scope="module")
def serve_http(ray_session):
    """Ray Serve's HTTP proxy on a free local port for one test module (Serve starts in seconds, an app in tens)."""
    from ray import serve

    from rayml._private.net import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield {"port": port, "url": f"http://127.0.0.1:{port}"}
    remove_serve_apps()
    serve.shutdown()


@pytest.fixture
def serve_instance(serve_http):
    """``serve_http`` for one test: every application and rollout controller the test leaves is removed after it.

    Modules whose tests share one application (deploying it costs a replica start per version) use ``serve_http``
    instead, and start each test by moving that application to the state the test asserts on.
    """
    yield serve_http
    remove_serve_apps()


@pytest.fixture(scope="session")
def _registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite DB with its migrations applied once; each test gets a copy (migrations take seconds)."""
    from rayml.registry import Registry

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Registry(f"sqlite:///{path}").client.search_registered_models()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, _registry_template: Path) -> str:
    """A fresh, empty MLflow tracking/registry URI for one test."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_registry_template, db)
    return f"sqlite:///{db}"


@pytest.fixture
def registry(tracking_uri: str):
    from rayml.registry import Registry

    return Registry(tracking_uri)
