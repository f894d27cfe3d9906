"""Where rollouts run: a detached Ray actor per (application, model), plus the operator commands around it.

Why a detached actor and not the CLI process: a rollout lasts minutes to hours and must not stop when the laptop
that started it closes; the actor lives in the Serve cluster next to the application it changes, Ray restarts it
if its process dies (``max_restarts=-1``) and it resumes from its persisted state, and every CLI command (status,
approve, promote, rollback) finds it by name. `rayml rollout start` follows its progress by default; ``--detach``
returns at once. The decision logic itself is plain Python (:mod:`rayml.serve._rollout`).

The public commands (:func:`start_rollout`, :func:`rollout_status`, :func:`approve`, :func:`override`,
:func:`rollback_to_previous`, :func:`traffic_stats`) take the serve job config whose ``serve.app_name`` names the
application, and connect to the serving Ray themselves.
"""

from __future__ import annotations

import getpass
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from rayml._private import constants, faults
from rayml.config import ServeJobConfig
from rayml.errors import SpecConflictError, UserError
from rayml.serve._apply import apply_spec, current_spec, update_spec
from rayml.serve._cluster import connect, outside_event_loop
from rayml.serve._rollout import ROLLED_BACK, RolloutController, RolloutState, StateStore, WindowIncompleteError
from rayml.serve._spec import STATS, AppSpec, ModelSpec, ShadowSpec, VersionSpec, deployment_name
from rayml.serve._stats import VersionStats, by_version

logger = logging.getLogger("rayml.serve")

NAMESPACE = "rayml"


def state_dir(cfg: ServeJobConfig) -> Path:
    return Path(cfg.rollout.state_dir) if cfg.rollout.state_dir else constants.rayml_home() / "rollouts"


def actor_name(app_name: str, model: str) -> str:
    return f"rayml-rollout-{app_name}-{model}"


class ServeTraffic:
    """Applies a model's weights and shadow to the running application (staged, see :mod:`rayml.serve._apply`)."""

    def __init__(self, app_name: str, timeout_s: float) -> None:
        self.app_name, self.timeout_s = app_name, timeout_s

    def apply(self, model: str, weights: dict[int, float], shadow: tuple[int, float] | None, remove: list[int]) -> None:
        # read-modify-write under the application's spec lock: only this model's traffic changes, applied to the spec
        # as it is now, so a concurrent `serve up` or another model's rollout is neither undone nor undoes this
        update_spec(
            self.app_name,
            lambda spec: with_traffic(spec, model, weights, shadow, remove),
            self.timeout_s,
            action=f"rollout step of {model}",
        )


def with_traffic(
    spec: AppSpec, model: str, weights: dict[int, float], shadow: tuple[int, float] | None, remove: list[int]
) -> AppSpec:
    """``spec`` with ``model``'s weights and shadow replaced and ``remove``d versions dropped."""
    m = spec.models.get(model)
    if m is None:
        raise UserError(f"model {model!r} is not served by {spec.app_name!r} any more", hint="see rayml serve status")
    versions = [
        v.model_copy(update={"weight": float(weights.get(v.version, 0.0))}) for v in m.versions if v.version not in remove
    ]
    new_shadow = ShadowSpec(version=shadow[0], percent=shadow[1]) if shadow else None
    models = {**spec.models, model: m.model_copy(update={"versions": versions, "shadow": new_shadow})}
    return spec.model_copy(update={"models": models})


