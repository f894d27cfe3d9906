"""Hyperparameter search on Ray Tune: search spaces from config, ASHA or FIFO, random/grid or Optuna, resumable,
one MLflow child run per trial, and the best model exported and registered like ``rayml train``'s."""

from rayml.tune._outputs import TuneResult
from rayml.tune._report import CURVES_FILE, RESULTS_FILE, TrialSummary, table_rows
from rayml.tune._search import STATE_FILE, tune
from rayml.tune._space import param_space, search_name_for, trial_config

__all__ = [
    "CURVES_FILE",
    "RESULTS_FILE",
    "STATE_FILE",
    "TrialSummary",
    "TuneResult",
    "param_space",
    "search_name_for",
    "table_rows",
    "trial_config",
    "tune",
]
