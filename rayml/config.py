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


# --- tune ----------------------------------------------------------------------------------------------------------
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

# Validation metrics the training loop reports, per task, and which direction is better.
TUNE_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("val_loss", "val_rmse", "val_mae"),
    "binary": ("val_loss", "val_accuracy", "val_auc"),
}
_MAXIMISED_METRICS = ("val_accuracy", "val_auc")


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

    grace_period: int = Field(default=1, ge=1, description="Epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(
        default=2.0,
        gt=1.0,
        description="Rungs sit at grace_period * reduction_factor^k epochs; a trial continues past a rung only if it "
        "is in the best 1/reduction_factor of the trials that reached it.",
    )


class TuneConfig(_Section):
    """How Ray Tune searches: the space, the searcher, the scheduler and the resources of a trial."""

    name: str | None = Field(
        default=None,
        description="Search name (the experiment directory and MLflow parent run); null = derived from the config "
        "and the data fingerprint, so `--resume` with the same config finds the interrupted search.",
    )
    space: dict[str, SearchDimension] = Field(
        default_factory=dict,
        description="Searched fields by dotted path (`train.learning_rate`) or nested (`train: {learning_rate: ...}`). "
        f"Tunable: {', '.join(f'{s}.{f}' for s, fs in TUNABLE_FIELDS.items() for f in fs)}.",
    )
    metric: Literal["val_loss", "val_rmse", "val_mae", "val_accuracy", "val_auc"] = Field(
        default="val_loss",
        description="Validation metric that ranks trials (and drives ASHA): val_loss/val_rmse/val_mae for regression, "
        "val_loss/val_accuracy/val_auc for binary.",
    )
    mode: Literal["min", "max"] | None = Field(
        default=None, description="min or max; null = from the metric (max for val_accuracy/val_auc, else min)."
    )
    search: Literal["random", "grid", "optuna"] = Field(
        default="random",
        description="random: sample the space (grid dimensions are crossed with the samples); grid: every dimension "
        "is `grid`, try every combination; optuna: Optuna TPE, which learns from finished trials (no grid dimensions).",
    )
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="asha: stop trailing trials early (see `asha`); fifo: every trial runs all its epochs."
    )
    asha: AshaConfig = Field(default_factory=AshaConfig, description="ASHA settings; max epochs = train.epochs.")
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
        "process; more runs a TorchTrainer (DDP) per trial.",
    )
    cpus_per_worker: float | None = Field(default=None, gt=0.0, description="CPUs per worker; null = train.cpus_per_worker.")
    gpus_per_worker: float | None = Field(
        default=None,
        ge=0.0,
        description="GPUs per worker, fractions allowed (0.25 packs four single-worker trials on one GPU); "
        "null = 1 if train.use_gpu else 0.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str | None) -> str | None:
        if v is not None and (not _NAME_RE.match(v) or v in (".", "..")):
            raise ValueError(f"tune.name {v!r} may only contain letters, digits, '_', '.' and '-'")
        return v

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


class TuneJobConfig(TrainJobConfig):
    """`rayml tune --config FILE` / `jobs/tune.py`: a training config plus the search (`tune:`).

    Every trial trains with the training config, with the searched fields replaced by the trial's values.
    """

    tune: TuneConfig = Field(default_factory=TuneConfig, description="The hyperparameter search.")

    @model_validator(mode="after")
    def _valid_search(self) -> TuneJobConfig:
        problems = search_space_problems(self)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            # a ConfigError (not a ValueError) passes through pydantic untouched: one message listing every problem
            raise ConfigError(
                f"invalid search (tune section): {len(problems)} problem(s):\n{lines}",
                hint="fix the tune section in the YAML or the --set overrides; search space entries look like "
                "`train.learning_rate: {type: loguniform, low: 1.0e-4, high: 0.1}`",
            )
        return self

    @property
    def resolved_mode(self) -> str:
        """``tune.mode``, or the direction the metric improves in."""
        return self.tune.mode or ("max" if self.tune.metric in _MAXIMISED_METRICS else "min")

    @property
    def resolved_num_samples(self) -> int:
        """``tune.num_samples``, or 1 for an all-grid space and 8 otherwise."""
        if self.tune.num_samples is not None:
            return self.tune.num_samples
        all_grid = bool(self.tune.space) and all(d.type == "grid" for d in self.tune.space.values())
        return 1 if all_grid else 8

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial can run (ASHA's max_t): the largest searched train.epochs, else train.epochs."""
        dim = self.tune.space.get("train.epochs")
        if dim is None or dim.type not in _RANGE_TYPES + _VALUE_TYPES:
            return self.train.epochs
        if dim.type in _VALUE_TYPES:
            return max(int(v) for v in dim.values or [self.train.epochs])
        return int(dim.high if dim.high is not None else self.train.epochs)


def search_space_problems(cfg: TuneJobConfig) -> list[str]:
    """Every problem with ``cfg.tune`` (unknown fields, bad ranges, values a field rejects, conflicting settings).

    Choice/grid values are normalised in place to the field's type (e.g. YAML's string ``"1e-3"`` becomes ``0.001``).
    """
    t = cfg.tune
    problems: list[str] = []
    tunable = [f"{s}.{f}" for s, fields in TUNABLE_FIELDS.items() for f in fields]
    if not t.space:
        problems.append(f"tune.space is empty; add at least one searched field (tunable: {', '.join(tunable)})")
    for path, dim in t.space.items():
        where = f"tune.space.{path}"
        section, _, field = path.partition(".")
        if path not in tunable:
            section_cls = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "registry": RegistryConfig}.get(
                section
            )
            exists = section_cls is not None and field in section_cls.model_fields
            why = "is not tunable (it sets how or where a run happens, not the model)" if exists else "is not a config field"
            problems.append(f"{where}: {path!r} {why}; tunable fields: {', '.join(tunable)}")
            continue
        section_cls = ModelConfig if section == "model" else TrainConfig
        base = getattr(cfg, section)
        annotation = section_cls.model_fields[field].annotation
        shape_problems = _dimension_problems(where, dim)
        problems.extend(shape_problems)
        if shape_problems:
            continue
        if dim.type in _RANGE_TYPES:
            if getattr(annotation, "__origin__", None) is list:
                problems.append(f"{where}: {path} is a list; search it with `choice` or `grid` values, not {dim.type}")
                continue
            if annotation is int and dim.type != "randint":
                problems.append(f"{where}: {path} is an integer; use randint, choice or grid, not {dim.type}")
                continue
            for bound in ("low", "high"):
                value = getattr(dim, bound)
                if value is not None:
                    err = _field_value_error(section_cls, base, field, int(value) if annotation is int else value)[1]
                    if err:
                        problems.append(f"{where}: {bound}={value!r} is not a valid {path}: {err}")
        elif dim.values:
            normalised = []
            for value in dim.values:
                coerced, err = _field_value_error(section_cls, base, field, value)
                if err:
                    problems.append(f"{where}: value {value!r} is not a valid {path}: {err}")
                normalised.append(coerced if err is None else value)
            if normalised != dim.values:
                dim.values = normalised
    known = {p: d for p, d in t.space.items() if p in tunable and d.type in _RANGE_TYPES + _VALUE_TYPES}
    grid_paths = [p for p, d in known.items() if d.type == "grid"]
    if t.search == "optuna" and grid_paths:
        problems.append(
            f"tune.search is optuna but {', '.join(grid_paths)} use grid; Optuna samples, it cannot enumerate a grid: "
            "use `choice` there, or tune.search=random/grid"
        )
    if t.search == "grid":
        sampled = [f"{p} ({d.type})" for p, d in known.items() if d.type != "grid"]
        if sampled:
            problems.append(f"tune.search is grid but {', '.join(sampled)} are not grid; make them grid or use search=random")
    allowed_metrics = TUNE_METRICS[cfg.data.task]
    if t.metric not in allowed_metrics:
        problems.append(
            f"tune.metric {t.metric!r} is not reported for data.task={cfg.data.task!r}; "
            f"choose one of {', '.join(allowed_metrics)}"
        )
    natural = "max" if t.metric in _MAXIMISED_METRICS else "min"
    if t.mode is not None and t.mode != natural:
        problems.append(f"tune.mode {t.mode!r} contradicts tune.metric {t.metric!r} (better is {natural}); leave mode unset")
    if t.scheduler == "asha":
        try:
            max_epochs = cfg.max_epochs
        except (TypeError, ValueError):  # a bad epochs dimension is reported above
            max_epochs = None
        if max_epochs is not None and t.asha.grace_period > max_epochs:
            problems.append(
                f"tune.asha.grace_period ({t.asha.grace_period}) is more than the most epochs a trial runs ({max_epochs}); "
                "lower grace_period or raise train.epochs"
            )
    return problems


def _dimension_problems(where: str, dim: SearchDimension) -> list[str]:
    problems = []
    kinds = ", ".join(_RANGE_TYPES + _VALUE_TYPES)
    if dim.type is None:
        return [f"{where}: needs a type, one of {kinds} (or the shorthand {{loguniform: [low, high]}})"]
    if dim.type not in _RANGE_TYPES + _VALUE_TYPES:
        return [f"{where}: type {dim.type!r} is not one of {kinds}"]
    if dim.type in _RANGE_TYPES:
        if dim.values is not None:
            problems.append(f"{where}: {dim.type} takes low and high, not values (values are for choice/grid)")
        if dim.low is None or dim.high is None:
            missing = [b for b in ("low", "high") if getattr(dim, b) is None]
            problems.append(f"{where}: {dim.type} needs {' and '.join(missing)}")
            return problems
        if dim.low >= dim.high:
            problems.append(f"{where}: low ({dim.low:g}) must be less than high ({dim.high:g})")
        if dim.type == "loguniform" and dim.low <= 0:
            problems.append(f"{where}: loguniform needs low > 0 (got low={dim.low:g}); use uniform for ranges that include 0")
        if dim.type == "randint" and not (float(dim.low).is_integer() and float(dim.high).is_integer()):
            problems.append(f"{where}: randint bounds must be whole numbers (got low={dim.low:g}, high={dim.high:g})")
    else:
        if dim.low is not None or dim.high is not None:
            problems.append(f"{where}: {dim.type} takes values, not low/high (low/high are for uniform/loguniform/randint)")
        if not dim.values:
            problems.append(f"{where}: {dim.type} needs a non-empty list of values")
    return problems


def _field_value_error(section_cls: type[BaseModel], base: BaseModel, field: str, value: Any) -> tuple[Any, str | None]:
    """Validate ``value`` as ``section.field`` (with the section's other fields as configured): (coerced, error)."""
    try:
        section = section_cls.model_validate({**base.model_dump(), field: value})
    except ValidationError as e:
        return value, "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
    return getattr(section, field), None


# --- monitoring & gate ---------------------------------------------------------------------------------------------
class DriftConfig(_Section):
    """Drift thresholds: a feature's status is `alert` when any metric reaches its alert level, `warn` at warn level."""

    psi_warn: float = Field(default=0.1, ge=0.0, description="PSI (numeric features, predictions) that warns.")
    psi_alert: float = Field(default=0.25, ge=0.0, description="PSI that alerts.")
    # sampling noise alone puts the JS distance of ~600 clean rows over 10 bins near 0.05: warn above that
    js_warn: float = Field(default=0.08, ge=0.0, le=1.0, description="Jensen-Shannon distance (base 2) that warns.")
    js_alert: float = Field(default=0.1, ge=0.0, le=1.0, description="Jensen-Shannon distance that alerts.")
    linf_warn: float = Field(default=0.08, ge=0.0, le=1.0, description="L-infinity distance (categorical) that warns.")
    linf_alert: float = Field(default=0.1, ge=0.0, le=1.0, description="L-infinity distance that alerts.")
    min_rows: int = Field(default=100, ge=1, description="Fewer rows than this in a window: `insufficient_data`, no alert.")

    @model_validator(mode="after")
    def _warn_below_alert(self) -> DriftConfig:
        bad = [
            f"{m}_warn ({getattr(self, m + '_warn')}) is above {m}_alert ({getattr(self, m + '_alert')})"
            for m in ("psi", "js", "linf")
            if getattr(self, m + "_warn") > getattr(self, m + "_alert")
        ]
        if bad:
            raise ValueError("; ".join(bad))
        return self


class MonitorJobConfig(_Section):
    """`rayml monitor drift`."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift thresholds.")


class GateConfig(_Section):
    """The validation gate: a candidate version against the baseline alias on a fixed validation set."""

    max_regression: float = Field(
        default=0.02,
        ge=0.0,
        description="Largest allowed relative regression of the primary metric (RMSE for regression, AUC for binary): "
        "0.02 = the candidate may be at most 2% worse than the baseline.",
    )
    segment_columns: list[str] | None = Field(
        default=None, description="Columns that define slices (null = the model's segment columns; [] = no slices)."
    )
    important_segments: list[str] = Field(
        default_factory=list, description="Slices that must not regress (values of the segment key; [] = every slice)."
    )
    max_segment_regression: float = Field(
        default=0.10, ge=0.0, description="Largest allowed relative regression of the primary metric within a slice."
    )
    min_segment_rows: int = Field(default=30, ge=1, description="Slices with fewer validation rows are not judged.")
    permutation_repeats: int = Field(default=2, ge=1, le=20, description="Shuffles per feature for permutation importance.")
    seed: int = Field(default=0, description="Seed of the permutation shuffles.")


class GateJobConfig(_Section):
    """`rayml validate`."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Gate thresholds.")


