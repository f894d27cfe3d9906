"""Gradient-boosted trees on the driver: run Ray Train's XGBoost / LightGBM trainer, then export the booster as a rayml
model directory whose ONNX graph takes raw columns.

Export reuses the bring-your-own-model converter (:func:`rayml.models.importers.prepare`: onnxmltools, the contract's
outputs, parity) on the encoded matrix, then puts an ``ai.onnx.ml`` LabelEncoder in front of every categorical input
(raw string -> the training vocabulary's code, unknown -> 0; see :mod:`rayml.train._trees`), and checks the final
graph on raw rows against the booster itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper

from rayml._private import constants, fs
from rayml.config import TrainJobConfig
from rayml.data import reference_stats
from rayml.errors import TrainingError
from rayml.train._trees import UNKNOWN_CODE, TreeEncoding, booster_loads, read_tree_checkpoint

logger = logging.getLogger("rayml.train")

_ML_DOMAIN = "ai.onnx.ml"
_CODES = "rayml/codes/"


def tree_loop_config(
    cfg: TrainJobConfig, enc: TreeEncoding, tracking_uri: str | None, mlflow_run_id: str | None, run_dir: str
) -> dict[str, Any]:
    """The plain dict every tree worker receives."""
    import tempfile
    import uuid

    import ray

    t, m = cfg.train, cfg.model
    return {
        "model_type": m.type,
        "settings": getattr(m, m.type).model_dump(),
        "encoding": enc.to_dict(),
        "seed": t.seed,
        "threads": max(1, int(t.cpus_per_worker)),
        "num_workers": t.num_workers,
        "use_gpu": t.use_gpu,
        "checkpoint_every_rounds": t.checkpoint_every_rounds,
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        # None in-process (no Ray): rank 0 then logs to MLflow itself (rayml.train._tracking.worker_can_log)
        "driver_node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        "run_dir": run_dir,
        "faults": constants.fault_injection(),
        "fault_marker": os.path.join(tempfile.gettempdir(), f"rayml-fault-{uuid.uuid4().hex}"),
    }


def check_gpu_build(cfg: TrainJobConfig) -> None:
    """With ``train.use_gpu``, the installed XGBoost must be a CUDA build (the ``xgboost-cpu`` wheel is not).

    Raises:
        ConfigError: it is not.
    """
    if not (cfg.train.use_gpu and cfg.model.type == "xgboost"):
        return
    import xgboost

    if not xgboost.build_info().get("USE_CUDA"):
        from rayml.errors import ConfigError

        raise ConfigError(
            f"train.use_gpu=true, but the installed XGBoost {xgboost.__version__} was built without CUDA (the xgboost-cpu wheel)",
            hint="install the CUDA build on the GPU nodes (pip install xgboost), or set train.use_gpu=false",
        )


def fit_trees(
    cfg: TrainJobConfig,
    datasets: dict[str, Any],
    enc: TreeEncoding,
    run_name: str,
    storage_path: str,
    tracking_uri: str | None,
    mlflow_run_id: str | None,
    *,
    callbacks: list[Any] | None = None,
    loop_overrides: dict[str, Any] | None = None,
    checkpoint_score: tuple[str, str] | None = None,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Run the tree loop on Ray Train's XGBoost / LightGBM trainer.

    Args:
        callbacks: more Ray Train callbacks (a Tune trial passes ``TuneReportCallback``).
        loop_overrides: entries of the worker's loop config to replace (a Tune trial's faults and fault marker).
        checkpoint_score: (metric, "min" | "max"): keep the best checkpoints by it (default: the newest).

    Returns:
        (the final booster, its checkpoint meta: ``epoch`` (rounds), ``history``, ``best_round``, ``early_stopped``,
        the last report's metrics).
    """
    from ray.train import CheckpointConfig, DataConfig as RayDataConfig, FailureConfig, RunConfig, ScalingConfig

    from rayml._private.ray_session import ensure_ray, set_train_poll_interval
    from rayml.train._checkpoints import newest_checkpoint
    from rayml.train._numerics import raise_if_diverged
    from rayml.train._tracking import MlflowReportCallback
    from rayml.train._trees import tree_loop_per_worker

    ensure_ray()
    set_train_poll_interval(cfg.train.controller_poll_interval_s)
    t = cfg.train
    run_dir = fs.join(storage_path, run_name)
    # a divergence ends the run at once, its error raised here; a Tune trial's (callbacks) raises in the worker instead
    loop = tree_loop_config(cfg, enc, tracking_uri, mlflow_run_id, run_dir) | {"report_divergence": not callbacks}
    loop |= loop_overrides or {}
    user_callbacks: list[Any] = [MlflowReportCallback(tracking_uri, mlflow_run_id)] if tracking_uri and mlflow_run_id else []
    score: dict[str, Any] = {}
    if checkpoint_score:
        score = {"checkpoint_score_attribute": checkpoint_score[0], "checkpoint_score_order": checkpoint_score[1]}
    kwargs: dict[str, Any] = {
        "train_loop_config": loop,
        "scaling_config": ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        "run_config": RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=user_callbacks + list(callbacks or []),
            # the newest survive (or the best by checkpoint_score)
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint_num_to_keep, **score),
        ),
        "datasets": datasets,
        # every worker validates on the whole validation set: identical metrics, identical early-stopping decisions
        "dataset_config": RayDataConfig(datasets_to_split=["train"]),
    }
    if cfg.model.type == "xgboost":
        from ray.train.xgboost import XGBoostTrainer

        trainer: Any = XGBoostTrainer(tree_loop_per_worker, **kwargs)
    else:
        from ray.train.lightgbm import LightGBMTrainer

        trainer = LightGBMTrainer(tree_loop_per_worker, **kwargs)
    result = trainer.fit()
    raise_if_diverged(result.return_value)
    ckpt = newest_checkpoint(result.checkpoint, run_dir, loads=booster_loads(cfg.model.type))
    if ckpt is None:
        raise TrainingError(f"training run {run_name!r} produced no checkpoint", hint="check the worker logs above")
    booster, meta = read_tree_checkpoint(ckpt, cfg.model.type)
    return booster, meta, dict(result.metrics or {})


