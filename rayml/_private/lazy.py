"""PEP 562 lazy attributes for package ``__init__`` modules: heavy imports (torch, Ray Train) happen on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, tuple[str, str]], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that imports ``names[attr] = (module, attribute)`` when first asked for.

    Args:
        package: the package's name, for the error message.
        names: attribute -> (module to import, attribute of that module).
        namespace: the package's ``globals()``: the value is cached there, so later lookups skip ``__getattr__``.

    Example:
        >>> __getattr__ = lazy_getattr(__name__, {"build_model": ("rayml.models.mlp", "build_model")}, globals())
    """

    def __getattr__(name: str) -> Any:
        where = names.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[0]), where[1])
        namespace[name] = value
        return value

    return __getattr__
