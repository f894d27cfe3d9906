"""XGBoost models (the scikit-learn API or a native ``Booster``), converted with onnxmltools; model files in XGBoost's
own JSON or UBJSON format (never a pickle)."""

from __future__ import annotations

import json
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

FILE_SUFFIXES = (".json", ".ubj")
_ONNX_HINT = "export the model to ONNX yourself and register the file (--onnx)"


def _tasks(objective: str, what: str) -> tuple[str, ...]:
    if objective.startswith("reg:") or objective in ("count:poisson",):
        return ("regression",)
    if objective == "binary:logistic":
        return ("binary",)
    if objective == "multi:softprob":
        return ("multiclass",)
    raise UnsupportedModelError(
        f"the {what} model's objective {objective!r} is not supported",
        hint="rayml imports reg:* regressors, binary:logistic and multi:softprob classifiers (they answer "
        "probabilities; train with multi:softprob instead of multi:softmax)",
    )


def from_xgboost(model: Any, req: Request) -> SourceGraph:
    """Convert an ``XGBRegressor`` / ``XGBClassifier`` / ``Booster``.

    Raises:
        UnsupportedModelError: the model is not fitted, its objective or categorical features cannot be converted.
    """
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    what = describe(model)
    sk = model if isinstance(model, xgboost.XGBModel) else None
    if sk is not None:
        try:
            booster = sk.get_booster()
        except Exception as e:  # xgboost raises NotFittedError (a ValueError) or XGBoostError
            raise UnsupportedModelError(f"the {what} model is not fitted", hint="fit it before registering it") from e
    elif isinstance(model, xgboost.Booster):
        booster = model
    else:
        raise UnsupportedModelError(f"{what} is not an XGBoost model", hint="pass an XGBRegressor, XGBClassifier or Booster")
    config = json.loads(booster.save_config())["learner"]
    tasks = _tasks(config["objective"]["name"], what)
    if "c" in (booster.feature_types or []):
        raise UnsupportedModelError(
            f"the {what} model has categorical features (enable_categorical), which onnxmltools cannot convert",
            hint="one-hot encode those columns before training, or " + _ONNX_HINT,
        )
    num_class = int(config["learner_model_param"].get("num_class", 0))
    tasks, class_labels, renamed, known = booster_classes(req, tasks, sk, num_class)

    names = booster.feature_names
    features = matrix_features(req, names, booster.num_features(), what)
    plain = booster.copy()  # onnxmltools reads split features as f0, f1 ...: the names go, the order stays
    plain.feature_names = None
    plain.feature_types = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = onnxmltools.convert_xgboost(plain, initial_types=[("X", FloatTensorType([None, len(features)]))])
    except Exception as e:
        raise UnsupportedModelError(f"onnxmltools cannot convert the {what} model: {e}", hint=_ONNX_HINT) from e

    x = model_input(req, features, by_name=names is not None)
    raw = booster.predict(xgboost.DMatrix(x)) if sk is None else None
    return onnxmltools_source(
        graph,
        features,
        class_labels=class_labels,
        tasks=tasks,
        answers=expected_answers(sk, x, class_labels, renamed, raw, tasks),
        framework="xgboost",
        framework_version=xgboost.__version__,
        what=what,
        known=known,
    )


def load_xgboost(path: str | Path) -> Any:
    """Load a native XGBoost model saved with ``save_model("model.json")`` (JSON) or ``.ubj`` (UBJSON).

    Raises:
        UnsupportedModelError: the file is missing, has another format (a pickle, the old binary format), or XGBoost
            cannot read it.
    """
    import xgboost

    path = Path(path)
    if not path.is_file():
        raise UnsupportedModelError(f"XGBoost model file {str(path)!r} does not exist", hint="check the path")
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise UnsupportedModelError(
            f"{path} is not an XGBoost JSON or UBJSON model file (suffix {path.suffix!r})",
            hint="save it with model.save_model('model.json') (or '.ubj'); rayml never loads pickles",
        )
    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as e:
        raise UnsupportedModelError(
            f"XGBoost cannot read {path}: {str(e).splitlines()[0]}", hint="save it again with save_model"
        ) from e
    return booster
