"""A tabular MLP whose preprocessing lives inside the model.

Standardisation (with NaN -> the training mean) and categorical embeddings are part of the module, so the exported
ONNX graph takes raw columns. The categorical string -> index lookup is added to the ONNX graph at export time
(``rayml.models.onnx_export``); in torch the same lookup is :func:`encode_categorical`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from rayml.data.schema import Schema, as_category_strings


@dataclass
class ModelSpec:
    """Everything needed to rebuild the module from a state dict (plain JSON, no pickles)."""

    numeric: list[str]
    numeric_mean: list[float]
    numeric_std: list[float]
    categorical: list[str]
    categories: list[list[str]]  # per categorical feature; index 0 is reserved for unknown
    task: Literal["regression", "binary"]
    target_mean: float = 0.0
    target_std: float = 1.0
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.0
    embedding_dim: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(**d)


def build_spec(train_df: pd.DataFrame, schema: Schema, hidden_sizes: list[int], dropout: float, embedding_dim: int) -> ModelSpec:
    """Fit the preprocessing statistics on the training split."""
    numeric = schema.numeric
    means, stds = [], []
    for name in numeric:
        x = pd.to_numeric(train_df[name], errors="coerce").to_numpy(dtype="float64")
        finite = x[np.isfinite(x)]
        mean = float(finite.mean()) if len(finite) else 0.0
        std = float(finite.std()) if len(finite) else 1.0
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
    y = train_df[schema.target].to_numpy(dtype="float64")
    if schema.task == "regression":
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
    )


class TabularMLP(nn.Module):
    """MLP over standardised numbers and embedded categories.

    ``forward_raw`` returns the training-space output (standardised target or logit); ``forward`` returns the
    prediction in the target's units (regression) or the probability of class 1 (binary).
    """

    num_mean: torch.Tensor  # buffers (register_buffer below)
    num_std: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        n_num = len(spec.numeric)
        self.register_buffer("num_mean", torch.tensor(spec.numeric_mean, dtype=torch.float32).reshape(1, n_num))
        self.register_buffer("num_std", torch.tensor(spec.numeric_std, dtype=torch.float32).reshape(1, n_num))
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
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.target_mean = spec.target_mean
        self.target_std = spec.target_std

    def forward_raw(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = []
        if numeric.shape[1]:
            x = torch.where(torch.isnan(numeric), self.num_mean.expand_as(numeric), numeric)
            parts.append((x - self.num_mean) / self.num_std)
        for i, emb in enumerate(self.embeddings):
            parts.append(emb(categorical[:, i]))
        out: torch.Tensor = self.mlp(torch.cat(parts, dim=1))
        return out.squeeze(1)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor, raw: bool = False) -> torch.Tensor:
        # `raw=True` lets training go through forward() (so DDP syncs gradients) and still get training-space output
        if raw:
            return self.forward_raw(numeric, categorical)
        raw_out = self.forward_raw(numeric, categorical)
        if self.spec.task == "binary":
            return torch.sigmoid(raw_out)
        return raw_out * self.target_std + self.target_mean


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
    """The training-space target: standardised for regression, 0/1 for binary."""
    y = df[target].to_numpy(dtype=np.float64)
    if spec.task == "regression":
        y = (y - spec.target_mean) / spec.target_std
    return y.astype(np.float32)


def torch_predict(model: TabularMLP, df: pd.DataFrame) -> np.ndarray:
    """Predictions of the torch model on raw rows (used for parity checks and tests)."""
    model.eval()
    with torch.no_grad():
        num = torch.from_numpy(encode_numeric(df, model.spec))
        cat = torch.from_numpy(encode_categorical(df, model.spec))
        preds: np.ndarray = model(num, cat).cpu().numpy()
        return preds
