"""The training loop that runs on every Ray Train worker (also the Tune trainable's body).

Every epoch it reports metrics and a checkpoint with model, optimizer, epoch, early-stopping state and RNG state;
on start it resumes from ``ray.train.get_checkpoint()`` when there is one, so a restarted worker group or a re-run
driver continues from the last checkpoint instead of epoch 0. A NaN or infinite loss stops it before the epoch is
checkpointed (:mod:`rayml.train._numerics`).

The same loop runs in three places, each through its :class:`LoopSession`: a Ray Train worker
(:class:`RayTrainSession`), a single-worker Tune trial (``rayml.tune``) and the calling process itself
(``train.in_process``: :class:`rayml.train._local.InProcessSession`, no Ray at all).
"""

from __future__ import annotations

import abc
import functools
import json
import logging
import os
import tempfile
import time
from typing import Any, cast

import numpy as np
import pandas as pd
import ray.train
import ray.train.torch
import torch
from torch import nn

from rayml._private import faults as _faults
from rayml._private.ray_session import quiet_ray_data
from rayml.errors import TrainingError
from rayml.models.factory import extend_import_path
from rayml.models.metrics import task_metrics
from rayml.models.mlp import ModelSpec, TabularMLP, build_model, decode_target, named_outputs, tensors, training_loss
from rayml.models.predictor import OUTPUTS_BY_TASK, PROBABILITIES
from rayml.monitor.training import WorkerResources
from rayml.train._checkpoints import META_FILE, STATE_FILE, newest_checkpoint
from rayml.train._numerics import DIVERGED, diverged_report, non_finite_loss
from rayml.train._tracking import EpochMetricsLogger, worker_can_log

logger = logging.getLogger("rayml.train")


