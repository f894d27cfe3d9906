"""What one trial runs: the same training loop as ``rayml train``, in one of two shapes.

- **Single worker** (``workers_per_trial == 1``, the default): a Tune *function trainable* runs
  :func:`rayml.train.run_loop` in the trial's own process through :class:`TuneSession`. No Ray Train worker
  group is started, so a trial costs one process and starts in about a second; the data comes from the object store
  (``tune.with_parameters`` puts it there once for all trials) and every epoch's checkpoint is a Tune checkpoint, which
  is what ASHA's stop decisions and ``Tuner.restore`` act on.
- **Distributed** (``workers_per_trial > 1``): the trial is a small driver that builds a ``TorchTrainer`` (DDP over
  that many workers, as ``rayml train`` does) and calls ``fit()``. Metrics reach Tune through Ray Train's
  ``TuneReportCallback``; checkpoints stay in the trainer's own run directory, named after the trial, so a restarted
  trial resumes from them. The driver reserves only a token CPU share, so ``max_concurrent_trials`` is what bounds how
  many worker groups compete for the cluster (rayml sets it from the cluster size when the config leaves it null).

Trees (``model.type`` xgboost | lightgbm) have the same two shapes: the tree loop of ``rayml train``
(:func:`rayml.train.run_tree_loop`) in the trial's process, reporting to Tune every ``train.checkpoint_every_rounds``
rounds with a checkpoint of the booster (``epoch`` = the boosting round, ASHA's time axis); or an XGBoostTrainer /
LightGBMTrainer per trial (:func:`rayml.train.fit_trees`). A restarted trial boosts on from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from rayml._private import fs
from rayml.config import TrainJobConfig, TuneJobConfig
from rayml.errors import TrainingDivergedError
from rayml.models import ModelSpec
from rayml.train import (
    InMemorySession,
    PreparedData,
    loop_config,
    raise_if_diverged,
    run_loop,
    spec_for,
    train_loop_per_worker,
)
from rayml.tune._space import decode, trial_config

logger = logging.getLogger("rayml.tune")


@contextlib.contextmanager
def _ends_if_diverged() -> Iterator[None]:
    """A trial whose loss went NaN/inf ends where it diverged instead of failing: Tune would retry it
    (``train.max_failures``, forever with -1) and it would diverge again from the same checkpoint. The epochs it
    reported before stay in the search (each was checkpointed before the divergence); the rest of the search goes on."""
    try:
        yield
    except TrainingDivergedError as e:
        logger.warning("a trial diverged and ends here (not retried): %s", e.message)


RESUMED_FROM_EPOCH = "resumed_from_epoch"


@dataclass
class TrialSetup:
    """Everything a trial needs besides the data; shipped once through ``tune.with_parameters``."""

    cfg: TuneJobConfig
    target: str
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    faults: str | None
    train_storage: str  # distributed trials: where each trial's TorchTrainer run keeps its checkpoints
    factory_path: list[str]  # where the driver found the model.factory module (rayml.models.factory.import_path)
    # trees: an injected kill/raise fires once per search (every trial and restart checks this marker), not per attempt
    fault_marker: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(), f"rayml-fault-{uuid.uuid4().hex}"))


def build_trial(setup: TrialSetup, prepared: PreparedData, config: dict[str, Any]) -> tuple[TrainJobConfig, ModelSpec]:
    """The trial's training config and model spec (preprocessing statistics from the shared training split)."""
    cfg = trial_config(setup.cfg, decode(setup.cfg, config))
    return cfg, spec_for(cfg, prepared)


class TuneSession(InMemorySession):
    """The loop inside a single-worker Tune trial: in-memory frames, ``ray.tune.report`` / ``ray.tune.get_checkpoint``.

    Each report also carries ``resumed_from_epoch`` (the epoch this attempt started after; 0 = from scratch), so a
    trial's results show where a resumed search picked it up.
    """

    def __init__(self, train: pd.DataFrame, validation: pd.DataFrame, use_gpu: bool) -> None:
        super().__init__(train, validation, use_gpu)
        self._start_epoch: int | None = None

    def get_checkpoint(self) -> Any:
        import ray.tune

        return ray.tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint: Any) -> None:
        import ray.tune

        if self._start_epoch is None:
            self._start_epoch = int(metrics["epoch"]) - 1
        # the loop builds a ray.train.Checkpoint; Tune wants its own class (same directory, persisted during report)
        ckpt = ray.tune.Checkpoint.from_directory(checkpoint.path) if checkpoint is not None else None
        ray.tune.report({**metrics, RESUMED_FROM_EPOCH: self._start_epoch}, checkpoint=ckpt)


def single_worker_trial(config: dict[str, Any], *, setup: TrialSetup, prepared: PreparedData) -> None:
    """Tune function trainable: one trial = :func:`run_loop` in this process."""
    cfg, spec = build_trial(setup, prepared, config)
    lc = loop_config(cfg, spec, setup.target, None, None)  # per-epoch MLflow logging is the driver callback's job
    lc["faults"] = setup.faults
    lc["factory_path"] = setup.factory_path
    with _ends_if_diverged():
        run_loop(lc, TuneSession(prepared.train, prepared.validation, use_gpu=setup.gpus_per_worker > 0))


def trainer_run_name(trial_id: str) -> str:
    return f"trial_{trial_id}"


