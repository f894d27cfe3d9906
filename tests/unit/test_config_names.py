"""Every config field that holds a name follows one rule, and ``rayml.config`` exports what callers import."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st
from pydantic import ValidationError

import rayml.config as config
from rayml.config import (
    ModelConfig,
    PipelineConfig,
    ServeConfig,
    ServedVersion,
    ServeJobConfig,
    ShadowSettings,
    TrainConfig,
    TuneConfig,
    load_config,
)
from rayml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
_ALLOWED = string.ascii_letters + string.digits + "_.-"
_RULE = "may only contain letters, digits, '_', '.' and '-'"


def _follows_the_rule(name: str) -> bool:
    """The documented rule (DESIGN.md), written independently of the regex: ``[A-Za-z0-9_.-]+``, not ``.`` or ``..``."""
    return name != "" and all(c in _ALLOWED for c in name) and name not in (".", "..")


# Each place a config holds a name, as a function that builds the section with that name.
_NAME_FIELDS: dict[str, Callable[[str], object]] = {
    "model.name": lambda n: ModelConfig(name=n),
    "train.run_name": lambda n: TrainConfig(run_name=n),
    "tune.name": lambda n: TuneConfig(name=n),
    "pipeline.name": lambda n: PipelineConfig(name=n),
    "serve.app_name": lambda n: ServeConfig(app_name=n),
    "serve.models (key)": lambda n: ServeConfig(models={n: {"versions": [{"version": 1}]}}),
    "serve.models.*.versions.*.version (alias)": lambda n: ServedVersion(version=n),
    "serve.models.*.shadow.version (alias)": lambda n: ShadowSettings(version=n),
}

# Mostly-allowed characters (to reach valid names often), plus anything at all (to reach every invalid kind).
_names = st.one_of(st.text(alphabet=_ALLOWED, max_size=12), st.text(max_size=12))


@pytest.mark.parametrize("where", list(_NAME_FIELDS))
@settings(max_examples=150, deadline=None, database=None)
@given(name=_names)
@example(name="")
@example(name=".")
@example(name="..")
@example(name="...")
@example(name="sales-model_2.1")
@example(name="name\n")  # `$` alone would match before a trailing newline
@example(name="../etc")
@example(name="a b")
@example(name="ünï")
def test_a_name_is_accepted_exactly_when_it_follows_the_rule(where: str, name: str) -> None:
    if "alias" in where and name.isdigit():
        return  # a string of digits in a version field is a version number, not an alias
    build = _NAME_FIELDS[where]
    if _follows_the_rule(name):
        build(name)
        return
    with pytest.raises(ValidationError) as e:
        build(name)
    # one message everywhere: the value, and what is allowed
    assert _RULE in str(e.value) and repr(name) in str(e.value)


def test_name_pattern_stays_importable() -> None:
    assert re.match(config.NAME_PATTERN, "sales-model") and not re.match(config.NAME_PATTERN, "a/b")


def test_a_bad_name_from_the_command_line_names_the_field_and_the_value() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(ServeJobConfig, None, ["serve.app_name=a/b", "serve.models={'ok': {versions: [{version: x y}]}}"])
    msg = str(e.value)
    assert "2 problem(s)" in msg
    assert "serve.app_name" in msg and "'a/b'" in msg
    assert "serve.models.ok.versions.0.version" in msg and "'x y'" in msg
    assert _RULE in msg and "Hint:" in msg


def _imported_names() -> set[str]:
    """Every name imported with ``from rayml.config import ...`` anywhere in the repository (notebooks included)."""
    found: set[str] = set()
    pattern = re.compile(r"from rayml\.config import (\([^)]*\)|[A-Za-z0-9_, ]+)")
    for folder in ("rayml", "tests", "jobs", "benchmarks", "clusters", "notebooks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".ipynb") and ".venv" not in path.parts:
                for group in pattern.findall(path.read_text(errors="replace")):
                    found.update(n.strip() for n in group.strip("()").replace("\\n", ",").split(",") if n.strip())
    return found


def test_every_name_callers_import_is_exported() -> None:
    imported = _imported_names()
    assert {"TrainJobConfig", "load_config", "NAME_PATTERN"} <= imported  # the scan finds imports at all
    assert sorted(imported - set(config.__all__)) == []
    assert all(hasattr(config, n) for n in config.__all__)
