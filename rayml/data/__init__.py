"""Data: synthetic generation, loading (parquet/CSV, local or URI), schema + validation, fingerprints, reference bins."""

from rayml.data.loading import (
    fingerprint,
    load_table,
    resolve_files as resolve_files,
    train_validation_split as train_validation_split,
)
from rayml.data.schema import Feature, Schema, infer_schema, validate
from rayml.data.stats import reference_stats
from rayml.data.synthetic import generate_sales, parse_drift, write_dataset

# What users import. Names re-exported above as `X as X` are shared with other rayml packages: importable, but
# not part of the public API.
__all__ = [
    "Feature",
    "Schema",
    "fingerprint",
    "generate_sales",
    "infer_schema",
    "load_table",
    "parse_drift",
    "reference_stats",
    "validate",
    "write_dataset",
]
