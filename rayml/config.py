"""Pydantic models for every rayml config file: the one place defaults live.

A config file is YAML whose top-level sections match a job's model (``data``, ``model``, ``train``, ``registry``).
Merge order: field defaults < YAML < ``--set a.b=c`` overrides. Unknown keys fail with the allowed names.

Example:
    >>> cfg = load_config(TrainJobConfig, "jobs/configs/train.yaml", ["train.epochs=3"])
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rayml.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_NAME_RE = re.compile(NAME_PATTERN)


class _Section(BaseModel):
    """Base of every config section: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- data ----------------------------------------------------------------------------------------------------------
class DriftSpec(_Section):
    """One injected drift for synthetic data (used to exercise monitoring)."""

    kind: Literal["shift", "new_category", "missing"] = Field(
        description="shift: add `value` standard deviations to a numeric column; new_category: set `fraction` of rows "
        "of a categorical column to the new value `category`; missing: set `fraction` of a column's values to NaN."
    )
    column: str = Field(description="Column the drift applies to.")
    value: float = Field(default=1.0, description="For `shift`: the shift in standard deviations of the column.")
    fraction: float = Field(default=0.2, ge=0.0, le=1.0, description="For `new_category`/`missing`: share of rows hit.")
    category: str = Field(default="new_category", description="For `new_category`: the unseen category value.")


class SyntheticConfig(_Section):
    """The synthetic retail-sales dataset used when ``data.source`` is ``synthetic``."""

    segments: int = Field(default=8, ge=1, le=100_000, description="Number of stores (the segment column `store_id`).")
    rows_per_segment: int = Field(default=200, ge=1, le=10_000_000, description="Daily rows per store.")
    seed: int = Field(default=0, description="Seed: the same seed gives byte-identical data.")
    start_date: str = Field(default="2024-01-01", description="First day of the series (ISO date).")
    drift: list[DriftSpec] = Field(default_factory=list, description="Drift to inject (for monitoring exercises).")


class DataConfig(_Section):
    """Where training data comes from and what its columns mean. Nothing here is tied to the synthetic schema."""

    source: str = Field(
        default="synthetic",
        description="`synthetic` (generated deterministically from `synthetic`), or a parquet/CSV path, directory, "
        "glob or URI (s3://, gs://, file://).",
    )
    format: Literal["auto", "parquet", "csv"] = Field(default="auto", description="File format; auto = by extension.")
    target: str = Field(default="sales", description="Target column.")
    task: Literal["regression", "binary"] = Field(default="regression", description="Learning task.")
    numeric_features: list[str] | None = Field(
        default=None, description="Numeric feature columns; null = inferred from the data's dtypes."
    )
    categorical_features: list[str] | None = Field(
        default=None, description="Categorical feature columns; null = inferred (string/bool/category dtypes)."
    )
    segment: list[str] = Field(
        default_factory=lambda: ["store_id"],
        description="Segment key column(s) (one model per segment in many-models work); [] for none. A segment column "
        "is not a feature unless listed in the feature lists.",
    )
    ignore_columns: list[str] = Field(
        default_factory=lambda: ["date", "high_sales"],
        description="Columns that are neither features nor target (ids, timestamps, other targets).",
    )
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="Share of rows held out for validation.")
    max_nan_fraction: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Largest allowed share of missing values in any feature column."
    )
    max_categories: int = Field(
        default=50, ge=1, description="Most frequent categories kept per categorical feature; the rest map to unknown."
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Used when source is `synthetic`.")

    @field_validator("segment", mode="before")
    @classmethod
    def _segment_as_list(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v

    @model_validator(mode="after")
    def _columns_do_not_overlap(self) -> DataConfig:
        problems = []
        numeric = set(self.numeric_features or [])
        categorical = set(self.categorical_features or [])
        both = numeric & categorical
        if both:
            problems.append(f"columns {sorted(both)} are listed as both numeric_features and categorical_features")
        if self.target in numeric | categorical:
            problems.append(f"target {self.target!r} is also listed as a feature")
        if self.target in self.ignore_columns:
            problems.append(f"target {self.target!r} is also in ignore_columns {self.ignore_columns}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --- model ---------------------------------------------------------------------------------------------------------
class ModelConfig(_Section):
    """The model: its registry name and the MLP's shape."""

    name: str = Field(default="sales-model", description="Registered model name ([A-Za-z0-9_.-]+).")
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 32], description="Widths of the hidden layers.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    embedding_dim: int = Field(default=4, ge=1, le=256, description="Largest embedding size of a categorical feature.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"model name {v!r} may only contain letters, digits, '_', '.' and '-'")
        return v

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError(f"hidden_sizes must be a non-empty list of positive widths, got {v}")
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
    run_name: str | None = Field(
        default=None,
        description="Run name; null = derived from the config and the data fingerprint, so re-running the same command "
        "resumes a crashed run instead of starting over.",
    )
    cache_shard_in_memory: bool = Field(
        default=True,
        description="Read each worker's Ray Data shard once and iterate it from memory (fast for tabular data that "
        "fits in a worker); false streams the shard every epoch.",
    )

    @field_validator("run_name")
    @classmethod
    def _valid_run_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError(f"run_name {v!r} may only contain letters, digits, '_', '.' and '-'")
        return v


# --- registry ------------------------------------------------------------------------------------------------------
class RegistryConfig(_Section):
    """The MLflow tracking server and model registry."""

    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI or sqlite under $RAYML_HOME."
    )
    experiment: str = Field(default="rayml", description="MLflow experiment for runs.")
    register_version: bool = Field(default=True, description="Register the trained model as a new version.")
    alias: str | None = Field(
        default=None, description="Alias to point at the new version (e.g. `production` for a first model); null = none."
    )