class ServeStats:
    """Reads traffic windows from the application's stats deployment (totals over every ingress replica)."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name

    def totals(self, model: str, since: float, until: float) -> dict[tuple[int, str], VersionStats]:
        """What the stats deployment holds for the window (partial if its replica restarted after ``since``)."""
        from ray import serve

        handle = serve.get_deployment_handle(STATS, self.app_name)
        return by_version(handle.window.remote(model, since, until).result(timeout_s=30))

    def window(self, model: str, since: float, until: float) -> dict[tuple[int, str], VersionStats]:
        """:meth:`totals`, for a rollout decision: raises :class:`WindowIncompleteError` if part of it is gone."""
        from ray import serve

        totals = self.totals(model, since, until)
        # asked after the window: a restart at any point before this answer shows as a later start
        started_at = serve.get_deployment_handle(STATS, self.app_name).started_at.remote().result(timeout_s=30)
        if started_at > since:
            raise WindowIncompleteError(started_at)
        return totals


def traffic_stats(
    cfg: ServeJobConfig, model: str, since: float, until: float | None = None
) -> dict[tuple[int, str], VersionStats]:
    """Per-version traffic of a served model over a time window, summed over every ingress replica.

    Ingress replicas flush their counts every ``serve.stats_flush_interval_s`` (1 s by default): wait that long after
    the last request before reading it.

    Args:
        cfg: the serve job config (``serve.app_name`` names the application).
        model: the served model's name.
        since: start of the window (wall-clock seconds, ``time.time()``).
        until: end of the window; None = now.

    Returns:
        ``(version, route) -> VersionStats``; route is ``primary`` (weighted traffic), ``pinned`` (version URLs) or
        ``shadow`` (mirrored calls: ``compared_rows`` and ``disagreement(task)`` compare them with the primary answer).

    Raises:
        ServeNotRunningError: no serving Ray to connect to.

    Example:
        >>> stats = traffic_stats(cfg, "sales-model", since=t0)
        >>> stats[(2, "shadow")].disagreement("regression")
        0.043
    """
    connect(start_local=False)
    app_name = cfg.serve.app_name
    return outside_event_loop(
        lambda: ServeStats(app_name).totals(model, since, time.time() + 1 if until is None else until)
    )


class RegistryPromoter:
    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def promote(self, model: str, version: int, baseline: int) -> dict[str, int]:
        from rayml.registry import PREVIOUS, PRODUCTION, Registry

        registry = Registry(self.tracking_uri)
        moved = registry.set_alias(model, version, PRODUCTION)
        if moved.get(PREVIOUS) is None and baseline != version:
            # the baseline served all traffic without being `production` (e.g. deployed by number): it is still the
            # version a one-command rollback must return to
            moved.update(registry.set_alias(model, baseline, PREVIOUS))
        return moved


# Ray's typing of ray.remote(...) lists task options only (not max_concurrency); and mypy keeps a class decorator's
# input type (python/mypy#3135), so it sees RolloutActor as the plain class, without .options/.remote.
@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4)  # type: ignore[call-overload]
class RolloutActor:
    """Drives one rollout in a background thread; resumes from the state file when Ray restarts it.

    ``_faults`` carries the test hook's serve faults of the process that started the rollout (see
    :mod:`rayml._private.faults`): this actor redeploys the application, and a redeploy must keep them.
    """

    def __init__(
        self, root: str, app_name: str, model: str, tracking_uri: str, timeout_s: float, _faults: dict[str, str] | None = None
    ) -> None:
        logging.getLogger("rayml").setLevel(logging.INFO)
        if _faults:
            faults.set_serve_faults(_faults)
        self.store = StateStore(root, app_name, model)
        state = self.store.load()
        if state is None:
            raise RuntimeError(f"no rollout state at {self.store.state_path}")
        self.controller = RolloutController(
            state, self.store, ServeTraffic(app_name, timeout_s), ServeStats(app_name), RegistryPromoter(tracking_uri)
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="rollout").start()

    def _loop(self) -> None:
        poll = self.controller.state.cfg.poll_interval_s
        while not self._stop.is_set():
            with self._lock:
                state = self.controller.state
                try:
                    self.controller.tick()
                    state.last_error = None
                except Exception as e:  # Serve busy, a redeploy timed out: keep the state, retry on the next tick
                    logger.exception("rollout tick failed; retrying")
                    state.last_error = f"{type(e).__name__}: {e}"
                    self.store.save(state)
                done = state.done
            if done:
                break
            self._stop.wait(poll)
        # finished: leave for good (no restart), so a later rollout of this model can take the name
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return self.controller.state.to_dict()

    def approve(self, by: str, note: str) -> dict[str, Any]:
        with self._lock:
            return self.controller.approve(by, note)

    def request(self, action: str, by: str, reason: str) -> None:
        with self._lock:
            self.controller.request(action, by, reason)


def _require_spec(app_name: str) -> AppSpec:
    spec = current_spec(app_name)
    if spec is None:
        raise UserError(
            f"application {app_name!r} is not running", hint="deploy it first: rayml serve up --config FILE (see serve.app_name)"
        )
    return spec


def _actor(app_name: str, model: str) -> Any | None:
    try:
        return ray.get_actor(actor_name(app_name, model), namespace=NAMESPACE)
    except ValueError:
        return None


def start_rollout(
    cfg: ServeJobConfig, model: str, candidate: int | str, registry: Any = None, _retry_left: int = 2
) -> RolloutState:
    """Deploy ``candidate`` next to the current version (no traffic yet) and start the controller actor.

    Resumes instead when a rollout of the same candidate is already under way (e.g. after the cluster restarted).
    The controller then goes on in the cluster (``cfg.rollout`` sets its steps and thresholds); follow it with
    :func:`rollout_status`.

    Args:
        cfg: the serve job config (``serve.app_name`` names the application).
        model: the served model's name.
        candidate: a version number or an alias of ``model``.
        registry: a :class:`rayml.registry.Registry` (default: from ``cfg.registry``).

    Returns:
        The rollout's state as it started (or as it is, when resumed).

    Raises:
        UserError: the app or model is not served, the model already splits traffic, the candidate is the version
            already serving or of another kind or task, or another rollout of the model is under way.
        SpecConflictError: the application kept changing while the candidate was being deployed (each time, the
            checks above are made again on the new spec).
        ServeNotRunningError: no serving Ray to connect to.

    Example:
        >>> start_rollout(cfg, "sales-model", 3).phase
        'canary'
    """
    from rayml.registry import PREVIOUS, Registry

    connect(start_local=False)
    registry = registry or Registry(cfg.registry.tracking_uri)
    app = cfg.serve.app_name
    spec = _require_spec(app)
    if model not in spec.models:
        raise UserError(f"model {model!r} is not served by {app!r}", hint=f"served: {', '.join(sorted(spec.models))}")
    loaded = registry.load(f"{model}:{candidate}" if isinstance(candidate, int) else f"{model}@{candidate}")
    cand = loaded.info.version
    store = StateStore(state_dir(cfg), app, model)
    existing = store.load()
    if existing is not None and not existing.done:
        if existing.candidate != cand:
            raise UserError(
                f"a rollout of {model} v{existing.candidate} is under way ({existing.phase})",
                hint=f"wait for it, or end it: rayml rollout rollback --model {model}",
            )
        _ensure_actor(cfg, model, registry.tracking_uri)
        return existing
    m = spec.models[model]
    baseline = _sole_live_version(model, m)
    if cand == baseline:
        raise UserError(f"v{cand} of {model} already serves all traffic", hint="name another version as --candidate")
    if loaded.kind != m.kind:
        raise UserError(f"{model}:{cand} is a {loaded.kind}, the served versions are {m.kind}s")
    if loaded.model_dir.task != m.task:
        raise UserError(
            f"{model}:{cand} is a {loaded.model_dir.task} model, the served versions are {m.task} models",
            hint="a rollout compares the candidate with the version it replaces: roll out a version of the same task",
        )
    try:
        previous: int | None = registry.resolve(f"{model}@{PREVIOUS}").version
    except UserError:
        previous = None
    staged = _with_candidate(spec, model, cand, str(loaded.path), keep={baseline, cand, previous})
    try:  # compare-and-swap against the spec read above; the candidate is up (no traffic) before the controller starts
        apply_spec(staged, cfg.serve.deploy_timeout_s, action=f"rayml rollout start --model {model}")
    except SpecConflictError:
        if _retry_left <= 0:
            raise
        logger.warning("application %s changed while the rollout was being prepared; checking it again", app)
        return start_rollout(cfg, model, candidate, registry, _retry_left=_retry_left - 1)
    state = RolloutState(
        model=model,
        app_name=app,
        baseline=baseline,
        candidate=cand,
        config=cfg.rollout.model_dump(mode="json"),
        task=m.task,
        settle_s=spec.stats_flush_interval_s + 1.0,
    )
    controller = RolloutController(
        state, store, ServeTraffic(app, cfg.serve.deploy_timeout_s), ServeStats(app), RegistryPromoter(registry.tracking_uri)
    )
    controller.start()
    _ensure_actor(cfg, model, registry.tracking_uri)
    return state


def _sole_live_version(model: str, m: ModelSpec) -> int:
    """The one version that takes all of ``model``'s traffic (a rollout starts from there)."""
    live = {v.version: v.weight for v in m.versions if v.weight > 0}
    if len(live) != 1:
        split = ", ".join(f"v{v}={w:g}" for v, w in sorted(live.items()))
        raise UserError(
            f"model {model} already splits its traffic ({split}); a rollout starts from one version with all traffic",
            hint="send all traffic to one version first (serve.models weights in the config, then rayml serve up)",
        )
    return next(iter(live))


