"""Where captured predictions and ground-truth labels live, and their Parquet schemas: the one place that knows.

A capture destination (``serve.models.<m>.capture.destination``: a local folder or any pyarrow URI) holds::

    <destination>/captures/model=<m>/version=<v>/hour=<YYYY-MM-DDTHH>/part-<uuid>.parquet
    <destination>/labels/model=<m>/date=<YYYY-MM-DD>/part-<uuid>.parquet

Every file carries all of its columns (``model`` and ``version`` included): the folder names only organise and prune,
so readers take the files with ``partitioning=None``. Files appear atomically (written under a temporary name, then
moved), so a reader never sees half a file and a crash leaves at most a ``.tmp`` that readers skip.

One captured row is one row of one request to one version: ``inference_id`` (the request's, from the caller's
``x-rayml-inference-id`` header or generated) and ``row`` (its index in the request) identify the prediction; the
primary answer and a shadow's answer to the same request share them (``route`` tells which). A label names
``(inference_id, row)``; the first label of a prediction is the one used (a repeat is a duplicate, a different later
label a conflict: both are counted and ignored, so posting the same labels twice changes nothing).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayml._private import fs

CAPTURES, LABELS = "captures", "labels"

CAPTURE_SCHEMA = pa.schema(
    [
        pa.field("inference_id", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("route", pa.string(), nullable=False),  # primary | pinned | shadow | batch
        pa.field("segment", pa.string()),
        pa.field("prediction", pa.float64()),  # regression: the value; binary: the probability of class 1
        pa.field("predicted_label", pa.string()),  # binary / multiclass: the predicted class, as text
        pa.field("probabilities", pa.list_(pa.float64())),  # multiclass: one per class, in class_labels order
        pa.field("inputs", pa.string()),  # the row's inputs as JSON, excluded columns left out
    ]
)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("inference_id", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),  # regression: the number as text; classes: the class as text
        pa.field("received_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # http | upload
    ]
)

INFERENCE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_ROW = 2**31 - 1


def check_inference_id(value: str) -> str | None:
    """Why ``value`` cannot be an inference id (None when it can): 1-128 of ``A-Z a-z 0-9 _ . : -``."""
    if not isinstance(value, str) or not INFERENCE_ID_PATTERN.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return f"inference id {shown} is not 1-128 characters of letters, digits, '_', '.', ':' or '-'"
    return None


def new_inference_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def hour_partition(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H")


def capture_dir(destination: str, model: str, version: int, hour: str) -> str:
    return fs.join(destination, CAPTURES, f"model={model}", f"version={version}", f"hour={hour}")


def labels_dir(destination: str, model: str, date: str) -> str:
    return fs.join(destination, LABELS, f"model={model}", f"date={date}")


def write_table(directory: str, table: pa.Table) -> str:
    """Write ``table`` as one new Parquet file in ``directory`` (a local path or URI), atomically; returns its path."""
    filesystem, d = fs.filesystem(directory)
    filesystem.create_dir(d, recursive=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    final = f"{d}/{name}"
    tmp = f"{d}/.{name}.tmp"
    with filesystem.open_output_stream(tmp) as out:
        pq.write_table(table, out)
    filesystem.move(tmp, final)
    return final if "://" not in directory else fs.join(directory, name)


def list_files(destination: str, kind: str, model: str) -> list[str]:
    """Every committed Parquet file of ``kind`` (``captures`` | ``labels``) for ``model``, sorted (URIs stay URIs)."""
    root = fs.join(destination, kind, f"model={model}")
    filesystem, base = fs.filesystem(root)
    if filesystem.get_file_info(base).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    found = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
    )
    if "://" in root:
        scheme = root.split("://", 1)[0]
        return [f"{scheme}://{p}" for p in found]
    return found


# --- labels -----------------------------------------------------------------------------------------------------


@dataclass
class LabelBatch:
    """Validated labels, ready to store, and what was wrong with the rest."""

    table: pa.Table
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def accepted(self) -> int:
        return self.table.num_rows


MAX_PROBLEMS_SHOWN = 5


def label_text(value: Any, task: str, class_labels: Sequence[Any]) -> str | None:
    """The stored text of a label of ``task``, or None when ``value`` is not a valid one.

    Regression: a finite number (bools are not numbers). Binary and multiclass: one of ``class_labels``, compared as
    text (``1`` and ``"1"`` name the same class; ``True`` names a class ``True`` or ``1``).
    """
    if task == "regression":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    return None
                return repr(number) if math.isfinite(number) else None
            return None
        number = float(value)
        return repr(number) if math.isfinite(number) else None
    wanted = {class_text(c) for c in class_labels}
    text = class_text(value)
    return text if text is not None and text in wanted else None


def class_text(value: Any) -> str | None:
    """A class label as text, the same for the model's labels, predictions and posted labels (``1.0`` -> ``1``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return class_text(value.item())
    return None


