"""Inference ids of batch predictions, and their capture for the quality join (``batch.capture_destination``).

Every output row carries an ``inference_id``: ``b-<key>-<row>``, where ``<key>`` is the first 16 hex digits of the
SHA-256 of the output folder, the input file's path and the pinned model version (:func:`file_key`) and ``<row>`` the
row's index in its input file. Nothing random goes in, so a rerun, a restart after a crash or ``--overwrite`` gives
every row the id it had before, and labels posted against an earlier attempt still match; two input files, two
output folders or two versions never share an id.

With a capture destination, each committed output file is also written in :mod:`rayml.feedback`'s capture layout
(route ``batch``, ``row`` 0, no inputs) as one Parquet file with a fixed name per input file,
``captures/model=<m>/version=<v>/hour=<hour of the commit>/batch-<key>.parquet`` (temp file, then a move), so
``rayml monitor quality`` judges batch predictions once their labels arrive. The capture comes after the output's
commit and never undoes it: a failure is logged and counted, and the rerun captures every committed file that has
no capture record yet (:meth:`~rayml.batch._ledger.OutputDir.capture_record`), overwriting rather than duplicating.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayml._private import fs
from rayml.batch._ledger import InputFile, LedgerEntry, OutputDir, delete_capture_file
from rayml.feedback import CAPTURE_SCHEMA, binary_classes, capture_dir, hour_partition
from rayml.models import ModelDir, segment_groups

logger = logging.getLogger("rayml.batch")

INFERENCE_ID = "inference_id"
ROUTE = "batch"


def file_key(output_uri: str, input_path: str, model_ref: str) -> str:
    """The 16 hex digits that name one input file's predictions by one version into one output folder."""
    return hashlib.sha256("\n".join((output_uri, input_path, model_ref)).encode()).hexdigest()[:16]


