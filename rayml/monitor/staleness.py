"""Staleness measured, not assumed: how much worse a model gets as it ages, from the registry's own history.

The newest ``N`` registered versions of a model are scored on the same, newest labelled data: a file, or the newest
labelled rows the closed loop captured (captures hold each request's raw inputs, so a row captured for any version can
be re-scored by every version). Each version's primary metric (:func:`rayml.models.metrics.primary_metric`: RMSE,
AUC, macro F1) is compared with the newest scored version's (the reference, the freshest model): its relative
degradation, positive = worse. A least-squares line through the reference fits degradation against how many days older
each version is; the age at which that line reaches a tolerance (``staleness.max_degradation``) is the recommended
max age: the threshold of the ``RaymlModelStale`` alert, instead of a fixed 7 days (:meth:`StalenessReport.alert_rule`).

Age is time since the version was registered (its creation time in the registry). Training ends with registration,
and the alert's clock (``rayml_last_training_success_timestamp_seconds``) starts there too; the registry records no
end time of a version's training data, so "time since its data ended" cannot be measured here.

Older versions may differ in more than age (features, code, hyperparameters): the trend measures what keeping an older
version costs, which is what the alert is about.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rayml._private.jsonable import json_ready
from rayml.errors import ConfigError, DataError, ModelNotFoundError, RaymlError
from rayml.models.metrics import primary_metric, task_metrics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rayml.models import ModelDir
    from rayml.registry import Registry

logger = logging.getLogger("rayml.monitor")

DAY_S = 86400.0
OK, NO_DEGRADATION, INSUFFICIENT = "ok", "no_degradation", "insufficient_versions"
MIN_SPAN_DAYS = 1.0 / 24  # the oldest scored version must be at least this much older than the reference
CAPTURES = "captures"  # the captures folder of a capture destination (rayml.feedback's layout)
_HOUR_RE = re.compile(r"/hour=(\d{4}-\d{2}-\d{2}T\d{2})/")


class _Skip(Exception):
    """Why one version cannot be scored on the data (it is reported, the others still are)."""


@dataclass
class VersionScore:
    """One version scored on the data; ``skipped`` says why it was not."""

    version: int
    created: str  # ISO-8601, UTC: the registration time
    age_days: float  # at the time of the measurement
    rows: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    primary: float | None = None
    degradation: float | None = None  # relative to the reference version's primary metric; positive = worse
    older_days: float | None = None  # how much older than the reference (the fit's x); None when not scored
    skipped: str | None = None


@dataclass
class StalenessReport:
    """Quality against age of a model's newest versions on one labelled dataset, and the max age derived from it."""

    model: str
    data: str  # where the rows came from
    rows: int
    task: str
    primary_metric: str
    higher_is_better: bool
    max_degradation: float
    measured_at: str
    versions: list[VersionScore]
    reference: int | None = None  # the newest scored version: degradation 0 by definition
    degradation_per_day: float | None = None  # the fitted slope: relative degradation per day of extra age
    recommended_max_age_days: float | None = None  # where the fitted degradation reaches max_degradation
    newest_age_days: float | None = None  # age of the newest registered version (the alert's clock)
    status: str = INSUFFICIENT  # ok | no_degradation | insufficient_versions
    reason: str = ""

    @property
    def stale(self) -> bool:
        """Whether the newest version is already older than the recommended max age: time to retrain."""
        limit, age = self.recommended_max_age_days, self.newest_age_days
        return limit is not None and age is not None and age > limit

    def alert_rule(self) -> str | None:
        """The ``RaymlModelStale`` rule for this model with the measured threshold (Prometheus rule YAML, one list
        item), or None when no max age could be derived."""
        if self.recommended_max_age_days is None or self.degradation_per_day is None:
            return None
        seconds = max(1, round(self.recommended_max_age_days * DAY_S))
        why = (
            f"measured max age {self.recommended_max_age_days:.3g}d: {self.primary_metric} degrades "
            f"{self.degradation_per_day:.2%} per day, {self.max_degradation:.0%} tolerated"
        )
        return (
            "- alert: RaymlModelStale\n"
            f'  expr: time() - max by (model) (ray_rayml_last_training_success_timestamp_seconds{{model="{self.model}"}})'
            f" > {seconds}\n"
            "  for: 1h\n"
            "  labels: {severity: ticket}\n"
            "  annotations:\n"
            f'    summary: "{{{{ $labels.model }}}} was last trained {{{{ $value | humanizeDuration }}}} ago ({why})"\n'
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinities become None)."""
        return json_ready({**asdict(self), "stale": self.stale, "alert_rule": self.alert_rule()})


def measure_staleness(
    registry: Registry,
    model: str,
    data: pd.DataFrame,
    *,
    versions: int = 5,
    max_degradation: float = 0.05,
    source: str = "data",
    now: dt.datetime | None = None,
) -> StalenessReport:
    """Score ``model``'s newest ``versions`` versions on ``data`` and fit their degradation against their age.

    Reads every version through the model contract only (``registry.load(f"{model}:{v}").model_dir``): any framework,
    single models and model sets alike. The labels are the newest version's target column; rows without one are left
    out. A version is skipped, with the reason, when the data lacks one of its input columns, when its task differs
    from the newest version's, when a label is not one of its classes, or when it cannot score the rows.

    Args:
        registry: where the versions are.
        model: the registered model's name.
        data: labelled rows: the versions' input columns and the target column (classes compared as text, as stored
            labels are: ``1`` and ``"1"`` are the same class).
        versions: how many of the newest registered versions to score (at least 2).
        max_degradation: tolerated relative degradation of the primary metric (0.05 = 5% worse than the reference).
        source: describes ``data`` in the report.
        now: the time of the measurement (ages are counted up to it); None = now.

    Returns:
        The :class:`StalenessReport` (``status`` ``ok`` when a max age was derived).

    Raises:
        ModelNotFoundError: the model is not registered or has no versions.
        DataError: the data has no labelled rows or lacks the target column.
        ConfigError: ``versions`` below 2 or ``max_degradation`` not above 0.

    Example:
        >>> report = measure_staleness(Registry(), "sales-model", pd.read_parquet("data/latest.parquet"))
        >>> report.degradation_per_day, report.recommended_max_age_days
        (0.011, 4.5)
    """
    if versions < 2 or not max_degradation > 0:
        raise ConfigError(
            f"staleness needs versions >= 2 and max_degradation > 0 (got versions={versions}, max_degradation={max_degradation})",
            hint="compare at least two versions, e.g. --versions 5 --max-degradation 0.05",
        )
    infos = registry.versions(model)[-versions:]
    if not infos:
        raise ModelNotFoundError(
            f"model {model!r} has no registered versions", hint="register one (rayml train, rayml models register)"
        )
    now = now or dt.datetime.now(dt.timezone.utc)
    dirs: dict[int, ModelDir | str] = {}
    for info in infos:
        try:
            dirs[info.version] = registry.load(info.ref).model_dir
        except RaymlError as e:
            dirs[info.version] = f"cannot be loaded: {e.message}"
    newest = next((d for d in reversed(dirs.values()) if not isinstance(d, str)), None)
    if newest is None:
        raise ModelNotFoundError(f"no version of {model!r} could be loaded", hint="; ".join(map(str, dirs.values())))
    task, target = newest.task, newest.target
    if target is None or target not in data.columns:
        raise DataError(
            f"the data has no target column {target!r} (the label of {model}'s newest version)"
            if target
            else f"{model}'s newest version records no target column, so its labels cannot be found",
            hint="score on labelled data: the model's input columns and its target column (as for rayml validate --data)",
        )
    rows = data[data[target].notna()].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"the data has no labelled rows (column {target!r} is empty)", hint="pass labelled rows")
    name, higher = primary_metric(task)
    scores = []
    for info in infos:
        created = dt.datetime.fromtimestamp(info.created_ms / 1000.0, dt.timezone.utc)
        score = VersionScore(info.version, created.isoformat(timespec="seconds"), (now - created).total_seconds() / DAY_S)
        md = dirs[info.version]
        try:
            if isinstance(md, str):
                raise _Skip(md)
            score.metrics = _score(md, rows, target, task)
            score.rows = len(rows)
            value = score.metrics.get(name, float("nan"))
            if not math.isfinite(value):
                raise _Skip(f"{name} is undefined on these rows (e.g. a single class)")
            score.primary = value
        except _Skip as e:
            score.skipped = str(e)
        except RaymlError as e:  # e.g. malformed values, a segment without a model: this version only
            score.skipped = e.message
        scores.append(score)
    report = StalenessReport(
        model=model,
        data=source,
        rows=len(rows),
        task=task,
        primary_metric=name,
        higher_is_better=higher,
        max_degradation=max_degradation,
        measured_at=now.isoformat(timespec="seconds"),
        versions=scores,
        newest_age_days=scores[-1].age_days,
    )
    _fit(report, {i.version: i.created_ms for i in infos})
    logger.info("staleness of %s: %s (%s)", model, report.status, report.reason)
    return report


def _score(md: ModelDir, rows: pd.DataFrame, target: str, task: str) -> dict[str, float]:
    """The task's metrics of one version on ``rows`` (raises :class:`_Skip` when it cannot be scored on them)."""
    from rayml.models.predictor import LABEL, PROBABILITIES

    if md.task != task:
        raise _Skip(f"its task is {md.task}, the newest version's is {task}")
    missing = [c for c in [*md.input_names, *md.segment_columns] if c not in rows.columns]
    if missing:
        raise _Skip(f"the data lacks its input column(s) {missing}")
    y, classes = _truth(md, rows[target])
    outputs, _ = md.predict_outputs(rows)
    n, proba = len(rows), None
    if task == "multiclass":
        pred: np.ndarray = np.asarray([_text(v) for v in np.asarray(outputs[LABEL]).reshape(n).tolist()], dtype=object)
        proba = np.asarray(outputs[PROBABILITIES], dtype="float64")
        numbers = proba
    else:
        values = np.asarray(outputs[md.outputs[0].name], dtype="float64").reshape(n, -1)
        pred = numbers = values[:, -1] if task == "binary" else values[:, 0]  # binary: P(positive class) is the last
    bad = int((~np.isfinite(numbers)).reshape(n, -1).any(axis=1).sum())
    if bad:
        raise _Skip(f"it output {bad} NaN/inf prediction(s)")
    return task_metrics(task, y, pred, proba=proba, class_labels=classes or None)


