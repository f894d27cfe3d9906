"""Per-worker resource samples of a training worker (outside Ray: values for MLflow, no gauges to export)."""

from __future__ import annotations

import numpy as np

from rayml.monitor.training import RESOURCE_KEYS, WorkerResources


def test_samples_are_named_by_rank_and_measure_this_process() -> None:
    res = WorkerResources("m", "run-1", rank=3)
    np.linalg.svd(np.random.default_rng(0).normal(size=(300, 300)))  # some CPU work between samples
    cpu = res.sample()
    assert set(cpu) == {"worker3_cpu_percent", "worker3_memory_rss_bytes"}
    assert cpu["worker3_memory_rss_bytes"] > 10e6 and cpu["worker3_cpu_percent"] >= 0
    gpu = res.sample(gpu_memory_bytes=1234)
    assert gpu["worker3_gpu_memory_bytes"] == 1234.0
    assert {k.split("_", 1)[1] for k in gpu} == set(RESOURCE_KEYS)
