"""One resumable run: what ``rayml train``, ``rayml tune`` and ``rayml manymodels train`` share about the run that a
rerun of the same command must find again, record and close.

Identity. A run is named after what determines its result, so the same command on the same data finds the same run
(its checkpoints, its state file, its MLflow run) and resumes it; new data or a changed setting that alters the
result names a new run. :class:`RunIdentity` states, per caller, which config sections and which of their fields
count; the digest is the first hex digits of the SHA-256 of their JSON (``sort_keys``) plus the data fingerprint.
Each caller's rule is frozen: changing it renames every existing run, so an interrupted one would start over.

- train: data, model, and train less how it runs (storage, run name, retries, checkpoints kept, controller polling,
  in-process); named ``<model>-<10 hex digits>`` (``train.run_name`` overrides). State ``<storage>/<run>/rayml_run.json``.
- tune: data, model, train as for train, and tune less its name and concurrency; named ``<model>-tune-<10 hex>``
  (``tune.name`` overrides). State ``<storage>/tune/<name>/rayml_tune.json``, which also keeps the identity itself so a
  ``--resume`` with another config can say what changed.
- manymodels: data, model, the train fields a segment model depends on (epochs, batch size, learning rate, weight
  decay, seed, early stopping) and the manymodels fields the set depends on (min rows, candidates, fallback, the global
  model's rows and batch size); named ``<model>-<10 hex>``. State ``<storage>/manymodels/<run>/rayml_manymodels.json``.
- pipeline: data, model, train less storage, retries, checkpoints kept, controller polling and in-process (the run
  name counts: it names the training run the pipeline reuses), and tune; the run id is 12 hex digits. Its state is
  the pipeline's own ``state.json`` (stages); it shares the identity rule and :func:`create_or_resume_run`.

State. :class:`ResumableRun` keeps one JSON state file per run (rewritten atomically: temp file, then move): its
status (``running`` -> ``registered`` / ``trained`` / ``finished``, or ``failed``), the MLflow run id, the run name
and what the caller adds (metrics, summary, registered version ...). A rerun reads it to resume the MLflow run, or
to return at once when the run already registered its model.

MLflow. The run's MLflow run is created on the first attempt (lineage tags, ``rayml.run_id``, the config as
params) and set RUNNING again by every later one. It ends FINISHED, or FAILED with the reason in tag
``rayml.failure``; either way with its wall time in metric ``train_time_s`` and the outcome recorded for Prometheus
(:func:`rayml.monitor.training.record_training_outcome`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rayml._private import fs
from rayml.monitor.training import TrainingOutcome, record_training_outcome
from rayml.registry import ModelVersionInfo, Registry

logger = logging.getLogger("rayml.train")

# How a training run executes, not what it computes: changing these resumes the same run (an in-process debug run
# continues the checkpoints of a Ray run of the same config, and the other way round). A field added to the train
# section must be listed here unless it changes the result, or every existing run would be renamed.
EXECUTION_FIELDS = frozenset(
    {"storage_path", "max_failures", "checkpoint_num_to_keep", "controller_poll_interval_s", "in_process"}
)


@dataclass(frozen=True)
class Fields:
    """Which fields of one config section enter a run's identity: ``include`` (None: every field) less ``exclude``."""

    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()


ALL = Fields()


def only(*names: str) -> Fields:
    return Fields(include=frozenset(names))


def all_but(*names: str) -> Fields:
    return Fields(exclude=frozenset(names))


@dataclass(frozen=True)
class RunIdentity:
    """A caller's rule for what names its runs (see the module docstring for each caller's).

    Args:
        sections: config section (attribute of the job config) -> the fields of it that count. A section that is
            None in a config (an optional ``tune``) counts as None.
        digits: hex digits of the digest.

    Example:
        >>> TRAIN = RunIdentity({"data": ALL, "model": ALL, "train": all_but("storage_path", "run_name")})
        >>> TRAIN.digest(cfg, data_fingerprint)
        '3f9a0c51d2'
    """

    sections: Mapping[str, Fields]
    digits: int = 10

    def of(self, cfg: BaseModel, data_fingerprint: str) -> dict[str, Any]:
        """The JSON-able values the digest is taken of (tune stores it to tell a changed config on ``--resume``)."""
        out: dict[str, Any] = {}
        for name, fields in self.sections.items():
            section = getattr(cfg, name)
            out[name] = (
                None
                if section is None
                else section.model_dump(
                    mode="json",
                    include=set(fields.include) if fields.include is not None else None,
                    exclude=set(fields.exclude) or None,
                )
            )
        _drop_inactive(out)
        out["fingerprint"] = data_fingerprint
        return out

    def digest(self, cfg: BaseModel, data_fingerprint: str) -> str:
        return identity_digest(self.of(cfg, data_fingerprint), self.digits)


