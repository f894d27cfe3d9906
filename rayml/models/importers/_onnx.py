"""ONNX models (a file, bytes or an ``onnx.ModelProto``) and MLflow models with an ``onnx`` flavor.

Inputs: a graph whose inputs are named after the sample's columns (``[N]`` or ``[N, 1]`` each) is fed column by
column; a graph with one ``[N, F]`` input is fed the feature columns in order (``features``, default: the sample's
columns but the target). Outputs are recognised from what the graph answers on the sample: a float ``[N, K]`` tensor
(K >= 2) is a classifier's probabilities, an integer or string ``[N]`` tensor its label, a float ``[N]`` or ``[N, 1]``
tensor a value (or, with ``task="binary"``, the probability of class 1). A ZipMap output (a list of dicts, what
skl2onnx and onnxmltools write unless told not to) is replaced by the probability tensor it was made from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd

from rayml.data.schema import as_category_strings
from rayml.errors import ModelError, UnsupportedModelError
from rayml.models.importers._graph import NUMERIC_TYPES, Feed, Outputs, elem_type_name
from rayml.models.importers._parity import plain_label, plain_labels
from rayml.models.importers._source import Request, SourceGraph, classifier_tasks, default_class_labels, matrix_features

_NUMPY: dict[int, Any] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
}
_ZIPMAP_HINT = "convert the classifier without ZipMap (skl2onnx options={'zipmap': False}, onnxmltools zipmap=False)"
PICKLED_FLAVORS = ("sklearn", "xgboost", "lightgbm", "pytorch", "python_function")


def load_onnx(model: str | Path | bytes) -> onnx.ModelProto:
    """Read an ONNX model from a file or bytes (external data next to the file is read too).

    Raises:
        UnsupportedModelError: the file does not exist or is not an ONNX model.
    """
    if isinstance(model, bytes):
        where, load = "the given bytes", lambda: onnx.load_from_string(model)
    else:
        path = Path(model)
        if not path.is_file():
            raise UnsupportedModelError(f"ONNX file {str(path)!r} does not exist", hint="check the path")
        where, load = str(path), lambda: onnx.load(str(path))
    try:
        proto = load()
    except Exception as e:  # protobuf's DecodeError and friends
        raise UnsupportedModelError(f"{where} is not an ONNX model: {e}", hint="pass a .onnx file") from e
    if not proto.graph.output:
        raise UnsupportedModelError(f"{where} is not an ONNX model (its graph has no outputs)", hint="pass a .onnx file")
    return proto


def from_onnx(proto: onnx.ModelProto, req: Request, source: dict[str, str] | None = None, what: str = "ONNX") -> SourceGraph:
    """Take an ONNX model: map its inputs to the sample's columns and its outputs to the task.

    Args:
        proto: the model (not changed).
        source: the lineage ``source`` (default: an ONNX file, read with the installed onnx).

    Raises:
        UnsupportedModelError: an input matches no column (and it is not one matrix input), an input or output has a
            type rayml cannot give or read, or the outputs hold no value or probabilities.
    """
    declared = _declared_labels(proto)
    proto = _without_zipmap(proto)
    graph = proto.graph
    initialized = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialized]
    columns = set(map(str, req.sample.columns))
    if inputs and all(i.name in columns for i in inputs):
        feeds = [Feed(i.name, (i.name,), _elem_type(i, what), _rank(i, what)) for i in inputs]
    elif len(inputs) == 1 and len(_dims(inputs[0])) == 2:
        width = _dims(inputs[0])[1]
        features = matrix_features(req, None, width if isinstance(width, int) else None, what)
        feeds = [Feed(inputs[0].name, tuple(features), _elem_type(inputs[0], what), 2)]
    else:
        unmatched = [i.name for i in inputs if i.name not in columns]
        raise UnsupportedModelError(
            f"the {what} model's input(s) {unmatched} are not columns of the sample (columns: {sorted(columns)[:20]}), "
            "and it does not take one [N, F] matrix",
            hint="name the graph's inputs after the columns (one [N] or [N, 1] input each), or export it with one "
            "feature-matrix input and pass features=[...] (--features)",
        )
    answers = _run(proto, feeds, req.sample, what)
    by_kind = _by_kind(answers)
    if "probabilities" in by_kind:
        probs = answers[by_kind["probabilities"]]
        n_classes = probs.shape[1]
        if req.class_labels is None and declared is not None and len(declared) == n_classes:
            class_labels, known = declared, True
        else:
            class_labels, known = default_class_labels(req, n_classes)
        tasks, expected = classifier_tasks(class_labels), probs
        outputs = Outputs(probabilities=by_kind["probabilities"])
    elif "value" in by_kind:
        class_labels, known = default_class_labels(req, 2)
        tasks, expected = ("regression", "binary"), answers[by_kind["value"]]
        outputs = Outputs(value=by_kind["value"])
    else:
        raise UnsupportedModelError(
            f"the {what} model answers no value or probabilities: its outputs are "
            + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in answers.items()),
            hint="a regressor answers a float [N] or [N, 1] tensor, a classifier a float [N, K] probability tensor",
        )
    labels = None
    if "label" in by_kind:
        found = plain_labels(answers[by_kind["label"]])
        labels = found if set(found.tolist()) <= set(class_labels) else None
    return SourceGraph(
        graph=proto,
        feeds=feeds,
        outputs=outputs,
        tasks=tasks,
        class_labels=class_labels,
        expected_values=expected,
        expected_labels=labels,
        source=source
        or {
            "framework": "onnx",
            "framework_version": f"{proto.producer_name} {proto.producer_version}".strip() or "unknown",
            "converter": "onnx",
            "converter_version": onnx.__version__,
        },
        what=what,
        class_labels_known=known,
    )


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _elem_type(value: onnx.ValueInfoProto, what: str) -> int:
    t = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else None
    if t not in (*NUMERIC_TYPES, onnx.TensorProto.STRING):
        kind = elem_type_name(t) if t is not None else value.type.WhichOneof("value")
        raise UnsupportedModelError(
            f"the {what} model's input {value.name!r} takes {kind}; rayml feeds numbers (float, double, int64, int32) "
            "and strings",
            hint="export the model with float or string inputs",
        )
    return t


def _rank(value: onnx.ValueInfoProto, what: str) -> int:
    """1 for a column input [N], 2 for [N, 1] (a dimension without a size counts as 1)."""
    dims = _dims(value)
    if len(dims) == 1 or (len(dims) == 2 and dims[1] in (1, 0, "")):
        return len(dims)
    raise UnsupportedModelError(
        f"the {what} model's input {value.name!r} has shape {dims}; a column input is [N] or [N, 1]",
        hint="export the model with one [N] or [N, 1] input per column",
    )


def _declared_labels(proto: onnx.ModelProto) -> list[Any] | None:
    """The class labels the graph records itself (ai.onnx.ml classifiers and ZipMap keep them), if any."""
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_strings", "classlabels_int64s"):
                values = attr.strings if attr.name == "classlabels_strings" else attr.ints
                if len(values):
                    return [plain_label(v) for v in values]
    return None


def _without_zipmap(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every ZipMap output replaced by the probability tensor the ZipMap was given."""
    zipmaps = {n.output[0]: n for n in proto.graph.node if n.op_type == "ZipMap"}
    if not any(o.name in zipmaps for o in proto.graph.output):
        return proto
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    kept_outputs = []
    for o in graph.output:
        node = zipmaps.get(o.name)
        if node is None:
            kept_outputs.append(o)
            continue
        kept_outputs.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
        graph.node.remove(next(n for n in graph.node if n.op_type == "ZipMap" and n.output[0] == o.name))
    del graph.output[:]
    graph.output.extend(kept_outputs)
    return proto