def binary_classes(class_labels: Sequence[Any]) -> tuple[str, str]:
    """A binary model's (negative, positive) classes as text: its first two classes, or 0 and 1 when it records none.
    The positive class is the one whose probability the model outputs."""
    neg, pos = (class_text(c) for c in (list(class_labels) or [0, 1])[:2])
    return neg or "0", pos or "1"


def validate_labels(
    entries: Any, model: str, task: str, class_labels: Sequence[Any], source: str, received_at: dt.datetime | None = None
) -> LabelBatch:
    """Check posted or uploaded labels: a list of ``{"inference_id": str, "label": value, "row": int (default 0)}``.

    Entries with problems are left out and described (the first :data:`MAX_PROBLEMS_SHOWN`); the rest are returned
    as a table of :data:`LABEL_SCHEMA`. A body that is not a list of objects is one problem.
    """
    received_at = received_at or utc_now()
    if not isinstance(entries, list):
        return LabelBatch(
            LABEL_SCHEMA.empty_table(),
            [f'expected a JSON list of {{"inference_id": ..., "label": ...}} objects, got {type(entries).__name__}'],
            1,
        )
    ids: list[str] = []
    rows: list[int] = []
    texts: list[str] = []
    problems: list[str] = []
    count = 0
    want = "a finite number" if task == "regression" else f"one of the classes {list(class_labels)[:20]}"

    def problem(i: int, why: str) -> None:
        nonlocal count
        count += 1
        if len(problems) < MAX_PROBLEMS_SHOWN:
            problems.append(f"entry {i}: {why}")

    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            problem(i, f"expected an object, got {type(e).__name__}")
            continue
        extra = sorted(set(e) - {"inference_id", "label", "row"})
        if extra:
            problem(i, f"unknown fields {extra[:5]} (allowed: inference_id, label, row)")
            continue
        iid = e.get("inference_id")
        why = check_inference_id(iid) if iid is not None else "inference_id is missing"
        if why or not isinstance(iid, str):
            problem(i, why or "inference_id is not a string")
            continue
        row = e.get("row", 0)
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= MAX_ROW:
            problem(i, f"row {row!r} is not a whole number from 0 (the row's index in its request)")
            continue
        if "label" not in e or e["label"] is None:
            problem(i, "label is missing")
            continue
        text = label_text(e["label"], task, class_labels)
        if text is None:
            shown = repr(e["label"])
            problem(i, f"label {shown[:40]} is not {want} (model {model!r} is {task})")
            continue
        ids.append(iid)
        rows.append(row)
        texts.append(text)
    n = len(ids)
    table = pa.Table.from_pydict(
        {
            "inference_id": ids,
            "row": pa.array(rows, pa.int32()),
            "label": texts,
            "received_at": pa.array([received_at] * n, pa.timestamp("ms", tz="UTC")),
            "model": [model] * n,
            "source": [source] * n,
        },
        schema=LABEL_SCHEMA,
    )
    return LabelBatch(table, problems, count)


def write_labels(destination: str, model: str, table: pa.Table) -> str | None:
    """Store validated labels next to ``model``'s captures; returns the file written (None for an empty table)."""
    if table.num_rows == 0:
        return None
    date = utc_now().strftime("%Y-%m-%d")
    return write_table(labels_dir(destination, model, date), table.cast(LABEL_SCHEMA))


def read_labels(destination: str, model: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Every stored label of ``model``, the first per ``(inference_id, row)`` (by ``received_at``, then file order)."""
    files = list_files(destination, LABELS, model)
    if not files:
        empty = LABEL_SCHEMA.empty_table()
        return empty.select(list(columns)) if columns else empty
    filesystem, _ = fs.filesystem(files[0])
    paths = [fs.filesystem(f)[1] for f in files]
    table = pq.ParquetDataset(paths, filesystem=filesystem, schema=LABEL_SCHEMA, partitioning=None).read()
    return first_labels(table).select(list(columns) if columns else LABEL_SCHEMA.names)


def first_labels(table: pa.Table) -> pa.Table:
    """The first label of each ``(inference_id, row)`` in ``table`` (stable: ties keep table order)."""
    if table.num_rows == 0:
        return table
    import pyarrow.compute as pc

    order = pc.sort_indices(table, sort_keys=[("received_at", "ascending")])  # stable
    table = table.take(order)
    table = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    firsts = table.group_by(["inference_id", "row"], use_threads=False).aggregate([("_i", "min")])
    keep = pc.sort_indices(firsts["_i_min"])
    return table.take(firsts["_i_min"].take(keep)).drop_columns(["_i"])


def local_destination(path: str) -> str:
    """A capture destination as stored in a spec: URIs as given, local paths absolute."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))
