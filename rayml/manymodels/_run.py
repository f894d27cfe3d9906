"""`rayml manymodels train`: one model per segment, trained in parallel Ray tasks, registered as ONE model set.

How it runs (the measurements behind the choice are in the README's "Many models" section):

1. the driver loads and validates the data once, sorts it by segment and puts it in the object store ONCE as an
   Arrow table (zero-copy for every task that reads it);
2. a task trains a chunk of ``segments_per_task`` segments one after another with a plain torch loop
   (``rayml.manymodels._fit``; one thread, ``num_cpus=cpus_per_task``), slicing its rows from the shared table;
   one more task trains the global model on all rows (the fallback);
3. a segment that raises is retried ``max_retries`` times inside its task; a task whose worker dies is retried by
   Ray, and then its segments are retried one per task so a segment that kills its worker cannot fail the others;
4. every trained segment is saved to the run directory as it arrives, so rerunning the same command after a crash
   trains only what is missing; the model set (``rayml.registry.ModelSetWriter``) is registered as one version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayml._private import constants, fs
from rayml.config import ManyModelsJobConfig, dump_config
from rayml.data import Schema, fingerprint, infer_schema, load_table, validate
from rayml.errors import ConfigError, TrainingError
from rayml.manymodels._fit import FitSettings, SegmentOutcome, fit_settings, prediction_metrics
from rayml.manymodels._plan import (
    VAL_COLUMN,
    Accounting,
    Segment,
    account,
    auto_segments_per_task,
    chunk,
    segment_table,
    split_trainable,
)
from rayml.manymodels._state import RunState
from rayml.registry import KIND_MODEL_SET, KIND_TAG, ModelSetWriter, ModelVersionInfo, Registry
from rayml.train import lineage_tags, storage_path_for

logger = logging.getLogger("rayml.manymodels")

GLOBAL_KEY = "__global__"
Progress = Callable[[int, int], None]


@dataclass
class ModelSetResult:
    """What a many-models run produced. ``ok`` is False when more segments failed than ``max_failed_share`` allows
    (then nothing was registered)."""

    name: str
    run_name: str
    run_dir: str
    mlflow_run_id: str
    data_fingerprint: str
    segments: int
    trained: int
    fell_back: int
    failed: dict[str, str]
    failed_share: float
    max_failed_share: float
    ok: bool
    wall_s: float
    train_wall_s: float
    models_per_min: float
    metrics: dict[str, float] = field(default_factory=dict)
    model_version: ModelVersionInfo | None = None
    model_dir: str | None = None
    reused: int = 0  # segments taken from an earlier, interrupted attempt of the same run
    already_done: bool = False

    def summary(self) -> dict[str, Any]:
        """The JSON-able counts and metrics (stored in the run state and logged to MLflow)."""
        keep = ("segments", "trained", "fell_back", "failed_share", "wall_s", "train_wall_s", "models_per_min", "reused")
        return {**{k: getattr(self, k) for k in keep}, "failed": dict(self.failed), "metrics": dict(self.metrics)}


def _config_hash(cfg: ManyModelsJobConfig, data_fingerprint: str) -> str:
    """What determines the trained models (not where they go, retries or failure tolerance)."""
    relevant = {
        "data": cfg.data.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(
            mode="json",
            include={
                "epochs",
                "batch_size",
                "learning_rate",
                "weight_decay",
                "seed",
                "early_stopping_patience",
                "early_stopping_min_delta",
            },
        ),
        "manymodels": cfg.manymodels.model_dump(mode="json", include={"min_rows", "candidates", "fallback", "global_max_rows"}),
        "fingerprint": data_fingerprint,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]


def _warn_ignored(cfg: ManyModelsJobConfig) -> None:
    t = cfg.train
    defaults = (("num_workers", 1), ("use_gpu", False))
    ignored = [f"train.{k}={getattr(t, k)}" for k, default in defaults if getattr(t, k) != default]
    if ignored:
        logger.warning("%s: ignored by many models (each segment trains on one CPU thread)", ", ".join(ignored))


def _check_name_kind(registry: Registry, name: str) -> None:
    """A model set must not become a new version of a single model: aliases would flip between kinds."""
    try:
        rm = registry.client.get_registered_model(name)
    except Exception:
        return  # not registered yet
    kind = (rm.tags or {}).get(KIND_TAG)
    if kind != KIND_MODEL_SET and registry.versions(name):
        raise ConfigError(
            f"model {name!r} already holds single models (kind {kind or 'model'!r}); a model set cannot be a version of it",
            hint=f"choose another name for the model set: --set model.name={name}-segments",
        )


def _prepare(cfg: ManyModelsJobConfig) -> tuple[pd.DataFrame, Schema, str]:
    df = load_table(cfg.data)
    schema = infer_schema(df, cfg.data)
    validate(df, schema, max_nan_fraction=cfg.data.max_nan_fraction, require_target=True, source=cfg.data.source)
    return df, schema, fingerprint(df)


# --- Ray tasks ---------------------------------------------------------------------------------------------------------
def _train_chunk(
    table: Any,
    segments: list[Segment],
    schema_dict: dict[str, Any],
    candidates: list[FitSettings],
    max_retries: int,
    fail: dict[str, int],
) -> list[SegmentOutcome]:
    """Task body: train each segment of the chunk from its slice of the shared Arrow table."""
    import torch

    from rayml.manymodels._fit import fit_with_retries

    torch.set_num_threads(1)  # one CPU per task: more threads only fight the other tasks
    schema = Schema.from_dict(schema_dict)
    out = []
    for s in segments:
        part = table.slice(s.start, s.rows).to_pandas()
        is_val = part.pop(VAL_COLUMN).to_numpy(dtype=bool)
        out.append(
            fit_with_retries(s.key, s.index, part[~is_val], part[is_val], schema, candidates, max_retries, fail.get(s.key, 0))
        )
    return out


def _train_global(
    table: Any, schema_dict: dict[str, Any], settings: FitSettings, max_rows: int, max_retries: int, fail: dict[str, int]
) -> SegmentOutcome:
    """Task body: the global model on (a seeded sample of) every training row, validated on every validation row."""
    import torch

    from rayml.manymodels._fit import fit_with_retries

    torch.set_num_threads(1)
    df = table.to_pandas()
    is_val = df.pop(VAL_COLUMN).to_numpy(dtype=bool)
    train_df, val_df = df[~is_val], df[is_val]
    if len(train_df) > max_rows:
        train_df = train_df.sample(n=max_rows, random_state=settings.seed)
    schema = Schema.from_dict(schema_dict)
    return fit_with_retries(GLOBAL_KEY, -1, train_df, val_df, schema, [settings], max_retries, fail.get(GLOBAL_KEY, 0))


def _run_tasks(
    table_ref: Any,
    work: list[list[Segment]],
    schema: Schema,
    candidates: list[FitSettings],
    cfg: ManyModelsJobConfig,
    fail: dict[str, int],
    on_outcome: Callable[[SegmentOutcome], None],
    train_global: bool,
) -> SegmentOutcome | None:
    """Run the global task and every chunk; ``on_outcome`` gets each segment's outcome as soon as its task ends."""
    import ray

    m = cfg.manymodels
    opts = {"num_cpus": m.cpus_per_task, "max_retries": m.max_retries, "retry_exceptions": False}
    chunk_task = ray.remote(_train_chunk).options(**opts, name="rayml.manymodels.train_chunk")
    schema_dict = schema.to_dict()
    pending: dict[Any, list[Segment] | None] = {}
    if train_global:  # first: the longest single task should not be the last one to start
        ref = (
            ray.remote(_train_global)
            .options(**opts, name="rayml.manymodels.train_global")
            .remote(table_ref, schema_dict, candidates[0], m.global_max_rows, m.max_retries, fail)
        )
        pending[ref] = None
    for segments in work:
        pending[chunk_task.remote(table_ref, segments, schema_dict, candidates, m.max_retries, fail)] = segments
    global_outcome = None
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        segments = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as e:  # the worker died (after Ray's retries): isolate the segments of the lost task
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
            if segments is None:
                raise TrainingError(f"the global model's task failed: {error}", hint="see the Ray worker logs") from e
            if len(segments) > 1:
                logger.warning("a task with %d segments was lost (%s); retrying them one per task", len(segments), error)
                for s in segments:
                    pending[chunk_task.remote(table_ref, [s], schema_dict, candidates, m.max_retries, fail)] = [s]
                continue
            s = segments[0]
            result = [SegmentOutcome(s.key, s.index, s.rows, "failed", error=error, attempts=m.max_retries + 1)]
        if segments is None:
            global_outcome = result
            continue
        for outcome in result:
            on_outcome(outcome)
    return global_outcome


