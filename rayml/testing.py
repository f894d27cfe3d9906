"""Helpers for testing code that uses rayml: tiny registered models, request bodies, serve fault injection.

Like ``ray.serve.testing``, this module is for tests, benchmarks and examples, never for production code: nothing
in ``rayml`` imports it (an import-linter contract in ``pyproject.toml`` checks that).

- :func:`register_tiny_model` / :func:`register_tiny_model_set`: a model trained by ``rayml train`` takes ~20 s;
  serving tests only need a real ONNX graph with the real signature, so these build the MLP with its preprocessing
  from a small synthetic frame (:func:`sample_frame`), export it and register it as the trainer would.
- :func:`instances` / :func:`v2_body`: request rows with the tiny models' feature columns, as v1 instances or a v2
  body.
- :func:`serve_faults`: make the replicas of chosen versions raise, stall or answer wildly, to test what the
  router, the shadow path and the rollout controller do about it.

Example:
    >>> from rayml.serve import deploy
    >>> from rayml.testing import register_tiny_model, serve_faults
    >>> register_tiny_model(registry, "sales-model", seed=1)
    >>> with serve_faults({"sales-model:1": "raise"}):
    ...     deploy(cfg, registry=registry)   # every prediction of v1 now fails with a 500
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import pandas as pd

from rayml._private import faults as _faults
from rayml.config import DataConfig, SyntheticConfig


def sales_columns(target: str = "sales") -> list[str]:
    """``--set`` overrides naming the synthetic sales columns' roles, for configs whose ``data.source`` is a file of that
    data (a source other than ``synthetic`` assumes nothing about its columns)."""
    other = "high_sales" if target == "sales" else "sales"
    return [f"data.target={target}", "data.segment=[store_id]", f"data.ignore_columns=[date,{other}]"]


def sample_frame(rows_per_segment: int = 50, segments: int = 4, seed: int = 0) -> pd.DataFrame:
    """Synthetic sales rows (the columns every served test model takes)."""
    from rayml.data import generate_sales

    return generate_sales(SyntheticConfig(segments=segments, rows_per_segment=rows_per_segment, seed=seed))


def register_tiny_model(
    registry: Any,
    name: str = "sales-model",
    seed: int = 0,
    output_scale: float = 1.0,
    task: Literal["regression", "binary"] = "regression",
) -> Any:
    """Register an untrained MLP as a new version of ``name``; returns its ModelVersionInfo.

    Args:
        registry: a :class:`rayml.registry.Registry`.
        name: model name.
        seed: weight initialisation seed (different seeds give different predictions).
        output_scale: multiplies the last layer (100 gives "wild" outputs for rollback tests).
        task: regression or binary.
    """
    import torch
    from torch import nn

    from rayml.data import infer_schema, reference_stats
    from rayml.models import ModelDir, OnnxPredictor, build_model, build_spec, export_onnx

    df = sample_frame()
    target = "sales" if task == "regression" else "high_sales"
    ignore = ["date", "high_sales"] if task == "regression" else ["date", "sales"]
    schema = infer_schema(df, DataConfig(target=target, task=task, ignore_columns=ignore))
    spec = build_spec(df, schema, [8], 0.0, 2)
    model = build_model(spec, seed=seed)
    if output_scale != 1.0:
        last = cast(nn.Linear, model.mlp[-1])  # the output layer
        with torch.no_grad():
            last.weight.mul_(output_scale)
            last.bias.mul_(output_scale)
            if task == "regression":  # move the mean too, so outputs are wild, not just spread out
                model.target_mean *= output_scale
    onnx_bytes = export_onnx(model)
    meta = {
        "task": task,
        "target": target,
        "schema": schema.to_dict(),
        "spec": spec.to_dict(),
        "data_fingerprint": f"tiny-{seed}",
        "name": name,
    }
    # reference bins of the frame it was built from, as training saves them (online drift counts against these)
    ref = reference_stats(df, schema, predictions=OnnxPredictor(onnx_bytes).predict(df))
    out = ModelDir.write_model(
        tempfile.mkdtemp(prefix="rayml-tiny-model-"), onnx_bytes=onnx_bytes, meta=meta, reference_stats=ref
    ).path
    run_id = registry.create_run("serve-tests", f"tiny-{name}-{seed}", tags={"rayml.data_fingerprint": f"tiny-{seed}"})
    tags = {"rayml.data_fingerprint": f"tiny-{seed}", "rayml.run_id": run_id, "rayml.git_commit": "test"}
    try:
        return registry.register(name, out, run_id, tags, description="tiny untrained model for serving tests")
    finally:
        shutil.rmtree(out, ignore_errors=True)  # the registry keeps its own copy


def instances(n: int, seed: int = 1, drop: tuple[str, ...] = ("sales", "high_sales", "date", "store_id")) -> list[dict[str, Any]]:
    """``n`` request rows (v1 instances) with the feature columns of the tiny models."""
    df = sample_frame(rows_per_segment=max(1, n // 4 + 1), seed=seed).head(n).drop(columns=list(drop))
    rows: list[dict[str, Any]] = json.loads(df.to_json(orient="records"))
    return rows


def v2_body(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A v2 inference request for ``rows`` (one tensor per column)."""
    cols = list(rows[0])
    inputs = []
    for c in cols:
        values = [r[c] for r in rows]
        datatype = "BYTES" if isinstance(values[0], str) else "FP32"
        inputs.append({"name": c, "shape": [len(values)], "datatype": datatype, "data": values})
    return {"inputs": inputs, **extra}


