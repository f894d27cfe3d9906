"""The RaymlError hierarchy.

Every error a user can cause is a subclass of :class:`UserError`: its message says what was wrong (the value),
what is allowed, and carries a ``hint`` on how to fix it. The CLI prints these without a traceback and exits 2;
serving maps them to 4xx. Anything else is a bug or an infrastructure failure.
"""

from __future__ import annotations


class RaymlError(Exception):
    """Root of every error rayml raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nHint: {self.hint}"
        return self.message


class UserError(RaymlError):
    """Something the user can fix: bad config, bad data, an unknown model name."""


# --- configuration -----------------------------------------------------------------------------------------------
class ConfigError(UserError):
    """A config file or a --set override is invalid."""


# --- data ----------------------------------------------------------------------------------------------------------
class DataError(UserError):
    """Data cannot be read or does not fit what is expected."""


class DataValidationError(DataError):
    """Data does not match a schema; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[str], hint: str | None = None, source: str | None = None) -> None:
        self.problems = list(problems)
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} data problem(s){where}:\n{lines}", hint)


# --- models --------------------------------------------------------------------------------------------------------
class ModelError(RaymlError):
    """A model cannot be built, exported or loaded."""


class OnnxParityError(ModelError):
    """The exported ONNX graph does not reproduce the original model's outputs (rayml's torch export, or a model
    imported with ``rayml.register_model``: the message lists the worst rows)."""


class InvalidModelDirError(ModelError):
    """A model directory lacks a required file, or its metadata is not valid JSON (see ``rayml.models.ModelDir``)."""


class UnsupportedModelError(UserError):
    """A model to import (``rayml.register_model``, ``rayml models register``) cannot be converted: its type, a part
    of it, its file format or its inputs and outputs are not supported; the message names the part."""


class PredictionInputError(UserError):
    """Input rows given to a predictor do not match the model's signature."""


# --- training ------------------------------------------------------------------------------------------------------
class TrainingError(RaymlError):
    """A training run failed (after its retries)."""


class TrainingDivergedError(TrainingError):
    """The loss became NaN or infinite: the same run would diverge again, so it is never retried."""


# --- registry ------------------------------------------------------------------------------------------------------
class RegistryError(RaymlError):
    """The model registry refused or failed an operation."""


class InvalidNameError(UserError):
    """A model name, alias or version does not have an allowed form."""


class ModelNotFoundError(UserError):
    """A model name, alias or version does not exist in the registry."""


# --- serving -------------------------------------------------------------------------------------------------------
class ServeDeployError(RaymlError):
    """Serve could not bring the application up (e.g. a replica constructor failed); the message says why."""


class ServeNotRunningError(UserError):
    """No Ray with a rayml application could be found."""


# --- local state ---------------------------------------------------------------------------------------------------
class UnsafePathError(UserError):
    """A private directory or file rayml would trust (a serving Ray's temp dir, a token, a salt) is owned by another
    user or writable by others; rayml refuses to use it rather than trust what someone else may have put there."""


# --- concurrent writers --------------------------------------------------------------------------------------------
class ConflictError(UserError):
    """Shared state changed under a writer, or another live process owns it: the writer stops rather than undo
    someone else's change (the message names the other writer; the hint says how to go on)."""


class SpecConflictError(ConflictError):
    """The Serve application's spec changed (or is being changed) since this writer read it (compare-and-swap)."""


class RolloutActiveError(ConflictError):
    """A change would undo the traffic split of a rollout under way (``rayml serve up --force`` ends it first)."""


class LeaseHeldError(ConflictError):
    """A live process holds the lease of a pipeline run or a batch output folder (owner and heartbeat in the message)."""
