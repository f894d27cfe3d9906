"""Payload capture: sampled requests and their answers, written as Parquet off the response path.

The serving ingress hands each captured answer to :meth:`CaptureWriter.submit`, which only puts it on a bounded queue
(never blocks: when the queue is full the answer is dropped and counted). A writer thread turns queued answers into
rows of :data:`~rayml.feedback._store.CAPTURE_SCHEMA` (excluded columns are removed before anything is converted) and
writes one Parquet file per model / version / hour once it has ``max_rows_per_file`` rows or its oldest row has waited
``flush_interval_s``. A failed write drops (and counts) its rows: capture never fails a request.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rayml.config.data import matching_pattern
from rayml.feedback._store import (
    CAPTURE_SCHEMA,
    binary_classes,
    capture_dir,
    class_text,
    hour_partition,
    write_table,
)

logger = logging.getLogger("rayml.feedback")

_LOG_EVERY_S = 10.0


@dataclass
class Captured:
    """One answer to one request by one version, as the ingress hands it over (converted later, in the writer)."""

    destination: str
    model: str
    version: int
    route: str
    inference_id: str
    ts: float  # wall-clock seconds of the answer
    task: str
    class_labels: list[Any]
    outputs: list[Any]  # the model's outputs: [N] values (or labels), and [N, K] probabilities for multiclass
    inputs: dict[str, Any] | None  # column -> [N] values, excluded columns already left out
    segment: str | None = None
    max_rows_per_file: int = 100_000
    flush_interval_s: float = 10.0
    # (prediction, predicted_label, probabilities) per row, when the caller has them already (predictions_of)
    predictions: tuple[list[Any], list[Any], list[Any]] | None = None


def predictions_of(
    task: str, class_labels: list[Any], outputs: list[Any]
) -> tuple[list[float | None], list[str | None], list[Any]]:
    """``(prediction, predicted_label, probabilities)`` per row of a model's outputs (see CAPTURE_SCHEMA)."""
    first = np.asarray(outputs[0])
    n = int(first.shape[0]) if first.ndim else 1
    if task == "regression":
        return first.reshape(n, -1)[:, 0].astype(np.float64).tolist(), [None] * n, [None] * n
    if task == "binary":
        p = first.reshape(n, -1)[:, -1].astype(np.float64)
        neg, pos = binary_classes(class_labels)
        return p.tolist(), [pos if x >= 0.5 else neg for x in p.tolist()], [None] * n
    labels = [class_text(x) for x in first.reshape(n).tolist()]
    probs = np.asarray(outputs[1], dtype=np.float64).tolist() if len(outputs) > 1 else [None] * n
    return [None] * n, labels, probs


def _columns(item: Captured) -> tuple[str, ...] | None:
    return tuple(item.inputs) if item.inputs else None


def _inputs_json(items: list[Captured], rows: list[int]) -> list[str | None]:
    """Each row's inputs as JSON: one vectorised pandas encoding for items with the same columns (the usual case: one
    version's requests), instead of one per request."""
    import pandas as pd

    out: list[str | None] = []
    start = 0
    while start < len(items):
        columns = _columns(items[start])
        end = start + 1
        while end < len(items) and _columns(items[end]) == columns:
            end += 1
        group = [it.inputs or {} for it in items[start:end]]
        if columns is None:
            out += [None] * sum(rows[start:end])
        else:
            frame = pd.DataFrame({c: np.concatenate([np.asarray(g[c]).reshape(-1) for g in group]) for c in columns})
            out += frame.to_json(orient="records", lines=True, double_precision=15).splitlines()
        start = end
    return out


def to_table(items: list[Captured]) -> pa.Table:
    """Rows of :data:`CAPTURE_SCHEMA` for captured answers (one row per row of each request)."""
    cols: dict[str, list[Any]] = {name: [] for name in CAPTURE_SCHEMA.names if name not in ("inputs", "ts")}
    ts: list[float] = []
    rows: list[int] = []
    for c in items:
        values, labels, probs = c.predictions or predictions_of(c.task, c.class_labels, c.outputs)
        n = len(values)
        rows.append(n)
        ts += [c.ts] * n
        cols["inference_id"] += [c.inference_id] * n
        cols["row"] += list(range(n))
        cols["model"] += [c.model] * n
        cols["version"] += [c.version] * n
        cols["route"] += [c.route] * n
        cols["segment"] += [c.segment] * n
        cols["prediction"] += values
        cols["predicted_label"] += labels
        cols["probabilities"] += probs
    millis = pa.array(np.round(np.asarray(ts, dtype=np.float64) * 1000.0).astype(np.int64), pa.int64())
    arrays = {
        **{k: pa.array(v, CAPTURE_SCHEMA.field(k).type) for k, v in cols.items()},
        "ts": millis.cast(pa.timestamp("ms", tz="UTC")),
        "inputs": pa.array(_inputs_json(items, rows), pa.string()),
    }
    return pa.Table.from_arrays([arrays[n] for n in CAPTURE_SCHEMA.names], schema=CAPTURE_SCHEMA)


