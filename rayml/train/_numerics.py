"""Numerical stability: a training run that meets a NaN or infinite loss stops with a clear error.

The MLP loop checks every mini-batch's training loss and every epoch's validation loss; the tree loop checks every
boosting round's validation loss. A non-finite value stops the loop before that epoch (round) is checkpointed, so
nothing that diverged is kept or registered.

How the error reaches the caller depends on where the loop runs. In-process (``train.in_process``, a Tune trial) it
is raised right there, at the batch that diverged. In a Ray Train worker of ``rayml train`` it is not raised: Ray
Train restarts a failed worker group ``train.max_failures`` times (forever with -1) and a diverged run diverges again
from the same checkpoint, so the worker function returns a :func:`diverged_report` instead (rank 0's return value is
the result's ``return_value``) and the driver raises the same error (:func:`raise_if_diverged`). Every rank stops at
the same epoch (under DDP they agree first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rayml.errors import TrainingDivergedError, TrainingError

DIVERGED = "diverged"  # 1 when the loop stopped on a non-finite loss: in a diverged report, and an MLflow metric
_MESSAGE, _HINT = "diverged_message", "diverged_hint"


def non_finite_loss(
    what: str, value: float, *, step: str, learning_rate: float | None = None, last_good: int = 0, unit: str = "epoch"
) -> TrainingDivergedError:
    """The error for a non-finite ``what`` loss (``training`` | ``validation``).

    Args:
        value: the loss (NaN, inf or -inf).
        step: where it happened, e.g. ``"epoch 3, batch 17"`` or ``"round 40"``.
        learning_rate: the learning rate in use (named in the hint).
        last_good: the last epoch (round) that was checkpointed; 0 when none.
        unit: ``epoch`` (MLP) or ``round`` (trees), for the message.
    """
    kept = (
        f"the checkpoint of {unit} {last_good} is the last one kept"
        if last_good
        else f"no {unit} was checkpointed, nothing is registered"
    )
    lr = f" (now {learning_rate:g})" if learning_rate is not None else ""
    return TrainingDivergedError(
        f"training diverged: the {what} loss is {value} at {step}; training stopped before checkpointing it ({kept})",
        hint=f"lower the learning rate{lr}; check the input columns and the target for huge or infinite values; "
        "a model.factory network: look for overflow in its forward pass (exp, log, division). "
        "Debug it step by step with `rayml train --in-process`",
    )


def diverged_report(error: TrainingError, step: int) -> dict[str, Any]:
    """What a Ray Train worker function returns instead of raising ``error``: ``step`` is the epoch (round)."""
    return {"epoch": step, DIVERGED: 1, _MESSAGE: error.message, _HINT: error.hint or ""}


def raise_if_diverged(returned: Any) -> None:
    """Raise the worker's error when ``returned`` (a Ray Train result's ``return_value``) is a :func:`diverged_report`.

    Raises:
        TrainingDivergedError: the loop stopped on a non-finite loss.
    """
    if isinstance(returned, Mapping) and returned.get(DIVERGED):
        raise TrainingDivergedError(str(returned.get(_MESSAGE, "training diverged")), hint=str(returned.get(_HINT)) or None)
