"""`rayml manymodels train`: one model per segment, trained in parallel Ray tasks, registered as ONE model set.

How it runs (the measurements behind the choice are in the README's "Many models" section):

1. the driver loads and validates the data once, sorts it by segment and puts it in the object store ONCE as an
   Arrow table (zero-copy for every task that reads it);
2. a task trains a chunk of ``segments_per_task`` segments one after another with a plain torch loop, or one
   single-threaded XGBoost / LightGBM booster each when ``model.type`` is a tree type (``rayml.manymodels._fit``;
   ``num_cpus=cpus_per_task``), slicing its rows from the shared table; one more task trains the global model of
   the same type on all rows (the fallback);
3. a segment that raises is retried ``max_retries`` times inside its task; a task whose worker dies is retried by
   Ray, and then its segments are retried one per task so a segment that kills its worker cannot fail the others;
4. every trained segment is saved to the run directory as it arrives, so rerunning the same command after a crash
   trains only what is missing; the model set (``rayml.models.ModelSetWriter``) is registered as one version.

The run (its name, state file ``rayml_manymodels.json`` and MLflow run) is a :class:`rayml.train.ResumableRun`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayml._private import constants, fs
from rayml.config import ConfigLike, ManyModelsJobConfig, Overrides, dump_config, resolve_config
from rayml.data import Schema, fingerprint, infer_schema, load_table, validate
from rayml.errors import ConfigError, TrainingError
from rayml.manymodels._fit import SegmentOutcome, fit_settings
from rayml.manymodels._plan import (
    Accounting,
    Segment,
    SegmentedTable,
    account,
    auto_segments_per_task,
    chunk,
    segment_table,
    split_trainable,
)
from rayml.manymodels._report import aggregate, global_metrics_per_segment, write_set
from rayml.manymodels._state import STATE_FILE, RunState
from rayml.manymodels._tasks import GLOBAL_KEY, run_tasks, to_arrow
from rayml.registry import KIND_MODEL_SET, KIND_TAG, ModelVersionInfo, Registry
from rayml.train import ALL, ResumableRun, RunIdentity, config_params, lineage_tags, only, storage_path_for

logger = logging.getLogger("rayml.manymodels")

Progress = Callable[[int, int], None]

# What determines the trained models: the data, the model, the training settings a segment model depends on and the
# set's own rules. Not where they go, how tasks are packed, retries or the failure tolerance.
MANYMODELS_IDENTITY = RunIdentity(
    {
        "data": ALL,
        "model": ALL,
        "train": only(
            "epochs",
            "batch_size",
            "learning_rate",
            "weight_decay",
            "seed",
            "early_stopping_patience",
            "early_stopping_min_delta",
        ),
        "manymodels": only("min_rows", "candidates", "fallback", "global_max_rows", "global_batch_size"),
    }
)


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


@dataclass
class _Attempt:
    """One attempt of a run: its data and segments, and every outcome known so far (reused or new)."""

    cfg: ManyModelsJobConfig
    table: SegmentedTable
    schema: Schema
    data_fp: str
    store: RunState
    trainable: list[Segment]
    outcomes: dict[str, SegmentOutcome]
    global_outcome: SegmentOutcome | None
    reused: int = 0  # trained segments taken from an earlier attempt
    train_wall_s: float = 0.0


def run_name_for(cfg: ManyModelsJobConfig, data_fingerprint: str) -> str:
    """``train.run_name``, or ``<model>-<digest of MANYMODELS_IDENTITY>``: the same command finds its run again."""
    return cfg.train.run_name or f"{cfg.model.name}-{MANYMODELS_IDENTITY.digest(cfg, data_fingerprint)}"


def _warn_ignored(cfg: ManyModelsJobConfig) -> None:
    t = cfg.train
    defaults = (("num_workers", 1), ("use_gpu", False))
    ignored = [f"train.{k}={getattr(t, k)}" for k, default in defaults if getattr(t, k) != default]
    if ignored:
        logger.warning("%s: ignored by many models (each segment trains on one CPU thread)", ", ".join(ignored))


def _check_name_kind(registry: Registry, name: str) -> None:
    """A model set must not become a new version of a single model: aliases would flip between kinds."""
    tags = registry.model_tags(name)
    if tags is None:
        return  # not registered yet
    kind = tags.get(KIND_TAG)
    if kind != KIND_MODEL_SET and registry.versions(name):
        raise ConfigError(
            f"model {name!r} already holds single models (kind {kind or 'model'!r}); a model set cannot be a version of it",
            hint=f"choose another name for the model set: --set model.name={name}-segments",
        )


def _prepare(cfg: ManyModelsJobConfig) -> tuple[SegmentedTable, Schema, str]:
    """Load and validate the data once, and sort it by segment (the table every task slices)."""
    df = load_table(cfg.data)
    schema = infer_schema(df, cfg.data)
    validate(df, schema, max_nan_fraction=cfg.data.max_nan_fraction, require_target=True, source=cfg.data.source)
    data_fp = fingerprint(df)
    table = segment_table(df, cfg.data.segment, cfg.data.validation_fraction, cfg.train.seed)
    n, m = len(table.segments), cfg.manymodels
    if n > m.max_segments:
        raise ConfigError(
            f"data.segment {cfg.data.segment} splits the data into {n} segments, more than manymodels.max_segments "
            f"({m.max_segments})",
            hint="check that the segment column is not a row id, or raise manymodels.max_segments",
        )
    return table, schema, data_fp


# --- the run -----------------------------------------------------------------------------------------------------------
def train_model_set(
    config: ConfigLike = None,
    *,
    overrides: Overrides = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
) -> ModelSetResult:
    """Train one model per segment of ``cfg.data.segment`` in parallel and register them as one model set.

    Rerunning the same command after a crash trains only the segments that are missing; after a successful,
    registered run it does nothing and returns the registered version.

    Args:
        config: the job config: a ManyModelsJobConfig (``data``/``model``/``train``/``registry`` +
            ``manymodels``), a YAML path or a dict shaped like the YAML (None: defaults).
        overrides: applied on top, as ``{"manymodels.min_rows": 30}`` or ``["manymodels.min_rows=30"]`` (the CLI's ``--set``).
        registry: the registry to use (default: ``cfg.registry.tracking_uri``).
        progress: called with (segments done, segments total) as tasks finish.

    Returns:
        The :class:`ModelSetResult`; check ``ok`` (False: too many segments failed, nothing registered).

    Raises:
        ConfigError, DataError: bad config or data (nothing trained).
        TrainingError: the global model failed (no set can be built without it).

    Example:
        >>> result = train_model_set("jobs/configs/manymodels.yaml")
        >>> result.model_version.ref, result.trained, result.fell_back, result.failed
    """
    t0 = time.perf_counter()
    cfg = resolve_config(ManyModelsJobConfig, config, overrides)
    logger.info("resolved config:\n%s", dump_config(cfg))
    _warn_ignored(cfg)
    registry = registry or Registry(cfg.registry.tracking_uri)
    if cfg.registry.register_version:
        _check_name_kind(registry, cfg.model.name)
    table, schema, data_fp = _prepare(cfg)
    run_name = run_name_for(cfg, data_fp)
    run_dir = fs.join(storage_path_for(cfg), "manymodels", run_name)
    run = ResumableRun("manymodels", cfg.model.name, run_name, fs.join(run_dir, STATE_FILE), started=t0)
    done = run.registered_version(registry) if cfg.registry.register_version else None
    if done is not None:
        logger.info("run %s already registered %s; nothing to do", run_name, done.ref)
        return _already_registered(cfg, run, run_dir, data_fp, len(table.segments), done)

    extra = {"rayml.manymodels_run_name": run_name, "rayml.data_source": cfg.data.source, "rayml.kind": KIND_MODEL_SET}
    run.start(registry, cfg.registry.experiment, tags=lineage_tags(data_fp, "", extra), params=config_params(cfg))
    attempt = _plan(cfg, table, schema, data_fp, RunState(run_dir), run_name)
    _train(attempt, progress)
    g = attempt.global_outcome
    if g is None or g.status != "trained":
        error = g.error if g else "no result"
        run.fail(error or "the global model failed", error=error)
        raise TrainingError(f"the global model failed: {error}", hint="it trains on all rows; check the data and settings")
    result, acc = _result(attempt, g, run, run_dir)
    _write_and_register(attempt, registry, run, result, acc)
    return result


def _already_registered(
    cfg: ManyModelsJobConfig, run: ResumableRun, run_dir: str, data_fp: str, segments: int, info: ModelVersionInfo
) -> ModelSetResult:
    """What an earlier attempt that registered its set left, as a :class:`ModelSetResult` (``already_done``)."""
    s = run.state.get("summary", {})
    return ModelSetResult(
        name=info.name,
        run_name=run.name,
        run_dir=run_dir,
        mlflow_run_id=run.state["mlflow_run_id"],
        data_fingerprint=data_fp,
        segments=s.get("segments", segments),
        trained=s.get("trained", 0),
        fell_back=s.get("fell_back", 0),
        failed=s.get("failed", {}),
        failed_share=s.get("failed_share", 0.0),
        max_failed_share=cfg.manymodels.max_failed_share,
        ok=True,
        wall_s=run.elapsed(),
        train_wall_s=s.get("train_wall_s", 0.0),
        models_per_min=s.get("models_per_min", 0.0),
        metrics=s.get("metrics", {}),
        model_version=info,
        already_done=True,
    )


def _plan(
    cfg: ManyModelsJobConfig, table: SegmentedTable, schema: Schema, data_fp: str, store: RunState, run_name: str
) -> _Attempt:
    """Which segments train, which fall back (too few rows), and what an interrupted attempt already trained."""
    m = cfg.manymodels
    trainable, small = split_trainable(table.segments, m.min_rows)
    if small and not m.fallback:
        logger.warning(
            "%d segment(s) have fewer than %d rows and manymodels.fallback is off: they get no model", len(small), m.min_rows
        )
    outcomes: dict[str, SegmentOutcome] = {s.key: SegmentOutcome(s.key, s.index, s.rows, "fallback") for s in small}
    for s in trainable:  # what an interrupted attempt of this run already trained
        earlier = store.load(s.key, s.index)
        if earlier is not None:
            outcomes[s.key] = earlier
    reused = sum(1 for o in outcomes.values() if o.status == "trained")
    if reused:
        logger.info("reusing %d segment model(s) trained by an earlier attempt of run %s", reused, run_name)
    return _Attempt(cfg, table, schema, data_fp, store, trainable, outcomes, store.load(GLOBAL_KEY, None), reused)


def _train(attempt: _Attempt, progress: Progress | None) -> None:
    """Train the missing segments (and the global model, unless an earlier attempt saved it) in Ray tasks; every
    outcome is saved to the run directory as it arrives."""
    import ray

    from rayml._private.ray_session import ensure_ray

    cfg, m = attempt.cfg, attempt.cfg.manymodels
    todo = [s for s in attempt.trainable if s.key not in attempt.outcomes]
    ensure_ray()
    slots = float(ray.cluster_resources().get("CPU", 1.0)) / m.cpus_per_task
    per_task = m.segments_per_task or auto_segments_per_task(len(todo), slots)
    work = chunk(todo, per_task)
    total, n = len(attempt.trainable), len(attempt.table.segments)
    small = n - total  # below min_rows
    logger.info(
        "%d segments: %d to train in %d task(s) of up to %d, %d reused, %d below min_rows=%d",
        n,
        len(todo),
        len(work),
        per_task,
        attempt.reused,
        small,
        m.min_rows,
    )
    candidates = fit_settings(cfg)
    fail = constants.fail_segments()
    done = [attempt.reused]

    def on_outcome(o: SegmentOutcome) -> None:
        attempt.outcomes[o.key] = o
        attempt.store.save(o)
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    if progress is not None:
        progress(done[0], total)
    t_train = time.perf_counter()
    table_ref = ray.put(to_arrow(attempt.table.frame))  # once: every task slices the same zero-copy table
    try:
        train_global = attempt.global_outcome is None
        new_global = run_tasks(table_ref, work, attempt.schema, candidates, cfg, fail, on_outcome, train_global)
    finally:
        del table_ref
    attempt.train_wall_s = time.perf_counter() - t_train
    if attempt.global_outcome is None:
        attempt.global_outcome = new_global
        if new_global is not None and new_global.status == "trained":
            attempt.store.save(new_global, is_global=True)


def _result(attempt: _Attempt, g: SegmentOutcome, run: ResumableRun, run_dir: str) -> tuple[ModelSetResult, Accounting]:
    """Compare every trained segment with the global model ``g`` on its validation rows, and count what happened."""
    cfg, schema, outcomes = attempt.cfg, attempt.schema, attempt.outcomes
    trained_segments = [s for s in attempt.trainable if outcomes[s.key].status == "trained"]
    assert g.onnx is not None, "a trained outcome carries its model"
    for key, gm in global_metrics_per_segment(g.onnx, attempt.table.frame, trained_segments, schema).items():
        outcomes[key].metrics.update(gm)
    acc = account(outcomes.values())
    trained_now = len(acc.trained) - attempt.reused
    train_wall = attempt.train_wall_s
    m = cfg.manymodels
    result = ModelSetResult(
        name=cfg.model.name,
        run_name=run.name,
        run_dir=run_dir,
        mlflow_run_id=str(run.run_id),
        data_fingerprint=attempt.data_fp,
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
        metrics={**aggregate(outcomes, schema.task), **{f"global_{k}": v for k, v in g.metrics.items()}},
        reused=attempt.reused,
    )
    for key, error in sorted(acc.failed.items()):
        logger.error("segment %r failed after %d attempt(s): %s", key, m.max_retries + 1, error)
    return result, acc


def _write_and_register(
    attempt: _Attempt, registry: Registry, run: ResumableRun, result: ModelSetResult, acc: Accounting
) -> None:
    """Write the model-set directory, log the run's numbers, and register the set unless too many segments failed."""
    cfg, data_fp, global_outcome, outcomes = attempt.cfg, attempt.data_fp, attempt.global_outcome, attempt.outcomes
    run_id, run_name, schema = str(run.run_id), run.name, attempt.schema
    assert global_outcome is not None, "run_model_set checked that the global model trained"
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
    write_set(model_dir, cfg, schema, data_fp, outcomes, global_outcome, acc, tags, attempt.table.frame.head(5))
    result.model_dir = model_dir
    registry.log_metrics(run_id, _run_metrics(result))
    if not result.ok:
        logger.error(
            "%d of %d segments failed (%.1f%% > max_failed_share %.1f%%): nothing registered",
            len(acc.failed),
            acc.segments,
            100 * acc.failed_share,
            100 * cfg.manymodels.max_failed_share,
        )
        result.wall_s = run.elapsed()
        run.fail(f"{len(acc.failed)} of {acc.segments} segments failed", summary=result.summary())
        return
    if cfg.registry.register_version:
        description = f"model set of {acc.segments} segments, trained by run {run_name}"
        # segments train in Ray tasks that sample no memory: the set records its training time only
        perf = {"train_time_s": run.elapsed()}
        info = registry.register(cfg.model.name, model_dir, run_id, tags, description=description, perf=perf)
        registry.set_model_tag(cfg.model.name, KIND_TAG, KIND_MODEL_SET)
        if cfg.registry.alias:
            registry.set_alias(info.name, info.version, cfg.registry.alias)
            info = registry.get_version(info.name, info.version)
        result.model_version = info
    result.wall_s = run.elapsed()
    run.finish(
        "registered" if result.model_version else "trained",
        model_name=cfg.model.name,
        model_version=result.model_version.version if result.model_version else None,
        summary=result.summary(),
    )


def _run_metrics(result: ModelSetResult) -> dict[str, float]:
    """The run's numbers for MLflow (step 0): segment counts, failure share, speed and the aggregated metrics."""
    return {
        "segments": result.segments,
        "segments_trained": result.trained,
        "segments_fallback": result.fell_back,
        "segments_failed": len(result.failed),
        "failed_share": result.failed_share,
        "train_wall_s": result.train_wall_s,
        "models_per_min": result.models_per_min,
        **result.metrics,
    }


def cleanup(result: ModelSetResult) -> None:
    """Remove the local copy of the model-set directory (it is in the registry once registered)."""
    if result.model_dir and os.path.isdir(result.model_dir):
        shutil.rmtree(result.model_dir, ignore_errors=True)
