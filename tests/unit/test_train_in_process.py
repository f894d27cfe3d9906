"""Training in one process without Ray (``train.in_process``): the same loop, checkpoints, export and registration as a
Ray run; and numerical stability: a NaN or infinite loss stops training with a clear error and registers nothing."""

from __future__ import annotations

import importlib
import io
import logging
import os
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray

from rayml.config import TrainJobConfig, load_config
from rayml.errors import ConfigError, TrainingError
from rayml.models import PERF_TAGS, ModelDir
from rayml.registry import Registry
from rayml.testing import sample_frame
from rayml.train import train

# A user's network (model.factory): it records the process of every training forward pass (not the 2-row dry run), and
# from validation pass POISON[0] on (0: never) answers NaN, as a network that overflows would.
NET = """
import os
from torch import nn

TRAINING_PIDS = []
POISON = [0]
_validations = [0]


class Net(nn.Module):
    def __init__(self, schema):
        super().__init__()
        self.lin = nn.Linear(schema.n_numeric, 1)

    def forward(self, numeric, categorical):
        out = self.lin(numeric).squeeze(-1)
        if numeric.shape[0] <= 2:  # the driver's dry run
            return out
        if self.training:
            TRAINING_PIDS.append(os.getpid())
            return out
        _validations[0] += 1
        return out * float("nan") if POISON[0] and _validations[0] >= POISON[0] else out


def net(schema):
    return Net(schema)
"""