def _with_candidate(spec: AppSpec, model: str, cand: int, local_path: str, keep: set[int | None]) -> AppSpec:
    """``spec`` with ``cand`` deployed at weight 0 next to the versions in ``keep`` (others and the shadow dropped)."""
    m = spec.models[model]
    versions = [v for v in m.versions if v.version in keep and v.version != cand]
    versions.append(
        VersionSpec(version=cand, weight=0.0, deployment=deployment_name(model, cand, m.kind), local_path=local_path)
    )
    updated = m.model_copy(update={"versions": sorted(versions, key=lambda v: v.version), "shadow": None})
    return spec.model_copy(update={"models": {**spec.models, model: updated}})


def _ensure_actor(cfg: ServeJobConfig, model: str, tracking_uri: str) -> Any:
    app = cfg.serve.app_name
    # a ray.remote actor class: mypy sees the plain class (see RolloutActor)
    return RolloutActor.options(  # type: ignore[attr-defined]
        name=actor_name(app, model), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(str(state_dir(cfg)), app, model, tracking_uri, cfg.serve.deploy_timeout_s, _faults=faults.serve_faults())


def load_state(cfg: ServeJobConfig, model: str) -> tuple[RolloutState | None, StateStore]:
    store = StateStore(state_dir(cfg), cfg.serve.app_name, model)
    return store.load(), store


def controller_running(cfg: ServeJobConfig, model: str) -> bool:
    return _actor(cfg.serve.app_name, model) is not None


def rollout_active(cfg: ServeJobConfig, model: str) -> bool:
    """Whether a rollout of ``model`` is under way: its state is not final (a finished controller may still be on its
    way out), or, with no state here, its controller runs."""
    state, _ = load_state(cfg, model)
    return not state.done if state is not None else controller_running(cfg, model)


def end_rollouts(cfg: ServeJobConfig, models: list[str], reason: str) -> None:
    """Stop the rollouts of ``models`` without touching traffic: their controllers are killed (and awaited) first,
    then each state is closed as rolled back with ``reason`` and the audit log records it (event ``superseded``)."""
    app = cfg.serve.app_name
    for model in models:
        actor = _actor(app, model)
        if actor is not None:
            ray.kill(actor, no_restart=True)
            deadline = time.monotonic() + 30
            while _actor(app, model) is not None and time.monotonic() < deadline:
                time.sleep(0.2)  # its last state write must land before ours
        state, store = load_state(cfg, model)
        if state is not None and not state.done:
            state.phase, state.reason, state.finished_at, state.pending = ROLLED_BACK, reason, time.time(), None
            store.save(state)
            record = {"ts": time.time(), "event": "superseded", "model": model, "app": app, "reason": reason, "by": _who()}
            store.audit({**record, "baseline": state.baseline, "candidate": state.candidate, "phase": state.phase})
            logger.warning("rollout of %s v%s ended: %s", model, state.candidate, reason)


@dataclass
class RolloutStatus:
    """A model's rollout as `rayml rollout status` shows it."""

    state: RolloutState | None  # None: no rollout of the model was ever recorded
    history: list[dict[str, Any]]  # the audit log, oldest record first
    audit_path: Path
    controller_running: bool


def rollout_status(cfg: ServeJobConfig, model: str) -> RolloutStatus:
    """The model's last rollout (under way or finished), its audit log and whether its controller runs.

    Args:
        cfg: the serve job config (``serve.app_name`` names the application; ``rollout.state_dir`` where state is).
        model: the served model's name.

    Raises:
        ServeNotRunningError: no serving Ray to connect to.

    Example:
        >>> status = rollout_status(cfg, "sales-model")
        >>> status.state.phase, status.history[-1]["event"]
        ('canary', 'check_passed')
    """
    connect(start_local=False)
    state, store = load_state(cfg, model)
    return RolloutStatus(state, store.history(), store.audit_path, controller_running(cfg, model))


def stop_controllers(app_name: str) -> None:
    """Stop the rollout controllers of an application that is going away (their state files stay, as a record)."""
    prefix = actor_name(app_name, "")
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry.get("name", "").startswith(prefix):
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE), no_restart=True)
            logger.info("stopped rollout controller %s", entry["name"])


