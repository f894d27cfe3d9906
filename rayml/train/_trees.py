"""The gradient-boosted trees' worker loop (XGBoost and LightGBM on Ray Train), and the encoding of raw rows it trains
on.

Encoding. Numeric columns go in as they are (missing values stay NaN: both libraries route them natively). A
categorical column becomes an ordinal code from the training vocabulary (``Schema`` categories, most frequent first):
``1 .. K`` for the known values, ``0`` for anything else (missing, rare beyond ``data.max_categories``, unseen). LightGBM
is told these columns are categorical (``categorical_feature``: its native categorical splits, which onnxmltools
converts); XGBoost takes the codes as numbers (onnxmltools cannot convert XGBoost's categorical splits). The
registered ONNX graph computes the same codes from the raw strings with an ``ai.onnx.ml`` LabelEncoder
(:mod:`rayml.train._tree_export`), so nobody one-hot encodes anything.

Checkpoints. Every ``train.checkpoint_every_rounds`` rounds (and after the last) rank 0 saves the booster with
``rayml_checkpoint.json``: the round (under ``epoch``, the key :mod:`rayml.train._checkpoints` reads), the validation
history so far and the best round. A restarted worker group or a re-run driver loads the newest one (Ray's, or a newer
one on storage) and boosts only the remaining rounds on top of it (``xgb_model=`` / ``init_model=``); the history in
the checkpoint keeps early stopping and the best round exact across restarts.

Numerical stability. A round whose validation loss is NaN or infinite stops boosting before it is checkpointed; the
run ends with a :class:`rayml.errors.TrainingError` naming the round (:mod:`rayml.train._numerics`): a session with a
``fail(error, round)`` method decides how (a Ray Train worker returns it for the driver to raise), others raise it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from rayml._private import faults as _faults
from rayml.data.schema import Schema, as_category_strings, class_labels_of
from rayml.errors import DataValidationError, TrainingError
from rayml.monitor.training import WorkerResources
from rayml.train._numerics import DIVERGED, diverged_report, non_finite_loss

logger = logging.getLogger("rayml.train")

META_FILE = "rayml_checkpoint.json"  # as rayml.train._checkpoints.META_FILE
BOOSTER_FILES = {"xgboost": "model.ubj", "lightgbm": "model.txt"}
UNKNOWN_CODE = 0  # the code of a category not in the training vocabulary (and of a missing value)


@dataclass(frozen=True)
class TreeEncoding:
    """How raw rows become the boosters' float matrix (see the module docstring).

    Attributes:
        features: the feature columns, in matrix order.
        categories: categorical column -> its training vocabulary (code ``i + 1`` for ``categories[i]``).
        task: regression | binary | multiclass.
        target: the target column.
        class_labels: multiclass: the original labels (the booster predicts their index ``0 .. K-1``).
    """

    features: tuple[str, ...]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    task: str = "regression"
    target: str = ""
    class_labels: tuple[Any, ...] = ()

    @classmethod
    def of(cls, schema: Schema) -> TreeEncoding:
        return cls(
            features=tuple(schema.feature_names),
            categories={f.name: tuple(f.categories) for f in schema.categorical},
            task=schema.task,
            target=schema.target,
            class_labels=tuple(schema.classes) if schema.task == "multiclass" else (),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "task": self.task,
            "target": self.target,
            "class_labels": list(self.class_labels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeEncoding:
        return cls(
            features=tuple(d["features"]),
            categories={k: tuple(v) for k, v in d["categories"].items()},
            task=d["task"],
            target=d["target"],
            class_labels=tuple(d["class_labels"]),
        )

    @property
    def categorical_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f in self.categories]

    def matrix(self, df: pd.DataFrame) -> np.ndarray:
        """The float64 feature matrix ``[N, F]`` of raw rows."""
        cols = []
        for name in self.features:
            if name in self.categories:
                lookup = {c: i + 1 for i, c in enumerate(self.categories[name])}
                values = as_category_strings(df[name])
                cols.append(np.fromiter((lookup.get(v, UNKNOWN_CODE) for v in values), dtype=np.float64, count=len(df)))
            else:
                cols.append(pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64))
        return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0))

    def frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """:meth:`matrix` as a frame with the feature names (what the converted booster graph takes)."""
        return pd.DataFrame(self.matrix(df), columns=list(self.features), index=df.index)

    def labels(self, df: pd.DataFrame) -> np.ndarray:
        """The training target: values (regression), 0/1 (binary), the index into ``class_labels`` (multiclass).

        Raises:
            DataValidationError: (multiclass) a label the model was not trained on.
        """
        if self.task != "multiclass":
            return df[self.target].to_numpy(dtype=np.float64)
        labels = class_labels_of(df[self.target], self.target)
        index = pd.Categorical(labels, categories=list(self.class_labels)).codes.astype(np.int64)
        if (index < 0).any():
            unseen = sorted({str(v) for v in labels[index < 0]})
            raise DataValidationError(
                [f"target {self.target!r} has label(s) the model was not trained on: {unseen[:10]}"],
                hint="drop those rows, or retrain on data that has every class",
            )
        return index.astype(np.float64)


# --- booster settings ------------------------------------------------------------------------------------------------
# The boosters' evaluation metrics on the validation split, per task (the first is ``val_loss``: early stopping's), and
# rayml's name for each (the MLP's names; ``error`` becomes ``val_accuracy = 1 - error``).
XGBOOST_METRICS = {
    "regression": ("rmse", "mae"),
    "binary": ("logloss", "auc", "error"),
    "multiclass": ("mlogloss", "merror"),
}
LIGHTGBM_METRICS = {
    "regression": ("rmse", "l1"),
    "binary": ("binary_logloss", "auc", "binary_error"),
    "multiclass": ("multi_logloss", "multi_error"),
}
_RAYML_NAMES = {
    "rmse": "val_rmse",
    "mae": "val_mae",
    "l1": "val_mae",
    "logloss": "val_logloss",
    "binary_logloss": "val_logloss",
    "mlogloss": "val_logloss",
    "multi_logloss": "val_logloss",
    "auc": "val_auc",
}
_ERRORS = ("error", "merror", "binary_error", "multi_error")


def rayml_metrics(values: dict[str, float]) -> dict[str, float]:
    """The boosters' metric values (by their names) under rayml's names: ``val_rmse``, ``val_accuracy`` ..."""
    out = {}
    for name, value in values.items():
        if name in _ERRORS:
            out["val_accuracy"] = 1.0 - float(value)
        elif name in _RAYML_NAMES:
            out[_RAYML_NAMES[name]] = float(value)
    return out


def xgboost_params(
    settings: dict[str, Any],
    enc: TreeEncoding,
    seed: int,
    threads: int,
    *,
    all_metrics: bool = False,
    use_gpu: bool = False,
) -> dict[str, Any]:
    """XGBoost's ``params`` for ``model.xgboost`` (its config section as a dict) and the task.

    Args:
        all_metrics: evaluate every metric of :data:`XGBOOST_METRICS` (the first is still the loss); off, only the loss
            (XGBoost's own early stopping watches the *last* metric).
        use_gpu: train on the worker's GPU (``device="cuda"``).
    """
    objective = {"regression": "reg:squarederror", "binary": "binary:logistic", "multiclass": "multi:softprob"}[enc.task]
    metrics = XGBOOST_METRICS[enc.task]
    params: dict[str, Any] = {
        "objective": objective,
        "eval_metric": list(metrics) if all_metrics else metrics[0],
        "tree_method": "hist",
        "max_depth": settings["max_depth"],
        "eta": settings["learning_rate"],
        "subsample": settings["subsample"],
        "colsample_bytree": settings["colsample_bytree"],
        "lambda": settings["reg_lambda"],
        "alpha": settings["reg_alpha"],
        "min_child_weight": settings["min_child_weight"],
        "seed": seed,
        "nthread": threads,
    }
    if use_gpu:
        params["device"] = "cuda"
    if enc.task == "multiclass":
        params["num_class"] = len(enc.class_labels)
    return params


def lightgbm_params(
    settings: dict[str, Any], enc: TreeEncoding, seed: int, threads: int, *, all_metrics: bool = False
) -> dict[str, Any]:
    """LightGBM's ``params`` for ``model.lightgbm`` (its config section as a dict) and the task (``all_metrics``: as
    :func:`xgboost_params`; LightGBM's own early stopping would watch every metric)."""
    metrics = LIGHTGBM_METRICS[enc.task]
    params: dict[str, Any] = {
        "objective": {"regression": "regression", "binary": "binary", "multiclass": "multiclass"}[enc.task],
        "metric": list(metrics) if all_metrics else metrics[0],
        "num_leaves": settings["num_leaves"],
        "max_depth": settings["max_depth"],
        "learning_rate": settings["learning_rate"],
        "feature_fraction": settings["feature_fraction"],
        "bagging_fraction": settings["bagging_fraction"],
        "bagging_freq": 1 if settings["bagging_fraction"] < 1 else 0,
        "lambda_l1": settings["lambda_l1"],
        "lambda_l2": settings["lambda_l2"],
        "min_data_in_leaf": settings["min_data_in_leaf"],
        "seed": seed,
        "deterministic": True,
        "num_threads": threads,
        "verbose": -1,
    }
    if enc.task == "multiclass":
        params["num_class"] = len(enc.class_labels)
    return params


# --- progress: history, early stopping, checkpoints --------------------------------------------------------------------
class Progress:
    """The rounds boosted so far (across restarts): validation history, best round, early stopping, checkpoints.

    Args:
        config: the loop config (:func:`rayml.train._tree_fit.tree_loop_config`).
        rank: this worker's rank (rank 0 writes checkpoints and logs).
        report: ``ray.train.report``-like: ``report(metrics, checkpoint=...)``.
        start: the round the checkpoint resumed from (0: from scratch) and its ``history``.
    """

    def __init__(self, config: dict[str, Any], rank: int, report: Any, start: int, history: list[float]) -> None:
        self.config, self.rank, self.report = config, rank, report
        self.start, self.history = start, list(history)  # history[i]: val_loss after round i + 1
        self.every: int = config["checkpoint_every_rounds"]
        self.patience: int = config["settings"]["early_stopping_rounds"]
        self.faults = _faults.parse(config.get("faults"))
        self.last_checkpointed = start
        self.logger = None
        if rank == 0:
            from rayml.train._tracking import EpochMetricsLogger, worker_can_log

            if worker_can_log(config.get("tracking_uri"), config.get("driver_node_id")):
                self.logger = EpochMetricsLogger(config.get("tracking_uri"), config.get("mlflow_run_id"))
                self.logger.log({"resumed_from_epoch": start}, step=start)
        self._unlogged: list[tuple[dict[str, float], int]] = []
        self.latest: dict[str, float] = {}  # the last round's other validation metrics (val_rmse, val_auc ...)
        self.diverged: tuple[TrainingError, int] | None = None  # the error and round of a non-finite validation loss
        # worker<rank>_cpu_percent / _memory_rss_bytes at every checkpoint, as the MLP loop samples them every epoch
        # (the model and run labels are for Prometheus gauges, which the tree loop does not export)
        self.resources = WorkerResources("", "", rank)

    @property
    def best_round(self) -> int:
        return int(np.argmin(self.history)) + 1 if self.history else 0

    def after_round(self, booster: Any, round_: int, val_loss: float, metrics: dict[str, float] | None = None) -> bool:
        """Record round ``round_`` (1-based) with its loss and other validation ``metrics`` (rayml's names); checkpoint
        when due; True when early stopping says stop, or when the loss is not finite (then :attr:`diverged` is set and
        nothing is recorded for the round)."""
        if not np.isfinite(val_loss):
            lr = float(self.config["settings"]["learning_rate"])
            error = non_finite_loss(
                "validation",
                float(val_loss),
                step=f"round {round_}",
                learning_rate=lr,
                last_good=self.last_checkpointed,
                unit="round",
            )
            self.diverged = (error, round_)
            return True
        del self.history[round_ - 1 :]  # a round boosted again after a restart replaces its old entry
        self.history.append(float(val_loss))
        self.latest = dict(metrics or {})
        # `epoch`: the CLI's progress bar
        self._unlogged.append(({**self.latest, "val_loss": float(val_loss), "epoch": round_}, round_))
        stop = bool(self.patience) and round_ - self.best_round >= self.patience
        if round_ % self.every == 0 or stop:
            self.checkpoint(booster, round_, early_stopped=stop)
        _faults.after_round(self.faults, round_, self.rank, self.config["fault_marker"])
        return stop

    def flush(self) -> None:
        """Log the rounds not logged yet (they go with the next checkpoint otherwise)."""
        if self.logger is not None and self._unlogged:
            self.logger.log_many(self._unlogged)
        self._unlogged = []

    def checkpoint(self, booster: Any, round_: int, *, early_stopped: bool = False, done: bool = False) -> None:
        """Report round ``round_`` with a checkpoint of ``booster`` (rank 0 writes it; every rank reports)."""
        import ray.train

        if round_ == self.last_checkpointed and not done:
            return
        self.last_checkpointed = round_
        best = self.best_round
        metrics = {
            **self.latest,
            "epoch": round_,
            "round": round_,
            "val_loss": self.history[-1] if self.history else float("nan"),
            "best_round": best,
            "best_val_loss": self.history[best - 1] if best else float("nan"),
            "early_stopped": int(early_stopped),
            "resumed_from_epoch": self.start,
            "logged_by_worker": int(self.logger is not None),
        }
        sample = self.resources.sample()
        metrics.update(sample)  # what the controller logs (rank > 0, or rank 0 when it cannot reach MLflow)
        if self._unlogged:
            self._unlogged[-1][0].update(sample)  # what rank 0 logs itself
        self.flush()
        if self.rank != 0:
            self.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, BOOSTER_FILES[self.config["model_type"]])
            if self.config["model_type"] == "lightgbm":
                booster.save_model(path, num_iteration=-1)  # every round, also after early stopping set best_iteration
            else:
                booster.save_model(path)
            meta = {"epoch": round_, "history": self.history, "best_round": best, "early_stopped": early_stopped}
            with open(os.path.join(d, META_FILE), "w") as f:
                json.dump(meta, f)
            self.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def read_tree_checkpoint(checkpoint: Any, model_type: str) -> tuple[Any, dict[str, Any]]:
    """(the booster, the meta) of a tree checkpoint."""
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, META_FILE)) as f:
            meta = json.load(f)
        path = os.path.join(d, BOOSTER_FILES[model_type])
        booster: Any
        if model_type == "xgboost":
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(path)
        else:
            import lightgbm

            booster = lightgbm.Booster(model_file=path)
    return booster, meta


