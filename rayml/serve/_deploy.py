"""Deploy, inspect and remove a rayml Serve application without dropping requests.

A change is applied in stages, each one a redeploy of the whole application in which only the ingress's
``user_config`` or the set of version deployments differs (everything else keeps its replicas):

1. new versions are added with weight 0 and the call waits until their replicas are up;
2. the new weights and shadow are applied (the ingress reconfigures; no replica restarts);
3. versions that are gone are removed; Serve drains their in-flight requests before stopping them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rayml.config import ServeConfig, ServeJobConfig
from rayml.errors import RaymlError, UserError
from rayml.serve._cluster import connect, started_local_head, stop_local_head
from rayml.serve._spec import INGRESS, AppSpec, ModelSpec, VersionSpec, resolve_spec

logger = logging.getLogger("rayml.serve")

DRAIN_S = 2.0  # after traffic leaves a version and before its deployment is removed (in-flight requests finish)


class ServeDeployError(RaymlError):
    """Serve could not bring the application up (e.g. a replica constructor failed); the message says why."""


@dataclass
class DeploymentState:
    """One deployment as `rayml serve status` shows it."""

    name: str
    status: str
    replicas: dict[str, int]
    message: str
    target_replicas: int = 0
    dead_replicas: int = 0


@dataclass
class AppState:
    """A deployed rayml application: Serve's view of it plus its routing table."""

    name: str
    status: str
    message: str
    url: str
    deployments: list[DeploymentState] = field(default_factory=list)
    spec: AppSpec | None = None

    @property
    def healthy(self) -> bool:
        return self.status == "RUNNING" and all(d.status == "HEALTHY" for d in self.deployments)


def _client() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False)