def approve(cfg: ServeJobConfig, model: str, note: str = "") -> dict[str, Any]:
    """Approve the current (manual) step of the model's rollout; the approval is recorded with who and when.

    Returns:
        The audit record of the approval.

    Raises:
        UserError: no rollout of the model is under way, or its controller is not running.
        ServeNotRunningError: no serving Ray to connect to.
    """
    connect(start_local=False)
    state, _ = load_state(cfg, model)
    if state is None or state.done:
        raise UserError(f"no rollout of {model} is under way", hint=f"see rayml rollout status --model {model}")
    actor = _actor(cfg.serve.app_name, model)
    if actor is None:
        raise UserError(
            f"the controller of {model}'s rollout is not running",
            hint="rerun `rayml rollout start` with the same --candidate to resume it",
        )
    return ray.get(actor.approve.remote(_who(), note))


def override(cfg: ServeJobConfig, model: str, action: str, reason: str = "", registry: Any = None) -> RolloutState:
    """Promote or roll back the model's rollout by hand (through its controller, or in this process if it is gone).

    Args:
        cfg: the serve job config (``serve.app_name`` names the application).
        model: the served model's name.
        action: ``promote`` or ``rollback``.
        reason: why (recorded in the audit log).
        registry: a :class:`rayml.registry.Registry` (default: from ``cfg.registry``).

    Returns:
        The rollout's final state.

    Raises:
        UserError: no rollout of the model is under way, or the controller did not finish in time.
        ServeNotRunningError: no serving Ray to connect to.
    """
    connect(start_local=False)
    state, store = load_state(cfg, model)
    if state is None or state.done:
        raise UserError(f"no rollout of {model} is under way", hint=f"see rayml rollout status --model {model}")
    actor = _actor(cfg.serve.app_name, model)
    if actor is not None:
        ray.get(actor.request.remote(action, _who(), reason))
        deadline = time.monotonic() + cfg.serve.deploy_timeout_s
        while time.monotonic() < deadline:
            state = store.load()
            if state is not None and state.done:
                return state
            time.sleep(0.5)
        raise UserError(f"the controller did not finish the {action} in time", hint=f"rayml rollout status --model {model}")
    from rayml.registry import Registry

    tracking_uri = (registry or Registry(cfg.registry.tracking_uri)).tracking_uri
    app = cfg.serve.app_name
    controller = RolloutController(
        state, store, ServeTraffic(app, cfg.serve.deploy_timeout_s), ServeStats(app), RegistryPromoter(tracking_uri)
    )
    controller.request(action, _who(), reason)
    controller.tick()
    return controller.state