def inference_ids(key: str, start: int, n: int) -> pa.Array:
    """``b-<key>-<i>`` for the rows ``start .. start + n - 1`` of an input file (vectorised: no per-row Python)."""
    rows = pc.cast(pa.array(np.arange(start, start + n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(pa.scalar(f"b-{key}-"), rows, "")


@dataclass(frozen=True)
class BatchCapture:
    """How one run captures its committed outputs (plain values: pickled into every scoring actor)."""

    destination: str
    model: str
    version: int
    task: str
    class_labels: tuple[Any, ...]
    segment_columns: tuple[str, ...]
    prediction_column: str
    probability_columns: tuple[str, ...]

    @classmethod
    def of(cls, destination: str, model_dir: ModelDir, model: str, version: int, prediction_column: str) -> BatchCapture:
        return cls(
            destination=destination if "://" in destination else os.path.abspath(os.path.expanduser(destination)),
            model=model,
            version=version,
            task=model_dir.task,
            class_labels=tuple(model_dir.class_labels),
            segment_columns=tuple(model_dir.segment_columns),
            prediction_column=prediction_column,
            probability_columns=tuple(model_dir.probability_columns),
        )

    @property
    def model_ref(self) -> str:
        return f"{self.model}:{self.version}"

    def is_done(self, out: OutputDir, f: InputFile, entry: LedgerEntry) -> bool:
        """Whether ``f``'s output, as committed in ``entry``, has been captured to this destination."""
        record = out.capture_record(f)
        return (
            record is not None
            and record.get("committed_at") == entry.committed_at
            and record.get("destination") == self.destination
        )

    def write(self, out: OutputDir, f: InputFile, entry: LedgerEntry) -> int:
        """Capture the scored rows of ``f``'s committed output; returns the rows captured.

        The file's name is fixed per input file and its hour is the commit's, so writing it again replaces it. A
        capture of an earlier commit of the same input (it was rescored) in another hour is deleted first.
        """
        key = file_key(out.uri, f.path, self.model_ref)
        ts = dt.datetime.fromtimestamp(entry.committed_at, dt.timezone.utc)
        directory = capture_dir(self.destination, self.model, self.version, hour_partition(ts))
        final = fs.join(directory, f"batch-{key}.parquet")
        previous = out.capture_record(f)
        if previous and previous.get("path") and previous["path"] != final and previous.get("destination") == self.destination:
            delete_capture_file(str(previous["path"]))
        rows = self._write_file(out.path(entry.output), out, directory, final, ts)
        out.write_capture_record(
            f,
            {
                "input": f.path,
                "destination": self.destination,
                "path": final if rows else "",
                "rows": rows,
                "committed_at": entry.committed_at,
            },
        )
        return rows

    def _write_file(self, output_path: str, out: OutputDir, directory: str, final: str, ts: dt.datetime) -> int:
        """Stream the output file's scored rows into ``final`` (via a temp file); 0 rows writes nothing."""
        columns = [INFERENCE_ID, *self.segment_columns, self.prediction_column, *self.probability_columns, "error"]
        filesystem, d = fs.filesystem(directory)
        name = final.rsplit("/", 1)[-1]
        tmp = f"{d}/.{name}.{uuid.uuid4().hex}.tmp"  # readers skip dot-files; one temp name per writer
        rows = 0
        with contextlib.ExitStack() as stack:
            source = pq.ParquetFile(stack.enter_context(out.fs.open_input_file(output_path)))
            writer = None
            try:
                for batch in source.iter_batches(columns=columns):
                    table = self.rows(pa.Table.from_batches([batch]), ts)
                    if table.num_rows == 0:
                        continue
                    if writer is None:
                        filesystem.create_dir(d, recursive=True)
                        stream = stack.enter_context(filesystem.open_output_stream(tmp))
                        writer = pq.ParquetWriter(stream, CAPTURE_SCHEMA)
                    writer.write_table(table)
                    rows += table.num_rows
                if writer is not None:
                    writer.close()
            except BaseException:
                if writer is not None:
                    stack.close()
                    with contextlib.suppress(OSError):
                        filesystem.delete_file(tmp)
                raise
        if writer is None:  # nothing scored: no file (one from an earlier commit of this input goes)
            delete_capture_file(final)
            return 0
        fs.durable_move(filesystem, tmp, f"{d}/{name}")
        return rows

    def rows(self, output: pa.Table, ts: dt.datetime) -> pa.Table:
        """The capture rows (:data:`rayml.feedback.CAPTURE_SCHEMA`) of output rows; unscored rows are left out."""
        output = output.filter(pc.is_null(output.column("error")))
        n = output.num_rows
        prediction, predicted_label, probabilities = self._predictions(output)
        return pa.Table.from_arrays(
            [
                output.column(INFERENCE_ID).combine_chunks(),
                pa.array(np.zeros(n, dtype=np.int32)),
                pa.array(np.full(n, int(ts.timestamp() * 1000), dtype=np.int64)).cast(pa.timestamp("ms", tz="UTC")),
                pa.array([self.model] * n, pa.string()),
                pa.array(np.full(n, self.version, dtype=np.int64)),
                pa.array([ROUTE] * n, pa.string()),
                self._segments(output),
                prediction,
                predicted_label,
                probabilities,
                pa.nulls(n, pa.string()),
            ],
            schema=CAPTURE_SCHEMA,
        )

    def _segments(self, output: pa.Table) -> pa.Array:
        n = output.num_rows
        if not self.segment_columns:
            return pa.nulls(n, pa.string())
        codes, keys = segment_groups(output.select(list(self.segment_columns)).to_pandas(), self.segment_columns)
        return pa.array(np.asarray(keys, dtype=object)[codes] if n else [], pa.string())

    def _predictions(self, output: pa.Table) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(prediction, predicted_label, probabilities) as the batch output holds them for the model's task."""
        n = output.num_rows
        values = output.column(self.prediction_column).combine_chunks()
        if self.task == "regression":
            return values.cast(pa.float64()), pa.nulls(n, pa.string()), pa.nulls(n, pa.list_(pa.float64()))
        if self.task == "binary":
            p = values.cast(pa.float64())
            neg, pos = binary_classes(self.class_labels)
            label = pc.if_else(pc.greater_equal(p, 0.5), pa.scalar(pos, pa.string()), pa.scalar(neg, pa.string()))
            return p, label, pa.nulls(n, pa.list_(pa.float64()))
        # multiclass: the label column is string or int64; class_text of an integer is its decimal text, as here
        labels = values.cast(pa.string())
        probs = (
            np.column_stack(
                [output.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in self.probability_columns]
            )
            if self.probability_columns
            else np.zeros((n, 0))
        )
        k = probs.shape[1]
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)) if n else pa.array([0], pa.int32())
        return pa.nulls(n, pa.float64()), labels, pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)))


def capture_committed(
    capture: BatchCapture, out: OutputDir, done: Sequence[InputFile], ledger: dict[str, LedgerEntry]
) -> tuple[int, int, dict[str, str]]:
    """Capture the committed files of earlier invocations that have no capture yet (a failure, or capture turned on
    later). Returns (files captured, rows captured, input path -> error)."""
    files = rows = 0
    failed: dict[str, str] = {}
    for f in done:
        entry = ledger[f.path]
        if capture.is_done(out, f, entry):
            continue
        try:
            rows += capture.write(out, f, entry)
            files += 1
        except Exception as e:  # capture never fails the batch: the output is committed
            failed[f.path] = f"{type(e).__name__}: {e}"
            logger.warning("could not capture the predictions of %s: %s", f.path, failed[f.path])
    return files, rows, failed
