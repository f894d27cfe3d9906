"""The ``model:`` and ``train:`` sections: the model's registry name and shape, and how Ray Train runs."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rayml.config._base import Name, _Section

FACTORY_FORMAT = "package.module:function"


def split_factory_ref(ref: str) -> tuple[str, str]:
    """Split a ``model.factory`` reference into (module, attribute).

    Args:
        ref: ``"package.module:function"``; the attribute may be dotted (``"nets:Builders.resnet"``).

    Returns:
        The module path and the attribute path.

    Raises:
        ValueError: ``ref`` is not two dotted Python identifier paths joined by one ``:``.
    """
    module, sep, attr = ref.partition(":")
    parts = [*module.split("."), *attr.split(".")]
    if not sep or ":" in attr or not all(p.isidentifier() for p in parts):
        raise ValueError(
            f"model.factory {ref!r} is not of the form {FACTORY_FORMAT!r} (dotted Python names, one ':'), "
            "e.g. 'my_nets:resnet_mlp' for def resnet_mlp(schema, ...) in my_nets.py"
        )
    return module, attr


def _changed(section: _Section, name: str) -> bool:
    """Whether a field was set to something else than its default (a config re-validated from its own dump sets
    every field, at the default)."""
    if name not in section.model_fields_set:
        return False
    info = type(section).model_fields[name]
    return bool(getattr(section, name) != info.get_default(call_default_factory=True))


MODEL_TYPES = ("mlp", "xgboost", "lightgbm")
TREE_TYPES = ("xgboost", "lightgbm")
# the settings of rayml's torch networks (model.*) and of their training loop (train.*): refused for a tree type
MLP_MODEL_FIELDS = ("hidden_sizes", "dropout", "embedding_dim", "factory", "factory_kwargs")
MLP_TRAIN_FIELDS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "amp",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "cache_shard_in_memory",
)
TREE_TRAIN_FIELDS = ("checkpoint_every_rounds",)


class XGBoostSettings(_Section):
    """XGBoost's own settings (``model.xgboost``; used when ``model.type`` is ``xgboost``)."""

    num_boost_round: int = Field(default=100, ge=1, le=100_000, description="Boosting rounds (trees per output).")
    max_depth: int = Field(default=6, ge=1, le=64, description="Largest depth of a tree.")
    learning_rate: float = Field(default=0.3, gt=0.0, le=1.0, description="Shrinkage of each tree (XGBoost's `eta`).")
    subsample: float = Field(default=1.0, gt=0.0, le=1.0, description="Fraction of rows sampled for each tree.")
    colsample_bytree: float = Field(default=1.0, gt=0.0, le=1.0, description="Fraction of columns sampled per tree.")
    reg_lambda: float = Field(default=1.0, ge=0.0, description="L2 regularisation of leaf weights (`lambda`).")
    reg_alpha: float = Field(default=0.0, ge=0.0, description="L1 regularisation of leaf weights (`alpha`).")
    min_child_weight: float = Field(default=1.0, ge=0.0, description="Smallest hessian sum of a leaf.")
    early_stopping_rounds: int = Field(
        default=0, ge=0, description="Stop after this many rounds without validation improvement; 0 = off."
    )


class LightGBMSettings(_Section):
    """LightGBM's own settings (``model.lightgbm``; used when ``model.type`` is ``lightgbm``)."""

    num_boost_round: int = Field(default=100, ge=1, le=100_000, description="Boosting rounds (trees per output).")
    num_leaves: int = Field(default=31, ge=2, le=131_072, description="Largest number of leaves of a tree.")
    max_depth: int = Field(default=-1, ge=-1, le=64, description="Largest depth of a tree; -1 = no limit.")
    learning_rate: float = Field(default=0.1, gt=0.0, le=1.0, description="Shrinkage of each tree.")
    feature_fraction: float = Field(default=1.0, gt=0.0, le=1.0, description="Fraction of columns sampled per tree.")
    bagging_fraction: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Fraction of rows sampled (re-sampled every round when < 1)."
    )
    lambda_l1: float = Field(default=0.0, ge=0.0, description="L1 regularisation of leaf weights.")
    lambda_l2: float = Field(default=0.0, ge=0.0, description="L2 regularisation of leaf weights.")
    min_data_in_leaf: int = Field(default=20, ge=1, description="Fewest training rows in a leaf.")
    early_stopping_rounds: int = Field(
        default=0, ge=0, description="Stop after this many rounds without validation improvement; 0 = off."
    )