def start_serve(cfg: ServeConfig) -> None:
    """Start Serve's proxies on ``host:port`` (or check that the running ones listen there)."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    http = _client().http_config
    if (http.host, http.port) != (cfg.host, cfg.port):
        raise UserError(
            f"Ray Serve on this cluster already listens on {http.host}:{http.port}; serve.host/port say {cfg.host}:{cfg.port}",
            hint=f"use --set serve.host={http.host} --set serve.port={http.port}, or remove every application first",
        )


def current_spec(app_name: str) -> AppSpec | None:
    """The spec the running application was deployed with (its ingress's user_config), or None."""
    client = _client()
    if client is None:
        return None
    from ray.serve.schema import ServeInstanceDetails

    details = ServeInstanceDetails(**client.get_serve_details())
    app = details.applications.get(app_name)
    if app is None or INGRESS not in app.deployments:
        return None
    user_config = app.deployments[INGRESS].deployment_config.user_config
    return AppSpec.model_validate(user_config) if user_config else None


def _keyed(spec: AppSpec) -> set[tuple[str, int]]:
    return {(m.name, v.version) for m in spec.models.values() for v in m.versions}


def _with_versions_of(routing: AppSpec, extra: AppSpec, base: AppSpec) -> AppSpec:
    """``routing``'s models and weights plus every version only ``extra`` has, at weight 0 (``base``'s other settings)."""
    models: dict[str, ModelSpec] = {}
    for name in list(routing.models) + [n for n in extra.models if n not in routing.models]:
        r, e = routing.models.get(name), extra.models.get(name)
        if r is None or e is None:
            models[name] = r or e
            continue
        have = {v.version for v in r.versions}
        added = [v.model_copy(update={"weight": 0.0}) for v in e.versions if v.version not in have]
        versions: list[VersionSpec] = sorted([*r.versions, *added], key=lambda v: v.version)
        models[name] = r.model_copy(update={"versions": versions})
    return base.model_copy(update={"models": models})


def plan_stages(old: AppSpec | None, new: AppSpec) -> list[AppSpec]:
    """The specs to deploy in order to go from ``old`` to ``new`` without sending traffic to a version that is not up
    yet or taking a version away while it still has traffic."""
    if old is None:
        return [new]
    stages = []
    if _keyed(new) - _keyed(old):
        stages.append(_with_versions_of(old, new, new))
    if _keyed(old) - _keyed(new):
        stages.append(_with_versions_of(new, old, new))
    stages.append(new)
    out: list[AppSpec] = []
    for s in stages:
        if not out or s != out[-1]:
            out.append(s)
    return out if old != new else [new]


def _deploy_once(spec: AppSpec, timeout_s: float) -> None:
    from ray.serve.api import _run

    from rayml.serve.app import build_application

    _run(build_application(spec), _blocking=False, name=spec.app_name, route_prefix=spec.route_prefix)
    wait_running(spec.app_name, timeout_s)


def wait_running(app_name: str, timeout_s: float) -> AppState:
    """Wait until the application is RUNNING; fail fast, with every replica error, when a deployment fails."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = app_state(app_name)
        if state is not None and state.status == "RUNNING":
            return state
        if state is not None and state.status == "DEPLOY_FAILED":
            raise ServeDeployError(_failure_text(state), hint="`rayml serve status` shows it again; fix it and rerun the command")
        time.sleep(0.5)
    why = _failure_text(state) if state else "the application never appeared"
    raise ServeDeployError(
        f"application {app_name!r} was not running after {timeout_s:g}s: {why}",
        hint="replicas may still be starting (raise serve.deploy_timeout_s) or lack CPUs (lower num_cpus per replica)",
    )


def _failure_text(state: AppState) -> str:
    bad = [d for d in state.deployments if d.status != "HEALTHY"]
    lines = [f"application {state.name!r} is {state.status}: {state.message}".rstrip(": ")]
    lines += [f"  {d.name}: {d.status}: {d.message}" for d in bad if d.message]
    return "\n".join(lines)


def _without_failed(old: AppSpec | None, new: AppSpec) -> AppSpec | None:
    """``old`` minus the versions that are going away and whose deployment failed: nothing to drain, remove at once."""
    state = app_state(new.app_name) if old is not None else None
    if old is None or state is None:
        return old
    failed = {d.name for d in state.deployments if d.status in ("DEPLOY_FAILED", "UNHEALTHY")}
    keep = _keyed(new)
    models = {}
    for name, m in old.models.items():
        versions = [v for v in m.versions if v.deployment not in failed or (name, v.version) in keep]
        if versions:
            models[name] = m.model_copy(update={"versions": versions})
    return old.model_copy(update={"models": models})


def apply_spec(spec: AppSpec, timeout_s: float, drain_s: float = DRAIN_S) -> list[AppSpec]:
    """Move the running application to ``spec`` in stages (see the module docstring); returns the stages deployed."""
    stages = plan_stages(_without_failed(current_spec(spec.app_name), spec), spec)
    for i, stage in enumerate(stages):
        if i == len(stages) - 1 and i > 0 and _keyed(stages[i - 1]) - _keyed(stage):
            time.sleep(drain_s)  # requests already routed to a version that is going away finish first
        _deploy_once(stage, timeout_s)
    return stages


def deploy(cfg: ServeJobConfig, registry: Any = None, faults: dict[str, str] | None = None) -> AppState:
    """Deploy (or update in place) the application ``cfg.serve`` describes.

    Args:
        cfg: the serve job config.
        registry: a :class:`rayml.registry.Registry` (default: from ``cfg.registry``).
        faults: test-only fault hooks per ``"name:version"`` (see :mod:`rayml.serve._model`).

    Returns:
        The application's state once it is running.

    Raises:
        UserError: an unknown model or version, or invalid weights.
        ServeDeployError: Serve could not start a deployment (the message holds the replica errors).
    """
    from rayml.registry import Registry

    registry = registry or Registry(cfg.registry.tracking_uri)
    spec = resolve_spec(cfg, registry, faults=faults)
    connect(start_local=True, metrics_export_port=cfg.serve.metrics_export_port)
    start_serve(cfg.serve)
    t0 = time.perf_counter()
    stages = apply_spec(spec, cfg.serve.deploy_timeout_s)
    logger.info("application %s deployed in %d stage(s), %.1fs", spec.app_name, len(stages), time.perf_counter() - t0)
    state = app_state(spec.app_name)
    if state is None:  # deleted by someone else in between
        raise ServeDeployError(f"application {spec.app_name!r} disappeared right after it was deployed")
    return state


def app_state(app_name: str) -> AppState | None:
    """Serve's view of one application (None when it does not exist)."""
    client = _client()
    if client is None:
        return None
    from ray.serve.schema import ServeInstanceDetails

    details = ServeInstanceDetails(**client.get_serve_details())
    app = details.applications.get(app_name)
    if app is None:
        return None
    deployments = []
    for name, d in sorted(app.deployments.items()):
        counts: dict[str, int] = {}
        for r in d.replicas:
            counts[str(r.state.value)] = counts.get(str(r.state.value), 0) + 1
        deployments.append(
            DeploymentState(
                name=name,
                status=str(d.status.value),
                replicas=counts,
                message=d.message or "",
                target_replicas=d.target_num_replicas,
                dead_replicas=len(d.recent_dead_replicas),
            )
        )
    spec = None
    if INGRESS in app.deployments and app.deployments[INGRESS].deployment_config.user_config:
        spec = AppSpec.model_validate(app.deployments[INGRESS].deployment_config.user_config)
    http = details.http_options
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    prefix = (app.route_prefix or "/").rstrip("/")
    return AppState(
        name=app_name,
        status=str(app.status.value),
        message=app.message or "",
        url=f"http://{host}:{http.port}{prefix}",
        deployments=deployments,
        spec=spec,
    )


def status(cfg: ServeConfig) -> AppState | None:
    """Connect (without starting anything) and return the application's state."""
    connect(start_local=False)
    return app_state(cfg.app_name)


def _stop_rollouts(app_name: str) -> None:
    """Stop the rollout controllers of an application that is going away (their state files stay, as a record)."""
    import ray

    from rayml.serve._rollout_runtime import NAMESPACE, actor_name

    prefix = actor_name(app_name, "")
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry.get("name", "").startswith(prefix):
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE), no_restart=True)
            logger.info("stopped rollout controller %s", entry["name"])


