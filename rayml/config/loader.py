"""Loading a config: YAML, then ``--set a.b=c`` overrides, validated by the job's model with every problem listed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

from rayml.errors import ConfigError

C = TypeVar("C", bound=BaseModel)

#: What every Python entry point (``rayml.train``, ``tune``, ``train_model_set``, ``run_batch``, ``deploy``,
#: ``run_pipeline``) takes as its config: the job's config object, a YAML path, a dict shaped like the YAML, or None
#: for the defaults.
ConfigLike = Union[BaseModel, str, Path, Mapping[str, Any], None]
#: Overrides applied on top, as ``{"train.epochs": 3}`` (values as they are) or ``["train.epochs=3"]`` (``--set``).
Overrides = Union[Mapping[str, Any], Sequence[str], None]


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
        why = "" if _shown(item) != item else f" ({e})"  # YAML's message quotes the value
        raise ConfigError(
            f"--set {_shown(item)!r}: the value is not valid YAML{why}", hint="quote strings with special characters"
        ) from None if why == "" else e
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested dict, in place."""
    for item in overrides or []:
        path, value = _parse_override(item)
        _set_path(raw, path, value, f"--set {_shown(item)!r}")
    return raw


def _shown(item: str) -> str:
    """An override as an error may quote it: the value hidden when the key names a secret (``serve.api_keys=...``)."""
    key, sep, _ = item.partition("=")
    return f"{key}=**********" if sep and _is_secret(tuple(key.strip().split("."))) else item


def _set_path(raw: dict[str, Any], path: list[str], value: Any, what: str) -> None:
    """Set ``raw[path[0]][path[1]]... = value``, creating sections; a value in the way is an error naming ``what``."""
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{what}: {part!r} is a value, not a section", hint="check the key path")
        node = child
    node[path[-1]] = value


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
            if _is_secret(e["loc"]):
                got_s = " (the value is a secret: not shown)"
            problems.append(f"{loc or '<root>'}: {e['msg']}{got_s}")
    lines = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(
        f"invalid config {source}: {len(problems)} problem(s):\n{lines}",
        hint="fix the fields above in the YAML or the --set overrides; `rayml <command> --help` documents them",
    )


_SECRET_FIELDS = {"key", "api_keys", "token", "password", "secret"}


def _is_secret(loc: tuple[Any, ...]) -> bool:
    """Whether a validation error is about a secret (an API key), whose value an error message must not repeat."""
    return any(str(part) in _SECRET_FIELDS for part in loc)


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
        cls: the job config model, e.g. :class:`~rayml.config.TrainJobConfig`.
        path: YAML file; None = defaults only.
        overrides: ``a.b=c`` strings applied after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is missing or not YAML, or any field is invalid (all problems listed at once).
    """
    raw, source = _read_yaml(cls, path)
    apply_overrides(raw, overrides)
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise _format_validation_error(cls, e, source) from e


def _read_yaml(cls: type[BaseModel], path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The YAML file's mapping (``{}`` for None) and how to name it in errors."""
    if path is None:
        return {}, "<defaults>"
    p = Path(path)
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
    return loaded, str(p)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise ConfigError(f"override key {key!r} has an empty part", hint="write keys as section.field, e.g. train.epochs")
    _set_path(raw, parts, value, f"override {key!r}")


def resolve_config(cls: type[C], config: ConfigLike = None, overrides: Overrides = None) -> C:
    """The one way every Python entry point reads its config: an object, a YAML path or a dict, plus overrides.

    Merge order is the CLI's: defaults < ``config`` < ``overrides``.

    Args:
        cls: the job config model the entry point needs, e.g. :class:`~rayml.config.TrainJobConfig`.
        config: an instance of ``cls`` (used as is when there are no overrides), a YAML file path, a dict shaped like
            the YAML file, or None for the defaults.
        overrides: ``{"train.epochs": 3}`` (values used as they are) or ``["train.epochs=3"]`` (parsed like ``--set``).

    Returns:
        The validated config.

    Raises:
        ConfigError: a config of another job type, a missing file, or invalid fields (every problem listed at once).

    Example:
        >>> cfg = resolve_config(TrainJobConfig, "jobs/configs/train.yaml", {"train.epochs": 3})
    """
    if isinstance(config, BaseModel) and not isinstance(config, cls):
        raise ConfigError(
            f"expected a {cls.__name__} (or a YAML path or dict), got a {type(config).__name__}",
            hint=f"build it with rayml.config.load_config({cls.__name__}, path) or pass the YAML path",
        )
    if isinstance(config, cls) and not overrides:
        return config
    if config is None or isinstance(config, (str, Path)):
        raw, source = _read_yaml(cls, config)
    elif isinstance(config, BaseModel):
        raw, source = config.model_dump(exclude_unset=True), f"<{cls.__name__} object>"
    elif isinstance(config, Mapping):
        raw, source = _plain(config), "<dict>"
    else:
        raise ConfigError(
            f"config must be a {cls.__name__}, a YAML path or a dict, got {type(config).__name__}",
            hint="e.g. rayml.train_model('jobs/configs/train.yaml', overrides={'train.epochs': 3})",
        )
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            _set_dotted(raw, str(key), value)
    elif isinstance(overrides, str):
        raise ConfigError(
            f"overrides must be a dict or a list of 'key=value' strings, got the string {overrides!r}",
            hint=f"write overrides=[{overrides!r}]",
        )
    elif overrides:
        apply_overrides(raw, list(overrides))
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise _format_validation_error(cls, e, source) from e


def _plain(value: Any) -> Any:
    """A deep copy of nested mappings as plain dicts (overrides must not write into the caller's dict)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (logged once by every job)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
