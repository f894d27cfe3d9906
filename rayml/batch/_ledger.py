"""Exactly-once output for batch scoring: staging, atomic commit per input file, a ledger, and the run manifest.

Layout of an output directory (local path or any pyarrow URI)::

    <name>-<id>.parquet              one committed output per input file (<id> = hash of the input path)
    _rayml_batch/manifest.json       the run: pinned model version, batch_run_id, output columns
    _rayml_batch/ledger/<id>.json    one entry per committed input: path, size, mtime -> output file, rows
    _rayml_batch/staging/<attempt>/  outputs being written by the current attempt
    _rayml_batch/capture/<id>.json   with ``batch.capture_destination``: where a committed input's predictions were
                                     captured (written after its capture file, so a missing record means "capture again")

Commit protocol for one input file: write the whole output under ``staging/``, move it to its final name (a rename
on a local or POSIX filesystem: readers see the old file or the complete new one, never a part), then write the
ledger entry (also write-then-rename). The ledger entry IS the commit. A crash before it leaves at most an output
file without an entry; the rerun scores that input again and replaces the file under the same name, so no row is
duplicated or lost. Readers of the directory (``pd.read_parquet(out)``, Spark, Ray Data) skip ``_``-prefixed paths.

Durability: on a local filesystem the staged file, the rename and the ledger entry are each fsynced (file and
directory) before the commit returns, so a committed file survives a power cut; object stores commit on close.

One run at a time per output directory: a run holds the folder's lease (``_rayml_lease.json``, see
:mod:`rayml._private.lease`) from before ``--overwrite`` deletes anything until it ends, and every commit checks that
its run still holds it. A second run on the same output gets :class:`~rayml.errors.LeaseHeldError` naming the first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

from rayml._private import fs
from rayml._private.lease import Lease
from rayml.errors import LeaseHeldError

logger = logging.getLogger("rayml.batch")

CONTROL_DIR = "_rayml_batch"
MANIFEST_FILE = "manifest.json"
LEDGER_DIR = "ledger"
STAGING_DIR = "staging"
DRIFT_DIR = "drift"  # per input file: its rows' counts in the model's reference bins (written before the commit)
DRIFT_FILE = "drift.json"  # the run's drift summary over every committed file
CAPTURE_RECORDS_DIR = "capture"  # per input file: the capture file written for its committed output
LEASE_FILE = "_rayml_lease.json"  # beside the control directory: --overwrite deletes that, not the lease
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class InputFile:
    """One input file and what identifies its content version (size + modification time)."""

    path: str
    size: int
    mtime_ns: int

    @property
    def input_id(self) -> str:
        """A stable id of the path (not of the content: a changed file keeps its id and replaces its output)."""
        return hashlib.sha256(self.path.encode()).hexdigest()[:16]

    @property
    def output_name(self) -> str:
        """The output file name: the input's name made safe, plus the id (two inputs named alike never collide)."""
        stem = os.path.basename(self.path.rstrip("/"))
        for ext in (".parquet", ".pq", ".csv"):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        stem = _UNSAFE.sub("_", stem).strip("._")[:80] or "part"
        return f"{stem}-{self.input_id[:8]}.parquet"


@dataclass(frozen=True)
class LedgerEntry:
    """A committed input file."""

    input: str
    size: int
    mtime_ns: int
    output: str
    rows: int
    committed_at: float
    attempt: str

    def matches(self, f: InputFile) -> bool:
        """Whether this entry commits ``f`` as it is now (same path, size and modification time)."""
        return self.input == f.path and self.size == f.size and self.mtime_ns == f.mtime_ns


def list_inputs(filesystem: pafs.FileSystem, paths: list[str]) -> list[InputFile]:
    """Size and modification time of each input file (sorted by path)."""
    infos = filesystem.get_file_info(sorted(paths))
    return [
        InputFile(i.path, int(i.size or 0), int(i.mtime_ns or 0) if i.mtime_ns is not None else 0)
        for i in infos
        if i.type == pafs.FileType.File
    ]


