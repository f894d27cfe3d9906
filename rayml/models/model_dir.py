"""The model directory: what every registered version is, and the one type that reads and writes it.

Train, tune, many models and imported models write a model directory; the registry uploads it as a version; serve,
batch, the gate and monitoring read it. Only this module knows its file names::

    rayml_model.json        the metadata: kind, task, target, feature schema, signature, lineage (see below)
    model.onnx              the model (for a model set: the global model, so a loader that ignores "kind" still works)
    reference_stats.json    reference statistics of the training rows, for drift (optional)
    fallback.onnx           model sets only: the global model when it serves segments without their own model
    segments/<index>.onnx   model sets only: one model per trained segment (see :mod:`rayml.models.model_set`)
    MLmodel                 what makes the directory an MLflow model: the python_function and onnx flavors, the
                            signature and the input example's info (see :mod:`rayml.models._pyfunc`)
    input_example.json      a few rows the model takes (MLflow's "split" orient)
    serving_input_example.json  the same rows as a request body for ``mlflow models serve``
    requirements.txt        what the python_function flavor needs (mlflow, rayml, onnxruntime, onnx; pinned)
    python_env.yaml         the same as MLflow's virtualenv and conda environments
    conda.yaml

Metadata fields every reader may rely on (absent ones have the defaults of the :class:`ModelDir` properties):
``format_version``, ``kind`` (``model`` | ``model_set``), ``task``, ``target``, ``class_labels``, ``schema``
(:meth:`rayml.data.Schema.to_dict`), ``inputs`` / ``outputs`` (the ONNX signature as :class:`TensorInfo` dicts),
``data_fingerprint`` and ``lineage`` (the registry's lineage tags), ``sensitive_columns`` and
``sensitive_allowed_in`` (the feature policy's ``data.sensitive_columns`` patterns and ``data.allow_sensitive_in``,
taken from the schema when the writer does not give them: serve and batch keep those columns' values out of
captures and outputs); a model set adds ``segment_columns``, ``segments`` (the index) and ``fallback``. Anything else
the writer recorded (``spec``, ``metrics``, ``tune`` ...) is kept as is. The MLflow input example never holds a
sensitive column's training values (they are replaced by a neutral value of the column's type).

The MLflow files are written with every directory (``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` predicts
as rayml does), but rayml never needs them: a directory written before they existed reads and predicts the same.

Reference statistics are the bins of :func:`rayml.data.reference_stats`: for a single model the file holds them
directly; for a model set it holds ``{"global": <all rows>, "segments": {key: <that segment's rows>}}``.
:meth:`ModelDir.reference_stats` hides the difference.

This module imports neither MLflow, Ray nor torch (writing imports MLflow for the MLmodel); onnxruntime loads
only when a predictor is first asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from rayml.config.data import matching_pattern
from rayml.data.schema import UNKNOWN, Schema
from rayml.errors import InvalidModelDirError
from rayml.models.predictor import LABEL, OUTPUTS_BY_TASK, PREDICTION, PROBABILITIES, TASKS, TensorInfo

if TYPE_CHECKING:
    from rayml.models.model_set import ModelSet
    from rayml.models.predictor import OnnxPredictor

META_FILE = "rayml_model.json"
MODEL_FILE = "model.onnx"
REF_STATS_FILE = "reference_stats.json"
FALLBACK_FILE = "fallback.onnx"
SEGMENTS_DIR = "segments"
MLMODEL_FILE = "MLmodel"
INPUT_EXAMPLE_FILE = "input_example.json"
SERVING_INPUT_FILE = "serving_input_example.json"
REQUIREMENTS_FILE = "requirements.txt"
PYTHON_ENV_FILE = "python_env.yaml"
CONDA_ENV_FILE = "conda.yaml"

KIND_MODEL = "model"
KIND_MODEL_SET = "model_set"
KINDS = (KIND_MODEL, KIND_MODEL_SET)
FORMAT_VERSION = 1

_HINT = (
    f"a model directory holds {MODEL_FILE} and {META_FILE} (a JSON object), optionally {REF_STATS_FILE}; "
    "export it again (rayml train / rayml models register), or download the version again"
)


PROBA_PREFIX = "proba_"


def segment_file(index: int) -> str:
    """The file of the ``index``-th segment model inside a model set (never derived from the segment's values)."""
    return f"{SEGMENTS_DIR}/{int(index)}.onnx"


def contract_problems(task: str, class_labels: list[Any], outputs: list[TensorInfo]) -> list[str]:
    """What keeps a graph's outputs from the model contract of ``task`` ([] when it holds; see
    :mod:`rayml.models.predictor` for the outputs each task answers with)."""
    if task not in TASKS:
        return [f"task {task!r} is not one of {list(TASKS)}"]
    names = [o.name for o in outputs]
    wanted = list(OUTPUTS_BY_TASK[task])
    problems = []
    if names[: len(wanted)] != wanted:
        problems.append(f"a {task} model's graph must answer with outputs {wanted} first, in that order; it has {names}")
    by_name = {o.name: o for o in outputs}
    if PREDICTION in wanted and PREDICTION in by_name and by_name[PREDICTION].datatype not in ("FP32", "FP64"):
        problems.append(f"output {PREDICTION!r} must be FP32, not {by_name[PREDICTION].datatype}")
    if task == "binary" and class_labels and len(class_labels) != 2:
        problems.append(f"a binary model has exactly 2 class labels, got {class_labels}")
    if task == "multiclass":
        if len(class_labels) < 2:
            problems.append(f"a multiclass model records its class labels (at least 2), got {class_labels}")
        probs = by_name.get(PROBABILITIES)
        if probs is not None and probs.shape[-1:] not in ([-1], [len(class_labels)]):
            problems.append(f"output {PROBABILITIES!r} has shape {probs.shape}; it must be [N, {len(class_labels)}]")
        label = by_name.get(LABEL)
        if label is not None and label.datatype not in ("INT64", "BYTES"):
            problems.append(f"output {LABEL!r} must be INT64 or BYTES (the class label), not {label.datatype}")
    return problems


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise InvalidModelDirError(f"{path.parent} has no {path.name} ({what})", hint=_HINT) from e
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: json.JSONDecodeError
        raise InvalidModelDirError(f"{path} ({what}) is not valid JSON: {e}", hint=_HINT) from e


class ModelDir:
    """A model directory — a single model or a model set — and what it says about itself.

    Reading is lazy: the metadata and reference statistics are read on first use and kept, predictors are created
    on first use and kept. :meth:`read` checks the directory up front; the constructor does not (a replica that
    was handed the metadata already need not read it again).

    Args:
        path: the directory.
        meta: its metadata when the caller already has it (read from ``path`` when None).
        reference_stats: its reference statistics file's content when the caller already has it.
        ref: what to call it in messages (``name:version`` when it came from the registry; default: the path).

    Example:
        >>> md = ModelDir.read("/tmp/model")
        >>> md.kind, md.task, md.input_names
        ('model', 'regression', ['price', 'temperature', ...])
        >>> md.predict_frame(df)            # a model set routes each row to its segment's model
        >>> md.reference_stats("store_007") # that segment's bins; the global ones for a model or an unknown segment
    """

    def __init__(
        self,
        path: str | Path,
        meta: dict[str, Any] | None = None,
        reference_stats: dict[str, Any] | None = None,
        ref: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.ref = ref
        self._meta = meta
        self._stats = reference_stats
        self._predictors: dict[int, OnnxPredictor] = {}
        self._model_set: ModelSet | None = None

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        """What to call this model in messages: its registry ref, else its path."""
        return self.ref or str(self.path)

    # --- reading ------------------------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path, ref: str | None = None) -> ModelDir:
        """Open a model directory after checking it: the required files exist and the JSON files parse.

        Raises:
            InvalidModelDirError: a required file is missing, or the metadata or statistics are not valid JSON
                (every problem in one message).
        """
        md = cls(path, ref=ref)
        problems = []
        if not md.path.is_dir():
            raise InvalidModelDirError(f"model directory {md.path} does not exist", hint=_HINT)
        if not md.model_file.is_file():
            problems.append(f"{MODEL_FILE} is missing")
        try:
            if md.kind not in KINDS:
                problems.append(f"{META_FILE} has kind {md.kind!r}; known kinds are {list(KINDS)}")
        except InvalidModelDirError as e:
            problems.append(e.message)
        try:
            md.all_reference_stats  # noqa: B018 -- read now, so a corrupt file fails here and not mid-request
        except InvalidModelDirError as e:
            problems.append(e.message)
        if problems:
            raise InvalidModelDirError(f"{md.name} is not a valid model directory: {'; '.join(problems)}", hint=_HINT)
        return md

    @staticmethod
    def is_complete(path: str | Path) -> bool:
        """Whether ``path`` holds a model directory's required files (a cache or a local copy that can be used)."""
        p = Path(path)
        return (p / META_FILE).is_file() and (p / MODEL_FILE).is_file()

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata (``rayml_model.json``) as written.

        Raises:
            InvalidModelDirError: the file is missing, not valid JSON or not a JSON object.
        """
        if self._meta is None:
            meta = _read_json(self.path / META_FILE, "the model metadata")
            if not isinstance(meta, dict):
                raise InvalidModelDirError(
                    f"{self.path / META_FILE} holds a JSON {type(meta).__name__}, not an object", hint=_HINT
                )
            self._meta = meta
        return self._meta

    @property
    def model_file(self) -> Path:
        """The ONNX model (for a model set: the global model)."""
        return self.path / MODEL_FILE

    @property
    def kind(self) -> str:
        """:data:`KIND_MODEL` (a single model) or :data:`KIND_MODEL_SET` (a family of per-segment models)."""
        return str(self.meta.get("kind", KIND_MODEL))

    @property
    def is_model_set(self) -> bool:
        return self.kind == KIND_MODEL_SET

    @property
    def format_version(self) -> int:
        return int(self.meta.get("format_version", FORMAT_VERSION))

    @property
    def task(self) -> str:
        """``regression`` | ``binary`` | ``multiclass`` (``regression`` when the metadata does not say)."""
        return str(self.meta.get("task", "regression"))

    @property
    def target(self) -> str | None:
        """The column the model predicts, when recorded."""
        target = self.meta.get("target")
        return str(target) if target is not None else None

    @property
    def class_labels(self) -> list[Any]:
        """The class labels of a classifier, in output order ([] when none were recorded)."""
        return list(self.meta.get("class_labels") or [])

    @property
    def probability_columns(self) -> list[str]:
        """The names a table gives a multiclass model's class probabilities, one per class in ``class_labels`` order
        (``proba_<label>``: batch output, MLflow's pyfunc frame); [] for other tasks."""
        return [f"{PROBA_PREFIX}{c}" for c in self.class_labels] if self.task == "multiclass" else []

    @property
    def schema(self) -> Schema | None:
        """The feature schema the model was trained on (None when not recorded, e.g. an imported model)."""
        schema = self.meta.get("schema")
        return Schema.from_dict(schema) if schema else None

    @property
    def inputs(self) -> list[TensorInfo]:
        """The model's inputs: from the metadata, else from the ONNX graph (one tensor per raw feature column)."""
        recorded = self.meta.get("inputs")
        return [TensorInfo(**t) for t in recorded] if recorded else list(self.predictor().inputs)

    @property
    def outputs(self) -> list[TensorInfo]:
        """The model's outputs: from the metadata, else from the ONNX graph."""
        recorded = self.meta.get("outputs")
        return [TensorInfo(**t) for t in recorded] if recorded else list(self.predictor().outputs)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def segment_columns(self) -> list[str]:
        """The columns whose values pick a model set's segment ([] for a single model)."""
        return list(self.meta.get("segment_columns") or []) if self.is_model_set else []

    @property
    def sensitive_columns(self) -> list[str]:
        """Names or patterns (fnmatch, case-insensitive) of the columns whose raw values must not leave the model's
        own use (``data.sensitive_columns`` of its training; [] when none were recorded)."""
        # a model set's index records them only in its schema
        return [str(p) for p in self.meta.get("sensitive_columns") or self._schema_meta().get("sensitive") or []]

    @property
    def sensitive_allowed_in(self) -> list[str]:
        """Where raw values of :attr:`sensitive_columns` may go after all (``data.allow_sensitive_in``)."""
        return [str(u) for u in self.meta.get("sensitive_allowed_in") or self._schema_meta().get("sensitive_allowed_in") or []]

    def _schema_meta(self) -> dict[str, Any]:
        schema = self.meta.get("schema")
        return schema if isinstance(schema, dict) else {}

    def withheld_from(self, use: str) -> list[str]:
        """The patterns of the columns whose values must stay out of ``use`` (``batch_output`` | ``capture`` |
        ``reference_stats``): :attr:`sensitive_columns`, or [] when ``use`` is allowed."""
        return [] if use in self.sensitive_allowed_in else self.sensitive_columns

    @property
    def data_fingerprint(self) -> str | None:
        """The fingerprint of the training data (the metadata's own, else the lineage tag's)."""
        return self.meta.get("data_fingerprint") or self.lineage.get("rayml.data_fingerprint")

    @property
    def lineage(self) -> dict[str, str]:
        """The lineage tags recorded with the model (run id, data fingerprint, git commit ...; {} when none)."""
        return dict(self.meta.get("lineage") or {})

    # --- reference statistics -------------------------------------------------------------------------------------
    @property
    def all_reference_stats(self) -> dict[str, Any]:
        """The reference statistics file's content as written ({} when there is none).

        Raises:
            InvalidModelDirError: the file exists but is not valid JSON.
        """
        if self._stats is None:
            p = self.path / REF_STATS_FILE
            stats = _read_json(p, "the reference statistics") if p.is_file() else {}
            self._stats = stats if isinstance(stats, dict) else {}
        return self._stats

    def reference_stats(self, segment: str | None = None, *, own_only: bool = False) -> dict[str, Any]:
        """The reference statistics (bins) that data scored by this model is compared with.

        Args:
            segment: a model set's segment key: that segment's own statistics when the set has them. None (or a
                segment without its own) gives the global statistics, which are also what a single model has.
            own_only: give {} instead of the global statistics when ``segment`` has none of its own.

        Returns:
            The statistics, {} when the model has none.
        """
        stats = self.all_reference_stats
        if "global" not in stats and "segments" not in stats:  # a single model: the file holds the bins directly
            return {} if own_only and segment is not None else stats
        own: dict[str, Any] | None = (stats.get("segments") or {}).get(segment) if segment is not None else None
        if own is not None:
            return own
        return {} if own_only and segment is not None else (stats.get("global") or {})

    # --- predicting ---------------------------------------------------------------------------------------------
    def predictor(self, intra_op_threads: int = 1) -> OnnxPredictor:
        """The ONNX Runtime predictor of ``model.onnx`` (a model set's global model), created once per thread count."""
        p = self._predictors.get(intra_op_threads)
        if p is None:
            from rayml.models.predictor import OnnxPredictor

            p = self._predictors[intra_op_threads] = OnnxPredictor(self.model_file, intra_op_threads=intra_op_threads)
        return p

    def model_set(self, max_cached: int | None = None) -> ModelSet:
        """The loaded model set, created on the first call and the same one afterwards.

        Args:
            max_cached: most segment sessions the set keeps loaded (default 256); applies when the set is created.

        Raises:
            ModelNotFoundError: this is a single model, not a model set.
        """
        if self._model_set is None:
            from rayml.models.model_set import ModelSet

            self._model_set = ModelSet(self, max_cached=256 if max_cached is None else max_cached)
        return self._model_set

    def predict_frame(self, df: pd.DataFrame, *, unknown: Literal["raise", "nan"] = "raise") -> np.ndarray:
        """Predictions [N] for raw rows, whatever the kind: a model set routes each row to its segment's model.

        Args:
            df: raw rows (the input columns, and a model set's segment columns; extra columns are ignored).
            unknown: a model set's rows of a segment without a model when it has no fallback: ``raise`` an error,
                or predict NaN.

        Raises:
            PredictionInputError: a column is missing or malformed (every problem at once).
            ModelNotFoundError: a row's segment has no model, there is no fallback and ``unknown="raise"``.
        """
        return self.predict_and_route(df, unknown=unknown)[0]

    def predict_and_route(
        self, df: pd.DataFrame, *, unknown: Literal["raise", "nan"] = "raise"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Like :meth:`predict_frame`, and which model served each row.

        Returns:
            (predictions [N], served_by): for a model set, ``served_by[i]`` is row ``i``'s segment key, or
            :data:`rayml.models.FALLBACK` for the global fallback model, or "" for an unknown segment predicted as
            NaN; None for a single model.
        """
        if self.is_model_set:
            return self.model_set().predict(df, unknown=unknown)
        if len(df) == 0:
            return np.zeros(0, dtype=np.float32), None
        return self.predictor().predict(df), None

    def predict_outputs(
        self,
        df: pd.DataFrame,
        *,
        unknown: Literal["raise", "nan"] = "raise",
        feed: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Every output of the model by name, and which model served each row: :meth:`predict_and_route` for all of
        them (a multiclass model answers ``label`` [N] and ``probabilities`` [N, K] in :attr:`class_labels` order).

        Args:
            df: raw rows (the input columns, and a model set's segment columns; extra columns are ignored).
            unknown: a model set's rows of a segment without a model when it has no fallback: ``raise`` an error,
                or answer them as :meth:`blank_outputs` does (NaN numbers, None labels).
            feed: the ONNX Runtime inputs of ``df``'s rows in :meth:`OnnxPredictor.feed`'s form, when the caller has
                built them already (batch builds them from Arrow); None: built from ``df``.

        Returns:
            (outputs, served_by): ``served_by`` as in :meth:`predict_and_route`.

        Raises:
            PredictionInputError: a column is missing or malformed (every problem at once).
            ModelNotFoundError: a row's segment has no model, there is no fallback and ``unknown="raise"``.
        """
        if self.is_model_set:
            return self.model_set().predict_outputs(df, unknown=unknown, feed=feed)
        if len(df) == 0:
            return self.blank_outputs(0), None
        predictor = self.predictor()
        return (predictor.predict_all(df) if feed is None else predictor.run(feed)), None

    def blank_outputs(self, n: int) -> dict[str, np.ndarray]:
        """Outputs for ``n`` rows that no model answered: NaN for numbers, None for labels (an object array).

        Shapes follow :attr:`outputs` (``probabilities`` is [n, K] with K = the number of class labels).
        """
        out: dict[str, np.ndarray] = {}
        for t in self.outputs:
            shape = [n, *(d if d >= 0 else len(self.class_labels) for d in t.shape[1:])]
            if t.datatype in ("FP32", "FP64"):
                out[t.name] = np.full(shape, np.nan, dtype=np.float32 if t.datatype == "FP32" else np.float64)
            else:
                out[t.name] = np.full(shape, None, dtype=object)
        return out

    # --- writing ------------------------------------------------------------------------------------------------
    @classmethod
    def write_model(
        cls,
        out_dir: str | Path,
        *,
        onnx_bytes: bytes,
        meta: dict[str, Any],
        reference_stats: dict[str, Any] | None = None,
        input_example: pd.DataFrame | None = None,
    ) -> ModelDir:
        """Write a single-model directory (also a standard MLflow model).

        Args:
            out_dir: an empty or new directory.
            onnx_bytes: the ONNX model (raw columns in, the prediction out).
            meta: what to record: ``task``, ``target``, ``schema`` (a dict), ``class_labels``, ``data_fingerprint``,
                ``lineage`` and anything else. ``kind`` and ``inputs`` / ``outputs`` (read from the ONNX graph) are
                filled in; ``format_version`` too unless given.
            reference_stats: the training rows' bins (:func:`rayml.data.reference_stats`); None writes none.
            input_example: a few raw rows the model takes, e.g. ``train.head(5)``: the MLflow input example (its
                first 5 rows, only the input columns) and the signature's column types. None derives one row from
                the reference statistics and the schema, with numbers as ``double`` (see :mod:`rayml.models._pyfunc`).

        Returns:
            The directory, ready for ``Registry.register``.

        Raises:
            ModelError: ``onnx_bytes`` is not a model ONNX Runtime can load, or ``input_example`` lacks its columns.
        """
        return cls._write(out_dir, KIND_MODEL, onnx_bytes, meta, reference_stats, input_example=input_example)

    @classmethod
    def _write(
        cls,
        out_dir: str | Path,
        kind: str,
        onnx_bytes: bytes,
        meta: dict[str, Any],
        reference_stats: dict[str, Any] | None,
        extra_files: dict[str, bytes] | None = None,
        indent: int = 2,
        input_example: pd.DataFrame | None = None,
    ) -> ModelDir:
        """Write the files every kind has; the model-set writer adds its own (``extra_files``, relative names)."""
        from rayml.models._pyfunc import mlflow_files
        from rayml.models.predictor import OnnxPredictor

        predictor = OnnxPredictor(onnx_bytes)  # loads the graph: a broken export fails here, before anything is written
        problems = contract_problems(str(meta.get("task", "regression")), list(meta.get("class_labels") or []), predictor.outputs)
        if problems:
            from rayml.errors import ModelError

            raise ModelError(
                f"the model does not keep rayml's model contract: {'; '.join(problems)}",
                hint="this is a bug in the exporter or importer that wrote it; please report it",
            )
        schema = meta.get("schema") or {}
        full = {
            "format_version": FORMAT_VERSION,
            # the feature policy at the top level, where serve and batch read it (the writers record it in the schema)
            "sensitive_columns": list(schema.get("sensitive") or []),
            "sensitive_allowed_in": list(schema.get("sensitive_allowed_in") or []),
            **meta,
            # facts of the graph and of the writer, not the caller's to set
            "kind": kind,
            "inputs": [vars(i) for i in predictor.inputs],
            "outputs": [vars(o) for o in predictor.outputs],
        }
        if input_example is not None and full["sensitive_columns"]:
            input_example = _neutral_sensitive(input_example, full["sensitive_columns"])
        # before anything is written too: a bad input example fails here
        mlflow = mlflow_files(
            kind=kind,
            meta=full,
            inputs=predictor.inputs,
            outputs=predictor.outputs,
            reference_stats=reference_stats,
            input_example=input_example,
        )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(onnx_bytes)
        for rel, data in (extra_files or {}).items():
            (out / rel).write_bytes(data)
        if reference_stats is not None:
            (out / REF_STATS_FILE).write_text(json.dumps(reference_stats))
        for name, text in mlflow.items():
            (out / name).write_text(text)
        # the metadata last: a directory with its metadata is complete (see is_complete)
        (out / META_FILE).write_text(json.dumps(full, indent=indent, default=str))
        md = cls(out, meta=json.loads(json.dumps(full, default=str)), reference_stats=reference_stats)
        md._predictors[1] = predictor
        return md


def _neutral_sensitive(example: pd.DataFrame, patterns: list[str]) -> pd.DataFrame:
    """``example`` with the values of sensitive columns replaced by a neutral one of the same type (0, False, the
    unknown category): the input example is published with the model, and its rows are training rows."""
    columns = [c for c in example.columns if matching_pattern(str(c), patterns) is not None]
    if not columns:
        return example
    out: pd.DataFrame = example.copy()
    for c in columns:
        s = out[c]
        if pd.api.types.is_bool_dtype(s):
            out[c] = pd.Series(False, index=s.index, dtype=s.dtype)
        elif pd.api.types.is_numeric_dtype(s):
            out[c] = pd.Series(0, index=s.index).astype(s.dtype)
        else:
            out[c] = pd.Series(UNKNOWN, index=s.index, dtype=object)
    return out
