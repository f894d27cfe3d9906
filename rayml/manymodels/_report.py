"""What a many-models run records: per-segment comparison with the global model, and the model-set directory."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayml.config import ManyModelsJobConfig
from rayml.data import Schema
from rayml.manymodels._fit import SegmentOutcome, prediction_metrics
from rayml.manymodels._plan import VAL_COLUMN, Accounting, Segment
from rayml.models import ModelSetWriter


def global_metrics_per_segment(
    global_onnx: bytes, table: pd.DataFrame, trained: list[Segment], schema: Schema
) -> dict[str, dict[str, float]]:
    """The global model's metrics on each trained segment's validation rows (what the segment model must beat)."""
    from rayml.models import OnnxPredictor

    if not trained:
        return {}
    rows = np.concatenate([np.arange(s.start, s.start + s.rows) for s in trained])
    owner = np.repeat(np.arange(len(trained)), [s.rows for s in trained])
    is_val = table[VAL_COLUMN].to_numpy()[rows]
    rows, owner = rows[is_val], owner[is_val]
    val = table.iloc[rows]
    outputs = OnnxPredictor(global_onnx).predict_all(val)
    out = {}
    for i, s in enumerate(trained):
        mask = owner == i
        mine = {name: values[mask] for name, values in outputs.items()}
        out[s.key] = prediction_metrics(schema, val[mask], mine, prefix="global_val_")
    return out


def aggregate(outcomes: dict[str, SegmentOutcome], task: str) -> dict[str, float]:
    trained = [o for o in outcomes.values() if o.status == "trained"]
    if not trained:
        return {}
    main = "val_rmse" if task == "regression" else "val_logloss"  # lower is better for both
    seg = np.array([o.metrics.get(main, np.nan) for o in trained], dtype=float)
    glob = np.array([o.metrics.get(f"global_{main}", np.nan) for o in trained], dtype=float)
    both = np.isfinite(seg) & np.isfinite(glob)
    out = {f"median_segment_{main}": float(np.nanmedian(seg)) if np.isfinite(seg).any() else float("nan")}
    if both.any():
        out[f"median_global_{main}"] = float(np.median(glob[both]))
        out["segments_beating_global_share"] = float(np.mean(seg[both] < glob[both]))
    return out


def segment_model_source(model_type: str) -> dict[str, str]:
    """The ``source`` metadata of a set's models (``model.type``): the framework that made them, with its version."""
    import importlib
    from importlib.metadata import version

    if model_type == "mlp":
        return {"framework": "rayml-mlp", "torch": version("torch")}
    # the module's own version: XGBoost's distribution may be named `xgboost-cpu` (the CPU-only wheel), not `xgboost`
    return {"framework": model_type, model_type: importlib.import_module(model_type).__version__}


def write_set(
    model_dir: str,
    cfg: ManyModelsJobConfig,
    schema: Schema,
    data_fp: str,
    outcomes: dict[str, SegmentOutcome],
    global_outcome: SegmentOutcome,
    acc: Accounting,
    tags: dict[str, str],
    input_example: pd.DataFrame | None = None,
) -> None:
    writer = ModelSetWriter(model_dir, cfg.data.segment)
    seg_stats = {}
    for key in sorted(outcomes):
        o = outcomes[key]
        extra = {"attempts": o.attempts}
        if o.status == "trained":
            assert o.onnx is not None, "a trained outcome carries its model"
            writer.add_segment(
                key, o.index, o.onnx, o.rows, o.metrics, extra={**extra, "candidate": o.candidate, "epochs": o.epochs}
            )
            seg_stats[key] = o.stats
        elif cfg.manymodels.fallback:
            writer.add_fallback_segment(key, o.rows, status=o.status, extra={**extra, "error": o.error} if o.error else extra)
    assert global_outcome.onnx is not None, "the global model trained"
    writer.finish(
        global_outcome.onnx,
        serve_fallback=cfg.manymodels.fallback,
        meta={
            "name": cfg.model.name,
            "task": schema.task,
            "target": schema.target,
            **({"class_labels": list(schema.classes)} if schema.task == "multiclass" else {}),  # one list for the set
            "schema": schema.to_dict(),
            "data_fingerprint": data_fp,
            "min_rows": cfg.manymodels.min_rows,
            "source": segment_model_source(cfg.model.type),  # every segment's model and the fallback
            "global_metrics": global_outcome.metrics,
            "summary": {
                "segments": acc.segments,
                "trained": len(acc.trained),
                "fallback": len(acc.fell_back),
                "failed": len(acc.failed),
            },
            "lineage": tags,
        },
        reference_stats={"global": global_outcome.stats or {}, "segments": seg_stats},
        input_example=input_example,
    )