class CaptureWriter:
    """A bounded queue and the thread that writes what is put on it (one per ingress replica).

    :meth:`submit` only appends to a deque (no lock, no thread wake-up: the response path pays a few microseconds);
    the writer thread takes what has queued every ``poll_s`` and writes whole files at a time.

    Args:
        queue_size: captured answers waiting to be written; more are dropped.
        on_dropped: called with ``(model, rows)`` for answers dropped (queue full or a failed write).
        on_written: called with ``(model, version, route, rows)`` after a file is written.
        clock: wall-clock seconds.
        poll_s: how often the writer takes what has queued.
    """

    def __init__(
        self,
        queue_size: int,
        on_dropped: Callable[[str, int], None] | None = None,
        on_written: Callable[[str, int, str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.2,
    ) -> None:
        self.queue_size = queue_size
        self._queue: collections.deque[Captured] = collections.deque()
        self._on_dropped = on_dropped or (lambda model, rows: None)
        self._on_written = on_written or (lambda model, version, route, rows: None)
        self._clock, self._poll_s = clock, poll_s
        self._buffers: dict[tuple[str, str, int, str], list[Captured]] = {}
        self._oldest: dict[tuple[str, str, int, str], float] = {}
        self._rows: dict[tuple[str, str, int, str], int] = {}
        self._flush_requested = threading.Event()
        self._flushed = threading.Condition()
        self._flushes = 0
        self._last_log = 0.0
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="rayml-capture", daemon=True)
        self._thread.start()

    def submit(self, item: Captured) -> bool:
        """Queue ``item`` for writing; False (and counted as dropped) when the queue is full. Never blocks."""
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            self._on_dropped(item.model, _rows(item))
            return False
        self._queue.append(item)
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Write everything queued so far, now (tests, shutdown); True when it was all written in time."""
        with self._flushed:
            target = self._flushes + 1
            self._flush_requested.set()
            return self._flushed.wait_for(lambda: self._flushes >= target, timeout_s)

    def _run(self) -> None:
        while True:
            forced = self._flush_requested.wait(self._poll_s)
            self._flush_requested.clear()
            try:
                while self._queue:
                    self._add(self._queue.popleft())
                now = self._clock()
                due = list(self._buffers) if forced else [k for k, t in self._oldest.items() if now - t >= self._interval(k)]
                self._write(due)
            except Exception as e:  # never let the writer die: capture stops silently otherwise
                logger.warning("payload capture failed: %s", e)
            if forced:
                with self._flushed:
                    self._flushes += 1
                    self._flushed.notify_all()

    def _interval(self, key: tuple[str, str, int, str]) -> float:
        items = self._buffers.get(key)
        return items[0].flush_interval_s if items else 0.0

    def _add(self, item: Captured) -> None:
        hour = hour_partition(dt.datetime.fromtimestamp(item.ts, dt.timezone.utc))
        key = (item.destination, item.model, item.version, hour)
        self._buffers.setdefault(key, []).append(item)
        self._oldest.setdefault(key, self._clock())
        self._rows[key] = self._rows.get(key, 0) + _rows(item)
        if self._rows[key] >= item.max_rows_per_file:
            self._write([key])

    def _write(self, keys: list[tuple[str, str, int, str]]) -> None:
        for key in keys:
            items = self._buffers.pop(key, None)
            self._oldest.pop(key, None)
            rows = self._rows.pop(key, 0)
            if not items:
                continue
            destination, model, version, hour = key
            try:
                write_table(capture_dir(destination, model, version, hour), to_table(items))
            except Exception as e:  # the destination is down or full: drop and count, never fail serving
                self.dropped += len(items)
                self._on_dropped(model, rows)
                now = time.monotonic()
                if now - self._last_log > _LOG_EVERY_S:
                    self._last_log = now
                    logger.warning("could not write %d captured rows of %s v%s to %s: %s", rows, model, version, destination, e)
                continue
            self.written += rows
            by_route: dict[str, int] = {}
            for c in items:
                by_route[c.route] = by_route.get(c.route, 0) + _rows(c)
            for route, n in by_route.items():
                self._on_written(model, version, route, n)


def _rows(item: Captured) -> int:
    first = np.asarray(item.outputs[0]) if item.outputs else np.zeros(0)
    return int(first.shape[0]) if first.ndim else 1


def inputs_for_capture(feed: dict[str, Any], exclude: Collection[str], withheld: Collection[str] = ()) -> dict[str, Any]:
    """The inputs of a request as captured: every column but the excluded ones (they never leave the replica).

    Args:
        feed: column -> values of the request.
        exclude: ``capture.exclude_columns``: column names, or fnmatch patterns (case-insensitive).
        withheld: the served version's sensitive columns (:meth:`rayml.models.ModelDir.withheld_from`
            ``("capture")``), names or patterns alike.
    """
    dropped = _dropped(tuple(feed), frozenset(exclude), frozenset(withheld))
    return {k: v for k, v in feed.items() if k not in dropped} if dropped else dict(feed)


@functools.lru_cache(maxsize=1024)
def _dropped(columns: tuple[str, ...], exclude: frozenset[str], withheld: frozenset[str]) -> frozenset[str]:
    # requests of one model name the same few columns: match the patterns once per column set, not per request
    patterns = exclude | withheld
    return frozenset(c for c in columns if c in patterns or matching_pattern(c, patterns) is not None)
