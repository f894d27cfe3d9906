"""Monitoring: drift and data-quality statistics against reference bins, offline drift reports."""

from rayml.monitor.drift import DriftCounter, FeatureCounts, drift_report, js_distance, linf, psi
from rayml.monitor.report import drift_of_frame, write_report

__all__ = [
    "DriftCounter",
    "FeatureCounts",
    "drift_of_frame",
    "drift_report",
    "js_distance",
    "linf",
    "psi",
    "write_report",
]