def _column(values: pd.Series, elem_type: int) -> np.ndarray:
    if elem_type == onnx.TensorProto.STRING:
        return as_category_strings(values)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float32).astype(_NUMPY[elem_type])


def source_feed(feeds: list[Feed], sample: pd.DataFrame) -> dict[str, np.ndarray]:
    """The onnxruntime feed of the source graph for the sample rows, as the wrapped graph computes it (numbers
    through float32)."""
    out = {}
    for feed in feeds:
        parts = [_column(sample[c], feed.elem_type) for c in feed.columns]
        out[feed.name] = parts[0] if feed.rank == 1 else np.stack(parts, axis=1)
    return out


def _run(proto: onnx.ModelProto, feeds: list[Feed], sample: pd.DataFrame, what: str) -> dict[str, np.ndarray]:
    """The graph's outputs on the sample (onnxruntime), by name."""
    from rayml.models.predictor import OnnxPredictor

    try:
        predictor = OnnxPredictor(proto.SerializeToString())
        values = predictor.session.run(None, source_feed(feeds, sample))
    except ModelError as e:
        raise UnsupportedModelError(f"onnxruntime cannot load the {what} model: {e.message}") from e
    except Exception as e:  # onnxruntime's own errors: a shape or type the sample does not fit
        raise UnsupportedModelError(
            f"the {what} model failed on the sample rows: {e}", hint="check that the features fit the model's inputs"
        ) from e
    names = [o.name for o in predictor.outputs]
    answers = {}
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, np.ndarray):
            raise UnsupportedModelError(
                f"the {what} model's output {name!r} is a {type(value).__name__}, not a tensor", hint=_ZIPMAP_HINT
            )
        answers[name] = value
    return answers


