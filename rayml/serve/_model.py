"""Running a version: the model deployment (one registered version on ONNX Runtime, with dynamic batching), and what
it shares with an ingress that runs small models itself (:mod:`rayml.serve._inline`).

A replica loads the version's ONNX model (from the directory the deploying process already downloaded when it is on
the same machine, else from the registry), then answers ``predict(feed)`` calls from the ingress. ``@serve.batch``
merges concurrent calls into one ONNX Runtime run (``max_batch_size`` / ``batch_wait_timeout_s``); each caller gets
only its own rows back. Results are plain dicts, never exceptions, so a bad request in a batch fails alone and the
ingress can tell a client's mistake (422) from a model failure (500).

Online drift: the rows and predictions of each answered batch are buffered (per window and reference) and counted
into the version's reference bins on a one-thread executor once DRIFT_BATCH_ROWS are buffered or at the next flush
(counting costs per column much more than per row, so it is done in bulk; never awaited by a request; a failure is
logged and counted in ``rayml_drift_errors_total``), and the counts are pushed to the stats deployment every flush
interval (see :mod:`rayml.serve._drift`).

Dependency changes: once loaded, a version's recorded library versions (rayml, onnxruntime, its converter) are
compared with this process's and exported as ``rayml_dependency_mismatch`` (see :mod:`rayml.serve._dependencies`).

Test-only fault hook (``rayml.testing.serve_faults``, which reaches a replica as its private ``_fault`` init
argument and an ingress as ``_faults``; never from config): ``raise`` makes every prediction raise, ``sleep:S``
sleeps S seconds before predicting, ``scale:K`` multiplies the float outputs by K ("wild outputs"; a multiclass
model's labels stay).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from rayml._private.faults import parse_serve_fault
from rayml.models import KIND_MODEL, ModelDir
from rayml.serve._dependencies import Dependency, check_model_dir, dependency_gauges

logger = logging.getLogger("rayml.serve")

DRIFT_MAX_QUEUED = 64  # counts waiting to run per replica; beyond, the buffered rows are skipped (and counted as skipped)
DRIFT_BATCH_ROWS = 512  # answered rows buffered before they are counted (else at the next flush)


def load_model_dir(model: str, version: int, tracking_uri: str, local_path: str | None) -> ModelDir:
    """The version's model directory, checked: the local copy when it is complete, else a registry download."""
    if local_path and ModelDir.is_complete(local_path):
        return ModelDir.read(local_path, ref=f"{model}:{version}")
    from rayml.registry import Registry  # imports MLflow: only paid when the model is not on this machine yet

    return Registry(tracking_uri).load(f"{model}:{version}").model_dir


def lineage(model: str, version: int, model_dir: ModelDir) -> dict[str, Any]:
    tags = model_dir.lineage
    return {
        "model": model,
        "version": version,
        "run_id": tags.get("rayml.run_id"),
        "data_fingerprint": model_dir.data_fingerprint,
        "git_commit": tags.get("rayml.git_commit"),
    }


def _failure(message: str, user: bool, status: int | None = None) -> dict[str, Any]:
    return {"ok": False, "user_error": user, "error": message, **({"status": status} if status else {})}


