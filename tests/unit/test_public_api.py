"""The public API: `import rayml` teaches it, every entry point takes its config the same way, `__all__` is curated."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from importlib.metadata import version

import pytest
from hypothesis import given, settings, strategies as st

import rayml
from rayml.config import BatchJobConfig, ConfigLike, TrainJobConfig, resolve_config
from rayml.errors import ConfigError

PACKAGES = ["batch", "config", "data", "manymodels", "models", "monitor", "pipeline", "registry", "serve", "train", "tune"]
ENTRY_POINTS = ["train_model", "tune_model", "train_model_set", "run_batch", "deploy", "run_pipeline"]


def test_version_is_the_installed_distributions() -> None:
    assert rayml.__version__ == version("rayml")


def test_import_rayml_is_cheap() -> None:
    # a notebook's `import rayml` must not start paying for Ray, torch or MLflow before they are used
    code = "import sys, rayml; print(sorted(m for m in ('ray', 'torch', 'mlflow', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_loading_models_never_imports_the_importers_frameworks() -> None:
    # serving replicas and batch actors import the registry and the models package: the converters and the
    # frameworks they convert from (`pip install rayml[sklearn,xgboost,lightgbm]`) load only to convert a model
    code = (
        "import sys, rayml, rayml.registry, rayml.models; rayml.register_model; rayml.models.convert; "
        "print(sorted(m for m in ('sklearn', 'skl2onnx', 'skops', 'xgboost', 'lightgbm', 'onnxmltools', 'torch') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert rayml.register_model is importlib.import_module("rayml.registry").register_model
    assert "register_model" in rayml.__all__ and "convert" in importlib.import_module("rayml.models").__all__


def test_every_top_level_name_resolves_and_survives_the_subpackages_imports() -> None:
    for name in PACKAGES:
        importlib.import_module(f"rayml.{name}")  # binds rayml.train / rayml.tune to the subpackages
    for name in rayml.__all__:
        assert getattr(rayml, name) is not None, name
    assert rayml.train_model is importlib.import_module("rayml.train").train
    assert rayml.tune_model is importlib.import_module("rayml.tune").tune
    assert set(rayml.__all__) <= set(dir(rayml))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = rayml.nope


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_is_public_sorted_and_resolves(package: str) -> None:
    mod = importlib.import_module(f"rayml.{package}")
    names = list(mod.__all__)
    assert names, f"rayml.{package} exports nothing"
    assert len(names) == len(set(names))
    assert all(not n.startswith("_") for n in names), names
    for name in names:
        assert getattr(mod, name) is not None, f"rayml.{package}.{name}"
    # the packages' docstrings are what help(rayml.<package>) shows first
    assert (mod.__doc__ or "").strip(), f"rayml.{package} has no docstring"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_takes_config_overrides_and_registry_the_same_way(name: str) -> None:
    params = inspect.signature(getattr(rayml, name)).parameters
    first = next(iter(params.values()))
    assert first.name == "config" and first.default is None, f"{name}: first parameter {first}"
    assert params["overrides"].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert params["registry"].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert "ConfigLike" in str(first.annotation) or first.annotation is ConfigLike, name


def test_resolve_config_takes_an_object_a_path_or_a_dict() -> None:
    from_path = resolve_config(TrainJobConfig, "jobs/configs/train.yaml", {"train.epochs": 3})
    assert from_path.train.epochs == 3
    same = resolve_config(TrainJobConfig, from_path)
    assert same is from_path  # no overrides: the object as it is
    changed = resolve_config(TrainJobConfig, from_path, ["train.epochs=5"])
    assert (changed.train.epochs, from_path.train.epochs) == (5, 3)  # the caller's object is untouched
    raw = {"train": {"epochs": 7}}
    from_dict = resolve_config(TrainJobConfig, raw, {"model.name": "iris"})
    assert (from_dict.train.epochs, from_dict.model.name) == (7, "iris")
    assert raw == {"train": {"epochs": 7}}  # the caller's dict is untouched


def test_resolve_config_errors_say_what_was_wrong() -> None:
    other = resolve_config(BatchJobConfig)
    with pytest.raises(ConfigError, match="expected a TrainJobConfig"):
        resolve_config(TrainJobConfig, other)
    with pytest.raises(ConfigError, match="train.epochz: unknown field; allowed here: .*epochs"):
        resolve_config(TrainJobConfig, {}, {"train.epochz": 3})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(TrainJobConfig, "no/such/file.yaml")
    with pytest.raises(ConfigError, match="a YAML path or a dict"):
        resolve_config(TrainJobConfig, 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty part"):
        resolve_config(TrainJobConfig, None, {"train..epochs": 3})
    with pytest.raises(ConfigError, match="is a value, not a section"):
        resolve_config(TrainJobConfig, {"train": {"epochs": 3}}, {"train.epochs.x": 3})
    with pytest.raises(ConfigError, match="train.epochs: Input should be a valid integer"):
        resolve_config(TrainJobConfig, None, {"train.epochs.x": 3})
    with pytest.raises(ConfigError, match=r"write overrides=\['train.epochs=3'\]"):
        resolve_config(TrainJobConfig, None, "train.epochs=3")


@settings(max_examples=60, deadline=None)
@given(epochs=st.integers(min_value=1, max_value=10_000), lr=st.floats(min_value=1e-6, max_value=1.0))
def test_dict_and_set_style_overrides_agree(epochs: int, lr: float) -> None:
    as_dict = resolve_config(TrainJobConfig, None, {"train.epochs": epochs, "train.learning_rate": lr})
    as_set = resolve_config(TrainJobConfig, None, [f"train.epochs={epochs}", f"train.learning_rate={lr!r}"])
    assert as_dict == as_set


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.integers(), max_size=3)))
def test_generated_bad_values_fail_with_a_config_error_never_a_crash(value: object) -> None:
    try:
        cfg = resolve_config(TrainJobConfig, None, {"train.epochs": value})
    except ConfigError as e:
        assert "train.epochs" in str(e)
    else:
        assert cfg.train.epochs >= 1
