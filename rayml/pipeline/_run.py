"""Run (or resume) one pipeline run: identify it, load or create its state, run the unfinished stages, log them.

Run identity: ``<state_dir>/<pipeline name>/<run id>/state.json`` with run id = a hash of what determines the
candidate (the data, model, train and tune sections, less how a run is executed: storage, retries) and the content
fingerprint of the new data. The same command on the same data is the same run, so re-running it resumes; new data
or a changed model/training config is a new run. Gate, drift, serving and pipeline settings are not part of the
identity: a run that failed at the gate is re-judged with new thresholds by re-running with them.

One invocation per run at a time: it holds the run's lease (``<run dir>/lease.json``, see
:mod:`rayml._private.lease`) from before it reads the state until it ends, and every state write checks it; a second
invocation of the same run gets :class:`~rayml.errors.LeaseHeldError` naming the first.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rayml._private import constants, fs
from rayml._private.lease import Lease
from rayml.config import ConfigLike, Overrides, PipelineJobConfig, dump_config, resolve_config
from rayml.pipeline._stages import STAGE_NAMES, STAGES, Release, ServeRelease, StageContext
from rayml.pipeline._state import DONE, STATE_FILE, PipelineState, StageRecord, StateStore, run_stages
from rayml.registry import Registry
from rayml.train import ALL, EXECUTION_FIELDS, PreparedData, RunIdentity, all_but, create_or_resume_run, prepare_data

logger = logging.getLogger("rayml.pipeline")

LATEST_FILE = "latest.json"
LEASE_FILE = "lease.json"
# What the candidate depends on. How a run executes (EXECUTION_FIELDS) is not part of it: changing that resumes the
# same run. Unlike `rayml train`'s, the identity includes train.run_name: it names the training run the stage reuses.
PIPELINE_IDENTITY = RunIdentity(
    {"data": ALL, "model": ALL, "train": all_but(*EXECUTION_FIELDS), "tune": ALL},
    digits=12,
)


@dataclass
class PipelineResult:
    """A finished run (every stage done)."""

    state: PipelineState
    run_dir: str
    resumed_at: str | None  # the first stage this invocation ran (None: the run was already complete)

    @property
    def version(self) -> int:
        return int(self.state.stage("train").outputs["version"])

    @property
    def outcome(self) -> str:
        return str(self.state.stage("promote").outputs.get("outcome"))


def state_root(cfg: PipelineJobConfig) -> str:
    root = cfg.pipeline.state_dir or str(constants.rayml_home() / "pipelines")
    return root if "://" in root else str(Path(root).expanduser().resolve())


def run_id_for(cfg: PipelineJobConfig, data_fingerprint: str) -> str:
    """What the candidate depends on: data, model, train and tune settings and the data's content fingerprint."""
    return PIPELINE_IDENTITY.digest(cfg, data_fingerprint)


def run_pipeline(
    config: ConfigLike = None,
    *,
    overrides: Overrides = None,
    restart: bool = False,
    registry: Registry | None = None,
    release: Release | None = None,
) -> PipelineResult:
    """Run the pipeline ``cfg`` describes, resuming its run at the first unfinished stage.

    Stages: ``validate_data`` -> ``train`` -> ``gate`` -> ``register`` -> ``promote`` (see
    :mod:`rayml.pipeline._stages`). Each attempt of a stage is recorded in the run's ``state.json`` (status, start,
    end, duration, outputs, error), logged by ``rayml.pipeline`` and to the run's MLflow run (experiment
    ``pipeline.experiment``: metric ``<stage>_duration_s``, tag ``rayml.stage.<stage>``).

    Args:
        config: the job config: a PipelineJobConfig object, a YAML path or a dict shaped like the YAML (None: defaults).
        overrides: applied on top, as ``{"pipeline.name": nightly}`` or ``["pipeline.name=nightly"]`` (the CLI's ``--set``).
        restart: start the run over (every stage runs again). Training and tuning still reuse a model they already
            registered for the same config and data; change the config or ``train.run_name`` to train anew.
        registry: MLflow registry; None = ``registry.tracking_uri``.
        release: how the last stage reaches serving; None = the Serve application of the config.

    Returns:
        The :class:`PipelineResult` (every stage done).

    Raises:
        UserError: bad config or data (exit 2); nothing ran, or the failing stage is recorded.
        RaymlError: a stage failed (the gate refused, training failed, the rollout rolled back; exit 1); re-running
            the same command resumes at that stage.

    Example:
        >>> run_pipeline("jobs/configs/pipeline.yaml").outcome
        'promoted'
    """
    cfg = resolve_config(PipelineJobConfig, config, overrides)
    logger.info("resolved config:\n%s", dump_config(cfg))
    registry = registry or Registry(cfg.registry.tracking_uri)
    prepared = prepare_data(cfg.data, cfg.train.seed)  # bad data fails here, before any state is written
    run_id = run_id_for(cfg, prepared.fingerprint)
    name = cfg.pipeline_name
    run_dir = fs.join(state_root(cfg), name, run_id)
    # one live invocation per run: taken before the state is read (--restart included), held to the end
    lease = run_lease(run_dir, name, run_id).acquire()
    try:
        return _run_leased(cfg, registry, prepared, run_dir, lease, restart, release)
    finally:
        lease.release()


def run_lease(run_dir: str, pipeline: str, run_id: str) -> Lease:
    """The lease of one pipeline run (not taken yet): ``<run dir>/lease.json``."""
    return Lease(
        fs.join(run_dir, LEASE_FILE),
        f"pipeline run {pipeline}/{run_id}",
        hint="the same config on the same data is one run, and another `rayml pipeline run` is executing it: wait for "
        "it (`rayml pipeline status`); a crashed run's lease is taken over once its heartbeat is stale",
    )