def down(cfg: ServeConfig, keep_ray: bool = False) -> tuple[bool, bool]:
    """Delete the application; stop the local Ray rayml started once no application is left (unless ``keep_ray``).

    Returns:
        (whether the application existed, whether the local Ray was stopped).
    """
    from ray import serve

    connect(start_local=False)
    existed = app_state(cfg.app_name) is not None
    _stop_rollouts(cfg.app_name)
    if existed:
        serve.delete(cfg.app_name)
    stopped = False
    if not keep_ray and started_local_head():
        client = _client()
        left = client.get_serve_details().get("applications", {}) if client else {}
        if not left:
            serve.shutdown()
            stop_local_head()
            stopped = True
    return existed, stopped


def drift_status(app_name: str = "rayml", model: str | None = None) -> dict[str, dict[int, dict[str, Any]]]:
    """The online drift of every served version, merged over all replicas: ``{model: {version: report}}``.

    A report has ``status`` (ok | warn | alert | insufficient_data), ``rows`` and ``replicas`` of the window shown,
    ``window_start``/``window_end`` (wall-clock seconds), ``complete`` (the last complete window, else the current
    one), ``features`` (per feature: ``metrics`` psi/js or linf/js, ``status``, ``rows``, ``quality``),
    ``prediction`` (prediction drift), ``drifted_features`` and ``warned_features``; model sets add ``segments``.
    Versions that have answered no rows in the last two windows, or have no reference bins, are absent.

    Args:
        app_name: the Serve application (``serve.app_name``).
        model: only this model (default: all).

    Raises:
        ServeNotRunningError: no serving Ray to connect to.

    Example:
        >>> from rayml.serve import drift_status
        >>> drift_status("rayml")["sales-model"][2]["drifted_features"]   # ['price']
    """
    from ray import serve

    from rayml.serve._spec import STATS

    connect(start_local=False)
    if app_state(app_name) is None:
        return {}
    return serve.get_deployment_handle(STATS, app_name).drift_report.remote(model).result(timeout_s=30)
