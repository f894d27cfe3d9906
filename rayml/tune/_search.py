"""`rayml tune`: a hyperparameter search on Ray Tune whose best model is exported and registered like `rayml train`'s.

Where things go (``S`` = ``train.storage_path``, default ``$RAYML_HOME/runs``):

- ``S/tune/<name>/``: the Tune experiment (one ``trial_<id>/`` per trial with its checkpoints and result rows),
  ``rayml_tune.json`` (rayml's own state: parent run, status, registered version), ``results.csv`` and
  ``learning_curves.png``;
- ``S/tune/<name>/_train/``: checkpoints of distributed trials' TorchTrainer runs.

Resuming: the experiment state is saved every second while the search runs, so after the driver dies
``tune(cfg, resume=True)`` restores it with ``Tuner.restore``: finished trials are kept as they are, unfinished and
errored ones continue from their latest checkpoint, and the searcher and ASHA continue from their saved state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from rayml._private import constants, fs
from rayml.config import ConfigLike, Overrides, TuneJobConfig, dump_config, model_type_problems, resolve_config
from rayml.errors import ConfigError, TrainingError
from rayml.models.factory import import_path
from rayml.registry import ModelVersionInfo, Registry
from rayml.train import PreparedData, ResumableRun, config_params, lineage_tags, prepare_data, spec_for, storage_path_for
from rayml.tune._mlflow import SEARCH_TAG, MlflowTrialCallback, child_runs
from rayml.tune._outputs import TuneResult, log_summary, register_best, write_outputs
from rayml.tune._report import CURVES_FILE, RESULTS_FILE, TrialSummary, rank, summarize

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import SearchAlgorithm, Searcher
from rayml.tune._space import identity_changes, param_space, search_identity, search_name_for, trial_config
from rayml.tune._trainables import (
    TrialSetup,
    distributed_tree_trial,
    distributed_trial,
    single_worker_tree_trial,
    single_worker_trial,
)

logger = logging.getLogger("rayml.tune")

STATE_FILE = "rayml_tune.json"
# Tune saves its experiment state every >= 10 s by default; a driver killed in that window forgets which trials had
# finished and re-runs them from their last checkpoint. Saving every second keeps that window (and the cost) small.
_EXPERIMENT_STATE_INTERVAL_S = "1"
# A distributed trial is a driver that waits on its TorchTrainer, whose workers reserve their own resources. Tune
# refuses an empty request, so the driver asks for a token share of a CPU.
_DRIVER_TRIAL_CPU = 0.01


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


@contextlib.contextmanager
def _tune_env():
    """Tune reads these when the experiment starts; a user's own setting wins, and nothing outlives the search."""
    wanted = {
        "TUNE_GLOBAL_CHECKPOINT_S": _EXPERIMENT_STATE_INTERVAL_S,
        # saving that often is deliberate: silence Tune's "snapshotting triggered multiple times" warning about it
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    }
    added = [k for k in wanted if k not in os.environ]
    for k in added:
        os.environ[k] = wanted[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _existing_searches(root: str) -> list[str]:
    import pyarrow.fs as pafs

    filesystem, p = fs.filesystem(root)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    except OSError:
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def _resources(cfg: TuneJobConfig) -> tuple[int, float, float]:
    t = cfg.tune
    workers = t.workers_per_trial or cfg.train.num_workers
    cpus = t.cpus_per_worker if t.cpus_per_worker is not None else cfg.train.cpus_per_worker
    gpus = t.gpus_per_worker if t.gpus_per_worker is not None else (1.0 if cfg.train.use_gpu else 0.0)
    return workers, cpus, gpus


def _check_cluster(workers: int, cpus: float, gpus: float) -> None:
    import ray

    have = ray.cluster_resources()
    need_gpu = workers * gpus
    if need_gpu > 0 and have.get("GPU", 0) < need_gpu and not constants.ray_address():
        raise ConfigError(
            f"a trial needs {need_gpu:g} GPU(s) ({workers} worker(s) x {gpus:g}) but this Ray has {have.get('GPU', 0):g}",
            hint="set tune.gpus_per_worker=0 / train.use_gpu=false, or run on a cluster with GPUs (RAY_ADDRESS)",
        )
    need_cpu = workers * cpus
    if have.get("CPU", 0) < need_cpu and not constants.ray_address():
        raise ConfigError(
            f"a trial needs {need_cpu:g} CPU(s) ({workers} worker(s) x {cpus:g}) but this Ray has {have.get('CPU', 0):g}",
            hint="lower tune.workers_per_trial or tune.cpus_per_worker",
        )


def _default_concurrency(workers: int, cpus: float, gpus: float) -> int:
    """Trials whose worker groups fit the cluster at once (a distributed trial's driver reserves nothing)."""
    import ray

    have = ray.cluster_resources()
    fits = int(have.get("CPU", 0) // (workers * cpus)) if cpus > 0 else 1
    if gpus > 0:
        fits = min(fits, int(have.get("GPU", 0) // (workers * gpus)))
    return max(1, fits)


def _build_tuner(
    cfg: TuneJobConfig, name: str, root: str, trainable: Any, callback: MlflowTrialCallback, max_concurrent: int | None
):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t = cfg.tune
    searcher: Searcher | SearchAlgorithm
    scheduler: TrialScheduler
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=t.seed)  # Tune wraps it in a ConcurrencyLimiter(max_concurrent_trials)
        tuner_max_concurrent = max_concurrent
    else:
        # Tune ignores max_concurrent_trials for a BasicVariantGenerator passed in: the generator limits itself
        searcher = BasicVariantGenerator(random_state=t.seed, max_concurrent=max_concurrent or 0)
        tuner_max_concurrent = None
    if t.scheduler == "asha":
        # the loop's own `epoch` (not Tune's training_iteration) is the time axis: it survives a resume unchanged
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=cfg.max_epochs, grace_period=t.asha.grace_period, reduction_factor=t.asha.reduction_factor
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric=t.metric,
            mode=cfg.resolved_mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.resolved_num_samples,
            max_concurrent_trials=tuner_max_concurrent,
            reuse_actors=True,  # a trial process (torch imported, data deserialised) serves the next trial
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=cfg.train.checkpoint_num_to_keep,
                checkpoint_score_attribute=t.metric,
                checkpoint_score_order=cfg.resolved_mode,
            ),
        ),
    )


