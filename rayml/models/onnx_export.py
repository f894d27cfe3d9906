"""Export a :class:`TabularMLP` to ONNX that takes raw columns, and prove it matches torch.

The torch module is exported with one input per column (numbers as float32 [N], categories as int64 indices [N]);
then each categorical input is replaced by a string input [N] followed by an ``ai.onnx.ml.LabelEncoder`` that does
the same lookup as :func:`encode_categorical` (unknown -> 0). A multiclass graph then gets its ``label`` output:
``ArgMax`` over ``probabilities`` and a ``Gather`` from a constant tensor of the class labels (INT64 when every label is
an int, else strings). The result serves raw rows with no Python preprocessing and answers with the outputs of the
model contract (:mod:`rayml.models.predictor`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import TensorProto, helper, numpy_helper

from rayml.errors import ModelError, OnnxParityError
from rayml.models.mlp import ModelSpec, TabularMLP, label_array, torch_outputs
from rayml.models.predictor import LABEL, PREDICTION, PROBABILITIES

logger = logging.getLogger("rayml.models")

OPSET = 17
# Parity is judged in the model's training space: for regression the difference is divided by the target's standard
# deviation (when it is above 1), so a target in the millions is held to the same float32 precision as one near 1;
# probabilities (binary, multiclass) are compared as they are. Plus a relative allowance for large outputs, as
# numpy.allclose. Multiclass labels must agree on every row, except where torch's two most probable classes are within
# PARITY_ATOL of each other (a tie at float32 precision may break either way).
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-5
_INDEX_SUFFIX = "__index"
_SHOWN_ROWS = 5


class _PerColumn(torch.nn.Module):
    """Wraps the model so each column is its own graph input."""

    def __init__(self, model: TabularMLP) -> None:
        super().__init__()
        self.model = model
        self.n_num = len(model.spec.numeric)

    def forward(self, *cols: torch.Tensor) -> torch.Tensor:
        n = cols[0].shape[0]
        num = torch.stack(cols[: self.n_num], dim=1) if self.n_num else torch.zeros((n, 0))
        cat = torch.stack(cols[self.n_num :], dim=1) if len(cols) > self.n_num else torch.zeros((n, 0), dtype=torch.int64)
        out: torch.Tensor = self.model(num, cat)
        return out


def export_onnx(model: TabularMLP) -> bytes:
    """The ONNX model (bytes) that takes one raw input per column and answers with ``prediction`` [N], or (multiclass)
    ``label`` [N] and ``probabilities`` [N, K]."""
    spec = model.spec
    output = PROBABILITIES if spec.task == "multiclass" else PREDICTION
    model = model.cpu().eval()
    num_inputs = list(spec.numeric)
    cat_index_inputs = [f"{c}{_INDEX_SUFFIX}" for c in spec.categorical]
    dummy = tuple(torch.zeros(2, dtype=torch.float32) for _ in num_inputs) + tuple(
        torch.zeros(2, dtype=torch.int64) for _ in cat_index_inputs
    )
    names = num_inputs + cat_index_inputs
    buf = io.BytesIO()
    with warnings.catch_warnings(), _factory_export_errors(spec):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _PerColumn(model),
            dummy,
            buf,  # type: ignore[arg-type]  # torch annotates str | PathLike; the TorchScript exporter also writes to a file object
            input_names=names,
            output_names=[output],
            dynamic_axes={n: {0: "N"} for n in [*names, output]},
            opset_version=OPSET,
            dynamo=False,
        )
    graph_model = _add_category_lookup(onnx.load_from_string(buf.getvalue()), spec.categorical, spec.categories)
    if spec.task == "multiclass":
        graph_model = _add_label_output(graph_model, spec)
    _check(graph_model)
    data: bytes = graph_model.SerializeToString()
    return data


@contextlib.contextmanager
def _factory_export_errors(spec: ModelSpec) -> Iterator[None]:
    """A user's network (``model.factory``) that the exporter rejects fails with a ModelError that names it."""
    try:
        yield
    except Exception as e:
        if not spec.factory:
            raise
        raise ModelError(
            f"the network of model.factory {spec.factory!r} cannot be exported to ONNX (TorchScript exporter, opset "
            f"{OPSET}): {type(e).__name__}: {e}",
            hint="use operators that torch.onnx.export(..., dynamo=False) supports at this opset; keep Python control "
            "flow independent of tensor values and shapes other than N; try torch.onnx.export on the module alone to "
            "find the operator",
        ) from e


def _check(m: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"the exported ONNX graph is invalid: {e}") from e


def _add_label_output(m: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """Put ``label`` = class_labels[ArgMax(probabilities)] before the ``probabilities`` output."""
    g = m.graph
    labels = label_array(spec)
    elem_type = TensorProto.INT64 if labels.dtype == np.int64 else TensorProto.STRING
    g.initializer.append(numpy_helper.from_array(labels, "class_labels"))
    g.node.extend(
        [
            # keepdims=0: [N]; select_last_index=0: the first of tied classes, as numpy's argmax in torch_outputs
            helper.make_node("ArgMax", [PROBABILITIES], ["label_index"], axis=1, keepdims=0, name="argmax_class"),
            helper.make_node("Gather", ["class_labels", "label_index"], [LABEL], axis=0, name="class_label"),
        ]
    )
    probabilities = list(g.output)
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(LABEL, elem_type, ["N"]), *probabilities])
    return m


