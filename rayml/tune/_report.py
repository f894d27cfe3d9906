"""What a search produced, in the forms people read: trial summaries (best first), a CSV and learning curves."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from rayml.config import TuneJobConfig
from rayml.tune._space import decode, format_value, trial_epochs

FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"
RESULTS_FILE = "results.csv"
CURVES_FILE = "learning_curves.png"
_LEGEND_MAX = 20


@dataclass
class TrialSummary:
    """One trial of a search.

    ``status`` uses MLflow's run statuses: FINISHED (ran all its epochs, or stopped itself by early-stopping patience:
    ``stopped_by == "patience"``), KILLED (stopped early by ASHA: ``stopped_by == "asha"``) or FAILED.
    """

    trial_id: str
    params: dict[str, Any]
    status: str
    stopped_by: str | None
    epochs_run: int
    max_epochs: int
    best_metric: float | None
    best_epoch: int | None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric), one point per epoch
    mlflow_run_id: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSummary:
        return cls(**{**d, "curve": [tuple(p) for p in d.get("curve", [])]})


def classify(epochs_run: int, planned_epochs: int, early_stopped: bool, errored: bool) -> tuple[str, str | None]:
    """(status, stopped_by) of a trial that is no longer running."""
    if errored:
        return FAILED, None
    if early_stopped:
        return FINISHED, "patience"
    if epochs_run < planned_epochs:
        return KILLED, "asha"
    return FINISHED, None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def trial_id_of(result: Any) -> str:
    """A Tune result's trial id: the one it reported, else its folder's name (``trial_<id>``)."""
    return str((result.metrics or {}).get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_"))


def summarize(results: Any, cfg: TuneJobConfig, run_ids: dict[str, str]) -> list[TrialSummary]:
    """Summaries of every trial in a Tune ``ResultGrid``, best first (failed and metric-less trials last)."""
    metric, mode = cfg.tune.metric, cfg.resolved_mode
    out = []
    for r in results:
        trial_id = trial_id_of(r)
        params = decode(cfg, r.config or {})
        df = r.metrics_dataframe
        curve: list[tuple[int, float]] = []
        early = False
        if df is not None and len(df) and "epoch" in df.columns:
            # a resumed trial may report an epoch again (the driver died before Tune saved its checkpoint): keep the last
            rows = df.dropna(subset=["epoch"]).drop_duplicates(subset=["epoch"], keep="last").sort_values("epoch")
            if metric in rows.columns:
                curve = [(int(e), float(v)) for e, v in zip(rows["epoch"], rows[metric], strict=True)]
            early = bool(rows["early_stopped"].iloc[-1]) if "early_stopped" in rows.columns and len(rows) else False
        epochs_run = curve[-1][0] if curve else 0
        planned = trial_epochs(cfg, params)
        status, stopped_by = classify(epochs_run, planned, early, r.error is not None)
        scored = [(e, v) for e, v in curve if _finite(v)]
        best = (min if mode == "min" else max)(scored, key=lambda p: p[1]) if scored else None
        out.append(
            TrialSummary(
                trial_id=trial_id,
                params=params,
                status=status,
                stopped_by=stopped_by,
                epochs_run=epochs_run,
                max_epochs=planned,
                best_metric=best[1] if best else None,
                best_epoch=best[0] if best else None,
                curve=curve,
                mlflow_run_id=run_ids.get(trial_id),
                error=str(r.error).splitlines()[0][:500] if r.error is not None else None,
            )
        )
    return rank(out, mode)


def rank(trials: list[TrialSummary], mode: str) -> list[TrialSummary]:
    """Best first; trials without a finite metric last (then by trial id, for a stable order)."""
    sign = 1.0 if mode == "min" else -1.0

    def key(t: TrialSummary) -> tuple[int, float, str]:
        if t.best_metric is None or not _finite(t.best_metric):
            return (1, 0.0, t.trial_id)
        return (0, sign * t.best_metric, t.trial_id)

    return sorted(trials, key=key)


def status_text(t: TrialSummary) -> str:
    return f"{t.status} ({t.stopped_by})" if t.stopped_by else t.status


def table_rows(trials: list[TrialSummary], cfg: TuneJobConfig) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the results table: trial, searched params, best metric, best epoch, epochs, status."""
    paths = list(cfg.tune.space)
    word = cfg.epoch_word
    columns = ["trial", *paths, f"best {cfg.tune.metric}", f"best {word}", f"{word}s", "status"]
    rows = []
    for t in trials:
        rows.append(
            [
                t.trial_id,
                *[format_value(t.params.get(p, "")) for p in paths],
                f"{t.best_metric:.5g}" if t.best_metric is not None else "-",
                str(t.best_epoch) if t.best_epoch is not None else "-",
                f"{t.epochs_run}/{t.max_epochs}",
                status_text(t),
            ]
        )
    return columns, rows


def results_csv(trials: list[TrialSummary], cfg: TuneJobConfig) -> bytes:
    """The results table as CSV (full precision; one row per trial, best first)."""
    paths = list(cfg.tune.space)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["rank", "trial_id", *paths, f"best_{cfg.tune.metric}", "best_epoch", "epochs_run", "max_epochs", "status"]
        + ["stopped_by", "mlflow_run_id", "error"]
    )
    for i, t in enumerate(trials, 1):
        w.writerow(
            [i, t.trial_id, *[format_value(t.params.get(p, "")) for p in paths]]
            + ["" if t.best_metric is None else repr(t.best_metric), t.best_epoch or "", t.epochs_run, t.max_epochs]
            + [t.status, t.stopped_by or "", t.mlflow_run_id or "", t.error or ""]
        )
    return buf.getvalue().encode()


def learning_curves_png(trials: list[TrialSummary], cfg: TuneJobConfig, title: str) -> bytes:
    """Every trial's validation metric per epoch. ASHA-stopped trials are dashed and end in an x; the best is bold."""
    # the object-oriented API renders with Agg without touching pyplot's global backend (safe on headless drivers)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    best_id = trials[0].trial_id if trials and trials[0].best_metric is not None else None
    labelled = 0
    for t in trials:  # best first, so the legend (capped, to stay readable) names the best trials
        pts = [(e, v) for e, v in t.curve if _finite(v)]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        label = f"{t.trial_id} {status_text(t)}" if labelled < _LEGEND_MAX else None
        labelled += label is not None
        if t.trial_id == best_id:
            ax.plot(xs, ys, "-o", linewidth=2.8, markersize=4, color="black", label=f"{label} (best)", zorder=5)
        elif t.status == KILLED:
            (line,) = ax.plot(xs, ys, "--", linewidth=1.2, alpha=0.8, label=label)
            ax.plot(xs[-1:], ys[-1:], "x", markersize=9, color=line.get_color())
        else:
            ax.plot(xs, ys, "-", linewidth=1.4, alpha=0.9, label=label)
    ax.set_xlabel(f"{cfg.epoch_word} (dashed, ending in x: stopped early by ASHA)")
    ax.set_ylabel(f"{cfg.tune.metric} (validation)")
    ax.set_xlim(0.5, max(cfg.max_epochs, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if labelled:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
