"""LightGBM models (the scikit-learn API or a native ``Booster``), converted with onnxmltools; model files in
LightGBM's own text format (never a pickle)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from rayml.errors import UnsupportedModelError
from rayml.models.importers._boosters import booster_classes, expected_answers, onnxmltools_source
from rayml.models.importers._source import (
    Request,
    SourceGraph,
    describe,
    matrix_features,
    model_input,
)

_REGRESSION = ("regression", "regression_l1", "huber", "fair", "quantile", "mape", "poisson", "gamma", "tweedie")
_ONNX_HINT = "export the model to ONNX yourself and register the file (--onnx)"
_PICKLE_MAGIC = b"\x80"


def _tasks(objective: str, what: str) -> tuple[str, ...]:
    name = objective.split()[0] if objective else ""
    if name in _REGRESSION:
        return ("regression",)
    if name == "binary":
        return ("binary",)
    if name == "multiclass":
        return ("multiclass",)
    raise UnsupportedModelError(
        f"the {what} model's objective {objective!r} is not supported",
        hint="rayml imports regression objectives (regression, huber, poisson ...), binary and multiclass (softmax)",
    )


def from_lightgbm(model: Any, req: Request) -> SourceGraph:
    """Convert an ``LGBMRegressor`` / ``LGBMClassifier`` / ``Booster``.

    Raises:
        UnsupportedModelError: the model is not fitted, its objective or categorical features cannot be converted.
    """
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    what = describe(model)
    sk = model if isinstance(model, lightgbm.LGBMModel) else None
    if sk is not None:
        try:
            booster = sk.booster_
        except Exception as e:  # sklearn's NotFittedError
            raise UnsupportedModelError(f"the {what} model is not fitted", hint="fit it before registering it") from e
    elif isinstance(model, lightgbm.Booster):
        booster = model
    else:
        raise UnsupportedModelError(f"{what} is not a LightGBM model", hint="pass an LGBMRegressor, LGBMClassifier or Booster")
    dump = booster.dump_model(num_iteration=1)
    tasks = _tasks(str(dump.get("objective", "")), what)
    if booster.pandas_categorical:
        raise UnsupportedModelError(
            f"the {what} model has pandas categorical features, which onnxmltools cannot convert",
            hint="one-hot encode those columns before training, or " + _ONNX_HINT,
        )
    num_class = int(dump.get("num_class", 0))
    tasks, class_labels, renamed, known = booster_classes(req, tasks, sk, num_class)

    fitted_names = getattr(sk, "feature_names_in_", None)
    names = [str(n) for n in (fitted_names if fitted_names is not None else booster.feature_name())]
    features = matrix_features(req, names, booster.num_feature(), what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = onnxmltools.convert_lightgbm(
                sk if sk is not None else booster,
                initial_types=[("X", FloatTensorType([None, len(features)]))],
                zipmap=False,
            )
    except Exception as e:
        raise UnsupportedModelError(f"onnxmltools cannot convert the {what} model: {e}", hint=_ONNX_HINT) from e

    x = model_input(req, features, by_name=sk is not None and fitted_names is not None)
    raw = booster.predict(x) if sk is None else None
    return onnxmltools_source(
        graph,
        features,
        class_labels=class_labels,
        tasks=tasks,
        answers=expected_answers(sk, x, class_labels, renamed, raw, tasks),
        framework="lightgbm",
        framework_version=lightgbm.__version__,
        what=what,
        known=known,
    )


def load_lightgbm(path: str | Path) -> Any:
    """Load a native LightGBM model saved with ``booster.save_model("model.txt")`` (LightGBM's text format).

    Raises:
        UnsupportedModelError: the file is missing, is a pickle, or LightGBM cannot read it.
    """
    import lightgbm

    path = Path(path)
    if not path.is_file():
        raise UnsupportedModelError(f"LightGBM model file {str(path)!r} does not exist", hint="check the path")
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(_PICKLE_MAGIC) or not head.lstrip().startswith(b"tree"):
        raise UnsupportedModelError(
            f"{path} is not a LightGBM text model file",
            hint="save it with booster.save_model('model.txt') (or model.booster_.save_model); rayml never loads pickles",
        )
    try:
        return lightgbm.Booster(model_file=str(path))
    except lightgbm.basic.LightGBMError as e:
        raise UnsupportedModelError(f"LightGBM cannot read {path}: {e}", hint="save it again with save_model") from e
