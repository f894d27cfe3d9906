"""Wrap a converter's ONNX graph so that it keeps rayml's model contract.

A converter (skl2onnx, onnxmltools, ``torch.onnx``) or a user's ONNX file gives a graph with its own inputs (one
feature matrix ``[N, F]``, or one ``[N, 1]`` tensor per column) and its own outputs (a ``[N, 1]`` value, a label and
``[N, K]`` probabilities ...). :func:`wrap` puts it between rayml's raw-column inputs and the contract's outputs
(:mod:`rayml.models.predictor`):

- inputs: one per raw column, shape ``[N]``: numbers as FP32, text as strings. Each source input is fed by its
  column(s): Cast to the source's element type where it differs, Reshape to ``[N, 1]`` where the source wants a
  matrix, Concat for a matrix of several columns.
- outputs: ``prediction`` FP32 ``[N]`` (regression: the value; binary: the probability of ``class_labels[1]``), or
  ``label`` ``[N]`` (INT64 when every class label is an integer, else strings) then ``probabilities`` FP32
  ``[N, K]`` (multiclass). A source label whose type is not the contract's is replaced by the class of the highest
  probability, looked up in ``class_labels``.

Only operators that every opset since 7 has (Cast, Reshape, Concat, Gather, ArgMax, Identity) are added, so the
source's own opset is kept as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rayml.errors import ModelError, UnsupportedModelError
from rayml.models.predictor import LABEL, PREDICTION, PROBABILITIES

# the raw inputs' element types: numbers are FP32, categories strings (what OnnxPredictor.feed sends)
NUMBER, TEXT = TensorProto.FLOAT, TensorProto.STRING
NUMERIC_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32)
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
DEFAULT_OPSET = 15  # added when the source graph imports no default-domain opset (onnxmltools' tree models)
MIN_OPSET = 7
_PREFIX = "source/"  # every name of the source graph, so it cannot clash with a column name
_OURS = "rayml/"


@dataclass(frozen=True)
class Feed:
    """One input of the source graph and the raw column(s) that feed it.

    Attributes:
        name: the source graph's input.
        columns: one column, or (a matrix input) the columns in the order of the matrix's columns.
        elem_type: the source input's ONNX element type (``TensorProto.FLOAT`` ...).
        rank: 1 for ``[N]``, 2 for ``[N, len(columns)]``.
    """

    name: str
    columns: tuple[str, ...]
    elem_type: int
    rank: int


@dataclass(frozen=True)
class Outputs:
    """Which source outputs answer for the task.

    Attributes:
        value: regression: the value ``[N]`` or ``[N, 1]``; binary without ``probabilities``: P(class_labels[1]).
        probabilities: classifiers: ``[N, K]`` in ``class_labels`` order.
        label: multiclass: the predicted class, used as the ``label`` output when its element type is the contract's
            (the source's labels must then be ``class_labels`` themselves; else leave it None).
    """

    value: str | None = None
    probabilities: str | None = None
    label: str | None = None


def elem_type_name(elem_type: int) -> str:
    return str(TensorProto.DataType.Name(elem_type)).lower()


def label_elem_type(class_labels: Sequence[Any]) -> int:
    """The contract's ``label`` element type: INT64 when every class label is an int, else strings."""
    return TensorProto.INT64 if all(isinstance(c, int) for c in class_labels) else TensorProto.STRING


def tensor_types(graph: onnx.GraphProto, which: str) -> dict[str, int]:
    """Element type of each tensor input or output of ``graph`` (``which``: ``input`` | ``output``)."""
    values = graph.input if which == "input" else graph.output
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


class _Builder:
    """The nodes and constants :func:`wrap` adds, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"{_OURS}{what}_{self._n}"

    def const(self, what: str, value: np.ndarray) -> str:
        name = self.name(what)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"{op}_node"), **attrs))
        return out

    def cast(self, x: str, have: int, want: int, output: str | None = None) -> str:
        if have == want:
            return x if output is None else self.node("Identity", [x], output)
        return self.node("Cast", [x], output, to=want)

    def reshape(self, x: str, shape: list[int], output: str | None = None) -> str:
        return self.node("Reshape", [x, self.const("shape", np.array(shape, dtype=np.int64))], output)


def wrap(
    source: onnx.ModelProto,
    feeds: Sequence[Feed],
    outputs: Outputs,
    task: str,
    class_labels: Sequence[Any],
) -> onnx.ModelProto:
    """The source graph with rayml's raw-column inputs and the contract's outputs for ``task``.

    Args:
        source: the converter's graph (not changed).
        feeds: how each source input is fed from raw columns; every source input needs one.
        outputs: which source outputs answer for the task.
        task: ``regression`` | ``binary`` | ``multiclass``.
        class_labels: classifiers: the classes in the order of the source's probabilities.

    Raises:
        UnsupportedModelError: a source input is not fed, or takes a type a raw column cannot give; the opset is too old.
        ModelError: the wrapped graph does not pass the ONNX checker (a bug: please report it).
    """
    opset = default_opset(source)
    if opset is not None and opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"the ONNX model uses opset {opset}; rayml needs at least opset {MIN_OPSET}",
            hint="export or convert it again with a newer opset (e.g. target_opset=15)",
        )
    src = onnx.compose.add_prefix(source, _PREFIX)
    graph = src.graph
    initialized = {t.name for t in graph.initializer}
    wanted = [i.name for i in graph.input if i.name not in initialized]
    fed = {_PREFIX + f.name for f in feeds}
    if set(wanted) - fed:
        missing = sorted(n[len(_PREFIX) :] for n in set(wanted) - fed)
        raise UnsupportedModelError(f"no column feeds the model's input(s) {missing}")

    b = _Builder()
    raw: dict[str, int] = {}  # column -> raw element type, in first-use order
    for feed in feeds:
        parts = []
        for column in feed.columns:
            have = raw.setdefault(column, TEXT if feed.elem_type == TensorProto.STRING else NUMBER)
            if (have == TEXT) != (feed.elem_type == TensorProto.STRING):
                raise UnsupportedModelError(
                    f"column {column!r} feeds inputs of different types (text and numbers) of the ONNX model"
                )
            x = b.cast(column, have, feed.elem_type)
            parts.append(b.reshape(x, [-1, 1]) if feed.rank == 2 else x)
        target = _PREFIX + feed.name
        if len(parts) == 1:
            b.node("Identity", parts, target)
        else:
            b.node("Concat", parts, target, axis=1)
    pre = list(b.nodes)
    b.nodes.clear()

    produced = tensor_types(graph, "output")
    graph_outputs = _contract_outputs(b, produced, outputs, task, class_labels)

    inputs = [helper.make_tensor_value_info(c, t, ["N"]) for c, t in raw.items()]
    merged = helper.make_graph(
        pre + list(graph.node) + b.nodes,
        "rayml_import",
        inputs,
        graph_outputs,
        initializer=list(graph.initializer) + b.initializers,
        value_info=list(graph.value_info),
    )
    merged.sparse_initializer.extend(graph.sparse_initializer)
    opsets = list(src.opset_import)
    if opset is None:
        opsets.append(helper.make_opsetid("", DEFAULT_OPSET))
    ir_version = max(src.ir_version, helper.find_min_ir_version_for(opsets, ignore_unknown=True))
    model = helper.make_model(merged, opset_imports=opsets, ir_version=ir_version, producer_name="rayml")
    model.functions.extend(src.functions)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelError(
            f"the wrapped ONNX graph is invalid: {e}", hint="this is a bug in rayml's importer; please report it with the model"
        ) from e
    return model


def _contract_outputs(
    b: _Builder, produced: dict[str, int], outputs: Outputs, task: str, class_labels: Sequence[Any]
) -> list[onnx.ValueInfoProto]:
    """Add the nodes that answer with the contract's outputs; their value infos, in the contract's order."""

    def source(name: str | None, what: str) -> tuple[str, int]:
        if name is None or _PREFIX + name not in produced:
            have = sorted(n[len(_PREFIX) :] for n in produced)
            raise UnsupportedModelError(f"the ONNX model has no {what} output (outputs: {have})")
        return _PREFIX + name, produced[_PREFIX + name]

    if task in ("regression", "binary"):
        if task == "binary" and outputs.probabilities is not None:
            probs, have = source(outputs.probabilities, "probabilities")
            x = b.node("Gather", [probs, b.const("class1", np.array(1, dtype=np.int64))], axis=1)
        else:
            x, have = source(outputs.value, "value")
        x = b.cast(x, have, TensorProto.FLOAT)
        b.reshape(x, [-1], PREDICTION)
        return [helper.make_tensor_value_info(PREDICTION, TensorProto.FLOAT, ["N"])]

    probs, have = source(outputs.probabilities, "probabilities")
    want = label_elem_type(class_labels)
    if outputs.label is not None and produced.get(_PREFIX + outputs.label) == want:
        b.reshape(_PREFIX + outputs.label, [-1], LABEL)
    else:
        index = b.node("ArgMax", [probs], axis=1, keepdims=0)
        labels = (
            np.array(list(class_labels), dtype=np.int64)
            if want == TensorProto.INT64
            else np.array([str(c).encode() for c in class_labels], dtype=object)
        )
        b.node("Gather", [b.const("class_labels", labels), index], LABEL, axis=0)
    b.cast(probs, have, TensorProto.FLOAT, PROBABILITIES)
    return [
        helper.make_tensor_value_info(LABEL, want, ["N"]),
        helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", len(class_labels)]),
    ]
