"""Helpers for testing code that uses rayml: tiny registered models, request bodies, serve fault injection.

Like ``ray.serve.testing``, this module is for tests, benchmarks and examples, never for production code: nothing
in ``rayml`` imports it (an import-linter contract in ``pyproject.toml`` checks that).

- :func:`register_tiny_model` / :func:`register_tiny_model_set`: a model trained by ``rayml train`` takes ~20 s;
  serving tests only need a real ONNX graph with the real signature, so these build the MLP with its preprocessing
  from a small synthetic frame (:func:`sample_frame`), export it and register it as the trainer would. A multiclass
  one (``task="multiclass"``) is a graph built directly: a nearest-centroid linear layer over the same columns,
  fitted on :func:`multiclass_frame`, with Softmax and ArgMax, answering ``label`` and ``probabilities``.
  :func:`write_tiny_model` / :func:`write_tiny_model_set` write the same directories without a registry.
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

import abc
import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import pandas as pd

from rayml._private import faults as _faults
from rayml.config import DataConfig, SyntheticConfig

if TYPE_CHECKING:
    from rayml.data import Schema
    from rayml.models import ModelDir

MULTICLASS_TARGET = "sales_band"  # the class column of multiclass_frame()
MULTICLASS_LABELS: tuple[str, ...] = ("low", "medium", "high")  # its default class labels, from low sales to high
# what is not a feature of the tiny models (store_id is their segment column)
_NOT_FEATURES = ["date", "sales", "high_sales", MULTICLASS_TARGET]


# --set overrides for a whole Serve app on a small machine (the 4 logical CPUs of a test Ray, next to other tests):
# small CPU reservations, short health checks and stats flushes, a long deploy timeout
LIGHT_SERVE = [
    "serve.ingress.num_cpus=0.1",
    "serve.request_timeout_s=20",
    "serve.health_check_interval_s=0.5",
    "serve.stats_flush_interval_s=0.5",
    "serve.deploy_timeout_s=180",
]


def sales_columns(target: str = "sales") -> list[str]:
    """``--set`` overrides naming the synthetic sales columns' roles (:func:`rayml.config.synthetic_roles`), for
    configs whose ``data.source`` is a file of that data (a source other than ``synthetic`` assumes nothing)."""
    from rayml.config import synthetic_roles

    return [f"data.{k}={v}" if isinstance(v, str) else f"data.{k}=[{','.join(v)}]" for k, v in synthetic_roles(target).items()]


def sample_frame(rows_per_segment: int = 50, segments: int = 4, seed: int = 0) -> pd.DataFrame:
    """Synthetic sales rows (the columns every served test model takes)."""
    from rayml.data import generate_sales

    return generate_sales(SyntheticConfig(segments=segments, rows_per_segment=rows_per_segment, seed=seed))


def multiclass_frame(
    rows_per_segment: int = 50, segments: int = 4, seed: int = 0, class_labels: Sequence[Any] = MULTICLASS_LABELS
) -> pd.DataFrame:
    """:func:`sample_frame` plus :data:`MULTICLASS_TARGET`: each row's sales quantile as one of ``class_labels``
    (the first label for the lowest sales; as many quantiles as labels, so the classes are about equally common)."""
    df = sample_frame(rows_per_segment, segments, seed)
    bands = pd.qcut(df["sales"].rank(method="first"), len(class_labels), labels=False).to_numpy()
    labels = list(class_labels)
    df[MULTICLASS_TARGET] = pd.Series([labels[int(b)] for b in bands], index=df.index, dtype=object)
    if all(isinstance(c, int) for c in labels):
        df[MULTICLASS_TARGET] = df[MULTICLASS_TARGET].astype("int64")
    return df


def _tiny_schema(task: str) -> Schema:
    """The schema every tiny model shares: the same feature columns, store_id as segment; only target and task vary."""
    from rayml.data import infer_schema

    target = {"regression": "sales", "binary": "high_sales", "multiclass": MULTICLASS_TARGET}[task]
    df = multiclass_frame() if task == "multiclass" else sample_frame()
    ignore = [c for c in _NOT_FEATURES if c != target and c in df.columns]
    cfg = DataConfig(target=target, task=cast(Any, task), segment=["store_id"], ignore_columns=ignore)
    return infer_schema(df, cfg)


def multiclass_onnx(
    seed: int = 0, class_labels: Sequence[Any] = MULTICLASS_LABELS, output_scale: float = 1.0, noise: float = 0.05
) -> bytes:
    """A small multiclass ONNX model over the tiny models' feature columns, keeping rayml's model contract.

    The graph: numeric columns standardised, each categorical column mapped to its category's rank (ai.onnx.ml
    LabelEncoder), one linear layer (nearest class centroid on :func:`multiclass_frame`, plus seeded noise), Softmax
    -> ``probabilities`` [N, K] and ArgMax -> Gather over the class labels -> ``label`` [N] (INT64 when every class
    label is an int, else strings).

    Args:
        seed: seeds the noise added to the weights (different seeds give some different labels).
        class_labels: the classes, in output order.
        output_scale: multiplies the logits (large values give near-certain, "wild" probabilities).
        noise: standard deviation of the noise added to the fitted weights.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    schema = _tiny_schema("multiclass")
    df = multiclass_frame(class_labels=class_labels)
    columns, nodes = [], []
    inits = [numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis_1")]
    inputs, x = [], []
    for f in schema.features:
        if f.kind == "numeric":
            inputs.append(helper.make_tensor_value_info(f.name, TensorProto.FLOAT, ["N"]))
            nodes.append(helper.make_node("Unsqueeze", [f.name, "axis_1"], [f"{f.name}__col"]))
            x.append(df[f.name].to_numpy(dtype=np.float64))
        else:
            cats = list(f.categories)
            inputs.append(helper.make_tensor_value_info(f.name, TensorProto.STRING, ["N"]))
            codes = [float(i) for i in range(len(cats))]
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [f.name],
                    [f"{f.name}__code"],
                    domain="ai.onnx.ml",
                    keys_strings=cats,
                    values_floats=codes,
                    default_float=float(len(cats)),
                )
            )
            nodes.append(helper.make_node("Unsqueeze", [f"{f.name}__code", "axis_1"], [f"{f.name}__col"]))
            rank = {c: i for i, c in enumerate(cats)}
            x.append(np.asarray([rank.get(str(v), len(cats)) for v in df[f.name]], dtype=np.float64))
        columns.append(f"{f.name}__col")
    X = np.stack(x, axis=1)
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    Z = (X - mean) / std
    y = df[MULTICLASS_TARGET].to_numpy(dtype=object)
    centroids = np.stack([Z[y == c].mean(axis=0) for c in class_labels])  # [K, F]
    w = centroids.T + np.random.default_rng(seed).normal(0.0, noise, size=centroids.T.shape)
    b = -0.5 * (centroids**2).sum(axis=1)
    labels = (
        np.asarray(class_labels, dtype=np.int64)
        if all(isinstance(c, int) for c in class_labels)
        else np.asarray([str(c) for c in class_labels], dtype=object)
    )
    inits += [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(std.astype(np.float32), "std"),
        numpy_helper.from_array((w * output_scale).astype(np.float32), "weight"),
        numpy_helper.from_array((b * output_scale).astype(np.float32), "bias"),
        numpy_helper.from_array(labels, "class_labels"),
    ]
    nodes += [
        helper.make_node("Concat", columns, ["x"], axis=1),
        helper.make_node("Sub", ["x", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["z"]),
        helper.make_node("MatMul", ["z", "weight"], ["zw"]),
        helper.make_node("Add", ["zw", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["class_index"], axis=1, keepdims=0),
        helper.make_node("Gather", ["class_labels", "class_index"], ["label"], axis=0),
    ]
    label_type = TensorProto.INT64 if labels.dtype == np.int64 else TensorProto.STRING
    outputs = [
        helper.make_tensor_value_info("label", label_type, ["N"]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(labels)]),
    ]
    graph = helper.make_graph(nodes, "tiny_multiclass", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)])
    model.ir_version = 8  # readable by every onnxruntime rayml supports
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    output_scale: float = 1.0,
    task: Literal["regression", "binary", "multiclass"] = "regression",
    class_labels: Sequence[Any] | None = None,
    name: str = "sales-model",
) -> ModelDir:
    """Write a tiny model directory (no registry): what :func:`register_tiny_model` registers.

    Args:
        out_dir: an empty or new directory.
        seed: weight seed (different seeds give different predictions).
        output_scale: multiplies the last layer (100 gives "wild" outputs for rollback tests).
        task: regression (an untrained MLP), binary (an untrained MLP) or multiclass (:func:`multiclass_onnx`).
        class_labels: multiclass only: the classes (default :data:`MULTICLASS_LABELS`; all ints give INT64 labels).
        name: recorded as the model's name.
    """
    from rayml.data import reference_stats
    from rayml.models import ModelDir, OnnxPredictor

    schema = _tiny_schema(task)
    meta: dict[str, Any] = {"task": task, "target": schema.target, "schema": schema.to_dict()}
    if task == "multiclass":
        labels = list(class_labels or MULTICLASS_LABELS)
        df = multiclass_frame(class_labels=labels)
        onnx_bytes = multiclass_onnx(seed, labels, output_scale)
        meta["class_labels"] = labels
    else:
        df = sample_frame()
        onnx_bytes, spec = _tiny_mlp(schema, df, seed, output_scale)
        meta["spec"] = spec
    meta.update(data_fingerprint=f"tiny-{seed}", name=name)
    # reference bins of the frame it was built from, as training saves them (online drift counts against these)
    ref = reference_stats(df, schema, predictions=OnnxPredictor(onnx_bytes).predict(df))
    return ModelDir.write_model(out_dir, onnx_bytes=onnx_bytes, meta=meta, reference_stats=ref)