def _flat_params(cfg: TuneJobConfig) -> dict[str, str]:
    """The config as MLflow params; a search dimension (``tune.space.<dotted path>``) stays one JSON param."""
    return config_params(cfg, keep_whole=lambda key: key.startswith("tune.space.") and key.count(".") >= 3)


def _check_existing(name: str, root: str, exp_path: str, state: dict | None, resume: bool, identity: dict) -> None:
    from ray.tune import Tuner

    exists = state is not None or Tuner.can_restore(exp_path)
    if exists and not resume:
        status = (state or {}).get("status", "interrupted")
        todo = (
            "pass --resume to show its results"
            if status == "registered"
            else "pass --resume to continue it (finished trials are kept; unfinished ones continue from their checkpoints)"
        )
        raise ConfigError(
            f"a search named {name!r} already exists at {exp_path} (status: {status})",
            hint=f"{todo}, or choose another name with --set tune.name=NEW_NAME",
        )
    if resume and not exists:
        others = _existing_searches(root)
        raise ConfigError(
            f"nothing to resume: there is no search named {name!r} under {root}",
            hint="run without --resume to start it. The default name derives from the config, so a changed config "
            "names a new search; set tune.name to the old one to resume it"
            + (f" (searches there: {', '.join(others)})" if others else ""),
        )
    if resume and state and state.get("identity") and state["identity"] != identity:
        changed = identity_changes(state["identity"], identity)
        raise ConfigError(
            f"search {name!r} was started with a different config; changed: {', '.join(changed[:12])}",
            hint="resume with the original config, or start a new search with --set tune.name=NEW_NAME",
        )


