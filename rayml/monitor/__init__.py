"""Monitoring: drift and data-quality statistics against reference bins, offline drift reports, training health."""

from rayml.monitor.drift import DriftCounter, FeatureCounts, drift_report, js_distance, linf, psi
from rayml.monitor.report import drift_of_frame, write_report
from rayml.monitor.training import TrainingOutcome, record_training_outcome, training_status

__all__ = [
    "DriftCounter",
    "FeatureCounts",
    "TrainingOutcome",
    "drift_of_frame",
    "drift_report",
    "js_distance",
    "linf",
    "psi",
    "record_training_outcome",
    "training_status",
    "write_report",
]
