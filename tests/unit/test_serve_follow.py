"""Alias-driven deployment decisions with a fake registry: a served alias that moves is redeployed once, a model under
rollout is left alone, and moving the rollout alias starts a rollout only for a gate-passed version (refusals are
audited, and a restarted follower starts nothing twice)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayml.config import ServeJobConfig, load_config
from rayml.errors import UserError
from rayml.serve._follow import AliasFollower


@dataclass
class Info:
    version: int
    tags: dict[str, str] = field(default_factory=dict)


class FakeRegistry:
    def __init__(self) -> None:
        self.aliases: dict[str, int] = {"production": 1}
        self.tags: dict[int, dict[str, str]] = {}

    def resolve(self, ref: str) -> Info:
        if "@" in ref:
            alias = ref.split("@", 1)[1]
            if alias not in self.aliases:
                raise UserError(f"no alias {alias}")
            return Info(self.aliases[alias], self.tags.get(self.aliases[alias], {}))
        v = int(ref.split(":", 1)[1])
        return Info(v, self.tags.get(v, {}))


class World:
    """The application, the rollouts and the audit log the follower acts on."""

    def __init__(self) -> None:
        self.serving: dict[str, dict[int, float]] = {"m": {1: 1.0}}
        self.registry = FakeRegistry()
        self.redeploys = 0
        self.rollouts: list[tuple[str, int]] = []
        self.active: set[str] = set()
        self.audit: list[dict[str, Any]] = []

    def redeploy(self) -> None:
        self.redeploys += 1
        self.serving["m"] = {self.registry.aliases["production"]: 1.0}

    def start(self, model: str, version: int) -> None:
        self.rollouts.append((model, version))
        self.active.add(model)


def follower(world: World, tmp_path: Path, **serve: Any) -> AliasFollower:
    overrides = ["serve.models={m: {versions: [{version: production}]}}", "serve.follow_aliases=true"]
    overrides += [f"serve.{k}={v}" for k, v in serve.items()]
    cfg = load_config(ServeJobConfig, None, overrides)
    return AliasFollower(
        cfg,
        world.registry,
        lambda: world.serving,
        world.redeploy,
        world.start,
        lambda model: model in world.active,
        lambda model, record: world.audit.append(record),
        str(tmp_path / "follow.json"),
    )


def test_a_moved_production_alias_is_redeployed_once_and_a_rollout_owns_its_traffic(tmp_path: Path) -> None:
    world = World()
    f = follower(world, tmp_path)
    assert f.tick() == [] and world.redeploys == 0
    world.registry.aliases["production"] = 2
    events = f.tick()
    assert world.redeploys == 1 and world.serving["m"] == {2: 1.0}
    assert events[0]["event"] == "alias_followed" and events[0]["to"] == "v2=1"
    assert f.tick() == [] and world.redeploys == 1  # nothing moved since
    world.active.add("m")
    world.registry.aliases["production"] = 3
    assert f.tick() == [] and world.redeploys == 1  # under rollout: the rollout moves production itself


def test_the_rollout_alias_starts_a_rollout_only_for_a_gate_passed_version(tmp_path: Path) -> None:
    world = World()
    world.registry.aliases["canary"] = 1  # where it is at start: taken as seen
    f = follower(world, tmp_path)
    assert f.tick() == [] and world.rollouts == []
    world.registry.aliases["canary"] = 4  # no gate verdict
    (refused,) = f.tick()
    assert refused["event"] == "alias_rollout_refused" and "not 'passed'" in refused["reason"] and world.rollouts == []
    assert world.audit[-1]["event"] == "alias_rollout_refused" and world.audit[-1]["by"] == "alias-follower"
    assert f.tick() == []  # refused once, not on every tick
    world.registry.tags[5] = {"rayml.gate": "passed"}
    world.registry.aliases["canary"] = 5
    (started,) = f.tick()
    assert started["event"] == "alias_rollout_started" and world.rollouts == [("m", 5)]
    # a restarted follower remembers what it saw: it starts nothing twice
    again = follower(world, tmp_path)
    assert again.tick() == [] and world.rollouts == [("m", 5)]
    world.registry.tags[6] = {"rayml.gate": "passed"}
    world.registry.aliases["canary"] = 6  # a rollout of 5 is under way
    (busy,) = again.tick()
    assert busy["event"] == "alias_rollout_refused" and "under way" in busy["reason"]


def test_no_rollout_alias_means_aliases_never_start_rollouts(tmp_path: Path) -> None:
    world = World()
    world.registry.tags[2] = {"rayml.gate": "passed"}
    f = follower(world, tmp_path, rollout_alias="null")
    world.registry.aliases["canary"] = 2
    assert f.tick() == [] and world.rollouts == []
