"""Train one segment's small model (an MLP in a plain torch loop, or a single-threaded XGBoost / LightGBM booster):
no Ray here, so a task, a benchmark or a test can call it.

Ray Train is built for one big model (a worker group, DDP, checkpoints to storage); starting one per segment costs
seconds per model. A segment's model trains in tens of milliseconds, so the loop below runs in the calling process,
one thread, and the caller (a Ray task in ``_run.py``) trains several segments one after another. Trees
(``model.type: xgboost | lightgbm``) boost the same way, in process with one thread
(:func:`rayml.train._tree_fit.boost_in_process`), and are converted to the same raw-column ONNX contract as a single
tree model (:func:`rayml.train._tree_fit.tree_onnx`, parity-checked against the booster).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayml._private import constants
from rayml.config import CandidateConfig, ManyModelsJobConfig
from rayml.data import Schema, reference_stats
from rayml.errors import TrainingError
from rayml.models.predictor import OUTPUTS_BY_TASK, PROBABILITIES

logger = logging.getLogger("rayml.manymodels")

PARITY_ROWS = 64


@dataclass(frozen=True)
class FitSettings:
    """Everything one segment's training needs, as plain values (sent to Ray tasks)."""

    hidden_sizes: tuple[int, ...]
    dropout: float
    embedding_dim: int
    learning_rate: float
    weight_decay: float
    epochs: int
    batch_size: int
    seed: int
    patience: int
    min_delta: float
    model_type: str = "mlp"  # mlp | xgboost | lightgbm (model.type)
    tree_settings: dict[str, Any] = field(default_factory=dict)  # model.<type> of a tree type, as a dict

    def with_candidate(self, c: CandidateConfig) -> FitSettings:
        """These settings with a candidate's fields (those it sets) replacing them."""
        changes = {k: v for k, v in c.model_dump().items() if v is not None and k not in ("xgboost", "lightgbm")}
        if "hidden_sizes" in changes:
            changes["hidden_sizes"] = tuple(changes["hidden_sizes"])
        tree_changes = getattr(c, self.model_type, None) if self.model_type != "mlp" else None
        if tree_changes:
            changes["tree_settings"] = {**self.tree_settings, **tree_changes}
        return FitSettings(**{**self.__dict__, **changes})


def base_settings(cfg: ManyModelsJobConfig) -> FitSettings:
    """The `model:` / `train:` settings (what every candidate starts from, and what the global model uses)."""
    return FitSettings(
        hidden_sizes=tuple(cfg.model.hidden_sizes),
        dropout=cfg.model.dropout,
        embedding_dim=cfg.model.embedding_dim,
        learning_rate=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay,
        epochs=cfg.train.epochs,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        patience=cfg.train.early_stopping_patience,
        min_delta=cfg.train.early_stopping_min_delta,
        model_type=cfg.model.type,
        tree_settings=getattr(cfg.model, cfg.model.type).model_dump() if cfg.model.is_tree else {},
    )


def fit_settings(cfg: ManyModelsJobConfig) -> list[FitSettings]:
    """The settings of every candidate (one when ``manymodels.candidates`` is empty)."""
    base = base_settings(cfg)
    return [base.with_candidate(c) for c in cfg.manymodels.candidates] or [base]


