"""The ``manymodels:`` section: one small model per segment, trained in parallel and registered as one model set."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from rayml.config._base import _Section


class CandidateConfig(_Section):
    """One candidate of a per-segment search; an unset field keeps the value of the `model:` / `train:` section."""

    hidden_sizes: list[int] | None = Field(default=None, description="Widths of the hidden layers (model.hidden_sizes).")
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0, description="Dropout (model.dropout).")
    learning_rate: float | None = Field(default=None, gt=0.0, description="Adam learning rate (train.learning_rate).")
    weight_decay: float | None = Field(default=None, ge=0.0, description="AdamW weight decay (train.weight_decay).")
    epochs: int | None = Field(default=None, ge=1, description="Epochs (train.epochs).")
    batch_size: int | None = Field(default=None, ge=1, description="Mini-batch size (train.batch_size).")
    xgboost: dict[str, Any] | None = Field(
        default=None,
        description="model.type xgboost: settings of model.xgboost this candidate replaces, e.g. {max_depth: 3}.",
    )
    lightgbm: dict[str, Any] | None = Field(
        default=None,
        description="model.type lightgbm: settings of model.lightgbm this candidate replaces, e.g. {num_leaves: 15}.",
    )

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(w < 1 for w in v)):
            raise ValueError(f"hidden_sizes must be a non-empty list of positive widths, got {v}")
        return v


class ManyModelsConfig(_Section):
    """One small model per segment (`data.segment`), trained in parallel Ray tasks, registered as one model set; the
    model is the job's `model.type` (mlp, xgboost or lightgbm, with its own `model:` settings)."""

    min_rows: int = Field(
        default=50,
        ge=2,
        description="Segments with fewer rows are not trained; the global fallback model serves them (recorded in "
        "the set's index as fallback).",
    )
    max_retries: int = Field(
        default=1,
        ge=0,
        description="Retries of a segment whose training failed (a new seed each time), and of a task whose worker "
        "died (its segments are then retried one per task, so one bad segment cannot take others down).",
    )
    max_failed_share: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="The run fails (exit 1, nothing registered) when more than this share of the segments failed "
        "after their retries; below it, failed segments are served by the fallback model and reported.",
    )
    segments_per_task: int | None = Field(
        default=None,
        ge=1,
        description="Segments trained one after another in one Ray task, to amortise task overhead; null = enough "
        "tasks for about 4 per CPU, at most 32 segments each.",
    )
    cpus_per_task: float = Field(
        default=1.0, gt=0.0, description="CPUs reserved per training task (torch and the boosters use one thread)."
    )
    candidates: list[CandidateConfig] = Field(
        default_factory=list,
        description="Per-segment search: every segment trains each candidate and keeps the one with the lowest loss "
        "on its own validation split; [] = just the `model:` / `train:` settings. An MLP candidate sets MLP fields "
        "(hidden_sizes, learning_rate, epochs ...); a tree candidate sets only `xgboost:` / `lightgbm:` (the job's "
        "model.type), e.g. [{lightgbm: {num_leaves: 7}}, {lightgbm: {num_leaves: 31, learning_rate: 0.05}}].",
    )
    fallback: bool = Field(
        default=True,
        description="The global model (trained on all rows) serves segments without their own model: too few rows, "
        "failed, or unknown at scoring time. false = those rows get no prediction (an error column in batch output).",
    )
    global_max_rows: int = Field(
        default=200_000, ge=1, description="Most training rows (a seeded sample) the global fallback model trains on."
    )
    global_batch_size: int = Field(
        default=512,
        ge=1,
        description="Mini-batch size of the global MLP (model.type mlp only): it sees far more rows than one segment, "
        "and must not become the run's longest task.",
    )
    max_segments: int = Field(
        default=100_000,
        ge=1,
        description="More segments than this is an error: usually a segment column that is really a row id.",
    )
