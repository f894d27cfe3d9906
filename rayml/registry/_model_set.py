"""Model sets: a family of per-segment models (many models) registered as ONE model version.

A model set is a directory registered like a single model, so aliases, canary and rollback move the whole family at
once. Layout (every name below is fixed; nothing in it is derived from the user's segment values, which may hold
``/`` or ``..``)::

    rayml_model.json        "kind": "model_set", the segment index and the shared signature (see below)
    reference_stats.json    {"global": <stats of all training rows>, "segments": {key: <stats>}}
    model.onnx              the global model (all data); a loader that ignores "kind" gets a working model
    fallback.onnx           the same global model when it serves segments without their own model (absent otherwise)
    segments/<index>.onnx   one model per trained segment (index = position in the sorted segment keys)

``rayml_model.json`` holds the single-model fields (``inputs``, ``outputs``, ``schema``, ``task``, ``target``: every
segment model takes the same raw feature columns) plus::

    "kind": "model_set",
    "segment_columns": ["store_id"],
    "segments": {"store_001": {"file": "segments/1.onnx", "rows": 365, "fallback": false, "status": "trained",
                               "metrics": {"val_rmse": 3.1, ...}}, ...},
    "fallback": "fallback.onnx" | null

A segment with ``"fallback": true`` (too few rows, or its training failed) has ``"file": "fallback.onnx"``.

A segment key is the canonical string of a segment's values (:func:`segment_key`); multi-column keys are joined
with ``|`` (a ``|`` or ``\\`` inside a value is escaped with ``\\``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from rayml.errors import ModelNotFoundError, PredictionInputError, RegistryError
from rayml.registry._registry import META_FILE, MODEL_FILE, REF_STATS_FILE, LoadedModel, ModelVersionInfo

logger = logging.getLogger("rayml.registry")

KIND_MODEL = "model"
KIND_MODEL_SET = "model_set"
KIND_TAG = "rayml.kind"  # registered-model tag: "model_set" for a family of segment models
FALLBACK = "__fallback__"  # what segment_model_for() answers for rows the global fallback model serves
FALLBACK_FILE = "fallback.onnx"
SEGMENTS_DIR = "segments"
KEY_SEPARATOR = "|"
MISSING = "__missing__"  # the key part of a missing (null/NaN) segment value
MODEL_SET_FORMAT_VERSION = 1


# --- segment keys ----------------------------------------------------------------------------------------------------
def _canonical(value: Any) -> str:
    """One segment value as a string that does not depend on how the data was stored (parquet int, CSV float, str)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, (bool, np.bool_)):
        text = str(bool(value))
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return MISSING
        # a CSV reads an integer id column with gaps as floats: 3.0 must be the same segment as 3
        text = str(int(f)) if f.is_integer() else repr(f)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace(KEY_SEPARATOR, "\\" + KEY_SEPARATOR)