def register_tiny_model_set(
    registry: Any, name: str = "store-models", segments: tuple[str, ...] = ("store_000", "store_001", "store_002")
) -> Any:
    """Register a model set (one untrained model per segment, plus a fallback) as a new version of ``name``."""
    from rayml.data import infer_schema
    from rayml.models import ModelSetWriter, build_model, build_spec, export_onnx

    df = sample_frame()
    schema = infer_schema(df, DataConfig(segment=["store_id"]))
    spec = build_spec(df, schema, [8], 0.0, 2)
    out = Path(tempfile.mkdtemp(prefix="rayml-tiny-set-"))
    writer = ModelSetWriter(out, ["store_id"])
    for i, key in enumerate(segments):
        writer.add_segment(key, i, export_onnx(build_model(spec, seed=100 + i)), rows=50)
    writer.finish(
        export_onnx(build_model(spec, seed=99)),
        serve_fallback=True,
        meta={"task": "regression", "target": "sales", "schema": schema.to_dict(), "name": name},
        reference_stats={"global": {}, "segments": {}},
    )
    run_id = registry.create_run("serve-tests", f"tiny-set-{name}")
    try:
        info = registry.register(name, out, run_id, {"rayml.run_id": run_id}, description="tiny model set for serving tests")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    registry.set_model_tag(name, "rayml.kind", "model_set")
    return info


@contextlib.contextmanager
def serve_faults(faults: dict[str, str]) -> Iterator[None]:
    """Inject faults into the model replicas of the versions that are deployed inside the block.

    A fault is one of ``raise`` (every prediction raises: a 500, or a shadow error), ``sleep:S`` (sleep S seconds
    before each prediction) or ``scale:K`` (outputs times K: "wild outputs"). ``deploy``, ``start_rollout``,
    ``override`` and ``rollback_to_previous`` called inside the block give each listed version's replicas its fault;
    a rollout started inside the block keeps them for its whole run (its controller redeploys with them). A version
    deployed again outside the block restarts without its fault. Blocks nest; the inner one wins per version.

    Args:
        faults: ``{"NAME:VERSION": fault}``.

    Raises:
        ConfigError: a key is not ``NAME:VERSION`` or a fault is none of the above (nothing is changed).

    Example:
        >>> with serve_faults({"sales-model:3": "sleep:0.2"}):
        ...     deploy(cfg, registry=registry)   # v3 (a shadow, say) answers 200 ms late; does the primary p50 move?
    """
    previous = _faults.set_serve_faults({**_faults.serve_faults(), **faults})
    try:
        yield
    finally:
        _faults.set_serve_faults(previous)