def _truth(md: ModelDir, labels: pd.Series) -> tuple[np.ndarray, list[str]]:
    """The labels as the version's metrics read them (numbers; 1.0 for its positive class; class texts), and its
    classes as text."""
    if md.task == "regression":
        y = pd.to_numeric(labels, errors="coerce").to_numpy(dtype="float64")
        bad = int((~np.isfinite(y)).sum())
        if bad:
            raise _Skip(f"{bad} label(s) are not finite numbers")
        return y, []
    from rayml.feedback import binary_classes

    classes = list(binary_classes(md.class_labels)) if md.task == "binary" else [_text(c) for c in md.class_labels]
    texts = np.asarray([_text(v) for v in labels.tolist()], dtype=object)
    unknown = sorted({str(t) for t in texts.tolist()} - set(classes))
    if unknown:
        raise _Skip(f"label(s) {unknown[:10]} are not its classes {classes}")
    return ((texts == classes[1]).astype("float64") if md.task == "binary" else texts), classes


def _text(value: Any) -> str:
    from rayml.feedback import class_text

    return class_text(value) or ""


def fit_degradation(extra_age_days: Sequence[float], degradation: Sequence[float]) -> float | None:
    """Least-squares slope of relative degradation on extra age (days older than the reference version).

    The line passes through the reference (extra age 0, degradation 0 by definition), so the slope is
    ``sum(a * d) / sum(a * a)``. None when no version is older than the reference.
    """
    a = np.asarray(extra_age_days, dtype="float64")
    d = np.asarray(degradation, dtype="float64")
    den = float(np.sum(a * a))
    return float(np.sum(a * d) / den) if len(a) and den > 0 else None


