"""Continuous training: validate new data -> train or tune -> gate -> register -> roll out (or promote).

A run is identified by the config and the new data's fingerprint; its stage records live in
``$RAYML_HOME/pipelines/<name>/<run-id>/state.json``, so re-running the same command resumes at the stage that failed.
Only the last stage moves ``production``.
"""

from rayml.pipeline._run import PipelineResult, list_runs, load_run, run_id_for, run_pipeline, state_root
from rayml.pipeline._stages import STAGE_NAMES, Release, ServeRelease, StageContext
from rayml.pipeline._state import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    PipelineStageError,
    PipelineState,
    StageFailed,
    StageRecord,
    StateStore,
    run_stages,
)

__all__ = [
    "DONE",
    "FAILED",
    "PENDING",
    "RUNNING",
    "STAGE_NAMES",
    "PipelineResult",
    "PipelineStageError",
    "PipelineState",
    "Release",
    "ServeRelease",
    "StageContext",
    "StageFailed",
    "StageRecord",
    "StateStore",
    "list_runs",
    "load_run",
    "run_id_for",
    "run_pipeline",
    "run_stages",
    "state_root",
]
