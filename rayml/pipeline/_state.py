"""The pipeline's state machine: an ordered list of stages, each recorded (status, times, outputs, error) in a JSON
state file that is rewritten atomically before and after every stage.

Resume rule: a run executes its stages in order and skips every stage already ``done``; the first stage that is
``pending``, ``failed`` or ``running`` (a driver that died mid-stage leaves ``running``) runs again. Nothing here knows
what a stage does, so unit tests drive it with fake stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rayml._private import fs
from rayml.errors import RaymlError

logger = logging.getLogger("rayml.pipeline")

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATE_FILE = "state.json"


class StageFailed(RaymlError):
    """A stage ended without an exception of its own but must not let the pipeline go on (e.g. the gate refused).

    ``outputs`` are recorded on the stage (e.g. the gate's verdict), unlike a crash's.
    """

    def __init__(self, message: str, hint: str | None = None, outputs: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint)
        self.outputs = dict(outputs or {})


class PipelineStageError(RaymlError):
    """A stage crashed with an unexpected exception; the message names the stage, the cause is chained."""


@dataclass
class StageRecord:
    """One stage of one run, as persisted."""

    name: str
    status: str = PENDING
    attempts: int = 0
    started: float | None = None  # unix time of the last attempt's start
    finished: float | None = None
    duration_s: float | None = None  # of the last attempt
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class PipelineState:
    """Everything needed to resume a run: its identity and the record of every stage."""

    pipeline: str
    run_id: str
    stages: list[StageRecord]
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    identity: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    @classmethod
    def new(cls, pipeline: str, run_id: str, stage_names: Sequence[str], **kw: Any) -> PipelineState:
        return cls(pipeline=pipeline, run_id=run_id, stages=[StageRecord(n) for n in stage_names], **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineState:
        stages = [StageRecord(**s) for s in d.get("stages", [])]
        return cls(**{**d, "stages": stages})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def stage(self, name: str) -> StageRecord:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    @property
    def status(self) -> str:
        """``done`` when every stage is done, ``failed`` when one failed, ``running`` / ``pending`` otherwise."""
        statuses = [s.status for s in self.stages]
        if all(s == DONE for s in statuses):
            return DONE
        if FAILED in statuses:
            return FAILED
        return RUNNING if RUNNING in statuses else PENDING

    @property
    def next_stage(self) -> str | None:
        """The stage a re-run starts at (None: the run is complete)."""
        return next((s.name for s in self.stages if s.status != DONE), None)


class StateStore:
    """Reads and atomically rewrites one run's ``state.json`` (local path or pyarrow URI).

    Args:
        run_dir: the run's folder.
        guard: called before every write; raises to refuse it (the run's lease: a run that lost it writes nothing).
    """

    def __init__(self, run_dir: str, guard: Callable[[], None] | None = None) -> None:
        self.run_dir = run_dir
        self.path = fs.join(run_dir, STATE_FILE)
        self.guard = guard

    def load(self) -> PipelineState | None:
        raw = fs.read_json(self.path)
        return PipelineState.from_dict(raw) if raw else None

    def save(self, state: PipelineState) -> None:
        if self.guard is not None:
            self.guard()
        state.updated = time.time()
        fs.write_json(self.path, state.to_dict())


Stage = Callable[[Any], dict[str, Any] | None]
StageEnd = Callable[[PipelineState, StageRecord], None]


def run_stages(
    state: PipelineState,
    stages: Sequence[tuple[str, Stage]],
    store: StateStore,
    ctx: Any,
    on_stage_end: StageEnd | None = None,
    clock: Callable[[], float] = time.time,
) -> PipelineState:
    """Run the unfinished stages of ``state`` in order, persisting the record before and after each one.

    Args:
        state: the run's state (new, or loaded to resume).
        stages: ``(name, fn)`` in order; ``fn(ctx)`` returns the stage's outputs (JSON-able) and raises to fail.
        store: where the state is persisted.
        ctx: passed to every stage function.
        on_stage_end: called after each attempt, finished or failed (e.g. to log its duration to MLflow).
        clock: unix time (tests pass a fake one).

    Returns:
        The state, every stage ``done``.

    Raises:
        RaymlError: the failing stage's error (a :class:`StageFailed`, a user error, a training error...), re-raised
            after the failure was recorded; any other exception is wrapped in :class:`PipelineStageError`.
    """
    for name, fn in stages:
        rec = state.stage(name)
        if rec.status == DONE:
            logger.info("stage %s: already done (%.1f s, attempt %d); not run again", name, rec.duration_s or 0, rec.attempts)
            continue
        rec.status, rec.attempts, rec.started, rec.finished, rec.error = RUNNING, rec.attempts + 1, clock(), None, None
        store.save(state)
        logger.info("stage %s: started (attempt %d)", name, rec.attempts)
        t0 = clock()
        try:
            outputs = fn(ctx) or {}
        except BaseException as e:  # KeyboardInterrupt too: the record must say the stage did not finish
            rec.status, rec.finished = FAILED, clock()
            rec.duration_s = rec.finished - t0
            rec.error = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:4000]
            if isinstance(e, StageFailed):
                rec.outputs = {**rec.outputs, **e.outputs}
            store.save(state)
            logger.error("stage %s: FAILED after %.1f s: %s", name, rec.duration_s, rec.error)
            if on_stage_end:
                on_stage_end(state, rec)
            if isinstance(e, (RaymlError, KeyboardInterrupt, SystemExit)) or not isinstance(e, Exception):
                raise
            raise PipelineStageError(
                f"stage {name!r} crashed: {type(e).__name__}: {e}",
                hint="fix the cause, then run the same command again: the pipeline resumes at this stage",
            ) from e
        rec.status, rec.finished = DONE, clock()
        rec.duration_s = rec.finished - t0
        rec.outputs = dict(outputs)  # a stage returns all its outputs; progress saved by an earlier attempt is replaced
        store.save(state)
        logger.info("stage %s: done in %.1f s", name, rec.duration_s)
        if on_stage_end:
            on_stage_end(state, rec)
    return state
