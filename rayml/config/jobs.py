"""The job configs: one model per command, made of the sections it reads (``rayml <command> --config FILE``).

A job config is what :func:`rayml.config.load_config` validates a YAML file against; its fields are the file's
top-level sections.
"""

from __future__ import annotations

import re
from typing import Any, cast

from pydantic import Field, ValidationError, model_validator

from rayml.config._base import _Section
from rayml.config.batch import BatchConfig
from rayml.config.data import SYNTHETIC_TARGET, DataConfig
from rayml.config.loader import load_config
from rayml.config.manymodels import ManyModelsConfig
from rayml.config.monitor import DriftConfig, GateConfig, QualityConfig
from rayml.config.pipeline import PipelineConfig
from rayml.config.registry import RegistryConfig
from rayml.config.search_space import search_space_problems
from rayml.config.serve import RolloutConfig, ServeConfig
from rayml.config.staleness import StalenessConfig
from rayml.config.train import ModelConfig, TrainConfig, _changed, model_type_problems
from rayml.config.tune import _MAXIMISED_METRICS, _RANGE_TYPES, _VALUE_TYPES, TuneConfig
from rayml.errors import ConfigError


class TrainJobConfig(_Section):
    """`rayml train --config FILE` / `jobs/train.py`."""

    data: DataConfig = Field(default_factory=DataConfig, description="Training data.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model name and architecture.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Ray Train settings.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")

    @model_validator(mode="before")
    @classmethod
    def _default_model_name(cls, data: Any) -> Any:
        """``model.name`` left out: named after what it predicts (``<data.target>-model``)."""
        if not isinstance(data, dict):
            return data
        model = data.get("model")
        if isinstance(model, dict) and "name" in model or isinstance(model, ModelConfig):
            return data
        raw_data = data.get("data")
        if isinstance(raw_data, DataConfig):
            target = raw_data.target
        else:
            raw_data = raw_data if isinstance(raw_data, dict) else {}
            target = str(raw_data.get("target") or "")
            if not target and raw_data.get("source", "synthetic") == "synthetic":
                target = SYNTHETIC_TARGET
        if not target:
            return data  # the target check below reports it
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", target).strip("-.") or "model"
        return {**data, "model": {**(model if isinstance(model, dict) else {}), "name": f"{name}-model"}}

    @model_validator(mode="after")
    def _has_target(self) -> TrainJobConfig:
        if not self.data.target:
            raise ValueError(
                f"data.target is not set; name the column to predict, e.g. data.target=price (data.source is "
                f"{self.data.source!r})"
            )
        return self


class RegistryJobConfig(_Section):
    """Commands that only talk to the registry (`rayml models ...`)."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")


class TuneJobConfig(TrainJobConfig):
    """`rayml tune --config FILE` / `jobs/tune.py`: a training config plus the search (`tune:`).

    Every trial trains with the training config, with the searched fields replaced by the trial's values.
    """

    tune: TuneConfig = Field(default_factory=TuneConfig, description="The hyperparameter search.")

    @model_validator(mode="after")
    def _valid_search(self) -> TuneJobConfig:
        if self.train.in_process:
            raise ValueError(
                "train.in_process is true, but a search runs its trials as Ray Tune trials; debug one configuration "
                "with `rayml train --in-process` (the same training loop) and leave train.in_process false here"
            )
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
    def epochs_path(self) -> str:
        """The field that counts a trial's epochs: train.epochs, or model.<type>.num_boost_round for trees (rounds)."""
        return f"model.{self.model.type}.num_boost_round" if self.model.is_tree else "train.epochs"

    @property
    def epoch_word(self) -> str:
        """What a trial's time axis counts, for people: ``epoch``, or ``round`` (boosting rounds) for trees."""
        return "round" if self.model.is_tree else "epoch"

    @property
    def configured_epochs(self) -> int:
        """The value of :attr:`epochs_path` in the training config (before any search replaces it)."""
        return getattr(self.model, self.model.type).num_boost_round if self.model.is_tree else self.train.epochs

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial can run (ASHA's max_t): the largest searched train.epochs, else train.epochs.
        For trees, boosting rounds: the largest searched model.<type>.num_boost_round, else the configured one."""
        default = self.configured_epochs
        dim = self.tune.space.get(self.epochs_path)
        if dim is None or dim.type not in _RANGE_TYPES + _VALUE_TYPES:
            return default
        if dim.type in _VALUE_TYPES:
            return max(int(v) for v in dim.values or [default])
        return int(dim.high if dim.high is not None else default)


class MonitorJobConfig(_Section):
    """`rayml monitor drift`, `rayml monitor quality` and `rayml monitor staleness`."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift thresholds.")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="Live quality: where captures and labels are, and its thresholds."
    )
    staleness: StalenessConfig = Field(
        default_factory=StalenessConfig, description="Quality against model age: versions scored, tolerated degradation."
    )


class LabelsJobConfig(_Section):
    """`rayml labels upload`: the registry (the model's task and classes) and where labels are stored."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="quality.destination: where the captures are and the labels go."
    )


class GateJobConfig(_Section):
    """`rayml validate`."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Gate thresholds.")


