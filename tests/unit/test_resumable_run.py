"""The run type train, tune and many models share: identity, state file, and the MLflow run's create / resume / fail /
finish against a real MLflow on SQLite (no Ray: the outcome for Prometheus is skipped without one)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from pydantic import BaseModel

from rayml.config import ManyModelsJobConfig, PipelineJobConfig, TrainJobConfig, TuneJobConfig, load_config
from rayml.errors import RegistryError
from rayml.manymodels._run import MANYMODELS_IDENTITY
from rayml.pipeline._run import PIPELINE_IDENTITY, run_id_for
from rayml.registry import Registry
from rayml.train import (
    ALL,
    TRAIN_IDENTITY,
    ResumableRun,
    RunIdentity,
    all_but,
    config_params,
    create_or_resume_run,
    identity_digest,
    only,
    run_name_for,
)
from rayml.tune import search_name_for
from rayml.tune._space import SEARCH_IDENTITY

TUNE_YAML = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tune.yaml"


# --- identity --------------------------------------------------------------------------------------------------------
class _Section(BaseModel):
    a: int = 1
    b: str = "x"
    c: list[int] = [1, 2]


class _Job(BaseModel):
    one: _Section = _Section()
    two: _Section | None = None


def test_the_digest_is_the_sha256_of_the_sorted_json_and_never_changes() -> None:
    # pinned: a change here renames every run on every user's storage, and interrupted runs would start over
    identity = {"one": {"a": 1, "b": "x"}, "fingerprint": "fp"}
    assert identity_digest(identity) == hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    assert identity_digest(identity) == "0e3e1068aa"
    assert identity_digest(identity, 12).startswith(identity_digest(identity))


def test_the_identity_takes_only_the_listed_sections_and_fields() -> None:
    rule = RunIdentity({"one": only("a", "c"), "two": ALL})
    assert rule.of(_Job(), "fp") == {"one": {"a": 1, "c": [1, 2]}, "two": None, "fingerprint": "fp"}
    base = rule.digest(_Job(), "fp")
    assert rule.digest(_Job(), "fp") == base  # stable
    assert rule.digest(_Job(one=_Section(b="other")), "fp") == base  # b is not included
    assert rule.digest(_Job(one=_Section(a=2)), "fp") != base
    assert rule.digest(_Job(two=_Section()), "fp") != base  # an optional section that appears
    assert rule.digest(_Job(), "other data") != base
    excluding = RunIdentity({"one": all_but("b")}, digits=12)
    assert excluding.of(_Job(), "fp") == {"one": {"a": 1, "c": [1, 2]}, "fingerprint": "fp"}
    assert len(excluding.digest(_Job(), "fp")) == 12


def _sha(d: dict, n: int = 10) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:n]


# in_process came later: how a run executes, so runs named before it existed keep their names
_EXECUTION = {"storage_path", "max_failures", "checkpoint_num_to_keep", "controller_poll_interval_s", "in_process"}
_TREE_MODEL, _TREE_TRAIN = {"type", "xgboost", "lightgbm"}, {"checkpoint_every_rounds"}


# the feature policy's settings (data.*) at their defaults: they did not exist when most runs were named
_POLICY = {"forbidden_features", "sensitive_columns", "allow_sensitive_in"}


def test_each_callers_identity_is_what_its_runs_on_storage_were_named_by() -> None:
    # the rules written out as they were before ResumableRun (and before tree models, whose settings do not name an
    # MLP's run): existing runs must resume under the same names
    t = load_config(TrainJobConfig, None, ["model.name=m"])
    want = {
        "data": t.data.model_dump(mode="json", exclude=_POLICY),
        "model": t.model.model_dump(mode="json", exclude=_TREE_MODEL),
        "train": t.train.model_dump(mode="json", exclude=_EXECUTION | {"run_name"} | _TREE_TRAIN),
        "fingerprint": "fp",
    }
    assert TRAIN_IDENTITY.of(t, "fp") == want and run_name_for(t, "fp") == f"m-{_sha(want)}"

    s = load_config(TuneJobConfig, TUNE_YAML, ["model.name=m", "tune.name=null"])
    want = {
        "data": s.data.model_dump(mode="json", exclude=_POLICY),
        "model": s.model.model_dump(mode="json", exclude=_TREE_MODEL),
        "train": s.train.model_dump(mode="json", exclude=_EXECUTION | {"run_name"} | _TREE_TRAIN),
        "tune": s.tune.model_dump(mode="json", exclude={"name", "max_concurrent_trials"}),
        "fingerprint": "fp",
    }
    assert SEARCH_IDENTITY.of(s, "fp") == want and search_name_for(s, "fp") == f"m-tune-{_sha(want)}"

    mm = load_config(ManyModelsJobConfig, None, ["model.name=m"])
    train_fields = {"epochs", "batch_size", "learning_rate", "weight_decay", "seed"}
    train_fields |= {"early_stopping_patience", "early_stopping_min_delta"}
    set_fields = {"min_rows", "candidates", "fallback", "global_max_rows", "global_batch_size"}
    want = {
        "data": mm.data.model_dump(mode="json", exclude=_POLICY),
        "model": mm.model.model_dump(mode="json", exclude=_TREE_MODEL),
        "train": mm.train.model_dump(mode="json", include=train_fields),
        "manymodels": mm.manymodels.model_dump(mode="json", include=set_fields),
        "fingerprint": "fp",
    }
    assert MANYMODELS_IDENTITY.of(mm, "fp") == want

    p = load_config(PipelineJobConfig, None, ["model.name=m"])
    want = {
        "data": p.data.model_dump(mode="json", exclude=_POLICY),
        "model": p.model.model_dump(mode="json", exclude=_TREE_MODEL),
        "train": p.train.model_dump(mode="json", exclude=_EXECUTION | _TREE_TRAIN),  # the run name counts here
        "tune": None,
        "fingerprint": "fp",
    }
    assert PIPELINE_IDENTITY.of(p, "fp") == want and run_id_for(p, "fp") == _sha(want, 12)


def test_how_a_run_executes_does_not_rename_it() -> None:
    base = load_config(TrainJobConfig, None, [])
    for override in ("train.storage_path=/elsewhere", "train.max_failures=7", "train.checkpoint_num_to_keep=9"):
        assert run_name_for(load_config(TrainJobConfig, None, [override]), "fp") == run_name_for(base, "fp")
    assert run_name_for(load_config(TrainJobConfig, None, ["train.epochs=99"]), "fp") != run_name_for(base, "fp")
    assert run_name_for(load_config(TrainJobConfig, None, ["train.run_name=mine"]), "fp") == "mine"


def test_the_feature_policy_names_a_run_only_where_it_changes_what_the_run_computes() -> None:
    base = run_name_for(load_config(TrainJobConfig, None, []), "fp")
    # refusing a feature the run does not use changes nothing it computes
    assert run_name_for(load_config(TrainJobConfig, None, ["data.forbidden_features=['*email*']"]), "fp") == base
    sensitive = load_config(TrainJobConfig, None, ["data.sensitive_columns=['category']"])
    assert run_name_for(sensitive, "fp") != base  # its reference statistics withhold the column's values
    allowed = load_config(TrainJobConfig, None, ["data.sensitive_columns=['category']", "data.allow_sensitive_in=[capture]"])
    assert run_name_for(allowed, "fp") not in (base, run_name_for(sensitive, "fp"))


def test_config_params_flatten_the_job_config_without_its_registry_section() -> None:
    cfg = load_config(TrainJobConfig, None, ["model.hidden_sizes=[8,4]"])
    params = config_params(cfg)
    assert params["model.hidden_sizes"] == "[8, 4]" and params["train.epochs"] == str(cfg.train.epochs)
    assert not any(k.startswith("registry.") for k in params)
    whole = config_params(_Job(two=_Section()), keep_whole=lambda key: key == "two")
    assert whole == {"one.a": "1", "one.b": "x", "one.c": "[1, 2]", "two": '{"a": 1, "b": "x", "c": [1, 2]}'}


# --- state file --------------------------------------------------------------------------------------------------------
def test_the_state_file_is_written_whole_and_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "rayml_run.json")
    run = ResumableRun("train", "m", "m-abc", path)
    assert run.saved is None and run.state == {}
    run.run_id = "r1"
    run.write_state("running")
    assert json.loads(Path(path).read_text()) == {"status": "running", "mlflow_run_id": "r1", "run_name": "m-abc"}
    run.write_state("failed", error="boom")
    again = ResumableRun("train", "m", "m-abc", path)
    assert again.saved == {"status": "failed", "mlflow_run_id": "r1", "run_name": "m-abc", "error": "boom"}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["rayml_run.json"]  # no temp file left behind

    with pytest.raises(TypeError):  # a write that fails half-way leaves the previous state as it was
        again.write_state("finished", metrics={"not json": object()})
    assert ResumableRun("train", "m", "m-abc", path).saved == again.saved


def test_a_kept_state_keeps_what_a_write_does_not_set(tmp_path: Path) -> None:
    # tune's rayml_tune.json: `name` and `parent_run_id`, and the fields of earlier writes stay
    path = str(tmp_path / "rayml_tune.json")
    Path(path).write_text(json.dumps({"status": "failed", "trials": [1, 2], "error": "old"}))
    run = ResumableRun("tune", "m", "s", path, run_id_key="parent_run_id", name_key="name", keep_state=True)
    run.run_id = "p1"
    run.write_state("running", identity={"a": 1})
    assert run.state == {
        "status": "running",
        "name": "s",
        "parent_run_id": "p1",
        "trials": [1, 2],
        "error": "old",
        "identity": {"a": 1},
    }


# --- the MLflow run ----------------------------------------------------------------------------------------------------
def test_start_creates_the_run_then_a_rerun_resumes_it(tmp_path: Path, registry: Registry) -> None:
    path = str(tmp_path / "rayml_run.json")
    run = ResumableRun("train", "m", "m-abc", path)
    run_id = run.start(registry, "exp", tags={"rayml.run_id": "", "rayml.kind": "model"}, params={"train.epochs": "3"})
    rec = registry.get_run(run_id)
    assert (rec.status, rec.name, rec.tags["rayml.run_id"], rec.tags["rayml.kind"]) == ("RUNNING", "m-abc", run_id, "model")
    assert rec.params == {"train.epochs": "3"} and run.resumed is False
    assert run.state == {"status": "running", "mlflow_run_id": run_id, "run_name": "m-abc"}

    run.fail("worker died: " + "x" * 5000, error="worker died")
    rec = registry.get_run(run_id)
    assert rec.status == "FAILED" and rec.tags["rayml.failure"].startswith("worker died: xx")
    assert len(rec.tags["rayml.failure"]) == 4000  # the reason, cut
    assert rec.metrics["train_time_s"] > 0
    assert run.state == {"status": "failed", "mlflow_run_id": run_id, "run_name": "m-abc", "error": "worker died"}

    rerun = ResumableRun("train", "m", "m-abc", path)
    assert rerun.registered_version(registry) is None  # failed: run it again
    assert rerun.start(registry, "exp", tags={"ignored": "on resume"}) == run_id and rerun.resumed
    assert registry.get_run(run_id).status == "RUNNING" and "ignored" not in registry.get_run(run_id).tags
    rerun.finish("trained", duration_s=12.5, metrics={"val_loss": 0.5})
    rec = registry.get_run(run_id)
    assert rec.status == "FINISHED" and rec.metrics["train_time_s"] == 12.5
    assert rerun.state == {"status": "trained", "mlflow_run_id": run_id, "run_name": "m-abc", "metrics": {"val_loss": 0.5}}
    assert ResumableRun("train", "m", "m-abc", path).saved == rerun.state


def test_a_run_deleted_from_mlflow_is_created_again(tmp_path: Path, registry: Registry) -> None:
    path = str(tmp_path / "state.json")
    first = ResumableRun("manymodels", "m", "m-1", path)
    old = first.start(registry, "exp", tags={})
    registry.client.delete_run(old)  # tests may use the client; the library may not
    again = ResumableRun("manymodels", "m", "m-1", path)
    new = again.start(registry, "exp", tags={})
    assert new != old and not again.resumed and again.state["mlflow_run_id"] == new


def test_a_run_that_was_not_started_cannot_finish(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="start"):
        ResumableRun("train", "m", "m-1", str(tmp_path / "s.json")).finish("trained")


def test_create_or_resume_without_tagging_its_own_id(registry: Registry) -> None:
    run_id, resumed = create_or_resume_run(registry, None, experiment="pipes", name="p-1", tags={"a": "b"}, tag_own_id=False)
    assert not resumed and "rayml.run_id" not in registry.get_run(run_id).tags
    assert create_or_resume_run(registry, run_id, experiment="pipes", name="p-1", tags={}) == (run_id, True)


# --- the registry's run methods -----------------------------------------------------------------------------------------
def test_registry_run_methods(tmp_path: Path, registry: Registry) -> None:
    run_id = registry.create_run("exp", "r", tags={"kind": "child", "parent": "p1"})
    registry.log_metrics(run_id, {"loss": 2.0, "nan": math.nan, "none": None, "inf": math.inf}, step=1)
    registry.log_metrics(run_id, {"loss": 1.0}, step=2)
    assert [(p.step, p.value) for p in registry.metric_history(run_id, "loss")] == [(1, 2.0), (2, 1.0)]
    assert registry.get_run(run_id).metrics == {"loss": 1.0}  # NaN, None and inf were left out
    registry.log_params(run_id, {f"p{i}": "v" * 7000 for i in range(150)})  # more than one batch, values cut
    params = registry.get_run(run_id).params
    assert len(params) == 150 and len(params["p0"]) == 6000
    (tmp_path / "report.json").write_text("{}")
    registry.log_artifact(run_id, tmp_path / "report.json")
    registry.set_run_tags(run_id, {"rayml.stage.train": "done"})
    registry.end_run(run_id, "KILLED")
    rec = registry.get_run(run_id)
    assert rec.status == "KILLED" and rec.tags["rayml.stage.train"] == "done"
    other = registry.create_run("exp", "other", tags={"kind": "child", "parent": "p2"})
    found = registry.search_runs(registry.experiment_id("exp"), {"kind": "child", "parent": "p1"})
    assert [r.run_id for r in found] == [run_id] and other not in [r.run_id for r in found]
    with pytest.raises(RegistryError, match="quotes"):
        registry.search_runs(registry.experiment_id("exp"), {"parent": "it's"})
    with pytest.raises(RegistryError, match="not found"):
        registry.get_run("0" * 32)
    assert registry.model_tags("never-registered") is None


def test_tree_settings_name_tree_runs_only_so_mlp_runs_keep_the_names_they_had_before_trees() -> None:
    from rayml.config import TrainJobConfig
    from rayml.train.trainer import TRAIN_IDENTITY

    mlp = TRAIN_IDENTITY.of(TrainJobConfig(), "fp")
    assert not {"type", "xgboost", "lightgbm"} & set(mlp["model"]) and "checkpoint_every_rounds" not in mlp["train"]
    trees = TRAIN_IDENTITY.of(TrainJobConfig.model_validate({"model": {"type": "xgboost"}}), "fp")
    assert trees["model"]["type"] == "xgboost" and "checkpoint_every_rounds" in trees["train"]
    deeper = TrainJobConfig.model_validate({"model": {"type": "xgboost", "xgboost": {"max_depth": 9}}})
    plain = TrainJobConfig.model_validate({"model": {"type": "xgboost"}})
    assert TRAIN_IDENTITY.digest(deeper, "fp") != TRAIN_IDENTITY.digest(plain, "fp")
