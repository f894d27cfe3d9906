"""Schema inference and validation for tabular data.

A :class:`Schema` is what a model was trained on: the feature columns, each numeric or categorical (with its known
categories), the target, the task, (multiclass) the class labels and the feature policy's sensitive columns.
``validate`` checks a frame against a schema and raises one :class:`DataValidationError` that lists every problem.
:func:`class_labels_of` reads a multiclass target as class labels, the one place that decides what a label is
(training, encoding and metrics all go through it).

The feature policy (``data.forbidden_features``, ``data.sensitive_columns``, ``data.allow_sensitive_in``) is
enforced here, so every way of choosing features gets it: :func:`infer_schema` (train, tune, many models, the
pipeline) refuses a forbidden feature, listed or inferred, and records the sensitive patterns in the schema, which
travels with the model (``rayml_model.json``); :func:`apply_feature_policy` does the same for a schema built
elsewhere (imported models). Messages about a sensitive column never quote its values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from rayml.config import DataConfig
from rayml.config.data import matching_pattern
from rayml.errors import DataValidationError

UNKNOWN = "__unknown__"
_WITHHELD = "values not shown (a sensitive column: data.sensitive_columns)"
# A class label of a multiclass target: a Python int or str (JSON safe, and what the ONNX graph's `label` answers).
ClassLabel = int | str
_LABEL_HINT = (
    "a multiclass target holds integer or string class labels; use data.task=regression for a numeric target, "
    "data.task=binary for a 0/1 or true/false one, or map the values to class names first"
)


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
    task: Literal["regression", "binary", "multiclass"]
    segment: tuple[str, ...] = field(default_factory=tuple)
    classes: tuple[ClassLabel, ...] = ()  # multiclass only: the class labels, sorted (ints numerically, strs lexically)
    # data.sensitive_columns (names or patterns, any column: features and pass-through ones) and
    # data.allow_sensitive_in: recorded with the model so serve and batch know them without the training config
    sensitive: tuple[str, ...] = ()
    sensitive_allowed_in: tuple[str, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def kinds(self) -> dict[str, str]:
        """Feature name -> ``numeric`` | ``categorical``, in feature order."""
        return {f.name: f.kind for f in self.features}

    def is_sensitive(self, column: str, use: str | None = None) -> bool:
        """Whether ``column``'s raw values must stay out of ``use`` (one of ``data.allow_sensitive_in``'s values;
        None: out of everything, messages and logs included)."""
        if use is not None and use in self.sensitive_allowed_in:
            return False
        return matching_pattern(column, self.sensitive) is not None

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
        d["classes"] = list(self.classes)
        d["sensitive"] = list(self.sensitive)
        d["sensitive_allowed_in"] = list(self.sensitive_allowed_in)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        feats = tuple(Feature(f["name"], f["kind"], tuple(f.get("categories", ()))) for f in d["features"])
        return cls(
            features=feats,
            target=d["target"],
            task=d["task"],
            segment=tuple(d.get("segment", ())),
            classes=tuple(d.get("classes", ())),
            sensitive=tuple(d.get("sensitive", ())),
            sensitive_allowed_in=tuple(d.get("sensitive_allowed_in", ())),
        )


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


def _not_whole(value: Any) -> str:
    return (
        f"holds numbers that are not whole, e.g. {float(value)!r}; use data.task=regression for a numeric target, or "
        "map the values to integer or string class labels"
    )


def _class_labels(y: pd.Series) -> tuple[np.ndarray, str | None]:
    """``y`` (no missing values) as class labels, an object array of Python ints or strs; or (empty, what keeps it
    from being one)."""
    none = np.zeros(0, dtype=object)
    if pd.api.types.is_bool_dtype(y):
        return none, f"holds true/false values (dtype {y.dtype}); use data.task=binary for a yes/no target"
    if y.dtype.kind in "iu":
        return y.to_numpy().astype(object), None  # numpy turns each int64 into a Python int here
    if y.dtype.kind == "f":
        x = y.to_numpy()
        fractional = x[~np.isfinite(x) | (x != np.round(x))]
        if len(fractional):
            return none, _not_whole(fractional[0])
        return x.astype(np.int64).astype(object), None
    if not _is_categorical_dtype(y):
        return none, f"has dtype {y.dtype}; class labels are integers or strings"
    values = y.astype(object).to_numpy()
    as_label: dict[Any, ClassLabel] = {}
    for v in pd.unique(values):
        if isinstance(v, (bool, np.bool_)):
            return none, f"holds true/false values like {v!r}; use data.task=binary for a yes/no target"
        if isinstance(v, str):
            as_label[v] = str(v)
        elif isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            as_label[v] = int(v)
        elif isinstance(v, (float, np.floating)):
            return none, _not_whole(v)
        else:
            return none, f"holds {type(v).__name__} values like {v!r}; class labels are integers or strings"
    kinds = {type(label) for label in as_label.values()}
    if len(kinds) > 1:
        text = next(k for k, label in as_label.items() if isinstance(label, str))
        number = next(k for k, label in as_label.items() if isinstance(label, int))
        return none, (
            f"mixes text and numbers (e.g. {text!r} and {number!r}); make every label a string (df[target].astype(str)) "
            "or every label an integer"
        )
    if kinds == {str} and all(type(v) is str for v in as_label):
        return values, None
    return np.asarray([as_label[v] for v in values], dtype=object), None


def class_labels_of(y: pd.Series, target: str) -> np.ndarray:
    """A multiclass target's values as class labels: an object array of Python ints (integer columns, or floats
    that are all whole numbers) or strs.

    Raises:
        DataValidationError: a missing value, a true/false value, a number that is not whole, or a mix of text and
            numbers.
    """
    if y.isna().any():
        raise DataValidationError([f"target {target!r} has {int(y.isna().sum())} missing value(s)"], hint="drop those rows first")
    labels, problem = _class_labels(y)
    if problem:
        raise DataValidationError([f"multiclass target {target!r} {problem}"], hint=_LABEL_HINT)
    return labels


def rare_classes_problem(labels: np.ndarray | pd.Series, target: str, min_rows: int = 2) -> str | None:
    """What is wrong when some class has fewer than ``min_rows`` rows (too few to both train and validate), or None."""
    counts = pd.Series(labels).value_counts()
    rare = {k: int(n) for k, n in sorted(counts[counts < min_rows].items(), key=lambda kv: str(kv[0]))}
    if not rare:
        return None
    shown = dict(list(rare.items())[:20])
    more = f" and {len(rare) - 20} more" if len(rare) > 20 else ""
    return (
        f"multiclass target {target!r} has {len(rare)} class(es) with fewer than {min_rows} rows, too few to both "
        f"train and validate (class: rows): {shown}{more}; add rows of those classes or drop them"
    )


def _multiclass_classes(y: pd.Series, target: str) -> tuple[tuple[ClassLabel, ...], list[str]]:
    """(the sorted class labels of a multiclass target, problems) -- ``y`` without its missing values."""
    labels, problem = _class_labels(y)
    if problem:
        return (), [f"multiclass target {target!r} {problem}"]
    classes = tuple(sorted(set(labels.tolist())))
    if len(classes) < 2:
        return (), [
            f"multiclass target {target!r} has {len(classes)} class(es) {list(classes)}; it needs at least 2 "
            "(check data.target, or filter the data less)"
        ]
    rare = rare_classes_problem(labels, target)
    return classes, [rare] if rare else []


_FORBIDDEN_HINT = (
    "a column that matches data.forbidden_features may never be a feature: drop it from the data or list it in "
    "data.ignore_columns, never in the feature lists"
)


def forbidden_feature_problems(features: Iterable[str], forbidden: Sequence[str], inferred: bool = False) -> list[str]:
    """One problem per feature that matches a ``data.forbidden_features`` pattern, naming the column and the
    pattern ([] when none does); ``inferred``: the features were inferred from the data's columns (said in the
    message, since the user never listed them)."""
    how = " (inferred from the data: every column not in target, segment or ignore_columns is a feature)" if inferred else ""
    problems = []
    for name in features:
        pattern = matching_pattern(name, forbidden)
        if pattern is not None:
            problems.append(f"column {name!r} is a feature{how} but matches data.forbidden_features pattern {pattern!r}")
    return problems


def apply_feature_policy(
    schema: Schema,
    forbidden_features: Sequence[str] = (),
    sensitive_columns: Sequence[str] = (),
    allow_sensitive_in: Sequence[str] = (),
) -> Schema:
    """``schema`` under a feature policy: refused when a feature is forbidden, else with the sensitive patterns
    recorded (for a schema built without a ``data:`` section, e.g. an imported model's).

    Raises:
        DataValidationError: every feature that matches a ``forbidden_features`` pattern, with the pattern.
    """
    problems = forbidden_feature_problems(schema.feature_names, forbidden_features)
    if problems:
        raise DataValidationError(
            problems,
            hint="a column that matches forbidden_features may never be a feature: register a model that does not take it",
        )
    return replace(schema, sensitive=tuple(sensitive_columns), sensitive_allowed_in=tuple(allow_sensitive_in))


def schema_changes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, Any]:
    """How a model's features changed from ``old`` to ``new`` (each: feature name -> ``numeric`` | ``categorical``,
    see :attr:`Schema.kinds`).

    Returns:
        ``{"added": [names], "removed": [names], "kind_changed": [{"column", "was", "now"}]}``, names sorted.
    """
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "kind_changed": [{"column": n, "was": old[n], "now": new[n]} for n in sorted(set(old) & set(new)) if old[n] != new[n]],
    }


def infer_schema(df: pd.DataFrame, cfg: DataConfig) -> Schema:
    """Infer the model schema of ``df`` under ``cfg`` (explicit feature lists win over dtype inference).

    The schema records ``cfg.sensitive_columns`` and ``cfg.allow_sensitive_in`` (see :meth:`Schema.is_sensitive`).

    Raises:
        DataValidationError: every missing configured column, a feature that matches ``cfg.forbidden_features``
            (listed or inferred), a non-binary target for a binary task, a multiclass target that is not integer or
            string labels (or has fewer than 2 classes, or a class with fewer than 2 rows), a numeric feature that
            holds text, a frame with no features left, all listed at once.
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
    inferred = cfg.numeric_features is None and cfg.categorical_features is None
    if inferred:
        candidates = [c for c in df.columns if c not in excluded]
        numeric = [c for c in candidates if not _is_categorical_dtype(df[c])]
        categorical = [c for c in candidates if _is_categorical_dtype(df[c])]
    else:
        numeric = list(cfg.numeric_features or [])
        categorical = list(cfg.categorical_features or [])
    forbidden = forbidden_feature_problems([str(c) for c in numeric + categorical], cfg.forbidden_features, inferred)
    problems.extend(forbidden)
    for name in numeric + categorical:
        if name not in df.columns:
            problems.append(f"feature column {name!r} is missing (columns: {cols})")
    for name in numeric:
        if name in df.columns and _is_categorical_dtype(df[name]) and not pd.api.types.is_bool_dtype(df[name]):
            problems.append(f"numeric feature {name!r} has dtype {df[name].dtype} (text); list it under categorical_features")
    if not numeric and not categorical:
        problems.append(f"no feature columns left after excluding target, segment and ignore_columns {sorted(excluded)}")
    classes: tuple[ClassLabel, ...] = ()
    if cfg.target in df.columns:
        y = df[cfg.target]
        if cfg.task == "multiclass":
            classes, label_problems = _multiclass_classes(y.dropna(), cfg.target)
            problems.extend(label_problems)
        elif not pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y):
            problems.append(
                f"target {cfg.target!r} has dtype {y.dtype}; it must be numeric (or 0/1 for binary); "
                "for class labels use data.task=multiclass"
            )
        elif cfg.task == "binary":
            values = set(pd.unique(y.dropna().astype("float64")))
            if not values <= {0.0, 1.0}:
                shown = sorted(values)[:5]
                problems.append(f"binary target {cfg.target!r} must hold only 0/1, found values like {shown}")
        if y.isna().any():
            problems.append(f"target {cfg.target!r} has {int(y.isna().sum())} missing value(s); drop those rows first")
    if problems:
        hint = "fix the data or the `data:` section of the config (see `rayml train --help`)"
        raise DataValidationError(problems, hint=f"{_FORBIDDEN_HINT}; otherwise {hint}" if forbidden else hint)

    features = [Feature(n, "numeric") for n in numeric]
    for name in categorical:
        counts = pd.Series(as_category_strings(df[name])).value_counts()
        counts = counts[counts.index != UNKNOWN]
        # most frequent first, ties broken by value so the order is deterministic
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.max_categories]
        # as_category_strings made every value a str
        features.append(Feature(name, "categorical", tuple(cast(str, k) for k, _ in ordered)))
    return Schema(
        features=tuple(features),
        target=cfg.target,
        task=cfg.task,
        segment=tuple(cfg.segment),
        classes=classes,
        sensitive=tuple(cfg.sensitive_columns),
        sensitive_allowed_in=tuple(cfg.allow_sensitive_in),
    )


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
    saw in training. Problems of a sensitive column (:meth:`Schema.is_sensitive`) give counts, never its values.

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
                example = _WITHHELD if schema.is_sensitive(f.name) else f"e.g. {bad.iloc[0]!r}"
                problems.append(
                    f"column {f.name!r} should be numeric but has dtype {s.dtype}; {len(bad)} value(s) are not numbers, {example}"
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
                shown = _WITHHELD if schema.is_sensitive(f.name) else str(unseen[:10])
                problems.append(f"column {f.name!r} has {len(unseen)} categories never seen in training: {shown}")
    if require_target and schema.target in df.columns and df[schema.target].isna().any():
        problems.append(f"target {schema.target!r} has {int(df[schema.target].isna().sum())} missing value(s)")
    if problems:
        raise DataValidationError(
            problems,
            hint="fix the data, or retrain so the model's schema matches it",
            source=source,
        )