class _Version:
    """What every process that runs a version shares: its identity, test fault and model directory, the ONNX Runtime
    run of a list of feeds (a failing batch retried request by request), metrics and online drift counting.

    Model replicas (:class:`_BatchedPredict`) and an ingress that runs its small models itself
    (:class:`rayml.serve._inline.InlineVersion`) build on it.
    """

    model: str
    version: int
    _fault: tuple[str, float]
    _tags: dict[str, str]
    dependencies: list[Dependency]  # recorded vs installed library versions (rayml_dependency_mismatch)
    _batches: bool = True  # runs dynamic batches: rayml_batch_rows says how full they are

    def _open(self, model: str, version: int, tracking_uri: str, local_path: str | None, fault: str | None) -> float:
        """First half of a replica's start (both kinds): who it is, its test fault, its model directory.

        Returns:
            When loading started (``_ready`` reports the load time from it).
        """
        t0 = time.perf_counter()
        self.model, self.version = model, int(version)
        self._fault = parse_serve_fault(fault)
        self.model_dir = load_model_dir(model, self.version, tracking_uri, local_path)
        return t0

    def _start(self, t0: float, drift_window_s: float, drift_flush_interval_s: float) -> None:
        """Second half, once the kind's predictors are loaded: metrics and drift counting."""
        from rayml.serve._drift import DriftRecorder
        from rayml.serve._metrics import model_metrics

        self.load_time_s = time.perf_counter() - t0
        self._tags = {"model": self.model, "version": str(self.version)}
        self._metrics = model_metrics()
        self._drift = DriftRecorder(drift_window_s)
        self._drift_flush_s = drift_flush_interval_s
        self._drift_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayml-drift")
        self._drift_queued = 0
        # answered rows wait here (per window and reference) until DRIFT_BATCH_ROWS of them or the next flush, then
        # are counted in one go: counting costs per column far more than per row, so one count per request is slow
        self._drift_buffer: dict[tuple[int, str], list[tuple[dict[str, np.ndarray], np.ndarray]]] = {}
        self._drift_buffer_refs: dict[str, Any] = {}
        self._drift_buffered_rows = 0
        self._drift_task: asyncio.Task | None = None
        self._drift_closed = False
        self._drift_last_log = 0.0
        self._metrics.load_time.observe(self.load_time_s, tags=self._tags)
        self.dependencies = self._check_dependencies()

    def _check_dependencies(self) -> list[Dependency]:
        """Compare the library versions this version was registered with to this process's and export the result
        (``rayml_dependency_mismatch``, see :mod:`rayml.serve._dependencies`); a failed check never fails the load."""
        try:
            found = check_model_dir(self.model, self.version, self.model_dir)
            dependency_gauges().show(self, self.model, self.version, found)
        except Exception as e:
            logger.warning("could not compare the library versions of %s:%s with this process's: %s", self.model, self.version, e)
            return []
        return found

    def _reference_for(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """(reference key, reference bins) that rows of multiplexed id ``key`` are counted against; None: no bins."""
        raise NotImplementedError

    # --- online drift -------------------------------------------------------------------------------------------
    def _count_drift(self, key: str, feeds: list[dict[str, np.ndarray]], outputs: list[Any]) -> None:
        """Buffer answered rows for counting; returns at once and never raises (a prediction must not fail here)."""
        try:
            ref = self._reference_for(key)
            if ref is None or not feeds:
                return
            from rayml.serve._drift import concat_columns

            columns = concat_columns(feeds)
            # the first output: numbers, or a multiclass model's labels (counted into one bin per class)
            predictions = np.concatenate([np.asarray(o).reshape(-1) for o in outputs])
            self._drift_buffer.setdefault((self._drift.current_window(), ref[0]), []).append((columns, predictions))
            self._drift_buffer_refs[ref[0]] = ref[1]
            self._drift_buffered_rows += len(predictions)
            if self._drift_buffered_rows >= DRIFT_BATCH_ROWS:
                self._count_buffered()
            if self._drift_task is None and not self._drift_closed:
                self._drift_task = asyncio.get_running_loop().create_task(self._flush_drift_forever())
        except Exception as e:
            self._drift_failed(e)

    def _count_buffered(self) -> asyncio.Future | None:
        """Count the buffered rows off the event loop (one count per window and reference); the future, or None."""
        if not self._drift_buffer:
            return None
        buffer, refs = self._drift_buffer, dict(self._drift_buffer_refs)
        self._drift_buffer, self._drift_buffered_rows = {}, 0
        if self._drift_queued >= DRIFT_MAX_QUEUED:
            self._drift_failed(RuntimeError(f"{DRIFT_MAX_QUEUED} counts already wait; skipped {len(buffer)} batch(es)"))
            return None
        self._drift_queued += 1
        future = asyncio.get_running_loop().run_in_executor(self._drift_pool, self._observe_buffer, buffer, refs)
        future.add_done_callback(self._drift_counted)
        return future

    def _observe_buffer(
        self, buffer: dict[tuple[int, str], list[tuple[dict[str, np.ndarray], np.ndarray]]], refs: dict[str, Any]
    ) -> None:
        from rayml.serve._drift import concat_columns

        for (window, key), parts in buffer.items():
            columns = concat_columns([c for c, _ in parts])
            predictions = np.concatenate([p for _, p in parts])
            rows = self._drift.observe(key, refs[key], columns, predictions, window=window)
            # the rows whose data-quality problems the stats deployment counts: the alert's denominator
            self._metrics.quality_rows.inc(rows, tags=self._tags)

    def _drift_counted(self, future: Any) -> None:
        self._drift_queued -= 1
        if not future.cancelled() and future.exception() is not None:
            self._drift_failed(future.exception())

    def _drift_failed(self, error: BaseException) -> None:
        self._metrics.drift_errors.inc(tags=self._tags)
        now = time.monotonic()
        if now - self._drift_last_log > 10.0:  # one line per 10 s
            self._drift_last_log = now
            logger.warning("drift counting for %s:%s failed (rayml_drift_errors_total): %s", self.model, self.version, error)

    def _stats_target(self) -> tuple[Any, str]:
        """The stats deployment's handle and this process's replica id (drift counts are merged per replica)."""
        from rayml.serve._spec import STATS

        ctx = serve.get_replica_context()
        replica = str(getattr(getattr(ctx, "replica_id", None), "unique_id", None) or id(self))
        return serve.get_deployment_handle(STATS, ctx.app_name), replica

    async def _flush_drift_forever(self) -> None:
        stats, replica = self._stats_target()
        while True:
            await asyncio.sleep(self._drift_flush_s)
            await self._flush_drift(stats, replica)

    async def close_drift(self) -> None:
        """Stop counting this version here: end the flush loop, then push what is pending one last time. Its
        dependency series stop being exported too (a retired version)."""
        dependency_gauges().hide(self)
        self._drift_closed = True
        task, self._drift_task = self._drift_task, None
        if task is not None:
            task.cancel()
            await self._flush_drift(*self._stats_target())
        self._drift_pool.shutdown(wait=False)

    async def _flush_drift(self, stats: Any, replica: str) -> None:
        """Count what is buffered and push every pending count to the stats deployment."""
        from rayml.serve._spec import STATS

        counting = self._count_buffered()
        if counting is not None:
            await asyncio.wait([counting])  # its failure is logged and counted by _drift_counted
        rows = self._drift.drain()
        if not rows:
            return
        try:
            refs = self._drift.references({k for _, k, _ in rows})
            await stats.push_drift.remote(replica, self.model, self.version, refs, rows)
        except Exception as e:  # kept for the next flush: counts are neither lost nor doubled
            self._drift.restore(rows)
            logger.warning("could not push drift counts to %s: %s", STATS, e)

    def _run_isolated(self, session: Any, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """Run a batch; if it fails, run its requests one by one so only the poisonous one fails."""
        try:
            return self._run(session, feeds)
        except Exception as e:
            if len(feeds) == 1:
                self._metrics.model_errors.inc(tags=self._tags)
                logger.warning("model %s:%s failed: %s", self.model, self.version, e)
                return [_failure(f"{type(e).__name__}: {e}", user=False)]
        return [self._run_isolated(session, [f])[0] for f in feeds]

    def _run(self, session: Any, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        kind, value = self._fault
        if kind == "raise":
            raise RuntimeError(f"injected failure in {self.model}:{self.version}")
        sizes = [len(next(iter(f.values()))) for f in feeds]
        merged = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]} if len(feeds) > 1 else feeds[0]
        outs = session.run(None, merged)
        if self._batches:
            self._metrics.batch_rows.observe(sum(sizes), tags=self._tags)
        if kind == "scale":
            outs = [o * value if o.dtype.kind == "f" else o for o in outs]
        if not all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f"):
            raise FloatingPointError("the model produced non-finite predictions")
        results, start = [], 0
        for n in sizes:
            results.append({"ok": True, "outputs": [o[start : start + n] for o in outs]})
            start += n
        return results


class _BatchedPredict(_Version):
    """A model replica: dynamic batching, shared by the single-model and the model-set deployment.

    ``@serve.batch`` merges concurrent ``predict`` calls (for a model set: of the same segment; Serve splits batches
    by multiplexed model id) into one ONNX Runtime run; the run happens in a thread so the replica keeps collecting
    the next batch meanwhile.
    """

    def _ready(
        self,
        t0: float,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        drift_window_s: float,
        drift_flush_interval_s: float,
    ) -> None:
        """Second half of a replica's start, once the kind's predictors are loaded."""
        self._start(t0, drift_window_s, drift_flush_interval_s)
        # serve.batch's wrapper has these setters; its annotation (a plain callable) does not say so
        self._batched.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def _predictor_for(self, key: str) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    async def predict(self, feed: dict[str, np.ndarray]) -> dict[str, Any]:
        """Predict for one request: ``{"ok": True, "outputs": [array per output]}`` or a failure dict."""
        kind, value = self._fault
        if kind == "sleep":
            await asyncio.sleep(value)
        return await self._batched(feed)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batched(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        try:
            predictor, extra = await self._predictor_for(serve.get_multiplexed_model_id())
        except LookupError as e:  # an unknown segment of a model set without a fallback model
            return [_failure(str(e), user=True, status=404) for _ in feeds]
        # Validate each request on its own, so one bad request fails alone instead of failing its batch.
        prepared: list[dict[str, Any]] = []
        for feed in feeds:
            try:
                prepared.append(predictor.feed(feed))
            except Exception as e:  # PredictionInputError: the ingress validates first, so this is a mismatch
                prepared.append(_failure(str(e), user=True))
        ok = [i for i, p in enumerate(prepared) if "ok" not in p]
        results: list[dict[str, Any]] = [p if "ok" in p else {} for p in prepared]
        if ok:
            outputs = await asyncio.to_thread(self._run_isolated, predictor.session, [prepared[i] for i in ok])
            for i, out in zip(ok, outputs, strict=True):
                results[i] = {**out, **extra} if out["ok"] else out
            answered = [i for i in ok if results[i]["ok"]]
            self._count_drift(
                serve.get_multiplexed_model_id(), [feeds[i] for i in answered], [results[i]["outputs"][0] for i in answered]
            )
        return results


class _SingleModel(_Version):
    """A single model (not a set): its predictor, reference bins and metadata."""

    predictor: Any

    def _load_single(self, intra_op_threads: int) -> None:
        if self.model_dir.kind != KIND_MODEL:
            raise ValueError(
                f"{self.model}:{self.version} is a {self.model_dir.kind!r}, not a single model; serve it as a model set"
            )
        self.predictor = self.model_dir.predictor(intra_op_threads=intra_op_threads)
        self._reference = self.model_dir.reference_stats()

    def _reference_for(self, key: str) -> tuple[str, dict[str, Any]] | None:
        from rayml.serve._drift import GLOBAL, has_bins

        return (GLOBAL, self._reference) if has_bins(self._reference) else None

    def metadata(self) -> dict[str, Any]:
        """Signature (from the ONNX graph), task and lineage of this version."""
        return {
            "name": self.model,
            "version": self.version,
            "kind": KIND_MODEL,
            "task": self.model_dir.task,
            "class_labels": self.model_dir.class_labels,
            "inputs": [vars(t) for t in self.predictor.inputs],
            "outputs": [vars(t) for t in self.predictor.outputs],
            "lineage": lineage(self.model, self.version, self.model_dir),
            # its sensitive columns: the ingress leaves them out of payload capture (see inputs_for_capture)
            "capture_withheld": self.model_dir.withheld_from("capture"),
            "load_time_s": self.load_time_s,
            "dependencies": [d.to_dict() for d in self.dependencies],
        }


@serve.deployment
class ModelServer(_BatchedPredict, _SingleModel):
    """Serves one model version in its own replicas (placement ``replicas``).

    Args:
        model: registered model name.
        version: version number.
        tracking_uri: MLflow tracking URI (used when the model dir is not on this node).
        local_path: the model dir on the deploying machine, if any.
        intra_op_threads: ONNX Runtime threads per call.
        max_batch_size: most requests per ONNX Runtime call.
        batch_wait_timeout_s: longest wait for a batch to fill.
        drift_window_s: online drift window (see :mod:`rayml.serve._drift`).
        drift_flush_interval_s: how often drift counts go to the stats deployment.
        _fault: set only by the test hook (see the module docstring); never pass it.
    """

    def __init__(
        self,
        model: str,
        version: int,
        tracking_uri: str,
        local_path: str | None = None,
        intra_op_threads: int = 1,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.0,
        drift_window_s: float = 300.0,
        drift_flush_interval_s: float = 1.0,
        _fault: str | None = None,
    ) -> None:
        t0 = self._open(model, version, tracking_uri, local_path, _fault)
        self._load_single(intra_op_threads)
        self._ready(t0, max_batch_size, batch_wait_timeout_s, drift_window_s, drift_flush_interval_s)
        logger.info("loaded %s:%s in %.2fs from %s", model, version, self.load_time_s, self.model_dir.path)

    async def _predictor_for(self, key: str) -> tuple[Any, dict[str, Any]]:
        return self.predictor, {}