@dataclass
class SegmentOutcome:
    """What training one segment produced (or why it did not).

    ``status``: ``trained`` (its own model), ``fallback`` (too few rows: served by the global model) or ``failed``.
    """

    key: str
    index: int
    rows: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    onnx: bytes | None = None
    stats: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    candidate: int = 0
    epochs: int = 0  # epochs run (MLP), or boosting rounds kept (trees)
    train_s: float = 0.0

    def record(self) -> dict[str, Any]:
        """A JSON-able summary (no model bytes)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("onnx", "stats")}
        return out


def segment_seed(seed: int, key: str, attempt: int = 0) -> int:
    """A seed per segment that does not depend on which task or in which order the segment is trained."""
    return (seed * 1_000_003 + zlib.crc32(key.encode()) + attempt * 7919) % (2**31 - 1)


def _fit_candidate(train_df: pd.DataFrame, val_df: pd.DataFrame, schema: Schema, s: FitSettings, seed: int):
    """Train one candidate; returns (model with its best epoch's weights, best validation loss, epochs run).

    A multiclass model has one output per class of the schema (the set's global class list), whichever classes this
    segment's rows hold, so every model of a set answers the same probability columns.
    """
    import torch

    from rayml.models.mlp import build_model, build_spec, tensors, training_loss

    spec = build_spec(train_df, schema, list(s.hidden_sizes), s.dropout, s.embedding_dim)
    model = build_model(spec, seed=seed)
    num, cat, y = tensors(train_df, spec, schema.target)
    vnum, vcat, vy = tensors(val_df, spec, schema.target) if len(val_df) else (num, cat, y)
    loss_fn = training_loss(schema.task)
    opt = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, since_best, epochs_run = float("inf"), None, 0, 0
    for _epoch in range(s.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), s.batch_size):
            idx = perm[i : i + s.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(num[idx], cat[idx], raw=True), y[idx])
            loss.backward()
            opt.step()
        epochs_run += 1
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(vnum, vcat, raw=True), vy))
        if not np.isfinite(val_loss):
            raise TrainingError(f"validation loss is {val_loss} after epoch {epochs_run} (training diverged)")
        if val_loss < best - s.min_delta or best_state is None:
            best, since_best = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if s.patience and since_best >= s.patience:
                break
    assert best_state is not None, "at least one epoch ran (epochs >= 1)"
    model.load_state_dict(best_state)
    model.eval()
    return model, best, epochs_run


def prediction_metrics(
    schema: Schema, rows: pd.DataFrame, outputs: dict[str, np.ndarray], prefix: str = "val_"
) -> dict[str, float]:
    """:func:`rayml.models.metrics.task_metrics` of a model's named outputs (``predict_all``) on ``rows``, whose target
    column holds the truth: in the target's terms, comparable across segments and with the global model."""
    from rayml.data.schema import class_labels_of
    from rayml.models.metrics import task_metrics

    task, y = schema.task, rows[schema.target]
    return task_metrics(
        task,
        class_labels_of(y, schema.target) if task == "multiclass" else y.to_numpy(),
        outputs[OUTPUTS_BY_TASK[task][0]],
        proba=outputs.get(PROBABILITIES),
        class_labels=list(schema.classes) or None,
        prefix=prefix,
    )


def fit_segment(
    key: str,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    schema: Schema,
    candidates: list[FitSettings],
    attempt: int = 0,
    with_stats: bool = True,
) -> SegmentOutcome:
    """Train every candidate on one segment, keep the best on its validation split, export it to ONNX.

    The export is parity-checked against torch on validation rows, like a single model's.

    Returns:
        A ``trained`` outcome with the ONNX bytes, metrics and reference statistics of the segment's training rows.

    Raises:
        Exception: whatever training raised (the caller retries and records it).
    """
    from rayml.models import check_parity, export_onnx
    from rayml.models.mlp import torch_outputs

    if not candidates:
        raise ValueError("fit_segment needs at least one candidate's settings")
    if candidates[0].model_type != "mlp":
        return _fit_tree_segment(key, train_df, val_df, schema, candidates, attempt, with_stats)
    t0 = time.perf_counter()
    best = None
    for i, s in enumerate(candidates):
        model, loss, epochs = _fit_candidate(train_df, val_df, schema, s, segment_seed(s.seed, key, attempt) + i)
        if best is None or loss < best[1]:
            best = (model, loss, epochs, i)
    assert best is not None, "candidates is not empty"
    model, loss, epochs, chosen = best
    onnx_bytes = export_onnx(model)
    sample = val_df.head(PARITY_ROWS) if len(val_df) else train_df.head(PARITY_ROWS)
    check_parity(model, onnx_bytes, sample)
    eval_df = val_df if len(val_df) else train_df
    return _trained(
        key, train_df, val_df, schema, onnx_bytes, torch_outputs(model, eval_df), loss, attempt, chosen, epochs, t0, with_stats
    )


def _trained(
    key: str,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    schema: Schema,
    onnx_bytes: bytes,
    outputs: dict[str, Any],
    loss: float,
    attempt: int,
    candidate: int,
    epochs: int,
    t0: float,
    with_stats: bool,
) -> SegmentOutcome:
    """A trained segment's outcome: its graph, validation metrics from ``outputs`` and (optionally) reference bins."""
    eval_df = val_df if len(val_df) else train_df
    metrics = {"val_loss": loss, **prediction_metrics(schema, eval_df, outputs)}
    pred = outputs[OUTPUTS_BY_TASK[schema.task][0]]
    stats = reference_stats(train_df, schema, predictions=pred) if with_stats else None
    return SegmentOutcome(
        key=key,
        index=-1,
        rows=len(train_df) + len(val_df),
        status="trained",
        metrics=metrics,
        onnx=onnx_bytes,
        stats=stats,
        attempts=attempt + 1,
        candidate=candidate,
        epochs=epochs,
        train_s=time.perf_counter() - t0,
    )


def _fit_tree_segment(
    key: str,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    schema: Schema,
    candidates: list[FitSettings],
    attempt: int,
    with_stats: bool,
) -> SegmentOutcome:
    """:func:`fit_segment` for a tree type: one booster per candidate, early stopping on the segment's validation
    split; the one with the lowest validation loss is converted to raw-column ONNX and parity-checked against itself."""
    from rayml.models import OnnxPredictor
    from rayml.train import TreeEncoding, boost_in_process, tree_onnx

    t0 = time.perf_counter()
    enc = TreeEncoding.of(schema)  # the set's global vocabularies and class list: every segment answers alike
    best = None
    for i, s in enumerate(candidates):
        seed = segment_seed(s.seed, key, attempt) + i
        booster, loss, rounds = boost_in_process(s.model_type, s.tree_settings, enc, train_df, val_df, seed, threads=1)
        if best is None or loss < best[1]:
            best = (booster, loss, rounds, i)
    assert best is not None, "candidates is not empty"
    booster, loss, rounds, chosen = best
    model_type = candidates[chosen].model_type
    eval_df = val_df if len(val_df) else train_df
    onnx_bytes, _parity, _source = tree_onnx(booster, model_type, enc, eval_df.head(PARITY_ROWS))
    outputs = OnnxPredictor(onnx_bytes).predict_all(eval_df)
    return _trained(key, train_df, val_df, schema, onnx_bytes, outputs, loss, attempt, chosen, rounds, t0, with_stats)


def _short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 500 else text[:497] + "..."


def fit_with_retries(
    key: str,
    index: int,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    schema: Schema,
    candidates: list[FitSettings],
    max_retries: int,
    fail_attempts: int = 0,
) -> SegmentOutcome:
    """:func:`fit_segment` with up to ``max_retries`` retries (new seed each); never raises.

    Args:
        fail_attempts: test-only failure injection (``RAYML_FAIL_SEGMENTS``): fail this many attempts (-1 = all)
            before training for real; ``FAIL_SEGMENT_KILL`` kills this process, like an out-of-memory kill would.
    """
    if fail_attempts == constants.FAIL_SEGMENT_KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    rows = len(train_df) + len(val_df)
    error = None
    for attempt in range(max_retries + 1):
        try:
            if fail_attempts < 0 or attempt < fail_attempts:
                raise TrainingError(f"injected failure of segment {key!r} (RAYML_FAIL_SEGMENTS), attempt {attempt + 1}")
            out = fit_segment(key, train_df, val_df, schema, candidates, attempt=attempt)
            out.index = index
            return out
        except Exception as e:  # a segment's failure is data, not a crash: record it, retry, move on
            error = _short_error(e)
            logger.warning("segment %r attempt %d/%d failed: %s", key, attempt + 1, max_retries + 1, error)
    return SegmentOutcome(key=key, index=index, rows=rows, status="failed", error=error, attempts=max_retries + 1)