# --- many models & batch ---------------------------------------------------------------------------------------------
class CandidateConfig(_Section):
    """One candidate of a per-segment search; an unset field keeps the value of the `model:` / `train:` section."""

    hidden_sizes: list[int] | None = Field(default=None, description="Widths of the hidden layers (model.hidden_sizes).")
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0, description="Dropout (model.dropout).")
    learning_rate: float | None = Field(default=None, gt=0.0, description="Adam learning rate (train.learning_rate).")
    weight_decay: float | None = Field(default=None, ge=0.0, description="AdamW weight decay (train.weight_decay).")
    epochs: int | None = Field(default=None, ge=1, description="Epochs (train.epochs).")
    batch_size: int | None = Field(default=None, ge=1, description="Mini-batch size (train.batch_size).")

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(w < 1 for w in v)):
            raise ValueError(f"hidden_sizes must be a non-empty list of positive widths, got {v}")
        return v


class ManyModelsConfig(_Section):
    """One small model per segment (`data.segment`), trained in parallel Ray tasks, registered as one model set."""

    min_rows: int = Field(
        default=50,
        ge=2,
        description="Segments with fewer rows are not trained; the global fallback model serves them (recorded in "
        "the set's index as fallback).",
    )
    max_retries: int = Field(
        default=1,
        ge=0,
        description="Retries of a segment whose training failed (a new seed each time), and of a task whose worker "
        "died (its segments are then retried one per task, so one bad segment cannot take others down).",
    )
    max_failed_share: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="The run fails (exit 1, nothing registered) when more than this share of the segments failed "
        "after their retries; below it, failed segments are served by the fallback model and reported.",
    )
    segments_per_task: int | None = Field(
        default=None,
        ge=1,
        description="Segments trained one after another in one Ray task, to amortise task overhead; null = enough "
        "tasks for about 4 per CPU, at most 32 segments each.",
    )
    cpus_per_task: float = Field(default=1.0, gt=0.0, description="CPUs reserved per training task (torch uses one thread).")
    candidates: list[CandidateConfig] = Field(
        default_factory=list,
        description="Per-segment search: every segment trains each candidate and keeps the one with the lowest loss "
        "on its own validation split; [] = just the `model:` / `train:` settings.",
    )
    fallback: bool = Field(
        default=True,
        description="The global model (trained on all rows) serves segments without their own model: too few rows, "
        "failed, or unknown at scoring time. false = those rows get no prediction (an error column in batch output).",
    )
    global_max_rows: int = Field(
        default=200_000, ge=1, description="Most training rows (a seeded sample) the global fallback model trains on."
    )
    global_batch_size: int = Field(
        default=512,
        ge=1,
        description="Mini-batch size of the global model: it sees far more rows than one segment, and must not become "
        "the run's longest task.",
    )
    max_segments: int = Field(
        default=100_000,
        ge=1,
        description="More segments than this is an error: usually a segment column that is really a row id.",
    )


