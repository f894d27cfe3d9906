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
change the application through :func:`apply_spec` or :func:`update_spec`, so no change undoes another:

- every writer holds the application's spec lock (:mod:`rayml.serve._speclock`) while it reads, checks and deploys;
- the spec carries a ``revision``; a change is made against the revision it read (compare-and-swap): if the running
  spec is at another revision when the change is committed, or moves between two stages, the writer gets a
  :class:`~rayml.errors.SpecConflictError` and changes nothing more. Each deployed stage takes the next revision.
  ``rayml serve up`` refuses then (rerun it); :func:`update_spec` (rollout steps, ``rayml rollback``) reads the spec
  under the lock and re-applies its change to the fresh one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayml.errors import ServeDeployError, SpecConflictError, UserError
from rayml.serve._spec import INGRESS, AppSpec, ModelSpec, VersionSpec
from rayml.serve._speclock import SpecLock, writer

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


def _revision(spec: AppSpec | None) -> int:
    return spec.revision if spec is not None else 0


def _check_revision(app_name: str, expected: int, running: AppSpec | None, what: str) -> None:
    if _revision(running) != expected:
        now = "is not deployed any more" if running is None else f"is at revision {_revision(running)}"
        raise SpecConflictError(
            f"application {app_name!r} changed while {what}: it {now}, the change was made against revision {expected}",
            hint="another writer (`rayml serve up`, a rollout step, `rayml rollback`) changed it first; nothing of this "
            "change that was not deployed yet was applied. See `rayml serve status`, then run the command again",
        )


def _commit(spec: AppSpec, running: AppSpec | None, timeout_s: float, drain_s: float, lock: SpecLock) -> list[AppSpec]:
    """Deploy ``spec`` over ``running`` in stages, under ``lock``; ``spec.revision`` must be ``running``'s."""
    _check_revision(spec.app_name, spec.revision, running, "this change was prepared")
    stages = plan_stages(_without_failed(running, spec), spec)
    stages = [s.model_copy(update={"revision": spec.revision + i + 1}) for i, s in enumerate(stages)]
    for i, stage in enumerate(stages):
        if i > 0:  # the lock may have expired (a frozen writer): a change in between must not be overwritten
            lock.check()
            _check_revision(spec.app_name, stages[i - 1].revision, _settled_spec(stages[i - 1]), "it was deployed in stages")
        if i == len(stages) - 1 and i > 0 and _keyed(stages[i - 1]) - _keyed(stage):
            time.sleep(drain_s)  # requests already routed to a version that is going away finish first
        _deploy_once(stage, timeout_s)
    return stages


def _settled_spec(deployed: AppSpec, wait_s: float = 2.0) -> AppSpec | None:
    """The running spec, read again for a moment while it still shows the revision before ``deployed`` (Serve's view
    of a deployment's config may trail its deploy call by a control-loop tick)."""
    deadline = time.monotonic() + wait_s
    while True:
        running = current_spec(deployed.app_name)
        if _revision(running) != deployed.revision - 1 or time.monotonic() >= deadline:
            return running
        time.sleep(0.1)


def apply_spec(spec: AppSpec, timeout_s: float, drain_s: float = DRAIN_S, action: str = "change") -> list[AppSpec]:
    """Move the running application to ``spec`` in stages (see the module docstring); returns the stages deployed.

    Compare-and-swap: ``spec.revision`` is the revision of the running spec the change was made from (a spec read
    with :func:`current_spec` and edited keeps it; a new application's is 0). Waits up to ``timeout_s`` for another
    writer's change to finish.

    Raises:
        SpecConflictError: the running spec is at another revision (someone changed it since it was read), or another
            writer held the application longer than ``timeout_s``.
        ServeDeployError: a stage did not come up.
    """
    with SpecLock(spec.app_name, writer(action), wait_s=timeout_s) as lock:
        return _commit(spec, current_spec(spec.app_name), timeout_s, drain_s, lock)


def update_spec(
    app_name: str,
    change: Callable[[AppSpec], AppSpec],
    timeout_s: float,
    drain_s: float = DRAIN_S,
    action: str = "change",
    attempts: int = 3,
) -> AppSpec:
    """Read the running spec, ``change`` it and deploy the result, all under the application's spec lock.

    A writer that only changes its own part (a rollout step: one model's weights) goes through here: its change is
    re-applied to whatever the spec is when it holds the lock, so it neither undoes nor is undone by another writer.
    Should the spec still move under it (the lock expired), it re-reads and re-applies, ``attempts`` times in all.

    Args:
        app_name: the application.
        change: a pure function of the running spec (may raise a UserError when the change no longer fits it).
        timeout_s: per stage, and the longest wait for another writer.
        drain_s: see :func:`apply_spec`.
        action: what the writer does (for other writers' messages).
        attempts: tries when the spec moves under the change.

    Returns:
        The spec deployed (its last stage).

    Raises:
        UserError: the application is not running, or ``change`` refused.
        SpecConflictError: the spec kept moving, or another writer held it longer than ``timeout_s``.
    """
    for attempt in range(1, attempts + 1):
        with SpecLock(app_name, writer(action), wait_s=timeout_s) as lock:
            running = current_spec(app_name)
            if running is None:
                raise UserError(
                    f"application {app_name!r} is not running",
                    hint="deploy it first: rayml serve up --config FILE (see serve.app_name)",
                )
            try:
                return _commit(change(running), running, timeout_s, drain_s, lock)[-1]
            except SpecConflictError as e:
                if attempt == attempts:
                    raise
                logger.warning("%s; re-reading the spec and applying the change again (try %d)", e.message, attempt + 1)
    raise AssertionError("unreachable: the last attempt returns or raises")


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
