"""The ``model:`` and ``train:`` sections: the model's registry name and shape, and how Ray Train runs."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator

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


class ModelConfig(_Section):
    """The model: its registry name and architecture (rayml's MLP, or your own torch network via ``factory``)."""

    name: Name = Field(
        default="model",
        description="Registered model name ([A-Za-z0-9_.-]+). In a job config left out: `<data.target>-model` "
        "(`sales-model` for the synthetic data).",
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
    num_workers: int = Field(default=1, ge=1, description="Ray Train workers (DDP when > 1).")
    cpus_per_worker: float = Field(default=1.0, gt=0.0, description="CPUs reserved per worker.")
    use_gpu: bool = Field(default=False, description="One GPU per worker; mixed precision when `amp` is on.")
    amp: bool = Field(default=True, description="Automatic mixed precision on GPU (ignored on CPU).")
    max_failures: int = Field(
        default=2, ge=-1, description="Worker-group restarts allowed (resuming from the last checkpoint); -1 = unlimited."
    )
    early_stopping_patience: int = Field(
        default=0, ge=0, description="Stop after this many epochs without validation improvement; 0 = off."
    )
    early_stopping_min_delta: float = Field(default=0.0, ge=0.0, description="Smallest improvement that counts.")
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
