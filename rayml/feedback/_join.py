"""The join of captured predictions with their labels, on Ray Data (see :mod:`rayml.feedback._quality`).

``ray.data.read_parquet`` reads only the columns the task needs (never ``inputs``); each batch of captured rows is
joined (pyarrow hash join, the batch as the build side) with the model's labels, deduplicated once and put in the
object store once, and answers a small table: its labelled rows, its captured-row counts per ``(version, route)``,
and which labels it matched. Plain tasks, no actors and no shuffle: nothing waits for a CPU that another stage holds.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# batches of this many captured rows: each batch's join probes every label once, so fewer, larger batches cost less
# (a 1M-row batch of the needed columns is ~50 MB)
JOIN_BATCH_ROWS = 1_000_000
# the columns each task's metrics read, besides the keys
TASK_COLUMNS = {"regression": ["prediction"], "binary": ["prediction"], "multiclass": ["predicted_label", "probabilities"]}
_KEY_COLUMNS = ["inference_id", "row", "ts", "version", "route"]
# what each batch answers: kind 0 = a labelled captured row in the window, 1 = captured rows of (version, route)
# in the window (n), 2 = a label matched by a captured row outside the window (only _li)
_OUT_SCHEMA = pa.schema(
    [
        pa.field("_kind", pa.int8()),
        pa.field("version", pa.int64()),
        pa.field("route", pa.string()),
        pa.field("n", pa.int64()),
        pa.field("prediction", pa.float64()),
        pa.field("predicted_label", pa.string()),
        pa.field("probabilities", pa.list_(pa.float64())),
        pa.field("label", pa.string()),
        pa.field("delay_s", pa.float64()),
        pa.field("_li", pa.int64()),
    ]
)
_LABELLED, _COUNTS, _MATCHED_OUTSIDE = 0, 1, 2
_HOUR_RE = re.compile(r"/hour=(\d{4}-\d{2}-\d{2}T\d{2})/")


def join_labels(
    files: list[str], labels: pa.Table, task: str, since: dt.datetime | None
) -> tuple[pa.Table, dict[tuple[int, str], int], int]:
    """The labelled rows in the window (``_li``: the label's index in ``labels``), captured rows per (version, route)
    in the window, and how many labels matched a captured row (at any time)."""
    import ray

    from rayml._private.ray_session import ensure_ray

    ensure_ray()
    window_files, older_files = _split_by_hour(files, since) if since else (files, [])
    counts: dict[tuple[int, str], int] = {}
    matched = np.zeros(labels.num_rows, dtype=bool)
    since_ms = int(since.timestamp() * 1000) if since else None
    labels_ref = ray.put(labels)
    join = functools.partial(_join_batch, labels_ref=labels_ref, since_ms=since_ms)
    datasets = []
    if window_files:
        columns = _KEY_COLUMNS + TASK_COLUMNS[task]
        datasets.append(ray.data.read_parquet(window_files, columns=columns, partitioning=None))
    if older_files and labels.num_rows:
        # hours that ended before the window: only their ids are read, so their labels count as matched, not unknown
        datasets.append(ray.data.read_parquet(older_files, columns=["inference_id", "row"], partitioning=None))
    parts = []
    for ds in datasets:
        mapped = ds.map_batches(join, batch_format="pyarrow", batch_size=JOIN_BATCH_ROWS, zero_copy_batch=True)
        for block in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
            batch = cast(pa.Table, block)
            kind = batch["_kind"].to_numpy(zero_copy_only=False)
            li = batch["_li"].filter(pc.is_valid(batch["_li"])).to_numpy(zero_copy_only=False)
            matched[li] = True
            count_rows = batch.filter(pa.array(kind == _COUNTS))
            for v, r, n in zip(
                count_rows["version"].to_pylist(), count_rows["route"].to_pylist(), count_rows["n"].to_pylist(), strict=True
            ):
                counts[(int(v), str(r))] = counts.get((int(v), str(r)), 0) + int(n)
            labelled = batch.filter(pa.array(kind == _LABELLED))
            if labelled.num_rows:
                parts.append(labelled.drop_columns(["_kind", "n"]))
    del labels_ref
    joined = pa.concat_tables(parts) if parts else _OUT_SCHEMA.empty_table().drop_columns(["_kind", "n"])
    return joined, counts, int(matched.sum())


def _split_by_hour(files: list[str], since: dt.datetime) -> tuple[list[str], list[str]]:
    """Files that may hold predictions made since ``since``, and files of hours that ended before it (from their
    ``hour=`` folder; a file without one may hold either, so it is in the first list)."""
    cutoff = since.astimezone(dt.timezone.utc)
    window, older = [], []
    for f in files:
        m = _HOUR_RE.search(f)
        if m:
            start = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H").replace(tzinfo=dt.timezone.utc)
            if start + dt.timedelta(hours=1) <= cutoff:
                older.append(f)
                continue
        window.append(f)
    return window, older


def _join_batch(batch: pa.Table, *, labels_ref: Any, since_ms: int | None) -> pa.Table:
    """Join one batch of captured rows with the labels (runs in a Ray Data task)."""
    import ray

    labels: pa.Table = ray.get(labels_ref)  # zero-copy from the object store: buffers are not copied per batch
    n = batch.num_rows
    keys = pa.table({"inference_id": batch["inference_id"], "row": batch["row"], "_bi": pa.array(np.arange(n, dtype=np.int64))})
    # the labels on the left: Arrow builds its hash table on the right, the (smaller) batch
    pairs = labels.select(["inference_id", "row", "_li"]).join(
        keys, ["inference_id", "row"], join_type="inner", use_threads=False
    )
    bi = pairs["_bi"].to_numpy()
    li = pairs["_li"].to_numpy()
    if "ts" not in batch.column_names:  # a file of an hour before the window: only its ids were read
        window = np.zeros(n, dtype=bool)
    elif since_ms is None:
        window = np.ones(n, dtype=bool)
    else:
        window = pc.cast(batch["ts"], pa.int64()).to_numpy(zero_copy_only=False) >= since_ms
    parts = []
    inside = window[bi]
    if inside.any():
        take_b = pa.array(bi[inside])
        take_l = pa.array(li[inside])
        ts_ms = pc.cast(batch["ts"].take(take_b), pa.int64()).to_numpy(zero_copy_only=False)
        got_ms = pc.cast(labels["received_at"].take(take_l), pa.int64()).to_numpy(zero_copy_only=False)
        cols: dict[str, Any] = {
            "version": batch["version"].take(take_b),
            "route": batch["route"].take(take_b),
            "label": labels["label"].take(take_l),
            "delay_s": pa.array((got_ms - ts_ms) / 1000.0),
            "_li": take_l,
        }
        for c in ("prediction", "predicted_label", "probabilities"):
            if c in batch.column_names:
                cols[c] = batch[c].take(take_b)
        parts.append(_out(_LABELLED, int(inside.sum()), cols))
    if window.any():
        in_window = batch.select(["version", "route"]).filter(pa.array(window))
        grouped = in_window.group_by(["version", "route"], use_threads=False).aggregate([([], "count_all")])
        parts.append(
            _out(_COUNTS, grouped.num_rows, {"version": grouped["version"], "route": grouped["route"], "n": grouped["count_all"]})
        )
    outside = li[~inside]
    if len(outside):
        unique = np.unique(outside)
        parts.append(_out(_MATCHED_OUTSIDE, len(unique), {"_li": pa.array(unique)}))
    return pa.concat_tables(parts) if parts else _OUT_SCHEMA.empty_table()


def _out(kind: int, n: int, cols: Mapping[str, Any]) -> pa.Table:
    arrays = []
    for f in _OUT_SCHEMA:
        if f.name == "_kind":
            arrays.append(pa.array(np.full(n, kind, dtype=np.int8)))
        elif f.name in cols:
            value = cols[f.name]
            value = value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value
            arrays.append(value.cast(f.type) if value.type != f.type else value)
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=_OUT_SCHEMA)