def tune(
    config: ConfigLike = None, *, overrides: Overrides = None, resume: bool = False, registry: Registry | None = None
) -> TuneResult:
    """Run (or resume) the hyperparameter search ``cfg`` describes, then export and register its best model.

    Every trial runs the same training loop as ``rayml train``; the best trial (by ``tune.metric`` at its best epoch)
    is exported to ONNX from that epoch's checkpoint and registered as a new version of ``model.name``, with lineage
    tags plus ``rayml.tune_search_id`` and ``rayml.tune_trial_id``.

    Args:
        config: the job config: a TuneJobConfig (training config + ``tune`` section), a YAML path or a
            dict shaped like the YAML (None: defaults).
        overrides: applied on top, as ``{"tune.num_samples": 4}`` or ``["tune.num_samples=4"]`` (the CLI's ``--set``).
        resume: continue an interrupted search of the same name instead of refusing to reuse its directory.
        registry: MLflow registry to use; None = ``registry.tracking_uri`` from the config.

    Returns:
        The :class:`TuneResult`: every trial (best first), the best config and metric, the registered version.

    Raises:
        ConfigError: bad config, a search of that name exists (without ``resume``), or nothing to resume.
        DataError: the training data is invalid.
        TrainingError: every trial failed.

    Example:
        >>> result = tune("jobs/configs/tune.yaml", overrides={"tune.num_samples": 4})
        >>> result.best_params, result.best_metric, result.model_version.ref
        ({'train.learning_rate': 0.0042, ...}, 41.7, 'sales-model:3')
    """
    cfg = resolve_config(TuneJobConfig, config, overrides)
    problems = model_type_problems(cfg.model, cfg.train)
    if problems:
        raise ConfigError("; ".join(problems), hint=f"model.type {cfg.model.type!r} trains with its own settings; see the README")
    logger.info("resolved config:\n%s", dump_config(cfg))
    t0 = time.perf_counter()
    prepared = prepare_data(cfg.data, cfg.train.seed)
    if not cfg.model.is_tree:
        spec_for(cfg, prepared, check_factory=True)  # a bad model.factory fails here, not in every trial
    name = search_name_for(cfg, prepared.fingerprint)
    root = fs.join(storage_path_for(cfg), "tune")
    exp_path = fs.join(root, name)
    # the parent run's id is `parent_run_id` in rayml_tune.json, and every write keeps the trials of the last one
    run = ResumableRun(
        "tune",
        cfg.model.name,
        name,
        fs.join(exp_path, STATE_FILE),
        started=t0,
        run_id_key="parent_run_id",
        name_key="name",
        keep_state=True,
    )
    identity = search_identity(cfg, prepared.fingerprint)
    _check_existing(name, root, exp_path, run.saved, resume, identity)
    registry = registry or Registry(cfg.registry.tracking_uri)
    done = run.registered_version(registry) if cfg.registry.register_version else None
    if done is not None:
        logger.info("search %s already finished and registered %s; nothing to do", name, done.ref)
        return _already_done(cfg, done, exp_path, run.state, prepared.fingerprint, run.elapsed())

    tags = lineage_tags(prepared.fingerprint, "", {SEARCH_TAG: name, "rayml.data_source": prepared.source})
    parent_run_id = run.start(
        registry, cfg.registry.experiment, tags=tags, params=_flat_params(cfg), state={"identity": identity}
    )
    experiment_id = registry.experiment_id(cfg.registry.experiment)
    callback = MlflowTrialCallback(cfg, registry.tracking_uri, experiment_id, parent_run_id, name)
    tuner, restoring = _make_tuner(cfg, prepared, name, root, exp_path, resume, callback)
    try:
        with _tune_env():
            grid = tuner.fit()
    except Exception as e:
        run.fail(str(e), error=str(e)[:2000])
        raise TrainingError(
            f"search {name!r} failed: {e}", hint="fix the cause above, then run the same command with --resume"
        ) from e
    return _finish_search(cfg, registry, run, grid, prepared, exp_path, experiment_id, restoring)


