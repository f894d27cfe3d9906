"""Offline drift: score a dataset against a model's reference bins and write JSON + an HTML report with PNGs."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml.config import DriftConfig
from rayml.monitor.drift import DriftCounter, count_values, drift_report, score

logger = logging.getLogger("rayml.monitor")


def drift_of_frame(
    reference: dict[str, Any], df: pd.DataFrame, predictions: np.ndarray | None, target: str | None, thresholds: DriftConfig
) -> dict[str, Any]:
    """Drift of ``df`` against ``reference`` (features, predictions, and labels when the target column is present).

    A multiclass model's predictions and labels are class labels, counted into one bin per class.
    """
    counter = DriftCounter(reference)
    counter.update(df, predictions=predictions)
    report = drift_report(counter, thresholds)
    if target and target in df.columns and "target" in reference:
        ref = reference["target"]
        report["label"] = score(ref["kind"], ref["shares"], count_values(df[target], ref), thresholds)
    report["counts"] = counter.to_dict()
    return report


def _plot(name: str, entry: dict[str, Any], labels: list[str], path: Path) -> None:
    # A Figure with its own Agg canvas, not pyplot: no global backend switch (a notebook keeps showing its own plots)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(entry["reference_shares"]))
    ax.bar(x - 0.2, entry["reference_shares"], width=0.4, label="reference (training)", color="#4C72B0")
    ax.bar(x + 0.2, entry["current_shares"], width=0.4, label="current", color="#DD8452")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of rows")
    metrics = ", ".join(f"{k}={v:.3f}" for k, v in entry["metrics"].items())
    ax.set_title(f"{name}: {entry['status']} ({metrics})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _bin_labels(ref: dict[str, Any]) -> list[str]:
    if ref["kind"] == "categorical":
        return list(ref["categories"])
    edges = ref["edges"]
    if not edges:
        return ["all"]
    return (
        [f"<{edges[0]:.3g}"] + [f"{a:.3g}-{b:.3g}" for a, b in zip(edges[:-1], edges[1:], strict=True)] + [f">={edges[-1]:.3g}"]
    )


def write_report(report: dict[str, Any], reference: dict[str, Any], out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write ``drift.json``, ``drift.html`` and one PNG per feature (plus prediction and label) under ``out_dir``."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    items: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        (n, e, reference["features"][n]) for n, e in sorted(report["features"].items())
    ]
    if "prediction" in report:
        items.append(("prediction", report["prediction"], reference["prediction"]))
    if "label" in report:
        items.append(("label", report["label"], reference["target"]))
    rows, figures = [], []
    for i, (name, entry, ref) in enumerate(items):
        png = out / "plots" / f"{i:03d}.png"  # never a user-supplied column name in a path
        _plot(name, entry, _bin_labels(ref), png)
        q = entry["quality"]
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in entry["metrics"].items())
        rows.append(
            f"<tr class='{entry['status']}'><td>{html.escape(name)}</td><td>{entry['kind']}</td><td>{entry['status']}</td>"
            f"<td>{metrics}</td><td>{entry['rows']}</td><td>{q['missing_share']:.1%}</td><td>{q['unseen']}</td>"
            f"<td>{q['out_of_range']}</td></tr>"
        )
        figures.append(f"<figure><img src='plots/{png.name}' alt='{html.escape(name)}'></figure>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}
tr.alert{{background:#fdd}} tr.warn{{background:#ffd}} figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>{html.escape(title)}</h1><p>Overall status: <b>{report["status"]}</b>; rows: {report["rows"]};
features over the alert threshold: {html.escape(", ".join(report["drifted_features"]) or "none")}</p>
<table><tr><th>column</th><th>kind</th><th>status</th><th>metrics</th><th>rows</th><th>missing</th><th>unseen</th>
<th>out of range</th></tr>{"".join(rows)}</table><h2>Reference vs current</h2>{"".join(figures)}</body></html>"""
    (out / "drift.html").write_text(page)
    (out / "drift.json").write_text(json.dumps(report, indent=2))
    logger.info("drift report written to %s", out)
    return {"json": out / "drift.json", "html": out / "drift.html", "plots": out / "plots"}