def best_booster(booster: Any, model_type: str, best_round: int) -> Any:
    """The booster's first ``best_round`` rounds (what early stopping chose), or the booster when that is all of it."""
    if model_type == "xgboost":
        if best_round and best_round < booster.num_boosted_rounds():
            return booster[:best_round]
        return booster
    if best_round and best_round < booster.current_iteration():
        import lightgbm

        return lightgbm.Booster(model_str=booster.model_to_string(num_iteration=best_round))
    return booster


def booster_answers(booster: Any, model_type: str, enc: TreeEncoding, rows: pd.DataFrame) -> np.ndarray:
    """The booster's own answers on raw rows: values, P(class 1) or probabilities [N, K]."""
    x = enc.matrix(rows)
    if model_type == "xgboost":
        import xgboost

        return np.asarray(booster.predict(xgboost.DMatrix(x)))
    return np.asarray(booster.predict(x))


def encode_categories_in_graph(onnx_bytes: bytes, enc: TreeEncoding) -> bytes:
    """The converted graph with each categorical column taken as raw strings and coded inside the graph.

    The float input ``c`` becomes a string input ``c`` followed by an ``ai.onnx.ml`` LabelEncoder (opset 2) that maps
    ``categories[i]`` to ``i + 1`` and anything else to ``UNKNOWN_CODE`` (0), as :meth:`TreeEncoding.matrix` does.
    """
    if not enc.categories:
        return onnx_bytes
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    nodes = []
    for inp in graph.input:
        if inp.name not in enc.categories:
            continue
        codes = _CODES + inp.name
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == inp.name:
                    node.input[i] = codes
        cats = list(enc.categories[inp.name])
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                [inp.name],
                [codes],
                name=f"rayml/encode/{inp.name}",
                domain=_ML_DOMAIN,
                keys_strings=cats,
                values_floats=[float(i + 1) for i in range(len(cats))],
                default_float=float(UNKNOWN_CODE),
            )
        )
        inp.type.tensor_type.elem_type = TensorProto.STRING
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    ml = next((o for o in model.opset_import if o.domain == _ML_DOMAIN), None)
    if ml is None:
        model.opset_import.append(helper.make_opsetid(_ML_DOMAIN, 2))
    elif ml.version < 2:
        ml.version = 2  # LabelEncoder-2 maps strings to floats; the tree ensembles are the same in opsets 1 and 2
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_tree_model_dir(
    out_dir: str | Path,
    booster: Any,
    model_type: str,
    enc: TreeEncoding,
    prepared: Any,
    meta_extra: dict[str, Any],
) -> Path:
    """Convert the booster (parity-checked on raw rows) and write the model directory.

    Args:
        out_dir: an empty or new directory.
        booster: the trained booster (already cut to the best round).
        model_type: xgboost | lightgbm.
        enc: the encoding it was trained with.
        prepared: the :class:`rayml.train.PreparedData` it was trained on.
        meta_extra: more metadata (``name``, ``metrics``, ``lineage`` ...).

    Returns:
        The directory, ready for ``Registry.register``.
    """
    from rayml.models import ModelDir
    from rayml.models.predictor import OnnxPredictor

    sample = prepared.validation.head(512) if len(prepared.validation) else prepared.train.head(512)
    onnx_bytes, parity, source = tree_onnx(booster, model_type, enc, sample)
    predictor = OnnxPredictor(onnx_bytes)
    rows = pd.concat([prepared.train, prepared.validation], ignore_index=True)
    rows = rows.sample(200_000, random_state=0) if len(rows) > 200_000 else rows
    stats = reference_stats(prepared.train, prepared.schema, predictions=predictor.predict(rows) if len(rows) else None)
    meta = {
        "task": enc.task,
        "target": enc.target,
        **({"class_labels": list(enc.class_labels)} if enc.task == "multiclass" else {}),
        "schema": prepared.schema.to_dict(),
        "parity_max_abs_diff": parity["parity_max_abs_diff"],
        "parity": parity,
        "source": source,
        "categorical_encoding": {
            "method": "ordinal code from the training vocabulary, computed in the ONNX graph from the raw string "
            "(ai.onnx.ml LabelEncoder)",
            "codes": "1..K in the order of the vocabulary (most frequent first); 0 = unknown or missing",
            "booster_sees_codes_as": "categories (LightGBM categorical_feature)" if model_type == "lightgbm" else "numbers",
            "columns": {k: list(v) for k, v in enc.categories.items()},
        },
        "feature_order": list(enc.features),
        "data_fingerprint": prepared.fingerprint,
        **meta_extra,
    }
    return ModelDir.write_model(
        out_dir, onnx_bytes=onnx_bytes, meta=meta, reference_stats=stats, input_example=sample.head(5)
    ).path


