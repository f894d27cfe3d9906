"""The ``data:`` section: where training data comes from, what its columns mean, and the synthetic dataset."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from rayml.config._base import _Section


class DriftSpec(_Section):
    """One injected drift for synthetic data (used to exercise monitoring)."""

    kind: Literal["shift", "new_category", "missing"] = Field(
        description="shift: add `value` standard deviations to a numeric column; new_category: set `fraction` of rows "
        "of a categorical column to the new value `category`; missing: set `fraction` of a column's values to NaN."
    )
    column: str = Field(description="Column the drift applies to.")
    value: float = Field(default=1.0, description="For `shift`: the shift in standard deviations of the column.")
    fraction: float = Field(default=0.2, ge=0.0, le=1.0, description="For `new_category`/`missing`: share of rows hit.")
    category: str = Field(default="new_category", description="For `new_category`: the unseen category value.")


# The synthetic retail-sales dataset's columns that are not features (see rayml.data.synthetic).
SYNTHETIC_TARGET = "sales"
SYNTHETIC_TARGETS = ("sales", "high_sales")
SYNTHETIC_SEGMENT = ("store_id",)


def synthetic_roles(target: str = SYNTHETIC_TARGET) -> dict[str, Any]:
    """The synthetic sales data's column roles as ``data:`` fields (``target``, ``segment``, ``ignore_columns``).

    A ``source: synthetic`` config gets them for the fields it leaves out; a config reading that data from files
    (``rayml data generate`` output) names them, e.g. ``{"source": "data/sales", **synthetic_roles()}``.
    """
    return {
        "target": target,
        "segment": list(SYNTHETIC_SEGMENT),
        "ignore_columns": ["date", *(t for t in SYNTHETIC_TARGETS if t != target)],
    }


# Where the raw values of a sensitive column may go when the data's owner allows it (data.allow_sensitive_in).
SensitiveUse = Literal["reference_stats", "batch_output", "capture"]
SENSITIVE_USES: tuple[str, ...] = get_args(SensitiveUse)


def matching_pattern(column: str, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` (column names or fnmatch globs, compared case-insensitively) that ``column``
    matches, or None.

    The one rule for ``data.forbidden_features`` and ``data.sensitive_columns``: ``"*email*"`` matches
    ``Customer_Email``, ``"ssn"`` matches ``SSN`` but not ``ssn_hash``.
    """
    name = column.casefold()
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern.casefold()):
            return pattern
    return None


class SyntheticConfig(_Section):
    """The synthetic retail-sales dataset used when ``data.source`` is ``synthetic``."""

    segments: int = Field(default=8, ge=1, le=100_000, description="Number of stores (the segment column `store_id`).")
    rows_per_segment: int = Field(default=200, ge=1, le=10_000_000, description="Daily rows per store.")
    seed: int = Field(default=0, description="Seed: the same seed gives byte-identical data.")
    start_date: str = Field(default="2024-01-01", description="First day of the series (ISO date).")
    drift: list[DriftSpec] = Field(default_factory=list, description="Drift to inject (for monitoring exercises).")