def _add_category_lookup(m: onnx.ModelProto, categorical: list[str], categories: list[list[str]]) -> onnx.ModelProto:
    g = m.graph
    if not categorical:
        return m
    index_inputs = {f"{c}{_INDEX_SUFFIX}" for c in categorical}
    kept = [i for i in g.input if i.name not in index_inputs]
    present = {i.name for i in g.input}
    nodes = []
    new_inputs = []
    for name, cats in zip(categorical, categories, strict=True):
        new_inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["N"]))
        if f"{name}{_INDEX_SUFFIX}" not in present:
            continue  # the exporter pruned an unused input (e.g. an embedding that folded away)
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                inputs=[name],
                outputs=[f"{name}{_INDEX_SUFFIX}"],
                domain="ai.onnx.ml",
                keys_strings=list(cats) or ["__none__"],
                values_int64s=list(range(1, len(cats) + 1)) or [0],
                default_int64=0,
                name=f"lookup_{name}",
            )
        )
    # inputs in column order: numbers first (as exported), then categories
    del g.input[:]
    g.input.extend(kept + new_inputs)
    existing = list(g.node)
    del g.node[:]
    g.node.extend(nodes + existing)
    if not any(o.domain == "ai.onnx.ml" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    return m


def check_parity(
    model: TabularMLP, onnx_bytes: bytes, sample: pd.DataFrame, atol: float = PARITY_ATOL, rtol: float = PARITY_RTOL
) -> float:
    """Compare torch and onnxruntime on ``sample`` (raw rows): every output of the graph.

    Returns:
        The largest absolute difference (of the prediction, or of the class probabilities).

    Raises:
        OnnxParityError: some row differs by more than ``atol + rtol * |torch output|``, an output is not finite, or
            (multiclass) a row's label differs where torch's two most probable classes are not a tie. The message
            names the worst rows.
    """
    from rayml.models.predictor import OnnxPredictor

    spec = model.spec
    expected = torch_outputs(model, sample)
    got = OnnxPredictor(onnx_bytes).predict_all(sample)
    numbers = PROBABILITIES if spec.task == "multiclass" else PREDICTION
    e64, g64 = expected[numbers].astype(np.float64), got[numbers].astype(np.float64)
    abs_diff = np.abs(e64 - g64)
    scale = max(1.0, float(spec.target_std)) if spec.task == "regression" else 1.0
    bad = abs_diff > atol * scale + rtol * np.abs(e64)
    row_diff = abs_diff.reshape(len(sample), -1).max(axis=1) if len(sample) else np.zeros(0)
    bad_rows = ~np.isfinite(row_diff) | bad.reshape(len(sample), -1).any(axis=1)
    diff = float(np.max(row_diff)) if len(sample) else 0.0
    problems = []
    if bad_rows.any():
        rows = np.flatnonzero(bad_rows)
        worst = rows[np.argsort(-np.where(np.isfinite(row_diff[rows]), row_diff[rows], np.inf), kind="stable")][:_SHOWN_ROWS]
        shown = ", ".join(f"row {i}: {row_diff[i]:.3g}" for i in worst)
        problems.append(
            f"{numbers}: max abs diff {diff:.3g} > {atol:g} x {scale:.3g} (target std) + {rtol:g} x |value| on "
            f"{int(bad_rows.sum())} of {len(sample)} rows (worst: {shown})"
        )
    if spec.task == "multiclass":
        problems += _label_problems(expected, got, atol)
    if problems:
        raise OnnxParityError(
            f"ONNX export does not match torch: {'; '.join(problems)}",
            hint=(
                f"an operator of model.factory {spec.factory!r} exports differently (e.g. behaviour that depends on "
                "the batch, or randomness in eval mode); make its forward deterministic in eval()"
                if spec.factory
                else "an operator in the model exports differently; this is a bug in rayml, please report it with the config"
            ),
        )
    logger.info("ONNX parity ok: max abs diff %.2e on %d rows", diff, len(sample))
    return diff


def _label_problems(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], atol: float) -> list[str]:
    """Rows whose ONNX label differs from torch's, ties at float precision excepted."""
    proba = expected[PROBABILITIES]
    if len(proba) == 0:
        return []
    top2 = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.concatenate([proba, np.zeros_like(proba)], axis=1)
    tie = (top2[:, 1] - top2[:, 0]) <= atol
    differ = np.flatnonzero((np.asarray(expected[LABEL], dtype=object) != np.asarray(got[LABEL], dtype=object)) & ~tie)
    if not len(differ):
        return []
    shown = ", ".join(f"row {i}: torch {expected[LABEL][i]!r} vs onnx {got[LABEL][i]!r}" for i in differ[:_SHOWN_ROWS])
    return [f"{LABEL} differs on {len(differ)} of {len(proba)} rows ({shown})"]