def booster_loads(model_type: str) -> Any:
    """A loadability check of a checkpoint directory on storage (for :func:`rayml.train._checkpoints.newest_checkpoint`)."""

    def loads(filesystem: Any, path: str) -> bool:
        import ray.train

        try:
            read_tree_checkpoint(ray.train.Checkpoint(path, filesystem=filesystem), model_type)
            return True
        except Exception:  # torn or partial upload
            return False

    return loads


def _frame(shard: Any) -> pd.DataFrame:
    frames = list(shard.iter_batches(batch_size=65536, batch_format="pandas"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class TreeSession:
    """Where the tree loop runs: its rank, its rows, its last checkpoint and where its reports go.

    This one is a Ray Train worker (``ray.train``: dataset shards, checkpoints, reports); a Tune trial that boosts in
    its own process supplies another (:mod:`rayml.tune._trainables`).
    """

    def __init__(self, report_divergence: bool = False) -> None:
        import ray.train

        self.rank: int = ray.train.get_context().get_world_rank()
        self.report_divergence = report_divergence  # as rayml.train._loop.RayTrainSession's
        self.diverged: dict[str, Any] | None = None  # what the worker function returns to the driver

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(this worker's training rows, the validation rows)."""
        import ray.train

        return _frame(ray.train.get_dataset_shard("train")), _frame(ray.train.get_dataset_shard("validation"))

    def get_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=checkpoint)

    def fail(self, error: TrainingError, round_: int) -> None:
        """Keep the divergence for the worker function to return, for the driver to raise: a raise here would be
        retried by Ray Train (``train.max_failures`` times) and diverge again from the same checkpoint. Under a Tune
        trial: raise."""
        if not self.report_divergence:
            raise error
        self.diverged = diverged_report(error, round_)


# --- the worker loop ---------------------------------------------------------------------------------------------------
def tree_loop_per_worker(config: dict[str, Any]) -> Any:  # Any: Ray's stubs type a worker function as returning None
    """Ray Train worker body for ``model.type`` xgboost | lightgbm: resume, boost the remaining rounds, checkpoint.

    Returns:
        None, or a :func:`rayml.train._numerics.diverged_report` when a round's validation loss was not finite.
    """
    from rayml._private.ray_session import quiet_ray_data

    quiet_ray_data()
    session = TreeSession(bool(config.get("report_divergence")))
    run_tree_loop(config, session)
    return session.diverged


def run_tree_loop(config: dict[str, Any], session: Any) -> None:
    """Resume from the session's newest checkpoint (or a newer one under ``config["run_dir"]``), boost the remaining
    rounds, checkpoint every ``checkpoint_every_rounds`` rounds and after the last.

    Args:
        config: the loop config (:func:`rayml.train._tree_fit.tree_loop_config`).
        session: a :class:`TreeSession`-like object (``rank``, ``frames()``, ``get_checkpoint()``, ``report()``).
    """
    from rayml.train._checkpoints import newest_checkpoint

    model_type: str = config["model_type"]
    enc = TreeEncoding.from_dict(config["encoding"])
    rank = session.rank
    train_df, val_df = session.frames()
    x, y = enc.matrix(train_df), enc.labels(train_df)
    xv, yv = enc.matrix(val_df), enc.labels(val_df)

    ckpt = newest_checkpoint(session.get_checkpoint(), config.get("run_dir"), loads=booster_loads(model_type))
    init, meta = read_tree_checkpoint(ckpt, model_type) if ckpt is not None else (None, {})
    start = int(meta.get("epoch", 0))
    history = [float(v) for v in meta.get("history", [])][:start]
    if start:
        logger.info("resuming boosting from the checkpoint of round %d", start)
    progress = Progress(config, rank, session.report, start, history)
    total: int = config["settings"]["num_boost_round"]
    if meta.get("early_stopped") or start >= total:
        progress.checkpoint(init, start, early_stopped=bool(meta.get("early_stopped")), done=True)
        return
    if model_type == "xgboost":
        booster = _boost_xgboost(config, enc, progress, (x, y), (xv, yv), init, total - start)
    else:
        booster = _boost_lightgbm(config, enc, progress, (x, y), (xv, yv), init, total - start)
    if progress.diverged is not None:
        _fail(session, progress, *progress.diverged)
        return
    rounds = len(progress.history)
    stopped = bool(progress.patience) and rounds - progress.best_round >= progress.patience
    progress.checkpoint(booster, rounds, early_stopped=stopped)  # unless that round is checkpointed already


def _fail(session: Any, progress: Progress, error: TrainingError, round_: int) -> None:
    """End a diverged run: the session's ``fail`` when it has one (a Ray Train worker returns it), else raise."""
    progress.flush()
    if progress.logger is not None:
        progress.logger.log({DIVERGED: 1}, step=round_)
    fail = getattr(session, "fail", None)
    if fail is None:
        raise error
    fail(error, round_)


def _boost_xgboost(
    config: dict[str, Any],
    enc: TreeEncoding,
    progress: Progress,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    init: Any,
    rounds: int,
) -> Any:
    import xgboost

    params = xgboost_params(
        config["settings"], enc, config["seed"], config["threads"], all_metrics=True, use_gpu=config.get("use_gpu", False)
    )
    loss = XGBOOST_METRICS[enc.task][0]
    # no feature names: the converted graph reads the matrix by position (TreeEncoding.features)
    dtrain = xgboost.DMatrix(train[0], label=train[1])
    dval = xgboost.DMatrix(val[0], label=val[1])

    class Callback(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            values = {name: history[-1] for name, history in evals_log["validation"].items()}
            return progress.after_round(model, model.num_boosted_rounds(), values[loss], rayml_metrics(values))

    return xgboost.train(
        params,
        dtrain,
        num_boost_round=rounds,
        evals=[(dval, "validation")],
        xgb_model=init,
        callbacks=[Callback()],
        verbose_eval=False,
    )


def _boost_lightgbm(
    config: dict[str, Any],
    enc: TreeEncoding,
    progress: Progress,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    init: Any,
    rounds: int,
) -> Any:
    import lightgbm
    import ray.train.lightgbm

    params = lightgbm_params(config["settings"], enc, config["seed"], config["threads"], all_metrics=True)
    loss = LIGHTGBM_METRICS[enc.task][0]
    if config["num_workers"] > 1:
        params.update(tree_learner="data_parallel", pre_partition=True, **ray.train.lightgbm.get_network_params())
    cats: list[int] | Literal["auto"] = enc.categorical_indices or "auto"
    dtrain = lightgbm.Dataset(train[0], label=train[1], categorical_feature=cats, free_raw_data=False)
    dval = lightgbm.Dataset(val[0], label=val[1], reference=dtrain, categorical_feature=cats)

    def callback(env: Any) -> None:
        values = {name: v for data, name, v, _higher in env.evaluation_result_list if data == "validation"}
        if progress.after_round(env.model, env.iteration + 1, values[loss], rayml_metrics(values)):
            raise lightgbm.callback.EarlyStopException(progress.best_round - 1, env.evaluation_result_list)

    callback.order = 30  # type: ignore[attr-defined]  # LightGBM sorts callbacks by this attribute
    return lightgbm.train(
        params,
        dtrain,
        num_boost_round=rounds,
        valid_sets=[dval],
        valid_names=["validation"],
        init_model=init,
        callbacks=[callback],
    )
