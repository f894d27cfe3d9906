"""Predict with an ONNX model on raw tabular rows (onnxruntime; no pickles, no torch needed).

onnxruntime is imported when the first predictor is created, so code that only reads a model directory's metadata
(``rayml.models.ModelDir``) does not pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml.data.schema import as_category_strings
from rayml.errors import ModelError, PredictionInputError

# The outputs of a rayml model graph (DESIGN.md, "The model contract"). Whatever produced the model (rayml's MLP, a
# user's torch factory, an imported scikit-learn / XGBoost / LightGBM / ONNX / MLflow model), its graph takes one raw
# input per feature column and answers with these outputs, the first one being what a caller gets as "the prediction":
#   regression  PREDICTION     FP32 [N]     the value, in the target's units
#   binary      PREDICTION     FP32 [N]     the probability of class_labels[1] (class_labels default to [0, 1])
#   multiclass  LABEL          INT64 [N] when every class label is an integer, else BYTES [N]: the predicted class
#               PROBABILITIES  FP32 [N, K]  one column per class, in class_labels order (rows sum to 1)
PREDICTION = "prediction"
LABEL = "label"
PROBABILITIES = "probabilities"
TASKS = ("regression", "binary", "multiclass")
OUTPUTS_BY_TASK = {"regression": (PREDICTION,), "binary": (PREDICTION,), "multiclass": (LABEL, PROBABILITIES)}

_ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(string)": "BYTES", "tensor(int64)": "INT64"}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of the graph, in Open Inference Protocol terms."""

    name: str
    datatype: str  # FP32 | FP64 | INT64 | BYTES
    shape: list[int]  # -1 for the batch dimension


class OnnxPredictor:
    """An onnxruntime session over a rayml ONNX model.

    Args:
        model: ONNX bytes or a path to a ``.onnx`` file.
        intra_op_threads: onnxruntime threads per call (1 suits many small replicas/actors).

    Example:
        >>> p = OnnxPredictor("model.onnx")
        >>> p.predict(pd.DataFrame({"price": [9.5], "category": ["toys"], ...}))
    """

    def __init__(self, model: bytes | str | Path, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelError(f"cannot load ONNX model: {e}") from e
        self.inputs = [
            TensorInfo(i.name, _ORT_TO_V2.get(i.type, i.type), [-1 if not isinstance(d, int) else d for d in i.shape])
            for i in self.session.get_inputs()
        ]
        self.outputs = [
            TensorInfo(o.name, _ORT_TO_V2.get(o.type, o.type), [-1 if not isinstance(d, int) else d for d in o.shape])
            for o in self.session.get_outputs()
        ]
        self._kinds = {i.name: i.datatype for i in self.inputs}

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def feed(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Build the onnxruntime feed from column -> values; every problem is listed in one error."""
        problems = []
        missing = [n for n in self.input_names if n not in columns]
        if missing:
            problems.append(f"missing column(s) {missing}; the model takes {self.input_names}")
        feed: dict[str, np.ndarray] = {}
        lengths = set()
        for name, kind in self._kinds.items():
            if name not in columns:
                continue
            values = columns[name]
            if kind != "BYTES" and isinstance(values, np.ndarray) and values.dtype.kind in "fiub" and values.ndim == 1:
                # already numbers (the serving ingress validated them): a cast, no pandas (which costs ~100 us a column)
                lengths.add(len(values))
                feed[name] = values.astype(np.float32 if kind == "FP32" else np.float64, copy=False)
                continue
            series = (
                values
                if isinstance(values, pd.Series)
                else pd.Series(np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values)
            )
            lengths.add(len(series))
            if kind == "BYTES":
                feed[name] = as_category_strings(series)
            else:
                numeric = pd.to_numeric(series, errors="coerce")
                bad = series[numeric.isna() & series.notna()]
                if len(bad):
                    problems.append(f"column {name!r} must be numeric; got {bad.iloc[0]!r}")
                    continue
                feed[name] = numeric.to_numpy(dtype=np.float32 if kind == "FP32" else np.float64)
        if len(lengths) > 1:
            problems.append(f"columns have different lengths {sorted(lengths)}; every column needs one value per row")
        if problems:
            raise PredictionInputError("; ".join(problems), hint="send one value per row for every input column")
        return feed

    def predict(self, rows: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Predictions [N] for raw rows (a frame or a column -> values mapping); extra columns are ignored."""
        columns = rows if isinstance(rows, Mapping) else {c: rows[c] for c in rows.columns}
        feed = self.feed(columns)
        if not feed or len(next(iter(feed.values()))) == 0:
            return np.zeros(0, dtype=np.float32)
        preds: np.ndarray = self.session.run(None, feed)[0]
        return preds

    def predict_all(self, rows: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Every output of the graph by name (a multiclass model: ``label`` [N] and ``probabilities`` [N, K])."""
        columns = rows if isinstance(rows, Mapping) else {c: rows[c] for c in rows.columns}
        return self.run(self.feed(columns))

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph by name for a feed in :meth:`feed`'s form (or built the same way by the caller)."""
        if not feed or len(next(iter(feed.values()))) == 0:
            return {o.name: np.zeros([0, *[max(d, 0) for d in o.shape[1:]]], dtype=np.float32) for o in self.outputs}
        values = self.session.run(None, dict(feed))
        return {o.name: v for o, v in zip(self.outputs, values, strict=True)}
