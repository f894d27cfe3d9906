"""Progress of the long steps: a bar on a terminal, an occasional plain line elsewhere (CI logs, pipes, tests).

:class:`Bar` is fed by whatever can count the work: the callbacks of ``train_model_set`` and ``run_batch``, the
quickstart's own request loop, or, for Ray Train epochs and Ray Tune trials (which run in other processes and report
to MLflow), :class:`FollowTraining` and :class:`FollowSearch`, threads that poll the MLflow run the library writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from rayml.cli._common import console as default_console

logger = logging.getLogger("rayml.cli")

PLAIN_INTERVAL_S = 15.0  # without a terminal: one line at most this often (fast steps print none)
POLL_S = 1.0


class Bar:
    """One long step's progress.

    On a terminal: a transient rich bar (label, bar, done/total, detail, elapsed), gone when the step ends so the
    step's summary line takes its place. Elsewhere: ``  label: done/total detail (12s)`` when the count has moved,
    at most every ``interval_s`` and never for the last item (the step's summary follows).
    ``spinner=True`` is for waits that cannot be counted (a spinner and the elapsed time). Thread-safe: pollers update
    it from their threads.

    Example:
        >>> with Bar("epochs", total=10) as bar:
        ...     bar.update(3, detail="val_loss 0.41")
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        out: Console | None = None,
        spinner: bool = False,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total = label, total
        self.completed = 0
        self.detail = ""
        self.out = out or default_console
        self.spinner = spinner
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: Any = None
        self._t0 = self._last_line = 0.0
        self._last_shown = 0

    def __enter__(self) -> Bar:
        self._t0 = self._last_line = self.clock()
        if self.out.is_terminal:
            counted = [] if self.spinner else [BarColumn(bar_width=30), MofNCompleteColumn()]
            self._progress = Progress(
                *([SpinnerColumn()] if self.spinner else []),
                TextColumn("  {task.description}"),
                *counted,
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.out,
                transient=True,
                # rich would otherwise catch prints (Tune's tables, Ray's worker logs) and show them above the bar
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, detail="")
        return self

    def update(self, completed: int, total: int | None = None, detail: str | None = None) -> None:
        with self._lock:
            self.completed = completed
            if total is not None:
                self.total = total
            if detail is not None:
                self.detail = detail
            if self._progress is not None:
                self._progress.update(self._task, completed=completed, total=self.total, detail=self.detail)
                return
            now = self.clock()
            moved = completed != self._last_shown and completed != self.total
            if moved and now - self._last_line >= self.interval_s:
                self._last_line, self._last_shown = now, completed
                self.out.print(f"  {self.line()} ({now - self._t0:.0f}s)", markup=False, highlight=False)

    def line(self) -> str:
        if self.spinner:
            return f"{self.label} …" + (f" {self.detail}" if self.detail else "")
        of = f"/{self.total}" if self.total is not None else ""
        return f"{self.label}: {self.completed}{of}" + (f" {self.detail}" if self.detail else "")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class _Poller(threading.Thread):
    """Calls ``poll(client)`` every ``interval_s`` with an MLflow client until stopped; errors are logged, not raised
    (a progress bar must never fail the command)."""

    def __init__(self, tracking_uri: str | None, interval_s: float = POLL_S) -> None:
        from rayml._private import constants

        super().__init__(name=f"rayml-{type(self).__name__}", daemon=True)
        self.tracking_uri = tracking_uri or constants.default_tracking_uri()  # what the library resolves None to
        self.interval_s = interval_s
        self.since_ms = int(time.time() * 1000)
        self._stop_event = threading.Event()

    def __enter__(self) -> _Poller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        client = None
        while not self._stop_event.wait(self.interval_s):
            try:
                if client is None:
                    from mlflow.tracking import MlflowClient

                    client = MlflowClient(self.tracking_uri)
                self.poll(client)
            except Exception as e:
                logger.debug("progress: could not read MLflow: %s", e)

    def poll(self, client: Any) -> None:
        raise NotImplementedError

    def _newest_running(self, client: Any, experiment: str, filter_string: str, skip_tag: str | None = None) -> Any:
        """The RUNNING run that this command most likely drives: started since it began, else the newest (a resumed
        run keeps its old start time)."""
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and {filter_string}",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        runs = [r for r in runs if not (skip_tag and skip_tag in r.data.tags)]
        fresh = [r for r in runs if r.info.start_time >= self.since_ms - 1000]
        return (fresh or runs or [None])[0]


def _quoted(value: str) -> str | None:
    return None if "'" in value else value  # an MLflow filter string cannot escape a quote: match by prefix instead


class FollowTraining(_Poller):
    """Moves ``bar`` to the latest epoch the training run logged to MLflow (rank 0 or the Train controller logs every
    epoch there as it ends).

    Args:
        bar: the bar to move (its total: the configured epochs).
        tracking_uri: where the run logs.
        experiment: the run's MLflow experiment.
        model: the model name (run names start with it unless ``run_name`` is set).
        run_name: ``train.run_name`` when the config sets it.
    """

    def __init__(
        self, bar: Bar, tracking_uri: str | None, experiment: str, model: str, run_name: str | None = None
    ) -> None:
        super().__init__(tracking_uri)
        self.bar, self.experiment = bar, experiment
        name = _quoted(run_name) if run_name else None
        self.filter = f"tags.`rayml.train_run_name` = '{name}'" if name else f"tags.`rayml.train_run_name` LIKE '{model}-%'"

    def poll(self, client: Any) -> None:
        run = self._newest_running(client, self.experiment, self.filter, skip_tag="mlflow.parentRunId")
        if run is None:
            return
        m = run.data.metrics
        if "epoch" in m:
            detail = f"val_loss {m['val_loss']:.4g}" if "val_loss" in m else ""
            self.bar.update(int(m["epoch"]), detail=detail)


class FollowSearch(_Poller):
    """Moves ``bar`` to the number of finished trials of the running Tune search (its MLflow child runs close as
    FINISHED, KILLED when ASHA stopped them, or FAILED), with the epochs trained so far as detail.

    Args:
        bar: the bar to move (its total: the number of trials).
        tracking_uri: where the search logs.
        experiment: the search's MLflow experiment.
        search_name: ``tune.name`` when the config sets it.
    """

    SEARCH_TAG = "rayml.tune_search_id"  # the tags rayml.tune writes on the search's runs
    PARENT_TAG = "mlflow.parentRunId"

    def __init__(self, bar: Bar, tracking_uri: str | None, experiment: str, search_name: str | None = None) -> None:
        super().__init__(tracking_uri)
        self.bar, self.experiment = bar, experiment
        name = _quoted(search_name) if search_name else None
        self.filter = f"tags.`{self.SEARCH_TAG}` = '{name}'" if name else f"tags.`{self.SEARCH_TAG}` LIKE '%'"

    def poll(self, client: Any) -> None:
        parent = self._newest_running(client, self.experiment, self.filter, skip_tag=self.PARENT_TAG)
        if parent is None:
            return
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{self.PARENT_TAG}` = '{parent.info.run_id}'",
            max_results=10_000,
        )
        done = sum(r.info.status in ("FINISHED", "KILLED", "FAILED") for r in children)
        epochs = sum(int(r.data.metrics.get("epoch", 0)) for r in children)
        self.bar.update(done, detail=f"{epochs} epochs")
