"""Shadow (mirror) traffic: fire-and-forget calls through a bounded in-flight queue, and output disagreement.

A shadow call starts only after the primary response is produced, never blocks the request that triggered it (it is
scheduled, not awaited) and never fails it: errors and timeouts are counted and logged. When ``max_in_flight`` shadow
calls are already running the new one is dropped and counted, so a slow or stuck shadow model cannot pile up work
in the ingress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger("rayml.serve")


@dataclass
class Disagreement:
    """How far a shadow's outputs are from the primary's for one request.

    Regression: ``abs_diff`` holds |shadow - primary| per row and ``abs_primary`` |primary| per row (the relative
    disagreement of a window is sum(abs_diff) / sum(abs_primary)). Binary and multiclass: ``abs_diff`` is 1.0 where
    the predicted class differs (binary: threshold 0.5; multiclass: the ``label`` outputs), else 0.0, and
    ``abs_primary`` is 1.0 per row (the disagreement of a window is the share of rows whose class changed).
    """

    abs_diff: np.ndarray
    abs_primary: np.ndarray


def disagreement(primary: Any, shadow: Any, task: str) -> Disagreement:
    """Compare the first outputs of two versions for the same rows (``task``: regression, binary or multiclass; a
    multiclass model's first output is its labels, compared as values).

    Raises:
        ValueError: the outputs have different lengths.
    """
    if task == "multiclass":
        p, s = np.asarray(primary, dtype=object).reshape(-1), np.asarray(shadow, dtype=object).reshape(-1)
    else:
        p, s = np.asarray(primary, dtype=np.float64).reshape(-1), np.asarray(shadow, dtype=np.float64).reshape(-1)
    if p.shape != s.shape:
        raise ValueError(f"shadow returned {s.size} predictions for {p.size} rows")
    if task == "multiclass":
        return Disagreement(abs_diff=(p != s).astype(np.float64), abs_primary=np.ones(p.shape, dtype=np.float64))
    if task == "binary":
        mismatch = ((p >= 0.5) != (s >= 0.5)).astype(np.float64)
        return Disagreement(abs_diff=mismatch, abs_primary=np.ones_like(p))
    return Disagreement(abs_diff=np.abs(s - p), abs_primary=np.abs(p))


class ShadowDispatcher:
    """Runs shadow calls in the background with at most ``max_in_flight`` running at once.

    Args:
        max_in_flight: the bound; a call submitted while it is reached is dropped (``on_drop`` is called).
        timeout_s: a shadow call still running after this long is cancelled and counted as an error.
        on_drop: called with the submitted ``tag`` when a call is dropped.
        on_error: called with ``(tag, exception)`` when a call raises or times out.
    """

    def __init__(
        self,
        max_in_flight: int,
        timeout_s: float,
        on_drop: Callable[[Any], None],
        on_error: Callable[[Any, BaseException], None],
    ) -> None:
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self._on_drop = on_drop
        self._on_error = on_error
        self._tasks: set[asyncio.Task] = set()
        self.dropped = 0
        self.errors = 0
        self.completed = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, tag: Any, call: Callable[[], Awaitable[None]]) -> bool:
        """Schedule ``call()`` (a coroutine factory, so a dropped call costs nothing); False when it was dropped."""
        if len(self._tasks) >= self.max_in_flight:
            self.dropped += 1
            self._on_drop(tag)
            return False
        task = asyncio.get_running_loop().create_task(self._run(tag, call))
        self._tasks.add(task)  # keep a reference: the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, tag: Any, call: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(call(), self.timeout_s)
            self.completed += 1
        except Exception as e:  # a shadow failure of any kind stays here: it must never reach the caller
            self.errors += 1
            if isinstance(e, asyncio.TimeoutError):
                e = TimeoutError(f"shadow call exceeded {self.timeout_s:g}s")
            try:
                self._on_error(tag, e)
            except Exception:  # the error callback itself must not escape either
                logger.exception("shadow error callback failed")

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for running shadow calls, e.g. before a replica shuts down."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
