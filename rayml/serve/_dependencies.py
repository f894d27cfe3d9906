"""Dependency changes under a served version: the library versions it was registered with against those of the
process that serves it (ML Test Score, monitoring test 1: "dependency changes result in notification").

Recorded versions come from the model directory, as every registered version has them: the lineage tags
``rayml.rayml_version`` and ``rayml.onnxruntime_version`` (also MLflow version tags), and the ``source`` metadata
(the converter that wrote the graph with its version, and ``torch`` for a network rayml exported). Installed versions
come from ``importlib.metadata``: nothing is imported to check it (a serving image may not even have torch).

Which differences count (``mismatch``):

- rayml: any difference. rayml prepares every feed (column order, types, category strings) and owns the model
  contract, so a different build may feed the same graph differently.
- onnxruntime: a different major or minor release. It runs the graph: minor releases change kernels and graph
  optimisations (float results can move), patch releases fix bugs.
- the converter (skl2onnx, onnxmltools, onnx, torch for ``torch.onnx``) and torch for a network rayml exported: a
  different major or minor release, and only when it is installed here. They do not run while serving (the graph is
  fixed), but this is the environment that re-validates and re-exports the model: a minor release of a converter may
  write a different graph for the same model.

A library the version did not record (``unknown``, an older or a hand-made model directory) is not compared. Each
compared library is one series of ``rayml_dependency_mismatch{model, version, library, recorded, installed}``: 1 for
a mismatch, 0 otherwise (so a dashboard shows what every version runs on, and a 0 proves the check ran).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from rayml.serve._metrics import GAUGE_REFRESH_S, DependencyMetrics

logger = logging.getLogger("rayml.serve")

RAYML = "rayml"
ONNXRUNTIME = "onnxruntime"
# distributions that provide a library (the first installed one is read): onnxruntime also ships as onnxruntime-gpu
_DISTRIBUTIONS = {ONNXRUNTIME: ("onnxruntime", "onnxruntime-gpu")}
# converter names as the source metadata records them -> the library that is installed
_CONVERTER_LIBRARY = {"torch.onnx": "torch"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a distribution name: what may become a metric label
_RELEASE = re.compile(r"\s*v?(\d+)(?:\.(\d+))?")
_MAX_VERSION_CHARS = 64  # a version becomes a metric label: a hand-made model directory must not make a huge one


@dataclass(frozen=True)
class Dependency:
    """One library compared: the version the model was registered with, the one installed here, and whether the
    difference counts (see the module docstring)."""

    library: str
    recorded: str
    installed: str
    mismatch: bool

    def to_dict(self) -> dict[str, Any]:
        return {"library": self.library, "recorded": self.recorded, "installed": self.installed, "mismatch": self.mismatch}


def _known(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and value.strip() != "unknown"


def recorded_versions(lineage: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, str]:
    """The library versions a version was registered with: library -> version (only those it recorded).

    Args:
        lineage: the model directory's lineage tags (``rayml.<library>_version``).
        source: the model directory's ``source`` metadata (``converter``, ``converter_version``, ``torch``).
    """
    out: dict[str, str] = {}
    for library in (RAYML, ONNXRUNTIME):
        value = lineage.get(f"rayml.{library}_version")
        if _known(value):
            out[library] = str(value).strip()[:_MAX_VERSION_CHARS]
    converter, version = source.get("converter"), source.get("converter_version")
    if isinstance(converter, str) and _known(version):
        library = _CONVERTER_LIBRARY.get(converter, converter)
        if _NAME.fullmatch(library):
            out.setdefault(library, str(version).strip()[:_MAX_VERSION_CHARS])
    if _known(source.get("torch")):  # a network rayml built and exported with torch.onnx
        out.setdefault("torch", str(source["torch"]).strip()[:_MAX_VERSION_CHARS])
    return out


@functools.cache
def installed_version(library: str) -> str | None:
    """The version of ``library`` installed in this process's environment, or None (read once per process)."""
    for dist in _DISTRIBUTIONS.get(library, (library,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _major_minor(version: str) -> tuple[int, int] | None:
    m = _RELEASE.match(version)
    return (int(m[1]), int(m[2] or 0)) if m else None


def differs(library: str, recorded: str, installed: str) -> bool:
    """Whether running ``library`` at ``installed`` instead of ``recorded`` counts as a mismatch."""
    if library == RAYML:
        return recorded != installed
    a, b = _major_minor(recorded), _major_minor(installed)
    if a is None or b is None:  # not a release number: only the same text is the same version
        return recorded != installed
    return a != b


def compare(
    lineage: Mapping[str, Any],
    source: Mapping[str, Any],
    installed: Callable[[str], str | None] = installed_version,
) -> list[Dependency]:
    """Every recorded library that is installed here, compared (sorted by library)."""
    out = []
    for library, recorded in sorted(recorded_versions(lineage, source).items()):
        here = installed(library)
        if here is None:  # a converter the serving image does not carry: nothing here runs it
            continue
        out.append(Dependency(library, recorded, here, differs(library, recorded, here)))
    return out


def check_model_dir(model: str, version: int, model_dir: Any) -> list[Dependency]:
    """Compare a loaded version's recorded libraries with this process's; a mismatch is logged (once per load).

    Args:
        model: registered model name.
        version: version number.
        model_dir: its :class:`rayml.models.ModelDir`.
    """
    source = model_dir.meta.get("source")
    found = compare(model_dir.lineage, source if isinstance(source, Mapping) else {})
    changed = [d for d in found if d.mismatch]
    if changed:
        logger.warning(
            "%s:%s was registered with %s and runs here on %s (rayml_dependency_mismatch): validate it on this "
            "environment (rayml validate --model %s --candidate %s --data <validation data>) or serve it where its "
            "libraries match",
            model,
            version,
            ", ".join(f"{d.library} {d.recorded}" for d in changed),
            ", ".join(f"{d.library} {d.installed}" for d in changed),
            model,
            version,
        )
    return found


class DependencyGauges:
    """Keeps the ``rayml_dependency_mismatch`` series of the versions this process serves exported: Ray drops a gauge
    that is not set again (see GAUGE_REFRESH_S), and these never change while a version is loaded, so a daemon thread
    sets them every ``period_s`` for as long as any version is shown (and stops when none is).

    Args:
        metrics: where the gauge lives (default: a :class:`DependencyMetrics` made on first use).
        period_s: how often every series is set again.
    """

    def __init__(self, metrics: DependencyMetrics | None = None, period_s: float = GAUGE_REFRESH_S) -> None:
        self._metrics = metrics
        self.period_s = period_s
        self._lock = threading.Lock()
        self._shown: dict[int, tuple[str, int, list[Dependency]]] = {}
        self._thread: threading.Thread | None = None

    def _gauges(self) -> DependencyMetrics:
        if self._metrics is None:
            self._metrics = DependencyMetrics()
        return self._metrics

    def show(self, owner: object, model: str, version: int, dependencies: list[Dependency]) -> None:
        """Export ``owner``'s series (one owner per loaded version: a version loaded twice is shown twice, harmlessly)."""
        if not dependencies:
            return
        with self._lock:
            self._shown[id(owner)] = (model, int(version), list(dependencies))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rayml-dependency-gauges", daemon=True)
                self._thread.start()
        self._gauges().publish(model, version, dependencies)

    def hide(self, owner: object) -> None:
        """Stop setting ``owner``'s series (a retired version): Ray then drops them from the export."""
        with self._lock:
            self._shown.pop(id(owner), None)

    def refresh(self) -> int:
        """Set every shown series once; returns how many versions were shown."""
        with self._lock:
            shown = list(self._shown.values())
        for model, version, dependencies in shown:
            self._gauges().publish(model, version, dependencies)
        return len(shown)

    def _run(self) -> None:
        while True:
            time.sleep(self.period_s)
            with self._lock:
                if not self._shown:
                    self._thread = None
                    return
            try:
                self.refresh()
            except Exception as e:  # never let the refresher die: the next tick tries again
                logger.warning("could not refresh rayml_dependency_mismatch: %s", e)


@functools.cache
def dependency_gauges() -> DependencyGauges:
    """This process's :class:`DependencyGauges` (one refresher, however many versions the process runs)."""
    return DependencyGauges()
