"""What every source module (scikit-learn, XGBoost, LightGBM, torch, ONNX, MLflow) gives the converter, and the
checks they share: which columns feed a one-matrix model, which task the model answers, which class labels it has."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pandas as pd

from rayml.errors import DataError, UnsupportedModelError, UserError
from rayml.models.importers._graph import Feed, Outputs
from rayml.models.importers._parity import plain_label, plain_labels
from rayml.models.predictor import TASKS

AUTO = "auto"
_FEATURES_HINT = "pass features=[...] (--features a,b,c): the sample's columns in the order the model takes them"


@dataclass(frozen=True)
class Request:
    """What the caller asked for (see :func:`rayml.models.convert`)."""

    sample: pd.DataFrame
    target: str | None = None
    task: str = AUTO
    features: tuple[str, ...] | None = None
    class_labels: tuple[Any, ...] | None = None
    tracking_uri: str | None = None

    @property
    def columns(self) -> list[str]:
        """The sample's columns that may be features: all but the target."""
        return [str(c) for c in self.sample.columns if c != self.target]


@dataclass
class SourceGraph:
    """A model as its converter wrote it in ONNX, how to reach the contract from it, and its own answers.

    Attributes:
        graph: the converter's ONNX model.
        feeds: which raw columns feed each of its inputs.
        outputs: which of its outputs answer for the task.
        tasks: the tasks the model can answer, the likeliest first (a one-column output is a value or a probability).
        class_labels: classifiers: the classes in probability order ([] for regression).
        expected_values: the source's own answers on the sample: values [N] (or [N, 1]), or probabilities [N, K].
        expected_labels: the source's predicted classes, when it predicts classes itself.
        source: framework, framework_version, converter, converter_version.
        what: how to name the model in messages (e.g. ``xgboost XGBClassifier``).
        class_labels_known: whether the classes come from the model itself (not a default or the caller).
    """

    graph: onnx.ModelProto
    feeds: list[Feed]
    outputs: Outputs
    tasks: tuple[str, ...]
    class_labels: list[Any]
    expected_values: np.ndarray
    expected_labels: np.ndarray | None
    source: dict[str, str]
    what: str
    class_labels_known: bool = field(default=True)


def framework_of(model: Any) -> set[str]:
    """The top-level packages of ``model``'s class and its bases (a user's ``torch.nn.Module`` subclass: torch)."""
    return {c.__module__.split(".")[0] for c in type(model).__mro__}


def describe(model: Any) -> str:
    return f"{type(model).__module__.split('.')[0]} {type(model).__name__}"


def matrix_features(req: Request, model_names: Sequence[str] | None, n_features: int | None, what: str) -> list[str]:
    """The sample columns that make a one-matrix model's ``[N, F]`` input, in its column order.

    ``req.features`` when given; else the names the model was fitted with, when every one is a sample column; else
    every sample column but the target. Each must be numeric.

    Raises:
        DataError: a column is missing, the count is not the model's, or a column holds text.
    """
    names = [str(n) for n in model_names] if model_names is not None else None
    columns = set(map(str, req.sample.columns))
    if req.features is not None:
        features = list(req.features)
        missing = [f for f in features if f not in columns]
        if missing:
            raise DataError(
                f"feature column(s) {missing} are not in the sample (columns: {sorted(columns)})", hint=_FEATURES_HINT
            )
    elif names is not None and all(n in columns for n in names):
        features = names
    elif names is not None and (matched := _match_sanitized(names, columns)) is not None:
        features = matched
    elif names is not None and not _generic(names):
        missing = [n for n in names if n not in columns]
        raise DataError(
            f"the {what} model was fitted on columns the sample lacks: {missing[:10]}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            + f" (sample columns: {sorted(columns)[:20]})",
            hint=_FEATURES_HINT,
        )
    else:
        features = req.columns
    if n_features is not None and len(features) != n_features:
        raise DataError(
            f"the {what} model takes {n_features} feature(s), but {len(features)} column(s) would feed it: {features[:20]}",
            hint=_FEATURES_HINT,
        )
    text = [f for f in features if not is_number(req.sample[f])]
    if text:
        raise UnsupportedModelError(
            f"the {what} model takes one numeric matrix, but column(s) {text} hold text",
            hint="encode text columns inside the model: a scikit-learn Pipeline with a ColumnTransformer and a "
            "OneHotEncoder converts with rayml; or export the model to ONNX yourself and register the file (--onnx)",
        )
    return features