# Settings that cannot apply to an MLP (they are refused unless at their defaults, see rayml.config.train): they do not
# name an MLP's run, so the runs of every MLP named before tree models existed keep their names and still resume.
_TREE_ONLY = {"model": ("type", "xgboost", "lightgbm"), "train": ("checkpoint_every_rounds",)}


# The feature policy (data.*): forbidden_features only refuses, it never changes what a run computes; the sensitive
# settings change the reference statistics only when set. Left out when they cannot matter, so runs named before the
# policy existed keep their names and still resume.
_POLICY_ONLY_WHEN_SET = ("sensitive_columns", "allow_sensitive_in")


def _drop_inactive(identity: dict[str, Any]) -> None:
    data = identity.get("data")
    if isinstance(data, dict):
        data.pop("forbidden_features", None)
        for key in _POLICY_ONLY_WHEN_SET:
            if not data.get(key):
                data.pop(key, None)
    model = identity.get("model")
    if isinstance(model, dict) and model.get("type", "mlp") == "mlp":
        for section, keys in _TREE_ONLY.items():
            values = identity.get(section)
            if isinstance(values, dict):
                for key in keys:
                    values.pop(key, None)
    candidates = (identity.get("manymodels") or {}).get("candidates")
    for c in candidates if isinstance(candidates, list) else []:
        if isinstance(c, dict):  # a candidate's unset tree sections: as before candidates could have them
            for key in ("xgboost", "lightgbm"):
                if c.get(key) is None:
                    c.pop(key, None)