class OutputDir:
    """An output directory: its ledger, manifest, staging area and committed files.

    Args:
        uri: local path or pyarrow URI of the output directory.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(os.path.expanduser(uri))
        self.fs, self.root = fs.filesystem(self.uri)

    # --- paths -----------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def output_path(self, f: InputFile) -> str:
        return self.path(f.output_name)

    def staging_path(self, attempt: str, f: InputFile) -> str:
        return self.path(CONTROL_DIR, STAGING_DIR, attempt, f.output_name)

    def _ledger_path(self, input_id: str) -> str:
        return self.path(CONTROL_DIR, LEDGER_DIR, f"{input_id}.json")

    # --- one run at a time -----------------------------------------------------------------------------------------
    def lease(self, timeout_s: float | None = None) -> Lease:
        """The folder's lease (not taken yet): hold it for a whole run, ``--overwrite`` included."""
        return Lease(
            self.path(LEASE_FILE),
            f"batch output {self.uri}",
            timeout_s=timeout_s,
            hint="another `rayml batch` is writing this output: wait for it (or stop it), or use another --output; "
            "a crashed run's lease is taken over once its heartbeat is stale",
        )

    def check_lease(self, owner: str) -> None:
        """Raise unless the run ``owner`` still holds the folder's lease (checked before every commit).

        Raises:
            LeaseHeldError: another run took the lease over (this one's heartbeat went stale).
        """
        current = self.lease().read()
        if current is None or current.owner != owner:
            who = f"{current.host} pid {current.pid}" if current else "nobody"
            raise LeaseHeldError(
                f"batch output {self.uri}: this run no longer holds the folder's lease (held by {who}); not committing",
                hint="another run took the output over after this one's heartbeat went stale; let it finish",
            )

    # --- manifest --------------------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        return fs.read_json(self.path(CONTROL_DIR, MANIFEST_FILE))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        fs.write_json(self.path(CONTROL_DIR, MANIFEST_FILE), manifest, durable=True)

    # --- ledger ----------------------------------------------------------------------------------------------------
    def ledger(self) -> dict[str, LedgerEntry]:
        """Every committed input, by input path."""
        selector = pafs.FileSelector(self.path(CONTROL_DIR, LEDGER_DIR), allow_not_found=True)
        out: dict[str, LedgerEntry] = {}
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.path.endswith(".json"):
                continue  # a temp file of a write that was cut short
            try:
                with self.fs.open_input_stream(info.path) as f:
                    entry = LedgerEntry(**json.loads(f.read().decode()))
            except (ValueError, TypeError, OSError):
                logger.warning("ignoring an unreadable ledger entry %s (its input will be scored again)", info.path)
                continue
            out[entry.input] = entry
        return out

    def pending(self, inputs: list[InputFile]) -> tuple[list[InputFile], list[InputFile]]:
        """(inputs still to score, inputs already committed as they are now)."""
        ledger = self.ledger()
        todo, done = [], []
        for f in inputs:
            entry = ledger.get(f.path)
            if entry is not None and entry.matches(f):
                done.append(f)
                continue
            if entry is not None:
                logger.warning("input %s changed since it was committed (size/mtime); scoring it again", f.path)
            todo.append(f)
        return todo, done

    # --- drift counts ------------------------------------------------------------------------------------------------
    def write_drift_counts(self, f: InputFile, counts: dict[str, Any]) -> None:
        """``f``'s drift counts; written before its commit, so a committed file always has the counts of its output."""
        fs.write_json(self.path(CONTROL_DIR, DRIFT_DIR, f"{f.input_id}.json"), counts, durable=True)

    def drift_counts(self, inputs: list[InputFile]) -> dict[str, dict[str, Any]]:
        """The drift counts of each committed input that has them, by input path."""
        out = {}
        for f in inputs:
            counts = fs.read_json(self.path(CONTROL_DIR, DRIFT_DIR, f"{f.input_id}.json"))
            if counts is not None:
                out[f.path] = counts
        return out

    @property
    def drift_summary_path(self) -> str:
        return self.path(CONTROL_DIR, DRIFT_FILE)

    # --- capture records ---------------------------------------------------------------------------------------------
    def _capture_record_path(self, f: InputFile) -> str:
        return self.path(CONTROL_DIR, CAPTURE_RECORDS_DIR, f"{f.input_id}.json")

    def capture_record(self, f: InputFile) -> dict[str, Any] | None:
        """Where ``f``'s committed predictions were captured (see ``rayml.batch._capture``); None when they were not."""
        try:
            return fs.read_json(self._capture_record_path(f))
        except (ValueError, OSError):  # torn: capture again
            return None

    def write_capture_record(self, f: InputFile, record: dict[str, Any]) -> None:
        fs.write_json(self._capture_record_path(f), record, durable=True)

    def capture_records(self) -> list[dict[str, Any]]:
        """Every capture record of this output (unreadable ones skipped)."""
        selector = pafs.FileSelector(self.path(CONTROL_DIR, CAPTURE_RECORDS_DIR), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.path.endswith(".json"):
                continue
            try:
                with self.fs.open_input_stream(info.path) as stream:
                    out.append(json.loads(stream.read().decode()))
            except (ValueError, OSError):
                continue
        return out

    # --- writing and committing ------------------------------------------------------------------------------------
    def open_staging(self, attempt: str, f: InputFile):
        """An output stream for ``f``'s staged output (the directory is created)."""
        path = self.staging_path(attempt, f)
        self.fs.create_dir(os.path.dirname(path), recursive=True)
        return self.fs.open_output_stream(path)

    def commit(self, attempt: str, f: InputFile, rows: int, owner: str | None = None) -> LedgerEntry:
        """Move ``f``'s staged output into place, then record it in the ledger (the commit point).

        Both are fsynced (file and directory) on a local filesystem before this returns.

        Args:
            attempt: the staging attempt.
            f: the input file.
            rows: rows in its output.
            owner: the run's lease owner; when given, the commit is refused unless the run still holds the lease.

        Raises:
            LeaseHeldError: ``owner`` no longer holds the folder's lease.
        """
        if owner is not None:
            self.check_lease(owner)
        staged, final = self.staging_path(attempt, f), self.output_path(f)
        # atomic rename on local/POSIX filesystems; replaces an uncommitted earlier output
        fs.durable_move(self.fs, staged, final)
        entry = LedgerEntry(
            input=f.path,
            size=f.size,
            mtime_ns=f.mtime_ns,
            output=f.output_name,
            rows=int(rows),
            committed_at=time.time(),
            attempt=attempt,
        )
        fs.write_json(self._ledger_path(f.input_id), asdict(entry), durable=True)
        return entry

    def discard_staging(self, attempt: str | None = None) -> None:
        """Remove staged outputs: of one attempt, or (None) of every earlier attempt (they can never commit).

        Only the holder of the folder's lease calls it, so no live run's staging is deleted.
        """
        target = self.path(CONTROL_DIR, STAGING_DIR, attempt) if attempt else self.path(CONTROL_DIR, STAGING_DIR)
        if self.fs.get_file_info(target).type == pafs.FileType.Directory:
            self.fs.delete_dir(target)

    def reset(self, inputs: list[InputFile]) -> int:
        """``--overwrite``: delete the control directory and every output this tool wrote (nothing else).

        The capture files of this output's predictions go too (they capture the outputs being deleted; the rerun
        captures its own).

        Returns:
            The number of output files deleted (capture files not counted).
        """
        for record in self.capture_records():
            if record.get("path"):
                delete_capture_file(str(record["path"]))
        names = {e.output for e in self.ledger().values()} | {f.output_name for f in inputs}
        deleted = 0
        for name in sorted(names):
            p = self.path(name)
            if self.fs.get_file_info(p).type == pafs.FileType.File:
                self.fs.delete_file(p)
                deleted += 1
        control = self.path(CONTROL_DIR)
        if self.fs.get_file_info(control).type == pafs.FileType.Directory:
            self.fs.delete_dir(control)
        return deleted


def delete_capture_file(path: str) -> None:
    """Delete a capture file this tool wrote (local path or URI); a file already gone is fine."""
    filesystem, p = fs.filesystem(path)
    if filesystem.get_file_info(p).type == pafs.FileType.File:
        filesystem.delete_file(p)


def new_attempt_id() -> str:
    """An id for one invocation (staging directory name; recorded in ledger entries)."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
