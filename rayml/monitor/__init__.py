"""Monitoring: drift and data-quality statistics against reference bins, offline drift reports, training health,
staleness (quality against model age) and scoring any registered kind (model or model set) for them."""

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
from rayml.monitor.staleness import (
    StalenessReport,
    VersionScore,
    fit_degradation,
    labelled_captures,
    measure_staleness,
    recommended_max_age,
    write_staleness_report,
)
from rayml.monitor.training import TrainingOutcome, record_training_outcome as record_training_outcome, training_status

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "StalenessReport",
    "TrainingOutcome",
    "VersionScore",
    "drift_of_frame",
    "drift_report",
    "fit_degradation",
    "global_reference",
    "labelled_captures",
    "measure_staleness",
    "predict_frame",
    "recommended_max_age",
    "training_status",
    "write_report",
    "write_staleness_report",
]
