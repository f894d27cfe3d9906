"""Performance: is the candidate slower, hungrier or more costly to train than the baseline?

Serving figures are measured here, not read from the tags: :func:`rayml.models.probe_serving` runs candidate and
baseline side by side in this process on the validation rows, in the order candidate, baseline, baseline,
candidate (a machine that slows down or speeds up during the probe affects both alike), and each model's figure is
the mean of its two runs. Training time and peak memory can only be read from the versions' ``rayml.perf.*`` tags;
they are compared when both versions have them. A regression is relative: ``candidate / baseline - 1`` for latency,
training time and memory, ``1 - candidate / baseline`` for throughput.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rayml.config import GateConfig
from rayml.models import PERF_TAGS, ModelDir, probe_serving

_PROBE_ROWS = 256  # the sample the probe repeats into batches: enough variety, and a small copy


def performance(
    cand: ModelDir,
    base: ModelDir | None,
    cand_tags: dict[str, str],
    base_tags: dict[str, str] | None,
    df: pd.DataFrame,
    cfg: GateConfig,
) -> tuple[dict[str, Any], list[str]]:
    """The ``performance`` section of the report and the regressions over their limits (as sentences).

    Returns:
        ``({"candidate": figures, "baseline": figures, "regression": {figure: relative}, "limits": {figure: max}},
        problems)``; figures are ``latency_ms``, ``throughput_rows_s`` (probed) and ``train_time_s``,
        ``peak_memory_bytes`` (from the tags, when recorded).
    """
    # each model takes its own columns (a candidate may drop or add features)
    models = [cand] if base is None else [cand, base]
    columns = list(dict.fromkeys(c for m in models for c in [*m.input_names, *m.segment_columns]))
    sample = df[[c for c in columns if c in df.columns]].head(_PROBE_ROWS).reset_index(drop=True)
    budget = cfg.perf_probe_s / 4  # per measurement: two per probe run (latency, throughput), two runs per model
    if base is None:
        cand_fig = probe_serving(cand, sample, budget_s=budget * 2)
        base_fig: dict[str, float] = {}
    else:
        runs = [probe_serving(m, sample, budget_s=budget) for m in (cand, base, base, cand)]
        cand_fig, base_fig = _mean(runs[0], runs[3]), _mean(runs[1], runs[2])
    for figure in ("train_time_s", "peak_memory_bytes"):
        c = _tag(cand_tags, figure)
        if c is not None:
            cand_fig[figure] = c
        b = _tag(base_tags or {}, figure)
        if base is not None and b is not None:
            base_fig[figure] = b
    limits = {
        "latency_ms": cfg.max_latency_regression,
        "throughput_rows_s": cfg.max_throughput_regression,
        "train_time_s": cfg.max_train_time_regression,
        "peak_memory_bytes": cfg.max_memory_regression,
    }
    regression: dict[str, float] = {}
    problems = []
    for figure, limit in limits.items():
        c, b = cand_fig.get(figure), base_fig.get(figure)
        if c is None or b is None or not b > 0:
            continue
        regression[figure] = 1.0 - c / b if figure == "throughput_rows_s" else c / b - 1.0
        if regression[figure] > limit:
            worse = "lower" if figure == "throughput_rows_s" else "higher"
            problems.append(
                f"performance: {figure} {_fmt(figure, c)} is {regression[figure]:.0%} {worse} than the baseline's "
                f"{_fmt(figure, b)}, over gate.max_{_LIMIT_NAMES[figure]}_regression {limit:.0%}"
            )
    section = {"candidate": cand_fig, "baseline": base_fig, "regression": regression, "limits": limits}
    return section, problems


_LIMIT_NAMES = {
    "latency_ms": "latency",
    "throughput_rows_s": "throughput",
    "train_time_s": "train_time",
    "peak_memory_bytes": "memory",
}


def _mean(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: float(np.mean([a[k], b[k]])) for k in a if k in b}


def _tag(tags: dict[str, str], figure: str) -> float | None:
    try:
        value = float(tags[PERF_TAGS[figure]])
    except (KeyError, ValueError):
        return None
    return value if np.isfinite(value) and value >= 0 else None


def _fmt(figure: str, value: float) -> str:
    if figure == "peak_memory_bytes":
        return f"{value / 2**20:.1f} MiB"
    unit = {"latency_ms": " ms", "throughput_rows_s": " rows/s", "train_time_s": " s"}[figure]
    return f"{value:.4g}{unit}"
