"""rayml: take tabular ML models from experiment to production on Ray.

Train on Ray Train (CPU or GPU, resumed from the last checkpoint after a crash), search hyperparameters on Ray Tune,
train one model per segment in parallel, score files with Ray Data, and serve versions on Ray Serve behind weighted
canary, shadow and sticky A/B routing with metric-gated rollouts. Every version is registered in MLflow with its
lineage and served as ONNX.

Every entry point takes its config the same way: the job's config object, a YAML path or a dict shaped like the
YAML (None: the defaults), plus ``overrides`` as ``{"train.epochs": 3}`` or ``["train.epochs=3"]`` (the CLI's
``--set``); and an optional ``registry``.

Example:
    >>> import rayml
    >>> result = rayml.train_model("jobs/configs/train.yaml", overrides={"train.epochs": 3})
    >>> result.model_version.ref
    'sales-model:1'
    >>> rayml.tune_model("jobs/configs/tune.yaml")                    # ASHA search; the best model is registered
    >>> rayml.train_model_set("jobs/configs/manymodels.yaml")         # one model per store, one registered set
    >>> rayml.run_batch(model="sales-stores@production", input="data/", output="scores/")
    >>> rayml.deploy("jobs/configs/serve.yaml")                       # Ray Serve: canary / shadow / A-B
    >>> rayml.Registry().load("sales-model@production").predict(df)   # ONNX, no torch
    >>> rayml.register_model(sklearn_pipeline, name="churn", sample=df, target="churned")  # bring your own model

Entry points: :func:`train_model` (``rayml.train.train``), :func:`tune_model` (``rayml.tune.tune``),
:func:`train_model_set`, :func:`run_batch`, :func:`deploy` / :func:`undeploy`, :func:`run_pipeline`; the registry
(:class:`Registry`; :func:`register_model` brings a scikit-learn, XGBoost, LightGBM, torch, ONNX or MLflow model in)
and the model contract (:class:`ModelDir`, :class:`ModelSet`); configs (:func:`load_config` and the ``*JobConfig``
models). ``rayml.train`` and ``rayml.tune`` are the subpackages (the import system binds those
names here), hence ``train_model`` / ``tune_model``. Each package (``rayml.train``, ``rayml.tune``,
``rayml.manymodels``, ``rayml.batch``, ``rayml.serve``, ``rayml.registry``, ``rayml.models``, ``rayml.monitor``,
``rayml.pipeline``, ``rayml.data``, ``rayml.config``) lists the rest in its ``__all__``; test helpers are in
:mod:`rayml.testing`. Names load on first use, so ``import rayml`` starts neither Ray nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayml._private.lazy import lazy_getattr

__version__ = "0.1.0"

if TYPE_CHECKING:
    from rayml.batch import run_batch
    from rayml.config import (
        BatchJobConfig,
        ManyModelsJobConfig,
        PipelineJobConfig,
        ServeJobConfig,
        TrainJobConfig,
        TuneJobConfig,
        load_config,
    )
    from rayml.errors import RaymlError
    from rayml.manymodels import train_model_set
    from rayml.models import ModelDir, ModelSet
    from rayml.pipeline import run_pipeline
    from rayml.registry import Registry, register_model
    from rayml.serve import deploy, undeploy
    from rayml.train import train as train_model
    from rayml.tune import tune as tune_model

# name -> (module, attribute)
_LAZY = {
    "train_model": ("rayml.train", "train"),
    "tune_model": ("rayml.tune", "tune"),
    "train_model_set": ("rayml.manymodels", "train_model_set"),
    "run_batch": ("rayml.batch", "run_batch"),
    "deploy": ("rayml.serve", "deploy"),
    "undeploy": ("rayml.serve", "undeploy"),
    "run_pipeline": ("rayml.pipeline", "run_pipeline"),
    "Registry": ("rayml.registry", "Registry"),
    "register_model": ("rayml.registry", "register_model"),
    "ModelDir": ("rayml.models", "ModelDir"),
    "ModelSet": ("rayml.models", "ModelSet"),
    "load_config": ("rayml.config", "load_config"),
    "TrainJobConfig": ("rayml.config", "TrainJobConfig"),
    "TuneJobConfig": ("rayml.config", "TuneJobConfig"),
    "ManyModelsJobConfig": ("rayml.config", "ManyModelsJobConfig"),
    "BatchJobConfig": ("rayml.config", "BatchJobConfig"),
    "ServeJobConfig": ("rayml.config", "ServeJobConfig"),
    "PipelineJobConfig": ("rayml.config", "PipelineJobConfig"),
    "RaymlError": ("rayml.errors", "RaymlError"),
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "BatchJobConfig",
    "ManyModelsJobConfig",
    "ModelDir",
    "ModelSet",
    "PipelineJobConfig",
    "RaymlError",
    "Registry",
    "ServeJobConfig",
    "TrainJobConfig",
    "TuneJobConfig",
    "__version__",
    "deploy",
    "load_config",
    "register_model",
    "run_batch",
    "run_pipeline",
    "train_model",
    "train_model_set",
    "tune_model",
    "undeploy",
]