def _squash(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _match_sanitized(names: Sequence[str], columns: set[str]) -> list[str] | None:
    """The sample columns of a model's feature names that the framework sanitized (LightGBM writes ``mean radius``
    as ``mean_radius``), when each matches exactly one column; else None."""
    by_key: dict[str, list[str]] = {}
    for c in sorted(columns):
        by_key.setdefault(_squash(c), []).append(c)
    found = [by_key.get(_squash(n), []) for n in names]
    return [m[0] for m in found] if all(len(m) == 1 for m in found) else None


def _generic(names: Sequence[str]) -> bool:
    """Names a framework made up (``f0``, ``Column_0``, ``x0``): they say nothing about the sample's columns."""
    return all(n.lower() in (f"f{i}", f"column_{i}", f"x{i}", f"feature_{i}") for i, n in enumerate(names))


def is_number(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s))


def model_input(req: Request, features: Sequence[str], by_name: bool) -> Any:
    """The sample's feature columns as the source model takes them: a frame for a model fitted on one (its column
    names are checked), else a float64 array."""
    frame = req.sample[list(features)]
    return frame if by_name else frame.to_numpy(dtype=np.float64)


def classifier_tasks(class_labels: Sequence[Any]) -> tuple[str, ...]:
    return ("binary",) if len(class_labels) == 2 else ("multiclass",)


def default_class_labels(req: Request, n_classes: int) -> tuple[list[Any], bool]:
    """(the caller's class labels, True) or (0 .. n_classes - 1, False) for a model that does not record its own.

    Raises:
        UserError: the caller gave a number of labels that is not the model's.
    """
    if req.class_labels is None:
        return list(range(n_classes)), False
    labels = [plain_label(c) for c in req.class_labels]
    if len(labels) != n_classes or len(set(labels)) != len(labels):
        raise UserError(
            f"class_labels {labels} must name the model's {n_classes} classes once each, in its output order",
            hint="pass one distinct label per probability column (--class-labels a,b,c)",
        )
    return labels, True


def named_class_labels(req: Request, own: Sequence[Any]) -> tuple[list[Any], dict[Any, Any]]:
    """The classes of a model that records its own (``own``, e.g. an XGBoost classifier's ``classes_``, often the
    indices 0 .. K-1 of labels encoded before fitting), renamed by the caller's ``class_labels`` when given.

    Returns:
        (the labels in output order, own label -> label).

    Raises:
        UserError: the caller gave a number of labels that is not the model's.
    """
    if req.class_labels is None:
        return list(own), {c: c for c in own}
    labels, _ = default_class_labels(req, len(own))
    return labels, dict(zip(own, labels, strict=True))


def resolve_task(found: SourceGraph, req: Request) -> str:
    """The task: ``req.task``, which the model must be able to answer, or the model's own (``auto``); checked
    against the sample's target when there is one.

    Raises:
        UnsupportedModelError: the model cannot answer the task asked for.
        DataError: the target does not fit the task (text for regression, classes the model does not know), or
            ``auto`` cannot tell a value from a probability.
    """
    if req.task != AUTO and req.task not in TASKS:
        raise UserError(f"task {req.task!r} is not one of {[AUTO, *TASKS]}", hint="pass task='auto' to take the model's own")
    if req.task != AUTO and req.task not in found.tasks:
        labels = f" with classes {found.class_labels}" if found.class_labels else ""
        raise UnsupportedModelError(
            f"task {req.task!r} was asked for, but the {found.what} model answers {' or '.join(found.tasks)}{labels}",
            hint=f"pass task={found.tasks[0]!r} (--task {found.tasks[0]}), or task='auto' for the model's own",
        )
    task = found.tasks[0] if req.task == AUTO else req.task
    if req.target is None:
        return task
    if req.target not in req.sample.columns:
        raise DataError(
            f"target column {req.target!r} is not in the sample (columns: {list(map(str, req.sample.columns))[:20]})",
            hint="pass the sample with its target column, or target=None",
        )
    y = req.sample[req.target]
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(y):
            raise DataError(
                f"the {found.what} model is a regressor, but target {req.target!r} holds {y.dtype} values",
                hint="pass the numeric target the model predicts",
            )
        if req.task == AUTO and len(found.tasks) > 1 and set(pd.unique(y.dropna())) <= {0, 1}:
            raise DataError(
                f"the {found.what} model answers one number per row and target {req.target!r} holds only 0 and 1: "
                "rayml cannot tell a regression value from a probability",
                hint="pass task='binary' when the output is the probability of class 1, else task='regression'",
            )
        return task
    unknown = sorted(set(plain_labels(y.dropna().to_numpy()).tolist()) - set(found.class_labels), key=str)
    if unknown:
        where = "the model's" if found.class_labels_known else "the assumed"
        raise DataError(
            f"target {req.target!r} holds class(es) {unknown[:10]} that are not among {where} class labels "
            f"{found.class_labels[:20]}",
            hint="pass class_labels=[...] (--class-labels a,b,c) in the order of the model's probability columns, "
            "or the target column the model was trained on",
        )
    return task