def _tiny_mlp(schema: Schema, df: pd.DataFrame, seed: int, output_scale: float) -> tuple[bytes, dict[str, Any]]:
    """An untrained MLP with its preprocessing, exported to ONNX, and its spec (as a dict)."""
    import torch
    from torch import nn

    from rayml.models import build_model, build_spec, export_onnx

    spec = build_spec(df, schema, [8], 0.0, 2)
    model = build_model(spec, seed=seed)
    if output_scale != 1.0:
        last = cast(nn.Linear, model.mlp[-1])  # the output layer
        with torch.no_grad():
            last.weight.mul_(output_scale)
            last.bias.mul_(output_scale)
            if schema.task == "regression":  # move the mean too, so outputs are wild, not just spread out
                model.target_mean *= output_scale
    return export_onnx(model), spec.to_dict()


def register_tiny_model(
    registry: Any,
    name: str = "sales-model",
    seed: int = 0,
    output_scale: float = 1.0,
    task: Literal["regression", "binary", "multiclass"] = "regression",
    class_labels: Sequence[Any] | None = None,
) -> Any:
    """Register a tiny model (:func:`write_tiny_model`) as a new version of ``name``; returns its ModelVersionInfo.

    Args:
        registry: a :class:`rayml.registry.Registry`.
        name: model name.
        seed: weight seed (different seeds give different predictions).
        output_scale: multiplies the last layer (100 gives "wild" outputs for rollback tests).
        task: regression or binary (an untrained MLP), or multiclass (a fitted linear layer, :func:`multiclass_onnx`).
        class_labels: multiclass only: the classes (default :data:`MULTICLASS_LABELS`; all ints give INT64 labels).

    Example:
        >>> register_tiny_model(registry, "species", task="multiclass", class_labels=[0, 1, 2])
    """
    out = write_tiny_model(tempfile.mkdtemp(prefix="rayml-tiny-model-"), seed, output_scale, task, class_labels, name=name).path
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
    registry: Any,
    name: str = "store-models",
    segments: tuple[str, ...] = ("store_000", "store_001", "store_002"),
    task: Literal["regression", "multiclass"] = "regression",
    class_labels: Sequence[Any] | None = None,
) -> Any:
    """Register a model set (one tiny model per segment, plus a fallback) as a new version of ``name``.

    Args:
        registry: a :class:`rayml.registry.Registry`.
        name: model-set name.
        segments: the segments (values of ``store_id``) with their own model.
        task: regression (untrained MLPs) or multiclass (:func:`multiclass_onnx`, one seed per segment).
        class_labels: multiclass only: the classes (default :data:`MULTICLASS_LABELS`).
    """
    out = Path(tempfile.mkdtemp(prefix="rayml-tiny-set-"))
    write_tiny_model_set(out, segments, task, class_labels, name=name)
    run_id = registry.create_run("serve-tests", f"tiny-set-{name}")
    try:
        info = registry.register(name, out, run_id, {"rayml.run_id": run_id}, description="tiny model set for serving tests")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    registry.set_model_tag(name, "rayml.kind", "model_set")
    return info


