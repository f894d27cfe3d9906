"""The ``batch:`` section: batch scoring of files with a registered model or model set."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayml.config._base import _Section


class BatchConfig(_Section):
    """Batch scoring of files with a registered model or model set (`rayml batch`)."""

    model: str | None = Field(
        default=None, description="NAME@ALIAS or NAME:VERSION (a bare NAME means NAME@production); --model sets it."
    )
    input: str | None = Field(
        default=None, description="Parquet/CSV file, directory, glob or URI (s3://, gs://) to score; --input sets it."
    )
    output: str | None = Field(
        default=None,
        description="Output directory or URI: one parquet file per input file, plus `_rayml_batch/` (ledger, staging); "
        "every row carries an `inference_id` (the same on every rerun) that ground-truth labels name; --output sets it.",
    )
    format: Literal["auto", "parquet", "csv"] = Field(default="auto", description="Input format; auto = by extension.")
    batch_size: int = Field(
        default=65_536, ge=1, description="Rows read and scored at a time by an actor (bounds its memory per file)."
    )
    concurrency: int | None = Field(
        default=None, ge=1, description="Scoring actors; null = the cluster's CPUs / cpus_per_actor, at most one per file."
    )
    cpus_per_actor: float = Field(default=1.0, gt=0.0, description="CPUs reserved per scoring actor.")
    max_cached_models: int = Field(
        default=1024, ge=1, description="ONNX sessions an actor keeps (least recently used dropped first)."
    )
    id_columns: list[str] | None = Field(
        default=None,
        description="Input columns copied to the output besides the segment columns (ids, timestamps, labels); "
        "null = every input column that is not a model input; [] = none.",
    )
    prediction_column: str = Field(
        default="prediction",
        description="Name of the prediction column in the output (the value; a binary model's probability of its "
        "positive class; a multiclass model's label, followed by one `proba_<label>` column per class).",
    )
    drift: bool = Field(
        default=True,
        description="Count every scored row into the model's reference bins and write the run's drift summary "
        "(<output>/_rayml_batch/drift.json); false skips the counting.",
    )
    capture_destination: str | None = Field(
        default=None,
        description="Capture the predictions for the quality join with ground-truth labels: a local folder or URI where "
        "each committed output file's rows are written in rayml.feedback's capture layout, with route `batch` "
        "(captures/model=<m>/version=<v>/hour=<commit hour>/batch-<id>.parquet), so `rayml monitor quality` judges "
        "batch predictions once labels naming their `inference_id` arrive; null = no capture. A capture failure is "
        "counted, never a failed file; the same command run again captures what is missing.",
    )
    overwrite: bool = Field(
        default=False,
        description="Start over: delete the output's ledger and committed files first. Without it, a rerun skips files "
        "already committed and finishes the rest.",
    )
