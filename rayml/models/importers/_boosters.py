"""What the XGBoost and LightGBM importers share: the source's own answers, and the onnxmltools graph as a source."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from rayml.models.importers._graph import Feed, Outputs
from rayml.models.importers._parity import plain_labels
from rayml.models.importers._source import (
    Request,
    SourceGraph,
    classifier_tasks,
    default_class_labels,
    named_class_labels,
)


def booster_classes(
    req: Request, tasks: tuple[str, ...], sk: Any, num_class: int
) -> tuple[tuple[str, ...], list[Any], dict[Any, Any], bool]:
    """A booster's classes: ``(tasks, class_labels, renamed, known)``.

    Args:
        req: the conversion request (its ``class_labels`` name classes the model does not record, or rename them).
        tasks: the tasks the objective allows.
        sk: the scikit-learn API model (its ``classes_`` are the classes), or None for a Booster.
        num_class: the number of classes a multiclass Booster records.

    Returns:
        The tasks narrowed by the number of classes, the class labels ([] for a regressor), the sklearn-API model's
        own class -> its label, and whether the labels came from the model or the caller (not a 0..K-1 default).
    """
    if tasks == ("regression",):
        return tasks, [], {}, True
    if sk is not None and hasattr(sk, "classes_"):
        labels, renamed = named_class_labels(req, plain_labels(sk.classes_).tolist())
        known = True
    else:
        labels, known = default_class_labels(req, 2 if tasks == ("binary",) else num_class)
        renamed = {}
    return classifier_tasks(labels), labels, renamed, known


def expected_answers(
    sk: Any, x: Any, class_labels: Sequence[Any], renamed: dict[Any, Any], raw: Any, tasks: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the source answers on the sample, for the parity check: (values or probabilities [N, K], labels or None).

    Args:
        sk: the scikit-learn API model, or None for a Booster.
        x: the sample's feature matrix as the model takes it.
        class_labels: a classifier's classes ([] for a regressor).
        renamed: the sklearn-API model's own class -> its class label (see ``named_class_labels``).
        raw: a Booster's predictions on ``x`` (used when ``sk`` is None): values, P(class 1), or probabilities.
        tasks: the tasks the model can answer.
    """
    if sk is not None:
        expected = np.asarray(sk.predict_proba(x) if class_labels else sk.predict(x))
        labels = plain_labels([renamed[v] for v in plain_labels(sk.predict(x))]) if class_labels else None
        return expected, labels
    expected = np.asarray(raw)
    if tasks == ("binary",):
        expected = np.stack([1 - expected, expected], axis=1)
    return expected, None


def onnxmltools_source(
    graph: onnx.ModelProto,
    features: Sequence[str],
    *,
    class_labels: list[Any],
    tasks: tuple[str, ...],
    answers: tuple[np.ndarray, np.ndarray | None],
    framework: str,
    framework_version: str,
    what: str,
    known: bool,
) -> SourceGraph:
    """A converted booster (one float matrix in) as a source graph."""
    import onnxmltools

    out = [o.name for o in graph.graph.output]
    first = graph.graph.input[0]
    return SourceGraph(
        graph=graph,
        feeds=[Feed(first.name, tuple(features), first.type.tensor_type.elem_type, 2)],
        # onnxmltools' labels may be class indices, not the class labels: the label comes from the probabilities
        outputs=Outputs(probabilities=out[1]) if class_labels else Outputs(value=out[0]),
        tasks=tasks,
        class_labels=class_labels,
        expected_values=answers[0],
        expected_labels=answers[1],
        source={
            "framework": framework,
            "framework_version": framework_version,
            "converter": "onnxmltools",
            "converter_version": onnxmltools.__version__,
        },
        what=what,
        class_labels_known=known,
    )
