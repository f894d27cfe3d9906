"""The ``tune:`` section: the search space, the searcher, the scheduler and the resources of a trial.

What the space may contain is checked against the training config in :mod:`rayml.config.search_space`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rayml.config._base import Name, _Section
from rayml.config.train import LightGBMSettings, XGBoostSettings

# Kinds of a search dimension: ranges take low/high, lists take values.
_RANGE_TYPES = ("uniform", "loguniform", "randint")
_VALUE_TYPES = ("choice", "grid")
_DIMENSION_KEYS = {"type", "low", "high", "values"}

# What a search may vary: the fields that determine the trained model. Resources, storage and names are how a trial
# runs (set by the tune section), and data.* stays fixed so every trial is scored on the same validation split.
TUNABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("dropout", "embedding_dim", "hidden_sizes"),
    "train": (
        "batch_size",
        "early_stopping_min_delta",
        "early_stopping_patience",
        "epochs",
        "learning_rate",
        "seed",
        "weight_decay",
    ),
}

# With model.type xgboost | lightgbm the search varies the booster's own settings (model.<type>.<setting>) and the seed;
# the MLP's fields above train nothing there.
TREE_TUNABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "xgboost": tuple(f"model.xgboost.{f}" for f in XGBoostSettings.model_fields),
    "lightgbm": tuple(f"model.lightgbm.{f}" for f in LightGBMSettings.model_fields),
}
TREE_TUNABLE_TRAIN_FIELDS = ("train.seed",)


def tunable_fields(model_type: str) -> list[str]:
    """The dotted paths a search may vary for ``model.type`` (without model.factory keyword arguments)."""
    if model_type in TREE_TUNABLE_FIELDS:
        return [*TREE_TUNABLE_FIELDS[model_type], *TREE_TUNABLE_TRAIN_FIELDS]
    return [f"{s}.{f}" for s, fields in TUNABLE_FIELDS.items() for f in fields]


# Also tunable: any keyword argument of the user's network, `model.factory_kwargs.<name>` (only with model.factory).
FACTORY_KWARGS_PREFIX = "model.factory_kwargs."

# Validation metrics the training loop reports, per task, and which direction is better.
TUNE_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("val_loss", "val_rmse", "val_mae"),
    "binary": ("val_loss", "val_accuracy", "val_auc"),
    "multiclass": ("val_loss", "val_accuracy", "val_macro_f1", "val_logloss"),
}
# What a tree trial reports every train.checkpoint_every_rounds rounds (the boosters' own evaluation metrics on the
# validation split). val_loss is the metric early stopping watches: RMSE for regression (the MLP's val_loss is the
# MSE), log loss for binary and multiclass.
TREE_TUNE_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("val_loss", "val_rmse", "val_mae"),
    "binary": ("val_loss", "val_accuracy", "val_auc"),
    "multiclass": ("val_loss", "val_accuracy", "val_logloss"),
}
_MAXIMISED_METRICS = ("val_accuracy", "val_auc", "val_macro_f1")


class SearchDimension(_Section):
    """One searched field: a range (``uniform``, ``loguniform``, ``randint``) or a list (``choice``, ``grid``).

    YAML: ``{type: loguniform, low: 1.0e-4, high: 0.1}`` or the shorthand ``{loguniform: [1.0e-4, 0.1]}``;
    ``{type: choice, values: [[32], [64, 32]]}`` or ``{choice: [[32], [64, 32]]}``.
    """

    # a plain string (checked with every other search problem, so one error lists them all): see search_space_problems
    type: str | None = Field(
        default=None,
        description="One of uniform, loguniform, randint, choice, grid. uniform: floats in [low, high); loguniform: "
        "floats in [low, high), log-spaced (low > 0); randint: integers in [low, high], both ends included; choice: one "
        "of `values`, sampled; grid: every one of `values` (crossed with the other grid dimensions).",
    )
    low: float | None = Field(default=None, description="Lower bound (uniform, loguniform, randint).")
    high: float | None = Field(default=None, description="Upper bound (uniform, loguniform, randint).")
    values: list[Any] | None = Field(default=None, description="Candidate values (choice, grid).")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # {loguniform: [1e-4, 0.1]} / {choice: [...]}: the compact form most search-space YAML uses
        if not isinstance(v, dict) or len(v) != 1:
            return v
        ((kind, arg),) = v.items()
        if kind in _VALUE_TYPES:
            return {"type": kind, "values": arg}
        if kind in _RANGE_TYPES:
            if not isinstance(arg, (list, tuple)) or len(arg) != 2:
                raise ValueError(f"shorthand {{{kind}: [low, high]}} needs a [low, high] pair, got {arg!r}")
            return {"type": kind, "low": arg[0], "high": arg[1]}
        return v


class AshaConfig(_Section):
    """ASHA (asynchronous successive halving): stop trials that trail the others at each rung."""

    grace_period: int = Field(
        default=1,
        ge=1,
        description="Epochs every trial runs before it can be stopped (boosting rounds for trees, which report every "
        "train.checkpoint_every_rounds rounds: make it a multiple of that).",
    )
    reduction_factor: float = Field(
        default=2.0,
        gt=1.0,
        description="Rungs sit at grace_period * reduction_factor^k epochs; a trial continues past a rung only if it "
        "is in the best 1/reduction_factor of the trials that reached it.",
    )


class TuneConfig(_Section):
    """How Ray Tune searches: the space, the searcher, the scheduler and the resources of a trial."""

    name: Name | None = Field(
        default=None,
        description="Search name (the experiment directory and MLflow parent run); null = derived from the config "
        "and the data fingerprint, so `--resume` with the same config finds the interrupted search.",
    )
    space: dict[str, SearchDimension] = Field(
        default_factory=dict,
        description="Searched fields by dotted path (`train.learning_rate`) or nested (`train: {learning_rate: ...}`). "
        f"Tunable: {', '.join(tunable_fields('mlp'))}, and `{FACTORY_KWARGS_PREFIX}<name>` (a keyword argument of "
        "model.factory). With model.type xgboost | lightgbm: the booster's settings (`model.xgboost.max_depth`, "
        "`model.lightgbm.num_leaves`, ... every field of that section) and train.seed.",
    )
    metric: Literal["val_loss", "val_rmse", "val_mae", "val_accuracy", "val_auc", "val_macro_f1", "val_logloss"] = Field(
        default="val_loss",
        description="Validation metric that ranks trials (and drives ASHA): val_loss/val_rmse/val_mae for regression, "
        "val_loss/val_accuracy/val_auc for binary, val_loss/val_accuracy/val_macro_f1/val_logloss for multiclass "
        "(trees: all but val_macro_f1; their val_loss is the RMSE or the log loss).",
    )
    mode: Literal["min", "max"] | None = Field(
        default=None,
        description="min or max; null = from the metric (max for val_accuracy/val_auc/val_macro_f1, else min).",
    )
    search: Literal["random", "grid", "optuna"] = Field(
        default="random",
        description="random: sample the space (grid dimensions are crossed with the samples); grid: every dimension "
        "is `grid`, try every combination; optuna: Optuna TPE, which learns from finished trials (no grid dimensions).",
    )
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="asha: stop trailing trials early (see `asha`); fifo: every trial runs all its epochs."
    )
    asha: AshaConfig = Field(
        default_factory=AshaConfig,
        description="ASHA settings; max epochs = train.epochs (trees: max rounds = model.<type>.num_boost_round).",
    )
    num_samples: int | None = Field(
        default=None,
        ge=1,
        description="Trials to sample; null = 8, or 1 when every dimension is `grid` (with grid dimensions, every grid "
        "point is tried num_samples times).",
    )
    max_concurrent_trials: int | None = Field(
        default=None, ge=1, description="Trials running at once; null = as many as the cluster's resources fit."
    )
    seed: int = Field(default=0, description="Searcher seed: the same seed and space sample the same configurations.")
    workers_per_trial: int | None = Field(
        default=None,
        ge=1,
        description="Ray Train workers per trial; null = train.num_workers. 1 runs the training loop in the trial's own "
        "process; more runs a TorchTrainer (DDP) per trial (trees: an XGBoostTrainer / LightGBMTrainer).",
    )
    cpus_per_worker: float | None = Field(default=None, gt=0.0, description="CPUs per worker; null = train.cpus_per_worker.")
    gpus_per_worker: float | None = Field(
        default=None,
        ge=0.0,
        description="GPUs per worker, fractions allowed (0.25 packs four single-worker trials on one GPU); "
        "null = 1 if train.use_gpu else 0.",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _flatten_space(cls, v: Any) -> Any:
        # Accept `train: {learning_rate: {...}}` as well as `train.learning_rate: {...}`: --set tune.space.train.x.high=1
        # arrives nested even when the YAML used dotted keys, and the nested parts (applied later) win.
        if not isinstance(v, dict):
            return v
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: dict[str, Any]) -> None:
            for key, value in node.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(value, dict) and value and not _looks_like_dimension(value):
                    walk(path, value)
                elif isinstance(value, dict) and isinstance(flat.get(path), dict):
                    flat[path] = {**flat[path], **value}
                else:
                    flat[path] = value

        walk("", v)
        return flat


def _looks_like_dimension(node: dict[str, Any]) -> bool:
    keys = set(node)
    return bool(keys & _DIMENSION_KEYS) or (len(keys) == 1 and next(iter(keys)) in _RANGE_TYPES + _VALUE_TYPES)