# --- jobs ----------------------------------------------------------------------------------------------------------
class TrainJobConfig(_Section):
    """`rayml train --config FILE` / `jobs/train.py`."""

    data: DataConfig = Field(default_factory=DataConfig, description="Training data.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model name and architecture.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Ray Train settings.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")


class RegistryJobConfig(_Section):
    """Commands that only talk to the registry (`rayml models ...`)."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")


# --- loading -------------------------------------------------------------------------------------------------------
C = TypeVar("C", bound=BaseModel)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"--set {item!r} has no '='", hint="write overrides as --set section.field=value, e.g. --set train.epochs=3"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} has an empty key part", hint="write overrides as --set section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML ({e})", hint="quote strings with special characters"
        ) from e
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested dict, in place."""
    for item in overrides or []:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section", hint="check the key path")
            node = child
        node[path[-1]] = value
    return raw


def _format_validation_error(cls: type[BaseModel], err: ValidationError, source: str) -> ConfigError:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_names(cls, list(e["loc"][:-1]))
            problems.append(f"{loc}: unknown field; allowed here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            problems.append(f"{loc or '<root>'}: {e['msg']}{got_s}")
    lines = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(
        f"invalid config {source}: {len(problems)} problem(s):\n{lines}",
        hint="fix the fields above in the YAML or the --set overrides; `rayml <command> --help` documents them",
    )


def _allowed_names(cls: type[BaseModel], path: list[Any]) -> list[str]:
    model: Any = cls
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        # unwrap list[X] / X | None to the section model
        for arg in getattr(ann, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                ann = arg
        model = ann
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Load a config of type ``cls`` from YAML (optional) plus ``--set`` overrides.

    Args:
        cls: the job config model, e.g. :class:`TrainJobConfig`.
        path: YAML file; None = defaults only.
        overrides: ``a.b=c`` strings applied after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is missing or not YAML, or any field is invalid (all problems listed at once).
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(
                f"config file {str(p)!r} does not exist", hint="pass --config with a YAML file; examples are in jobs/configs/"
            )
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}", hint="check indentation and quoting") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(p)!r} must be a mapping of sections, got {type(loaded).__name__}",
                hint=f"top-level keys allowed: {', '.join(sorted(cls.model_fields))}",
            )
        raw = loaded
    apply_overrides(raw, overrides)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise _format_validation_error(cls, e, source) from e


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (logged once by every job)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
