"""Checks of a search (``tune:``) against the training config it varies: every problem, listed at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from rayml.config.data import DataConfig
from rayml.config.registry import RegistryConfig
from rayml.config.train import ModelConfig, TrainConfig
from rayml.config.tune import (
    _MAXIMISED_METRICS,
    _RANGE_TYPES,
    _VALUE_TYPES,
    FACTORY_KWARGS_PREFIX,
    TREE_TUNE_METRICS,
    TUNE_METRICS,
    SearchDimension,
    tunable_fields,
)

if TYPE_CHECKING:  # the job config validates itself with these checks, so it imports this module
    from rayml.config.jobs import TuneJobConfig

# the sections of a training config, to tell a field that may not be searched from one that does not exist
_TRAIN_SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "registry": RegistryConfig,
}


def search_space_problems(cfg: TuneJobConfig) -> list[str]:
    """Every problem with ``cfg.tune`` (unknown fields, bad ranges, values a field rejects, conflicting settings).

    Choice/grid values are normalised in place to the field's type (e.g. YAML's string ``"1e-3"`` becomes ``0.001``).

    Args:
        cfg: the search and the training config it varies.

    Returns:
        One line per problem, in the order: the space, each searched field, the searcher, the metric, the scheduler;
        empty when the search is valid.
    """
    tunable = tunable_fields(cfg.model.type)
    # the user's network takes any keyword argument: its searched names count as tunable fields from here on
    tunable += [p for p in cfg.tune.space if _is_factory_kwarg(p)]
    problems: list[str] = []
    if not cfg.tune.space:
        problems.append(f"tune.space is empty; add at least one searched field (tunable: {', '.join(tunable)})")
    for path, dim in cfg.tune.space.items():
        problems.extend(_searched_field_problems(cfg, path, dim, tunable))
    problems.extend(_searcher_problems(cfg, tunable))
    problems.extend(_metric_problems(cfg))
    problems.extend(_scheduler_problems(cfg))
    return problems


def _searched_field_problems(cfg: TuneJobConfig, path: str, dim: SearchDimension, tunable: list[str]) -> list[str]:
    """Problems of one entry of the space: the field it names, the dimension's shape, and its bounds or values."""
    where = f"tune.space.{path}"
    section, _, field = path.partition(".")
    if path.startswith(FACTORY_KWARGS_PREFIX):
        return _factory_kwarg_problems(cfg, where, path, dim)
    if cfg.model.factory and section == "model" and path in tunable:
        return [
            f"{where}: {path} shapes rayml's MLP, which model.factory {cfg.model.factory!r} replaces; search the "
            f"network's own settings as {FACTORY_KWARGS_PREFIX}<name> instead"
        ]
    if path not in tunable:
        if cfg.model.is_tree and path in tunable_fields("mlp"):
            return [
                f"{where}: {path} trains rayml's MLP, but model.type is {cfg.model.type!r}; search the booster's own "
                f"settings instead (tunable: {', '.join(tunable)})"
            ]
        other = next((t for t in ("xgboost", "lightgbm") if path.startswith(f"model.{t}.") and t != cfg.model.type), None)
        if other:
            return [
                f"{where}: {path} is a setting of model.type {other}, but model.type is {cfg.model.type!r}; "
                f"tunable fields: {', '.join(tunable)}"
            ]
        exists = _container(cfg, path) is not None
        why = "is not tunable (it sets how or where a run happens, not the model)" if exists else "is not a config field"
        return [f"{where}: {path!r} {why}; tunable fields: {', '.join(tunable)}"]
    shape_problems = _dimension_problems(where, dim)
    if shape_problems:
        return shape_problems
    found = _container(cfg, path)
    assert found is not None, "every tunable path names a config field"
    section_cls, base, field = found
    if dim.type in _RANGE_TYPES:
        return _range_problems(where, path, dim, section_cls, base, field)
    return _normalise_values(where, path, dim, section_cls, base, field)


def _container(cfg: TuneJobConfig, path: str) -> tuple[type[BaseModel], BaseModel, str] | None:
    """(the config class holding the field ``path`` names, its configured value, the field name); None: no such field.

    ``train.learning_rate`` -> (TrainConfig, cfg.train, "learning_rate"); ``model.xgboost.max_depth`` ->
    (XGBoostSettings, cfg.model.xgboost, "max_depth").
    """
    parts = path.split(".")
    if len(parts) < 2 or parts[0] not in _TRAIN_SECTIONS:
        return None
    first, *middle, field = parts
    base: BaseModel = getattr(cfg, first)
    for name in middle:
        node = getattr(base, name, None) if name in type(base).model_fields else None
        if not isinstance(node, BaseModel):
            return None
        base = node
    cls = type(base)
    return (cls, base, field) if field in cls.model_fields else None