class DataConfig(_Section):
    """Where training data comes from and what its columns mean. Nothing here is tied to the synthetic schema."""

    source: str = Field(
        default="synthetic",
        description="`synthetic` (generated deterministically from `synthetic`), or a parquet/CSV path, directory, "
        "glob or URI (s3://, gs://, file://).",
    )
    format: Literal["auto", "parquet", "csv"] = Field(default="auto", description="File format; auto = by extension.")
    target: str = Field(
        default="",
        description="Target column (required for your own data; the synthetic dataset's default is `sales`).",
    )
    task: Literal["regression", "binary", "multiclass"] = Field(
        default="regression",
        description="Learning task: `regression` (a numeric target), `binary` (a 0/1 target) or `multiclass` (integer "
        "or string class labels, at least 2 classes with at least 2 rows each).",
    )
    numeric_features: list[str] | None = Field(
        default=None, description="Numeric feature columns; null = inferred from the data's dtypes."
    )
    categorical_features: list[str] | None = Field(
        default=None, description="Categorical feature columns; null = inferred (string/bool/category dtypes)."
    )
    segment: list[str] = Field(
        default_factory=list,
        description="Segment key column(s) (one model per segment in many-models work); [] for none. A segment column "
        "is not a feature unless listed in the feature lists. The synthetic dataset's default is [store_id].",
    )
    ignore_columns: list[str] = Field(
        default_factory=list,
        description="Columns that are neither features nor target (ids, timestamps, other targets). The synthetic "
        "dataset's default is [date] plus whichever of sales / high_sales is not the target.",
    )
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="Share of rows held out for validation.")
    max_nan_fraction: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Largest allowed share of missing values in any feature column."
    )
    max_categories: int = Field(
        default=50, ge=1, description="Most frequent categories kept per categorical feature; the rest map to unknown."
    )
    forbidden_features: list[str] = Field(
        default_factory=list,
        description="Columns that must never be features: names or glob patterns (fnmatch, case-insensitive), e.g. "
        'personal data ["*email*", "ssn", "name"]. A feature that matches one, listed or inferred from the data, '
        "fails training, tuning and many models with the column and the pattern; keep such a column out with "
        "ignore_columns. [] (the default) forbids nothing.",
    )
    sensitive_columns: list[str] = Field(
        default_factory=list,
        description="Columns whose raw values must not leave training: names or glob patterns (fnmatch, "
        "case-insensitive). They may still be features. The model records them, and their values stay out of the "
        "reference statistics (a categorical feature gets no bins, a numeric one no min/max), the MLflow input "
        "example, batch output pass-through columns, serve payload capture and rayml's error messages, unless "
        "allow_sensitive_in says otherwise.",
    )
    allow_sensitive_in: list[SensitiveUse] = Field(
        default_factory=list,
        description="Where raw values of sensitive_columns may go after all: `reference_stats` (full bins, so "
        "their drift is monitored), `batch_output` (copied as pass-through columns), `capture` (serve payload "
        "capture). [] = nowhere. Error messages and logs never show them.",
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Used when source is `synthetic`.")

    @model_validator(mode="before")
    @classmethod
    def _synthetic_roles(cls, data: Any) -> Any:
        """The synthetic dataset's column roles, for the fields a synthetic-data config leaves out.

        Defaults carry no trace of the synthetic data: a config for your own table names its ``source`` and
        ``target`` and nothing else is assumed about its columns.
        """
        if not isinstance(data, dict) or data.get("source", "synthetic") != "synthetic":
            return data
        return {**synthetic_roles(data.get("target") or SYNTHETIC_TARGET), **data}

    @field_validator("segment", mode="before")
    @classmethod
    def _segment_as_list(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v

    @field_validator("forbidden_features", "sensitive_columns")
    @classmethod
    def _patterns_not_blank(cls, v: list[str]) -> list[str]:
        blank = [p for p in v if not p.strip()]
        if blank:
            raise ValueError(f"patterns must name columns, got blank pattern(s) {blank} in {v}; e.g. ['*email*', 'ssn']")
        return v

    @model_validator(mode="after")
    def _columns_do_not_overlap(self) -> DataConfig:
        problems = []
        numeric = set(self.numeric_features or [])
        categorical = set(self.categorical_features or [])
        both = numeric & categorical
        if both:
            problems.append(f"columns {sorted(both)} are listed as both numeric_features and categorical_features")
        if self.target in numeric | categorical:
            problems.append(f"target {self.target!r} is also listed as a feature")
        if self.target in self.ignore_columns:
            problems.append(f"target {self.target!r} is also in ignore_columns {self.ignore_columns}")
        for name in [*(self.numeric_features or []), *(self.categorical_features or [])]:
            pattern = matching_pattern(name, self.forbidden_features)
            if pattern is not None:
                problems.append(
                    f"feature {name!r} matches forbidden_features pattern {pattern!r} ({self.forbidden_features}); "
                    "remove it from the feature lists"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self