def tree_validation_metrics(booster: Any, model_type: str, enc: TreeEncoding, validation: pd.DataFrame) -> dict[str, float]:
    """The task's validation metrics of the booster in the target's terms (as the MLP reports them)."""
    from rayml.models.metrics import task_metrics

    if not len(validation):
        return {}
    out = booster_answers(booster, model_type, enc, validation)
    y = validation[enc.target]
    if enc.task == "multiclass":
        from rayml.data.schema import class_labels_of

        labels = np.asarray(enc.class_labels, dtype=object)
        return task_metrics(
            "multiclass",
            class_labels_of(y, enc.target),
            labels[np.argmax(out, axis=1)],
            proba=out,
            class_labels=list(enc.class_labels),
            prefix="val_",
        )
    return task_metrics(enc.task, y.to_numpy(), out, prefix="val_")


def tree_onnx(
    booster: Any, model_type: str, enc: TreeEncoding, sample: pd.DataFrame
) -> tuple[bytes, dict[str, float], dict[str, Any]]:
    """The raw-column ONNX graph of a booster, parity-checked on raw ``sample`` rows against the booster itself.

    :func:`export_tree_model_dir` writes it into a model directory; many models stores only the graph of each
    segment's booster (``rayml.manymodels``).

    Args:
        booster: the trained booster (already cut to the best round).
        model_type: xgboost | lightgbm.
        enc: the encoding it was trained with.
        sample: raw rows with the target column (not empty).

    Returns:
        (the ONNX bytes, the parity report with its ``parity_atol``, the converter's ``source`` metadata).

    Raises:
        ConversionError: the converted graph does not answer like the booster.
    """
    from rayml.models.importers import PARITY_ATOL, Answers, check_parity, plain_labels, prepare
    from rayml.models.predictor import LABEL, PREDICTION, PROBABILITIES, OnnxPredictor

    expected = booster_answers(booster, model_type, enc, sample)
    # a regression value is a sum of hundreds of leaf values that onnxruntime adds in float32: the absolute tolerance
    # scales with the values (1e-4 of the largest), or a target in the hundreds fails on rounding alone
    atol = PARITY_ATOL * (max(1.0, float(np.abs(expected).max())) if enc.task == "regression" and len(expected) else 1.0)
    encoded = enc.frame(sample).assign(**{enc.target: sample[enc.target].to_numpy()})
    converted = prepare(
        booster,
        sample=encoded,
        target=enc.target,
        task=enc.task,
        features=list(enc.features),
        class_labels=list(enc.class_labels) if enc.task == "multiclass" else None,
        atol=atol,
    )
    onnx_bytes = encode_categories_in_graph(converted.onnx_bytes, enc)
    got = OnnxPredictor(onnx_bytes).predict_all(sample)
    labels = list(enc.class_labels) if enc.task == "multiclass" else [0, 1] if enc.task == "binary" else []
    parity = check_parity(
        Answers(expected),
        Answers(got[PROBABILITIES], plain_labels(got[LABEL])) if enc.task == "multiclass" else Answers(got[PREDICTION]),
        task=enc.task,
        class_labels=labels,
        index=sample.index,
        source=f"{model_type} booster",
        atol=atol,
    )
    return onnx_bytes, {**parity, "parity_atol": atol}, converted.meta["source"]