def _is_factory_kwarg(path: str) -> bool:
    return path.startswith(FACTORY_KWARGS_PREFIX) and path[len(FACTORY_KWARGS_PREFIX) :].isidentifier()


def _factory_kwarg_problems(cfg: TuneJobConfig, where: str, path: str, dim: SearchDimension) -> list[str]:
    """A keyword argument of the user's network: any name and value the function takes (it is called with them when
    each trial builds its model), so only the dimension's shape is checked here."""
    name = path[len(FACTORY_KWARGS_PREFIX) :]
    if not _is_factory_kwarg(path):
        return [f"{where}: {name!r} is not a keyword argument name; use {FACTORY_KWARGS_PREFIX}<python identifier>"]
    if cfg.model.factory is None:
        return [f"{where}: searches a keyword argument of model.factory, but model.factory is null; set model.factory"]
    return _dimension_problems(where, dim)


def _range_problems(
    where: str, path: str, dim: SearchDimension, section_cls: type[BaseModel], base: BaseModel, field: str
) -> list[str]:
    """A range must suit the field's type, and both bounds must be values the field accepts."""
    annotation = section_cls.model_fields[field].annotation
    if getattr(annotation, "__origin__", None) is list:
        return [f"{where}: {path} is a list; search it with `choice` or `grid` values, not {dim.type}"]
    if annotation is int and dim.type != "randint":
        return [f"{where}: {path} is an integer; use randint, choice or grid, not {dim.type}"]
    problems = []
    for bound in ("low", "high"):
        value = getattr(dim, bound)
        if value is not None:
            err = _field_value_error(section_cls, base, field, int(value) if annotation is int else value)[1]
            if err:
                problems.append(f"{where}: {bound}={value!r} is not a valid {path}: {err}")
    return problems


def _normalise_values(
    where: str, path: str, dim: SearchDimension, section_cls: type[BaseModel], base: BaseModel, field: str
) -> list[str]:
    """Every choice/grid value must be one the field accepts; valid ones are replaced, in place, by the coerced value."""
    problems = []
    normalised = []
    for value in dim.values or []:
        coerced, err = _field_value_error(section_cls, base, field, value)
        if err:
            problems.append(f"{where}: value {value!r} is not a valid {path}: {err}")
        normalised.append(coerced if err is None else value)
    # assign only on a change: the section validates assignments, and an unchanged list needs none
    if normalised != dim.values:
        dim.values = normalised
    return problems


def _searcher_problems(cfg: TuneJobConfig, tunable: list[str]) -> list[str]:
    """The searcher must be able to walk the space: Optuna cannot enumerate a grid, a grid search cannot sample."""
    t = cfg.tune
    known = {p: d for p, d in t.space.items() if p in tunable and d.type in _RANGE_TYPES + _VALUE_TYPES}
    problems = []
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
    return problems


def _metric_problems(cfg: TuneJobConfig) -> list[str]:
    """The metric must be one the training loop reports for the task, and the mode must agree with it."""
    t = cfg.tune
    problems = []
    allowed_metrics = (TREE_TUNE_METRICS if cfg.model.is_tree else TUNE_METRICS)[cfg.data.task]
    if t.metric not in allowed_metrics:
        kind = f"model.type {cfg.model.type!r} and " if cfg.model.is_tree else ""
        problems.append(
            f"tune.metric {t.metric!r} is not reported for {kind}data.task={cfg.data.task!r}; "
            f"choose one of {', '.join(allowed_metrics)}"
        )
    natural = "max" if t.metric in _MAXIMISED_METRICS else "min"
    if t.mode is not None and t.mode != natural:
        problems.append(f"tune.mode {t.mode!r} contradicts tune.metric {t.metric!r} (better is {natural}); leave mode unset")
    return problems


def _scheduler_problems(cfg: TuneJobConfig) -> list[str]:
    """ASHA's grace period must leave room to stop a trial before its last epoch."""
    t = cfg.tune
    if t.scheduler != "asha":
        return []
    try:
        max_epochs = cfg.max_epochs
    except (TypeError, ValueError):  # a bad epochs dimension is reported with its field
        return []
    if t.asha.grace_period > max_epochs:
        if cfg.model.is_tree:
            return [
                f"tune.asha.grace_period ({t.asha.grace_period}) is more than the most boosting rounds a trial runs "
                f"({max_epochs}); lower grace_period or raise model.{cfg.model.type}.num_boost_round"
            ]
        return [
            f"tune.asha.grace_period ({t.asha.grace_period}) is more than the most epochs a trial runs ({max_epochs}); "
            "lower grace_period or raise train.epochs"
        ]
    return []


def _dimension_problems(where: str, dim: SearchDimension) -> list[str]:
    """The dimension's own shape: a known type, with low/high for a range or a non-empty list of values."""
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