@pytest.fixture
def user_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A uniquely named factory module on sys.path (its source names the run): returns (module, "module:net")."""
    name = f"debug_nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name), f"{name}:net"
    sys.modules.pop(name, None)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch):
    """Fails the test if anything starts Ray: ``ray.init`` raises, and Ray is up after the test only if it was before
    (the suite runs in a random order: an integration test may have started the shared Ray already)."""
    was_up = ray.is_initialized()

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called in an in-process run")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray._private.worker, "init", refuse)  # what auto-initialisation (Ray Data, ray.put) calls
    yield
    assert ray.is_initialized() == was_up


def small_cfg(tmp_path: Path, tracking_uri: str, *extra: str) -> TrainJobConfig:
    return load_config(
        TrainJobConfig,
        None,
        [
            "data.synthetic.segments=2",
            "data.synthetic.rows_per_segment=60",
            "train.epochs=3",
            "train.batch_size=32",
            "model.hidden_sizes=[8]",
            "train.in_process=true",
            f"train.storage_path={tmp_path / 'runs'}",
            f"registry.tracking_uri={tracking_uri}",
            *extra,
        ],
    )


def checkpoint_dirs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "runs").glob("*/checkpoint_*"))


def _only_run(registry: Registry):
    (run,) = registry.client.search_runs([registry.experiment_id("rayml")])
    return run


def test_in_process_trains_the_users_network_here_without_ray_and_registers_what_a_ray_run_does(
    tmp_path: Path, tracking_uri: str, user_net, no_ray
) -> None:
    module, factory = user_net
    result = train(small_cfg(tmp_path, tracking_uri, f"model.factory={factory}", "train.checkpoint_num_to_keep=1"))
    assert module.TRAINING_PIDS and set(module.TRAINING_PIDS) == {os.getpid()}  # a breakpoint there stops this process

    assert result.epoch_history == [1, 2, 3] and result.resumed_from == [0] and result.epochs_completed == 3
    v = result.model_version
    assert v is not None and v.ref == "sales-model:1" and v.tags["rayml.best_epoch"] == str(result.best_epoch)
    assert v.tags["rayml.run_id"] == result.mlflow_run_id and v.tags["rayml.data_fingerprint"] == result.data_fingerprint
    # the four performance records: training time and peak memory from the run, the serving probe from registration
    assert {t: float(v.tags[t]) > 0 for t in PERF_TAGS.values()} == dict.fromkeys(PERF_TAGS.values(), True)
    registry = Registry(tracking_uri)
    run = _only_run(registry)
    assert run.info.status == "FINISHED" and run.data.metrics["peak_memory_bytes"] > 0
    assert run.data.metrics["serving_latency_ms"] == pytest.approx(float(v.tags[PERF_TAGS["latency_ms"]]), rel=1e-5)

    # the model directory: ONNX with parity, served from the registry like any version
    md = ModelDir.read(str(result.model_dir))
    assert md.meta["source"]["framework"] == "torch-factory" and md.meta["parity_max_abs_diff"] <= 1e-4
    rows = sample_frame().head(20)
    assert np.isfinite(registry.load(v.ref).predict(rows)).all()
    # checkpoints persisted as a Ray run's are: the best by val_loss and the newest (checkpoint_num_to_keep=1)
    kept = checkpoint_dirs(tmp_path)
    assert f"checkpoint_local_{result.best_epoch:06d}" in kept and "checkpoint_local_000003" in kept and len(kept) <= 2

    again = train(small_cfg(tmp_path, tracking_uri, f"model.factory={factory}", "train.checkpoint_num_to_keep=1"))
    assert again.already_done and again.model_version is not None and again.model_version.version == 1


def test_an_interrupted_in_process_run_resumes_from_its_last_checkpoint(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, no_ray
) -> None:
    monkeypatch.setenv("RAYML_FAULT_INJECT", "raise@epoch=2")  # raises in the loop half-way through epoch 2
    with pytest.raises(TrainingError, match="injected"):
        train(small_cfg(tmp_path, tracking_uri))
    assert checkpoint_dirs(tmp_path) == ["checkpoint_local_000001"]
    monkeypatch.delenv("RAYML_FAULT_INJECT")

    result = train(small_cfg(tmp_path, tracking_uri))  # the same command again
    assert result.resumed_from == [0, 1] and result.epoch_history == [1, 2, 3]
    assert result.model_version is not None and result.model_version.version == 1


@pytest.mark.parametrize(
    ("cause", "settings", "loss"),
    [
        ("a huge learning rate", ["train.learning_rate=1e30"], "nan"),
        ("an infinite value in the data", [], None),
    ],
)
def test_a_non_finite_training_loss_stops_at_once_names_epoch_and_batch_and_registers_nothing(
    tmp_path: Path, tracking_uri: str, no_ray, cause: str, settings: list[str], loss: str | None
) -> None:
    extra = list(settings)
    if not settings:  # data validation lets inf through: the loss is what catches it
        df = sample_frame(rows_per_segment=30, segments=2)
        df.loc[df.index[5], "price"] = np.inf
        path = tmp_path / "sales.parquet"
        df.to_parquet(path)
        extra = [f"data.source={path}", "data.target=sales", "data.segment=[store_id]", "data.ignore_columns=[date,high_sales]"]
    with pytest.raises(TrainingError) as e:
        train(small_cfg(tmp_path, tracking_uri, *extra))
    msg = str(e.value)
    assert "training diverged: the training loss is" in msg and "at epoch 1, batch " in msg, cause
    assert loss is None or f"loss is {loss}" in msg
    assert "no epoch was checkpointed, nothing is registered" in msg
    assert e.value.hint and "lower the learning rate" in e.value.hint and "infinite values" in e.value.hint

    registry = Registry(tracking_uri)
    assert registry.list_models() == []
    assert checkpoint_dirs(tmp_path) == []
    run = _only_run(registry)
    assert run.info.status == "FAILED" and "training diverged" in run.data.tags["rayml.failure"]
    assert run.data.metrics["diverged"] == 1


def test_a_non_finite_validation_loss_keeps_only_the_epochs_before_it(
    tmp_path: Path, tracking_uri: str, user_net, no_ray
) -> None:
    module, factory = user_net
    module.POISON[0] = 2  # the network answers NaN from the second validation pass (epoch 2) on
    with pytest.raises(TrainingError) as e:
        train(small_cfg(tmp_path, tracking_uri, f"model.factory={factory}"))
    assert "the validation loss is nan at the end of epoch 2" in str(e.value)
    assert "the checkpoint of epoch 1 is the last one kept" in str(e.value)
    assert checkpoint_dirs(tmp_path) == ["checkpoint_local_000001"]  # nothing of the diverged epoch
    assert Registry(tracking_uri).list_models() == []


def test_trees_train_in_process_too(tmp_path: Path, tracking_uri: str, no_ray) -> None:
    cfg = load_config(
        TrainJobConfig,
        None,
        [
            "data.synthetic.segments=2",
            "data.synthetic.rows_per_segment=60",
            "model.type=xgboost",
            "model.xgboost.num_boost_round=6",
            "train.checkpoint_every_rounds=3",
            "train.in_process=true",
            f"train.storage_path={tmp_path / 'runs'}",
            f"registry.tracking_uri={tracking_uri}",
        ],
    )
    result = train(cfg)
    assert result.epochs_completed == 6 and result.epoch_history == [1, 2, 3, 4, 5, 6]
    assert checkpoint_dirs(tmp_path) == ["checkpoint_local_000003", "checkpoint_local_000006"]
    v = result.model_version
    assert v is not None and v.tags["rayml.model_type"] == "xgboost"
    assert all(float(v.tags[t]) > 0 for t in PERF_TAGS.values())  # the tree loop samples worker memory too


def test_a_tree_round_with_a_non_finite_validation_loss_stops_boosting_before_checkpointing_it(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, no_ray
) -> None:
    from rayml.train._trees import Progress

    after_round = Progress.after_round

    def poisoned(self, booster, round_, val_loss, metrics=None):  # what the booster would report if it overflowed
        return after_round(self, booster, round_, float("inf") if round_ == 5 else val_loss, metrics)

    monkeypatch.setattr(Progress, "after_round", poisoned)
    cfg = load_config(
        TrainJobConfig,
        None,
        [
            "data.synthetic.segments=2",
            "data.synthetic.rows_per_segment=60",
            "model.type=lightgbm",
            "model.lightgbm.num_boost_round=8",
            "train.checkpoint_every_rounds=2",
            "train.in_process=true",
            f"train.storage_path={tmp_path / 'runs'}",
            f"registry.tracking_uri={tracking_uri}",
        ],
    )
    with pytest.raises(TrainingError) as e:
        train(cfg)
    assert "the validation loss is inf at round 5" in str(e.value) and "checkpoint of round 4" in str(e.value)
    assert "lower the learning rate (now 0.1)" in (e.value.hint or "")
    assert checkpoint_dirs(tmp_path) == ["checkpoint_local_000002", "checkpoint_local_000004"]
    assert Registry(tracking_uri).list_models() == []


def test_boost_in_process_refuses_a_non_finite_validation_history(monkeypatch: pytest.MonkeyPatch) -> None:
    # many models' per-segment boosting: XGBoost refuses inf labels itself, so its evaluation log is faked to diverge
    import xgboost

    from rayml.config import DataConfig, XGBoostSettings
    from rayml.data import infer_schema
    from rayml.train._tree_fit import boost_in_process
    from rayml.train._trees import TreeEncoding

    def diverging(params, dtrain, num_boost_round, evals, early_stopping_rounds, evals_result, verbose_eval):
        evals_result["validation"] = {params["eval_metric"]: [3.0, 2.0, float("nan")]}
        return None

    monkeypatch.setattr(xgboost, "train", diverging)
    df = sample_frame(rows_per_segment=20, segments=2)
    data = DataConfig(target="sales", segment=["store_id"], ignore_columns=["date", "high_sales"])
    enc = TreeEncoding.of(infer_schema(df, data))
    with pytest.raises(TrainingError, match="validation metric is not finite"):
        boost_in_process("xgboost", XGBoostSettings().model_dump(), enc, df.iloc[:30], df.iloc[30:], seed=0)


def test_rayml_train_in_process_prints_that_it_runs_here(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, no_ray
) -> None:
    from rayml.cli.train import train as train_cmd

    rayml_logger = logging.getLogger("rayml")
    saved = (list(rayml_logger.handlers), rayml_logger.level, rayml_logger.propagate)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # the console follows sys.stdout
    settings = [
        "data.synthetic.segments=2",
        "data.synthetic.rows_per_segment=40",
        "train.epochs=1",
        "model.hidden_sizes=[4]",
        f"train.storage_path={tmp_path / 'runs'}",
        f"registry.tracking_uri={tracking_uri}",
    ]
    try:
        train_cmd(config=None, set_=settings, in_process=True, verbose=False)
    finally:
        rayml_logger.handlers[:], rayml_logger.level, rayml_logger.propagate = saved
    text = out.getvalue()
    assert "Training in this process without Ray (train.in_process): 1 epoch(s), one worker." in text
    assert "Registered model: sales-model version 1" in text and "Logs of Ray" not in text  # nothing redirected
    params = _only_run(Registry(tracking_uri)).data.params
    assert params["train.in_process"] == "True"


def test_in_process_does_not_rename_the_run() -> None:
    # how a run executes is not part of its name: an in-process debug run continues a Ray run's checkpoints
    from rayml.train import run_name_for

    cfg = load_config(TrainJobConfig, None, [])
    debug = load_config(TrainJobConfig, None, ["train.in_process=true"])
    assert run_name_for(cfg, "fp") == run_name_for(debug, "fp")


@pytest.mark.parametrize(
    ("cls", "extra", "expected"),
    [
        ("TuneJobConfig", ["tune.space={'train.learning_rate': {'grid': [0.1, 0.01]}}"], "Ray Tune trials"),
        ("ManyModelsJobConfig", ["data.segment=[store_id]"], "parallel Ray tasks"),
    ],
)
def test_searches_and_many_models_refuse_in_process_instead_of_ignoring_it(cls: str, extra: list[str], expected: str) -> None:
    import rayml.config as config

    with pytest.raises(ConfigError) as e:
        config.load_config(getattr(config, cls), None, ["train.in_process=true", *extra])
    assert "train.in_process" in str(e.value) and expected in str(e.value) and "rayml train --in-process" in str(e.value)