def boost_in_process(
    model_type: str,
    settings: dict[str, Any],
    enc: TreeEncoding,
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    seed: int,
    threads: int = 1,
) -> tuple[Any, float, int]:
    """Boost one small model in the calling process (no Ray Train): what a many-models task does per segment.

    Early stopping (``settings["early_stopping_rounds"]``) watches ``val_df``; with no validation rows it is off and the
    training rows are reported instead.

    Returns:
        (the booster cut to its best round, that round's validation metric (rmse / logloss), the rounds kept).
    """
    from rayml.train._trees import lightgbm_params, xgboost_params

    x, y = enc.matrix(train_df), enc.labels(train_df)
    has_val = len(val_df) > 0
    xv, yv = (enc.matrix(val_df), enc.labels(val_df)) if has_val else (x, y)
    rounds = int(settings["num_boost_round"])
    patience = int(settings["early_stopping_rounds"]) if has_val else 0
    if model_type == "xgboost":
        import xgboost

        params = xgboost_params(settings, enc, seed, threads)
        log: dict[str, Any] = {}
        booster: Any = xgboost.train(
            params,
            xgboost.DMatrix(x, label=y),
            num_boost_round=rounds,
            evals=[(xgboost.DMatrix(xv, label=yv), "validation")],
            early_stopping_rounds=patience or None,
            evals_result=log,
            verbose_eval=False,
        )
        history = [float(v) for v in log["validation"][params["eval_metric"]]]
    else:
        import lightgbm

        params = lightgbm_params(settings, enc, seed, threads)
        cats: Any = enc.categorical_indices or "auto"
        dtrain = lightgbm.Dataset(x, label=y, categorical_feature=cats, free_raw_data=False)
        dval = lightgbm.Dataset(xv, label=yv, reference=dtrain, categorical_feature=cats)
        log = {}
        callbacks = [lightgbm.record_evaluation(log)]
        if patience:
            callbacks.append(lightgbm.early_stopping(patience, verbose=False))
        booster = lightgbm.train(
            params, dtrain, num_boost_round=rounds, valid_sets=[dval], valid_names=["validation"], callbacks=callbacks
        )
        history = [float(v) for v in log["validation"][params["metric"]]]
    if not history or not np.isfinite(history).all():
        raise TrainingError(f"{model_type} validation metric is not finite: {history[-3:]} (training diverged)")
    best_round = int(np.argmin(history)) + 1 if patience else len(history)
    return best_booster(booster, model_type, best_round), history[best_round - 1], best_round