def identity_digest(identity: Mapping[str, Any], digits: int = 10) -> str:
    """The first ``digits`` hex digits of the SHA-256 of ``identity`` as sorted JSON (the one hash every run name uses)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:digits]


def config_params(cfg: BaseModel, keep_whole: Callable[[str], bool] | None = None) -> dict[str, str]:
    """A job config as MLflow params: dotted keys; lists (and the dicts ``keep_whole`` names) as JSON; the rest as str.

    The ``registry`` section is left out: it says where the run is recorded, not what it computes.
    """
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and not (keep_whole and prefix and keep_whole(prefix)):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)

    walk("", cfg.model_dump(mode="json", exclude={"registry": True}))
    return out


def create_or_resume_run(
    registry: Registry,
    run_id: str | None,
    *,
    experiment: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    tag_own_id: bool = True,
) -> tuple[str, bool]:
    """Set ``run_id`` RUNNING again when it still exists in ``registry``, else create a run.

    Args:
        run_id: the MLflow run an earlier attempt recorded (None: the first attempt).
        tags, params: for a new run only (a resumed run keeps its own).
        tag_own_id: tag a new run with its own id (``rayml.run_id``), as its lineage tags promise.

    Returns:
        (the MLflow run id, whether it was resumed).
    """
    if run_id and registry.run_exists(run_id):
        registry.set_run_running(run_id)
        return run_id, True
    run_id = registry.create_run(experiment, name, tags=dict(tags))
    if tag_own_id:
        registry.set_run_tags(run_id, {"rayml.run_id": run_id})
    if params:
        registry.log_params(run_id, params)
    return run_id, False


class ResumableRun:
    """One run that a rerun of the same command continues: its state file, its MLflow run and its outcome.

    Lifecycle: construct (reads the state file), :meth:`registered_version` (a finished run returns at once), then
    :meth:`start` (MLflow run created or resumed, state ``running``), the work, and :meth:`finish` or :meth:`fail`.

    Args:
        kind: ``train`` | ``tune`` | ``manymodels`` (the ``kind`` label of the outcome metrics).
        model: the model name (the ``model`` label).
        name: the run name (from the caller's :class:`RunIdentity`).
        state_path: the state file (local path or pyarrow URI).
        started: ``time.perf_counter()`` when the command started (the run's wall time counts from there).
        run_id_key, name_key: the state file's fields for the MLflow run id and the run name.
        keep_state: every write keeps the fields of the previous state it does not set (tune keeps its trials).

    Example:
        >>> run = ResumableRun("train", "sales-model", name, f"{storage}/{name}/rayml_run.json", started=t0)
        >>> run.start(registry, "rayml", tags=lineage, params=config_params(cfg))
        >>> run.finish("registered", model_name="sales-model", model_version=3)
    """

    def __init__(
        self,
        kind: str,
        model: str,
        name: str,
        state_path: str,
        *,
        started: float | None = None,
        run_id_key: str = "mlflow_run_id",
        name_key: str = "run_name",
        keep_state: bool = False,
    ) -> None:
        self.kind, self.model, self.name, self.state_path = kind, model, name, state_path
        self.started = time.perf_counter() if started is None else started
        self.run_id_key, self.name_key, self.keep_state = run_id_key, name_key, keep_state
        self.saved: dict[str, Any] | None = fs.read_json(state_path)  # as an earlier attempt left it; None: no state
        self.state: dict[str, Any] = dict(self.saved or {})
        self.registry: Registry | None = None
        self.run_id: str | None = None
        self.resumed = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def registered_version(self, registry: Registry) -> ModelVersionInfo | None:
        """The version an earlier attempt registered (then nothing is left to do); None when it did not."""
        if self.state.get("status") != "registered":
            return None
        return registry.get_version(self.state["model_name"], int(self.state["model_version"]))

    def start(
        self,
        registry: Registry,
        experiment: str,
        *,
        tags: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> str:
        """Resume the MLflow run the state file names, or create one (with ``tags`` and ``params``); state ``running``.

        Args:
            state: more fields for the state file (tune's identity).

        Returns:
            The MLflow run id.
        """
        self.registry = registry
        self.run_id, self.resumed = create_or_resume_run(
            registry, self.state.get(self.run_id_key), experiment=experiment, name=self.name, tags=tags, params=params
        )
        if self.resumed:
            logger.info("resuming run %s (MLflow run %s)", self.name, self.run_id)
        self.write_state("running", **(state or {}))
        return self.run_id

    def write_state(self, status: str, /, **fields: Any) -> None:
        """Rewrite the state file atomically: ``status``, the run name and MLflow run id, and ``fields``."""
        base = self.state if self.keep_state else {}
        self.state = {**base, "status": status, self.name_key: self.name, self.run_id_key: self.run_id, **fields}
        fs.write_json(self.state_path, self.state)

    def finish(self, status: str, /, *, duration_s: float | None = None, **fields: Any) -> None:
        """The run succeeded: ``train_time_s`` logged, MLflow run FINISHED, state ``status`` with ``fields``, and a
        successful outcome recorded for Prometheus.

        Args:
            status: the final state (``registered``, ``trained``, ``finished``).
            duration_s: the wall time to report; None = since ``started``.
        """
        registry, run_id = self._opened()
        duration = self.elapsed() if duration_s is None else duration_s
        registry.log_metrics(run_id, {"train_time_s": duration})
        registry.end_run(run_id, "FINISHED")
        self.write_state(status, **fields)
        self._record(True, duration, None)

    def fail(self, reason: str, /, **fields: Any) -> None:
        """The run failed: MLflow run FAILED with ``train_time_s`` and tag ``rayml.failure`` = ``reason`` (best effort:
        the caller's error is what the user needs), state ``failed`` with ``fields`` (e.g. ``error``), and the outcome
        recorded."""
        registry, run_id = self._opened()
        duration = self.elapsed()
        try:
            registry.log_metrics(run_id, {"train_time_s": duration})
            registry.set_run_tags(run_id, {"rayml.failure": reason[:4000]})
            registry.end_run(run_id, "FAILED")
        except Exception as e:
            logger.warning("could not mark MLflow run %s as failed: %s", run_id, e)
        self.write_state("failed", **fields)
        self._record(False, duration, reason[:500])

    def _opened(self) -> tuple[Registry, str]:
        if self.registry is None or self.run_id is None:
            raise RuntimeError(f"run {self.name!r}: start() was not called")  # a bug in rayml, not a user error
        return self.registry, self.run_id

    def _record(self, ok: bool, duration: float, error: str | None) -> None:
        registry, run_id = self._opened()
        outcome = TrainingOutcome(self.model, self.kind, ok, duration, time.time(), run_id, error)
        record_training_outcome(outcome, registry.tracking_uri)
