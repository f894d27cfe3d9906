"""The scoring actor: loads the model (or model set) once, then scores whole input files and commits each one.

An actor takes one input file at a time (a Ray Data ``map_batches`` batch is one file descriptor), reads it in
chunks of ``batch_size`` rows (parquet row batches, only the needed columns; a CSV is read whole), predicts each
chunk with rows split by segment inside the chunk (no shuffle), writes the chunk to the file's staged output and,
when the file is done, commits it (``rayml.batch._ledger``). Rows never travel through the object store or the
driver: each actor reads its inputs and writes its outputs on shared storage, so scoring scales with actors.

A file that cannot be scored (corrupt, a missing column, text in a numeric column) is reported with its error and
its staged output deleted; the actor goes on with the next file.

Output columns: the key columns (segment and id columns, as read), the prediction column (``batch.prediction_column``:
the predicted value, the probability of class 1 for a binary model, the predicted label for a multiclass model:
string, or int64 when the class labels are integers), for a multiclass model one float32 column per class named
``proba_<label>`` (in class-label order), then :data:`LINEAGE_COLUMNS`: ``model_name``, ``model_version``,
``segment_model`` (the segment model that answered, ``__fallback__``, or null for a single model), ``batch_run_id``,
``inference_id`` (``b-<16 hex>-<row in the input file>``: the same on every rerun, see :mod:`rayml.batch._capture`;
ground-truth labels name it) and ``error``. Rows a model set could not score (a segment without a model and no
fallback) have a NaN prediction (a null label) and NaN probabilities, and say why in ``error``.

The model's sensitive columns (:meth:`rayml.models.ModelDir.withheld_from` ``("batch_output")``) are never copied to
the output: left out of "every non-input column", and refused as ``batch.id_columns`` (by the driver, before any file
is scored). An input error that would quote a sensitive column's value is reported without it.

With ``batch.capture_destination``, the actor also captures each committed file's predictions for the quality join
(:class:`~rayml.batch._capture.BatchCapture`), after the commit; a capture failure is reported, never a file failure.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayml._private import faults as _faults
from rayml.batch._capture import INFERENCE_ID, BatchCapture, file_key, inference_ids
from rayml.batch._ledger import InputFile, LedgerEntry, OutputDir
from rayml.config.data import matching_pattern
from rayml.data.schema import UNKNOWN
from rayml.errors import DataError, DataValidationError, ModelError, PredictionInputError, RaymlError
from rayml.models import ModelDir, segment_groups
from rayml.models.predictor import PROBABILITIES
from rayml.monitor import DriftCounter

logger = logging.getLogger("rayml.batch")

LINEAGE_COLUMNS = ("model_name", "model_version", "segment_model", "batch_run_id", INFERENCE_ID, "error")


@dataclass(frozen=True)
class ScoreSpec:
    """Everything an actor needs, as plain values (pickled once per actor)."""

    model_name: str
    model_version: int
    model_path: str  # the downloaded version on the driver's node (actors on other nodes download their own)
    tracking_uri: str
    kind: str  # "model" | "model_set": what the driver loaded; an actor checks that its copy says the same
    output_uri: str
    input_fs: Any  # the pyarrow filesystem of the input paths (picklable)
    fmt: str  # parquet | csv
    attempt: str
    batch_run_id: str
    batch_size: int
    id_columns: tuple[str, ...] | None
    prediction_column: str
    max_cached_models: int
    drift: bool = True  # count rows into the model's reference bins (see rayml.batch._run: the run's drift summary)
    lease_owner: str | None = None  # the run's lease on the output folder: a commit checks it still holds it
    faults: str | None = None
    capture: BatchCapture | None = None  # batch.capture_destination: capture each committed file's predictions

    @property
    def model_ref(self) -> str:
        return f"{self.model_name}:{self.model_version}"


def output_columns(prediction_column: str, probabilities: Sequence[str] = ()) -> tuple[str, ...]:
    """The columns rayml adds to every output row (``probabilities``: :attr:`rayml.models.ModelDir.probability_columns`)."""
    return (prediction_column, *probabilities, *LINEAGE_COLUMNS)


def key_columns(
    present: list[str],
    inputs: list[str],
    segment_columns: list[str],
    id_columns: tuple[str, ...] | None,
    prediction: str,
    probabilities: Sequence[str] = (),
    withheld: Sequence[str] = (),
) -> list[str]:
    """The input columns copied to the output: segment columns, then id columns (null = every non-input column
    that is not ``withheld``: the model's sensitive columns, names or patterns).

    Raises:
        DataValidationError: an explicit id column clashes with a column rayml adds, or is withheld.
    """
    added = set(output_columns(prediction, probabilities))
    if id_columns is None:
        ids = [
            c
            for c in present
            if c not in inputs and c not in segment_columns and c not in added and matching_pattern(c, withheld) is None
        ]
    else:
        problems = sensitive_id_problems(id_columns, withheld)
        if problems:
            raise DataValidationError(problems, hint=SENSITIVE_ID_HINT)
        clash = [c for c in id_columns if c in added]
        if clash:
            raise DataValidationError(
                [f"id column(s) {clash} clash with the columns batch adds {sorted(added)}"],
                hint="rename them in the input, or set batch.prediction_column to another name",
            )
        ids = [c for c in id_columns if c not in segment_columns]
    return [*segment_columns, *ids]


SENSITIVE_ID_HINT = (
    "the model was trained with data.sensitive_columns: their values never reach batch output unless its training "
    "config allows it (data.allow_sensitive_in: [batch_output]); remove them from batch.id_columns"
)


def sensitive_id_problems(id_columns: Sequence[str], withheld: Sequence[str]) -> list[str]:
    """One problem per ``batch.id_columns`` entry that is one of the model's sensitive columns ([] when none is)."""
    problems = []
    for c in id_columns:
        pattern = matching_pattern(c, withheld)
        if pattern is not None:
            problems.append(f"id column {c!r} is sensitive (matches the model's sensitive column pattern {pattern!r})")
    return problems


class FileScorer:
    """Ray Data actor: ``__call__`` gets a batch of input-file descriptors and returns one result row per file."""

    def __init__(self, spec: ScoreSpec) -> None:
        self.spec = spec
        self.out = OutputDir(spec.output_uri)
        self.faults = _faults.parse(spec.faults)
        self.model_dir = _open_model_dir(spec)
        # load the model now: an unreadable model fails the actor's start once, not every file it is given
        if self.model_dir.is_model_set:
            self.model_dir.model_set(max_cached=spec.max_cached_models)
        else:
            self.model_dir.predictor()
        self.input_kinds = {t.name: t.datatype for t in self.model_dir.inputs}
        self.inputs = list(self.input_kinds)
        self.segment_columns = self.model_dir.segment_columns
        self.probability_columns = self.model_dir.probability_columns
        self.reference = _reference(self.model_dir) if spec.drift else None
        self.withheld = self.model_dir.withheld_from("batch_output")
        # error messages never quote these columns' values, whatever batch_output allows (logs and the CLI show them)
        self.sensitive_inputs = [c for c in self.inputs if matching_pattern(c, self.model_dir.sensitive_columns)]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [
            self.score_file(InputFile(str(p), int(s), int(m)))
            for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"], strict=True)
        ]
        return pd.DataFrame(rows)

    # --- one file ----------------------------------------------------------------------------------------------------
    def score_file(self, f: InputFile) -> dict[str, Any]:
        """Score and commit one input file; never raises (a failure is the returned row's ``error``)."""
        t0 = time.perf_counter()
        try:
            rows = self._score_to_staging(f)
            entry = self.out.commit(self.spec.attempt, f, rows, owner=self.spec.lease_owner)
        except Exception as e:  # one bad file must not stop the others: report it, drop its staged output
            self._drop_staged(f)
            message = e.message if isinstance(e, RaymlError) else f"{type(e).__name__}: {e}"
            hint = e.hint if isinstance(e, RaymlError) else None
            if isinstance(e, PredictionInputError):
                message = self._without_sensitive_values(message)
            logger.warning("input %s failed: %s", f.path, message)
            return {
                "path": f.path,
                "status": "failed",
                "rows": 0,
                "output": "",
                "error": message,
                "hint": hint or "",
                "seconds": time.perf_counter() - t0,
                "captured": -1,
                "capture_error": "",
            }
        captured, capture_error = self._capture(f, entry)
        _faults.end_of_epoch(self.faults)  # test-only: `sleep@seconds=S` pauses after each committed file
        return {
            "path": f.path,
            "status": "committed",
            "rows": rows,
            "output": f.output_name,
            "error": "",
            "hint": "",
            "seconds": time.perf_counter() - t0,
            "captured": captured,
            "capture_error": capture_error,
        }

    def _without_sensitive_values(self, message: str) -> str:
        """A predictor's complaint about the input, unless it names a sensitive column: it may quote the value."""
        named = [c for c in self.sensitive_inputs if repr(c) in message]
        if not named:
            return message
        return (
            f"the input does not fit the model in sensitive column(s) {named}: details withheld, they may quote values "
            "(data.sensitive_columns); check those columns' types and values"
        )

    def _capture(self, f: InputFile, entry: LedgerEntry) -> tuple[int, str]:
        """(rows captured, "") or (-1, why not): the output is committed either way (-1, "": no capture configured)."""
        if self.spec.capture is None:
            return -1, ""
        try:
            return self.spec.capture.write(self.out, f, entry), ""
        except Exception as e:  # the batch output is committed: a capture failure is reported, never a file failure
            message = f"{type(e).__name__}: {e}"
            logger.warning("input %s is committed, but capturing its predictions failed: %s", f.path, message)
            return -1, message

    def _drop_staged(self, f: InputFile) -> None:
        with contextlib.suppress(OSError):  # nothing was staged
            self.out.fs.delete_file(self.out.staging_path(self.spec.attempt, f))

    def _chunks(self, f: InputFile):
        """(columns present, iterator of Arrow tables of at most batch_size rows, an empty table with the file's types)."""
        size = self.spec.batch_size
        try:
            if self.spec.fmt == "csv":
                import pyarrow.csv as pacsv

                with self.spec.input_fs.open_input_stream(f.path) as stream:
                    table = pacsv.read_csv(stream)  # whole file: CSV type inference needs every row
                return table.column_names, (table.slice(i, size) for i in range(0, table.num_rows, size)), table.slice(0, 0)
            pf = pq.ParquetFile(self.spec.input_fs.open_input_file(f.path))
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                f"cannot read {self.spec.fmt} file {f.path!r}: {e}", hint="the file is corrupt or not in that format"
            ) from e
        present = list(pf.schema_arrow.names)
        wanted = None
        if self.spec.id_columns is not None:  # read only what the output needs
            keep = {*self.inputs, *self.segment_columns, *self.spec.id_columns}
            wanted = [c for c in present if c in keep]

        def gen():
            try:
                for rb in pf.iter_batches(batch_size=size, columns=wanted):
                    yield pa.Table.from_batches([rb])
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"cannot read parquet file {f.path!r}: {e}", hint="the file is corrupt") from e

        return present, gen(), pf.schema_arrow.empty_table()

    def _score_to_staging(self, f: InputFile) -> int:
        present, chunks, empty = self._chunks(f)
        required = [*self.inputs, *self.segment_columns, *(self.spec.id_columns or ())]
        missing = [c for c in dict.fromkeys(required) if c not in present]
        if missing:
            raise DataValidationError(
                [f"missing column(s) {missing}; it has {present}"],
                hint=f"the model takes {self.inputs}"
                + (f" and segment column(s) {self.segment_columns}" if self.segment_columns else ""),
                source=f.path,
            )
        keys = key_columns(
            present,
            self.inputs,
            self.segment_columns,
            self.spec.id_columns,
            self.spec.prediction_column,
            self.probability_columns,
            self.withheld,
        )
        rows = 0
        writer = None
        counter = DriftCounter(self.reference) if self.reference else None
        key = file_key(self.out.uri, f.path, self.spec.model_ref)
        with self.out.open_staging(self.spec.attempt, f) as stream:
            try:
                for chunk in chunks:
                    table = self._score_chunk(chunk, keys, inference_ids(key, rows, chunk.num_rows), counter)
                    if writer is None:
                        writer = _parquet_writer(stream, table.schema)
                    writer.write_table(table.cast(writer.schema))
                    rows += chunk.num_rows
                if writer is None:  # an empty input still commits (an empty output says "done, 0 rows")
                    table = self._score_chunk(empty, keys, inference_ids(key, 0, 0))
                    writer = _parquet_writer(stream, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()
        if counter is not None:
            self.out.write_drift_counts(f, counter.to_dict())
        return rows

    def _score_chunk(self, chunk: pa.Table, keys: list[str], ids: pa.Array, counter: DriftCounter | None = None) -> pa.Table:
        """Predict one chunk (``ids``: its rows' inference ids); the output keeps the key columns as they were read
        (Arrow, no pandas round trip)."""
        n = chunk.num_rows
        # only what the model reads becomes pandas: ids, timestamps and labels pass through untouched
        df = chunk.select(list(dict.fromkeys([*self.segment_columns, *self.inputs]))).to_pandas()
        error = pa.nulls(n, pa.string())
        outputs, served = self.model_dir.predict_outputs(df, unknown="nan", feed=_arrow_feed(chunk, self.input_kinds))
        first = self.model_dir.outputs[0]
        preds = outputs[first.name]
        if served is None:  # a single model
            served_by = pa.nulls(n, pa.string())
        else:
            unknown = served == ""
            if unknown.any():
                codes, seg_keys = segment_groups(df.loc[unknown], self.segment_columns)
                messages = np.full(n, None, dtype=object)
                messages[unknown] = [f"segment {seg_keys[c]!r} has no model and the model set has no fallback" for c in codes]
                error = pa.array(messages, type=pa.string())
            served_by = pa.array(np.where(unknown, np.array(None, dtype=object), served), type=pa.string())
        if counter is not None and n:
            counter.update(df, predictions=preds[pd.notna(preds)])  # unknown segments predict NaN (a label: None)
        columns = [chunk.column(c) for c in keys]
        names = list(keys)
        # the columns rayml adds have fixed types, so every chunk and every file has the same output schema
        added = {self.spec.prediction_column: _prediction_array(preds, first.datatype)}
        if self.probability_columns:
            probs = outputs[PROBABILITIES]
            added.update({c: pa.array(probs[:, i].astype(np.float32)) for i, c in enumerate(self.probability_columns)})
        added.update(
            {
                "model_name": _constant(self.spec.model_name, n),
                "model_version": pa.array(np.full(n, self.spec.model_version, dtype=np.int64)),
                "segment_model": served_by,
                "batch_run_id": _constant(self.spec.batch_run_id, n),
                INFERENCE_ID: ids,
                "error": error,
            }
        )
        return pa.Table.from_arrays([*columns, *added.values()], names=[*names, *added])


def _parquet_writer(stream: Any, schema: pa.Schema) -> pq.ParquetWriter:
    """A parquet writer that dictionary-encodes every column but the floating-point ones.

    Measured values and predictions rarely repeat: Parquet's default tries a dictionary on them anyway and falls back
    to plain encoding once it is full, which cost about 40% of writing an output file (and made it bigger).
    """
    keep = [f.name for f in schema if not pa.types.is_floating(f.type)]
    return pq.ParquetWriter(stream, schema, use_dictionary=keep)


def _open_model_dir(spec: ScoreSpec) -> ModelDir:
    """The pinned version's model directory: the driver's copy when this actor shares its node, else a download."""
    ref = f"{spec.model_name}:{spec.model_version}"
    if ModelDir.is_complete(spec.model_path):
        model_dir = ModelDir.read(spec.model_path, ref=ref)
    else:  # a node other than the driver's: download the pinned version into this node's cache
        from rayml.registry import Registry

        model_dir = Registry(spec.tracking_uri).load(ref).model_dir
    if model_dir.kind != spec.kind:
        raise ModelError(f"{ref} at {model_dir.path} is a {model_dir.kind}, but the driver loaded a {spec.kind}")
    return model_dir


def _reference(model_dir: ModelDir) -> dict[str, Any] | None:
    """The version's reference bins (a model set's global ones); None when it has none (no drift counts then)."""
    stats = model_dir.reference_stats()
    return stats if stats.get("features") else None


def _arrow_feed(chunk: pa.Table, kinds: dict[str, str]) -> dict[str, np.ndarray] | None:
    """The ONNX Runtime feed of a chunk straight from Arrow: what ``OnnxPredictor.feed`` makes of the same rows.

    Categories as strings with missing values as ``UNKNOWN``, numbers as float32/float64 with missing values as NaN,
    built per distinct category value instead of per row (``as_category_strings`` goes through every value in Python:
    about a third of the scoring time of a file with a few categorical columns). None when a column is of another
    Arrow type (integer or boolean categories, text in a numeric column): the chunk's frame then goes through
    ``OnnxPredictor.feed``, which converts and validates any type.
    """
    feed: dict[str, np.ndarray] = {}
    for name, kind in kinds.items():
        col = chunk.column(name)
        if pa.types.is_dictionary(col.type):  # pandas categoricals come back from parquet dictionary-encoded
            col = col.cast(col.type.value_type)
        if kind == "BYTES" and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            encoded = pc.fill_null(col, UNKNOWN).combine_chunks().dictionary_encode()
            strings = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
            feed[name] = strings[encoded.indices.to_numpy(zero_copy_only=False)]
        elif kind in ("FP32", "FP64") and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            # integers with nulls come back as float64 with NaN, as pandas reads them
            feed[name] = col.to_numpy().astype(np.float32 if kind == "FP32" else np.float64, copy=False)
        else:
            return None
    return feed


def _prediction_array(values: np.ndarray, datatype: str) -> pa.Array:
    """The prediction column: float32 values, or labels (string; int64 for integer labels; null where unscored)."""
    if datatype == "INT64":
        return pa.array(values, type=pa.int64(), from_pandas=True)
    if datatype == "BYTES":
        return pa.array(values, type=pa.string(), from_pandas=True)
    return pa.array(np.asarray(values, dtype=np.float32))


def _constant(value: str, n: int) -> pa.Array:
    """A string column holding one value (built from a one-entry dictionary: no per-row Python objects)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value])).cast(pa.string())
