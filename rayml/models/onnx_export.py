"""Export a :class:`TabularMLP` to ONNX that takes raw columns, and prove it matches torch.

The torch module is exported with one input per column (numbers as float32 [N], categories as int64 indices [N]);
then each categorical input is replaced by a string input [N] followed by an ``ai.onnx.ml.LabelEncoder`` that does
the same lookup as :func:`encode_categorical` (unknown -> 0). The result serves raw rows with no Python preprocessing.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import TensorProto, helper

from rayml.errors import ModelError, OnnxParityError
from rayml.models.mlp import TabularMLP, torch_predict

logger = logging.getLogger("rayml.models")

OUTPUT_NAME = "prediction"
OPSET = 17
# Parity is judged in the model's training space: for regression the difference is divided by the target's standard
# deviation (when it is above 1), so a target in the millions is held to the same float32 precision as one near 1;
# probabilities (binary) are compared as they are. Plus a relative allowance for large outputs, as numpy.allclose.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-5
_INDEX_SUFFIX = "__index"


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
    """The ONNX model (bytes) that takes one raw input per column and outputs ``prediction`` [N]."""
    spec = model.spec
    model = model.cpu().eval()
    num_inputs = list(spec.numeric)
    cat_index_inputs = [f"{c}{_INDEX_SUFFIX}" for c in spec.categorical]
    dummy = tuple(torch.zeros(2, dtype=torch.float32) for _ in num_inputs) + tuple(
        torch.zeros(2, dtype=torch.int64) for _ in cat_index_inputs
    )
    names = num_inputs + cat_index_inputs
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _PerColumn(model),
            dummy,
            buf,  # type: ignore[arg-type]  # torch annotates str | PathLike; the TorchScript exporter also writes to a file object
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes={n: {0: "N"} for n in [*names, OUTPUT_NAME]},
            opset_version=OPSET,
            dynamo=False,
        )
    graph_model = onnx.load_from_string(buf.getvalue())
    data: bytes = _add_category_lookup(graph_model, spec.categorical, spec.categories).SerializeToString()
    return data


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
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"the exported ONNX graph is invalid: {e}") from e
    return m


def check_parity(
    model: TabularMLP, onnx_bytes: bytes, sample: pd.DataFrame, atol: float = PARITY_ATOL, rtol: float = PARITY_RTOL
) -> float:
    """Compare torch and onnxruntime on ``sample`` (raw rows).

    Returns:
        The largest absolute difference.

    Raises:
        OnnxParityError: some row differs by more than ``atol + rtol * |torch output|``, or an output is not finite.
    """
    from rayml.models.predictor import OnnxPredictor

    expected = torch_predict(model, sample)
    got = OnnxPredictor(onnx_bytes).predict(sample)
    e64, g64 = expected.astype(np.float64), got.astype(np.float64)
    abs_diff = np.abs(e64 - g64)
    diff = float(np.max(abs_diff)) if len(sample) else 0.0
    scale = max(1.0, float(model.spec.target_std)) if model.spec.task == "regression" else 1.0
    if not np.isfinite(diff) or (abs_diff > atol * scale + rtol * np.abs(e64)).any():
        raise OnnxParityError(
            f"ONNX export does not match torch: max abs diff {diff:.3g} > {atol:g} x {scale:.3g} (target std) "
            f"+ {rtol:g} x |value| on {len(sample)} rows",
            hint="an operator in the model exports differently; this is a bug in rayml, please report it with the config",
        )
    logger.info("ONNX parity ok: max abs diff %.2e on %d rows", diff, len(sample))
    return diff