def _run_leased(
    cfg: PipelineJobConfig,
    registry: Registry,
    prepared: PreparedData,
    run_dir: str,
    lease: Lease,
    restart: bool,
    release: Release | None,
) -> PipelineResult:
    """Run (or resume) the run in ``run_dir`` while holding its lease."""
    name, run_id = cfg.pipeline_name, run_dir.rstrip("/").rsplit("/", 1)[-1]
    store = StateStore(run_dir, guard=lease.check)
    state = None if restart else store.load()
    if state is None:
        identity = {"model": cfg.model.name, "data_source": cfg.data.source, "data_fingerprint": prepared.fingerprint}
        state = PipelineState.new(name, run_id, STAGE_NAMES, identity=identity)
        logger.info("pipeline %s: new run %s in %s", name, run_id, run_dir)
    else:
        with_current_stages(state)
        logger.info("pipeline %s: resuming run %s at stage %s", name, run_id, state.next_stage or "(complete)")
    resumed_at = state.next_stage
    state.mlflow_run_id = _open_mlflow_run(registry, cfg, state)
    store.save(state)
    fs.write_json(fs.join(state_root(cfg), name, LATEST_FILE), {"run_id": run_id, "run_dir": run_dir, "at": time.time()})

    if cfg.pipeline.rollout != "never" and resumed_at is not None:
        ServeRelease.connect()  # join the serving Ray first when there is one: a process has one Ray, training too
    ctx = StageContext(
        cfg=cfg,
        registry=registry,
        state=state,
        run_dir=run_dir,
        prepared=prepared,
        release=release or ServeRelease(cfg.serve_job(), registry),
        save=lambda: store.save(state),
    )
    try:
        run_stages(state, STAGES, store, ctx, on_stage_end=lambda st, rec: _log_stage(registry, st, rec))
    finally:
        _close_mlflow_run(registry, state, store)
    return PipelineResult(state=state, run_dir=run_dir, resumed_at=resumed_at)


def with_current_stages(state: PipelineState) -> PipelineState:
    """Give a run recorded before a stage existed (e.g. ``staleness``) that stage, pending, in its place, so old state
    files stay readable and resumable; records of stages that no longer exist are kept at the end."""
    known = {s.name: s for s in state.stages}
    state.stages = [known.pop(n) if n in known else StageRecord(n) for n in STAGE_NAMES] + list(known.values())
    return state


def _open_mlflow_run(registry: Registry, cfg: PipelineJobConfig, state: PipelineState) -> str:
    """The run's MLflow run: the one its state names (RUNNING again), or a new one."""
    tags = {
        "rayml.pipeline": state.pipeline,
        "rayml.pipeline_run": state.run_id,
        "rayml.model": cfg.model.name,
        "rayml.data_fingerprint": state.identity.get("data_fingerprint", ""),
    }
    run_id, _ = create_or_resume_run(
        registry,
        state.mlflow_run_id,
        experiment=cfg.pipeline.experiment,
        name=f"{state.pipeline}-{state.run_id}",
        tags=tags,
        tag_own_id=False,  # lineage points at training runs, not at the pipeline's
    )
    return run_id


def _log_stage(registry: Registry, state: PipelineState, rec: StageRecord) -> None:
    if not state.mlflow_run_id:
        return
    registry.log_metrics(state.mlflow_run_id, {f"{rec.name}_duration_s": float(rec.duration_s or 0.0)}, step=rec.attempts)
    registry.set_run_tags(state.mlflow_run_id, {f"rayml.stage.{rec.name}": rec.status})


def _close_mlflow_run(registry: Registry, state: PipelineState, store: StateStore) -> None:
    if not state.mlflow_run_id:
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / STATE_FILE
            path.write_text(json.dumps(state.to_dict(), indent=2, default=str))
            registry.log_artifact(state.mlflow_run_id, path)
        done = state.status == DONE
        registry.set_run_tags(state.mlflow_run_id, {"rayml.pipeline_status": state.status})
        registry.end_run(state.mlflow_run_id, "FINISHED" if done else "FAILED")
    except Exception as e:  # the state file is the record; MLflow is a view of it
        logger.warning("could not update the pipeline's MLflow run %s: %s", state.mlflow_run_id, e)


def load_run(cfg: PipelineJobConfig, run_id: str | None = None) -> tuple[PipelineState | None, str]:
    """A run's state (default: the pipeline's most recent run) and its folder; (None, folder) when there is none."""
    base = fs.join(state_root(cfg), cfg.pipeline_name)
    if run_id is None:
        latest = fs.read_json(fs.join(base, LATEST_FILE))
        if not latest:
            return None, base
        run_id = str(latest["run_id"])
    from rayml.registry import validate_name

    run_dir = fs.join(base, validate_name(run_id, "run id"))
    return StateStore(run_dir).load(), run_dir


def list_runs(cfg: PipelineJobConfig) -> list[PipelineState]:
    """Every run of the pipeline, most recent first."""
    import pyarrow.fs as pafs

    filesystem, base = fs.filesystem(fs.join(state_root(cfg), cfg.pipeline_name))
    if filesystem.get_file_info(base).type != pafs.FileType.Directory:
        return []
    runs = []
    for info in filesystem.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.Directory:
            raw = fs.read_json(fs.join(fs.join(state_root(cfg), cfg.pipeline_name), info.base_name, STATE_FILE))
            if raw:
                runs.append(PipelineState.from_dict(raw))
    return sorted(runs, key=lambda s: -s.updated)
