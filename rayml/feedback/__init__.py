"""The closed loop: payload capture, ground-truth labels and live model quality.

At the monitor layer: the serving app writes captures and labels through it; nothing here imports serve.
"""

from rayml.feedback._capture import Captured, CaptureWriter, inputs_for_capture, predictions_of
from rayml.feedback._live import LABEL_FIELDS, LabelStats, LiveJoin, quality_excess
from rayml.feedback._quality import parse_since, quality_report
from rayml.feedback._report import write_quality_report
from rayml.feedback._store import (
    CAPTURE_SCHEMA,
    LABEL_SCHEMA,
    LabelBatch,
    binary_classes,
    capture_dir,
    check_inference_id,
    class_text,
    hour_partition,
    list_files,
    local_destination,
    new_inference_id,
    read_labels,
    validate_labels,
    write_labels,
)
from rayml.feedback._upload import LabelUpload, label_classes, read_label_file, upload_labels

__all__ = [
    "CaptureWriter",
    "Captured",
    "inputs_for_capture",
    "predictions_of",
    "LABEL_FIELDS",
    "LabelStats",
    "LiveJoin",
    "quality_excess",
    "CAPTURE_SCHEMA",
    "LABEL_SCHEMA",
    "LabelBatch",
    "binary_classes",
    "capture_dir",
    "hour_partition",
    "check_inference_id",
    "class_text",
    "list_files",
    "local_destination",
    "new_inference_id",
    "read_labels",
    "validate_labels",
    "write_labels",
    "LabelUpload",
    "label_classes",
    "parse_since",
    "quality_report",
    "read_label_file",
    "upload_labels",
    "write_quality_report",
]
