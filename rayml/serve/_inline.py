"""Versions that run inside the ingress replica (placement ``ingress``): one hop instead of two for small models.

A request to a version in its own deployment crosses two Ray Serve hops (proxy -> ingress -> model replica); on a
small model those hops cost several times the model itself. An :class:`InlineVersion` holds the version's ONNX
Runtime session in the ingress process and answers there, with everything a model replica does: the same input
preparation, a model failure answered as a failure dict (never an exception), the non-finite output check, model
metrics, online drift counted off the event loop and pushed to the stats deployment, and the test fault hook.

What it does not do is dynamic batching: a small model's run costs less than waiting for a batch to fill. A run that
is cheap (under LOOP_BUDGET_S) happens on the event loop, where a hand-off to a thread would cost more than the run;
anything else runs in a worker thread, so the ingress keeps answering other requests meanwhile. Which is which is
learnt per version from the runs themselves: the largest request size seen to run cheaply goes on the loop (starting
at INLINE_LOOP_ROWS rows); a loop run over budget sends that size and above to threads from then on.

Loading: :class:`InlineVersions` keeps one ``InlineVersion`` per served version and reloads only what changed when
the ingress reconfigures (a new version, a new model directory or thread setting); each load runs in a thread, so
requests in flight keep being answered. A version that cannot be loaded is recorded with its reason (the ingress
answers its requests 503 and the deploying call sees the reason); it never takes the ingress down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayml.serve._model import _failure, _SingleModel
from rayml.serve._spec import AppSpec

logger = logging.getLogger("rayml.serve")

INLINE_LOOP_ROWS = 64  # requests up to this many rows run on the event loop until runs say otherwise
LOOP_BUDGET_S = 0.001  # a run expected to take longer than this goes to a worker thread


class InlineVersion(_SingleModel):
    """One single-model version answering in this process (see the module docstring).

    Args:
        model: registered model name.
        version: version number.
        tracking_uri: MLflow tracking URI (used when the model dir is not on this node).
        local_path: the model dir on the deploying machine, if any.
        intra_op_threads: ONNX Runtime threads per call.
        drift_window_s: online drift window (see :mod:`rayml.serve._drift`).
        drift_flush_interval_s: how often drift counts go to the stats deployment.
        fault: the test hook's fault for this version (see :mod:`rayml.serve._model`), if any.
    """

    _batches = False  # one request per run: rayml_batch_rows would only repeat the request sizes

    def __init__(
        self,
        model: str,
        version: int,
        tracking_uri: str,
        local_path: str | None,
        intra_op_threads: int,
        drift_window_s: float,
        drift_flush_interval_s: float,
        fault: str | None = None,
    ) -> None:
        t0 = self._open(model, version, tracking_uri, local_path, fault)
        self._load_single(intra_op_threads)
        self._start(t0, drift_window_s, drift_flush_interval_s)
        self._loop_rows = INLINE_LOOP_ROWS  # requests up to this many rows run on the event loop (see _learn)
        logger.info("loaded %s:%s into the ingress in %.2fs from %s", model, version, self.load_time_s, self.model_dir.path)

    async def predict(self, feed: dict[str, np.ndarray]) -> dict[str, Any]:
        """Predict for one request: ``{"ok": True, "outputs": [array per output]}`` or a failure dict."""
        kind, value = self._fault
        if kind == "sleep":
            await asyncio.sleep(value)
        try:
            prepared = self.predictor.feed(feed)
        except Exception as e:  # PredictionInputError: the ingress validates first, so this is a mismatch
            return _failure(str(e), user=True)
        rows = len(next(iter(prepared.values()))) if prepared else 0
        on_loop = rows <= self._loop_rows
        t0 = time.perf_counter()
        if on_loop:
            result = self._run_isolated(self.predictor.session, [prepared])[0]
        else:
            result = (await asyncio.to_thread(self._run_isolated, self.predictor.session, [prepared]))[0]
        self._learn(rows, time.perf_counter() - t0, on_loop)
        if result["ok"]:
            self._count_drift("", [feed], [result["outputs"][0]])
        return result

    def _learn(self, rows: int, seconds: float, on_loop: bool) -> None:
        """Move the loop/thread boundary by what a run cost (a thread run's time includes the hand-off: conservative)."""
        if on_loop and seconds > LOOP_BUDGET_S:
            self._loop_rows = min(self._loop_rows, rows - 1)  # this size and above: threads
        elif not on_loop and seconds < LOOP_BUDGET_S / 4:
            self._loop_rows = max(self._loop_rows, rows)  # this size is cheap: the loop


@dataclass(frozen=True)
class _Key:
    """What an InlineVersion is built from: a change in any of it loads the version again."""

    model: str
    version: int
    local_path: str | None
    intra_op_threads: int
    drift_window_s: float
    drift_flush_interval_s: float
    fault: str | None


class InlineVersions:
    """The versions an ingress replica runs itself, by deployment name, kept in step with the spec."""

    def __init__(self, faults: dict[str, str] | None = None) -> None:
        self._faults = dict(faults or {})
        self._loaded: dict[str, tuple[_Key, InlineVersion]] = {}
        self.errors: dict[str, str] = {}  # deployment name -> why its version could not be loaded

    def get(self, deployment: str) -> InlineVersion | None:
        entry = self._loaded.get(deployment)
        return entry[1] if entry is not None else None

    def wanted(self, spec: AppSpec) -> dict[str, _Key]:
        """Every version ``spec`` places in the ingress, by deployment name."""
        keys = {}
        for m in spec.models.values():
            if m.placement != "ingress":
                continue
            for v in m.versions:
                keys[v.deployment] = _Key(
                    model=m.name,
                    version=v.version,
                    local_path=v.local_path,
                    intra_op_threads=m.deployment.intra_op_threads,
                    drift_window_s=spec.drift_window_s,
                    drift_flush_interval_s=spec.stats_flush_interval_s,
                    fault=self._faults.get(f"{m.name}:{v.version}"),
                )
        return keys

    async def sync(self, spec: AppSpec, tracking_uri: str) -> None:
        """Load what ``spec`` adds or changes (in threads, one after the other), then retire what it no longer has."""
        wanted = self.wanted(spec)
        for deployment, key in wanted.items():
            entry = self._loaded.get(deployment)
            if entry is not None and entry[0] == key:
                continue
            try:
                version = await asyncio.to_thread(_load, key, tracking_uri)
            except Exception as e:  # reported, never raised: the other versions (and the ingress) keep serving
                self.errors[deployment] = f"cannot load {key.model}:{key.version} into the ingress: {type(e).__name__}: {e}"
                logger.warning("%s", self.errors[deployment])
                continue
            self.errors.pop(deployment, None)
            old = self._loaded.get(deployment)
            self._loaded[deployment] = (key, version)
            if old is not None:
                _retire(old[1])
        for deployment in [d for d in self._loaded if d not in wanted]:
            _retire(self._loaded.pop(deployment)[1])
        for deployment in [d for d in self.errors if d not in wanted]:
            del self.errors[deployment]


def _load(key: _Key, tracking_uri: str) -> InlineVersion:
    return InlineVersion(
        key.model,
        key.version,
        tracking_uri,
        key.local_path,
        key.intra_op_threads,
        key.drift_window_s,
        key.drift_flush_interval_s,
        key.fault,
    )


def _retire(version: InlineVersion) -> None:
    """Stop a version's drift flushing once requests already routed to it have had time to finish."""

    async def later() -> None:
        await asyncio.sleep(2.0)
        try:
            await version.close_drift()
        except Exception as e:  # its last counts are lost; serving is not affected
            logger.warning("could not flush the last drift counts of %s:%s: %s", version.model, version.version, e)

    task = asyncio.get_running_loop().create_task(later())
    _RETIRING.add(task)
    task.add_done_callback(_RETIRING.discard)


_RETIRING: set[asyncio.Task] = set()  # keeps retiring tasks referenced until they finish
