"""Batch scoring on Ray Data: single models and model sets, staged + atomically committed per input file, restartable
from a ledger (a rerun never duplicates or drops rows)."""

from rayml.batch._ledger import CONTROL_DIR, InputFile, LedgerEntry, OutputDir, list_inputs
from rayml.batch._run import BatchSummary, FileResult, run_batch
from rayml.batch._score import LINEAGE_COLUMNS, FileScorer, ScoreSpec, key_columns

__all__ = [
    "CONTROL_DIR",
    "LINEAGE_COLUMNS",
    "BatchSummary",
    "FileResult",
    "FileScorer",
    "InputFile",
    "LedgerEntry",
    "OutputDir",
    "ScoreSpec",
    "key_columns",
    "list_inputs",
    "run_batch",
]