def recommended_max_age(degradation_per_day: float | None, max_degradation: float) -> float | None:
    """Days of age at which the fitted degradation reaches ``max_degradation`` (None unless quality falls with age)."""
    if degradation_per_day is None or not degradation_per_day > 0:
        return None
    return max_degradation / degradation_per_day


def _fit(report: StalenessReport, created_ms: dict[int, int]) -> None:
    scored = [s for s in report.versions if s.primary is not None]
    if len(scored) < 2:
        skipped = [f"v{s.version}: {s.skipped}" for s in report.versions if s.skipped]
        report.reason = f"{len(scored)} version(s) could be scored, 2 are needed" + (
            f" ({'; '.join(skipped)})" if skipped else ""
        )
        return
    ref, ref_value = scored[-1], float(scored[-1].primary or 0.0)
    report.reference = ref.version
    for s in scored:
        s.degradation = _relative(ref_value, s.primary, report.higher_is_better)
        s.older_days = (created_ms[ref.version] - created_ms[s.version]) / (DAY_S * 1000.0)
    points = [(s.older_days, s.degradation) for s in scored[:-1] if s.older_days is not None and s.degradation is not None]
    span = max((a for a, _ in points), default=0.0)
    if 0 < span < MIN_SPAN_DAYS:  # versions minutes apart: a "per day" trend from them is noise blown up
        report.reason = (
            f"the scored versions span only {span * DAY_S:.0f} s of age; a trend per day needs versions at least "
            f"{MIN_SPAN_DAYS * 24:.0f} hour(s) apart (measure again when older versions exist)"
        )
        return
    slope = fit_degradation([a for a, _ in points], [d for _, d in points])
    report.degradation_per_day = slope
    report.recommended_max_age_days = recommended_max_age(slope, report.max_degradation)
    if slope is None:
        report.reason = f"the scored versions were registered at the same time as the reference v{ref.version}"
    elif report.recommended_max_age_days is None:
        report.status = NO_DEGRADATION
        report.reason = (
            f"older versions are not worse than v{ref.version} on this data ({slope:+.2%} per day): no max age follows; "
            "keep the fixed threshold"
        )
    else:
        report.status = OK
        report.reason = (
            f"{report.primary_metric} degrades {slope:.2%} per day of age (least squares over {len(scored)} versions, "
            f"through v{ref.version}); it reaches {report.max_degradation:.1%} at {report.recommended_max_age_days:.3g} days"
        )