def segment_key(values: Sequence[Any] | Any) -> str:
    """The canonical key of one segment: its values (one per segment column) as one string.

    Args:
        values: the segment's values in segment-column order; a single scalar (e.g. ``"store_001"``) is one value.

    Returns:
        The key, e.g. ``"store_001"`` or ``"north|brand_a"`` for two columns.

    Example:
        >>> segment_key(["north", 3.0])
        'north|3'
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray | pd.Series):
        values = [values]
    return KEY_SEPARATOR.join(_canonical(v) for v in values)


def split_segment_key(key: str) -> list[str]:
    """The per-column parts of a key (escapes undone): ``"a\\|b|c"`` -> ``["a|b", "c"]``."""
    parts, current, i = [], [], 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key):
            current.append(key[i + 1])
            i += 2
            continue
        if ch == KEY_SEPARATOR:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def segment_groups(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Group the rows of ``frame`` by segment, vectorised (no per-row Python).

    Returns:
        (codes, keys): ``codes[i]`` is the group of row ``i`` and ``keys[g]`` the segment key of group ``g``.

    Raises:
        PredictionInputError: a segment column is missing.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PredictionInputError(
            f"segment column(s) {missing} are missing; the input has {list(frame.columns)}",
            hint=f"every row needs its segment: add column(s) {list(columns)}",
        )
    if not columns:
        raise PredictionInputError("a model set needs at least one segment column", hint="check the model set's index")
    n = len(frame)
    per_column: list[tuple[np.ndarray, list[str]]] = []
    for name in columns:
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
        canon = [_canonical(u) for u in uniques] + [MISSING]
        # nulls get their own code (the last one) so they form the MISSING segment instead of vanishing
        codes = np.where(codes < 0, len(uniques), codes)
        # two raw values can share a canonical string (3 and 3.0, None and NaN): merge them at the uniques level
        canon_ids, canon_keys = pd.factorize(np.asarray(canon, dtype=object))
        per_column.append((canon_ids[codes].astype(np.int64), [str(k) for k in canon_keys]))
    if len(per_column) == 1:
        codes, canon = per_column[0]
        used, groups = np.unique(codes, return_inverse=True) if n else (np.array([], dtype=np.int64), codes)
        return groups.astype(np.int64).reshape(-1), [canon[int(u)] for u in used]
    if math.prod(len(canon) for _, canon in per_column) >= 2**62:
        raise PredictionInputError(
            f"segment columns {list(columns)} have too many value combinations to index",
            hint="use fewer or coarser segment columns",
        )
    combined = np.zeros(n, dtype=np.int64)
    for codes, canon in per_column:
        combined = combined * len(canon) + codes
    combos, groups = np.unique(combined, return_inverse=True)
    keys = []
    for combo in combos:
        parts = []
        for _, canon in reversed(per_column):
            combo, part = divmod(int(combo), len(canon))
            parts.append(canon[part])
        keys.append(KEY_SEPARATOR.join(reversed(parts)))
    return groups.astype(np.int64).reshape(-1), keys


def segment_file(index: int) -> str:
    """The file of the ``index``-th segment model inside a model set (never derived from the segment's values)."""
    return f"{SEGMENTS_DIR}/{int(index)}.onnx"


# --- the loaded family -------------------------------------------------------------------------------------------------
class ModelSet:
    """A loaded model set: per-segment ONNX predictors on demand, through a bounded LRU cache of sessions.

    Thread-safe: the cache is guarded by a lock and onnxruntime sessions may run concurrently.

    Args:
        path: the model-set directory (as downloaded by :meth:`Registry.download`).
        meta: its ``rayml_model.json``; read from ``path`` when None.
        info: the registered version, when loaded from the registry.
        max_cached: most onnxruntime sessions kept; the least recently used is dropped first.

    Example:
        >>> ms = ModelSet.from_loaded(Registry().load("sales-stores@production"))
        >>> preds, served_by = ms.predict(df)   # rows of any segments, split by segment inside
        >>> ms.predictor("store_007").predict(df_store_7)
    """

    def __init__(
        self,
        path: str | Path,
        meta: dict[str, Any] | None = None,
        info: ModelVersionInfo | None = None,
        max_cached: int = 256,
        reference_stats: dict[str, Any] | None = None,
    ) -> None:
        if max_cached < 1:
            raise ValueError(f"max_cached must be at least 1, got {max_cached}")
        self.path = Path(path)
        self.meta = meta if meta is not None else json.loads((self.path / META_FILE).read_text())
        self._info = info
        where = info.ref if info else str(self.path)
        if self.meta.get("kind", KIND_MODEL) != KIND_MODEL_SET:
            raise ModelNotFoundError(
                f"{where} is a single model (kind {self.meta.get('kind', KIND_MODEL)!r}), not a model set",
                hint="load single models with Registry().load(ref).predictor; model sets come from `rayml manymodels train`",
            )
        self._segments: dict[str, dict[str, Any]] = dict(self.meta.get("segments") or {})
        self._fallback_file: str | None = self.meta.get("fallback")
        self._reference_stats = reference_stats
        self.max_cached = int(max_cached)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # sessions created (cache misses), for tests and metrics

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, max_cached: int = 256) -> ModelSet:
        """The model set of a version loaded with :meth:`Registry.load`.

        Raises:
            ModelNotFoundError: the version is a single model, not a model set.
        """
        return cls(loaded.path, loaded.meta, loaded.info, max_cached, loaded.reference_stats)

    # --- what is in it ------------------------------------------------------------------------------------------
    @property
    def info(self) -> ModelVersionInfo | None:
        """The registered version (None for a set loaded from a plain directory)."""
        return self._info

    @property
    def segment_columns(self) -> list[str]:
        return list(self.meta.get("segment_columns") or [])

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
        if self._reference_stats is None:
            p = self.path / REF_STATS_FILE
            self._reference_stats = json.loads(p.read_text()) if p.is_file() else {}
        stats = self._reference_stats
        if key is not None and key in (stats.get("segments") or {}):
            return stats["segments"][key]
        return stats.get("global", {})

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
        where = self._info.ref if self._info else str(self.path)
        raise ModelNotFoundError(
            f"segment {key!r} has no model in {where} and the set has no fallback model",
            hint=f"known segments ({len(self._segments)}): {shown or '(none)'}; segment columns {self.segment_columns}",
        )

    # --- predictors ---------------------------------------------------------------------------------------------
    def predictor(self, key: str):
        """The :class:`~rayml.models.OnnxPredictor` serving segment ``key`` (the fallback model for a segment without one).

        Raises:
            ModelNotFoundError: unknown segment and no fallback.
        """
        return self._session(self.segment_model_for(key))

    def _file_of(self, model: str) -> Path:
        rel = self._fallback_file if model == FALLBACK else self._segments[model]["file"]
        path = (self.path / rel).resolve()
        # the index is data: never let it point outside the model directory
        if self.path.resolve() not in path.parents:
            raise RegistryError(f"model set index entry {rel!r} points outside {self.path}")
        return path

    def _session(self, model: str):
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
            (predictions [N] float32, served_by [N] object): the segment key or :data:`FALLBACK` per row.

        Raises:
            PredictionInputError: a segment or input column is missing or malformed (every problem at once).
            ModelNotFoundError: a row's segment has no model, there is no fallback and ``unknown="raise"``.
        """
        n = len(df)
        preds = np.full(n, np.nan, dtype=np.float32)
        served_by = np.full(n, "", dtype=object)
        if n == 0:
            return preds, served_by
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
            session = self._session(model).session
            preds[sel] = session.run(None, {k: v[sel] for k, v in feed.items()})[0]
            served_by[sel] = model
        return preds, served_by

    def _full_feed(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """The onnxruntime feed of the whole frame, built once (every model in the set takes the same inputs)."""
        any_model = FALLBACK if self.has_fallback else next((k for k, e in self._segments.items() if not e.get("fallback")), None)
        if any_model is None:
            raise ModelNotFoundError("the model set holds no models", hint="retrain it with `rayml manymodels train`")
        return self._session(any_model).feed({c: df[c] for c in df.columns})


# --- writing a set ------------------------------------------------------------------------------------------------------
class ModelSetWriter:
    """Builds a model-set directory that :meth:`Registry.register` can register as one version.

    Used by ``rayml manymodels train``; tests and other tools can build a set from any rayml ONNX models that take
    the same inputs. Call :meth:`add_segment` / :meth:`add_fallback_segment` per segment, then :meth:`finish` once.

    Args:
        out_dir: an empty or new directory.
        segment_columns: the segment key column(s), in key order.
    """

    def __init__(self, out_dir: str | Path, segment_columns: Sequence[str]) -> None:
        if not segment_columns:
            raise RegistryError("a model set needs at least one segment column")
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
            raise RegistryError(
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
            raise RegistryError(f"segment {key!r} was added twice to the model set")
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
            raise RegistryError(f"segment {key!r} was added twice to the model set")
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
    ) -> Path:
        """Write the global model, the index and the reference statistics.

        Args:
            global_onnx: the model trained on all data (``model.onnx``; also ``fallback.onnx`` when it serves).
            serve_fallback: whether the global model serves segments without their own model (and unknown ones).
            meta: the single-model fields: ``task``, ``target``, ``schema`` and anything else to record.
            reference_stats: ``{"global": ..., "segments": {key: ...}}``.

        Returns:
            The directory, ready for :meth:`Registry.register`.
        """
        from rayml.models.predictor import OnnxPredictor

        self._check_inputs(global_onnx, "the global model")
        uses_fallback = sorted(k for k, e in self.entries.items() if e["fallback"])
        if uses_fallback and not serve_fallback:
            raise RegistryError(
                f"segments {uses_fallback[:5]} need the fallback model but serve_fallback is off",
                hint="leave those segments out of the set, or serve them with the fallback model",
            )
        (self.out_dir / MODEL_FILE).write_bytes(global_onnx)
        if serve_fallback:
            (self.out_dir / FALLBACK_FILE).write_bytes(global_onnx)
        predictor = OnnxPredictor(global_onnx)
        full = {
            "format_version": MODEL_SET_FORMAT_VERSION,
            **meta,
            "kind": KIND_MODEL_SET,
            "segment_columns": self.segment_columns,
            "segments": dict(sorted(self.entries.items())),
            "fallback": FALLBACK_FILE if serve_fallback else None,
            "inputs": [vars(i) for i in predictor.inputs],
            "outputs": [vars(o) for o in predictor.outputs],
        }
        (self.out_dir / META_FILE).write_text(json.dumps(full, indent=1, default=str))
        (self.out_dir / REF_STATS_FILE).write_text(json.dumps(reference_stats))
        return self.out_dir


def is_model_set(loaded: LoadedModel) -> bool:
    """Whether a loaded version is a model set (``"kind": "model_set"``) rather than a single model."""
    return loaded.meta.get("kind", KIND_MODEL) == KIND_MODEL_SET
