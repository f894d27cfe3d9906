"""Train a model with Ray Train, export it to ONNX and register it with its lineage.

``model.type: mlp`` trains a torch network on ``TorchTrainer`` (here and in :mod:`rayml.train._loop`);
``xgboost`` / ``lightgbm`` boost trees on Ray Train's XGBoost / LightGBM trainers (:mod:`rayml.train._trees`, the
worker loop, and :mod:`rayml.train._tree_fit`, the driver side and the export), with the same run, recovery and
registration.

Crash recovery has two layers:
- a worker that dies (or raises) is restarted by Ray Train (``FailureConfig(max_failures)``) from the last checkpoint;
- a driver that dies is recovered by running the same command again: the run name is derived from the config and the
  data fingerprint, so the second run finds the first one's checkpoints under the same ``RunConfig(name,
  storage_path)`` and continues from the last one. A run that already registered its model is not trained again.

A NaN or infinite loss is no crash to recover from: the loop stops before checkpointing it and the run fails at once
with a :class:`rayml.errors.TrainingError` naming the epoch and batch (:mod:`rayml.train._numerics`).

``train.in_process`` runs the same loop in this process without Ray, to debug it (:mod:`rayml.train._local`); the
rest (run, checkpoints, export, registration) is the same. A registered version carries its training time, peak
worker memory and serving probe figures (``rayml.perf.*`` tags, see :mod:`rayml.registry`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml._private import constants, fs
from rayml._private.lineage import lineage_tags as lineage_tags  # shared with imported models' registration
from rayml.config import (
    ConfigLike,
    DataConfig,
    Overrides,
    TrainJobConfig,
    dump_config,
    model_type_problems,
    resolve_config,
)
from rayml.data import Schema, fingerprint, infer_schema, load_table, reference_stats, train_validation_split, validate
from rayml.errors import ConfigError, TrainingError
from rayml.models import ModelDir, ModelSpec, build_model, build_spec, check_parity, export_onnx, torch_predict
from rayml.models.factory import import_path, model_source, source_digest
from rayml.registry import ModelVersionInfo, Registry
from rayml.train._run import ALL, EXECUTION_FIELDS, ResumableRun, RunIdentity, all_but, config_params
from rayml.train._trees import TreeEncoding

logger = logging.getLogger("rayml.train")

STATE_FILE = "rayml_run.json"
# What determines the trained model: data, model and training settings (not storage, the run name or retries).
TRAIN_IDENTITY = RunIdentity({"data": ALL, "model": ALL, "train": all_but(*EXECUTION_FIELDS, "run_name")})


@dataclass
class PreparedData:
    """Validated, split training data and what was learned about it."""

    train: pd.DataFrame
    validation: pd.DataFrame
    schema: Schema
    fingerprint: str
    source: str


@dataclass
class TrainResult:
    """What a training run produced."""

    run_name: str
    storage_path: str
    mlflow_run_id: str
    data_fingerprint: str
    metrics: dict[str, float]
    best_epoch: int
    epochs_completed: int
    epoch_history: list[int] = field(default_factory=list)  # epochs as logged, in order (a resumed run shows no repeats)
    resumed_from: list[int] = field(default_factory=list)  # start epoch of every attempt (0 = from scratch)
    model_version: ModelVersionInfo | None = None
    model_dir: str | None = None
    already_done: bool = False

    @property
    def early_stopped(self) -> bool:
        return bool(self.metrics.get("early_stopped", 0))


def prepare_data(cfg: DataConfig, seed: int) -> PreparedData:
    """Load, infer the schema, validate (all problems at once), fingerprint and split the training data (stratified by
    class for multiclass, so every class is in both parts)."""
    df = load_table(cfg)
    schema = infer_schema(df, cfg)
    validate(df, schema, max_nan_fraction=cfg.max_nan_fraction, require_target=True, source=cfg.source)
    stratify = schema.target if schema.task == "multiclass" else None
    split = train_validation_split(df, cfg.validation_fraction, seed, stratify=stratify)
    if len(split.train) == 0:
        raise ConfigError(
            f"the training split is empty ({len(df)} rows)", hint="use more data or a smaller data.validation_fraction"
        )
    return PreparedData(split.train, split.validation, schema, fingerprint(df), cfg.source)


def run_name_for(cfg: TrainJobConfig, data_fingerprint: str) -> str:
    """``train.run_name``, or ``<model>-<digest of TRAIN_IDENTITY>``: the same command on the same data finds its run.

    With ``model.factory`` the digest also covers the factory module's source, so an edited network trains anew
    instead of resuming (or returning) the run of the previous version.
    """
    if cfg.train.run_name:
        return cfg.train.run_name
    if cfg.model.factory:
        data_fingerprint = f"{data_fingerprint}+{source_digest(cfg.model.factory)}"
    return f"{cfg.model.name}-{TRAIN_IDENTITY.digest(cfg, data_fingerprint)}"


def spec_for(cfg: TrainJobConfig, prepared: PreparedData, *, check_factory: bool = False) -> ModelSpec:
    """The model spec of ``cfg.model``, with preprocessing statistics from the training split.

    Args:
        cfg: the training config.
        prepared: its data.
        check_factory: (on the driver) import and dry-run the ``model.factory`` network now, so a bad one fails
            before any run or worker starts.

    Raises:
        ConfigError: ``model.type`` is a tree type (no torch spec: only ``rayml train`` trains trees so far), or
            ``check_factory`` and the factory cannot be loaded or its network does not fit the contract.
    """
    m = cfg.model
    if m.is_tree:
        raise ConfigError(
            f"model.type {m.type!r} is trained by `rayml train` only in this version; this command trains torch "
            "networks (model.type mlp)",
            hint="set model.type=mlp here, or train the trees with `rayml train --config ...`",
        )
    spec = build_spec(
        prepared.train,
        prepared.schema,
        m.hidden_sizes,
        m.dropout,
        m.embedding_dim,
        factory=m.factory,
        factory_kwargs=m.factory_kwargs,
    )
    if check_factory and spec.factory:
        build_model(spec)
    return spec


def storage_path_for(cfg: TrainJobConfig) -> str:
    path = cfg.train.storage_path or constants.default_storage_path()
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def loop_config(
    cfg: TrainJobConfig,
    spec: ModelSpec,
    target: str,
    tracking_uri: str | None,
    mlflow_run_id: str | None,
    run_dir: str | None = None,
) -> dict[str, Any]:
    """The plain dict every worker receives (also what Tune's search space overrides)."""
    t = cfg.train
    return {
        "spec": spec.to_dict(),
        "model_name": cfg.model.name,  # labels the workers' resource gauges
        "target": target,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "seed": t.seed,
        "amp": t.amp,
        "early_stopping_patience": t.early_stopping_patience,
        "early_stopping_min_delta": t.early_stopping_min_delta,
        "cache_shard_in_memory": t.cache_shard_in_memory,
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "run_dir": run_dir,  # where this run's checkpoints are stored (see rayml.train._checkpoints)
        "faults": constants.fault_injection(),
        "fault_marker": os.path.join(tempfile.gettempdir(), f"rayml-fault-{uuid.uuid4().hex}"),
    }


def to_ray_datasets(prepared: PreparedData, num_workers: int) -> dict[str, Any]:
    import ray.data

    def blocks(df: pd.DataFrame) -> list[pd.DataFrame]:
        n = max(1, min(len(df), num_workers * 2))
        bounds = np.linspace(0, len(df), n + 1).astype(int)
        return [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a] or [df]

    return {
        "train": ray.data.from_pandas(blocks(prepared.train)),
        "validation": ray.data.from_pandas(blocks(prepared.validation)),
    }


def _check_gpus(cfg: TrainJobConfig) -> None:
    import ray

    if not cfg.train.use_gpu:
        return
    have = int(ray.cluster_resources().get("GPU", 0))
    if have < cfg.train.num_workers and not constants.ray_address():
        raise ConfigError(
            f"train.use_gpu=true needs {cfg.train.num_workers} GPU(s) but this Ray has {have}",
            hint="set train.use_gpu=false (--set train.use_gpu=false) or run on a cluster with GPU workers (RAY_ADDRESS)",
        )
    if have < cfg.train.num_workers:
        logger.warning("waiting for %d GPU worker(s); the cluster has %d GPU(s) now", cfg.train.num_workers, have)


def fit(
    cfg: TrainJobConfig,
    prepared: PreparedData,
    spec: ModelSpec,
    run_name: str,
    storage_path: str,
    tracking_uri: str | None,
    mlflow_run_id: str | None,
):
    """Run the Ray Train loop; returns the ``ray.train.Result``.

    Raises:
        TrainingError: the loop stopped on a NaN or infinite loss (see :mod:`rayml.train._numerics`).
    """
    import ray
    from ray.train import CheckpointConfig, DataConfig as RayDataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayml._private.ray_session import ensure_ray, set_train_poll_interval
    from rayml.train._loop import train_loop_per_worker
    from rayml.train._numerics import raise_if_diverged
    from rayml.train._tracking import MlflowReportCallback

    ensure_ray()
    _check_gpus(cfg)
    set_train_poll_interval(cfg.train.controller_poll_interval_s)
    t = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            **loop_config(
                cfg, spec, prepared.schema.target, tracking_uri, mlflow_run_id, run_dir=fs.join(storage_path, run_name)
            ),
            "driver_node_id": ray.get_runtime_context().get_node_id(),  # see rayml.train._tracking
            "factory_path": import_path(spec.factory) if spec.factory else [],  # workers import the module from here
            "report_divergence": True,  # a NaN loss ends the run without retries; raised below (rayml.train._numerics)
        },
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=t.max_failures),
            # mypy sees ray.train's Train v1 RunConfig (tune Callbacks); Ray runs Train v2's, which takes UserCallbacks
            callbacks=[MlflowReportCallback(tracking_uri, mlflow_run_id)] if tracking_uri and mlflow_run_id else [],  # type: ignore[list-item]
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.checkpoint_num_to_keep, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
        ),
        datasets=to_ray_datasets(prepared, t.num_workers),
        # every worker validates on the whole validation set: identical metrics, identical early-stopping decisions
        dataset_config=RayDataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    raise_if_diverged(getattr(result, "return_value", None))  # Train v2's Result (mypy sees v1's, without it)
    return result


