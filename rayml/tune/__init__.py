"""Hyperparameter search on Ray Tune: search spaces from config, ASHA or FIFO, random/grid or Optuna, resumable,
one MLflow child run per trial, and the best model exported and registered like ``rayml train``'s."""

from rayml.tune._outputs import TuneResult
from rayml.tune._report import (
    CURVES_FILE as CURVES_FILE,
    RESULTS_FILE as RESULTS_FILE,
    TrialSummary,
    table_rows as table_rows,
)
from rayml.tune._search import STATE_FILE as STATE_FILE, tune
from rayml.tune._space import (
    param_space as param_space,
    search_name_for as search_name_for,
    trial_config as trial_config,
)

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "TrialSummary",
    "TuneResult",
    "tune",
]