class ModelConfig(_Section):
    """The model: its registry name and kind (rayml's MLP, your own torch network via ``factory``, or gradient-boosted
    trees: XGBoost or LightGBM)."""

    name: Name = Field(
        default="model",
        description="Registered model name ([A-Za-z0-9_.-]+). In a job config left out: `<data.target>-model` "
        "(`sales-model` for the synthetic data).",
    )
    type: Literal["mlp", "xgboost", "lightgbm"] = Field(
        default="mlp",
        description="`mlp`: a torch network (rayml's MLP, or `factory`), trained by epochs; `xgboost` | `lightgbm`: "
        "gradient-boosted trees on Ray Train's XGBoost / LightGBM trainers, trained by rounds (settings in "
        "`model.xgboost` / `model.lightgbm`).",
    )
    xgboost: XGBoostSettings = Field(default_factory=XGBoostSettings, description="XGBoost settings (only with `type: xgboost`).")
    lightgbm: LightGBMSettings = Field(
        default_factory=LightGBMSettings, description="LightGBM settings (only with `type: lightgbm`)."
    )
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 32], description="Widths of the hidden layers.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    embedding_dim: int = Field(default=4, ge=1, le=256, description="Largest embedding size of a categorical feature.")
    factory: str | None = Field(
        default=None,
        description=f"Your own torch network, as {FACTORY_FORMAT!r}: a callable that takes the feature schema "
        "(rayml.models.factory.FeatureSchema) and returns an nn.Module; rayml adds the preprocessing and the output "
        "head around it. null = rayml's MLP (hidden_sizes, dropout, embedding_dim; ignored when this is set).",
    )
    factory_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for `factory` (JSON values); tunable as `model.factory_kwargs.<name>`.",
    )

    @model_validator(mode="after")
    def _one_model_type(self) -> ModelConfig:
        """Settings of another model type are refused, never silently ignored."""
        wrong = [f for f in MLP_MODEL_FIELDS if _changed(self, f)] if self.type in TREE_TYPES else []
        wrong += [t for t in TREE_TYPES if t != self.type and _changed(self, t)]
        if wrong:
            raise ValueError(
                f"model.type is {self.type!r}, but the config sets {', '.join('model.' + f for f in wrong)}, which "
                f"only apply to another model type; remove them, or set model.type to the type they belong to "
                f"(model.hidden_sizes, dropout, embedding_dim, factory, factory_kwargs: mlp; model.xgboost: xgboost; "
                f"model.lightgbm: lightgbm)"
            )
        return self

    @property
    def is_tree(self) -> bool:
        return self.type in TREE_TYPES

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError(f"hidden_sizes must be a non-empty list of positive widths, got {v}")
        return v

    @field_validator("factory")
    @classmethod
    def _factory_format(cls, v: str | None) -> str | None:
        if v is not None:
            split_factory_ref(v)
        return v

    @field_validator("factory_kwargs")
    @classmethod
    def _json_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        # the kwargs are stored with the model (to rebuild it from a checkpoint) and passed as keyword arguments
        bad = [k for k in v if not k.isidentifier()]
        if bad:
            raise ValueError(f"factory_kwargs keys must be Python identifiers (keyword argument names), got {bad}")
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"factory_kwargs must hold JSON values (numbers, strings, lists, dicts): {e}") from e
        return v


