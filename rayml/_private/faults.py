"""Test-only fault injection: training and batch through ``RAYML_FAULT_INJECT``, serving through a process hook.

Training and batch (``RAYML_FAULT_INJECT`` on the driver). Grammar: comma-separated ``kind@key=value`` items, e.g.
``kill_worker@epoch=3`` (SIGKILL the rank-0 worker half-way through epoch 3), ``raise@epoch=3`` (raise in the train
loop), ``sleep@seconds=0.5`` (sleep after every epoch, to give a test time to kill the driver between checkpoints).
Trees (``model.type`` xgboost | lightgbm) count boosting rounds instead of epochs: ``kill_worker@round=7`` and
``raise@round=7`` fire on rank 0 right after round 7 (1-based) is boosted, ``sleep@seconds=S`` sleeps after every round.
A kill/raise fires once per driver invocation: a marker file makes the restarted worker group run clean, as a real
transient failure would.

Serving (``rayml.testing.serve_faults``, the documented entry point): per ``"name:version"``, ``raise`` (every
prediction raises), ``sleep:S`` (sleep S seconds before predicting) or ``scale:K`` (outputs times K). They live in
the process that deploys; the deploying code hands each version's fault to its replicas as a private ``_fault`` init
argument, and to the rollout controller actor (the other process that redeploys the application), so a redeploy
from there keeps them. Nothing in a config or a public signature reaches them.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from rayml.errors import ConfigError

_KINDS = {"kill_worker", "raise", "sleep"}


@dataclass(frozen=True)
class Fault:
    kind: str
    epoch: int = 0
    seconds: float = 0.0
    round: int | None = None  # trees: after this boosting round (1-based); None: an epoch fault


def parse(spec: str | None) -> list[Fault]:
    if not spec:
        return []
    faults = []
    for item in spec.split(","):
        item = item.strip()
        kind, _, params = item.partition("@")
        if kind not in _KINDS:
            raise ConfigError(f"RAYML_FAULT_INJECT item {item!r}: unknown kind {kind!r}", hint=f"kinds: {sorted(_KINDS)}")
        kwargs: dict[str, float] = {}
        for kv in filter(None, params.split(";")):
            k, _, v = kv.partition("=")
            if k not in ("epoch", "round", "seconds"):
                raise ConfigError(f"RAYML_FAULT_INJECT item {item!r}: unknown key {k!r}", hint="keys: epoch, round, seconds")
            try:
                kwargs[k] = float(v)
            except ValueError as e:
                raise ConfigError(
                    f"RAYML_FAULT_INJECT item {item!r}: {k}={v!r} is not a number", hint="e.g. kill_worker@round=7"
                ) from e
        rnd = kwargs.get("round")
        faults.append(
            Fault(
                kind,
                epoch=int(kwargs.get("epoch", 0)),
                seconds=kwargs.get("seconds", 0.0),
                round=int(rnd) if rnd is not None else None,
            )
        )
    return faults


def _claim(marker: str) -> bool:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def mid_epoch(faults: list[Fault], epoch: int, rank: int, marker: str) -> None:
    """Called half-way through an epoch."""
    for f in faults:
        if (
            f.kind in ("kill_worker", "raise")
            and f.round is None
            and f.epoch == epoch
            and rank == 0
            and _claim(f"{marker}.{f.kind}")
        ):
            if f.kind == "kill_worker":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure in epoch {epoch} (RAYML_FAULT_INJECT)")


def after_round(faults: list[Fault], round_: int, rank: int, marker: str) -> None:
    """Called by the tree loop after boosting round ``round_`` (1-based): round faults fire, sleeps sleep."""
    for f in faults:
        if f.kind == "sleep":
            time.sleep(f.seconds)
        elif f.round == round_ and rank == 0 and _claim(f"{marker}.{f.kind}"):
            if f.kind == "kill_worker":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure after round {round_} (RAYML_FAULT_INJECT)")


def end_of_epoch(faults: list[Fault]) -> None:
    for f in faults:
        if f.kind == "sleep":
            time.sleep(f.seconds)


# --- serving -------------------------------------------------------------------------------------------------------
_SERVE_KINDS = ("raise", "sleep", "scale")
_SERVE_HINT = 'faults are {"NAME:VERSION": "raise" | "sleep:SECONDS" | "scale:FACTOR"}'
_serve_faults: dict[str, str] = {}


def parse_serve_fault(fault: str | None) -> tuple[str, float]:
    """``raise`` | ``sleep:S`` | ``scale:K`` -> (kind, value); ('', 0) for none."""
    if not fault:
        return "", 0.0
    kind, _, value = fault.partition(":")
    try:
        number = float(value or 0.0)
    except ValueError:
        number = None
    if kind not in _SERVE_KINDS or number is None:
        raise ConfigError(f"unknown serve fault {fault!r}", hint=_SERVE_HINT)
    return kind, number


def set_serve_faults(faults: dict[str, str]) -> dict[str, str]:
    """Replace this process's serve faults (all checked first); returns the previous ones."""
    global _serve_faults
    for key, fault in faults.items():
        name, _, version = key.rpartition(":")
        if not name or not version.isdigit():
            raise ConfigError(f"serve fault key {key!r} is not NAME:VERSION", hint=_SERVE_HINT)
        parse_serve_fault(fault)
    previous, _serve_faults = _serve_faults, dict(faults)
    return previous


def serve_faults() -> dict[str, str]:
    """This process's serve faults (a copy)."""
    return dict(_serve_faults)


def serve_fault(model: str, version: int) -> str | None:
    """The fault the replicas of ``model:version`` get, if any."""
    return _serve_faults.get(f"{model}:{version}")
