"""Automatic rollouts on real Serve under continuous load: a good candidate is promoted, bad ones are rolled back.

Intervals are seconds, not minutes. The controller runs as the detached Ray actor it runs as in production; the
traffic comes from a background HTTP client; the decisions are read back from the state file and the audit log.
A candidate that errors uses the test-only fault hook (``rayml.testing.serve_faults``, ``raise``); "wild outputs" is a real
ONNX model whose last layer is scaled by 100.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from rayml.config import ServeJobConfig, load_config
from rayml.registry import Registry
from rayml.serve import approve, deploy, rollback_to_previous, start_rollout
from rayml.serve._apply import app_state
from rayml.serve._rollout_runtime import load_state, stop_controllers
from rayml.testing import Traffic, instances, register_tiny_model, serve_faults

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = "sales-model"
ROWS = instances(2)


@pytest.fixture(scope="module")
def served(serve_http: dict, tmp_path_factory: pytest.TempPathFactory, _registry_template: Path):
    """One registry with four versions, the application and its background traffic, shared by the module.

    Deploying from scratch costs a replica start per version; each test instead starts with :func:`given`, which
    moves this application and the registry's aliases to the state it asserts on (cheap when they are there already).
    """
    db = tmp_path_factory.mktemp("rollout-registry") / "mlflow.db"
    shutil.copy(_registry_template, db)
    registry = Registry(f"sqlite:///{db}")
    register_tiny_model(registry, MODEL, seed=0)  # v1: baseline
    register_tiny_model(registry, MODEL, seed=0, output_scale=1.03)  # v2: a good candidate (3% different)
    register_tiny_model(registry, MODEL, seed=0, output_scale=100.0)  # v3: wild outputs
    register_tiny_model(registry, MODEL, seed=0, output_scale=1.01)  # v4: raises (fault hook)
    overrides = [
        f"serve.port={serve_http['port']}",
        "serve.ingress.num_cpus=0.1",
        f"serve.models.{MODEL}.deployment.num_cpus=0.1",
        "serve.stats_flush_interval_s=0.5",
        "serve.health_check_interval_s=0.5",
        "rollout.interval_s=2",
        "rollout.min_requests=10",
        "rollout.min_shadow_comparisons=10",
        "rollout.poll_interval_s=0.25",
        "rollout.failure_budget=0",
        "rollout.max_p95_latency_ratio=null",  # latency on a shared 2-core machine is too noisy for seconds-long windows
    ]
    deploy(_config(overrides, {1: 1.0}), registry=registry)
    load = Load(serve_http["url"])
    load.start()
    yield {"registry": registry, "overrides": overrides, "load": load}
    load.stop()


@pytest.fixture
def env(served: dict, tmp_path: Path):
    """The shared application for one test: its own rollout state folder, and no controller left running after it."""
    overrides = [*served["overrides"], f"rollout.state_dir={tmp_path / 'rollouts'}"]
    cfg = _config(overrides, {1: 1.0})
    yield {**served, "overrides": overrides, "cfg": cfg}
    stop_controllers(cfg.serve.app_name)  # a failed test's controller would otherwise keep moving the next test's traffic


def _config(overrides: list[str], weights: dict[int, float]) -> ServeJobConfig:
    versions = ", ".join(f"{{version: {v}, weight: {w}}}" for v, w in sorted(weights.items()))
    return load_config(ServeJobConfig, None, [f"serve.models={{{MODEL}: {{versions: [{versions}]}}}}", *overrides])


def given(env: dict, traffic: dict[int, float], production: int | None = None, previous: int | None = None) -> None:
    """Serve exactly ``traffic`` (version -> weight, no shadow); point the registry's aliases at ``production`` and
    ``previous`` only."""
    from rayml.registry import PREVIOUS, PRODUCTION

    reg: Registry = env["registry"]
    for alias in {a for v in reg.versions(MODEL) for a in v.aliases}:
        reg.delete_alias(MODEL, alias)
    for alias, version in ((PREVIOUS, previous), (PRODUCTION, production)):  # previous first: no alias moves
        if version is not None:
            reg.set_alias(MODEL, version, alias)
    env["cfg"] = _config(env["overrides"], traffic)
    deploy(env["cfg"], registry=reg)
    assert weights(env) == traffic


class Load(Traffic):
    """Continuous traffic from two client threads; records every answer."""

    def send(self, c: httpx.Client) -> list[tuple]:
        try:
            r = c.post(f"/v1/models/{MODEL}:predict", json={"instances": ROWS})
            return [(time.time(), r.status_code, r.headers.get("x-rayml-model-version"))]
        except httpx.HTTPError as e:
            return [(time.time(), -1, repr(e))]

    def since(self, t: float) -> list[tuple[float, int, str | None]]:
        return [r for r in list(self.results) if r[0] >= t]


def run_rollout(
    env: dict,
    candidate: int,
    *overrides: str,
    faults: dict[str, str] | None = None,
    crash: bool = False,
    approve_note: str | None = None,
    timeout_s: float = 120,
):
    import ray

    from rayml.serve._rollout_runtime import NAMESPACE, actor_name

    cfg = env["cfg"].model_copy(deep=True)
    for item in overrides:
        key, value = item.split("=", 1)
        setattr(cfg.rollout, key, [float(x) for x in value.split(",")] if key in ("steps", "manual_steps") else float(value))
    with serve_faults(faults or {}):  # the controller actor keeps them for the whole rollout
        start_rollout(cfg, MODEL, candidate, env["registry"])
    env["crashed"] = False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, store = load_state(cfg, MODEL)
        if state.done:
            return state, store.history()
        if approve_note is not None and state.phase == "waiting_approval":
            env["waited_at"] = state.step_percent
            approve(cfg, MODEL, approve_note)  # through the running controller actor, as `rayml rollout approve` does
            approve_note = None
        if crash and state.applied and state.step_index == 1:
            crash = False  # kill the controller's process mid-step once; Ray restarts it and it resumes from disk
            ray.kill(ray.get_actor(actor_name(cfg.serve.app_name, MODEL), namespace=NAMESPACE), no_restart=False)
            env["crashed"] = True
        time.sleep(0.25)
    raise AssertionError(f"rollout did not finish: {load_state(cfg, MODEL)[0]}")


def weights(env: dict) -> dict[int, float]:
    spec = app_state(env["cfg"].serve.app_name).spec
    return spec.models[MODEL].weights


def test_a_good_candidate_is_promoted_after_approval_even_when_the_controller_crashes(env: dict) -> None:
    given(env, {1: 1.0})  # v1 serves everything and is no alias yet (deployed by number)
    t0 = time.time()
    state, history = run_rollout(env, 2, "steps=50,100", "manual_steps=50", crash=True, approve_note="looks good")
    assert state.phase == "promoted", (state.reason, state.last_check)
    events = [r["event"] for r in history]
    assert events[0] == "started" and events[-1] == "promoted" and events.count("check_passed") == 2
    assert env["crashed"] and events.count("step_applied") == 2  # the crash mid-step 2 repeated nothing
    assert env["waited_at"] == 50.0 and events.index("waiting_for_approval") < events.index("approved")
    approval = next(r for r in history if r["event"] == "approved")["approval"]
    assert approval["note"] == "looks good" and approval["step_percent"] == 50.0 and approval["by"]
    assert state.approvals == [approval]
    passed = [r for r in history if r["event"] == "check_passed"]
    assert [r["step_passed"] for r in passed] == [50.0, 100.0]
    assert all(r["snapshot"]["candidate"]["requests"] >= 10 for r in passed)  # decided on real, aggregated traffic
    reg: Registry = env["registry"]
    assert reg.resolve(f"{MODEL}@production").version == 2 and reg.resolve(f"{MODEL}@previous").version == 1
    assert weights(env) == {1: 0.0, 2: 1.0}  # v1 stays deployed, idle, for a one-command blue/green rollback
    seen = env["load"].since(t0)
    assert {s for _, s, _ in seen} == {200}  # nothing failed while traffic moved
    assert {"1", "2"} <= {v for _, _, v in seen}


def test_an_erroring_candidate_is_rolled_back_automatically(env: dict) -> None:
    given(env, {1: 0.0, 2: 1.0}, production=2, previous=1)  # as a promotion of v2 over v1 leaves it
    t0 = time.time()
    state, history = run_rollout(env, 4, "steps=25,100", faults={f"{MODEL}:4": "raise"})
    assert state.phase == "rolled_back" and "error rate" in state.reason, state.reason
    assert history[-1]["event"] == "rolled_back" and history[-1]["last_check"]["candidate"]["errors"] > 0
    assert weights(env) == {1: 0.0, 2: 1.0}  # all traffic back on the baseline (v1 is `previous`), v4 removed
    assert env["registry"].resolve(f"{MODEL}@production").version == 2
    time.sleep(2.0)
    after = env["load"].since(state.finished_at + 0.5)
    assert after and {s for _, s, _ in after} == {200} and {v for _, _, v in after} == {"2"}
    failed = Counter(v for _, s, v in env["load"].since(t0) if s != 200)
    assert set(failed) <= {"4"}  # only the canary's share ever failed: the blast radius of a 25% step


def test_wild_outputs_are_rolled_back_in_the_shadow_phase_before_any_caller_sees_them(env: dict) -> None:
    given(env, {1: 0.0, 2: 1.0}, production=2, previous=1)
    t0 = time.time()
    state, _ = run_rollout(env, 3, "steps=100", "shadow_s=2")
    assert state.phase == "rolled_back" and "disagreement" in state.reason, state.reason
    seen = env["load"].since(t0)
    assert {s for _, s, _ in seen} == {200} and "3" not in {v for _, _, v in seen}
    assert weights(env) == {1: 0.0, 2: 1.0}


def test_blue_green_rollback_restores_previous_in_one_command(env: dict) -> None:
    given(env, {1: 0.0, 2: 1.0}, production=2, previous=1)
    t0 = time.time()
    now, replaced = rollback_to_previous(env["cfg"], MODEL, env["registry"])
    assert (now, replaced) == (1, 2)
    assert weights(env)[1] == 1.0
    reg: Registry = env["registry"]
    assert reg.resolve(f"{MODEL}@production").version == 1 and reg.resolve(f"{MODEL}@previous").version == 2
    time.sleep(1.0)
    seen = env["load"].since(t0)
    assert {s for _, s, _ in seen} == {200} and seen[-1][2] == "1"
