"""From the validated ``tune.space`` to Ray Tune's ``param_space``, and from a trial's config back to a training config.

Trial configs are flat dicts keyed by dotted path (``{"train.learning_rate": 0.003}``). List-valued choices (such as
``model.hidden_sizes``) travel as JSON strings: Optuna only samples scalars, and a string also reads well in
result tables and MLflow params. :func:`decode` turns them back.
"""

from __future__ import annotations

import json
from typing import Any

from rayml.config import SearchDimension, TrainJobConfig, TuneJobConfig
from rayml.train import ALL, EXECUTION_FIELDS, RunIdentity, all_but


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _encoded_paths(cfg: TuneJobConfig) -> set[str]:
    return {p for p, d in cfg.tune.space.items() if d.values and not all(_is_scalar(v) for v in d.values)}


def _bounds(dim: SearchDimension) -> tuple[float, float]:
    """(low, high) of a range dimension: search_space_problems has checked that both are set."""
    assert dim.low is not None and dim.high is not None, "a range's low and high are checked when the config loads"
    return dim.low, dim.high


def _domain(dim: SearchDimension) -> Any:
    from ray import tune

    if dim.type == "uniform":
        return tune.uniform(*_bounds(dim))
    if dim.type == "loguniform":
        return tune.loguniform(*_bounds(dim))
    if dim.type == "randint":
        low, high = _bounds(dim)
        # rayml's randint includes `high` (as Optuna's suggest_int does); Ray's excludes it
        return tune.randint(int(low), int(high) + 1)
    raw = dim.values or []
    values = raw if all(_is_scalar(v) for v in raw) else [json.dumps(v) for v in raw]
    return tune.choice(values) if dim.type == "choice" else tune.grid_search(values)


def param_space(cfg: TuneJobConfig) -> dict[str, Any]:
    """Ray Tune's ``param_space`` for ``cfg.tune.space`` (keys are dotted config paths)."""
    return {path: _domain(dim) for path, dim in cfg.tune.space.items()}


def decode(cfg: TuneJobConfig, trial_config: dict[str, Any]) -> dict[str, Any]:
    """A trial's searched values by dotted path, with JSON-encoded list values decoded."""
    encoded = _encoded_paths(cfg)
    out = {}
    for path in cfg.tune.space:
        if path in trial_config:
            value = trial_config[path]
            out[path] = json.loads(value) if path in encoded and isinstance(value, str) else value
    return out


def trial_config(cfg: TuneJobConfig, values: dict[str, Any]) -> TrainJobConfig:
    """The training config of one trial: ``cfg`` without its tune section, with the searched fields replaced."""
    raw = cfg.model_dump(mode="json", exclude={"tune"})
    for path, value in values.items():
        *parents, leaf = path.split(".")  # model.factory_kwargs.width: a key of a dict field
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return TrainJobConfig.model_validate(raw)


def trial_epochs(cfg: TuneJobConfig, values: dict[str, Any]) -> int:
    """The epochs a trial is configured to run (its own train.epochs when that is searched); trees: boosting rounds."""
    return int(values.get(cfg.epochs_path, cfg.configured_epochs))


def format_value(value: Any) -> str:
    """A searched value for tables and MLflow params: compact floats, JSON for lists."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


# What defines a search's results: data, model, training and search settings. Not included: how and where trials
# run (the set `rayml train` leaves out of its run name), concurrency, and the name, which a resumed search may change.
SEARCH_IDENTITY = RunIdentity(
    {
        "data": ALL,
        "model": ALL,
        "train": all_but(*EXECUTION_FIELDS, "run_name"),
        "tune": all_but("name", "max_concurrent_trials"),
    }
)


def search_identity(cfg: TuneJobConfig, data_fingerprint: str) -> dict[str, Any]:
    """The values :data:`SEARCH_IDENTITY` takes of ``cfg`` (stored with the search, to name what changed on resume)."""
    return SEARCH_IDENTITY.of(cfg, data_fingerprint)


def search_name_for(cfg: TuneJobConfig, data_fingerprint: str) -> str:
    """``tune.name``, or ``<model>-tune-<digest of SEARCH_IDENTITY>``: the same command finds the same search."""
    if cfg.tune.name:
        return cfg.tune.name
    return f"{cfg.model.name}-tune-{SEARCH_IDENTITY.digest(cfg, data_fingerprint)}"


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two :func:`search_identity` dicts."""

    def flat(prefix: str, d: Any, out: dict[str, Any]) -> dict[str, Any]:
        if isinstance(d, dict):
            for k, v in d.items():
                flat(f"{prefix}.{k}" if prefix else str(k), v, out)
        else:
            out[prefix] = d
        return out

    a, b = flat("", old, {}), flat("", new, {})
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