def load_state_dict_from_checkpoint(checkpoint) -> dict[str, Any]:
    import torch

    from rayml.train._checkpoints import STATE_FILE as CKPT_FILE

    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CKPT_FILE), map_location="cpu", weights_only=True)


def export_model_dir(
    out_dir: str | Path, spec: ModelSpec, state: dict[str, Any], prepared: PreparedData, meta_extra: dict[str, Any]
) -> Path:
    """Export the checkpointed model to ONNX (parity-checked) as a model directory (:class:`rayml.models.ModelDir`)
    with its metadata and reference statistics.

    Args:
        out_dir: an empty or new directory.
        spec: the model's architecture and preprocessing.
        state: the checkpoint's state (``state["model"]`` is the torch state dict).
        prepared: the data it was trained on (schema, fingerprint; rows for the parity check and reference bins).
        meta_extra: more metadata to record (``name``, ``metrics``, ``lineage`` ...); it wins over the fields set
            here, except ``kind`` and the signature, which :meth:`ModelDir.write_model` takes from the ONNX graph.

    Returns:
        The directory, ready for ``Registry.register``.
    """
    model = build_model(spec)
    model.load_state_dict(state["model"])
    model.eval()
    onnx_bytes = export_onnx(model)
    sample = prepared.validation.head(512) if len(prepared.validation) else prepared.train.head(512)
    parity = check_parity(model, onnx_bytes, sample)
    # prediction bins from every training row (up to 200k), not only the validation split: on small data a few dozen
    # validation rows made the reference so coarse that clean traffic read as prediction drift
    rows = pd.concat([prepared.train, prepared.validation], ignore_index=True)
    rows = rows.sample(200_000, random_state=0) if len(rows) > 200_000 else rows
    stats = reference_stats(prepared.train, prepared.schema, predictions=torch_predict(model, rows) if len(rows) else None)
    meta = {
        "task": prepared.schema.task,
        "target": prepared.schema.target,
        **({"class_labels": list(spec.class_labels)} if spec.class_labels else {}),  # multiclass: original types
        "schema": prepared.schema.to_dict(),
        "spec": spec.to_dict(),
        "parity_max_abs_diff": parity,
        "source": model_source(spec),
        "data_fingerprint": prepared.fingerprint,
        **meta_extra,
    }
    return ModelDir.write_model(
        out_dir, onnx_bytes=onnx_bytes, meta=meta, reference_stats=stats, input_example=sample.head(5)
    ).path