class ManyModelsJobConfig(TrainJobConfig):
    """`rayml manymodels train --config FILE` / `jobs/manymodels_train.py`: a training config plus `manymodels:`.

    ``model.name`` is the registered model-set name; ``train:`` gives each segment's epochs, batch size, learning rate,
    seed and early stopping (the Ray Train fields num_workers, use_gpu, amp and max_failures do not apply).
    """

    manymodels: ManyModelsConfig = Field(default_factory=ManyModelsConfig, description="Per-segment training.")

    @model_validator(mode="after")
    def _has_segments(self) -> ManyModelsJobConfig:
        if not self.data.segment:
            raise ValueError("data.segment is empty; many models needs the segment column(s), e.g. data.segment=[store_id]")
        return self


class BatchConfig(_Section):
    """Batch scoring of files with a registered model or model set (`rayml batch`)."""

    model: str | None = Field(
        default=None, description="NAME@ALIAS or NAME:VERSION (a bare NAME means NAME@production); --model sets it."
    )
    input: str | None = Field(
        default=None, description="Parquet/CSV file, directory, glob or URI (s3://, gs://) to score; --input sets it."
    )
    output: str | None = Field(
        default=None,
        description="Output directory or URI: one parquet file per input file, plus `_rayml_batch/` (ledger, staging); "
        "--output sets it.",
    )
    format: Literal["auto", "parquet", "csv"] = Field(default="auto", description="Input format; auto = by extension.")
    batch_size: int = Field(
        default=65_536, ge=1, description="Rows read and scored at a time by an actor (bounds its memory per file)."
    )
    concurrency: int | None = Field(
        default=None, ge=1, description="Scoring actors; null = the cluster's CPUs / cpus_per_actor, at most one per file."
    )
    cpus_per_actor: float = Field(default=1.0, gt=0.0, description="CPUs reserved per scoring actor.")
    max_cached_models: int = Field(
        default=1024, ge=1, description="ONNX sessions an actor keeps (least recently used dropped first)."
    )
    id_columns: list[str] | None = Field(
        default=None,
        description="Input columns copied to the output besides the segment columns (ids, timestamps, labels); "
        "null = every input column that is not a model input; [] = none.",
    )
    prediction_column: str = Field(default="prediction", description="Name of the prediction column in the output.")
    drift: bool = Field(
        default=True,
        description="Count every scored row into the model's reference bins and write the run's drift summary "
        "(<output>/_rayml_batch/drift.json); false skips the counting.",
    )
    overwrite: bool = Field(
        default=False,
        description="Start over: delete the output's ledger and committed files first. Without it, a rerun skips files "
        "already committed and finishes the rest.",
    )