# --- the run -----------------------------------------------------------------------------------------------------------
def _global_metrics_per_segment(
    global_onnx: bytes, table: pd.DataFrame, trained: list[Segment], task: str, target: str
) -> dict[str, dict[str, float]]:
    """The global model's metrics on each trained segment's validation rows (what the segment model must beat)."""
    from rayml.models import OnnxPredictor

    if not trained:
        return {}
    rows = np.concatenate([np.arange(s.start, s.start + s.rows) for s in trained])
    owner = np.repeat(np.arange(len(trained)), [s.rows for s in trained])
    is_val = table[VAL_COLUMN].to_numpy()[rows]
    rows, owner = rows[is_val], owner[is_val]
    val = table.iloc[rows]
    pred = OnnxPredictor(global_onnx).predict(val)
    y = val[target].to_numpy()
    out = {}
    for i, s in enumerate(trained):
        mask = owner == i
        out[s.key] = prediction_metrics(task, y[mask], pred[mask], prefix="global_val_")
    return out


def _aggregate(outcomes: dict[str, SegmentOutcome], task: str) -> dict[str, float]:
    trained = [o for o in outcomes.values() if o.status == "trained"]
    if not trained:
        return {}
    main = "val_rmse" if task == "regression" else "val_logloss"  # lower is better for both
    seg = np.array([o.metrics.get(main, np.nan) for o in trained], dtype=float)
    glob = np.array([o.metrics.get(f"global_{main}", np.nan) for o in trained], dtype=float)
    both = np.isfinite(seg) & np.isfinite(glob)
    out = {f"median_segment_{main}": float(np.nanmedian(seg)) if np.isfinite(seg).any() else float("nan")}
    if both.any():
        out[f"median_global_{main}"] = float(np.median(glob[both]))
        out["segments_beating_global_share"] = float(np.mean(seg[both] < glob[both]))
    return out