def rollback_to_previous(cfg: ServeJobConfig, model: str, registry: Any = None) -> tuple[int, int]:
    """Blue/green rollback: ``production`` -> the ``previous`` version, and all traffic to it, in one step.

    Returns:
        (the version now serving, the version it replaced).

    Raises:
        UserError: a rollout of the model is under way, the model is not served, or it has no ``previous`` version.
        ServeNotRunningError: no serving Ray to connect to.
    """
    from rayml.registry import PREVIOUS, PRODUCTION, Registry

    connect(start_local=False)
    registry = registry or Registry(cfg.registry.tracking_uri)
    state, _ = load_state(cfg, model)
    if state is not None and not state.done:
        raise UserError(
            f"a rollout of {model} v{state.candidate} is under way", hint=f"end it with: rayml rollout rollback --model {model}"
        )
    app = cfg.serve.app_name
    spec = _require_spec(app)
    if model not in spec.models:
        raise UserError(f"model {model!r} is not served by {app!r}", hint=f"served: {', '.join(sorted(spec.models))}")
    prev = registry.load(f"{model}@{PREVIOUS}")
    replaced: list[int] = []

    def to_previous(spec: AppSpec) -> AppSpec:  # applied to the spec as it is once the lock is held
        m = spec.models.get(model)
        if m is None:
            raise UserError(f"model {model!r} is not served by {app!r} any more", hint="see rayml serve status")
        current = max(m.weights, key=lambda v: (m.weights[v], v))
        replaced[:] = [current]
        versions = [v for v in m.versions if v.version in (current, prev.info.version)]
        if all(v.version != prev.info.version for v in versions):
            versions.append(
                VersionSpec(
                    version=prev.info.version,
                    weight=0.0,
                    deployment=deployment_name(model, prev.info.version, m.kind),
                    local_path=str(prev.path),
                )
            )
        versions = [v.model_copy(update={"weight": 1.0 if v.version == prev.info.version else 0.0}) for v in versions]
        updated = m.model_copy(update={"versions": sorted(versions, key=lambda v: v.version), "shadow": None})
        return spec.model_copy(update={"models": {**spec.models, model: updated}})

    update_spec(app, to_previous, cfg.serve.deploy_timeout_s, action=f"rayml rollback --model {model}")
    registry.set_alias(model, prev.info.version, PRODUCTION)
    return prev.info.version, replaced[0]


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"