def _frame(shard: Any) -> pd.DataFrame:
    frames = list(shard.iter_batches(batch_size=65536, batch_format="pandas"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate(model: TabularMLP, num: torch.Tensor, cat: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Validation metrics: ``val_loss`` (the training objective) plus the task's metrics in the target's terms
    (:func:`rayml.models.metrics.task_metrics`: val_rmse / val_mae, val_auc / val_accuracy / val_logloss, or
    val_accuracy / val_macro_f1 / val_logloss)."""
    if not len(y):
        return {"val_loss": float("nan")}
    model.eval()
    with torch.no_grad():
        raw = torch.cat(
            [
                model.forward_raw(num[i : i + 8192].to(device), cat[i : i + 8192].to(device)).float().cpu()
                for i in range(0, len(y), 8192)
            ]
        )
        outputs = named_outputs(model.spec, model.from_raw(raw).numpy())
    spec = model.spec
    metrics = task_metrics(
        spec.task,
        decode_target(spec, y.numpy()),
        outputs[OUTPUTS_BY_TASK[spec.task][0]],
        proba=outputs.get(PROBABILITIES),
        class_labels=spec.class_labels or None,
        prefix="val_",
    )
    return {"val_loss": float(training_loss(spec.task)(raw, y)), **metrics}


class LoopSession(abc.ABC):
    """Where the loop gets its data, checkpoint and rank, and where it reports: Ray Train or Ray Tune.

    The loop body is the same for both (one train loop, two ways to run it); only this adapter differs.
    """

    rank: int = 0

    @abc.abstractmethod
    def get_checkpoint(self) -> Any: ...

    @abc.abstractmethod
    def report(self, metrics: dict[str, Any], checkpoint: Any) -> None: ...

    @abc.abstractmethod
    def validation_frame(self) -> pd.DataFrame: ...

    @abc.abstractmethod
    def train_frame(self) -> pd.DataFrame: ...

    @abc.abstractmethod
    def train_batches(self, spec: ModelSpec, target: str, batch_size: int, seed: int): ...

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def device(self) -> torch.device:
        return torch.device("cpu")

    def fail(self, error: TrainingError, epoch: int) -> None:
        """The loop cannot go on (a non-finite loss at ``epoch``, nothing checkpointed for it): end the run with
        ``error``. Raises it here (in-process, a Tune trial); returning instead makes the loop return."""
        raise error


class InMemorySession(LoopSession):
    """Frames held in this process (a Tune trial's, an in-process run's): shuffled mini-batches per seed, one device.

    Subclasses say where checkpoints come from and go (:meth:`get_checkpoint`, :meth:`report`).
    """

    def __init__(self, train: pd.DataFrame, validation: pd.DataFrame, use_gpu: bool) -> None:
        self.rank = 0
        self._train, self._validation = train, validation
        self._device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def validation_frame(self) -> pd.DataFrame:
        return self._validation

    def train_frame(self) -> pd.DataFrame:
        return self._train

    def train_batches(self, spec: ModelSpec, target: str, batch_size: int, seed: int):
        order = np.random.default_rng(seed).permutation(len(self._train))
        for i in range(0, len(order), batch_size):
            yield tensors(self._train.iloc[order[i : i + batch_size]], spec, target)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self._device)

    def device(self) -> torch.device:
        return self._device


class RayTrainSession(LoopSession):
    """Inside a Ray Train worker: dataset shards, ``ray.train.report`` / ``get_checkpoint``, DDP.

    Args:
        run_dir: where the run's checkpoints are stored (see :mod:`rayml.train._checkpoints`).
        report_divergence: end a diverged run by returning it from the worker function (its driver raises it,
            :mod:`rayml.train._numerics`) instead of raising; off under a Tune trial, where the trial errors.
    """

    def __init__(self, run_dir: str | None = None, report_divergence: bool = False) -> None:
        self.rank = ray.train.get_context().get_world_rank()
        self.run_dir = run_dir
        self.report_divergence = report_divergence
        self.diverged: dict[str, Any] | None = None  # what the worker function returns to the driver

    def get_checkpoint(self) -> Any:
        return newest_checkpoint(ray.train.get_checkpoint(), self.run_dir)

    def report(self, metrics: dict[str, Any], checkpoint: Any) -> None:
        ray.train.report(metrics, checkpoint=checkpoint)

    def validation_frame(self) -> pd.DataFrame:
        return _frame(ray.train.get_dataset_shard("validation"))

    def train_frame(self) -> pd.DataFrame:
        return _frame(ray.train.get_dataset_shard("train"))

    def train_batches(self, spec: ModelSpec, target: str, batch_size: int, seed: int):
        return _streamed_batches(ray.train.get_dataset_shard("train"), spec, target, batch_size, seed)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def fail(self, error: TrainingError, epoch: int) -> None:
        if not self.report_divergence:
            raise error
        # raising would make Ray Train restart the worker group (max_failures times, forever with -1) only to diverge
        # again from the same checkpoint: the loop ends, the worker function returns it (rank 0's return value is the
        # result's return_value; a report without a checkpoint would not reach the result) and the driver raises it
        self.diverged = diverged_report(error, epoch)


def train_loop_per_worker(config: dict[str, Any]) -> Any:  # Any: Ray's stubs type a worker function as returning None
    """Ray Train worker body. ``config`` is built by :func:`rayml.train.trainer.loop_config`.

    Returns:
        None, or a :func:`rayml.train._numerics.diverged_report` when the loop stopped on a non-finite loss.
    """
    session = RayTrainSession(config.get("run_dir"), bool(config.get("report_divergence")))
    run_loop(config, session)
    return session.diverged


def run_loop(config: dict[str, Any], session: LoopSession) -> None:
    """The training loop: resume from the session's checkpoint, train, validate, checkpoint and report every epoch."""
    quiet_ray_data()
    spec = ModelSpec.from_dict(config["spec"])
    seed: int = config["seed"]
    rank = session.rank

    device = session.device()
    use_amp = bool(config["amp"]) and device.type == "cuda"
    extend_import_path(config.get("factory_path") or [])  # where the driver found the model.factory module
    model: nn.Module = build_model(spec, seed=seed)
    model = session.prepare_model(model)
    core = cast(TabularMLP, model.module if hasattr(model, "module") else model)  # the model under DDP's wrapper
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, since_best = 0, float("inf"), 0
    checkpoint = session.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best, since_best = int(state["epoch"]), float(state["best"]), int(state["since_best"])
        if rank == 0:
            logger.info("resuming from the checkpoint of epoch %d", start_epoch)
    # rank 0 logs to MLflow itself when it can reach the store; otherwise the controller callback does (_tracking.py)
    tracking_uri = config.get("tracking_uri")
    can_log = rank == 0 and worker_can_log(tracking_uri, config.get("driver_node_id"))
    mlflow_log = EpochMetricsLogger(tracking_uri if can_log else None, config.get("mlflow_run_id"))
    mlflow_log.log({"resumed_from_epoch": start_epoch}, step=start_epoch)

    run_dir = config.get("run_dir")
    resources = WorkerResources(
        config.get("model_name") or "unknown", os.path.basename(run_dir.rstrip("/")) if run_dir else "", rank
    )
    with resources.live_export((lambda: torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None):
        _train_epochs(config, session, mlflow_log, resources, (model, core, optimizer, scaler), (start_epoch, best, since_best))


def _train_epochs(
    config: dict[str, Any],
    session: LoopSession,
    mlflow_log: EpochMetricsLogger,
    resources: WorkerResources,
    training: tuple[nn.Module, TabularMLP, torch.optim.Optimizer, torch.amp.GradScaler],
    resume: tuple[int, float, int],
) -> None:
    """Epochs ``resume[0] + 1 .. epochs``: train, validate, checkpoint and report each (see :func:`run_loop`)."""
    spec = ModelSpec.from_dict(config["spec"])
    target: str = config["target"]
    epochs: int = config["epochs"]
    batch_size: int = config["batch_size"]
    seed: int = config["seed"]
    patience: int = config["early_stopping_patience"]
    min_delta: float = config["early_stopping_min_delta"]
    faults = _faults.parse(config.get("faults"))
    rank = session.rank
    device = session.device()
    use_amp = bool(config["amp"]) and device.type == "cuda"
    model, core, optimizer, scaler = training
    start_epoch, best, since_best = resume

    val_num, val_cat, val_y = tensors(session.validation_frame(), spec, target)
    cached = tensors(session.train_frame(), spec, target) if config["cache_shard_in_memory"] else None
    loss_fn = training_loss(spec.task)

    previous_start = None
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        # start-to-start time of the previous epoch: its training plus checkpointing, reporting and logging
        wall: dict[str, float] = {"previous_epoch_wall_s": t0 - previous_start} if previous_start is not None else {}
        previous_start = t0
        model.train()
        # per-epoch generator: the batch order of an epoch is the same whether or not the run was resumed
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch * 101 + rank)
        batches = (
            _cached_batches(cached, batch_size, gen) if cached else session.train_batches(spec, target, batch_size, seed + epoch)
        )
        on_half = functools.partial(_faults.mid_epoch, faults, epoch, rank, config["fault_marker"]) if faults else None
        n_rows = cached[2].shape[0] if cached else None
        total, count, bad = _fit_batches(batches, (model, optimizer, scaler, loss_fn), device, use_amp, n_rows, on_half)
        validation = evaluate(core, val_num, val_cat, val_y, device) if bad is None else {}
        # every rank takes this decision together (under DDP one rank alone stopping would hang the others)
        error = _divergence(bad, validation.get("val_loss", 0.0) if len(val_y) else 0.0, epoch, config, device)
        if error is not None:
            mlflow_log.log({DIVERGED: 1}, step=epoch)
            session.fail(error, epoch)  # raises, or (Ray Train) keeps it for the driver to raise
            return
        metrics = {"epoch": epoch, "train_loss": total / max(count, 1), **validation}
        metrics["epoch_time_s"] = time.perf_counter() - t0
        metrics.update(wall)
        # worker<rank>_cpu_percent / _memory_rss_bytes / _gpu_memory_bytes; rank > 0 reach MLflow via the controller
        metrics.update(resources.sample(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None))
        improved = metrics["val_loss"] < best - min_delta
        best, since_best = (metrics["val_loss"], 0) if improved else (best, since_best + 1)
        stop = patience > 0 and since_best >= patience
        metrics["early_stopped"] = int(stop)
        mlflow_log.log(metrics, step=epoch)
        # for the controller callback: each attempt's start, and whether this report is already in MLflow
        metrics.update(resumed_from_epoch=start_epoch, logged_by_worker=int(mlflow_log.enabled))
        with tempfile.TemporaryDirectory() as tmp:
            state = (core, optimizer, scaler, epoch, best, since_best)
            ckpt = _write_checkpoint(tmp, state, metrics["val_loss"]) if rank == 0 else None
            session.report(metrics, ckpt)
        _faults.end_of_epoch(faults)
        if stop:
            if rank == 0:
                logger.info("early stopping after epoch %d: no improvement for %d epoch(s)", epoch, patience)
            break


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def _divergence(
    bad: tuple[int, float] | None, val_loss: float, epoch: int, config: dict[str, Any], device: torch.device
) -> TrainingError | None:
    """The error that ends the run when this epoch's training loss (``bad``: its first non-finite batch and value) or
    validation loss is not finite, on this rank or (under DDP) on any other; None when every rank is fine."""
    where = dict(learning_rate=config["learning_rate"], last_good=epoch - 1)
    if bad is not None:
        error: TrainingError | None = non_finite_loss("training", bad[1], step=f"epoch {epoch}, batch {bad[0]}", **where)
    elif not np.isfinite(val_loss):
        error = non_finite_loss("validation", val_loss, step=f"the end of epoch {epoch}", **where)
    else:
        error = None
    if _distributed():
        flag = torch.tensor([0.0 if error is None else 1.0], device=device)  # NCCL reduces CUDA tensors only
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if error is None and flag.item() > 0:
            error = non_finite_loss("training", float("nan"), step=f"epoch {epoch} on another worker", **where)
    return error


def _fit_batches(
    batches: Any,
    step: tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler, nn.Module],
    device: torch.device,
    use_amp: bool,
    n_rows: int | None,
    on_half: Any,
) -> tuple[float, int, tuple[int, float] | None]:
    """One pass of optimizer steps over ``batches``; returns (summed loss, rows, the first batch whose loss was not
    finite as (1-based index, loss) or None). ``on_half`` (a test fault hook) runs once, when half of ``n_rows`` (or
    the first batch, when the count is unknown) has been seen.

    A non-finite loss ends the pass before its step is taken, except under DDP: there every rank must run the same
    number of backward passes (each one all-reduces gradients), so the pass goes on and the epoch's end decides.
    """
    model, optimizer, scaler, loss_fn = step
    total, count, bad = 0.0, 0, None
    alone = not _distributed()
    for batch, (num, cat, y) in enumerate(batches, start=1):
        num, cat, y = num.to(device), cat.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_fn(model(num, cat, raw=True), y)
        value = float(loss.detach())
        if not np.isfinite(value) and bad is None:
            bad = (batch, value)
            if alone:
                break
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += value * len(y)
        count += len(y)
        if on_half is not None and (n_rows is None or count >= n_rows // 2):
            on_half()
            on_half = None
    return total, count, bad


def _write_checkpoint(
    tmp: str,
    state: tuple[TabularMLP, torch.optim.Optimizer, torch.amp.GradScaler, int, float, int],
    val_loss: float,
) -> ray.train.Checkpoint:
    """Rank 0's checkpoint of the epoch that just ended: weights, optimizer, AMP scaler, RNG and early-stopping state."""
    core, optimizer, scaler, epoch, best, since_best = state
    torch.save(
        {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "best": best,
            "since_best": since_best,
        },
        os.path.join(tmp, STATE_FILE),
    )
    with open(os.path.join(tmp, META_FILE), "w") as f:
        json.dump({"epoch": epoch, "val_loss": val_loss}, f)
    return ray.train.Checkpoint.from_directory(tmp)


def _cached_batches(cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_size: int, gen: torch.Generator):
    num, cat, y = cached
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch_size):
        idx = perm[i : i + batch_size]
        yield num[idx], cat[idx], y[idx]


def _streamed_batches(shard: Any, spec: ModelSpec, target: str, batch_size: int, seed: int):
    for batch in shard.iter_batches(
        batch_size=batch_size, batch_format="pandas", local_shuffle_buffer_size=batch_size * 8, local_shuffle_seed=seed
    ):
        yield tensors(batch, spec, target)
