"""A short serving probe: how fast a model directory answers, measured in this process with ONNX Runtime.

The numbers are what a serving replica or a batch actor pays per call (one intra-op thread, as they run), without
the HTTP and routing around it. They are comparable between two versions probed on the same machine in the same
process (the gate probes candidate and production side by side), and recorded on each version for the record.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from rayml.models.model_dir import ModelDir

# version tags the probe's and the training run's figures are recorded under (``rayml.perf.*``)
PERF_TAGS = {
    "train_time_s": "rayml.perf.train_time_s",
    "peak_memory_bytes": "rayml.perf.peak_memory_bytes",
    "latency_ms": "rayml.perf.latency_ms",
    "throughput_rows_s": "rayml.perf.throughput_rows_s",
}


def probe_serving(model: ModelDir, sample: pd.DataFrame, *, budget_s: float = 0.5, batch_rows: int = 1024) -> dict[str, float]:
    """Median single-row latency and batch throughput of ``model`` on rows like ``sample``.

    Args:
        model: the model directory (a model set routes rows to its segments' models, as serving does).
        sample: a few raw rows (the model's input columns; a model set's segment columns too); repeated up to
            ``batch_rows`` for the throughput figure.
        budget_s: about how long each of the two measurements runs (at least 5 single-row calls and 3 batches).
        batch_rows: rows per batch of the throughput measurement.

    Returns:
        ``{"latency_ms": p50 of one-row calls, "throughput_rows_s": rows per second in batches of batch_rows}``;
        empty when ``sample`` has no rows.
    """
    if len(sample) == 0:
        return {}
    one = sample.iloc[:1]
    batch = sample.iloc[np.arange(batch_rows) % len(sample)].reset_index(drop=True)
    model.predict_outputs(one)  # the session is created (and warmed) outside the clock
    single: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(single) < 5 or (time.perf_counter() < deadline and len(single) < 2000):
        t = time.perf_counter()
        model.predict_outputs(one)
        single.append(time.perf_counter() - t)
    rows, spent, calls = 0, 0.0, 0
    while calls < 3 or spent < budget_s:
        t = time.perf_counter()
        model.predict_outputs(batch)
        spent += time.perf_counter() - t
        rows += len(batch)
        calls += 1
    return {"latency_ms": float(np.median(single) * 1000.0), "throughput_rows_s": float(rows / max(spent, 1e-9))}
