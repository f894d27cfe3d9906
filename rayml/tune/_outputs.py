"""What a finished search leaves behind: the :class:`TuneResult`, results.csv and learning_curves.png (next to the
experiment and on the MLflow parent run), and the best trial's model, exported and registered like `rayml train`'s."""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rayml._private import fs
from rayml.config import TrainJobConfig, TuneJobConfig
from rayml.errors import TrainingError
from rayml.registry import ModelVersionInfo, Registry
from rayml.train import PreparedData, export_model_dir, lineage_tags, spec_for
from rayml.tune._mlflow import SEARCH_TAG
from rayml.tune._report import CURVES_FILE, RESULTS_FILE, TrialSummary, learning_curves_png, results_csv, trial_id_of

logger = logging.getLogger("rayml.tune")


@dataclass
class TuneResult:
    """What a search produced.

    Attributes:
        name: the search name (experiment directory, MLflow parent run name, ``rayml.tune_search_id`` tag).
        trials: every trial, best first.
        best: the best trial; ``best_config`` is its full training config.
        model_version: the registered version of the best model (None when ``registry.register_version`` is false).
        already_done: the search had finished and registered its model before; nothing ran.
    """

    name: str
    experiment_path: str
    parent_run_id: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary
    best_config: TrainJobConfig
    results_path: str
    plot_path: str
    total_epochs: int
    wall_time_s: float
    model_version: ModelVersionInfo | None = None
    model_dir: str | None = None
    resumed: bool = False
    already_done: bool = False
    data_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_params(self) -> dict[str, Any]:
        return self.best.params

    @property
    def best_metric(self) -> float | None:
        return self.best.best_metric

    @property
    def stopped_early(self) -> int:
        return sum(1 for t in self.trials if t.stopped_by == "asha")


def _write(path: str, data: bytes) -> None:
    filesystem, p = fs.filesystem(path)
    filesystem.create_dir(os.path.dirname(p), recursive=True)
    with filesystem.open_output_stream(p) as f:
        f.write(data)


def write_outputs(
    registry: Registry, cfg: TuneJobConfig, name: str, exp_path: str, parent_run_id: str, trials: list[TrialSummary]
) -> tuple[str, str]:
    """results.csv and learning_curves.png next to the experiment, and as artifacts of the parent run."""
    title = f"{name}: {cfg.tune.metric} per epoch ({cfg.tune.scheduler}, {len(trials)} trials)"
    files = {RESULTS_FILE: results_csv(trials, cfg), CURVES_FILE: learning_curves_png(trials, cfg, title)}
    with tempfile.TemporaryDirectory(prefix="rayml-tune-") as tmp:
        for fname, data in files.items():
            _write(fs.join(exp_path, fname), data)
            (Path(tmp) / fname).write_bytes(data)
        try:
            registry.log_artifacts(parent_run_id, tmp)
        except Exception as e:  # the files are next to the experiment either way
            logger.warning("could not log the results to MLflow run %s: %s", parent_run_id, e)
    return fs.join(exp_path, RESULTS_FILE), fs.join(exp_path, CURVES_FILE)


def _best_checkpoint(cfg: TuneJobConfig, grid: Any, best: TrialSummary) -> Any:
    """The best trial's checkpoint at its best epoch: a Tune checkpoint (single worker) or its trainer run's (Ray Train)."""
    import ray.train

    # the same id the summaries were made with: after a resumed search a result's folder need not carry it
    result = next((r for r in grid if trial_id_of(r) == best.trial_id), None)
    if result is None:
        raise TrainingError(
            f"the best trial {best.trial_id} is not among the search's results",
            hint="rerun the same command with --resume; if it persists, start the search anew (a new tune.name)",
        )
    checkpoint = None
    if result.best_checkpoints:
        checkpoint = result.get_best_checkpoint(cfg.tune.metric, cfg.resolved_mode)
    else:  # distributed trial: the metrics rows name the trainer's checkpoints
        df = result.metrics_dataframe
        if df is not None and "checkpoint_path" in df.columns:
            rows = df[df["epoch"] == best.best_epoch].dropna(subset=["checkpoint_path"])
            if len(rows):
                checkpoint = ray.train.Checkpoint(rows["checkpoint_path"].iloc[-1])
    if checkpoint is None:
        raise TrainingError(
            f"the best trial {best.trial_id} has no checkpoint to export",
            hint=f"check {result.path}; raise train.checkpoint_num_to_keep if checkpoints were deleted",
        )
    return checkpoint


def _warn_if_other_epoch(cfg: TuneJobConfig, best: TrialSummary, epoch: int) -> None:
    if epoch != best.best_epoch:
        logger.warning(
            "best trial %s: best %s at epoch %s but the kept checkpoint is from epoch %s",
            best.trial_id,
            cfg.tune.metric,
            best.best_epoch,
            epoch,
        )


def _set_best_epoch(meta: dict, epoch: int) -> None:
    meta["metrics"]["best_epoch"] = float(epoch)
    meta["lineage"]["rayml.best_epoch"] = str(epoch)


