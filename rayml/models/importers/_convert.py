"""From any supported model to a model directory: find the source, wrap its graph, check parity, describe it."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml.config import DataConfig
from rayml.data.loading import fingerprint
from rayml.data.schema import UNKNOWN, Feature, Schema, as_category_strings
from rayml.data.stats import reference_stats
from rayml.errors import DataError, PredictionInputError, UnsupportedModelError
from rayml.models.importers._graph import wrap
from rayml.models.importers._onnx import from_onnx, load_mlflow, load_onnx
from rayml.models.importers._parity import PARITY_ATOL, PARITY_RTOL, Answers, check_parity, plain_labels
from rayml.models.importers._source import AUTO, Request, SourceGraph, framework_of, resolve_task
from rayml.models.model_dir import ModelDir
from rayml.models.predictor import LABEL, PREDICTION, PROBABILITIES, OnnxPredictor, TensorInfo

logger = logging.getLogger("rayml.models")

ACCEPTED = (
    "a fitted scikit-learn estimator or Pipeline, an XGBoost or LightGBM model (scikit-learn API or Booster), a "
    "torch.nn.Module, an onnx.ModelProto, ONNX bytes, a path to an .onnx file, or an MLflow model URI with an onnx flavor"
)
_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:")
EXAMPLE_ROWS = 5
_PROBABILITY_SLACK = 1e-3  # how far from [0, 1] (and multiclass rows from summing to 1) float32 outputs may stray


@dataclass
class ConvertedModel:
    """A converted, parity-checked model, not yet written: :meth:`write` makes it a model directory.

    Attributes:
        onnx_bytes: the wrapped graph (raw columns in, the contract's outputs out).
        meta: the model directory's metadata (task, target, class_labels, schema, source, data_fingerprint, parity).
        reference_stats: the reference statistics of the sample (or the given reference rows).
        parity: the parity figures (``parity_rows``, ``parity_max_abs_diff``, ``parity_label_agreement``).
        input_example: a few sample rows (the MLflow model's input example).
    """

    onnx_bytes: bytes
    meta: dict[str, Any]
    reference_stats: dict[str, Any]
    parity: dict[str, float]
    input_example: pd.DataFrame | None = None

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def source(self) -> dict[str, str]:
        """framework, framework_version, converter, converter_version."""
        return dict(self.meta["source"])

    def write(self, out_dir: str | Path | None = None, lineage: dict[str, str] | None = None) -> ModelDir:
        """Write the model directory (a new temporary directory when ``out_dir`` is None), with ``lineage`` tags."""
        out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="rayml-import-"))
        meta = {**self.meta, "lineage": dict(lineage)} if lineage else self.meta
        return ModelDir.write_model(
            out, onnx_bytes=self.onnx_bytes, meta=meta, reference_stats=self.reference_stats, input_example=self.input_example
        )


def prepare(
    model: Any,
    *,
    sample: pd.DataFrame,
    target: str | None = None,
    task: str = AUTO,
    reference: pd.DataFrame | None = None,
    features: Sequence[str] | None = None,
    class_labels: Sequence[Any] | None = None,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
    tracking_uri: str | None = None,
) -> ConvertedModel:
    """Convert ``model`` and check it, in memory (:func:`convert` writes the result). Arguments as :func:`convert`."""
    if not isinstance(sample, pd.DataFrame) or sample.empty:
        raise DataError(
            f"sample must be a non-empty pandas DataFrame of raw rows, got {type(sample).__name__}"
            + (" with no rows" if isinstance(sample, pd.DataFrame) else ""),
            hint="pass some rows the model was trained on (or rows like them), with the target column",
        )
    req = Request(
        sample=sample,
        target=target,
        task=task,
        features=tuple(features) if features is not None else None,
        class_labels=tuple(class_labels) if class_labels is not None else None,
        tracking_uri=tracking_uri,
    )
    found = _find(model, req)
    task = resolve_task(found, req)
    labels = found.class_labels if task != "regression" else []
    expected = _expected(found, task)
    graph = wrap(found.graph, found.feeds, found.outputs, task, labels)
    onnx_bytes = graph.SerializeToString()
    predictor = OnnxPredictor(onnx_bytes)
    got = _answers(predictor.predict_all(sample), task)
    parity = check_parity(
        expected, got, task=task, class_labels=labels, index=sample.index, source=found.what, atol=atol, rtol=rtol
    )
    schema = _schema(sample, predictor.inputs, target, task, labels)
    stats = _reference_stats(predictor, sample if reference is None else reference, schema, labels)
    logger.info(
        "converted the %s model (%s) with %s %s: parity on %d rows, max abs diff %.2e",
        found.what,
        task,
        found.source["converter"],
        found.source["converter_version"],
        len(sample),
        parity["parity_max_abs_diff"],
    )
    meta: dict[str, Any] = {
        "task": task,
        "target": target,
        "schema": schema.to_dict(),
        "source": found.source,
        "data_fingerprint": fingerprint(sample),
        "parity": parity,
    }
    if labels:
        meta["class_labels"] = list(labels)
    return ConvertedModel(
        onnx_bytes=onnx_bytes, meta=meta, reference_stats=stats, parity=parity, input_example=sample.head(EXAMPLE_ROWS)
    )


def convert(
    model: Any,
    *,
    sample: pd.DataFrame,
    target: str | None = None,
    task: str = AUTO,
    reference: pd.DataFrame | None = None,
    features: Sequence[str] | None = None,
    class_labels: Sequence[Any] | None = None,
    out_dir: str | Path | None = None,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
    tracking_uri: str | None = None,
) -> ModelDir:
    """Convert a model made elsewhere into a rayml model directory, checked for parity on ``sample``.

    The ONNX graph takes one raw input per column, like a model rayml trained; the directory records the task,
    class labels, feature schema, source (framework, converter and their versions), the sample's data fingerprint,
    the parity figures, and the reference statistics for drift. Register it with :func:`rayml.register_model`
    (which calls this) or ``Registry.register``.

    Args:
        model: a fitted scikit-learn estimator or Pipeline (a ColumnTransformer may scale, impute and one-hot encode
            string columns), an XGBoost or LightGBM model (scikit-learn API or native Booster), a
            ``torch.nn.Module`` (one float32 ``[N, F]`` input; probabilities out for a classifier), an
            ``onnx.ModelProto``, ONNX bytes, a path to an ``.onnx`` file, or an MLflow model URI
            (``models:/...``, ``runs:/...`` or a model directory) with an ``onnx`` flavor. Never a pickle.
        sample: raw rows (with the target column, when ``target`` is given): parity is checked on every row.
        target: the target column of ``sample`` (checked against the task and class labels; not a feature).
        task: ``auto`` (the model's own: a regressor, or a classifier with 2 or more classes) or ``regression`` |
            ``binary`` | ``multiclass`` (a model's one-number output is a value unless ``binary`` says it is the
            probability of ``class_labels[1]``).
        reference: rows for the reference statistics (default: ``sample``).
        features: the columns that make a one-matrix model's input, in order (default: the names the model was
            fitted with, else the sample's columns but the target).
        class_labels: the classes of a model that does not record them (a Booster, torch, most ONNX files), in the
            order of its probability columns (default: 0 .. K-1).
        out_dir: where to write (default: a new temporary directory).
        atol, rtol: parity tolerance: numbers may differ by ``atol + rtol * |expected|``.
        tracking_uri: the MLflow tracking server that resolves a ``models:/`` or ``runs:/`` URI.

    Returns:
        The model directory.

    Raises:
        UnsupportedModelError: the model's type, a part of it, or its inputs and outputs cannot be converted.
        OnnxParityError: the converted graph does not answer as the model does (the worst rows are listed).
        DataError: the sample lacks a column, or its target does not fit the model.

    Example:
        >>> pipe = make_pipeline(ColumnTransformer([...]), Ridge()).fit(df.drop(columns="y"), df["y"])
        >>> md = rayml.models.convert(pipe, sample=df.head(500), target="y")
        >>> md.predict_frame(df.head(3))
    """
    converted = prepare(
        model,
        sample=sample,
        target=target,
        task=task,
        reference=reference,
        features=features,
        class_labels=class_labels,
        atol=atol,
        rtol=rtol,
        tracking_uri=tracking_uri,
    )
    return converted.write(out_dir)


def is_mlflow_uri(text: str) -> bool:
    """Whether ``text`` names an MLflow model (a URI, or a local directory with an ``MLmodel`` file), not a file."""
    if text.startswith(_MLFLOW_SCHEMES):
        return True
    if "://" in text:
        return not text.lower().endswith(".onnx")
    return Path(text).is_dir() and (Path(text) / "MLmodel").is_file()


def _find(model: Any, req: Request) -> SourceGraph:
    """The source module that takes ``model`` (imports of the frameworks happen only there)."""
    if isinstance(model, (str, Path)):
        text = str(model)
        if is_mlflow_uri(text):
            proto, source = load_mlflow(text, req.tracking_uri)
            return from_onnx(proto, req, source, what=f"MLflow model {text}")
        return from_onnx(load_onnx(model), req, what=f"ONNX file {Path(text).name}")
    if isinstance(model, bytes):
        return from_onnx(load_onnx(model), req)
    frameworks = framework_of(model)
    if "onnx" in frameworks and type(model).__name__ == "ModelProto":
        return from_onnx(model, req)
    if "xgboost" in frameworks:
        from rayml.models.importers._xgboost import from_xgboost

        return from_xgboost(model, req)
    if "lightgbm" in frameworks:
        from rayml.models.importers._lightgbm import from_lightgbm

        return from_lightgbm(model, req)
    if "torch" in frameworks and hasattr(model, "forward"):
        from rayml.models.importers._torch import from_torch

        return from_torch(model, req)
    if "sklearn" in frameworks:
        from rayml.models.importers._sklearn import from_sklearn

        return from_sklearn(model, req)
    raise UnsupportedModelError(f"cannot import a {type(model).__module__}.{type(model).__qualname__}", hint=f"pass {ACCEPTED}")


def _expected(found: SourceGraph, task: str) -> Answers:
    """The source's answers in the contract's form (binary: P(class_labels[1]) [N]); classifiers' must be
    probabilities.

    Raises:
        UnsupportedModelError: a classifier's outputs are not probabilities (logits, scores).
    """
    v = np.asarray(found.expected_values, dtype=np.float64)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if task == "binary" and v.ndim == 2:
        v = v[:, 1]
    if task != "regression":
        finite = v[np.isfinite(v)]
        sums = v.sum(axis=1) if v.ndim == 2 else np.ones(1)
        off = (finite < -_PROBABILITY_SLACK) | (finite > 1 + _PROBABILITY_SLACK)
        if off.any() or len(finite) < v.size or (np.abs(sums - 1) > _PROBABILITY_SLACK).any():
            raise UnsupportedModelError(
                f"the {found.what} model's outputs are not probabilities: values from {np.nanmin(v):.4g} to "
                f"{np.nanmax(v):.4g}" + (f", rows summing to {sums.min():.4g} .. {sums.max():.4g}" if v.ndim == 2 else ""),
                hint="a classifier must answer probabilities: end a torch module (or ONNX graph) with a Softmax "
                "(a Sigmoid for one probability column); for a value, pass task='regression'",
            )
    return Answers(v, found.expected_labels)


def _answers(outputs: dict[str, np.ndarray], task: str) -> Answers:
    if task == "multiclass":
        return Answers(outputs[PROBABILITIES], plain_labels(outputs[LABEL]))
    return Answers(outputs[PREDICTION])


def _schema(sample: pd.DataFrame, inputs: list[TensorInfo], target: str | None, task: str, labels: list[Any]) -> Schema:
    """The feature schema of the wrapped graph's inputs: strings are categories (most frequent first), else numbers."""
    max_categories = DataConfig.model_fields["max_categories"].default
    features = []
    for t in inputs:
        if t.datatype != "BYTES":
            features.append(Feature(t.name, "numeric"))
            continue
        counts = pd.Series(as_category_strings(sample[t.name])).value_counts()
        ordered = sorted(((str(k), int(n)) for k, n in counts.items() if k != UNKNOWN), key=lambda kv: (-kv[1], kv[0]))
        features.append(Feature(t.name, "categorical", tuple(k for k, _ in ordered[:max_categories])))
    return Schema(
        features=tuple(features),
        target=target or "",
        task=task,  # type: ignore[arg-type]  # one of TASKS, checked by resolve_task
        classes=tuple(labels) if task == "multiclass" else (),
    )


def _reference_stats(predictor: OnnxPredictor, rows: pd.DataFrame, schema: Schema, labels: list[Any]) -> dict[str, Any]:
    """The reference statistics of ``rows`` with the converted model's predictions (a binary target that holds class
    labels is binned as 0/1, the probability's class)."""
    try:
        predictions = predictor.predict(rows)
    except PredictionInputError as e:
        raise DataError(
            f"the reference rows do not fit the model: {e.message}", hint="pass reference rows like the sample"
        ) from e
    if schema.task == "binary" and schema.target in rows.columns and not pd.api.types.is_numeric_dtype(rows[schema.target]):
        positive = plain_labels(rows[schema.target].to_numpy()) == labels[1]
        rows = rows.assign(**{schema.target: positive.astype(np.float64)})
    return reference_stats(rows, schema, predictions=predictions)