def _history(registry: Registry, run_id: str) -> tuple[list[int], list[int]]:
    """(epochs as logged, in order; the start epoch of every attempt) from the MLflow run's metric history."""
    epochs = [p.step for p in registry.metric_history(run_id, "val_loss")]
    starts = [int(p.value) for p in registry.metric_history(run_id, "resumed_from_epoch")]
    return epochs, starts


def train(config: ConfigLike = None, *, overrides: Overrides = None, registry: Registry | None = None) -> TrainResult:
    """Train, export and register a model as the config says. Re-running after a crash resumes; after success, no-op.

    Args:
        config: the job config: a TrainJobConfig object, a YAML path or a dict shaped like the YAML (None: defaults).
        overrides: applied on top, as ``{"train.epochs": 3}`` or ``["train.epochs=3"]`` (the CLI's ``--set``).
        registry: the registry to use (default: ``registry.tracking_uri`` of the config).

    Returns:
        The :class:`TrainResult`, with ``model_version`` set when the model was registered.

    Raises:
        ConfigError, DataError: bad config or data (nothing is trained).
        TrainingError: training failed after its retries; re-running the same command resumes from the last checkpoint.
            Or it diverged (a NaN or infinite loss): the message names the epoch and batch; nothing is registered.

    Example:
        >>> result = train("jobs/configs/train.yaml", overrides={"train.epochs": 3})
        >>> result.model_version.ref
        'sales-model:1'
        >>> train("jobs/configs/train.yaml", overrides={"train.in_process": True})  # no Ray: breakpoints work
    """
    cfg = resolve_config(TrainJobConfig, config, overrides)
    problems = model_type_problems(cfg.model, cfg.train)
    if problems:
        raise ConfigError("; ".join(problems), hint=f"model.type {cfg.model.type!r} trains with its own settings; see the README")
    logger.info("resolved config:\n%s", dump_config(cfg))
    t0 = time.perf_counter()
    prepared = prepare_data(cfg.data, cfg.train.seed)
    run_name = run_name_for(cfg, prepared.fingerprint)
    storage_path = storage_path_for(cfg)
    run = ResumableRun("train", cfg.model.name, run_name, fs.join(storage_path, run_name, STATE_FILE), started=t0)
    registry = registry or Registry(cfg.registry.tracking_uri)
    done = run.registered_version(registry) if cfg.registry.register_version else None
    if done is not None:
        logger.info("run %s already finished and registered %s; nothing to do", run_name, done.ref)
        return _already_trained(registry, run, storage_path, prepared.fingerprint, done)

    spec = None if cfg.model.is_tree else spec_for(cfg, prepared, check_factory=True)
    tags = lineage_tags(prepared.fingerprint, "", {"rayml.train_run_name": run_name, "rayml.data_source": prepared.source})
    run.start(registry, cfg.registry.experiment, tags=tags, params=config_params(cfg))
    try:
        if spec is None:
            return _fit_and_register_trees(cfg, registry, prepared, run, storage_path)
        return _fit_and_register(cfg, registry, prepared, spec, run, storage_path)
    except Exception as e:
        run.fail(str(e), error=str(e)[:2000])
        if isinstance(e, TrainingError):
            raise
        logger.error("training run %s failed", run_name, exc_info=True)  # an unexpected error: its traceback, to the log
        raise TrainingError(
            f"training run {run_name!r} failed: {e}",
            hint="re-run the same command to resume from the last checkpoint; raise train.max_failures for flaky workers",
        ) from e