def _export_best_mlp(
    cfg: TuneJobConfig, result: TuneResult, grid: Any, prepared: PreparedData, model_dir: Path, meta: dict
) -> int:
    """Export the best trial's network (its best epoch's weights); returns that epoch."""
    from rayml.train.trainer import load_state_dict_from_checkpoint

    state = load_state_dict_from_checkpoint(_best_checkpoint(cfg, grid, result.best))
    epoch = int(state["epoch"])
    _warn_if_other_epoch(cfg, result.best, epoch)
    _set_best_epoch(meta, epoch)
    export_model_dir(model_dir, spec_for(result.best_config, prepared), state, prepared, meta)
    return epoch


def _export_best_trees(
    cfg: TuneJobConfig, result: TuneResult, grid: Any, prepared: PreparedData, model_dir: Path, meta: dict
) -> int:
    """Export the best trial's booster; returns the rounds it keeps.

    Its checkpoint is the one at the round with the best ``tune.metric`` among the reported ones (every
    ``train.checkpoint_every_rounds``). When that metric is the loss itself (val_loss, or its other name val_rmse /
    val_logloss), the booster is cut to the exact best round in the checkpoint's per-round history, as ``rayml train``
    does; otherwise it keeps the reported round's trees.
    """
    from rayml.train import TreeEncoding, best_booster, export_tree_model_dir, read_tree_checkpoint, tree_validation_metrics

    model_type = cfg.model.type
    booster, ckpt_meta = read_tree_checkpoint(_best_checkpoint(cfg, grid, result.best), model_type)
    reported = int(ckpt_meta["epoch"])
    _warn_if_other_epoch(cfg, result.best, reported)
    loss_names = ("val_loss", "val_rmse" if cfg.data.task == "regression" else "val_logloss")
    rounds = int(ckpt_meta.get("best_round") or reported) if cfg.tune.metric in loss_names else reported
    booster = best_booster(booster, model_type, rounds)
    _set_best_epoch(meta, rounds)
    enc = TreeEncoding.of(prepared.schema)
    meta["metrics"] |= tree_validation_metrics(booster, model_type, enc, prepared.validation)
    settings = getattr(result.best_config.model, model_type).model_dump()
    extra = {**meta, "model_type": model_type, "tree_settings": settings, "best_iteration": rounds, "rounds_trained": reported}
    export_tree_model_dir(model_dir, booster, model_type, enc, prepared, extra)
    return rounds


def register_best(registry: Registry, cfg: TuneJobConfig, result: TuneResult, grid: Any, prepared: PreparedData) -> None:
    best = result.best
    run_id = best.mlflow_run_id or result.parent_run_id
    tags = lineage_tags(
        prepared.fingerprint,
        run_id,
        {
            SEARCH_TAG: result.name,
            "rayml.tune_trial_id": best.trial_id,
            "rayml.tune_parent_run_id": result.parent_run_id,
            "rayml.model_type": cfg.model.type,
        },
    )
    metrics = {f"best_{cfg.tune.metric}": float(best.best_metric or math.nan)}
    model_dir = Path(tempfile.mkdtemp(prefix="rayml-model-"))
    meta = {
        "name": cfg.model.name,
        "metrics": metrics,
        "lineage": tags,
        "tune": {"search": result.name, "trial_id": best.trial_id, "params": best.params},
    }
    export = _export_best_trees if cfg.model.is_tree else _export_best_mlp
    export(cfg, result, grid, prepared, model_dir, meta)  # sets the best epoch (round) in the metrics and the tags
    result.model_dir = str(model_dir)
    if not cfg.registry.register_version:
        return
    # the search's wall time is what this version took to make; the best trial's workers give the peak memory
    perf = {"train_time_s": result.wall_time_s, "peak_memory_bytes": _peak_memory(grid, best)}
    info = registry.register(
        cfg.model.name, model_dir, run_id, tags, description=f"best trial {best.trial_id} of search {result.name}", perf=perf
    )
    if cfg.registry.alias:
        registry.set_alias(info.name, info.version, cfg.registry.alias)
        info = registry.get_version(info.name, info.version)
    result.model_version = info


def _peak_memory(grid: Any, best: TrialSummary) -> float | None:
    """The largest ``worker<rank>_memory_rss_bytes`` the best trial reported (None when it reported none)."""
    result = next((r for r in grid if trial_id_of(r) == best.trial_id), None)
    df = getattr(result, "metrics_dataframe", None)
    if df is None:
        return None
    columns = [c for c in df.columns if re.fullmatch(r"worker\d+_memory_rss_bytes", str(c))]
    values = pd.to_numeric(df[columns].stack(), errors="coerce").dropna() if columns else pd.Series(dtype=float)
    return float(values.max()) if len(values) else None


def log_summary(registry: Registry, result: TuneResult) -> None:
    """The search's totals and its best trial (and registered version) on the parent run."""
    values = {
        f"best_{result.metric}": result.best_metric,
        "num_trials": len(result.trials),
        "trials_stopped_early": result.stopped_early,
        "total_epochs": result.total_epochs,
        "search_wall_time_s": result.wall_time_s,
    }
    registry.log_metrics(result.parent_run_id, values)  # None (no finite best metric) is left out
    tags = {"rayml.best_trial_id": result.best.trial_id}
    if result.model_version:
        tags["rayml.model_version"] = result.model_version.ref
    registry.set_run_tags(result.parent_run_id, tags)