class BatchJobConfig(_Section):
    """`rayml batch` / `jobs/batch_infer.py`."""

    batch: BatchConfig = Field(default_factory=BatchConfig, description="What to score, with which model, where to.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Thresholds of the run's drift summary.")


# --- serving & rollout ---------------------------------------------------------------------------------------------
def _version_ref(v: int | str) -> int | str:
    """A served version is a positive number or an alias name (a string of digits is a number)."""
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if isinstance(v, int) and v < 1:
        raise ValueError(f"version {v} is not a positive whole number")
    if isinstance(v, str) and (not _NAME_RE.match(v) or v in (".", "..")):
        raise ValueError(f"alias {v!r} may only contain letters, digits, '_', '.' and '-'")
    return v


class AutoscalingSettings(_Section):
    """Ray Serve autoscaling of one deployment (replaces a fixed ``num_replicas``)."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (0 scales to zero when idle).")
    max_replicas: int = Field(default=4, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(default=8.0, gt=0.0, description="Ongoing requests per replica to aim for.")
    upscale_delay_s: float = Field(default=5.0, ge=0.0, description="Sustained load needed before adding replicas.")
    downscale_delay_s: float = Field(default=60.0, ge=0.0, description="Sustained idleness needed before removing replicas.")

    @model_validator(mode="after")
    def _min_below_max(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        return self


class IngressConfig(_Section):
    """The HTTP ingress deployment (protocols, auth, validation, routing, shadowing)."""

    num_replicas: int = Field(default=1, ge=1, description="Ingress replicas (ignored when `autoscaling` is set).")
    autoscaling: AutoscalingSettings | None = Field(default=None, description="Autoscale the ingress; null = fixed.")
    num_cpus: float = Field(default=0.5, ge=0.0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(default=256, ge=1, description="Concurrent requests one ingress replica accepts.")


class ModelDeploymentConfig(_Section):
    """The Ray Serve deployment that runs one model version (ONNX Runtime, dynamic batching)."""

    num_replicas: int = Field(default=1, ge=1, description="Replicas per version (ignored when `autoscaling` is set).")
    autoscaling: AutoscalingSettings | None = Field(default=None, description="Autoscale each version; null = fixed.")
    num_cpus: float = Field(default=0.5, ge=0.0, description="CPUs reserved per replica.")
    max_ongoing_requests: int = Field(default=64, ge=1, description="Concurrent requests one replica accepts.")
    max_batch_size: int = Field(default=16, ge=1, description="Most requests merged into one ONNX Runtime call.")
    batch_wait_timeout_s: float = Field(
        default=0.002, ge=0.0, description="How long a batch waits for more requests before it runs anyway."
    )
    intra_op_threads: int = Field(default=1, ge=1, description="ONNX Runtime threads per call.")
    max_models_per_replica: int = Field(
        default=8, ge=1, description="Model sets only: segment models kept loaded per replica (LRU beyond this)."
    )
    max_constructor_retry_count: int = Field(
        default=3, ge=1, description="Replica start attempts before the deployment is reported failed."
    )

    @model_validator(mode="after")
    def _batch_fits_concurrency(self) -> ModelDeploymentConfig:
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) is more than max_ongoing_requests ({self.max_ongoing_requests}): "
                "a batch could never fill"
            )
        return self


class ServedVersion(_Section):
    """One version of a served model and its share of the traffic."""

    version: int | str = Field(
        description="Version number, or an alias (`production`, `canary`, ...) resolved to a number when deployed."
    )
    weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Share of the model's traffic; weights sum to 1.")

    _valid_version = field_validator("version")(_version_ref)


class ShadowSettings(_Section):
    """Mirror a share of a model's requests to another version; its answers are compared, never returned."""

    version: int | str = Field(description="Shadow version number or alias (deployed with weight 0 if not listed).")
    percent: float = Field(default=10.0, ge=0.0, le=100.0, description="Percent of requests mirrored.")

    _valid_version = field_validator("version")(_version_ref)


