"""Ground-truth labels from a file (`rayml labels upload`): read, validate as a whole, store only new ones.

A file is stored whole or not at all: one invalid entry refuses it (the problems are listed), so a fixed file can be
uploaded again without half of it already in. Labels of predictions that already have one are duplicates (the first
label stays, see :mod:`rayml.feedback._store`) and are not stored again: uploading a file twice changes nothing.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from rayml._private import fs
from rayml.errors import DataError
from rayml.feedback._store import CAPTURE_SCHEMA, CAPTURES, first_labels, list_files, read_labels, validate_labels, write_labels

LABEL_FILE_COLUMNS = ("inference_id", "label", "row")
LABEL_FILE_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_HINT = (
    "give a CSV, Parquet, JSON (a list of objects) or JSONL file with columns inference_id and label, and optionally "
    "row (the row's index in its request, default 0); inference ids are the x-rayml-inference-id of the predictions"
)


@dataclass
class LabelUpload:
    """What uploading labels did: counts, or the problems that refused the file (then nothing was stored)."""

    entries: int
    accepted: int = 0
    new: int = 0
    matched: int = 0
    unknown: int = 0
    duplicates: int = 0
    conflicts: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    written: str | None = None

    @property
    def refused(self) -> bool:
        return self.problem_count > 0


def label_classes(task: str, class_labels: Sequence[Any]) -> list[Any]:
    """The classes a label of ``task`` may name: the model's, or 0 and 1 for a binary model that records none."""
    if task == "binary" and len(class_labels) != 2:
        return [0, 1]
    return list(class_labels)


def read_label_file(path: str) -> list[dict[str, Any]]:
    """The entries of a labels file (a local path or URI): CSV, Parquet, JSON (a list of objects) or JSONL.

    Table formats give one entry per row with the columns ``inference_id``, ``label`` and optionally ``row`` (a
    missing cell = not given); JSON entries are passed on as they are, for :func:`validate_labels` to judge.

    Raises:
        DataError: the file is missing, of another format, unreadable, or its columns are not those.
    """
    suffix = PurePosixPath(path.split("://", 1)[-1]).suffix.lower()
    kind = LABEL_FILE_FORMATS.get(suffix)
    if kind is None:
        raise DataError(
            f"labels file {path!r} is not .csv, .parquet, .json or .jsonl (got {suffix or 'no suffix'!r})", hint=_HINT
        )
    filesystem, p = fs.filesystem(path)
    if filesystem.get_file_info(p).type != pafs.FileType.File:
        raise DataError(f"labels file {path!r} does not exist", hint="check the path (a local file, or a URI: s3://...)")
    with filesystem.open_input_file(p) as f:
        data = f.read()
    try:
        if kind == "json":
            entries = json.loads(data)
            if not isinstance(entries, list):
                raise DataError(f"labels file {path!r} holds a JSON {type(entries).__name__}, not a list of objects", hint=_HINT)
            return entries
        if kind == "jsonl":
            return [_json_line(line, i, path) for i, line in enumerate(data.decode().splitlines(), start=1) if line.strip()]
        import pandas as pd

        if kind == "csv":
            df = pd.read_csv(io.BytesIO(data), dtype={"inference_id": str}, keep_default_na=True)
        else:
            df = pd.read_parquet(io.BytesIO(data))
    except DataError:
        raise
    except Exception as e:  # pandas / pyarrow / json raise many types for a malformed file
        raise DataError(f"cannot read labels file {path!r} as {kind}: {e}", hint=_HINT) from e
    missing = [c for c in ("inference_id", "label") if c not in df.columns]
    extra = [str(c) for c in df.columns if c not in LABEL_FILE_COLUMNS]
    if missing or extra:
        what = "; ".join(
            part
            for part in (
                f"missing column(s) {missing}" if missing else "",
                f"unknown column(s) {extra[:10]}" if extra else "",
            )
            if part
        )
        raise DataError(f"labels file {path!r}: {what} (columns: {[str(c) for c in df.columns][:20]})", hint=_HINT)
    return [_table_entry(r) for r in df.to_dict("records")]


