"""Monitoring: drift and data-quality statistics against reference bins, offline drift reports, training health,
and scoring any registered kind (model or model set) for them."""

from rayml.monitor._scoring import global_reference, predict_frame
from rayml.monitor.drift import (
    DriftCounter as DriftCounter,
    FeatureCounts as FeatureCounts,
    drift_report,
    js_distance as js_distance,
    linf as linf,
    psi as psi,
)
from rayml.monitor.report import drift_of_frame, write_report
from rayml.monitor.training import TrainingOutcome, record_training_outcome as record_training_outcome, training_status

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "TrainingOutcome",
    "drift_of_frame",
    "drift_report",
    "global_reference",
    "predict_frame",
    "training_status",
    "write_report",
]
