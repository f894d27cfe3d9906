"""Alias-driven deployment: the served application follows the registry's aliases (``serve.follow_aliases``).

A detached Ray actor per application (started by `rayml serve up`, stopped by `rayml serve down`) checks the
registry every ``serve.alias_poll_interval_s``:

- **Blue/green by alias**: a served ``version: production`` (any alias in ``serve.models``) that now names another
  version is redeployed exactly as `rayml serve up` would (the new version's replicas start before traffic moves; an
  in-flight request finishes on the old one). A model with a rollout under way is left alone: the rollout owns its
  traffic (and moves ``production`` itself when it promotes).
- **Rollout by alias**: moving ``serve.rollout_alias`` (default ``canary``, the alias the pipeline's register stage
  sets) to a version starts a rollout of it with the config's ``rollout:`` settings, once, when the version's gate tag
  (``rayml.gate``, set by `rayml validate` and the pipeline) is ``passed``; otherwise the move is refused, and the
  reason goes to the model's rollout audit log (as it does when a rollout is already under way). The alias's position
  when the follower starts is taken as seen: only a later move starts anything.

The decisions are plain Python (:class:`AliasFollower`, unit-tested with fakes); the actor only runs its ticks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from rayml._private import fs
from rayml.config import ServeJobConfig
from rayml.errors import UserError

logger = logging.getLogger("rayml.serve")

GATE_TAG = "rayml.gate"
NAMESPACE = "rayml"


def follower_name(app_name: str) -> str:
    return f"rayml-follow-{app_name}"


class AliasFollower:
    """One application's alias follower: :meth:`tick` does what the registry's aliases ask for now.

    Args:
        cfg: the serve job config the application was deployed with.
        registry: a :class:`rayml.registry.Registry`.
        served: ``model -> {version: weight}`` the application serves now (None when it is not running).
        redeploy: deploys ``cfg`` again (what `rayml serve up` does).
        start_rollout: starts a rollout of ``(model, version)``.
        rollout_active: whether a model has a rollout under way.
        audit: appends a record to a model's rollout audit log.
        state_path: where the last seen rollout-alias versions are kept (so a restarted follower starts nothing twice).
    """

    def __init__(
        self,
        cfg: ServeJobConfig,
        registry: Any,
        served: Callable[[], dict[str, dict[int, float]] | None],
        redeploy: Callable[[], None],
        start_rollout: Callable[[str, int], Any],
        rollout_active: Callable[[str], bool],
        audit: Callable[[str, dict[str, Any]], None],
        state_path: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.registry = cfg, registry
        self._served, self._redeploy, self._start, self._active, self._audit = (
            served,
            redeploy,
            start_rollout,
            rollout_active,
            audit,
        )
        self.state_path, self.clock = state_path, clock
        self.seen: dict[str, int | None] = {}
        saved = fs.read_json(state_path)
        if saved is not None:
            self.seen = {k: v for k, v in saved.get("seen", {}).items()}
        else:
            self.seen = {m: self._alias(m, cfg.serve.rollout_alias) for m in cfg.serve.models} if cfg.serve.rollout_alias else {}
            self._save()

    def _save(self) -> None:
        fs.write_json(self.state_path, {"seen": self.seen})

    def _alias(self, model: str, alias: str | None) -> int | None:
        if alias is None:
            return None
        try:
            return int(self.registry.resolve(f"{model}@{alias}").version)
        except UserError:
            return None

    def wanted(self, model: str) -> dict[int, float] | None:
        """``model``'s weights as its config says with every alias resolved now (None if one cannot be resolved)."""
        mc = self.cfg.serve.models[model]
        out: dict[int, float] = {}
        for v in mc.versions:
            number = v.version if isinstance(v.version, int) else self._alias(model, v.version)
            if number is None:
                return None
            out[number] = out.get(number, 0.0) + v.weight
        return out

    def tick(self) -> list[dict[str, Any]]:
        """Follow every alias once; returns what was done (and refused)."""
        events: list[dict[str, Any]] = []
        served = self._served()
        if served is None:
            return events
        stale = []
        for model, mc in self.cfg.serve.models.items():
            if not any(isinstance(v.version, str) for v in mc.versions) or self._active(model):
                continue
            wanted = self.wanted(model)
            live = {v: w for v, w in served.get(model, {}).items() if w > 0}
            if wanted is not None and {v: w for v, w in wanted.items() if w > 0} != live:
                stale.append((model, live, wanted))
        if stale:
            self._redeploy()
            for model, live, wanted in stale:
                record = {"event": "alias_followed", "from": _show(live), "to": _show(wanted)}
                self._record(model, record)
                events.append({"model": model, **record})
        alias = self.cfg.serve.rollout_alias
        for model in self.cfg.serve.models if alias else []:
            now = self._alias(model, alias)
            if now is None or now == self.seen.get(model):
                continue
            self.seen[model] = now
            self._save()  # before acting: a crash in between starts nothing twice
            events.append({"model": model, **self._rollout_on_move(model, now, served.get(model, {}))})
        return events

    def _rollout_on_move(self, model: str, version: int, live: dict[int, float]) -> dict[str, Any]:
        alias = self.cfg.serve.rollout_alias
        why = None
        gate = (self.registry.resolve(f"{model}:{version}").tags or {}).get(GATE_TAG)
        if live.get(version, 0.0) >= 1.0:
            why = f"v{version} already serves all of {model}'s traffic"
        elif gate != "passed":
            why = (
                f"v{version}'s gate tag {GATE_TAG} is {gate!r}, not 'passed': validate it first "
                f"(rayml validate --model {model} --candidate {version} --data ...)"
            )
        elif self._active(model):
            why = f"a rollout of {model} is under way: end it first (rayml rollout rollback --model {model})"
        if why is None:
            try:
                self._start(model, version)
            except Exception as e:  # recorded, never retried blindly: moving the alias again retries
                why = f"the rollout could not start: {e}"
        record = {"event": "alias_rollout_refused" if why else "alias_rollout_started", "alias": alias, "version": version}
        if why:
            record["reason"] = why
        self._record(model, record)
        return record

    def _record(self, model: str, record: dict[str, Any]) -> None:
        record = {"ts": self.clock(), "model": model, "app": self.cfg.serve.app_name, "by": "alias-follower", **record}
        self._audit(model, record)
        logger.info("alias follower: %s", record)