def _already_trained(
    registry: Registry, run: ResumableRun, storage_path: str, data_fingerprint: str, info: ModelVersionInfo
) -> TrainResult:
    """What an earlier attempt that registered its model left, as a :class:`TrainResult` (``already_done``)."""
    state = run.state
    epochs, starts = _history(registry, state["mlflow_run_id"])
    return TrainResult(
        run_name=run.name,
        storage_path=storage_path,
        mlflow_run_id=state["mlflow_run_id"],
        data_fingerprint=data_fingerprint,
        metrics=state.get("metrics", {}),
        best_epoch=state.get("best_epoch", 0),
        epochs_completed=state.get("epochs_completed", 0),
        epoch_history=epochs,
        resumed_from=starts,
        model_version=info,
        already_done=True,
    )


def _fit_and_register(
    cfg: TrainJobConfig, registry: Registry, prepared: PreparedData, spec: ModelSpec, run: ResumableRun, storage_path: str
) -> TrainResult:
    """Train (from the run's last checkpoint, if any), log the best epoch, export and register it, finish the run."""
    run_id, run_name = str(run.run_id), run.name
    if cfg.train.in_process:
        from rayml.train._local import fit_in_process

        result = fit_in_process(cfg, prepared, spec, run_name, storage_path, registry.tracking_uri, run_id)
    else:
        result = fit(cfg, prepared, spec, run_name, storage_path, registry.tracking_uri, run_id)
    state_dict, metrics, epochs_completed = _best_epoch(result, run_name)
    best_epoch = int(state_dict["epoch"])
    metrics["train_time_s"] = run.elapsed()
    registry.log_metrics(run_id, {f"best_{k}": v for k, v in metrics.items() if k.startswith("val_")}, step=best_epoch)
    registry.log_metrics(run_id, {"best_epoch": float(best_epoch)})
    epochs, starts = _history(registry, run_id)

    out = TrainResult(
        run_name=run_name,
        storage_path=storage_path,
        mlflow_run_id=run_id,
        data_fingerprint=prepared.fingerprint,
        metrics=metrics,
        best_epoch=best_epoch,
        epochs_completed=epochs_completed,
        epoch_history=epochs,
        resumed_from=starts,
    )
    tags = lineage_tags(prepared.fingerprint, run_id, {"rayml.train_run_name": run_name, "rayml.best_epoch": str(best_epoch)})
    model_dir = Path(tempfile.mkdtemp(prefix="rayml-model-"))
    export_model_dir(model_dir, spec, state_dict, prepared, {"name": cfg.model.name, "metrics": metrics, "lineage": tags})
    return _register_and_finish(cfg, registry, run, out, model_dir, tags)


