"""The pipeline's state machine and its last stage's decisions, with fake stages, a fake clock and a fake serving."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rayml.config import PipelineJobConfig, load_config
from rayml.errors import ConfigError, ModelNotFoundError
from rayml.pipeline import DONE, FAILED, PENDING, PipelineStageError, PipelineState, StageFailed, StateStore, run_stages
from rayml.pipeline._stages import PROMOTE, STAGE_NAMES, TRAIN, StageContext, promote


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.5
        return self.t


def _stages(calls: list[str], fail: dict[str, BaseException]):
    def make(name: str):
        def fn(ctx):
            calls.append(name)
            if name in fail:
                raise fail.pop(name)
            return {"ran": name}

        return name, fn

    return [make(n) for n in ("a", "b", "c")]


def test_a_failed_stage_is_recorded_and_a_rerun_resumes_there(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "run"))
    state = PipelineState.new("p", "r1", ["a", "b", "c"])
    calls: list[str] = []
    fail = {"b": StageFailed("gate says no", hint="retry", outputs={"passed": False})}
    ends: list[tuple[str, str]] = []
    with pytest.raises(StageFailed):
        run_stages(
            state, _stages(calls, fail), store, None, on_stage_end=lambda s, r: ends.append((r.name, r.status)), clock=Clock()
        )
    saved = json.loads((tmp_path / "run" / "state.json").read_text())
    by_name = {s["name"]: s for s in saved["stages"]}
    assert [by_name[n]["status"] for n in "abc"] == [DONE, FAILED, PENDING]
    assert by_name["b"]["outputs"] == {"passed": False} and "gate says no" in by_name["b"]["error"]
    assert by_name["a"]["duration_s"] == pytest.approx(1.5) and by_name["a"]["started"] and by_name["a"]["finished"]
    assert ends == [("a", DONE), ("b", FAILED)]

    resumed = store.load()
    assert resumed.next_stage == "b" and resumed.status == FAILED
    run_stages(resumed, _stages(calls, {}), store, None, clock=Clock())
    assert calls == ["a", "b", "b", "c"]  # `a` did not run again
    final = store.load()
    assert final.status == DONE and final.next_stage is None
    assert final.stage("a").attempts == 1 and final.stage("b").attempts == 2
    assert final.stage("b").outputs == {"ran": "b"} and final.stage("b").error is None


def test_a_crash_names_the_stage_and_an_interrupt_is_recorded(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    state = PipelineState.new("p", "r1", ["a", "b", "c"])
    with pytest.raises(PipelineStageError, match="stage 'a' crashed: ValueError: boom") as e:
        run_stages(state, _stages([], {"a": ValueError("boom")}), store, None)
    assert isinstance(e.value.__cause__, ValueError) and "resumes at this stage" in e.value.hint
    assert store.load().stage("a").error == "ValueError: boom"
    with pytest.raises(KeyboardInterrupt):
        run_stages(state, _stages([], {"b": KeyboardInterrupt()}), store, None)
    assert store.load().stage("b").status == FAILED and store.load().stage("a").status == DONE


def test_a_driver_that_died_mid_stage_leaves_it_running_and_it_runs_again(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    state = PipelineState.new("p", "r1", ["a", "b", "c"])
    state.stage("a").status = DONE
    state.stage("b").status = "running"  # as a SIGKILLed driver leaves it
    store.save(state)
    calls: list[str] = []
    run_stages(store.load(), _stages(calls, {}), store, None)
    assert calls == ["b", "c"]


# --- the promote stage ------------------------------------------------------------------------------------------------
class FakeRegistry:
    def __init__(self, production: int | None) -> None:
        self.aliases: dict[str, int] = {} if production is None else {"production": production}

    def resolve(self, ref: str):
        alias = ref.split("@", 1)[1]
        if alias not in self.aliases:
            raise ModelNotFoundError(f"no alias {alias}")
        return SimpleNamespace(version=self.aliases[alias])

    def set_alias(self, name: str, version: int, alias: str) -> dict[str, int]:
        moved = {}
        if alias == "production" and "production" in self.aliases:
            self.aliases["previous"] = moved["previous"] = self.aliases["production"]
        self.aliases[alias] = moved[alias] = version
        return moved


class FakeRelease:
    def __init__(self, up: bool, result: tuple[str, str] = ("promoted", "all steps passed"), registry=None) -> None:
        self.up, self.result, self.registry = up, result, registry
        self.started: list[int] = []
        self.recorded: tuple[str, str] | None = None

    def detect(self, model: str) -> tuple[bool, str]:
        return self.up, "app 'rayml' at http://127.0.0.1:8000" if self.up else "application 'rayml' is not deployed"

    def start(self, model: str, version: int) -> None:
        self.started.append(version)

    def outcome(self, model: str, version: int):
        return self.recorded

    def wait(self, model: str, version: int, timeout_s: float) -> tuple[str, str]:
        self.recorded = self.result
        if self.result[0] == "promoted":  # the rollout controller moves the alias, not the stage
            self.registry.set_alias(model, version, "production")
        return self.result


def _ctx(registry: FakeRegistry, release: FakeRelease, *overrides: str) -> StageContext:
    cfg = load_config(PipelineJobConfig, None, ["model.name=m", *overrides])
    state = PipelineState.new("m", "r1", STAGE_NAMES)
    state.stage(TRAIN).outputs = {"version": 2}
    return StageContext(cfg=cfg, registry=registry, state=state, run_dir="/unused", prepared=None, release=release)


def test_promote_rolls_out_when_serving_is_up_and_reports_a_rollback_once() -> None:
    reg = FakeRegistry(production=1)
    release = FakeRelease(up=True, registry=reg)
    out = promote(_ctx(reg, release))
    assert out["mode"] == "rollout" and out["outcome"] == "promoted" and release.started == [2]
    assert reg.aliases == {"production": 2, "previous": 1}

    reg = FakeRegistry(production=1)
    release = FakeRelease(up=True, result=("rolled_back", "error rate 5% over 1%"), registry=reg)
    ctx = _ctx(reg, release)
    with pytest.raises(StageFailed, match="rolled back: error rate") as e:
        promote(ctx)
    assert reg.aliases == {"production": 1} and e.value.outputs["rollout_reported"]

    # the driver died while a rollout ran; it rolled back meanwhile: the re-run reports it instead of starting again
    ctx.state.stage(PROMOTE).outputs = {"rollout_started": True}
    release.started.clear()
    with pytest.raises(StageFailed):
        promote(ctx)
    assert release.started == []
    # once reported, re-running rolls the candidate out again
    ctx.state.stage(PROMOTE).outputs = {"rollout_started": True, "rollout_reported": True}
    with pytest.raises(StageFailed):
        promote(ctx)
    assert release.started == [2]


def test_promote_without_serving() -> None:
    reg = FakeRegistry(production=1)
    out = promote(_ctx(reg, FakeRelease(up=False)))
    assert out["mode"] == "alias" and out["outcome"] == "promoted" and reg.aliases == {"production": 2, "previous": 1}
    assert "not deployed" in out["serving"]

    reg = FakeRegistry(production=1)
    out = promote(_ctx(reg, FakeRelease(up=False), "pipeline.promote_without_serving=false"))
    assert out["outcome"] == "awaiting_promotion" and reg.aliases == {"production": 1}

    reg = FakeRegistry(production=None)
    with pytest.raises(StageFailed, match="serving is not up"):
        promote(_ctx(reg, FakeRelease(up=False), "pipeline.rollout=always"))
    assert reg.aliases == {}

    release = FakeRelease(up=True)
    out = promote(_ctx(FakeRegistry(production=1), release, "pipeline.rollout=never"))
    assert out["mode"] == "alias" and release.started == []
    assert promote(_ctx(FakeRegistry(production=2), release))["note"] == "already production"


def test_pipeline_config_keeps_production_to_the_last_stage() -> None:
    with pytest.raises(ConfigError, match="registry.alias is 'production'"):
        load_config(PipelineJobConfig, None, ["registry.alias=production"])
    with pytest.raises(ConfigError, match="register_version is false"):
        load_config(PipelineJobConfig, None, ["registry.register_version=false"])
    with pytest.raises(ConfigError, match="tune.space is empty"):
        load_config(PipelineJobConfig, None, ["tune.metric=val_rmse"])
    cfg = load_config(PipelineJobConfig, None, ["tune.space.train.learning_rate={loguniform: [0.001, 0.1]}"])
    assert cfg.tune_job().tune.space["train.learning_rate"].type == "loguniform"
    assert cfg.pipeline_name == "sales-model" and cfg.serve_job().serve.app_name == "rayml"