def train_model_set(
    cfg: ManyModelsJobConfig, registry: Registry | None = None, progress: Progress | None = None
) -> ModelSetResult:
    """Train one model per segment of ``cfg.data.segment`` in parallel and register them as one model set.

    Rerunning the same command after a crash trains only the segments that are missing; after a successful,
    registered run it does nothing and returns the registered version.

    Args:
        cfg: the job config (``data``/``model``/``train``/``registry`` + ``manymodels``).
        registry: the registry to use (default: ``cfg.registry.tracking_uri``).
        progress: called with (segments done, segments total) as tasks finish.

    Returns:
        The :class:`ModelSetResult`; check ``ok`` (False: too many segments failed, nothing registered).

    Raises:
        ConfigError, DataError: bad config or data (nothing trained).
        TrainingError: the global model failed (no set can be built without it).

    Example:
        >>> cfg = load_config(ManyModelsJobConfig, "jobs/configs/manymodels.yaml")
        >>> result = train_model_set(cfg)
        >>> result.model_version.ref, result.trained, result.fell_back, result.failed
    """
    import ray

    from rayml._private.ray_session import ensure_ray

    t0 = time.perf_counter()
    logger.info("resolved config:\n%s", dump_config(cfg))
    _warn_ignored(cfg)
    m = cfg.manymodels
    registry = registry or Registry(cfg.registry.tracking_uri)
    if cfg.registry.register_version:
        _check_name_kind(registry, cfg.model.name)
    df, schema, data_fp = _prepare(cfg)
    table = segment_table(df, cfg.data.segment, cfg.data.validation_fraction, cfg.train.seed)
    del df
    n = len(table.segments)
    if n > m.max_segments:
        raise ConfigError(
            f"data.segment {cfg.data.segment} splits the data into {n} segments, more than manymodels.max_segments "
            f"({m.max_segments})",
            hint="check that the segment column is not a row id, or raise manymodels.max_segments",
        )
    run_name = cfg.train.run_name or f"{cfg.model.name}-{_config_hash(cfg, data_fp)}"
    run_dir = fs.join(storage_path_for(cfg), "manymodels", run_name)
    state = RunState(run_dir)
    saved = state.read()
    if saved.get("status") == "registered" and cfg.registry.register_version:
        info = registry.get_version(saved["model_name"], int(saved["model_version"]))
        logger.info("run %s already registered %s; nothing to do", run_name, info.ref)
        s = saved.get("summary", {})
        return ModelSetResult(
            name=info.name,
            run_name=run_name,
            run_dir=run_dir,
            mlflow_run_id=saved["mlflow_run_id"],
            data_fingerprint=data_fp,
            segments=s.get("segments", n),
            trained=s.get("trained", 0),
            fell_back=s.get("fell_back", 0),
            failed=s.get("failed", {}),
            failed_share=s.get("failed_share", 0.0),
            max_failed_share=m.max_failed_share,
            ok=True,
            wall_s=time.perf_counter() - t0,
            train_wall_s=s.get("train_wall_s", 0.0),
            models_per_min=s.get("models_per_min", 0.0),
            metrics=s.get("metrics", {}),
            model_version=info,
            already_done=True,
        )

    run_id = saved.get("mlflow_run_id")
    if not run_id or not registry.run_exists(run_id):
        run_id = registry.create_run(
            cfg.registry.experiment,
            run_name,
            tags=lineage_tags(
                data_fp,
                "",
                {"rayml.manymodels_run_name": run_name, "rayml.data_source": cfg.data.source, "rayml.kind": KIND_MODEL_SET},
            ),
        )
        registry.client.set_tag(run_id, "rayml.run_id", run_id)
        _log_params(registry, run_id, cfg)
    else:
        logger.info("resuming run %s (MLflow run %s)", run_name, run_id)
        registry.client.update_run(run_id, status="RUNNING")
    state.write({"status": "running", "mlflow_run_id": run_id, "run_name": run_name})

    trainable, small = split_trainable(table.segments, m.min_rows)
    if small and not m.fallback:
        logger.warning(
            "%d segment(s) have fewer than %d rows and manymodels.fallback is off: they get no model", len(small), m.min_rows
        )
    outcomes: dict[str, SegmentOutcome] = {s.key: SegmentOutcome(s.key, s.index, s.rows, "fallback") for s in small}
    for s in trainable:  # what an interrupted attempt of this run already trained
        earlier = state.load(s.key, s.index)
        if earlier is not None:
            outcomes[s.key] = earlier
    reused = sum(1 for o in outcomes.values() if o.status == "trained")
    global_outcome = state.load(GLOBAL_KEY, None)
    todo = [s for s in trainable if s.key not in outcomes]
    if reused:
        logger.info("reusing %d segment model(s) trained by an earlier attempt of run %s", reused, run_name)

    ensure_ray()
    slots = float(ray.cluster_resources().get("CPU", 1.0)) / m.cpus_per_task
    per_task = m.segments_per_task or auto_segments_per_task(len(todo), slots)
    work = chunk(todo, per_task)
    total = len(trainable)
    logger.info(
        "%d segments: %d to train in %d task(s) of up to %d, %d reused, %d below min_rows=%d",
        n,
        len(todo),
        len(work),
        per_task,
        reused,
        len(small),
        m.min_rows,
    )
    candidates = fit_settings(cfg)
    fail = constants.fail_segments()
    done = [reused]

    def on_outcome(o: SegmentOutcome) -> None:
        outcomes[o.key] = o
        state.save(o)
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    if progress is not None:
        progress(done[0], total)
    t_train = time.perf_counter()
    table_ref = ray.put(_arrow(table.frame))  # once: every task slices the same zero-copy table
    try:
        new_global = _run_tasks(table_ref, work, schema, candidates, cfg, fail, on_outcome, global_outcome is None)
    finally:
        del table_ref
    train_wall = time.perf_counter() - t_train
    if global_outcome is None:
        global_outcome = new_global
        if global_outcome is not None and global_outcome.status == "trained":
            state.save(global_outcome, is_global=True)
    if global_outcome is None or global_outcome.status != "trained":
        error = global_outcome.error if global_outcome else "no result"
        registry.client.set_terminated(run_id, status="FAILED")
        state.write({"status": "failed", "mlflow_run_id": run_id, "run_name": run_name, "error": error})
        raise TrainingError(f"the global model failed: {error}", hint="it trains on all rows; check the data and settings")

    trained_segments = [s for s in trainable if outcomes[s.key].status == "trained"]
    for key, gm in _global_metrics_per_segment(
        global_outcome.onnx, table.frame, trained_segments, schema.task, schema.target
    ).items():
        outcomes[key].metrics.update(gm)
    acc = account(outcomes.values())
    trained_now = len(acc.trained) - reused
    result = ModelSetResult(
        name=cfg.model.name,
        run_name=run_name,
        run_dir=run_dir,
        mlflow_run_id=run_id,
        data_fingerprint=data_fp,
        segments=acc.segments,
        trained=len(acc.trained),
        fell_back=len(acc.fell_back),
        failed=acc.failed,
        failed_share=acc.failed_share,
        max_failed_share=m.max_failed_share,
        ok=not acc.too_many_failures(m.max_failed_share),
        wall_s=0.0,
        train_wall_s=train_wall,
        models_per_min=60.0 * trained_now / train_wall if train_wall > 0 else 0.0,
        metrics={**_aggregate(outcomes, schema.task), **{f"global_{k}": v for k, v in global_outcome.metrics.items()}},
        reused=reused,
    )
    for key, error in sorted(acc.failed.items()):
        logger.error("segment %r failed after %d attempt(s): %s", key, m.max_retries + 1, error)
    model_dir = tempfile.mkdtemp(prefix="rayml-model-set-")
    tags = lineage_tags(
        data_fp,
        run_id,
        {
            "rayml.manymodels_run_name": run_name,
            "rayml.kind": KIND_MODEL_SET,
            "rayml.segments": str(acc.segments),
            "rayml.segments_trained": str(len(acc.trained)),
            "rayml.segments_fallback": str(len(acc.fell_back)),
            "rayml.segments_failed": str(len(acc.failed)),
        },
    )
    _write_set(model_dir, cfg, schema, data_fp, outcomes, global_outcome, acc, tags)
    result.model_dir = model_dir
    _log_metrics(registry, run_id, result)
    if not result.ok:
        registry.client.set_terminated(run_id, status="FAILED")
        state.write({"status": "failed", "mlflow_run_id": run_id, "run_name": run_name, "summary": result.summary()})
        logger.error(
            "%d of %d segments failed (%.1f%% > max_failed_share %.1f%%): nothing registered",
            len(acc.failed),
            acc.segments,
            100 * acc.failed_share,
            100 * m.max_failed_share,
        )
    elif cfg.registry.register_version:
        info = registry.register(
            cfg.model.name,
            model_dir,
            run_id,
            tags,
            description=f"model set of {acc.segments} segments, trained by run {run_name}",
        )
        registry.set_model_tag(cfg.model.name, KIND_TAG, KIND_MODEL_SET)
        if cfg.registry.alias:
            registry.set_alias(info.name, info.version, cfg.registry.alias)
            info = registry.get_version(info.name, info.version)
        result.model_version = info
    result.wall_s = time.perf_counter() - t0
    if result.ok:
        registry.client.set_terminated(run_id, status="FINISHED")
        state.write(
            {
                "status": "registered" if result.model_version else "trained",
                "mlflow_run_id": run_id,
                "run_name": run_name,
                "model_name": cfg.model.name,
                "model_version": result.model_version.version if result.model_version else None,
                "summary": result.summary(),
            }
        )
    return result