def _relative(reference: float, value: float | None, higher_is_better: bool) -> float | None:
    if value is None or reference == 0:
        return None
    return (reference - value) / abs(reference) if higher_is_better else (value - reference) / abs(reference)


# --- the newest labelled captures ------------------------------------------------------------------------------------


def labelled_captures(destination: str, model: str, target: str, *, max_rows: int = 50_000) -> tuple[pd.DataFrame, str]:
    """The newest labelled rows the closed loop captured for ``model`` (any version, any route), as raw inputs with
    their label in column ``target`` (as stored: text), and a description of them.

    Capture files are read newest hour first until ``max_rows`` labelled rows are found; a request answered by more
    than one version (a shadow, a pinned call) is one row.

    Raises:
        DataError: nothing captured, no labels, or no captured row has a label.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayml._private import fs
    from rayml.feedback import list_files, read_labels

    files = list_files(destination, CAPTURES, model)
    if not files:
        raise DataError(
            f"no captured predictions of model {model!r} under {destination}",
            hint="pass labelled data with --data, or turn capture on for the served model (serve.models.<m>.capture) "
            "and send labels (rayml labels upload)",
        )
    labels = read_labels(destination, model, columns=["inference_id", "row", "label"])
    by_hour: dict[str, list[str]] = {}
    for f in files:
        m = _HOUR_RE.search(f)
        by_hour.setdefault(m.group(1) if m else "", []).append(f)  # a file of no hour is read last
    parts: list[pa.Table] = []
    found = 0
    for hour in sorted(by_hour, reverse=True):
        if found >= max_rows or labels.num_rows == 0:
            break
        for f in by_hour[hour]:
            filesystem, path = fs.filesystem(f)
            table = pq.read_table(path, filesystem=filesystem, columns=["inference_id", "row", "ts", "inputs"])
            joined = table.join(labels, ["inference_id", "row"], join_type="inner", use_threads=False)
            found += joined.num_rows
            parts.append(joined)
    frame = pa.concat_tables(parts).to_pandas() if parts else pd.DataFrame(columns=["inference_id", "row", "ts", "inputs"])
    frame = frame[frame["inputs"].notna()].sort_values("ts", ascending=False, kind="stable")
    frame = frame.drop_duplicates(["inference_id", "row"]).head(max_rows).reset_index(drop=True)
    if frame.empty:
        raise DataError(
            f"no captured prediction of model {model!r} under {destination} has a label ({labels.num_rows} stored)",
            hint=f"send labels (rayml labels upload --model {model} --labels FILE, or POST /v2/models/{model}/labels), "
            "or pass labelled data with --data",
        )
    # dtype=False: values keep their JSON types (a category "001" stays text, as the model was sent it)
    inputs = pd.read_json(io.StringIO("\n".join(frame["inputs"])), lines=True, dtype=False, convert_dates=False)
    inputs[target] = frame["label"].to_numpy()
    span = f"{frame['ts'].min():%Y-%m-%d %H:%M} to {frame['ts'].max():%Y-%m-%d %H:%M} UTC"
    return inputs, f"{len(inputs)} newest labelled captured rows under {destination} ({span})"


# --- the report ------------------------------------------------------------------------------------------------------


def write_staleness_report(report: StalenessReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``staleness.json``, ``staleness.html``, ``staleness.png`` (degradation against age, the fitted line, the
    tolerance and the recommended max age) and, when a max age was derived, ``staleness.rules.yml`` (a Prometheus rule
    group with the measured ``RaymlModelStale`` threshold) under ``out_dir``.

    Returns:
        The paths written, by kind (``json``, ``html``, ``png``, and ``rules`` when written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "staleness.json", "html": out / "staleness.html", "png": out / "staleness.png"}
    _plot(report, paths["png"])
    data = report.to_dict()
    paths["json"].write_text(json.dumps(data, indent=2))
    rule = report.alert_rule()
    if rule:
        paths["rules"] = out / "staleness.rules.yml"
        paths["rules"].write_text(
            f"# Load next to clusters/prometheus/rules/rayml.rules.yml (rule_files). Made by: rayml monitor staleness "
            f"--model {report.model}\n# on {report.data}, {report.measured_at}: {report.reason}\n"
            "groups:\n  - name: rayml-staleness\n    rules:\n" + "".join(f"      {line}\n" for line in rule.splitlines())
        )
    rows = "".join(
        f"<tr><td>v{s.version}</td><td>{s.created}</td><td>{s.age_days:.2f}</td><td>{s.rows}</td>"
        f"<td>{_fmt(s.primary)}</td><td>{'' if s.degradation is None else f'{s.degradation:+.2%}'}</td>"
        f"<td>{html.escape(s.skipped or ('reference' if s.version == report.reference else ''))}</td></tr>"
        for s in report.versions
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Staleness: {html.escape(report.model)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}
</style></head><body><h1>Staleness: {html.escape(report.model)}</h1>
<p>Data: {html.escape(report.data)} ({report.rows} rows); measured {report.measured_at}. Status: <b>{report.status}</b>:
{html.escape(report.reason)}.</p><p>Recommended max age: <b>{_fmt(report.recommended_max_age_days)} days</b>
(tolerated degradation {report.max_degradation:.1%}); newest version's age {_fmt(report.newest_age_days)} days{
        " (<b>stale</b>: retrain)" if report.stale else ""
    }.</p><table><tr><th>version</th><th>created</th><th>age (days)</th><th>rows</th>
<th>{report.primary_metric}</th><th>degradation vs reference</th><th>note</th></tr>{rows}</table>
<figure><img src="{paths["png"].name}" alt="degradation against age"></figure>
{f"<h2>Alert rule</h2><pre>{html.escape(rule)}</pre>" if rule else ""}</body></html>"""
    paths["html"].write_text(page)
    logger.info("staleness report written to %s", out)
    return paths


def _plot(report: StalenessReport, path: Path) -> None:
    # a Figure with its own Agg canvas, not pyplot: no global backend switch (as the drift report does)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    points = [
        (s.version, s.older_days, s.degradation)
        for s in report.versions
        if s.older_days is not None and s.degradation is not None
    ]
    ax.scatter([a for _, a, _ in points], [d for _, _, d in points], color="#4C72B0", zorder=3)
    for v, a, d in points:
        ax.annotate(f"v{v}", (a, d), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(report.max_degradation, color="#C44E52", linestyle="--", linewidth=1, label="tolerated degradation")
    if report.degradation_per_day is not None:
        end = max([float(a or 0.0) for _, a, _ in points] + [report.recommended_max_age_days or 0.0])
        xs = np.linspace(0.0, max(end, 1e-9), 50)
        ax.plot(xs, report.degradation_per_day * xs, color="#DD8452", label="fitted trend")
    if report.recommended_max_age_days is not None:
        ax.axvline(report.recommended_max_age_days, color="#55A868", linestyle=":", label="recommended max age")
    ax.set_xlabel(f"days older than the reference (v{report.reference})")
    ax.set_ylabel(f"{report.primary_metric}: relative degradation")
    ax.set_title(f"{report.model}: {report.status}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
