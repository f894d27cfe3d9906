"""Feature value: permutation importance with its noise level, and which features are not worth what they cost.

A feature's importance is the mean loss of the primary metric when its column is shuffled (``repeats`` shuffles).
Its *noise level* is the standard error of that loss: the validation rows are split into (up to) 5 blocks, the
loss is measured per block for every shuffle, and the spread of those repeated measurements over their number
gives the standard error. A feature is *above noise* when its importance exceeds ``sigmas`` standard errors: a
feature the model ignores scores exactly 0, one it uses by chance scores within the noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayml.gate._predictions import predict
from rayml.models import ModelDir
from rayml.models.metrics import primary_metric
from rayml.registry import LoadedModel

_BLOCKS = 5
_MIN_BLOCK_ROWS = 20


@dataclass
class Importance:
    """Permutation importance per feature (most important first) and its standard error (NaN: too few rows)."""

    mean: dict[str, float]
    stderr: dict[str, float]


def importance_with_noise(
    model: LoadedModel | ModelDir, df: pd.DataFrame, y: np.ndarray, features: list[str], repeats: int, seed: int
) -> Importance:
    """Permutation importance of ``features`` on ``df`` and the standard error of each (see the module docstring)."""
    md = model if isinstance(model, ModelDir) else model.model_dir
    task, classes = md.task, md.class_labels
    name, higher = primary_metric(task)
    sign = 1.0 if higher else -1.0
    rng = np.random.default_rng(seed)
    blocks = _blocks(len(df), rng)
    masks = [blocks == b for b in range(int(blocks.max()) + 1)] if len(df) else []
    reference = predict(md, df)
    base = reference.metrics(task, y, classes)[name]
    base_blocks = [reference.metrics(task, y, classes, m)[name] for m in masks]
    mean, stderr = {}, {}
    for f in features:
        drops, block_drops = [], []
        for _ in range(repeats):
            shuffled = df.copy()
            shuffled[f] = df[f].to_numpy()[rng.permutation(len(df))]
            p = predict(md, shuffled)
            drops.append(sign * (base - p.metrics(task, y, classes)[name]))
            block_drops += [sign * (b - p.metrics(task, y, classes, m)[name]) for b, m in zip(base_blocks, masks, strict=True)]
        finite = np.asarray([d for d in block_drops if np.isfinite(d)])  # AUC is undefined on a one-class block
        mean[f] = float(np.mean(drops))
        stderr[f] = float(np.std(finite, ddof=1) / np.sqrt(len(finite))) if len(finite) >= 2 else float("nan")
    order = sorted(mean, key=lambda k: -mean[k])
    return Importance({k: mean[k] for k in order}, {k: stderr[k] for k in order})


def permutation_importance(
    loaded: LoadedModel, df: pd.DataFrame, y: np.ndarray, features: list[str], repeats: int, seed: int
) -> dict[str, float]:
    """Mean loss of the primary metric when a feature's column is shuffled (bigger = more important)."""
    return importance_with_noise(loaded, df, y, features, repeats, seed).mean


def _blocks(n: int, rng: np.random.Generator) -> np.ndarray:
    """A block number per row: up to 5 blocks of at least 20 rows (2 blocks below 40 rows), in random order."""
    count = max(2, min(_BLOCKS, n // _MIN_BLOCK_ROWS))
    blocks = np.arange(n) % count
    rng.shuffle(blocks)
    return blocks


def feature_value(
    importance: Importance, costs: dict[str, dict[str, float]], sigmas: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per feature (importance, noise, whether it is above noise, its cost) and the features that are not.

    Args:
        importance: :func:`importance_with_noise`'s result.
        costs: :func:`rayml.gate._cost.feature_costs`'s result ({} when not measured).
        sigmas: how many standard errors the importance must exceed.
    """
    rows, below = [], []
    for f, value in importance.mean.items():
        se = importance.stderr[f]
        above = None if not np.isfinite(se) else bool(value > sigmas * se)
        if above is False:
            below.append(f)
        rows.append({"feature": f, "importance": value, "stderr": se, "above_noise": above, **costs.get(f, {})})
    return rows, below


def unimportant_message(feature: str, row: dict[str, Any], sigmas: float, metric: str) -> str:
    """Why ``feature`` is flagged, with what it costs."""
    cost = ""
    if "size_share" in row:
        cost = f"; it costs {row['size_share']:.1%} of the model's size and {int(row['nodes'])} operator(s) of its own"
    return (
        f"feature {feature!r} is not above noise: permutation importance {row['importance']:.4g} ({metric}) is not over "
        f"{sigmas:g} standard errors ({sigmas * row['stderr']:.4g}){cost}. Consider dropping it (or "
        "gate.unimportant_features=off)"
    )
