"""Shadow dispatch (bounded in-flight, never raises to the caller), disagreement, and the stats that rollouts read."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rayml.serve._shadow import ShadowDispatcher, disagreement
from rayml.serve._stats import StatsRecorder, StatsStore, VersionStats, by_version


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _dispatcher(max_in_flight: int = 2, timeout_s: float = 5.0):
    dropped, errors = [], []
    d = ShadowDispatcher(max_in_flight, timeout_s, on_drop=dropped.append, on_error=lambda tag, e: errors.append((tag, e)))
    return d, dropped, errors


def test_full_queue_drops_and_counts_without_waiting() -> None:
    async def main() -> None:
        d, dropped, errors = _dispatcher(max_in_flight=2)
        release = asyncio.Event()
        started = []

        def slow(i: int):
            async def call() -> None:
                started.append(i)
                await release.wait()

            return call

        accepted = [d.submit(i, slow(i)) for i in range(5)]
        assert accepted == [True, True, False, False, False]  # submit returns at once, it never waits for room
        assert dropped == [2, 3, 4] and d.dropped == 3 and d.in_flight == 2
        await asyncio.sleep(0.01)
        assert started == [0, 1]
        release.set()
        await d.drain()
        assert d.in_flight == 0 and d.completed == 2 and errors == []
        assert d.submit(9, slow(9))  # room again

    asyncio.run(main())


def test_shadow_errors_and_timeouts_are_counted_not_raised() -> None:
    async def main() -> None:
        d, _, errors = _dispatcher(max_in_flight=10, timeout_s=0.05)

        async def boom() -> None:
            raise RuntimeError("shadow model exploded")

        async def hang() -> None:
            await asyncio.sleep(10)

        d.submit("a", boom)
        d.submit("b", hang)
        await d.drain()
        assert d.errors == 2
        kinds = {tag: type(e).__name__ for tag, e in errors}
        assert kinds == {"a": "RuntimeError", "b": "TimeoutError"}

    asyncio.run(main())


def test_a_failing_error_callback_does_not_escape() -> None:
    async def main() -> None:
        def bad_callback(tag, e) -> None:
            raise ValueError("callback bug")

        d = ShadowDispatcher(4, 1.0, on_drop=lambda t: None, on_error=bad_callback)

        async def boom() -> None:
            raise RuntimeError("x")

        d.submit("a", boom)
        await d.drain()
        assert d.errors == 1

    asyncio.run(main())


def test_disagreement_regression_and_binary() -> None:
    r = disagreement([10.0, 20.0], [11.0, 18.0], "regression")
    assert r.abs_diff.tolist() == [1.0, 2.0] and r.abs_primary.tolist() == [10.0, 20.0]
    b = disagreement([0.2, 0.7, 0.9], [0.6, 0.8, 0.1], "binary")
    assert b.abs_diff.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="3 predictions for 2 rows"):
        disagreement([1.0, 2.0], [1.0, 2.0, 3.0], "regression")


def test_multiclass_disagreement_is_the_share_of_rows_whose_label_changed() -> None:
    labels = disagreement(
        np.asarray(["low", "high", "medium", "low"], dtype=object), ["low", "medium", "medium", "high"], "multiclass"
    )
    assert labels.abs_diff.tolist() == [0.0, 1.0, 0.0, 1.0] and labels.abs_primary.tolist() == [1.0] * 4
    ints = disagreement(np.asarray([0, 1, 2], dtype=np.int64), np.asarray([0, 1, 1], dtype=np.int64), "multiclass")
    assert ints.abs_diff.tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="2 predictions for 1 rows"):
        disagreement(["a"], ["a", "b"], "multiclass")
    window = VersionStats(compared_rows=8, diff_sum=2.0, primary_abs_sum=8.0)  # what the ingress records per request
    assert window.disagreement("multiclass") == 0.25 and window.summary("multiclass")["disagreement"] == 0.25


def test_recorder_and_store_aggregate_replicas_by_time_window() -> None:
    clock = FakeClock(1_000.2)
    store = StatsStore(retention_s=60, clock=clock)
    replicas = [StatsRecorder(clock), StatsRecorder(clock)]
    for i, rec in enumerate(replicas):
        for j in range(10):
            rec.request("m", 1, "primary", 200, 0.010 + 0.001 * j)
        rec.request("m", 2, "primary", 500 if i == 0 else 200, 0.050)
        rec.request("m", 2, "primary", 422, 0.002)
        rec.shadow("m", 3, latency_s=0.02, compared_rows=4, diff_sum=2.0, primary_abs_sum=40.0)
        rec.shadow("m", 3, dropped=True)
        rec.shadow("m", 3, error=True)
        store.push(rec.drain())
    assert replicas[0].drain() == []  # drained

    clock.t = 1_005.0
    replicas[0].request("m", 1, "primary", 200, 0.5)  # a later bucket
    store.push(replicas[0].drain())

    w = by_version(store.window("m", since=1_000.0, until=1_001.0))
    v1, v2, sh = w[(1, "primary")], w[(2, "primary")], w[(3, "shadow")]
    assert v1.requests == 20 and v1.errors == 0
    assert 0.018 <= v1.p95_ms / 1000 <= 0.0195 * 1.1  # within a 10% bucket of the true p95
    assert (v2.requests, v2.errors, v2.rejected) == (4, 1, 2) and v2.error_rate == 0.25
    assert (sh.requests, sh.errors, sh.dropped, sh.compared_rows) == (4, 2, 2, 8)
    assert sh.disagreement("regression") == pytest.approx(4.0 / 80.0)
    assert by_version(store.window("m", since=1_000.0))[(1, "primary")].requests == 21  # open-ended window
    assert store.window("other", since=0) == {}

    clock.t = 1_100.0  # past retention: old buckets are dropped on the next push
    store.push([])
    assert store.window("m", since=0) == {}


def test_version_stats_quantiles_and_empty_values() -> None:
    s = VersionStats()
    assert s.p95_ms is None and s.error_rate == 0.0 and s.disagreement("regression") is None
    for ms in range(1, 101):
        s.observe_latency(ms / 1000)
    assert 95 <= s.p95_ms <= 95 * 1.1
    assert 50 <= s.latency_quantile_ms(0.5) <= 55
    merged = VersionStats().merge(s.to_dict()).merge(s)
    assert merged.p95_ms == s.p95_ms and sum(merged.latency_counts) == 200
    b = VersionStats(compared_rows=10, diff_sum=3.0)
    assert b.disagreement("binary") == pytest.approx(0.3)
    assert set(s.summary()) >= {"requests", "error_rate", "p95_ms", "disagreement"}
    assert np.isfinite(s.summary()["p50_ms"])
