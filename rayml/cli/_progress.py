"""Progress of the long steps: a bar on a terminal, an occasional plain line elsewhere (CI logs, pipes, tests).

:class:`Bar` is fed by whatever can count the work: the callbacks of ``train_model_set`` and ``run_batch``, the
quickstart's own request loop, or, for Ray Train epochs and Ray Tune trials (which run in other processes and report
to MLflow), :class:`FollowTraining` and :class:`FollowSearch`, threads that poll the MLflow run the library writes.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from rayml.cli._common import console as default_console

if TYPE_CHECKING:
    from rayml.registry import Registry, RunRecord

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


class _Poller(threading.Thread, abc.ABC):
    """Calls ``poll(registry)`` every ``interval_s`` until stopped; errors are logged, not raised (a progress bar must
    never fail the command). Reads MLflow through the registry facade, like the rest of rayml."""

    def __init__(self, tracking_uri: str | None, interval_s: float = POLL_S) -> None:
        super().__init__(name=f"rayml-{type(self).__name__}", daemon=True)
        self.tracking_uri = tracking_uri  # None: what Registry() resolves it to, as the library does
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
        registry = None
        while not self._stop_event.wait(self.interval_s):
            try:
                if registry is None:
                    from rayml.registry import Registry

                    registry = Registry(self.tracking_uri)
                self.poll(registry)
            except Exception as e:
                logger.debug("progress: could not read MLflow: %s", e)

    @abc.abstractmethod
    def poll(self, registry: Registry) -> None:
        """Read the run(s) this command drives and move the bar."""

    def _newest_running(
        self, registry: Registry, experiment: str, tags: dict[str, str], prefixes: dict[str, str], skip_tag: str
    ) -> RunRecord | None:
        """The RUNNING run that this command most likely drives: started since it began, else the newest (a resumed
        run keeps its old start time)."""
        exp = registry.find_experiment(experiment)
        if exp is None:
            return None
        runs = registry.search_runs(exp, tags, 20, tag_prefixes=prefixes, status="RUNNING", newest_first=True)
        runs = [r for r in runs if skip_tag not in r.tags]
        fresh = [r for r in runs if r.start_ms >= self.since_ms - 1000]
        candidates = fresh or runs
        return candidates[0] if candidates else None


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

    RUN_TAG = "rayml.train_run_name"  # the tag rayml.train writes on its run

    def __init__(
        self, bar: Bar, tracking_uri: str | None, experiment: str, model: str, run_name: str | None = None
    ) -> None:
        super().__init__(tracking_uri)
        self.bar, self.experiment = bar, experiment
        name = _quoted(run_name) if run_name else None
        self.tags = {self.RUN_TAG: name} if name else {}
        self.prefixes = {} if name else {self.RUN_TAG: f"{model}-"}

    def poll(self, registry: Registry) -> None:
        run = self._newest_running(registry, self.experiment, self.tags, self.prefixes, skip_tag="mlflow.parentRunId")
        if run is None:
            return
        m = run.metrics
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
        self.tags = {self.SEARCH_TAG: name} if name else {}
        self.prefixes = {} if name else {self.SEARCH_TAG: ""}  # any search

    def poll(self, registry: Registry) -> None:
        parent = self._newest_running(registry, self.experiment, self.tags, self.prefixes, skip_tag=self.PARENT_TAG)
        if parent is None:
            return
        children = registry.search_runs(parent.experiment_id, {self.PARENT_TAG: parent.run_id}, 10_000)
        done = sum(r.status in ("FINISHED", "KILLED", "FAILED") for r in children)
        epochs = sum(int(r.metrics.get("epoch", 0)) for r in children)
        self.bar.update(done, detail=f"{epochs} epochs")
