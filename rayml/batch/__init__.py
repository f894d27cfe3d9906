"""Batch scoring on Ray Data: single models and model sets, staged + atomically committed per input file, restartable
from a ledger (a rerun never duplicates or drops rows)."""

from rayml.batch._ledger import (
    CONTROL_DIR as CONTROL_DIR,
    InputFile as InputFile,
    LedgerEntry as LedgerEntry,
    OutputDir as OutputDir,
    list_inputs as list_inputs,
)
from rayml.batch._run import BatchSummary, FileResult, run_batch
from rayml.batch._score import (
    LINEAGE_COLUMNS as LINEAGE_COLUMNS,
    FileScorer as FileScorer,
    ScoreSpec as ScoreSpec,
    key_columns as key_columns,
)

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "BatchSummary",
    "FileResult",
    "run_batch",
]
