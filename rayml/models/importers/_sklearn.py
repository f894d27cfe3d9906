"""scikit-learn estimators and Pipelines, converted with skl2onnx; skops files, loaded with a trusted-types check.

A Pipeline that starts with a ColumnTransformer (scaling, imputing, one-hot encoding of string columns ...) is
converted with one input per column it was fitted on, so text stays text; any other estimator takes one numeric
matrix of the feature columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rayml.errors import DataError, UnsupportedModelError, UserError
from rayml.models.importers._graph import Feed, Outputs
from rayml.models.importers._parity import plain_labels
from rayml.models.importers._source import (
    Request,
    SourceGraph,
    classifier_tasks,
    describe,
    is_number,
    matrix_features,
    model_input,
)

# skops files: the types (beyond skops' own defaults) rayml lets it construct
TRUSTED_PREFIXES = ("sklearn.", "numpy.")
_ONNX_HINT = "export the model to ONNX yourself (skl2onnx with a custom converter) and register the file (--onnx)"


def from_sklearn(model: Any, req: Request) -> SourceGraph:
    """Convert a fitted scikit-learn estimator or Pipeline.

    Raises:
        UnsupportedModelError: the model is not fitted, is neither a regressor nor a classifier, or skl2onnx cannot
            convert a part of it (named in the message).
    """
    import skl2onnx
    import sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.base import is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    what = describe(model)
    try:
        check_is_fitted(model)
    except NotFittedError as e:
        raise UnsupportedModelError(f"the {what} model is not fitted", hint="fit it before registering it") from e
    if is_classifier(model):
        if not hasattr(model, "predict_proba"):
            raise UnsupportedModelError(
                f"the {what} classifier has no predict_proba; rayml's classifiers answer probabilities",
                hint="fit it with probabilities (e.g. SVC(probability=True)) or wrap it in CalibratedClassifierCV",
            )
        class_labels = plain_labels(model.classes_).tolist()
        given = None if req.class_labels is None else plain_labels(list(req.class_labels)).tolist()
        if given is not None and given != class_labels:
            raise UserError(
                f"the {what} classifier knows its classes {class_labels}; class_labels {given} would rename them",
                hint="leave class_labels out (scikit-learn keeps the labels it was fitted with), or refit on the "
                "labels you want",
            )
        tasks = classifier_tasks(class_labels)
    elif is_regressor(model):
        class_labels, tasks = [], ("regression",)
    else:
        raise UnsupportedModelError(
            f"the {what} model is neither a regressor nor a classifier",
            hint="register a fitted regressor or classifier (or a Pipeline that ends in one)",
        )

    names = getattr(model, "feature_names_in_", None)
    per_column = names is not None and _starts_with_column_transformer(model)
    if per_column:
        columns = [str(n) for n in (names if names is not None else [])]
        missing = [c for c in columns if c not in req.sample.columns]
        if missing:
            raise DataError(
                f"the {what} model was fitted on column(s) {missing} that the sample lacks",
                hint="pass sample rows with every column the model was fitted on",
            )
        initial = [(c, FloatTensorType([None, 1]) if is_number(req.sample[c]) else StringTensorType([None, 1])) for c in columns]
        x: Any = req.sample[columns]
    else:
        columns = matrix_features(req, names, getattr(model, "n_features_in_", None), what)
        initial = [("X", FloatTensorType([None, len(columns)]))]
        # a model fitted on a frame is given a frame with its column names; one fitted on an array, an array
        same_names = names is not None and [str(n) for n in names] == columns
        x = model_input(req, columns, by_name=same_names)
    # a classifier's probabilities as one [N, K] tensor, not ZipMap's list of dicts
    options = {id(_final_step(model)): {"zipmap": False}} if class_labels else None
    try:
        graph = skl2onnx.convert_sklearn(model, initial_types=initial, options=options)
    except Exception as e:  # skl2onnx raises RuntimeError, NameError, TypeError ... for what it cannot convert
        unsupported = _unsupported_parts(model)
        part = f" (no converter for {', '.join(unsupported)})" if unsupported else ""
        raise UnsupportedModelError(f"skl2onnx cannot convert the {what} model{part}: {e}", hint=_ONNX_HINT) from e
    inputs = list(graph.graph.input)
    if len(inputs) != len(initial):
        raise UnsupportedModelError(
            f"skl2onnx gave the {what} model {len(inputs)} input(s) for {len(initial)} column(s)", hint=_ONNX_HINT
        )
    if per_column:  # one [N, 1] input per column, in the order given (skl2onnx may rename them)
        feeds = [Feed(i.name, (c,), i.type.tensor_type.elem_type, 2) for i, (c, _) in zip(inputs, initial, strict=True)]
    else:
        feeds = [Feed(inputs[0].name, tuple(columns), inputs[0].type.tensor_type.elem_type, 2)]
    out = [o.name for o in graph.graph.output]
    if class_labels:
        expected, labels = np.asarray(model.predict_proba(x)), plain_labels(model.predict(x))
        outputs = Outputs(probabilities=out[1], label=out[0])
    else:
        expected, labels = np.asarray(model.predict(x)), None
        outputs = Outputs(value=out[0])
    return SourceGraph(
        graph=graph,
        feeds=feeds,
        outputs=outputs,
        tasks=tasks,
        class_labels=class_labels,
        expected_values=expected,
        expected_labels=labels,
        source={
            "framework": "sklearn",
            "framework_version": sklearn.__version__,
            "converter": "skl2onnx",
            "converter_version": skl2onnx.__version__,
        },
        what=what,
    )


def _final_step(model: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[-1][1]
    return model


def _starts_with_column_transformer(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[0][1]
    return isinstance(model, ColumnTransformer)


def _parts(model: Any) -> Iterator[Any]:
    """The estimators inside ``model`` (Pipeline steps, ColumnTransformer and FeatureUnion parts), depth first."""
    yield model
    children: list[Any] = []
    for attr in ("steps", "transformer_list", "transformers_"):
        children += [item[1] for item in getattr(model, attr, None) or []]
    for child in children:
        if hasattr(child, "fit"):
            yield from _parts(child)


def _unsupported_parts(model: Any) -> list[str]:
    """The parts of ``model`` skl2onnx has no converter for, by class name."""
    from skl2onnx import get_model_alias

    missing = []
    for part in _parts(model):
        try:
            get_model_alias(type(part))
        except RuntimeError:
            missing.append(type(part).__name__)
    return sorted(set(missing))


def load_skops(path: str | Path) -> Any:
    """Load a scikit-learn model saved with ``skops.io.dump``, trusting only scikit-learn and numpy types.

    Raises:
        UnsupportedModelError: the file is not a skops file, or holds types outside scikit-learn and numpy (listed).
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise UnsupportedModelError(f"skops file {str(path)!r} does not exist", hint="check the path")
    try:
        untrusted = list(sio.get_untrusted_types(file=path))
    except Exception as e:  # not a zip, or not skops' schema
        raise UnsupportedModelError(
            f"{path} is not a skops file: {e}", hint="save the model with skops.io.dump(model, 'model.skops')"
        ) from e
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise UnsupportedModelError(
            f"{path} holds types rayml does not trust: {refused}; only scikit-learn and numpy types are loaded",
            hint="build the model from scikit-learn parts only, or export it to ONNX yourself and register the file (--onnx)",
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as e:
        raise UnsupportedModelError(f"cannot load skops file {path}: {e}", hint="save it again with skops.io.dump") from e