def _register_and_finish(
    cfg: TrainJobConfig, registry: Registry, run: ResumableRun, out: TrainResult, model_dir: Path, tags: dict[str, str]
) -> TrainResult:
    """Register the exported model directory (when the config says so) with the run's performance figures, set the
    alias, finish the run."""
    run_id, run_name = str(run.run_id), run.name
    metrics, best_epoch = out.metrics, out.best_epoch
    out.model_dir = str(model_dir)
    peak = peak_memory_bytes(registry, run_id, 1 if cfg.train.in_process else cfg.train.num_workers)
    if peak is not None:
        registry.log_metrics(run_id, {"peak_memory_bytes": peak})
    if cfg.registry.register_version:
        perf = {"train_time_s": metrics["train_time_s"], "peak_memory_bytes": peak}
        info = registry.register(cfg.model.name, model_dir, run_id, tags, description=f"trained by run {run_name}", perf=perf)
        if cfg.registry.alias:
            registry.set_alias(info.name, info.version, cfg.registry.alias)
            info = registry.get_version(info.name, info.version)
        out.model_version = info
    run.finish(
        "registered" if out.model_version else "trained",
        duration_s=metrics["train_time_s"],
        metrics=metrics,
        best_epoch=best_epoch,
        epochs_completed=out.epochs_completed,
        model_name=cfg.model.name,
        model_version=out.model_version.version if out.model_version else None,
    )
    return out


def peak_memory_bytes(registry: Registry, run_id: str, workers: int) -> float | None:
    """The largest resident memory any training worker reported (``worker<rank>_memory_rss_bytes``, sampled every epoch
    or checkpoint by :class:`rayml.monitor.training.WorkerResources`); None when none was logged."""
    values = [p.value for rank in range(workers) for p in registry.metric_history(run_id, f"worker{rank}_memory_rss_bytes")]
    return max(values) if values else None


