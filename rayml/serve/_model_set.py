"""The model-set deployment: a many-models family (one ONNX model per segment) behind one multiplexed deployment.

The ingress calls it with ``handle.options(multiplexed_model_id=<segment key>)``; Serve routes a segment's requests
to replicas that already hold its model, and each replica keeps at most ``max_models_per_replica`` segment models
loaded (``@serve.multiplexed``'s LRU). Segments without their own model, and unknown segments, are served by the
set's global fallback model when it has one; otherwise the request is a 404 that names the known segments.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from rayml.models import KIND_MODEL_SET
from rayml.serve._model import _BatchedPredict, lineage

logger = logging.getLogger("rayml.serve")


@serve.deployment
class ModelSetServer(_BatchedPredict):
    """Serves one version of a model set, multiplexed by segment.

    Args:
        model: registered model-set name.
        version: version number.
        tracking_uri: MLflow tracking URI (used when the model dir is not on this node).
        local_path: the model dir on the deploying machine, if any.
        intra_op_threads: ONNX Runtime threads per call.
        max_batch_size: most requests of one segment per ONNX Runtime call.
        batch_wait_timeout_s: longest wait for a batch to fill.
        max_models_per_replica: segment models kept loaded per replica (LRU beyond).
        drift_window_s: online drift window (see :mod:`rayml.serve._drift`).
        drift_flush_interval_s: how often drift counts go to the stats deployment.
        _fault: set only by the test hook (see :mod:`rayml.serve._model`); never pass it.
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
        max_models_per_replica: int = 8,
        drift_window_s: float = 300.0,
        drift_flush_interval_s: float = 1.0,
        _fault: str | None = None,
    ) -> None:
        t0 = self._open(model, version, tracking_uri, local_path, _fault)
        # ModelSet's own session cache gets the same bound, so the two LRUs never hold different sets for long
        self.model_set = self.model_dir.model_set(max_cached=max_models_per_replica)
        self._intra_op_threads = intra_op_threads
        self._global_reference = self.model_dir.reference_stats()
        self._ready(t0, max_batch_size, batch_wait_timeout_s, drift_window_s, drift_flush_interval_s)
        # The LRU bound comes from config, so the multiplexed loader is wrapped per instance (Serve detects it at
        # runtime). A plain function, not the bound method: Serve stores its LRU as an attribute of what it wraps.

        async def load_segment(key: str) -> tuple[Any, str]:
            return await self._load_segment_model(key)

        self._load_segment = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(load_segment)
        logger.info("loaded model set %s:%s (%d segments)", model, version, len(self.model_set.segments))

    async def _load_segment_model(self, key: str) -> tuple[Any, str]:
        try:
            served_by = self.model_set.segment_model_for(key)
        except Exception as e:  # ModelNotFoundError: unknown segment, no fallback
            raise LookupError(getattr(e, "message", str(e))) from e
        return self.model_set.predictor(key), served_by

    async def _predictor_for(self, key: str) -> tuple[Any, dict[str, Any]]:
        if not key:
            raise LookupError(f"model set {self.model} needs a segment (multiplexed model id)")
        predictor, served_by = await self._load_segment(key)
        return predictor, {"served_by": served_by}

    def _reference_for(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """A segment's own reference bins when the set has them, else the set's global ones."""
        from rayml.serve._drift import GLOBAL, has_bins

        own = self.model_dir.reference_stats(key, own_only=True)
        if has_bins(own):
            return key, own
        return (GLOBAL, self._global_reference) if has_bins(self._global_reference) else None

    def metadata(self) -> dict[str, Any]:
        """The shared signature of the set's models, its segment columns and lineage."""
        return {
            "name": self.model,
            "version": self.version,
            "kind": KIND_MODEL_SET,
            "task": self.model_dir.task,
            "class_labels": self.model_dir.class_labels,
            "inputs": [vars(t) for t in self.model_dir.inputs],
            "outputs": [vars(t) for t in self.model_dir.outputs],
            "segment_columns": self.model_set.segment_columns,
            "segments": len(self.model_set.segments),
            "lineage": lineage(self.model, self.version, self.model_dir),
            "load_time_s": self.load_time_s,
            "dependencies": [d.to_dict() for d in self.dependencies],
            "capture_withheld": self.model_dir.withheld_from("capture"),
        }
