"""Model sets: a family of per-segment models (many models) that is one model directory, registered as ONE version.

A model set is a directory registered like a single model, so aliases, canary and rollback move the whole family at
once. Its files are those of :mod:`rayml.models.model_dir` (every name is fixed; nothing in it is derived from the
user's segment values, which may hold ``/`` or ``..``): the global model (all data) as the model file, the same model
as the fallback file when it serves segments without their own model, and ``segments/<index>.onnx`` per trained
segment (index = position in the sorted segment keys).

The metadata holds the single-model fields (``inputs``, ``outputs``, ``schema``, ``task``, ``target``: every segment
model takes the same raw feature columns) plus::

    "kind": "model_set",
    "segment_columns": ["store_id"],
    "segments": {"store_001": {"file": "segments/1.onnx", "rows": 365, "fallback": false, "status": "trained",
                               "metrics": {"val_rmse": 3.1, ...}}, ...},
    "fallback": "fallback.onnx" | null

A segment with ``"fallback": true`` (too few rows, or its training failed) has the fallback file as its ``"file"``.
Reference statistics are ``{"global": <stats of all training rows>, "segments": {key: <stats>}}``. Segment keys are
those of :func:`rayml.models.segments.segment_key`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from rayml.errors import ModelError, ModelNotFoundError
from rayml.models.model_dir import FALLBACK_FILE, KIND_MODEL_SET, SEGMENTS_DIR, ModelDir, segment_file
from rayml.models.segments import segment_groups

if TYPE_CHECKING:
    from rayml.models.predictor import OnnxPredictor

logger = logging.getLogger("rayml.models")

FALLBACK = "__fallback__"  # what segment_model_for() answers for rows the global fallback model serves
MODEL_SET_FORMAT_VERSION = 1


# --- the loaded family -------------------------------------------------------------------------------------------------
class ModelSet:
    """A loaded model set: per-segment ONNX predictors on demand, through a bounded LRU cache of sessions.

    Thread-safe: the cache is guarded by a lock and onnxruntime sessions may run concurrently.

    Args:
        path: the model-set directory (as downloaded by ``Registry.download``), or its :class:`ModelDir`.
        meta: its metadata; read from ``path`` when None.
        info: the registered version, when loaded from the registry.
        max_cached: most onnxruntime sessions kept; the least recently used is dropped first.
        reference_stats: its reference statistics; read from ``path`` when None.

    Raises:
        ModelNotFoundError: the directory holds a single model, not a model set.

    Example:
        >>> ms = Registry().load("sales-stores@production").model_dir.model_set()
        >>> preds, served_by = ms.predict(df)   # rows of any segments, split by segment inside
        >>> ms.predictor("store_007").predict(df_store_7)
    """

    def __init__(
        self,
        path: str | Path | ModelDir,
        meta: dict[str, Any] | None = None,
        info: Any = None,
        max_cached: int = 256,
        reference_stats: dict[str, Any] | None = None,
    ) -> None:
        if max_cached < 1:
            raise ValueError(f"max_cached must be at least 1, got {max_cached}")
        if isinstance(path, ModelDir):
            self.model_dir = path
        else:
            self.model_dir = ModelDir(path, meta=meta, reference_stats=reference_stats, ref=info.ref if info else None)
        self.path = self.model_dir.path
        self.meta = self.model_dir.meta
        self._info = info
        if not self.model_dir.is_model_set:
            raise ModelNotFoundError(
                f"{self._where} is a single model (kind {self.model_dir.kind!r}), not a model set",
                hint="load single models with Registry().load(ref).predictor; model sets come from `rayml manymodels train`",
            )
        self._segments: dict[str, dict[str, Any]] = dict(self.meta.get("segments") or {})
        self._fallback_file: str | None = self.meta.get("fallback")
        self.max_cached = int(max_cached)
        self._cache: OrderedDict[str, OnnxPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # sessions created (cache misses), for tests and metrics

    @classmethod
    def from_loaded(cls, loaded: Any, max_cached: int = 256) -> ModelSet:
        """The model set of a version loaded with ``Registry.load`` (a ``rayml.registry.LoadedModel``).

        Raises:
            ModelNotFoundError: the version is a single model, not a model set.
        """
        return cls(loaded.model_dir, info=loaded.info, max_cached=max_cached)

    @property
    def _where(self) -> str:
        return self._info.ref if self._info is not None else self.model_dir.name

    # --- what is in it ------------------------------------------------------------------------------------------
    @property
    def info(self) -> Any:
        """The registered version (``rayml.registry.ModelVersionInfo``; None for a set loaded from a plain directory)."""
        return self._info

    @property
    def segment_columns(self) -> list[str]:
        return self.model_dir.segment_columns

    @property
    def segments(self) -> list[str]:
        """Every segment key in the index, sorted (fallback-served segments included)."""
        return sorted(self._segments)

    @property
    def has_fallback(self) -> bool:
        return self._fallback_file is not None

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.meta.get("inputs", [])]

    def segment_info(self, key: str) -> dict[str, Any] | None:
        """The index entry of a segment (file, rows, fallback, status, metrics), or None when it is not in the set."""
        entry = self._segments.get(key)
        return dict(entry) if entry is not None else None

    def reference_stats(self, key: str | None = None) -> dict[str, Any]:
        """Reference statistics of one segment's training rows (the global ones for None or a segment without any)."""
        return self.model_dir.reference_stats(key)

    def segment_model_for(self, key: str) -> str:
        """Which model serves segment ``key``: the key itself, or :data:`FALLBACK` for the global model.

        Raises:
            ModelNotFoundError: the segment has no model and the set has no fallback.
        """
        entry = self._segments.get(key)
        if entry is not None and not entry.get("fallback"):
            return key
        if self._fallback_file is not None:
            return FALLBACK
        shown = ", ".join(self.segments[:10]) + (" ..." if len(self._segments) > 10 else "")
        raise ModelNotFoundError(
            f"segment {key!r} has no model in {self._where} and the set has no fallback model",
            hint=f"known segments ({len(self._segments)}): {shown or '(none)'}; segment columns {self.segment_columns}",
        )

    # --- predictors ---------------------------------------------------------------------------------------------
    def predictor(self, key: str) -> OnnxPredictor:
        """The :class:`~rayml.models.OnnxPredictor` serving segment ``key`` (the fallback model for a segment without one).

        Raises:
            ModelNotFoundError: unknown segment and no fallback.
        """
        return self._session(self.segment_model_for(key))

    def _file_of(self, model: str) -> Path:
        rel = self._fallback_file if model == FALLBACK else self._segments[model]["file"]
        assert rel is not None, "FALLBACK is only asked of a set that has a fallback model"
        path = (self.path / rel).resolve()
        # the index is data: never let it point outside the model directory
        if self.path.resolve() not in path.parents:
            raise ModelError(f"model set index entry {rel!r} points outside {self.path}")
        return path

    def _session(self, model: str) -> OnnxPredictor:
        with self._lock:
            hit = self._cache.get(model)
            if hit is not None:
                self._cache.move_to_end(model)
                return hit
        from rayml.models.predictor import OnnxPredictor

        predictor = OnnxPredictor(self._file_of(model))  # outside the lock: loading takes milliseconds
        with self._lock:
            self.loads += 1
            self._cache[model] = predictor
            self._cache.move_to_end(model)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return predictor

    @property
    def cached(self) -> list[str]:
        """Models with a live session, least recently used first."""
        with self._lock:
            return list(self._cache)

    def predict(self, df: pd.DataFrame, *, unknown: Literal["raise", "nan"] = "raise") -> tuple[np.ndarray, np.ndarray]:
        """Predict rows of mixed segments: rows are split by segment inside the frame (no shuffle), in input order.

        Args:
            df: raw rows with the segment column(s) and the model's input columns (extra columns are ignored).
            unknown: for rows of a segment without a model when there is no fallback: ``raise`` an error, or give
                them NaN with ``served_by`` = "" (the caller reports them).

        Returns:
            (predictions [N], served_by [N] object): the first output of the set's models (float32 for regression and
            binary, the labels of a multiclass set), and the segment key or :data:`FALLBACK` per row.

        Raises:
            PredictionInputError: a segment or input column is missing or malformed (every problem at once).
            ModelNotFoundError: a row's segment has no model, there is no fallback and ``unknown="raise"``.
        """
        outputs, served_by = self.predict_outputs(df, unknown=unknown)
        return outputs[self.model_dir.outputs[0].name], served_by

    def predict_outputs(
        self,
        df: pd.DataFrame,
        *,
        unknown: Literal["raise", "nan"] = "raise",
        feed: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Like :meth:`predict`, with every output by name (a multiclass set: ``label`` and ``probabilities``).

        ``feed``: the ONNX Runtime inputs of ``df``'s rows, when the caller has built them already (see
        :meth:`ModelDir.predict_outputs`); ``df`` then needs only the segment columns.

        Rows of an unknown segment (``unknown="nan"``) get :meth:`ModelDir.blank_outputs` values: NaN numbers and
        None labels (integer labels are then an object array; without such rows they are int64).

        Raises:
            PredictionInputError: a segment or input column is missing or malformed (every problem at once).
            ModelNotFoundError: a row's segment has no model, there is no fallback and ``unknown="raise"``.
            ModelError: a segment model answers with other outputs than the set records (e.g. another number of classes).
        """
        n = len(df)
        outputs = self.model_dir.blank_outputs(n)
        served_by = np.full(n, "", dtype=object)
        if n == 0:
            return outputs, served_by
        codes, keys = segment_groups(df, self.segment_columns)
        model_of_group: list[str | None] = []
        for key in keys:
            try:
                model_of_group.append(self.segment_model_for(key))
            except ModelNotFoundError:
                if unknown == "raise":
                    raise
                model_of_group.append(None)
        # one call per serving model: every fallback-served segment shares the fallback's call
        models, model_codes = np.unique(np.asarray([m or "" for m in model_of_group], dtype=object), return_inverse=True)
        row_model = model_codes[codes]
        if feed is None:
            feed = self._full_feed(df)
        order = np.argsort(row_model, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(row_model, minlength=len(models)))])
        for m, model in enumerate(models):
            if not model:
                continue
            idx = order[bounds[m] : bounds[m + 1]]
            if len(idx) == 0:
                continue
            # a frame sorted by segment (the usual case) gives contiguous rows: slice instead of gathering
            sel: slice | np.ndarray = slice(idx[0], idx[-1] + 1) if idx[-1] - idx[0] + 1 == len(idx) else idx
            predictor = self._session(model)
            values = predictor.session.run(None, {k: v[sel] for k, v in feed.items()})
            for info, value in zip(predictor.outputs, values, strict=True):
                target = outputs.get(info.name)
                if target is None or target.shape[1:] != value.shape[1:]:
                    raise ModelError(
                        f"the model of {model!r} in {self._where} answers {info.name!r} with shape {list(value.shape)}; "
                        f"the set records outputs {[(t.name, t.shape) for t in self.model_dir.outputs]}",
                        hint="every model in a set must answer with the same outputs (a multiclass set: the same classes)",
                    )
                target[sel] = value
            served_by[sel] = model
        if (served_by != "").all():  # every row answered: integer labels can be integers again
            for info in self.model_dir.outputs:
                if info.datatype == "INT64":
                    outputs[info.name] = outputs[info.name].astype(np.int64)
        return outputs, served_by

    def _full_feed(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """The onnxruntime feed of the whole frame, built once (every model in the set takes the same inputs)."""
        any_model = FALLBACK if self.has_fallback else next((k for k, e in self._segments.items() if not e.get("fallback")), None)
        if any_model is None:
            raise ModelNotFoundError("the model set holds no models", hint="retrain it with `rayml manymodels train`")
        return self._session(any_model).feed({c: df[c] for c in df.columns})


# --- writing a set ------------------------------------------------------------------------------------------------------
class ModelSetWriter:
    """Builds a model-set directory that ``Registry.register`` can register as one version.

    Used by ``rayml manymodels train``; tests and other tools can build a set from any rayml ONNX models that take
    the same inputs. Call :meth:`add_segment` / :meth:`add_fallback_segment` per segment, then :meth:`finish` once.

    Args:
        out_dir: an empty or new directory.
        segment_columns: the segment key column(s), in key order.

    Example:
        >>> w = ModelSetWriter("/tmp/stores", ["store_id"])
        >>> w.add_segment("store_000", 0, onnx_bytes_0, rows=365)
        >>> w.add_fallback_segment("store_001", rows=3)
        >>> md = w.finish(global_onnx, serve_fallback=True, meta={"task": "regression", ...}, reference_stats=stats)
    """

    def __init__(self, out_dir: str | Path, segment_columns: Sequence[str]) -> None:
        if not segment_columns:
            raise ModelError("a model set needs at least one segment column")
        self.out_dir = Path(out_dir)
        (self.out_dir / SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
        self.segment_columns = list(segment_columns)
        self.entries: dict[str, dict[str, Any]] = {}
        self._inputs: list[str] | None = None

    def _check_inputs(self, onnx_bytes: bytes, what: str) -> None:
        import onnx

        names = [i.name for i in onnx.load_model_from_string(onnx_bytes).graph.input]
        if self._inputs is None:
            self._inputs = names
        elif names != self._inputs:
            raise ModelError(
                f"{what} takes inputs {names}, the rest of the model set takes {self._inputs}",
                hint="every model in a set must be trained on the same feature columns",
            )

    def add_segment(
        self,
        key: str,
        index: int,
        onnx_bytes: bytes,
        rows: int,
        metrics: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add segment ``key``'s own model as ``segments/<index>.onnx``."""
        if key in self.entries:
            raise ModelError(f"segment {key!r} was added twice to the model set")
        self._check_inputs(onnx_bytes, f"the model of segment {key!r}")
        rel = segment_file(index)
        (self.out_dir / rel).write_bytes(onnx_bytes)
        entry = {"file": rel, "rows": int(rows), "fallback": False, "status": "trained", "metrics": dict(metrics or {})}
        entry.update(extra or {})
        self.entries[key] = entry
        return entry

    def add_fallback_segment(
        self, key: str, rows: int, status: str = "fallback", extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record segment ``key`` as served by the fallback model (``status``: ``fallback`` or ``failed``)."""
        if key in self.entries:
            raise ModelError(f"segment {key!r} was added twice to the model set")
        entry = {"file": FALLBACK_FILE, "rows": int(rows), "fallback": True, "status": status, "metrics": {}}
        entry.update(extra or {})
        self.entries[key] = entry
        return entry

    def finish(
        self,
        global_onnx: bytes,
        *,
        serve_fallback: bool,
        meta: dict[str, Any],
        reference_stats: dict[str, Any],
        input_example: pd.DataFrame | None = None,
    ) -> Path:
        """Write the global model, the index and the reference statistics (and the MLflow model files).

        Args:
            global_onnx: the model trained on all data (the model file; also the fallback file when it serves).
            serve_fallback: whether the global model serves segments without their own model (and unknown ones).
            meta: the single-model fields: ``task``, ``target``, ``schema`` and anything else to record.
            reference_stats: ``{"global": ..., "segments": {key: ...}}``.
            input_example: a few raw rows with the segment columns, e.g. the first rows of the training data (see
                :meth:`ModelDir.write_model`); None derives one row of the first segment.

        Returns:
            The directory, ready for ``Registry.register`` (open it with :class:`ModelDir`).
        """
        self._check_inputs(global_onnx, "the global model")
        uses_fallback = sorted(k for k, e in self.entries.items() if e["fallback"])
        if uses_fallback and not serve_fallback:
            raise ModelError(
                f"segments {uses_fallback[:5]} need the fallback model but serve_fallback is off",
                hint="leave those segments out of the set, or serve them with the fallback model",
            )
        index = {
            "format_version": MODEL_SET_FORMAT_VERSION,
            **meta,
            "segment_columns": self.segment_columns,
            "segments": dict(sorted(self.entries.items())),
            "fallback": FALLBACK_FILE if serve_fallback else None,
        }
        ModelDir._write(
            self.out_dir,
            KIND_MODEL_SET,
            global_onnx,
            index,
            reference_stats,
            extra_files={FALLBACK_FILE: global_onnx} if serve_fallback else None,
            indent=1,  # a set's index can list thousands of segments
            input_example=input_example,
        )
        return self.out_dir
