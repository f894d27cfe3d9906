"""Continuous training: validate new data -> train or tune -> gate -> register -> roll out (or promote).

A run is identified by the config and the new data's fingerprint; its stage records live in
``$RAYML_HOME/pipelines/<name>/<run-id>/state.json``, so re-running the same command resumes at the stage that failed.
Only the last stage moves ``production``.
"""

from rayml.pipeline._run import (
    PipelineResult,
    list_runs,
    load_run,
    run_id_for as run_id_for,
    run_pipeline,
    state_root as state_root,
)
from rayml.pipeline._stages import (
    STAGE_NAMES,
    Release as Release,
    ServeRelease as ServeRelease,
    StageContext as StageContext,
)
from rayml.pipeline._state import (
    DONE as DONE,
    FAILED as FAILED,
    PENDING as PENDING,
    RUNNING as RUNNING,
    PipelineStageError as PipelineStageError,
    PipelineState as PipelineState,
    StageFailed as StageFailed,
    StageRecord as StageRecord,
    StateStore as StateStore,
    run_stages as run_stages,
)

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "STAGE_NAMES",
    "PipelineResult",
    "list_runs",
    "load_run",
    "run_pipeline",
]