class ServedModelConfig(_Section):
    """How one registered model is served: its versions and weights, shadow, stickiness and replicas."""

    versions: list[ServedVersion] = Field(min_length=1, description="Served versions with their weights (sum to 1).")
    shadow: ShadowSettings | None = Field(default=None, description="Mirror traffic to a version; null = none.")
    sticky_header: str | None = Field(
        default="x-rayml-route-key",
        description="Request header whose value pins a caller to a version (A/B); null = every request split at random.",
    )
    deployment: ModelDeploymentConfig = Field(
        default_factory=ModelDeploymentConfig, description="Replicas, batching and resources of each version."
    )

    @field_validator("versions")
    @classmethod
    def _weights_sum_to_one(cls, versions: list[ServedVersion]) -> list[ServedVersion]:
        listed = [v.version for v in versions]
        problems = []
        dupes = sorted({str(v) for v in listed if listed.count(v) > 1})
        if dupes:
            problems.append(f"versions {dupes} are listed more than once")
        total = sum(v.weight for v in versions)
        if abs(total - 1.0) > 1e-6:
            shown = ", ".join(f"{v.version}={v.weight:g}" for v in versions)
            problems.append(f"weights ({shown}) sum to {total:g}, not 1")
        if problems:
            raise ValueError("; ".join(problems))
        return versions


