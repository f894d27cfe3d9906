"""Write a live-quality report (from :func:`rayml.feedback.quality_report`) as JSON, HTML and PNG plots."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("rayml.feedback")

_STATUS_CLASS = {"ok": "ok", "gap": "alert", "insufficient_labels": "warn"}


def write_quality_report(report: dict[str, Any], out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``quality.json``, ``quality.html`` and ``plots/*.png`` under ``out_dir``.

    Plots: the live primary metric per version with its confidence interval next to the offline value, the label
    delay histogram per version, and label coverage per version.

    Args:
        report: what :func:`rayml.feedback.quality_report` returned.
        out_dir: the report folder (created).
        title: the page's title (default: ``Live quality: <model>``).

    Returns:
        ``{"json": path, "html": path, "plots": folder}``.
    """
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    title = title or f"Live quality: {report['model']}"
    versions = report["versions"]
    figures = []
    if versions:
        _plot_primary(report, plots / "primary_metric.png")
        _plot_delays(report, plots / "label_delay.png")
        _plot_coverage(report, plots / "coverage.png")
        figures = [
            f"<figure><img src='plots/{name}' alt='{alt}'></figure>"
            for name, alt in (
                ("primary_metric.png", "live vs offline primary metric"),
                ("label_delay.png", "label delay"),
                ("coverage.png", "label coverage"),
            )
        ]
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    (out / "quality.html").write_text(_page(report, title, figures))
    logger.info("quality report written to %s", out)
    return {"json": out / "quality.json", "html": out / "quality.html", "plots": plots}


def _page(report: dict[str, Any], title: str, figures: list[str]) -> str:
    rows = []
    for v in report["versions"]:
        metrics = "<br>".join(html.escape(_metric_text(k, m)) for k, m in v["metrics"].items()) or "-"
        delay = v["label_delay_s"]
        offline = v["offline_primary"]
        routes = ", ".join(f"{r} {c['labelled']}/{c['captured']}" for r, c in v["routes"].items())
        rows.append(
            f"<tr class='{_STATUS_CLASS.get(v['status'], '')}'><td>{v['version']}</td><td>{v['status']}</td>"
            f"<td>{metrics}</td><td>{_num(offline)}</td><td>{_pct(v['gap'])}</td><td>{v['labelled']}/{v['captured']} "
            f"({_pct(v['coverage'])})</td><td>{html.escape(routes)}</td><td>{_seconds(delay['median'])}</td>"
            f"<td>{_seconds(delay['p90'])}</td><td>{html.escape(v['reason'])}</td></tr>"
        )
    labels = report["labels"]
    since = html.escape(report["since"] or "the first capture")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}} tr.alert{{background:#fdd}} tr.warn{{background:#ffd}} figure{{display:inline-block;margin:4px}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Overall status: <b>{report["status"]}</b>; task: {report["task"]}; primary metric: {report["primary_metric"]};
predictions since {since}; generated {html.escape(report["generated_at"])}.</p>
<p>Captured rows: {report["captured_rows"]}; labelled: {report["labelled_rows"]};
never labelled: {report["unlabelled_rows"]}. Stored labels: {labels["stored"]}; matched a capture: {labels["matched"]};
unknown (no capture has their id): {labels["unknown"]}.</p>
<p>Intervals: {report["confidence"]:.0%}, {html.escape(report["interval_method"])}. A version is <i>gap</i> when its live
{report["primary_metric"]} is more than {report["max_gap"]:.0%} worse than offline even at the favourable end of its
interval; it needs {report["min_labels"]} labelled predictions to be judged.</p>
<table><tr><th>version</th><th>status</th><th>live metrics [interval]</th><th>offline {report["primary_metric"]}</th>
<th>gap</th><th>labelled / captured</th><th>routes (labelled/captured)</th><th>label delay median</th><th>p90</th>
<th>why</th></tr>{"".join(rows)}</table><h2>Plots</h2>{"".join(figures) or "<p>No captured predictions.</p>"}</body></html>"""


def _metric_text(name: str, m: dict[str, float | None]) -> str:
    if m.get("value") is None:
        return f"{name}=n/a"
    interval = f" [{m['low']:.4g}, {m['high']:.4g}]" if m.get("low") is not None and m.get("high") is not None else ""
    return f"{name}={m['value']:.4g}{interval}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if abs(x) >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.1f}s"


def _figure(width: float = 6.0, height: float = 3.2):
    # A Figure with its own Agg canvas, not pyplot: no global backend switch (a notebook keeps showing its own plots)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _plot_primary(report: dict[str, Any], path: Path) -> None:
    name = report["primary_metric"]
    versions = report["versions"]
    fig, ax = _figure()
    x = np.arange(len(versions))
    for i, v in enumerate(versions):
        m = v["metrics"].get(name, {})
        value = m.get("value")
        if value is not None:
            low, high = m.get("low"), m.get("high")
            err = [[value - low], [high - value]] if low is not None and high is not None else None
            color = "#C44E52" if v["status"] == "gap" else "#4C72B0"
            ax.errorbar([i - 0.1], [value], yerr=err, fmt="o", color=color, capsize=4, label="live" if i == 0 else None)
        if v["offline_primary"] is not None:
            ax.plot([i + 0.1], [v["offline_primary"]], marker="s", color="#55A868", linestyle="none",
                    label="offline (validation)" if i == 0 else None)  # fmt: skip
    ax.set_xticks(x)
    ax.set_xticklabels([f"v{v['version']}\n{v['status']}" for v in versions], fontsize=7)
    ax.set_ylabel(name)
    ax.set_title(f"Live {name} ({report['confidence']:.0%} interval) vs offline", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _plot_delays(report: dict[str, Any], path: Path) -> None:
    versions = report["versions"]
    bins = versions[0]["label_delay_s"]["histogram"]["bins"]
    fig, ax = _figure()
    x = np.arange(len(bins))
    width = 0.8 / max(1, len(versions))
    for i, v in enumerate(versions):
        ax.bar(x - 0.4 + (i + 0.5) * width, v["label_delay_s"]["histogram"]["counts"], width=width, label=f"v{v['version']}")
    ax.set_xticks(x)
    ax.set_xticklabels(bins, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("labelled predictions")
    ax.set_title("Label delay (label received - prediction made)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _plot_coverage(report: dict[str, Any], path: Path) -> None:
    versions = report["versions"]
    fig, ax = _figure()
    ax.bar([f"v{v['version']}" for v in versions], [v["coverage"] or 0.0 for v in versions], color="#8172B2")
    ax.set_ylim(0, 1)
    ax.set_ylabel("labelled / captured")
    ax.set_title("Label coverage", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