def _make_tuner(
    cfg: TuneJobConfig,
    prepared: PreparedData,
    name: str,
    root: str,
    exp_path: str,
    resume: bool,
    callback: MlflowTrialCallback,
) -> tuple[Any, bool]:
    """(the Tuner: restored from ``exp_path`` when resuming a search that left one, else new; whether restored)."""
    from ray import tune as ray_tune
    from ray.tune import Tuner

    from rayml._private.ray_session import ensure_ray

    ensure_ray()
    workers, cpus, gpus = _resources(cfg)
    _check_cluster(workers, cpus, gpus)
    setup = TrialSetup(
        cfg=cfg,
        target=prepared.schema.target,
        workers=workers,
        cpus_per_worker=cpus,
        gpus_per_worker=gpus,
        faults=constants.fault_injection(),
        train_storage=fs.join(exp_path, "_train"),
        factory_path=import_path(cfg.model.factory) if cfg.model.factory else [],
    )
    trees = cfg.model.is_tree
    if workers == 1:
        fn, resources = (single_worker_tree_trial if trees else single_worker_trial), {"CPU": cpus, "GPU": gpus}
        max_concurrent = cfg.tune.max_concurrent_trials
    else:
        fn, resources = (distributed_tree_trial if trees else distributed_trial), {"CPU": _DRIVER_TRIAL_CPU}
        max_concurrent = cfg.tune.max_concurrent_trials or _default_concurrency(workers, cpus, gpus)
    trainable = ray_tune.with_resources(ray_tune.with_parameters(fn, setup=setup, prepared=prepared), resources)
    restoring = resume and Tuner.can_restore(exp_path)
    logger.info(
        "%s search %s: %s search, %s scheduler, %d sample(s), %d worker(s) per trial, experiment at %s",
        "resuming" if restoring else "starting",
        name,
        cfg.tune.search,
        cfg.tune.scheduler,
        cfg.resolved_num_samples,
        workers,
        exp_path,
    )
    if restoring:  # the callback comes back from the experiment state, with the child runs it opened
        return Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True), True
    return _build_tuner(cfg, name, root, trainable, callback, max_concurrent), False


def _finish_search(
    cfg: TuneJobConfig,
    registry: Registry,
    run: ResumableRun,
    grid: Any,
    prepared: PreparedData,
    exp_path: str,
    experiment_id: str,
    restoring: bool,
) -> TuneResult:
    """Rank the trials, write the results, register the best trial's model and finish the parent run."""
    name, parent_run_id = run.name, str(run.run_id)
    trials = summarize(grid, cfg, child_runs(registry, experiment_id, parent_run_id))
    wall = run.elapsed()
    results_path, plot_path = write_outputs(registry, cfg, name, exp_path, parent_run_id, trials)
    best = trials[0] if trials else None
    if best is None or best.best_metric is None:
        first = next((t.error for t in trials if t.error), "no trial reported a finite metric")
        run.fail(f"no usable trial: {first}", trials=[t.to_dict() for t in trials])
        raise TrainingError(
            f"search {name!r}: none of its {len(trials)} trial(s) produced a usable {cfg.tune.metric}: {first}",
            hint=f"see the trial errors under {exp_path}; fix the cause and run the same command with --resume",
        )
    result = TuneResult(
        name=name,
        experiment_path=exp_path,
        parent_run_id=parent_run_id,
        metric=cfg.tune.metric,
        mode=cfg.resolved_mode,
        trials=trials,
        best=best,
        best_config=trial_config(cfg, best.params),
        results_path=results_path,
        plot_path=plot_path,
        total_epochs=sum(t.epochs_run for t in trials),
        wall_time_s=wall,
        resumed=restoring,
        data_fingerprint=prepared.fingerprint,
    )
    register_best(registry, cfg, result, grid, prepared)
    log_summary(registry, result)
    run.finish(
        "registered" if result.model_version else "finished",
        trials=[t.to_dict() for t in trials],
        best_trial_id=best.trial_id,
        total_epochs=result.total_epochs,
        wall_time_s=wall,
        results_path=results_path,
        plot_path=plot_path,
        model_name=result.model_version.name if result.model_version else None,
        model_version=result.model_version.version if result.model_version else None,
    )
    return result


def _already_done(
    cfg: TuneJobConfig, info: ModelVersionInfo, exp_path: str, state: dict, fingerprint: str, wall: float
) -> TuneResult:
    """What a search that already registered its model left, as a :class:`TuneResult` (``already_done``)."""
    trials = rank([TrialSummary.from_dict(t) for t in state.get("trials", [])], cfg.resolved_mode)
    best = next(t for t in trials if t.trial_id == state["best_trial_id"])
    return TuneResult(
        name=state["name"],
        experiment_path=exp_path,
        parent_run_id=state["parent_run_id"],
        metric=cfg.tune.metric,
        mode=cfg.resolved_mode,
        trials=trials,
        best=best,
        best_config=trial_config(cfg, best.params),
        results_path=state.get("results_path", fs.join(exp_path, RESULTS_FILE)),
        plot_path=state.get("plot_path", fs.join(exp_path, CURVES_FILE)),
        total_epochs=int(state.get("total_epochs", sum(t.epochs_run for t in trials))),
        wall_time_s=float(state.get("wall_time_s", wall)),
        model_version=info,
        already_done=True,
        data_fingerprint=fingerprint,
    )