class ApiKeyConfig(_Section):
    """One API key; callers send it as ``Authorization: Bearer <key>``."""

    key: str = Field(min_length=16, description="The secret (16+ characters). Prefer $RAYML_SERVE_API_KEYS to files.")
    name: str = Field(default="", description="A label for logs (the key itself is never logged).")
    models: list[str] | None = Field(default=None, description="Models this key may call; null = every model.")


class ServeConfig(_Section):
    """`rayml serve ...`: one Ray Serve application serving registered models."""

    app_name: str = Field(default="rayml", description="Ray Serve application name.")
    route_prefix: str = Field(default="/", description="HTTP route prefix of the application.")
    host: str = Field(default="127.0.0.1", description="HTTP host of the Serve proxy (0.0.0.0 to listen on every interface).")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    models: dict[str, ServedModelConfig] = Field(default_factory=dict, description="Registered model name -> how it is served.")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="The HTTP ingress deployment.")
    max_batch_rows: int = Field(default=1000, ge=1, description="Most rows one request may carry (413 beyond).")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body in bytes (413 beyond).")
    allow_missing_values: bool = Field(
        default=False,
        description="Accept null/NaN in numeric inputs (the model imputes the training mean); false rejects them (422).",
    )
    request_timeout_s: float = Field(default=30.0, gt=0.0, description="Longest wait for a model's answer (504 beyond).")
    api_keys: list[ApiKeyConfig] = Field(
        default_factory=list, description="API keys (added to $RAYML_SERVE_API_KEYS); none anywhere = no auth."
    )
    shadow_queue_size: int = Field(
        default=64, ge=1, description="Shadow calls in flight per ingress replica; more are dropped and counted."
    )
    shadow_timeout_s: float = Field(default=10.0, gt=0.0, description="A shadow call running longer counts as an error.")
    stats_flush_interval_s: float = Field(
        default=1.0, gt=0.0, description="How often each ingress replica sends its per-version counts to the stats deployment."
    )
    health_check_interval_s: float = Field(
        default=2.0, gt=0.0, description="How often the ingress checks that each version's deployment answers."
    )
    deploy_timeout_s: float = Field(default=300.0, gt=0.0, description="Longest wait for the application to be running.")
    drift_window_s: float = Field(
        default=300.0,
        gt=0.0,
        description="Online drift: length of the tumbling window (wall clock, aligned across replicas) in which served "
        "rows are counted into the reference bins; the drift gauges show the current window once it has "
        "drift.min_rows rows, else the last complete one.",
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="Online drift thresholds (status per feature and version) and min_rows."
    )
    metrics_export_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Prometheus export port of a local Ray started by `rayml serve up`; null = Ray's choice.",
    )

    @field_validator("app_name")
    @classmethod
    def _valid_app_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"app_name {v!r} may only contain letters, digits, '_', '.' and '-'")
        return v

    @field_validator("route_prefix")
    @classmethod
    def _valid_prefix(cls, v: str) -> str:
        if not v.startswith("/") or (len(v) > 1 and v.endswith("/")):
            raise ValueError(f"route_prefix {v!r} must start with '/' and not end with one (e.g. / or /ml)")
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _valid_model_names(cls, v: Any) -> Any:
        bad = [name for name in v if not _NAME_RE.match(str(name)) or name in (".", "..")] if isinstance(v, dict) else []
        if bad:
            raise ValueError(f"model names {bad} may only contain letters, digits, '_', '.' and '-'")
        return v


