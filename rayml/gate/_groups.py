"""Slices and groups: the primary metric per segment (against the baseline) and per group value (between groups).

Slices (``gate.segment_columns``) ask "did the candidate get worse for this segment than the baseline was?". Groups
(``gate.group_columns``, e.g. a region or an age band) ask "is the candidate much worse for some group than for
another?": the *group gap* of a column is the relative distance between its best and its worst group's primary
metric, ``(best - worst) / |best|`` when higher is better (AUC, macro-F1) and ``(worst - best) / |best|`` when
lower is (RMSE); groups with fewer than ``gate.min_segment_rows`` rows (or an undefined metric, e.g. AUC of a
one-class group) are listed but not judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml.config import GateConfig
from rayml.gate._predictions import Predictions, relative_regression
from rayml.models.metrics import primary_metric


def _slices(
    task: str,
    df: pd.DataFrame,
    y: np.ndarray,
    pc: np.ndarray | Predictions,
    pb: np.ndarray | Predictions | None,
    columns: list[str],
    cfg: GateConfig,
    class_labels: Sequence[Any] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """The primary metric per slice (the rows of one value of ``columns``) for the candidate and the baseline.

    Args:
        pc, pb: the candidate's and the baseline's predictions (arrays of values or labels, or :class:`Predictions`).
        class_labels: multiclass: the model's classes (macro-F1 averages over them).
    """
    if not columns:
        return [], []
    name, _ = primary_metric(task)
    cand = pc if isinstance(pc, Predictions) else Predictions(np.asarray(pc))
    base = pb if isinstance(pb, Predictions) or pb is None else Predictions(np.asarray(pb))
    keys = df[columns].astype(str).agg("|".join, axis=1).to_numpy()
    slices, failures = [], []
    for key in sorted(set(keys)):
        mask = keys == key
        if mask.sum() < cfg.min_segment_rows or (cfg.important_segments and key not in cfg.important_segments):
            continue
        mc = cand.metrics(task, y, class_labels, mask)[name]
        entry: dict[str, Any] = {"segment": key, "rows": int(mask.sum()), "candidate": mc}
        if base is not None:
            mb = base.metrics(task, y, class_labels, mask)[name]
            reg = relative_regression(task, mc, mb)
            entry.update(baseline=mb, regression=reg)
            if reg > cfg.max_segment_regression:
                failures.append(
                    f"segment {key!r}: {name} regressed {reg:.1%} ({mb:.4g} -> {mc:.4g}), "
                    f"over the slice limit of {cfg.max_segment_regression:.1%}"
                )
        slices.append(entry)
    return slices, failures


def group_gaps(
    task: str,
    df: pd.DataFrame,
    y: np.ndarray,
    pc: Predictions,
    pb: Predictions | None,
    cfg: GateConfig,
    class_labels: Sequence[Any] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """The primary metric per group value of each of ``cfg.group_columns``, each column's gap, and the failures.

    Returns:
        One entry per column: ``{"column", "metric", "gap", "max_gap", "best", "worst", "groups": [{"group",
        "rows", "candidate", "baseline"?, "judged"}]}`` (``gap``, ``best`` and ``worst`` None when fewer than two
        groups are judged), and a failure per column whose gap exceeds ``cfg.max_group_gap``.
    """
    name, higher = primary_metric(task)
    out, failures = [], []
    for column in cfg.group_columns:
        keys = df[column].astype(object).where(df[column].notna(), "<missing>").astype(str).to_numpy()
        groups = []
        for key in sorted(set(keys)):
            mask = keys == key
            entry: dict[str, Any] = {
                "group": key,
                "rows": int(mask.sum()),
                "candidate": pc.metrics(task, y, class_labels, mask)[name],
            }
            if pb is not None:
                entry["baseline"] = pb.metrics(task, y, class_labels, mask)[name]
            entry["judged"] = bool(entry["rows"] >= cfg.min_segment_rows and np.isfinite(entry["candidate"]))
            groups.append(entry)
        judged = sorted((g for g in groups if g["judged"]), key=lambda g: g["candidate"], reverse=higher)
        result: dict[str, Any] = {
            "column": column,
            "metric": name,
            "gap": None,
            "max_gap": cfg.max_group_gap,
            "best": None,
            "worst": None,
            "groups": groups,
        }
        if len(judged) >= 2:
            best, worst = judged[0], judged[-1]
            gap = relative_regression(task, worst["candidate"], best["candidate"])
            result.update(gap=gap, best=best["group"], worst=worst["group"])
            if gap > cfg.max_group_gap:
                failures.append(
                    f"group gap on {column!r}: {name} is {worst['candidate']:.4g} for {worst['group']!r} "
                    f"({worst['rows']} rows) but {best['candidate']:.4g} for {best['group']!r} ({best['rows']} rows), "
                    f"{gap:.1%} apart, over gate.max_group_gap {cfg.max_group_gap:.1%}"
                )
        out.append(result)
    return out, failures


def plot_groups(entry: dict[str, Any], path: Path) -> None:
    """A bar chart of one group column: the primary metric per group, candidate (and baseline) side by side; groups
    that are not judged are hatched."""
    # A Figure with its own Agg canvas, not pyplot: no global backend switch (a notebook keeps showing its own plots)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = entry["groups"]
    fig = Figure(figsize=(max(4.0, 0.5 * len(groups) + 2), 3.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(groups))
    has_base = any("baseline" in g for g in groups)
    width = 0.4 if has_base else 0.6
    bars = ax.bar(x - (0.2 if has_base else 0), [g["candidate"] for g in groups], width=width, label="candidate", color="#4C72B0")
    for bar, g in zip(bars, groups, strict=True):
        if not g["judged"]:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    if has_base:
        ax.bar(x + 0.2, [g.get("baseline", np.nan) for g in groups], width=width, label="baseline", color="#DD8452")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g['group']}\n({g['rows']})" for g in groups], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(entry["metric"])
    gap = "n/a" if entry["gap"] is None else f"{entry['gap']:.1%}"
    title = f"{entry['metric']} by {entry['column']}: gap {gap} (limit {entry['max_gap']:.0%}; hatched: not judged)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
