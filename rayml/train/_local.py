"""In-process training (``train.in_process``, ``rayml train --in-process``): the training loop in the calling process,
without Ray, to debug a model step by step on small data.

It is the same code as a Ray run: :func:`rayml.train._loop.run_loop` (MLP) or :func:`rayml.train._trees.run_tree_loop`
(trees) with a session that keeps the data in memory as pandas frames, is rank 0 of one, and persists every reported
checkpoint under ``<storage_path>/<run name>/`` as a Ray run does; the driver then exports, registers and records the run
exactly as after a Ray run. ``ray.init`` is never called, so a breakpoint in a ``model.factory`` network (or in rayml)
stops this process, and an exception surfaces where it happened: there are no retries (``train.max_failures`` does not
apply) and one worker trains (``train.num_workers`` does not apply). Checkpoints are interchangeable with a Ray run's
of the same config (same run name): either continues the other's.

Why not Ray Train's own local mode (``ScalingConfig(num_workers=0)``, Ray 2.60)? It runs the function in-process but
(1) hands datasets to ``get_dataset_shard`` as Ray Data datasets, whose iteration starts Ray; (2) keeps a reported
checkpoint only as the object passed in (the loop's temporary directory, deleted right after ``report``): nothing is
persisted, there is no best checkpoint and no resume; and (3) says itself it is experimental. A rayml session is forty
lines and keeps the run's contract (checkpoints on storage, best epoch, resume) without Ray.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import torch

from rayml._private import fs
from rayml.config import TrainJobConfig
from rayml.models import ModelSpec
from rayml.train._checkpoints import META_FILE
from rayml.train._loop import InMemorySession

logger = logging.getLogger("rayml.train")

METRICS_FILE = "rayml_metrics.json"  # the epoch's reported metrics, next to an in-process checkpoint
_PREFIX = "checkpoint_local_"  # an in-process checkpoint (Ray names its own checkpoint_<timestamp>)
_LOCAL_RE = re.compile(rf"{_PREFIX}(\d+)$")


class LocalCheckpoints:
    """The checkpoints an in-process run persists under its run directory, and which of them it keeps.

    Args:
        run_dir: ``<storage_path>/<run name>`` (local path or pyarrow URI).
        num_to_keep: checkpoints kept (``train.checkpoint_num_to_keep``): the best by ``score`` (the newest when None);
            the newest is always kept too, as the one a rerun resumes from.
        score: the metric to keep the lowest of (``val_loss``), or None.
    """

    def __init__(self, run_dir: str, num_to_keep: int, score: str | None) -> None:
        self.run_dir, self.num_to_keep, self.score = run_dir, num_to_keep, score
        self.filesystem, self.root = fs.filesystem(run_dir)
        self.kept: list[tuple[int, str, dict[str, Any]]] = self._found()  # (epoch, path, metrics), by epoch

    def _found(self) -> list[tuple[int, str, dict[str, Any]]]:
        """The in-process checkpoints an earlier attempt left (their metrics: for the best epoch's numbers)."""
        out = []
        for info in self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            m = _LOCAL_RE.match(info.base_name)
            if info.type != pafs.FileType.Directory or not m:
                continue
            metrics = self._read_json(f"{info.path}/{METRICS_FILE}") or self._read_json(f"{info.path}/{META_FILE}")
            if metrics is not None:
                out.append((int(m.group(1)), info.path, metrics))
        return sorted(out)

    def _read_json(self, path: str) -> dict[str, Any] | None:
        try:
            with self.filesystem.open_input_stream(path) as f:
                data = json.loads(f.read().decode())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def persist(self, local_dir: str, epoch: int, metrics: dict[str, Any]) -> None:
        """Copy a reported checkpoint (a local directory) to storage, its meta file last: a copy cut short has none and
        is skipped on resume (:func:`rayml.train._checkpoints.newest_checkpoint`)."""
        local = pafs.LocalFileSystem()
        dest = f"{self.root}/{_PREFIX}{epoch:06d}"
        self.filesystem.create_dir(dest, recursive=True)
        names = sorted(i.base_name for i in local.get_file_info(pafs.FileSelector(local_dir)) if i.type == pafs.FileType.File)
        plain = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        with self.filesystem.open_output_stream(f"{dest}/{METRICS_FILE}") as out:
            out.write(json.dumps(plain).encode())
        for name in sorted(names, key=lambda n: n == META_FILE):
            with (
                local.open_input_stream(f"{local_dir}/{name}") as src,
                self.filesystem.open_output_stream(f"{dest}/{name}") as out,
            ):
                out.write(src.read())
        self.kept = [k for k in self.kept if k[0] != epoch] + [(epoch, dest, plain)]
        self._prune()

    def _prune(self) -> None:
        newest = max(self.kept, key=lambda k: k[0])
        score = self.score
        if score is None:
            ranked = sorted(self.kept, key=lambda k: -k[0])
        else:  # a checkpoint without a finite score sorts last: the first to go
            ranked = sorted(self.kept, key=lambda k: (not np.isfinite(k[2].get(score, np.nan)), k[2].get(score, 0.0)))
        keep = {k[1] for k in ranked[: self.num_to_keep]} | {newest[1]}
        for _epoch, path, _metrics in self.kept:
            if path not in keep:
                self.filesystem.delete_dir(path)
        self.kept = [k for k in self.kept if k[1] in keep]

    def result(self, last_metrics: dict[str, Any] | None) -> Any:
        """What ``TorchTrainer.fit`` returns, for the driver's code that reads it (a ``ray.train.Result``)."""
        import ray.train

        kept = sorted(self.kept, key=lambda k: k[0])  # the newest last: the result's checkpoint
        checkpoints = [(ray.train.Checkpoint(path, filesystem=self.filesystem), m) for _e, path, m in kept]
        return ray.train.Result(
            metrics=last_metrics,
            checkpoint=checkpoints[-1][0] if checkpoints else None,
            error=None,
            path=self.run_dir,
            best_checkpoints=checkpoints,
        )


class InProcessSession(InMemorySession):
    """The MLP loop in this process: in-memory frames, rank 0 of one, checkpoints persisted by :class:`LocalCheckpoints`.

    A non-finite loss raises at once (:meth:`LoopSession.fail`): the debugger stops at the batch that diverged.
    """

    def __init__(self, train: pd.DataFrame, validation: pd.DataFrame, checkpoints: LocalCheckpoints, use_gpu: bool) -> None:
        super().__init__(train, validation, use_gpu)
        self.checkpoints = checkpoints
        self.last_metrics: dict[str, Any] | None = None

    def get_checkpoint(self) -> Any:
        from rayml.train._checkpoints import newest_checkpoint

        return newest_checkpoint(None, self.checkpoints.run_dir)

    def report(self, metrics: dict[str, Any], checkpoint: Any) -> None:
        self.last_metrics = dict(metrics)
        if checkpoint is not None:
            self.checkpoints.persist(checkpoint.path, int(metrics["epoch"]), metrics)


def _warn_ignored(cfg: TrainJobConfig) -> None:
    t = cfg.train
    if t.num_workers > 1:
        logger.warning("train.in_process: one worker trains in this process; train.num_workers=%d does not apply", t.num_workers)
    if t.use_gpu and not torch.cuda.is_available():
        logger.warning("train.in_process: this process sees no CUDA device; training on the CPU")


def fit_in_process(
    cfg: TrainJobConfig,
    prepared: Any,
    spec: ModelSpec,
    run_name: str,
    storage_path: str,
    tracking_uri: str | None,
    mlflow_run_id: str | None,
) -> Any:
    """Run the MLP loop in this process (as :func:`rayml.train.trainer.fit` runs it on Ray Train); returns a
    ``ray.train.Result`` over the checkpoints it kept."""
    from rayml.models.factory import import_path
    from rayml.train._loop import run_loop
    from rayml.train.trainer import loop_config

    _warn_ignored(cfg)
    run_dir = fs.join(storage_path, run_name)
    config = loop_config(cfg, spec, prepared.schema.target, tracking_uri, mlflow_run_id, run_dir=run_dir)
    config["factory_path"] = import_path(spec.factory) if spec.factory else []
    checkpoints = LocalCheckpoints(run_dir, cfg.train.checkpoint_num_to_keep, score="val_loss")
    session = InProcessSession(prepared.train, prepared.validation, checkpoints, cfg.train.use_gpu)
    run_loop(config, session)
    return checkpoints.result(session.last_metrics)


class InProcessTreeSession:
    """The tree loop in this process (the protocol of :class:`rayml.train._trees.TreeSession`)."""

    rank = 0

    def __init__(self, train: pd.DataFrame, validation: pd.DataFrame, checkpoints: LocalCheckpoints) -> None:
        self._frames, self.checkpoints = (train, validation), checkpoints
        self.last_metrics: dict[str, Any] | None = None

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self._frames

    def get_checkpoint(self) -> Any:
        return None  # the loop looks for the newest under its run_dir itself

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        self.last_metrics = dict(metrics)
        if checkpoint is not None:
            self.checkpoints.persist(checkpoint.path, int(metrics["epoch"]), metrics)


def fit_trees_in_process(
    cfg: TrainJobConfig,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    enc: Any,
    run_name: str,
    storage_path: str,
    tracking_uri: str | None,
    mlflow_run_id: str | None,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Run the tree loop in this process (as :func:`rayml.train.fit_trees` runs it on Ray Train); same return value."""
    from rayml.errors import TrainingError
    from rayml.train._checkpoints import newest_checkpoint
    from rayml.train._tree_fit import tree_loop_config
    from rayml.train._trees import booster_loads, read_tree_checkpoint, run_tree_loop

    _warn_ignored(cfg)
    run_dir = fs.join(storage_path, run_name)
    config = tree_loop_config(cfg, enc, tracking_uri, mlflow_run_id, run_dir) | {"num_workers": 1}
    checkpoints = LocalCheckpoints(run_dir, cfg.train.checkpoint_num_to_keep, score=None)
    session = InProcessTreeSession(train, validation, checkpoints)
    run_tree_loop(config, session)
    ckpt = newest_checkpoint(None, run_dir, loads=booster_loads(cfg.model.type))
    if ckpt is None:
        raise TrainingError(f"training run {run_name!r} produced no checkpoint", hint=f"check {run_dir}")
    booster, meta = read_tree_checkpoint(ckpt, cfg.model.type)
    return booster, meta, dict(session.last_metrics or {})
