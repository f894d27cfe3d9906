"""A many-models run's state on storage, so a rerun after a crash skips the segments that already trained.

Layout under ``<train.storage_path>/manymodels/<run_name>/`` (local dir or any pyarrow URI)::

    rayml_manymodels.json      status (running | failed | trained | registered), MLflow run id, registered version,
                               summary (written by the run's rayml.train.ResumableRun)
    global.onnx / global.json  the global (fallback) model and its record
    segments/<index>.onnx      a trained segment's model
    segments/<index>.json      its record: key, rows, metrics, reference statistics

A record is written after its model file, so a record on storage always has a complete model next to it.
"""

from __future__ import annotations

import json
import os
import uuid

import pyarrow.fs as pafs

from rayml._private import fs
from rayml.manymodels._fit import SegmentOutcome

STATE_FILE = "rayml_manymodels.json"
GLOBAL = "global"


def _write_bytes(path: str, data: bytes) -> None:
    filesystem, p = fs.filesystem(path)
    filesystem.create_dir(os.path.dirname(p), recursive=True)
    tmp = f"{p}.{uuid.uuid4().hex}.tmp"
    with filesystem.open_output_stream(tmp) as f:
        f.write(data)
    filesystem.move(tmp, p)


def _read_bytes(path: str) -> bytes | None:
    filesystem, p = fs.filesystem(path)
    if filesystem.get_file_info(p).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(p) as f:
        return f.read()


class RunState:
    """Reads and writes the trained models of one run's directory (the state file is the run's own)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def _paths(self, outcome_index: int | None) -> tuple[str, str]:
        base = fs.join(self.run_dir, GLOBAL) if outcome_index is None else fs.join(self.run_dir, "segments", str(outcome_index))
        return f"{base}.onnx", f"{base}.json"

    def save(self, outcome: SegmentOutcome, is_global: bool = False) -> None:
        """Persist a trained outcome (failed and fallback ones are cheap to recompute and are retried on a rerun)."""
        if outcome.status != "trained" or outcome.onnx is None:
            return
        model_path, record_path = self._paths(None if is_global else outcome.index)
        _write_bytes(model_path, outcome.onnx)
        _write_bytes(record_path, json.dumps({**outcome.record(), "stats": outcome.stats}, default=float).encode())

    def load(self, key: str, index: int | None) -> SegmentOutcome | None:
        """The saved outcome of a segment (``index``) or of the global model (None), if it matches ``key``."""
        model_path, record_path = self._paths(index)
        raw = _read_bytes(record_path)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None  # a torn record: train again
        if record.get("key") != key:
            return None  # a different data set produced this index; never mix them
        onnx = _read_bytes(model_path)
        if onnx is None:
            return None
        stats = record.pop("stats", None)
        return SegmentOutcome(**record, onnx=onnx, stats=stats)
