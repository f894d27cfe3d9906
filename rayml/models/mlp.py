"""A tabular MLP whose preprocessing lives inside the model.

Standardisation (with NaN -> the training mean) and categorical embeddings are part of the module, so the exported
ONNX graph takes raw columns. The categorical string -> index lookup is added to the ONNX graph at export time
(``rayml.models.onnx_export``); in torch the same lookup is :func:`encode_categorical`.

Tasks: regression (one output, the standardised target), binary (one logit) and multiclass (one logit per class of
``ModelSpec.class_labels``; :func:`encode_target` gives class indices). :func:`torch_outputs` answers with the same
named outputs as the exported graph (:mod:`rayml.models.predictor`), which is what the parity check compares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from rayml.data.schema import ClassLabel, Schema, as_category_strings, class_labels_of
from rayml.errors import DataValidationError
from rayml.models.factory import body_output, build_body
from rayml.models.predictor import LABEL, OUTPUTS_BY_TASK, PREDICTION, PROBABILITIES


@dataclass
class ModelSpec:
    """Everything needed to rebuild the module from a state dict (plain JSON, no pickles)."""

    numeric: list[str]
    numeric_mean: list[float]
    numeric_std: list[float]
    categorical: list[str]
    categories: list[list[str]]  # per categorical feature; index 0 is reserved for unknown
    task: Literal["regression", "binary", "multiclass"]
    target_mean: float = 0.0
    target_std: float = 1.0
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.0
    embedding_dim: int = 4
    class_labels: list[ClassLabel] = field(default_factory=list)  # multiclass: one output per label, in this order
    factory: str | None = None  # "package.module:function": the user's network replaces the MLP (models/factory.py)
    factory_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        return len(self.class_labels) if self.task == "multiclass" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(**d)


def build_spec(
    train_df: pd.DataFrame,
    schema: Schema,
    hidden_sizes: list[int],
    dropout: float,
    embedding_dim: int,
    *,
    factory: str | None = None,
    factory_kwargs: dict[str, Any] | None = None,
) -> ModelSpec:
    """Fit the preprocessing statistics on the training split (``factory``: the user's network instead of the MLP)."""
    numeric = schema.numeric
    means, stds = [], []
    for name in numeric:
        x = pd.to_numeric(train_df[name], errors="coerce").to_numpy(dtype="float64")
        finite = x[np.isfinite(x)]
        mean = float(finite.mean()) if len(finite) else 0.0
        std = float(finite.std()) if len(finite) else 1.0
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
    if schema.task == "regression":
        y = train_df[schema.target].to_numpy(dtype="float64")
        t_mean, t_std = float(y.mean()), float(y.std()) or 1.0
    else:
        t_mean, t_std = 0.0, 1.0
    return ModelSpec(
        numeric=numeric,
        numeric_mean=means,
        numeric_std=stds,
        categorical=[f.name for f in schema.categorical],
        categories=[list(f.categories) for f in schema.categorical],
        task=schema.task,
        target_mean=t_mean,
        target_std=t_std if t_std > 1e-12 else 1.0,
        hidden_sizes=list(hidden_sizes),
        dropout=dropout,
        embedding_dim=embedding_dim,
        class_labels=list(schema.classes) if schema.task == "multiclass" else [],
        factory=factory,
        factory_kwargs=dict(factory_kwargs or {}),
    )


class TabularMLP(nn.Module):
    """MLP over standardised numbers and embedded categories.

    ``forward_raw`` returns the training-space output: the standardised target or the logit [N], or the logits
    [N, K] (multiclass); ``forward`` returns the prediction in the target's units (regression), the probability of
    class 1 (binary) or the class probabilities [N, K] (multiclass, softmax).

    With ``spec.factory`` the middle (embeddings + MLP) is the user's network (:mod:`rayml.models.factory`); the
    standardisation in front and the output head after stay these.
    """

    num_mean: torch.Tensor  # buffers (register_buffer below)
    num_std: torch.Tensor
    body: nn.Module | None

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        n_num = len(spec.numeric)
        self.register_buffer("num_mean", torch.tensor(spec.numeric_mean, dtype=torch.float32).reshape(1, n_num))
        self.register_buffer("num_std", torch.tensor(spec.numeric_std, dtype=torch.float32).reshape(1, n_num))
        self.target_mean = spec.target_mean
        self.target_std = spec.target_std
        self.body = build_body(spec) if spec.factory else None
        if self.body is not None:
            return
        self.embeddings = nn.ModuleList()
        emb_total = 0
        for cats in spec.categories:
            cardinality = len(cats) + 1  # + unknown
            dim = min(spec.embedding_dim, (cardinality + 1) // 2 + 1)
            self.embeddings.append(nn.Embedding(cardinality, dim))
            emb_total += dim
        layers: list[nn.Module] = []
        width = n_num + emb_total
        for h in spec.hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = h
        layers.append(nn.Linear(width, spec.n_outputs))
        self.mlp = nn.Sequential(*layers)

    def forward_raw(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = []
        if numeric.shape[1]:
            x = torch.where(torch.isnan(numeric), self.num_mean.expand_as(numeric), numeric)
            parts.append((x - self.num_mean) / self.num_std)
        if self.body is not None:
            return body_output(self.body(parts[0] if parts else numeric, categorical), self.spec.n_outputs)
        for i, emb in enumerate(self.embeddings):
            parts.append(emb(categorical[:, i]))
        out: torch.Tensor = self.mlp(torch.cat(parts, dim=1))
        return out if self.spec.task == "multiclass" else out.squeeze(1)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, raw: bool = False) -> torch.Tensor:
        # `raw=True` lets training go through forward() (so DDP syncs gradients) and still get training-space output
        if raw:
            return self.forward_raw(numeric, categorical)
        return self.from_raw(self.forward_raw(numeric, categorical))

    def from_raw(self, raw_out: torch.Tensor) -> torch.Tensor:
        """Training-space output -> what ``forward`` returns."""
        if self.spec.task == "multiclass":
            return torch.softmax(raw_out, dim=1)
        if self.spec.task == "binary":
            return torch.sigmoid(raw_out)
        return raw_out * self.target_std + self.target_mean


def training_loss(task: str) -> nn.Module:
    """The training objective on ``forward_raw`` output and :func:`encode_target` targets (``val_loss`` too)."""
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    return nn.BCEWithLogitsLoss() if task == "binary" else nn.MSELoss()


def build_model(spec: ModelSpec, seed: int | None = None) -> TabularMLP:
    if seed is not None:
        torch.manual_seed(seed)
    return TabularMLP(spec)


def encode_numeric(df: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    if not spec.numeric:
        return np.zeros((len(df), 0), dtype=np.float32)
    return np.stack([pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float32) for c in spec.numeric], axis=1)


def encode_categorical(df: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """Category strings -> indices (1..K known, 0 unknown or missing), the same lookup the ONNX graph does."""
    cols = []
    for name, cats in zip(spec.categorical, spec.categories, strict=True):
        lookup = {c: i + 1 for i, c in enumerate(cats)}
        values = as_category_strings(df[name])
        cols.append(np.fromiter((lookup.get(v, 0) for v in values), dtype=np.int64, count=len(values)))
    if not cols:
        return np.zeros((len(df), 0), dtype=np.int64)
    return np.stack(cols, axis=1)


def encode_target(df: pd.DataFrame, spec: ModelSpec, target: str) -> np.ndarray:
    """The training-space target: standardised float32 for regression, 0/1 float32 for binary, the int64 index into
    ``spec.class_labels`` for multiclass.

    Raises:
        DataValidationError: (multiclass) a value is not a class label, or is a label the model was not trained on.
    """
    if spec.task == "multiclass":
        labels = class_labels_of(df[target], target)
        index = pd.Categorical(labels, categories=spec.class_labels).codes.astype(np.int64)
        if (index < 0).any():
            unseen = sorted({str(v) for v in labels[index < 0]})
            raise DataValidationError(
                [
                    f"target {target!r} has {int((index < 0).sum())} row(s) with label(s) the model was not trained on: "
                    f"{unseen[:10]}{' ...' if len(unseen) > 10 else ''} (its classes: {spec.class_labels})"
                ],
                hint="drop those rows, or retrain on data that has every class",
            )
        return index
    y = df[target].to_numpy(dtype=np.float64)
    if spec.task == "regression":
        y = (y - spec.target_mean) / spec.target_std
    return y.astype(np.float32)


def decode_target(spec: ModelSpec, y: np.ndarray) -> np.ndarray:
    """:func:`encode_target`'s output in the target's terms: values (regression), 0/1 (binary), labels (multiclass)."""
    if spec.task == "multiclass":
        return label_array(spec)[np.asarray(y, dtype=np.int64)]
    if spec.task == "regression":
        return np.asarray(y, dtype=np.float64) * spec.target_std + spec.target_mean
    return np.asarray(y, dtype=np.float64)


def tensors(df: pd.DataFrame, spec: ModelSpec, target: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(numeric, categorical, target) tensors of raw rows: what the training loops feed the model."""
    return (
        torch.from_numpy(encode_numeric(df, spec)),
        torch.from_numpy(encode_categorical(df, spec)),
        torch.from_numpy(encode_target(df, spec, target)),
    )


def label_array(spec: ModelSpec) -> np.ndarray:
    """The class labels as the ONNX graph answers them: int64 when every label is an int, else strings (object)."""
    if all(isinstance(c, int) for c in spec.class_labels):
        return np.asarray(spec.class_labels, dtype=np.int64)
    return np.asarray(spec.class_labels, dtype=object)


def named_outputs(spec: ModelSpec, out: np.ndarray) -> dict[str, np.ndarray]:
    """``forward`` output by the graph's output names: ``prediction`` [N], or ``label`` [N] and ``probabilities``
    [N, K] (multiclass; the label is the first most probable class, as the graph's ArgMax picks it)."""
    if spec.task != "multiclass":
        return {PREDICTION: out}
    return {LABEL: label_array(spec)[np.argmax(out, axis=1)], PROBABILITIES: out}


def torch_outputs(model: TabularMLP, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every output of the torch model on raw rows, named as the exported graph's (see :func:`named_outputs`)."""
    model.eval()
    with torch.no_grad():
        num = torch.from_numpy(encode_numeric(df, model.spec))
        cat = torch.from_numpy(encode_categorical(df, model.spec))
        out: np.ndarray = model(num, cat).cpu().numpy()
    return named_outputs(model.spec, out)


def torch_predict(model: TabularMLP, df: pd.DataFrame) -> np.ndarray:
    """The torch model's prediction on raw rows, as the ONNX graph's first output: the value (regression), the
    probability of class 1 (binary) or the label (multiclass). Used for parity checks, reference statistics, tests."""
    return torch_outputs(model, df)[OUTPUTS_BY_TASK[model.spec.task][0]]
