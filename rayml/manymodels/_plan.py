"""Pure bookkeeping of a many-models run: which segments train, how they are packed into tasks, what happened.

No Ray and no torch here, so the rules (min_rows -> fallback, failure share, chunking) are unit-tested directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rayml.manymodels._fit import SegmentOutcome
from rayml.registry import segment_groups

# Auto-sizing of tasks: about this many tasks per CPU keeps every CPU busy to the end (the last tasks finish at
# about the same time), and no task holds more than MAX_AUTO_SEGMENTS_PER_TASK segments (a lost task costs little).
TASKS_PER_CPU = 4
MAX_AUTO_SEGMENTS_PER_TASK = 32
VAL_COLUMN = "__rayml_is_validation__"


@dataclass(frozen=True)
class Segment:
    """One segment of the sorted training table: rows ``[start, start + rows)``."""

    key: str
    index: int
    start: int
    rows: int


@dataclass
class SegmentedTable:
    """The training rows sorted by segment (each segment contiguous), with a per-segment validation flag."""

    frame: pd.DataFrame
    segments: list[Segment]

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.segments]


def segment_table(df: pd.DataFrame, columns: Sequence[str], validation_fraction: float, seed: int) -> SegmentedTable:
    """Sort rows by segment key (stable: row order within a segment is kept) and flag validation rows.

    Segment ``index`` is the position of its key in sorted order, so it depends only on the set of keys. Every
    segment with two or more rows gets at least one training and one validation row.
    """
    codes, keys = segment_groups(df, columns)
    order_of_keys = sorted(range(len(keys)), key=lambda g: keys[g])
    rank_of_group = np.empty(len(keys), dtype=np.int64)
    rank_of_group[order_of_keys] = np.arange(len(keys))
    row_rank = rank_of_group[codes]
    order = np.argsort(row_rank, kind="stable")
    counts = np.bincount(row_rank, minlength=len(keys))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    sorted_rank = row_rank[order]
    is_val = np.random.default_rng(seed).random(len(df)) < validation_fraction
    val_counts = np.bincount(sorted_rank[is_val], minlength=len(keys))
    # tiny segments may draw no validation row, or only validation rows: fix the first row of those
    no_val = (val_counts == 0) & (counts >= 2)
    is_val[starts[no_val]] = True
    all_val = (val_counts == counts) & (counts >= 1)
    is_val[starts[all_val]] = False
    frame = df.iloc[order].reset_index(drop=True)
    frame[VAL_COLUMN] = is_val
    segments = [Segment(keys[g], int(i), int(starts[i]), int(counts[i])) for i, g in enumerate(order_of_keys)]
    return SegmentedTable(frame, segments)


def split_trainable(segments: Iterable[Segment], min_rows: int) -> tuple[list[Segment], list[Segment]]:
    """(segments with at least ``min_rows`` rows, which get their own model; the rest, served by the fallback)."""
    trainable: list[Segment] = []
    small: list[Segment] = []
    for s in segments:
        (trainable if s.rows >= min_rows else small).append(s)
    return trainable, small


def auto_segments_per_task(n_segments: int, parallel_slots: float) -> int:
    """Segments per task: about :data:`TASKS_PER_CPU` tasks per slot, at most :data:`MAX_AUTO_SEGMENTS_PER_TASK`."""
    slots = max(1.0, parallel_slots)
    return max(1, min(MAX_AUTO_SEGMENTS_PER_TASK, math.ceil(n_segments / (slots * TASKS_PER_CPU))))


def chunk(items: Sequence[Segment], size: int) -> list[list[Segment]]:
    """Consecutive groups of ``size`` (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass
class Accounting:
    """What happened to every segment of a run."""

    segments: int
    trained: list[str] = field(default_factory=list)
    fell_back: list[str] = field(default_factory=list)  # too few rows: the fallback model serves them
    failed: dict[str, str] = field(default_factory=dict)  # key -> last error, after retries

    @property
    def failed_share(self) -> float:
        return len(self.failed) / self.segments if self.segments else 0.0

    def too_many_failures(self, max_failed_share: float) -> bool:
        """More than ``max_failed_share`` of the segments failed (equal is still acceptable)."""
        return self.failed_share > max_failed_share + 1e-12


def account(outcomes: Iterable[SegmentOutcome]) -> Accounting:
    """Count outcomes by status; raises ValueError on a segment that appears twice (a bookkeeping bug)."""
    acc = Accounting(segments=0)
    seen: set[str] = set()
    for o in outcomes:
        if o.key in seen:
            raise ValueError(f"segment {o.key!r} has two outcomes")
        seen.add(o.key)
        acc.segments += 1
        if o.status == "trained":
            acc.trained.append(o.key)
        elif o.status == "fallback":
            acc.fell_back.append(o.key)
        elif o.status == "failed":
            acc.failed[o.key] = o.error or "unknown error"
        else:
            raise ValueError(f"segment {o.key!r} has unknown status {o.status!r}")
    return acc