# --- training ------------------------------------------------------------------------------------------------------
class TrainConfig(_Section):
    """How Ray Train runs the training loop."""

    epochs: int = Field(default=5, ge=1, description="Epochs to train (upper bound when early stopping is on).")
    batch_size: int = Field(default=256, ge=1, description="Per-worker mini-batch size.")
    learning_rate: float = Field(default=3e-3, gt=0.0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    seed: int = Field(default=0, description="Seed for weights, shuffling and the train/validation split.")
    num_workers: int = Field(
        default=1, ge=1, description="Ray Train workers (DDP when > 1; trees: data-parallel boosting over the shards)."
    )
    cpus_per_worker: float = Field(default=1.0, gt=0.0, description="CPUs reserved per worker.")
    use_gpu: bool = Field(
        default=False,
        description="One GPU per worker: the MLP with mixed precision when `amp` is on; XGBoost with device=cuda (needs "
        "a CUDA build of xgboost); not LightGBM.",
    )
    amp: bool = Field(default=True, description="Automatic mixed precision on GPU (ignored on CPU).")
    max_failures: int = Field(
        default=2, ge=-1, description="Worker-group restarts allowed (resuming from the last checkpoint); -1 = unlimited."
    )
    early_stopping_patience: int = Field(
        default=0, ge=0, description="Stop after this many epochs without validation improvement; 0 = off."
    )
    early_stopping_min_delta: float = Field(default=0.0, ge=0.0, description="Smallest improvement that counts.")
    checkpoint_every_rounds: int = Field(
        default=10,
        ge=1,
        description="Trees (model.type xgboost | lightgbm): checkpoint the booster every this many boosting rounds "
        "(and after the last); a restarted worker group or driver resumes from the last one.",
    )
    checkpoint_num_to_keep: int = Field(default=2, ge=1, description="Checkpoints kept (the best and latest survive).")
    storage_path: str | None = Field(
        default=None, description="Checkpoint storage: local dir or pyarrow URI (s3://, gs://); null = $RAYML_HOME/runs."
    )
    run_name: Name | None = Field(
        default=None,
        description="Run name; null = derived from the config and the data fingerprint, so re-running the same command "
        "resumes a crashed run instead of starting over.",
    )
    controller_poll_interval_s: float = Field(
        default=0.25,
        gt=0.0,
        le=60.0,
        description="How often the Ray Train controller collects worker reports. A worker holds one unconsumed report "
        "at a time, so epochs shorter than this interval wait for it (Ray's default is 2 s); it also bounds how long a "
        "just-written checkpoint is unknown to Ray.",
    )
    cache_shard_in_memory: bool = Field(
        default=True,
        description="Read each worker's Ray Data shard once and iterate it from memory (fast for tabular data that "
        "fits in a worker); false streams the shard every epoch.",
    )
    in_process: bool = Field(
        default=False,
        description="Debug mode: run the same training loop in this process without Ray (no ray.init): data in "
        "memory, checkpoints under `storage_path`, one worker (`num_workers` is ignored), no retries (an error "
        "raises at once, where it happened), so a breakpoint in your `model.factory` network is hit. Trees train "
        "in-process too. Same run name, checkpoints and registered model as a Ray run; `rayml train --in-process`.",
    )


def model_type_problems(model: ModelConfig, train: TrainConfig) -> list[str]:
    """What is wrong with the ``train`` section for ``model.type`` (empty: nothing): settings the type does not use but
    the config sets, and GPU training of LightGBM (XGBoost trains on GPU with ``device=cuda``).

    A tree type has no epochs, mini-batches or optimizer; an MLP has no boosting rounds. Settings left at their
    defaults are not reported, only those set (to another value) in the YAML or with ``--set``.
    """
    problems = []
    if model.type == "lightgbm" and train.use_gpu:
        problems.append(
            "model.type 'lightgbm' trains on CPU in rayml (LightGBM's pip wheels have no CUDA learner), but "
            "train.use_gpu is true; set train.use_gpu=false, or use model.type=xgboost, which trains on the GPU"
        )
    unused = MLP_TRAIN_FIELDS if model.is_tree else TREE_TRAIN_FIELDS
    wrong = [f for f in unused if _changed(train, f)]
    if not wrong:
        return problems
    instead = (
        f"the equivalent here: model.{model.type}.num_boost_round / learning_rate / early_stopping_rounds"
        if model.is_tree
        else "the MLP checkpoints every epoch"
    )
    return [
        *problems,
        f"model.type is {model.type!r}, but the config sets {', '.join('train.' + f for f in wrong)}, which "
        f"{'only apply to model.type mlp' if model.is_tree else 'only apply to tree types (xgboost, lightgbm)'}; "
        f"remove them ({instead})",
    ]