class RolloutConfig(_Section):
    """`rayml rollout start`: shadow phase, canary steps and the checks that gate each step."""

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Candidate traffic percent at each canary step, increasing, ending at 100.",
    )
    interval_s: float = Field(default=60.0, gt=0.0, description="How long each step runs before it is checked.")
    shadow_s: float = Field(default=0.0, ge=0.0, description="Shadow phase before the first step (0 = none).")
    shadow_percent: float = Field(
        default=100.0, ge=0.0, le=100.0, description="Percent of baseline traffic mirrored to the candidate (all phases)."
    )
    manual_steps: list[float] = Field(
        default_factory=list, description="Steps (percents) that wait for `rayml rollout approve` once their check passes."
    )
    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0, description="Largest share of candidate 5xx answers.")
    max_p95_latency_ratio: float | None = Field(
        default=1.5, gt=0.0, description="Largest candidate p95 / baseline p95 latency; null = not checked."
    )
    max_p95_latency_ms: float | None = Field(
        default=None, gt=0.0, description="Largest candidate p95 latency in ms; null = not checked."
    )
    max_disagreement: float | None = Field(
        default=0.25,
        ge=0.0,
        description="Largest candidate-vs-baseline disagreement on mirrored requests: sum|diff| / sum|baseline| for "
        "regression, share of differing classes for binary; null = not checked.",
    )
    failure_budget: int = Field(
        default=1, ge=0, description="Failed checks tolerated (each retries the step); one more rolls back."
    )
    min_requests: int = Field(default=20, ge=1, description="Candidate requests a check needs (fewer = a failed check).")
    min_shadow_comparisons: int = Field(
        default=20, ge=1, description="Mirrored rows a disagreement check needs (fewer: not judged at a canary step)."
    )
    poll_interval_s: float = Field(default=1.0, gt=0.0, description="How often the controller wakes up.")
    state_dir: str | None = Field(
        default=None, description="Where rollout state and the audit log are kept; null = $RAYML_HOME/rollouts."
    )

    @model_validator(mode="after")
    def _valid_steps(self) -> RolloutConfig:
        problems = []
        s = self.steps
        if not s:
            problems.append("steps is empty")
        elif any(not 0 < x <= 100 for x in s) or any(b <= a for a, b in zip(s, s[1:], strict=False)) or s[-1] != 100:
            problems.append(f"steps {s} must be increasing percents in (0, 100] that end at 100")
        extra = [m for m in self.manual_steps if m not in s]
        if extra:
            problems.append(f"manual_steps {extra} are not among steps {s}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ServeJobConfig(_Section):
    """`rayml serve ...`, `rayml rollout ...`, `rayml rollback` / `jobs/deploy.py`."""

    serve: ServeConfig = Field(default_factory=ServeConfig, description="The Serve application.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Progressive delivery of a candidate.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")


# --- pipeline ------------------------------------------------------------------------------------------------------
class PipelineConfig(_Section):
    """Continuous training: validate new data -> train or tune -> gate -> register -> roll out or promote."""

    name: str | None = Field(
        default=None, description="Pipeline name (its state folder and MLflow run names); null = model.name."
    )
    gate_data: str | None = Field(
        default=None,
        description="Labelled, fixed validation data the gate judges candidate and production on (parquet/CSV path, "
        "directory or URI); null = the held-out validation split of the new data (data.validation_fraction, "
        "train.seed).",
    )
    block_on_drift: bool = Field(
        default=False,
        description="Fail the data-validation stage when the new data drifts (any feature at alert) from the production "
        "model's reference; false = report the drift (drift.json/html in the run folder) and go on: drift is usually "
        "why a model is retrained.",
    )
    rollout: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Last stage. auto: when the serve application (serve.app_name) is up and serves model.name, roll the "
        "candidate out through it (rollout.*) and wait for promote or rollback; otherwise promote without serving (see "
        "promote_without_serving). always: serving must be up (else the stage fails). never: never roll out.",
    )
    promote_without_serving: bool = Field(
        default=True,
        description="When no rollout runs: point `production` at the candidate (the old version becomes `previous`), so "
        "batch jobs on NAME@production pick it up. false = leave it as `canary` for a person to promote.",
    )
    rollout_timeout_s: float = Field(
        default=3600.0,
        gt=0.0,
        description="Longest wait for a rollout to promote or roll back; past it the stage fails (the rollout goes on; "
        "re-running the pipeline waits for it again).",
    )
    serve_config: str | None = Field(
        default=None,
        description="A serve YAML (as for `rayml serve up`) whose serve/rollout sections are used; null = this file's "
        "serve/rollout sections.",
    )
    state_dir: str | None = Field(
        default=None,
        description="Where run state lives (<state_dir>/<name>/<run-id>/state.json, drift report, gate report); local "
        "dir or pyarrow URI; null = $RAYML_HOME/pipelines.",
    )
    experiment: str = Field(default="rayml-pipeline", description="MLflow experiment of the pipeline runs.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str | None) -> str | None:
        if v is not None and (not _NAME_RE.match(v) or v in (".", "..")):
            raise ValueError(f"pipeline.name {v!r} may only contain letters, digits, '_', '.' and '-'")
        return v


class PipelineJobConfig(TrainJobConfig):
    """`rayml pipeline run --config FILE` / `jobs/pipeline.py`: a training config (plus an optional `tune:` search)
    and the settings of the gate, drift check, serving and rollout that follow it."""

    tune: TuneConfig | None = Field(
        default=None, description="A hyperparameter search instead of one training run (as in `rayml tune`); null = train."
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="Gate thresholds (candidate vs production).")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift thresholds of the data-validation stage.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="The Serve application to roll out through.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Canary steps and checks of the rollout.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Stages, state and promotion.")

    @model_validator(mode="after")
    def _pipeline_owns_production(self) -> PipelineJobConfig:
        problems = []
        if self.registry.alias is not None:
            problems.append(
                f"registry.alias is {self.registry.alias!r}; the pipeline moves aliases itself (production only in its "
                "last stage), leave registry.alias null"
            )
        if not self.registry.register_version:
            problems.append("registry.register_version is false; the gate judges a registered version, set it true")
        if problems:
            raise ValueError("; ".join(problems))
        if self.tune is not None:
            self.tune_job()  # a bad search fails at load time, with every problem listed
        return self

    @property
    def pipeline_name(self) -> str:
        """``pipeline.name``, or the model name."""
        return self.pipeline.name or self.model.name

    def train_job(self) -> TrainJobConfig:
        """The training part of this config."""
        return TrainJobConfig(data=self.data, model=self.model, train=self.train, registry=self.registry)

    def tune_job(self) -> TuneJobConfig:
        """The search part of this config (only when ``tune`` is set)."""
        return TuneJobConfig(data=self.data, model=self.model, train=self.train, registry=self.registry, tune=self.tune)

    def serve_job(self) -> ServeJobConfig:
        """The serve/rollout settings: from ``pipeline.serve_config`` when set, else this file's sections."""
        if self.pipeline.serve_config:
            loaded = load_config(ServeJobConfig, self.pipeline.serve_config)
            return ServeJobConfig(serve=loaded.serve, rollout=loaded.rollout, registry=self.registry)
        return ServeJobConfig(serve=self.serve, rollout=self.rollout, registry=self.registry)
