"""What every config section shares: the strict base model and the one rule for names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

# The characters of a name (model, alias, app, run, search, pipeline). The registry matches the same pattern.
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
_NAME_RE = re.compile(NAME_PATTERN)
# "." and ".." match the pattern but name the current and parent folder once a name becomes a path.
_PATH_NAMES = (".", "..")


def check_name(value: str) -> str:
    """Check a name: letters, digits, ``_``, ``.`` and ``-`` only, and not ``.`` or ``..``.

    Names become paths (checkpoint folders, rollout state), URLs and MLflow names, so nothing else may reach them.

    Args:
        value: the name to check.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: the name is empty, has another character, or is ``.`` / ``..`` (pydantic reports it with the
            field's location and the value).
    """
    # fullmatch, not match: `$` also matches before a trailing newline, which would let "name\n" through
    if not _NAME_RE.fullmatch(value) or value in _PATH_NAMES:
        raise ValueError(
            f"name {value!r} is not allowed: it may only contain letters, digits, '_', '.' and '-', and may not be '.' "
            "or '..' (e.g. sales-model, production)"
        )
    return value


Name = Annotated[str, AfterValidator(check_name)]
"""A string that passes :func:`check_name`; use it as the type of every config field that holds a name."""


class _Section(BaseModel):
    """Base of every config section: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
