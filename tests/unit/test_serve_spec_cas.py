"""Serve spec changes are compare-and-swap under one lock per application: concurrent writers (serve up, rollout
steps, rollback) never undo each other. Serve and the lock actor are replaced by in-process fakes (no Ray)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rayml.errors import RolloutActiveError, SpecConflictError
from rayml.serve import _apply, _speclock
from rayml.serve._rollout_runtime import with_traffic
from rayml.serve._spec import AppSpec
from rayml.serve._speclock import LockTable
from tests.unit.serve_specs import app_spec


class FakeServe:
    """The running application: what `current_spec` reads and `_deploy_once` writes (a deploy takes a while)."""

    def __init__(self, spec: AppSpec, deploy_s: float = 0.05) -> None:
        self.spec: AppSpec | None = spec
        self.deploy_s = deploy_s
        self.deployed: list[AppSpec] = []
        self.on_deploy: Any = None

    def current(self, app_name: str) -> AppSpec | None:
        return self.spec

    def deploy(self, stage: AppSpec, timeout_s: float) -> None:
        time.sleep(self.deploy_s)
        self.deployed.append(stage)
        self.spec = stage
        if self.on_deploy is not None:
            self.on_deploy(stage)


@pytest.fixture
def serve(monkeypatch) -> FakeServe:
    fake = FakeServe(app_spec(a={1: 1.0, 2: 0.0}, b={1: 1.0, 2: 0.0}))
    table = LockTable()
    monkeypatch.setattr(_apply, "current_spec", fake.current)
    monkeypatch.setattr(_apply, "_deploy_once", fake.deploy)
    monkeypatch.setattr(_apply, "app_state", lambda app_name: None)
    monkeypatch.setattr(_speclock, "lock_backend", lambda: table)
    fake.table = table  # type: ignore[attr-defined]
    return fake


def _race(*fns) -> list[Any]:
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def _weights(spec: AppSpec | None, model: str) -> dict[int, float]:
    assert spec is not None
    return spec.models[model].weights


def test_two_writers_from_one_read_exactly_one_wins_and_the_other_gets_a_conflict(serve: FakeServe) -> None:
    read = serve.spec
    assert read is not None and read.revision == 0
    mine = with_traffic(read, "a", {1: 0.5, 2: 0.5}, None, [])
    theirs = with_traffic(read, "b", {1: 0.0, 2: 1.0}, None, [])
    results = _race(lambda: _apply.apply_spec(mine, 5, drain_s=0), lambda: _apply.apply_spec(theirs, 5, drain_s=0))
    conflicts = [r for r in results if isinstance(r, SpecConflictError)]
    assert len(conflicts) == 1 and sum(isinstance(r, list) for r in results) == 1, results
    assert "changed while this change was prepared: it is at revision 1" in conflicts[0].message
    assert "run the command again" in (conflicts[0].hint or "")
    # the winner's change is what runs, at the next revision; the loser changed nothing
    won = mine if isinstance(results[0], list) else theirs
    assert serve.spec == won.model_copy(update={"revision": 1}) and len(serve.deployed) == 1


def test_concurrent_rollout_steps_of_two_models_both_land(serve: FakeServe) -> None:
    def step(model: str, weights: dict[int, float]):
        return lambda: _apply.update_spec("app", lambda s: with_traffic(s, model, weights, None, []), 5, drain_s=0)

    results = _race(step("a", {1: 0.75, 2: 0.25}), step("b", {1: 0.5, 2: 0.5}))
    assert all(isinstance(r, AppSpec) for r in results), results
    assert _weights(serve.spec, "a") == {1: 0.75, 2: 0.25} and _weights(serve.spec, "b") == {1: 0.5, 2: 0.5}
    assert serve.spec is not None and serve.spec.revision == 2


def test_serve_up_racing_a_rollout_step_never_undoes_it(serve: FakeServe) -> None:
    for _ in range(3):
        read = serve.spec
        assert read is not None
        up = read.model_copy(update={"max_batch_rows": read.max_batch_rows + 1})  # serve up changes a setting
        rollout = {1: 0.9, 2: 0.1} if _weights(read, "a")[1] != 0.9 else {1: 0.8, 2: 0.2}
        results = _race(
            lambda up=up: _apply.apply_spec(up, 5, drain_s=0),
            lambda r=rollout: _apply.update_spec("app", lambda s: with_traffic(s, "a", r, None, []), 5, drain_s=0),
        )
        assert isinstance(results[1], AppSpec), results  # the rollout step always lands (re-applied on top)
        assert _weights(serve.spec, "a") == rollout
        if isinstance(results[0], SpecConflictError):  # serve up read a spec the step has since changed: refused
            assert serve.spec is not None and serve.spec.max_batch_rows == read.max_batch_rows
        else:  # serve up went first; the step was applied to its spec
            assert serve.spec is not None and serve.spec.max_batch_rows == up.max_batch_rows


def test_a_writer_waits_for_the_lock_and_gives_up_naming_the_holder(serve: FakeServe) -> None:
    serve.table.acquire("app", "someone", "alice@host pid 7 (rayml serve up)", 60)  # type: ignore[attr-defined]
    spec = serve.spec
    assert spec is not None
    t0 = time.monotonic()
    with pytest.raises(SpecConflictError, match="being changed by alice@host pid 7 .rayml serve up.") as e:
        _apply.apply_spec(spec, 0.2, drain_s=0)
    assert time.monotonic() - t0 < 3 and "run this command again" in (e.value.hint or "")
    assert serve.deployed == []


def test_a_change_between_two_stages_stops_the_staged_change(serve: FakeServe) -> None:
    new = app_spec(a={3: 1.0}, b={1: 1.0, 2: 0.0})  # v3 replaces v1 and v2: add v3, move traffic, remove the rest

    def intruder(stage: AppSpec) -> None:  # a writer whose lock expired slips a change in after the first stage
        serve.on_deploy = None
        serve.spec = stage.model_copy(update={"revision": stage.revision + 10})

    serve.on_deploy = intruder
    with pytest.raises(SpecConflictError, match="changed while it was deployed in stages"):
        _apply.apply_spec(new, 5, drain_s=0)
    assert len(serve.deployed) == 1 and serve.spec is not None and serve.spec.revision == 11


def test_an_expired_lock_is_taken_over_and_its_holder_cannot_renew() -> None:
    now = [0.0]
    table = LockTable(clock=lambda: now[0])
    assert table.acquire("app", "one", "one", ttl_s=30) is None
    assert table.acquire("app", "two", "two", ttl_s=30) == "one (for 0s)"
    now[0] = 31.0
    assert table.acquire("app", "two", "two", ttl_s=30) is None
    assert not table.renew("app", "one", 30) and table.renew("app", "two", 30)
    table.release("app", "one")  # not its lock: nothing happens
    assert table.acquire("app", "three", "three", ttl_s=30) is not None


def test_serve_up_refuses_to_change_a_model_under_an_active_rollout_unless_forced(monkeypatch) -> None:
    from rayml.config import ServeJobConfig
    from rayml.serve import _deploy

    ended: list[tuple[list[str], str]] = []
    monkeypatch.setattr(_deploy, "rollout_active", lambda cfg, model: model == "a")
    monkeypatch.setattr(_deploy, "end_rollouts", lambda cfg, models, reason: ended.append((models, reason)))
    cfg = ServeJobConfig()
    running = app_spec(a={1: 0.9, 2: 0.1}, b={1: 1.0})
    _deploy._check_rollouts(cfg, running, app_spec(a={1: 0.9, 2: 0.1}, b={1: 0.5, 3: 0.5}), force=False)  # b only
    with pytest.raises(RolloutActiveError, match="a rollout of a is under way") as e:
        _deploy._check_rollouts(cfg, running, app_spec(a={1: 1.0}, b={1: 1.0}), force=False)
    assert "--force" in (e.value.hint or "") and ended == []
    _deploy._check_rollouts(cfg, running, app_spec(a={1: 1.0}, b={1: 1.0}), force=True)
    assert ended and ended[0][0] == ["a"] and "serve up --force" in ended[0][1]