def _fit_and_register_trees(
    cfg: TrainJobConfig, registry: Registry, prepared: PreparedData, run: ResumableRun, storage_path: str
) -> TrainResult:
    """Boost (from the run's last checkpoint, if any), cut the booster to its best round, export and register it."""
    from rayml.train._tree_fit import best_booster, check_gpu_build, export_tree_model_dir, fit_trees, tree_validation_metrics

    check_gpu_build(cfg)
    if cfg.train.use_gpu and not cfg.train.in_process:
        from rayml._private.ray_session import ensure_ray

        ensure_ray()
        _check_gpus(cfg)
    run_id, run_name = str(run.run_id), run.name
    enc = TreeEncoding.of(prepared.schema)
    # shards are contiguous slices: rows in file order (by store, by date) would give each worker a different part of
    # the distribution, and distributed LightGBM builds each feature's bins from one worker's rows (seen: val_rmse
    # 25 instead of 13 on the synthetic sales with 2 workers); a seeded shuffle makes every shard look alike
    shuffled = prepared.train.sample(frac=1.0, random_state=cfg.train.seed).reset_index(drop=True)
    if cfg.train.in_process:
        from rayml.train._local import fit_trees_in_process

        where = (run_name, storage_path, registry.tracking_uri, run_id)
        booster, meta, _ = fit_trees_in_process(cfg, shuffled, prepared.validation, enc, *where)
    else:
        datasets = to_ray_datasets(replace(prepared, train=shuffled), cfg.train.num_workers)
        booster, meta, _ = fit_trees(cfg, datasets, enc, run_name, storage_path, registry.tracking_uri, run_id)
    rounds = int(meta["epoch"])
    best_round = int(meta.get("best_round") or rounds)
    history = [float(v) for v in meta.get("history", [])]
    booster = best_booster(booster, cfg.model.type, best_round)
    metrics = tree_validation_metrics(booster, cfg.model.type, enc, prepared.validation)
    if history:
        metrics["val_loss"] = history[best_round - 1]
    metrics["early_stopped"] = float(bool(meta.get("early_stopped")))
    metrics["train_time_s"] = run.elapsed()
    registry.log_metrics(run_id, {f"best_{k}": v for k, v in metrics.items() if k.startswith("val_")}, step=best_round)
    registry.log_metrics(run_id, {"best_epoch": float(best_round), "best_iteration": float(best_round)})
    epochs, starts = _history(registry, run_id)
    out = TrainResult(
        run_name=run_name,
        storage_path=storage_path,
        mlflow_run_id=run_id,
        data_fingerprint=prepared.fingerprint,
        metrics=metrics,
        best_epoch=best_round,
        epochs_completed=rounds,
        epoch_history=epochs,
        resumed_from=starts,
    )
    tags = lineage_tags(
        prepared.fingerprint,
        run_id,
        {"rayml.train_run_name": run_name, "rayml.best_epoch": str(best_round), "rayml.model_type": cfg.model.type},
    )
    model_dir = Path(tempfile.mkdtemp(prefix="rayml-model-"))
    settings = getattr(cfg.model, cfg.model.type).model_dump()
    extra = {
        "name": cfg.model.name,
        "metrics": metrics,
        "lineage": tags,
        "model_type": cfg.model.type,
        "tree_settings": settings,
        "best_iteration": best_round,
        "rounds_trained": rounds,
    }
    export_tree_model_dir(model_dir, booster, cfg.model.type, enc, prepared, extra)
    return _register_and_finish(cfg, registry, run, out, model_dir, tags)


def _best_epoch(result: Any, run_name: str) -> tuple[dict[str, Any], dict[str, float], int]:
    """(the best checkpoint's state, its epoch's metrics, the epochs run) of a ``ray.train.Result``.

    The metrics are rank 0's numbers at the best epoch plus ``early_stopped``; the per-worker resource samples stay in
    MLflow only.
    """
    best = result.get_best_checkpoint(metric="val_loss", mode="min") or result.checkpoint
    if best is None:
        raise TrainingError(f"training run {run_name!r} produced no checkpoint", hint="check the worker logs above")
    state_dict = load_state_dict_from_checkpoint(best)
    best_epoch = int(state_dict["epoch"])
    last = dict(result.metrics or {})
    best_metrics = _metrics_at(result, best_epoch) or last
    metrics = {
        k: float(v)
        for k, v in best_metrics.items()
        if isinstance(v, (int, float)) and k != "epoch" and not k.startswith("worker")
    }
    metrics["early_stopped"] = float(last.get("early_stopped", 0))
    return state_dict, metrics, int(last.get("epoch", best_epoch))


def _metrics_at(result: Any, epoch: int) -> dict[str, Any] | None:
    for _ckpt, m in getattr(result, "best_checkpoints", None) or []:
        if int(m.get("epoch", -1)) == epoch:
            return dict(m)
    return None
