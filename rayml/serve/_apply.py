"""Apply an :class:`~rayml.serve._spec.AppSpec` to the running application without dropping requests, and read
Serve's view of it back.

A change is applied in stages, each one a redeploy of the whole application in which only the ingress's
``user_config`` or the set of version deployments differs (everything else keeps its replicas):

1. new versions are added with weight 0 and the call waits until their replicas are up (a model placed in the
   ingress: until every ingress replica has loaded them; a version it could not load fails the call here, before it
   gets traffic);
2. the new weights and shadow are applied (the ingress reconfigures; no replica restarts);
3. versions that are gone are removed; Serve drains their in-flight requests before stopping them.

Both the serve commands (:mod:`rayml.serve._deploy`) and the rollout controller (:mod:`rayml.serve._rollout_runtime`)
change the application through :func:`apply_spec`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rayml.errors import ServeDeployError
from rayml.serve._spec import INGRESS, AppSpec, ModelSpec, VersionSpec

logger = logging.getLogger("rayml.serve")

DRAIN_S = 2.0  # after traffic leaves a version and before its deployment is removed (in-flight requests finish)


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
    """A deployed rayml application: Serve's view of it plus its routing table.

    ``status`` is Serve's (``RUNNING``, ``DEPLOYING``, ``DEPLOY_FAILED`` ...); ``spec`` is the routing table it was
    deployed with (models, versions, weights, shadow); ``url`` is where its HTTP routes start.
    """

    name: str
    status: str
    message: str
    url: str
    deployments: list[DeploymentState] = field(default_factory=list)
    spec: AppSpec | None = None

    @property
    def healthy(self) -> bool:
        """Running, with every deployment healthy."""
        return self.status == "RUNNING" and all(d.status == "HEALTHY" for d in self.deployments)


def serve_client() -> Any:
    """Serve's client in this process (None when no Serve runs on the connected Ray)."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False)


def current_spec(app_name: str) -> AppSpec | None:
    """The spec the running application was deployed with (its ingress's user_config), or None."""
    client = serve_client()
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
            only = r or e
            assert only is not None, "name is a model of routing or extra"
            models[name] = only
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
    failed = inline_errors(spec)
    if failed:
        lines = "\n".join(f"  {d}: {why}" for d, why in sorted(failed.items()))
        raise ServeDeployError(
            f"application {spec.app_name!r}: the ingress could not load every version placed in it:\n{lines}",
            hint="fix or re-register the version (it never received traffic), or serve the model with placement: replicas",
        )


def inline_errors(spec: AppSpec) -> dict[str, str]:
    """Versions of ``spec`` placed in the ingress that the ingress could not load: deployment name -> why.

    Asked of one ingress replica (every replica loads the same files); empty when no model is placed in the ingress.
    """
    wanted = {v.deployment for m in spec.models.values() if m.placement == "ingress" for v in m.versions}
    if not wanted:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    def ask() -> dict[str, str]:
        return serve.get_deployment_handle(INGRESS, spec.app_name).inline_errors.remote().result(timeout_s=60)

    # in a thread: a blocking handle call refuses to run on a thread with an event loop (a notebook's, for one)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayml-ingress-ask") as pool:
        errors = pool.submit(ask).result()
    return {d: why for d, why in errors.items() if d in wanted}


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
    try:
        failed |= set(inline_errors(old))
    except Exception as e:  # the ingress cannot tell: keep every version (it is drained, not dropped)
        logger.warning("could not ask the ingress which versions failed to load: %s", e)
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


def app_state(app_name: str) -> AppState | None:
    """Serve's view of one application (None when it does not exist)."""
    client = serve_client()
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
    assert http is not None, "a running Serve instance reports its HTTP options"
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
