"""Register small real models fast (a plain torch loop, no Ray) for tests of what consumes registered models."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rayml.config import DataConfig
from rayml.data import fingerprint, infer_schema, reference_stats, train_validation_split
from rayml.models import ModelDir, build_model, build_spec, encode_categorical, encode_numeric, export_onnx
from rayml.models.mlp import encode_target
from rayml.registry import Registry
from rayml.train import PreparedData, export_model_dir, lineage_tags


def fit_quick(df: pd.DataFrame, data_cfg: DataConfig, epochs: int = 40, seed: int = 0, hidden: list[int] | None = None):
    schema = infer_schema(df, data_cfg)
    split = train_validation_split(df, 0.2, seed)
    spec = build_spec(split.train, schema, hidden or [32], 0.0, 4)
    model = build_model(spec, seed=seed)
    num = torch.from_numpy(encode_numeric(split.train, spec))
    cat = torch.from_numpy(encode_categorical(split.train, spec))
    y = torch.from_numpy(encode_target(split.train, spec, schema.target))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = torch.nn.BCEWithLogitsLoss() if schema.task == "binary" else torch.nn.MSELoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss_fn(model(num, cat, raw=True), y).backward()
        opt.step()
    prepared = PreparedData(split.train, split.validation, schema, fingerprint(df), "test")
    return model, spec, prepared


def register_quick(
    registry: Registry,
    name: str,
    df: pd.DataFrame,
    data_cfg: DataConfig | None = None,
    epochs: int = 40,
    seed: int = 0,
    wild: bool = False,
    nan_output: bool = False,
    alias: str | None = None,
):
    """Train briefly and register; ``wild`` scales the output layer (absurd predictions), ``nan_output`` makes NaNs."""
    data_cfg = data_cfg or DataConfig()
    model, spec, prepared = fit_quick(df, data_cfg, epochs=epochs, seed=seed)
    if wild:
        with torch.no_grad():
            model.mlp[-1].weight.mul_(50.0)
    out = Path(tempfile.mkdtemp(prefix="quick-model-"))
    run_id = registry.create_run("tests", name)
    tags = lineage_tags(prepared.fingerprint, run_id)
    if nan_output:
        with torch.no_grad():
            model.mlp[-1].bias.fill_(float("nan"))
        meta = {"task": prepared.schema.task, "target": prepared.schema.target, "schema": prepared.schema.to_dict()}
        meta["spec"] = spec.to_dict()
        # no parity check: NaN never matches
        ModelDir.write_model(
            out, onnx_bytes=export_onnx(model), meta=meta, reference_stats=reference_stats(prepared.train, prepared.schema)
        )
    else:
        export_model_dir(out, spec, {"model": model.state_dict()}, prepared, {"name": name, "metrics": {}, "lineage": tags})
    info = registry.register(name, out, run_id, tags)
    if alias:
        registry.set_alias(name, info.version, alias)
    return info


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))
