"""Schema inference and validation for tabular data.

A :class:`Schema` is what a model was trained on: the feature columns, each numeric or categorical (with its known
categories), the target and the task. ``validate`` checks a frame against a schema and raises one
:class:`DataValidationError` that lists every problem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from rayml.config import DataConfig
from rayml.errors import DataValidationError

UNKNOWN = "__unknown__"


@dataclass(frozen=True)
class Feature:
    """One input column of a model."""

    name: str
    kind: Literal["numeric", "categorical"]
    categories: tuple[str, ...] = ()  # categorical only: known values, most frequent first (UNKNOWN not included)


@dataclass(frozen=True)
class Schema:
    """What a model consumes and predicts."""

    features: tuple[Feature, ...]
    target: str
    task: Literal["regression", "binary"]
    segment: tuple[str, ...] = field(default_factory=tuple)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "categorical"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = [{**asdict(f), "categories": list(f.categories)} for f in self.features]
        d["segment"] = list(self.segment)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        feats = tuple(Feature(f["name"], f["kind"], tuple(f.get("categories", ()))) for f in d["features"])
        return cls(features=feats, target=d["target"], task=d["task"], segment=tuple(d.get("segment", ())))


def _is_categorical_dtype(s: pd.Series) -> bool:
    return (
        pd.api.types.is_string_dtype(s)
        or pd.api.types.is_object_dtype(s)
        or pd.api.types.is_bool_dtype(s)
        or isinstance(s.dtype, pd.CategoricalDtype)
    )


def as_category_strings(s: pd.Series) -> np.ndarray:
    """Categorical values as strings (missing -> ``UNKNOWN``), the form both torch encoding and ONNX inputs use."""
    out = s.astype(object).where(s.notna(), UNKNOWN)
    return np.asarray([v if isinstance(v, str) else str(v) for v in out], dtype=object)


def infer_schema(df: pd.DataFrame, cfg: DataConfig) -> Schema:
    """Infer the model schema of ``df`` under ``cfg`` (explicit feature lists win over dtype inference).

    Raises:
        DataValidationError: every missing configured column, a non-binary target for a binary task, a numeric feature
            that holds text, a frame with no features left, all listed at once.
    """
    problems: list[str] = []
    cols = list(df.columns)
    if cfg.target not in df.columns:
        problems.append(f"target column {cfg.target!r} is missing (columns: {cols})")
    for name in cfg.segment:
        if name not in df.columns:
            problems.append(
                f"segment column {name!r} (data.segment) is missing (columns: {cols}); "
                "set data.segment to your segment column(s), or [] when the data has none"
            )
    excluded = {cfg.target, *cfg.segment, *cfg.ignore_columns}
    if cfg.numeric_features is None and cfg.categorical_features is None:
        candidates = [c for c in df.columns if c not in excluded]
        numeric = [c for c in candidates if not _is_categorical_dtype(df[c])]
        categorical = [c for c in candidates if _is_categorical_dtype(df[c])]
    else:
        numeric = list(cfg.numeric_features or [])
        categorical = list(cfg.categorical_features or [])
    for name in numeric + categorical:
        if name not in df.columns:
            problems.append(f"feature column {name!r} is missing (columns: {cols})")
    for name in numeric:
        if name in df.columns and _is_categorical_dtype(df[name]) and not pd.api.types.is_bool_dtype(df[name]):
            problems.append(f"numeric feature {name!r} has dtype {df[name].dtype} (text); list it under categorical_features")
    if not numeric and not categorical:
        problems.append(f"no feature columns left after excluding target, segment and ignore_columns {sorted(excluded)}")
    if cfg.target in df.columns:
        y = df[cfg.target]
        if not pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y):
            problems.append(f"target {cfg.target!r} has dtype {y.dtype}; it must be numeric (or 0/1 for binary)")
        elif cfg.task == "binary":
            values = set(pd.unique(y.dropna().astype("float64")))
            if not values <= {0.0, 1.0}:
                shown = sorted(values)[:5]
                problems.append(f"binary target {cfg.target!r} must hold only 0/1, found values like {shown}")
        if y.isna().any():
            problems.append(f"target {cfg.target!r} has {int(y.isna().sum())} missing value(s); drop those rows first")
    if problems:
        raise DataValidationError(problems, hint="fix the data or the `data:` section of the config (see `rayml train --help`)")

    features = [Feature(n, "numeric") for n in numeric]
    for name in categorical:
        counts = pd.Series(as_category_strings(df[name])).value_counts()
        counts = counts[counts.index != UNKNOWN]
        # most frequent first, ties broken by value so the order is deterministic
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_categories]
        # as_category_strings made every value a str
        features.append(Feature(name, "categorical", tuple(cast(str, k) for k, _ in ordered)))
    return Schema(features=tuple(features), target=cfg.target, task=cfg.task, segment=tuple(cfg.segment))


def validate(
    df: pd.DataFrame,
    schema: Schema,
    *,
    max_nan_fraction: float = 0.05,
    require_target: bool = False,
    allow_extra: bool = True,
    allow_unseen_categories: bool = True,
    source: str | None = None,
) -> None:
    """Check ``df`` against ``schema`` and raise once with every problem.

    Checks: missing and (unless ``allow_extra``) extra columns, numeric columns that hold text, the share of missing
    values per feature over ``max_nan_fraction``, and (unless ``allow_unseen_categories``) categories the model never
    saw in training.

    Raises:
        DataValidationError: listing every problem found.
    """
    problems: list[str] = []
    expected = schema.feature_names + ([schema.target] if require_target else [])
    missing = [c for c in expected if c not in df.columns]
    if missing:
        problems.append(f"missing column(s) {missing}")
    if not allow_extra:
        known = set(expected) | set(schema.segment)
        extra = [c for c in df.columns if c not in known]
        if extra:
            problems.append(f"unexpected column(s) {extra}; the model takes {schema.feature_names}")
    n = max(len(df), 1)
    for f in schema.features:
        if f.name not in df.columns:
            continue
        s = df[f.name]
        if f.kind == "numeric" and not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            coerced = pd.to_numeric(s, errors="coerce")
            bad = s[coerced.isna() & s.notna()]
            if len(bad):
                problems.append(
                    f"column {f.name!r} should be numeric but has dtype {s.dtype}; {len(bad)} value(s) are not numbers, "
                    f"e.g. {bad.iloc[0]!r}"
                )
        nan_share = float(s.isna().sum()) / n
        if nan_share > max_nan_fraction:
            problems.append(
                f"column {f.name!r} is {nan_share:.1%} missing, over the limit of {max_nan_fraction:.1%} (data.max_nan_fraction)"
            )
        if f.kind == "categorical" and not allow_unseen_categories:
            values = set(pd.unique(as_category_strings(s))) - {UNKNOWN}
            unseen = sorted(values - set(f.categories))
            if unseen:
                problems.append(f"column {f.name!r} has categories never seen in training: {unseen[:10]}")
    if require_target and schema.target in df.columns and df[schema.target].isna().any():
        problems.append(f"target {schema.target!r} has {int(df[schema.target].isna().sum())} missing value(s)")
    if problems:
        raise DataValidationError(
            problems,
            hint="fix the data, or retrain so the model's schema matches it",
            source=source,
        )
