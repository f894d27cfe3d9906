"""Pydantic models for every rayml config file: the one place defaults live.

A config file is YAML whose top-level sections match a job's model (``data``, ``model``, ``train``, ``registry``).
Merge order: field defaults < YAML < ``--set a.b=c`` overrides. Unknown keys fail with the allowed names.

One module per area: :mod:`~rayml.config.data`, :mod:`~rayml.config.train` (model and train),
:mod:`~rayml.config.registry`, :mod:`~rayml.config.tune` (with the checks of a search in
:mod:`~rayml.config.search_space`), :mod:`~rayml.config.manymodels`, :mod:`~rayml.config.batch`,
:mod:`~rayml.config.monitor` (drift and gate), :mod:`~rayml.config.serve` (serve and rollout),
:mod:`~rayml.config.pipeline`, :mod:`~rayml.config.staleness`; :mod:`~rayml.config.jobs` puts sections together
into one model per command, and :mod:`~rayml.config.loader` reads YAML and ``--set`` overrides into one. Import
from ``rayml.config``.

Example:
    >>> cfg = load_config(TrainJobConfig, "jobs/configs/train.yaml", ["train.epochs=3"])
    >>> cfg.train.epochs
    3
"""

from rayml.config._base import NAME_PATTERN, Name
from rayml.config.batch import BatchConfig
from rayml.config.data import DataConfig, DriftSpec, SyntheticConfig, synthetic_roles
from rayml.config.jobs import (
    BatchJobConfig,
    GateJobConfig,
    LabelsJobConfig,
    ManyModelsJobConfig,
    MonitorJobConfig,
    PipelineJobConfig,
    RegistryJobConfig,
    ServeJobConfig,
    TrainJobConfig,
    TuneJobConfig,
)
from rayml.config.loader import ConfigLike, Overrides, apply_overrides, dump_config, load_config, resolve_config
from rayml.config.manymodels import CandidateConfig, ManyModelsConfig
from rayml.config.monitor import DriftConfig, GateConfig, QualityConfig
from rayml.config.pipeline import PipelineConfig
from rayml.config.registry import RegistryConfig
from rayml.config.search_space import search_space_problems
from rayml.config.serve import (
    ApiKeyConfig,
    AutoscalingSettings,
    CaptureConfig,
    IngressConfig,
    ModelDeploymentConfig,
    RolloutConfig,
    ServeConfig,
    ServedModelConfig,
    ServedVersion,
    ShadowSettings,
)
from rayml.config.staleness import StalenessConfig
from rayml.config.train import (
    MODEL_TYPES,
    LightGBMSettings,
    ModelConfig,
    TrainConfig,
    XGBoostSettings,
    model_type_problems,
)
from rayml.config.tune import TUNABLE_FIELDS, TUNE_METRICS, AshaConfig, SearchDimension, TuneConfig

__all__ = [
    # names
    "NAME_PATTERN",
    "Name",
    # loading
    "ConfigLike",
    "Overrides",
    "apply_overrides",
    "dump_config",
    "load_config",
    "resolve_config",
    # job configs (one per command)
    "BatchJobConfig",
    "GateJobConfig",
    "LabelsJobConfig",
    "ManyModelsJobConfig",
    "MonitorJobConfig",
    "PipelineJobConfig",
    "RegistryJobConfig",
    "ServeJobConfig",
    "TrainJobConfig",
    "TuneJobConfig",
    # sections
    "ApiKeyConfig",
    "CaptureConfig",
    "AshaConfig",
    "AutoscalingSettings",
    "BatchConfig",
    "CandidateConfig",
    "DataConfig",
    "DriftConfig",
    "DriftSpec",
    "GateConfig",
    "IngressConfig",
    "ManyModelsConfig",
    "LightGBMSettings",
    "MODEL_TYPES",
    "ModelConfig",
    "XGBoostSettings",
    "model_type_problems",
    "ModelDeploymentConfig",
    "PipelineConfig",
    "QualityConfig",
    "RegistryConfig",
    "RolloutConfig",
    "SearchDimension",
    "ServeConfig",
    "ServedModelConfig",
    "ServedVersion",
    "ShadowSettings",
    "StalenessConfig",
    "SyntheticConfig",
    "synthetic_roles",
    "TrainConfig",
    "TuneConfig",
    # search spaces
    "TUNABLE_FIELDS",
    "TUNE_METRICS",
    "search_space_problems",
]
