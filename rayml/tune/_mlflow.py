"""MLflow for a search: one parent run, and one child run per trial written by a driver-side Tune callback.

The callback runs in the Tune driver, so trials never talk to the tracking server (no SQLite write contention
between trial processes, and no MLflow client in every trial). It is pickled into Tune's experiment state and comes
back with ``Tuner.restore``; on setup it finds the child runs that already exist (by tag), so a resumed search
continues the same runs instead of opening new ones.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from rayml.config import TuneJobConfig
from rayml.registry import Registry
from rayml.tune._report import KILLED, classify
from rayml.tune._space import decode, format_value, trial_epochs

if TYPE_CHECKING:
    from ray.tune.stopper import Stopper

logger = logging.getLogger("rayml.tune")

PARENT_TAG = "mlflow.parentRunId"
SEARCH_TAG = "rayml.tune_search_id"
TRIAL_TAG = "rayml.tune_trial_id"
_LOGGED = ("train_loss", "epoch_time_s", "early_stopped", "resumed_from_epoch")


def child_runs(registry: Registry, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """trial id -> MLflow run id of the search's child runs."""
    runs = registry.search_runs(experiment_id, {PARENT_TAG: parent_run_id}, max_results=50_000)
    return {r.tags[TRIAL_TAG]: r.run_id for r in runs if TRIAL_TAG in r.tags}


class MlflowTrialCallback(Callback):
    """Creates a child run per trial (params = the trial's searched values), logs every epoch's metrics with
    ``step=epoch``, and closes the run as FINISHED, KILLED (stopped early by ASHA) or FAILED.

    Tracking is best effort: an MLflow error is logged as a warning and never stops the search.
    """

    def __init__(self, cfg: TuneJobConfig, tracking_uri: str, experiment_id: str, parent_run_id: str, search_name: str):
        self.cfg = cfg
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.search_name = search_name
        self._registry: Registry | None = None
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        # the MLflow client holds a DB engine: rebuilt after unpickling (Tune pickles callbacks into its state)
        state = self.__dict__.copy()
        state["_registry"] = None
        return state

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.tracking_uri)
        return self._registry

    def setup(
        self, stop: Stopper | None = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any
    ) -> None:
        try:
            self._runs = child_runs(self.registry, self.experiment_id, self.parent_run_id)
            for trial_id, run_id in self._runs.items():
                last = self.registry.get_run(run_id).metrics.get("epoch")
                self._last_epoch[trial_id] = int(last) if last is not None else 0
        except Exception as e:
            logger.warning("could not read the search's MLflow child runs: %s", e)

    def _run_id(self, trial: Any) -> str:
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        tags = {
            PARENT_TAG: self.parent_run_id,
            SEARCH_TAG: self.search_name,
            TRIAL_TAG: trial_id,
            "rayml.trial_dir": str(getattr(trial, "path", "") or ""),
        }
        run_id = self.registry.create_run(self.cfg.registry.experiment, f"{self.search_name}-{trial_id}", tags=tags)
        params = {p: format_value(v) for p, v in decode(self.cfg, trial.config).items()}
        self.registry.log_params(run_id, {**params, "trial_id": trial_id})
        self._runs[trial_id] = run_id
        self._last_epoch[trial_id] = 0
        return run_id

    def _safely(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # tracking must never stop the search
            logger.warning("MLflow: could not %s: %s", what, e)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("open the trial's run", self._start, trial)

    def _start(self, trial: Any) -> None:
        run_id = self._run_id(trial)
        if run_id and self.registry.get_run(run_id).status != "RUNNING":
            self.registry.set_run_running(run_id)  # a resumed trial

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._safely("log epoch metrics", self._log_result, trial, result)

    def _log_result(self, trial: Any, result: dict) -> None:
        epoch = result.get("epoch")
        if not isinstance(epoch, (int, float)):
            return
        epoch = int(epoch)
        if epoch <= self._last_epoch.get(trial.trial_id, 0):
            return  # already logged before the driver was interrupted
        run_id = self._run_id(trial)
        logged = {k: v for k, v in result.items() if k.startswith("val_") or k in _LOGGED or k == "epoch"}
        metrics = {k: v for k, v in logged.items() if isinstance(v, (int, float))}
        self.registry.log_metrics(run_id, metrics, step=epoch)  # NaN / inf are left out
        self._last_epoch[trial.trial_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("close the trial's run", self._finish, trial, False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely("close the trial's run", self._finish, trial, True)

    def _finish(self, trial: Any, errored: bool) -> None:
        run_id = self._run_id(trial)
        last = trial.last_result or {}
        epochs_run = int(last.get("epoch", 0) or 0)
        planned = trial_epochs(self.cfg, decode(self.cfg, trial.config))
        status, stopped_by = classify(epochs_run, planned, bool(last.get("early_stopped", 0)), errored)
        tags = {"rayml.epochs_run": str(epochs_run)}
        if stopped_by:
            tags["rayml.stopped_by"] = stopped_by
        if errored and getattr(trial, "error_file", None):
            tags["rayml.error_file"] = str(trial.error_file)
        self.registry.set_run_tags(run_id, tags)
        self.registry.end_run(run_id, status)
        if status == KILLED:
            logger.info("trial %s stopped early by ASHA after %d of %d epochs", trial.trial_id, epochs_run, planned)
