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

import pandas as pd

from rayml._private import constants, fs
from rayml.config import ManyModelsJobConfig, dump_config
from rayml.data import Schema, fingerprint, infer_schema, load_table, validate
from rayml.errors import ConfigError, TrainingError
from rayml.manymodels._fit import SegmentOutcome, fit_settings
from rayml.manymodels._plan import (
    account,
    auto_segments_per_task,
    chunk,
    segment_table,
    split_trainable,
)
from rayml.manymodels._report import aggregate, global_metrics_per_segment, log_metrics, log_params, write_set
from rayml.manymodels._state import RunState
from rayml.manymodels._tasks import GLOBAL_KEY, run_tasks, to_arrow
from rayml.monitor.training import finish_training_run
from rayml.registry import KIND_MODEL_SET, KIND_TAG, ModelVersionInfo, Registry
from rayml.train import lineage_tags, storage_path_for

logger = logging.getLogger("rayml.manymodels")

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
        "manymodels": cfg.manymodels.model_dump(
            mode="json", include={"min_rows", "candidates", "fallback", "global_max_rows", "global_batch_size"}
        ),
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


# --- the run -----------------------------------------------------------------------------------------------------------
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
        log_params(registry, run_id, cfg)
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
    table_ref = ray.put(to_arrow(table.frame))  # once: every task slices the same zero-copy table
    try:
        new_global = run_tasks(table_ref, work, schema, candidates, cfg, fail, on_outcome, global_outcome is None)
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
        finish_training_run(registry.client, registry.tracking_uri, run_id, cfg.model.name, "manymodels", t0, error)
        raise TrainingError(f"the global model failed: {error}", hint="it trains on all rows; check the data and settings")

    trained_segments = [s for s in trainable if outcomes[s.key].status == "trained"]
    for key, gm in global_metrics_per_segment(
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
        metrics={**aggregate(outcomes, schema.task), **{f"global_{k}": v for k, v in global_outcome.metrics.items()}},
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
    write_set(model_dir, cfg, schema, data_fp, outcomes, global_outcome, acc, tags)
    result.model_dir = model_dir
    log_metrics(
        registry,
        run_id,
        {
            "segments": result.segments,
            "segments_trained": result.trained,
            "segments_fallback": result.fell_back,
            "segments_failed": len(result.failed),
            "failed_share": result.failed_share,
            "train_wall_s": result.train_wall_s,
            "models_per_min": result.models_per_min,
            **result.metrics,
        },
    )
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
    failure = None if result.ok else f"{len(acc.failed)} of {acc.segments} segments failed"
    finish_training_run(registry.client, registry.tracking_uri, run_id, cfg.model.name, "manymodels", t0, failure)
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


def cleanup(result: ModelSetResult) -> None:
    """Remove the local copy of the model-set directory (it is in the registry once registered)."""
    if result.model_dir and os.path.isdir(result.model_dir):
        shutil.rmtree(result.model_dir, ignore_errors=True)