def _show(weights: dict[int, float]) -> str:
    return ", ".join(f"v{v}={w:g}" for v, w in sorted(weights.items())) or "(none)"


# See RolloutActor for why mypy needs the ignore.
@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=2)  # type: ignore[call-overload]
class AliasFollowerActor:
    """Runs an :class:`AliasFollower` every ``serve.alias_poll_interval_s`` until killed (by `rayml serve down`)."""

    def __init__(self, cfg_json: dict[str, Any]) -> None:
        logging.getLogger("rayml").setLevel(logging.INFO)
        self.cfg = ServeJobConfig.model_validate(cfg_json)
        self.follower = _follower(self.cfg)
        threading.Thread(target=self._loop, daemon=True, name="alias-follower").start()

    def _loop(self) -> None:
        while True:
            try:
                self.follower.tick()
            except Exception:  # the registry or Serve is busy: try again on the next tick
                logger.exception("alias follower tick failed; retrying")
            time.sleep(self.cfg.serve.alias_poll_interval_s)

    def ping(self) -> bool:
        return True


def _follower(cfg: ServeJobConfig) -> AliasFollower:
    from rayml.registry import Registry
    from rayml.serve._apply import current_spec
    from rayml.serve._deploy import deploy
    from rayml.serve._rollout import StateStore
    from rayml.serve._rollout_runtime import rollout_active, start_rollout, state_dir

    registry = Registry(cfg.registry.tracking_uri)
    app = cfg.serve.app_name

    def served() -> dict[str, dict[int, float]] | None:
        spec = current_spec(app)
        return None if spec is None else {name: m.weights for name, m in spec.models.items()}

    def redeploy() -> None:
        deploy(cfg, registry=registry, _follower=False)

    return AliasFollower(
        cfg,
        registry,
        served,
        redeploy,
        lambda model, version: start_rollout(cfg, model, version, registry),
        lambda model: rollout_active(cfg, model),
        lambda model, record: StateStore(state_dir(cfg), app, model).audit(record),
        str(state_dir(cfg) / app / "alias-follower.json"),
    )


def ensure_follower(cfg: ServeJobConfig) -> None:
    """Start (or restart with this config) the application's follower when ``serve.follow_aliases``; else stop it."""
    stop_follower(cfg.serve.app_name)
    if not cfg.serve.follow_aliases:
        return
    # a ray.remote actor class: mypy sees the plain class (see RolloutActor)
    actor = AliasFollowerActor.options(  # type: ignore[attr-defined]
        name=follower_name(cfg.serve.app_name), namespace=NAMESPACE, lifetime="detached"
    ).remote(cfg.model_dump(mode="json"))
    ray.get(actor.ping.remote(), timeout=60)


def stop_follower(app_name: str) -> None:
    try:
        actor = ray.get_actor(follower_name(app_name), namespace=NAMESPACE)
    except ValueError:
        return
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(follower_name(app_name), namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)