def _arrow(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def _write_set(
    model_dir: str,
    cfg: ManyModelsJobConfig,
    schema: Schema,
    data_fp: str,
    outcomes: dict[str, SegmentOutcome],
    global_outcome: SegmentOutcome,
    acc: Accounting,
    tags: dict[str, str],
) -> None:
    writer = ModelSetWriter(model_dir, cfg.data.segment)
    seg_stats = {}
    for key in sorted(outcomes):
        o = outcomes[key]
        extra = {"attempts": o.attempts}
        if o.status == "trained":
            writer.add_segment(
                key, o.index, o.onnx, o.rows, o.metrics, extra={**extra, "candidate": o.candidate, "epochs": o.epochs}
            )
            seg_stats[key] = o.stats
        elif cfg.manymodels.fallback:
            writer.add_fallback_segment(key, o.rows, status=o.status, extra={**extra, "error": o.error} if o.error else extra)
    writer.finish(
        global_outcome.onnx,
        serve_fallback=cfg.manymodels.fallback,
        meta={
            "name": cfg.model.name,
            "task": schema.task,
            "target": schema.target,
            "schema": schema.to_dict(),
            "data_fingerprint": data_fp,
            "min_rows": cfg.manymodels.min_rows,
            "global_metrics": global_outcome.metrics,
            "summary": {
                "segments": acc.segments,
                "trained": len(acc.trained),
                "fallback": len(acc.fell_back),
                "failed": len(acc.failed),
            },
            "lineage": tags,
        },
        reference_stats={"global": global_outcome.stats or {}, "segments": seg_stats},
    )


def _log_params(registry: Registry, run_id: str, cfg: ManyModelsJobConfig) -> None:
    from mlflow.entities import Param

    def flat(prefix: str, d: dict[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            out.update(flat(key, v) if isinstance(v, dict) else {key: json.dumps(v) if isinstance(v, list) else str(v)})
        return out

    params = flat("", cfg.model_dump(mode="json", exclude={"registry": True}))
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        registry.client.log_batch(run_id, params=items[i : i + 100])


def _log_metrics(registry: Registry, run_id: str, result: ModelSetResult) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    values = {
        "segments": result.segments,
        "segments_trained": result.trained,
        "segments_fallback": result.fell_back,
        "segments_failed": len(result.failed),
        "failed_share": result.failed_share,
        "train_wall_s": result.train_wall_s,
        "models_per_min": result.models_per_min,
        **result.metrics,
    }
    metrics = [Metric(k, float(v), ts, 0) for k, v in values.items() if np.isfinite(float(v))]
    registry.client.log_batch(run_id, metrics=metrics)


def cleanup(result: ModelSetResult) -> None:
    """Remove the local copy of the model-set directory (it is in the registry once registered)."""
    if result.model_dir and os.path.isdir(result.model_dir):
        shutil.rmtree(result.model_dir, ignore_errors=True)