class ManyModelsJobConfig(TrainJobConfig):
    """`rayml manymodels train --config FILE` / `jobs/manymodels_train.py`: a training config plus `manymodels:`.

    ``model.name`` is the registered model-set name. ``model.type`` picks the per-segment (and fallback) model: ``mlp``
    (rayml's small MLP: ``model.hidden_sizes`` ..., and ``train:`` gives each segment's epochs, batch size, learning
    rate, seed and early stopping) or ``xgboost`` | ``lightgbm`` (one single-threaded booster per segment with
    ``model.xgboost`` / ``model.lightgbm``, early stopping on the segment's validation split; ``train.seed`` seeds it).
    The Ray Train fields num_workers, use_gpu, amp and max_failures do not apply. Settings of another model type, and
    ``manymodels.global_batch_size`` with a tree type, are refused; a candidate sets the job's type's fields only
    (MLP fields, or ``{lightgbm: {...}}`` / ``{xgboost: {...}}``).
    """

    manymodels: ManyModelsConfig = Field(default_factory=ManyModelsConfig, description="Per-segment training.")

    @model_validator(mode="after")
    def _has_segments(self) -> ManyModelsJobConfig:
        if not self.data.segment:
            raise ValueError("data.segment is empty; many models needs the segment column(s), e.g. data.segment=[store_id]")
        if self.train.in_process:
            raise ValueError(
                "train.in_process is true, but many models trains its segments in parallel Ray tasks; debug one "
                "segment's model with `rayml train --in-process` on that segment's rows, and leave it false here"
            )
        if self.model.factory is not None:
            raise ValueError(
                f"model.factory ({self.model.factory!r}) is for `rayml train` / `rayml tune`; many models trains rayml's "
                "small MLP or a booster per segment (model.type); remove model.factory from this config"
            )
        problems = manymodels_type_problems(self)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            # a ConfigError (not a ValueError) passes through pydantic untouched: one message listing every problem
            raise ConfigError(
                f"model.type {self.model.type!r} does not fit this many-models config: {len(problems)} problem(s):\n{lines}",
                hint=f"model.type {self.model.type!r} trains with its own settings (model.{self.model.type} for trees; "
                "model.hidden_sizes and train.epochs ... for mlp); see the README's many-models section",
            )
        return self


def manymodels_type_problems(cfg: ManyModelsJobConfig) -> list[str]:
    """What in ``cfg`` does not apply to ``model.type`` (empty: nothing): the train settings of another type
    (:func:`model_type_problems`), and the MLP-only many-models settings when the segments train trees."""
    problems = model_type_problems(cfg.model, cfg.train) + _candidate_problems(cfg)
    if not cfg.model.is_tree:
        return problems
    m = cfg.manymodels
    if _changed(m, "global_batch_size"):
        problems.append(
            f"manymodels.global_batch_size ({m.global_batch_size}) is the fallback MLP's mini-batch size; a "
            f"{cfg.model.type} fallback model has no mini-batches: remove it (manymodels.global_max_rows still applies)"
        )
    return problems


def _candidate_problems(cfg: ManyModelsJobConfig) -> list[str]:
    """A candidate sets the fields of the job's model type only, with values that type accepts."""
    problems = []
    tree_sections = ("xgboost", "lightgbm")
    for i, c in enumerate(cfg.manymodels.candidates):
        where = f"manymodels.candidates[{i}]"
        set_fields = [k for k, v in c.model_dump().items() if v is not None]
        if not cfg.model.is_tree:
            trees = [f for f in set_fields if f in tree_sections]
            if trees:
                problems.append(
                    f"{where} sets {', '.join(trees)}, a tree setting, but model.type is 'mlp'; set model.type to "
                    f"{trees[0]} or give the candidate MLP fields (hidden_sizes, learning_rate, epochs ...)"
                )
            continue
        wrong = [f for f in set_fields if f != cfg.model.type]
        if wrong:
            problems.append(
                f"{where} sets {', '.join(wrong)}, but with model.type {cfg.model.type!r} a candidate sets only "
                f"`{cfg.model.type}:` (settings of model.{cfg.model.type}, e.g. {{{cfg.model.type}: {{learning_rate: 0.05}}}})"
            )
        changes = getattr(c, cfg.model.type)
        if changes is None:
            if not wrong:
                problems.append(f"{where} is empty; give it `{cfg.model.type}:` settings to try")
            continue
        base = getattr(cfg.model, cfg.model.type)
        try:
            type(base).model_validate({**base.model_dump(), **changes})
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"])
                problems.append(f"{where}.{cfg.model.type}.{loc}: {err['msg']}")
    return problems


class BatchJobConfig(_Section):
    """`rayml batch` / `jobs/batch_infer.py`."""

    batch: BatchConfig = Field(default_factory=BatchConfig, description="What to score, with which model, where to.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Thresholds of the run's drift summary.")


class ServeJobConfig(_Section):
    """`rayml serve ...`, `rayml rollout ...`, `rayml rollback` / `jobs/deploy.py`."""

    serve: ServeConfig = Field(default_factory=ServeConfig, description="The Serve application.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Progressive delivery of a candidate.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow tracking and registry.")


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
    staleness: StalenessConfig = Field(
        default_factory=StalenessConfig, description="The staleness stage: versions scored, tolerated degradation."
    )

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
        # tune=None fails TuneJobConfig's validation, as it always has
        tune = cast(TuneConfig, self.tune)
        return TuneJobConfig(data=self.data, model=self.model, train=self.train, registry=self.registry, tune=tune)

    def serve_job(self) -> ServeJobConfig:
        """The serve/rollout settings: from ``pipeline.serve_config`` when set, else this file's sections."""
        if self.pipeline.serve_config:
            loaded = load_config(ServeJobConfig, self.pipeline.serve_config)
            return ServeJobConfig(serve=loaded.serve, rollout=loaded.rollout, registry=self.registry)
        return ServeJobConfig(serve=self.serve, rollout=self.rollout, registry=self.registry)
