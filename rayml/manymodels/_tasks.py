"""The Ray side of a many-models run: task bodies and the loop that runs them, isolating lost tasks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd

from rayml.config import ManyModelsJobConfig
from rayml.data import Schema
from rayml.errors import TrainingError
from rayml.manymodels._fit import FitSettings, SegmentOutcome
from rayml.manymodels._plan import VAL_COLUMN, Segment

logger = logging.getLogger("rayml.manymodels")

GLOBAL_KEY = "__global__"


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


def run_tasks(
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
    import dataclasses

    import ray

    from rayml.manymodels._fit import base_settings

    m = cfg.manymodels
    opts = {"num_cpus": m.cpus_per_task, "max_retries": m.max_retries, "retry_exceptions": False}
    chunk_task = ray.remote(_train_chunk).options(**opts, name="rayml.manymodels.train_chunk")
    schema_dict = schema.to_dict()
    pending: dict[Any, list[Segment] | None] = {}
    # the global model trains on the model/train settings (not a candidate's), with its own, larger batches
    global_settings = dataclasses.replace(base_settings(cfg), batch_size=m.global_batch_size)
    if train_global:  # first: the longest single task should not be the last one to start
        ref = (
            ray.remote(_train_global)
            .options(**opts, name="rayml.manymodels.train_global")
            .remote(table_ref, schema_dict, global_settings, m.global_max_rows, m.max_retries, fail)
        )
        pending[ref] = None
    for chunk in work:
        pending[chunk_task.remote(table_ref, chunk, schema_dict, candidates, m.max_retries, fail)] = chunk
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


def to_arrow(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)
