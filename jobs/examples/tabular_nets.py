"""Your own network for rayml training: a small residual MLP over numbers and embedded categories.

Use it with `model.factory: "jobs.examples.tabular_nets:resnet_mlp"` (see jobs/configs/train_factory.yaml); settings in
`model.factory_kwargs` (and `tune.space: {model.factory_kwargs.width: ...}`) are this function's keyword arguments.

rayml gives `forward` the numbers already standardised (missing -> the training mean) and each category as an index
(0 = unknown or missing), and turns the raw output into the prediction: it de-standardises a regression output,
applies sigmoid (binary) or softmax (multiclass). Nothing here knows about Ray, ONNX or the registry.
"""

from __future__ import annotations

import torch
from torch import nn

from rayml.models.factory import FeatureSchema


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResNetMLP(nn.Module):
    def __init__(self, schema: FeatureSchema, width: int, depth: int, embedding_dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim) for c in schema.cardinalities)
        self.stem = nn.Linear(schema.n_numeric + embedding_dim * schema.n_categorical, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(depth)))
        self.head = nn.Linear(width, schema.n_outputs)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        x = self.stem(torch.cat([numeric, *embedded], dim=1))
        return self.head(self.blocks(x))  # [N, n_outputs]: raw outputs (standardised target, logit or logits)


def resnet_mlp(schema: FeatureSchema, width: int = 32, depth: int = 2, embedding_dim: int = 4) -> nn.Module:
    """The factory rayml calls: the feature schema in, an nn.Module out."""
    return ResNetMLP(schema, width, depth, embedding_dim)