def write_tiny_model_set(
    out_dir: str | Path,
    segments: tuple[str, ...] = ("store_000", "store_001", "store_002"),
    task: Literal["regression", "multiclass"] = "regression",
    class_labels: Sequence[Any] | None = None,
    name: str = "store-models",
) -> Path:
    """Write what :func:`register_tiny_model_set` registers (no registry); returns the directory."""
    from rayml.models import ModelSetWriter, build_model, build_spec, export_onnx

    schema = _tiny_schema(task)
    meta: dict[str, Any] = {"task": task, "target": schema.target, "schema": schema.to_dict(), "name": name}
    if task == "multiclass":
        labels = list(class_labels or MULTICLASS_LABELS)
        meta["class_labels"] = labels

        def model(seed: int) -> bytes:
            return multiclass_onnx(seed, labels)
    else:
        spec = build_spec(sample_frame(), schema, [8], 0.0, 2)

        def model(seed: int) -> bytes:
            return export_onnx(build_model(spec, seed=seed))

    writer = ModelSetWriter(out_dir, ["store_id"])
    for i, key in enumerate(segments):
        writer.add_segment(key, i, model(100 + i), rows=50)
    writer.finish(model(99), serve_fallback=True, meta=meta, reference_stats={"global": {}, "segments": {}})
    return Path(out_dir)


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


class Traffic(abc.ABC):
    """Continuous HTTP traffic from ``threads`` client threads until :meth:`stop`: each loop calls :meth:`send` with
    an ``httpx.Client`` on ``url`` and appends the records it returns to :attr:`results` (a subclass says what to
    send and what to record). For tests that change a served application under load.

    Example:
        >>> class Predict(Traffic):
        ...     def send(self, c):
        ...         return [(time.time(), c.post("/v1/models/m:predict", json={"instances": rows}).status_code)]
        >>> load = Predict(url); load.start(); ...; load.stop()
    """

    def __init__(self, url: str, threads: int = 2, pause_s: float = 0.01, timeout_s: float = 60.0) -> None:
        import threading

        self.url, self.pause_s, self.timeout_s = url, pause_s, timeout_s
        self.results: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    @abc.abstractmethod
    def send(self, client: Any) -> list[tuple[Any, ...]]:
        """One round of requests with ``client``; returns the records to keep."""

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as c:
            while not self._stop.is_set():
                self.results.extend(self.send(c))
                self._stop.wait(self.pause_s)