def _json_line(line: str, number: int, path: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"labels file {path!r}, line {number}: not JSON ({e.msg})", hint=_HINT) from e


def _table_entry(record: Mapping[Any, Any]) -> dict[str, Any]:
    """A table row as a label entry: empty cells left out, whole-number floats (a column with gaps) made ints."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if hasattr(v, "item"):
            v = v.item()
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if k == "row" and isinstance(v, float) and v.is_integer():
            v = int(v)
        out[str(k)] = v
    return out


def upload_labels(
    destination: str, model: str, entries: Any, task: str, class_labels: Sequence[Any], source: str = "upload"
) -> LabelUpload:
    """Validate ``entries`` as a whole and store the new labels next to ``model``'s captures.

    Args:
        destination: where the model's captures are (and its labels go).
        model: the model's name.
        entries: a list of ``{"inference_id": str, "label": value, "row": int (default 0)}``.
        task, class_labels: the model's (a label must be a finite number, or one of the classes).
        source: recorded with each label (``upload``).

    Returns:
        The counts: ``accepted`` (valid entries), ``new`` (stored now), ``duplicates`` (their prediction already had
        a label, stored or earlier in ``entries``; ``conflicts`` of them disagree with it), ``matched`` / ``unknown``
        (a captured prediction has / no captured prediction has their ``(inference_id, row)`` yet). With any invalid
        entry, ``problems`` says why and nothing is stored.
    """
    n = len(entries) if isinstance(entries, list) else 1
    batch = validate_labels(entries, model, task, label_classes(task, class_labels), source)
    if batch.problem_count:
        return LabelUpload(n, problems=batch.problems, problem_count=batch.problem_count)
    table = batch.table
    firsts = first_labels(table)
    keys = ["inference_id", "row"]
    stored = read_labels(destination, model, columns=[*keys, "label"]).rename_columns([*keys, "_kept"])
    # which entries repeat a label: earlier in this file, or already stored (the stored one wins)
    kept = firsts.select([*keys, "label"]).rename_columns([*keys, "_first"])
    with_first = table.join(kept, keys, join_type="left outer").join(stored, keys, join_type="left outer")
    winner = pc.coalesce(with_first["_kept"], with_first["_first"])
    conflicts = int(pc.sum(pc.not_equal(with_first["label"], winner)).as_py() or 0)
    already = firsts.join(stored.select(keys), keys, join_type="left semi")
    new = firsts.join(stored.select(keys), keys, join_type="left anti")
    unique_keys = firsts.select(keys)
    matched = _captured(destination, model, unique_keys)
    written = write_labels(destination, model, new)
    return LabelUpload(
        n,
        accepted=table.num_rows,
        new=new.num_rows,
        matched=matched,
        unknown=unique_keys.num_rows - matched,
        duplicates=table.num_rows - firsts.num_rows + already.num_rows,
        conflicts=conflicts,
        written=written,
    )


def _captured(destination: str, model: str, keys: pa.Table) -> int:
    """How many of the (unique) ``keys`` name a captured prediction (streams only the matching ids' rows)."""
    import pyarrow.dataset as pads

    files = list_files(destination, CAPTURES, model)
    if not files or keys.num_rows == 0:
        return 0
    filesystem, _ = fs.filesystem(files[0])
    dataset = pads.dataset([fs.filesystem(f)[1] for f in files], schema=CAPTURE_SCHEMA, format="parquet", filesystem=filesystem)
    ids = pc.unique(keys["inference_id"])
    found = dataset.to_table(columns=["inference_id", "row"], filter=pc.field("inference_id").isin(ids))
    found = found.group_by(["inference_id", "row"], use_threads=False).aggregate([])
    return keys.join(found, ["inference_id", "row"], join_type="left semi").num_rows