def distributed_trial(config: dict[str, Any], *, setup: TrialSetup, prepared: PreparedData) -> None:
    """Tune function trainable: one trial = a ``TorchTrainer`` with ``setup.workers`` DDP workers."""
    import ray.tune
    from ray.train import CheckpointConfig, DataConfig as RayDataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayml._private.ray_session import set_train_poll_interval
    from rayml.train.trainer import to_ray_datasets

    cfg, spec = build_trial(setup, prepared, config)
    # the trainer's controller polls workers for reports this often: Ray's 2 s default would stall every short epoch
    set_train_poll_interval(cfg.train.controller_poll_interval_s)
    run_name = trainer_run_name(ray.tune.get_context().get_trial_id())
    lc = loop_config(cfg, spec, setup.target, None, None)
    lc["faults"] = setup.faults
    lc["factory_path"] = setup.factory_path
    lc["run_dir"] = fs.join(setup.train_storage, run_name)
    lc["report_divergence"] = True  # returned, not raised: Ray Train would restart the worker group on it
    resources = {"CPU": setup.cpus_per_worker}
    if setup.gpus_per_worker > 0:
        resources["GPU"] = setup.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=lc,
        scaling_config=ScalingConfig(
            num_workers=setup.workers, use_gpu=setup.gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            # the same name on a restarted trial: Ray Train resumes from this run's latest checkpoint
            name=run_name,
            storage_path=setup.train_storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.checkpoint_num_to_keep,
                checkpoint_score_attribute=setup.cfg.tune.metric,
                checkpoint_score_order=setup.cfg.resolved_mode,
            ),
            # mypy sees ray.train's Train v1 RunConfig (tune Callbacks); Ray runs Train v2's, which takes UserCallbacks
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
        datasets=to_ray_datasets(prepared, setup.workers),
        dataset_config=RayDataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    with _ends_if_diverged():
        raise_if_diverged(getattr(result, "return_value", None))  # Train v2's Result (mypy sees v1's, without it)


# --- trees ---------------------------------------------------------------------------------------------------------------
class TuneTreeSession:
    """The tree loop inside a single-worker Tune trial: the shared frames, ``ray.tune`` checkpoints and reports."""

    rank = 0

    def __init__(self, train: pd.DataFrame, validation: pd.DataFrame) -> None:
        self._train, self._validation = train, validation

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self._train, self._validation

    def get_checkpoint(self) -> Any:
        import ray.tune

        return ray.tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        import ray.tune

        # the loop builds a ray.train.Checkpoint; Tune wants its own class (same directory, persisted during report)
        ckpt = ray.tune.Checkpoint.from_directory(checkpoint.path) if checkpoint is not None else None
        ray.tune.report(metrics, checkpoint=ckpt)


def _tree_trial(setup: TrialSetup, config: dict[str, Any]) -> TrainJobConfig:
    """The trial's training config, with the trial's resources in its train section."""
    cfg = trial_config(setup.cfg, decode(setup.cfg, config))
    train = cfg.train.model_copy(
        update={"num_workers": setup.workers, "cpus_per_worker": setup.cpus_per_worker, "use_gpu": setup.gpus_per_worker > 0}
    )
    return cfg.model_copy(update={"train": train})


def _tree_overrides(setup: TrialSetup) -> dict[str, Any]:
    return {"faults": setup.faults, "fault_marker": setup.fault_marker}


def single_worker_tree_trial(config: dict[str, Any], *, setup: TrialSetup, prepared: PreparedData) -> None:
    """Tune function trainable: one trial = the tree loop in this process."""
    from rayml.train import TreeEncoding, run_tree_loop, tree_loop_config

    cfg = _tree_trial(setup, config)
    # per-round MLflow logging is the driver callback's job; no run directory: Tune keeps this trial's checkpoints
    loop = tree_loop_config(cfg, TreeEncoding.of(prepared.schema), None, None, "") | _tree_overrides(setup)
    with _ends_if_diverged():
        run_tree_loop(loop, TuneTreeSession(prepared.train, prepared.validation))


def distributed_tree_trial(config: dict[str, Any], *, setup: TrialSetup, prepared: PreparedData) -> None:
    """Tune function trainable: one trial = an XGBoostTrainer / LightGBMTrainer with ``setup.workers`` workers."""
    cfg = _tree_trial(setup, config)
    # a seeded shuffle makes every worker's shard look alike (as `rayml train` does for trees)
    shuffled = prepared.train.sample(frac=1.0, random_state=cfg.train.seed).reset_index(drop=True)
    with _ends_if_diverged():
        _fit_tree_trial(cfg, setup, prepared, shuffled)


def _fit_tree_trial(cfg: TrainJobConfig, setup: TrialSetup, prepared: PreparedData, shuffled: pd.DataFrame) -> None:
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayml.train import TreeEncoding, fit_trees
    from rayml.train.trainer import to_ray_datasets

    fit_trees(
        cfg,
        to_ray_datasets(replace(prepared, train=shuffled), setup.workers),
        TreeEncoding.of(prepared.schema),
        trainer_run_name(ray.tune.get_context().get_trial_id()),
        setup.train_storage,
        None,
        None,
        callbacks=[TuneReportCallback()],
        loop_overrides=_tree_overrides(setup),
        checkpoint_score=(setup.cfg.tune.metric, setup.cfg.resolved_mode),
    )