def _by_kind(answers: dict[str, np.ndarray]) -> dict[str, str]:
    """The first output of each kind: ``probabilities`` (float [N, K], K >= 2), ``label`` (int or str [N] / [N, 1]),
    ``value`` (float [N] / [N, 1])."""
    kinds: dict[str, str] = {}
    for name, v in answers.items():
        column = v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1)
        if v.dtype.kind == "f" and v.ndim == 2 and v.shape[1] >= 2:
            kinds.setdefault("probabilities", name)
        elif v.dtype.kind in "iuOSUb" and column:
            kinds.setdefault("label", name)
        elif v.dtype.kind == "f" and column:
            kinds.setdefault("value", name)
    return kinds


def _registered_source(uri: str, tracking_uri: str | None) -> str:
    """Where a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI's files are, asked of the registry at
    ``tracking_uri`` (MLflow's own resolution asks the process-wide registry instead); other URIs as they are."""
    if not uri.startswith("models:/") or tracking_uri is None:
        return uri
    from mlflow import MlflowClient

    ref = uri[len("models:/") :].strip("/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).source)
    name, _, version = ref.partition("/")
    if not version.isdigit():
        return uri  # models:/NAME/Stage and the like: MLflow's own resolution
    return str(client.get_model_version_download_uri(name, version))


def load_mlflow(uri: str, tracking_uri: str | None = None) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The ONNX model of an MLflow model with an ``onnx`` flavor, and its lineage ``source``.

    Only the ``onnx`` flavor is read: a pickled flavor (sklearn, xgboost, lightgbm, pytorch) is never loaded.

    Args:
        uri: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH``, or a local model directory.
        tracking_uri: the MLflow tracking server that resolves ``models:/`` and ``runs:/`` (default: MLflow's).

    Raises:
        UnsupportedModelError: the URI cannot be read, or the model has no onnx flavor (the message says what to do).
    """
    import mlflow
    import mlflow.artifacts
    from mlflow.models import Model

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=_registered_source(uri, tracking_uri), tracking_uri=tracking_uri)
        mlmodel = Model.load(local)
    except Exception as e:  # MlflowException, OSError ...
        raise UnsupportedModelError(
            f"cannot read the MLflow model {uri!r}: {e}",
            hint="pass models:/NAME/VERSION, runs:/RUN_ID/PATH or a model directory, with the right tracking URI",
        ) from e
    flavors = dict(mlmodel.flavors)
    if "onnx" not in flavors:
        pickled = [f for f in flavors if f in PICKLED_FLAVORS and f != "python_function"]
        hint = (
            f"its {', '.join(pickled)} flavor is a pickle, which rayml never loads: load the model yourself "
            f"(e.g. mlflow.{pickled[0]}.load_model({uri!r}), only for a model you trust) and pass the object to "
            "rayml.register_model(...)"
            if pickled
            else "convert the model to ONNX and log it with mlflow.onnx.log_model"
        )
        raise UnsupportedModelError(f"the MLflow model {uri!r} has no onnx flavor (flavors: {sorted(flavors)})", hint=hint)
    data = flavors["onnx"].get("data", "model.onnx")
    proto = load_onnx(Path(local) / data)
    return proto, {
        "framework": "mlflow",
        "framework_version": str(mlmodel.mlflow_version or "unknown"),
        "converter": "onnx",
        "converter_version": onnx.__version__,
    }
