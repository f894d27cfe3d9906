"""A version placed in the ingress (rayml.serve._inline) without Ray Serve: answers like a model replica, fails like
one (a failure dict, never an exception), and learns which requests are cheap enough for the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from rayml.serve import _inline
from rayml.serve._inline import InlineVersion
from rayml.testing import instances, write_tiny_model


@pytest.fixture
def version(tmp_path: Path) -> InlineVersion:
    path = write_tiny_model(str(tmp_path / "m"), seed=0, name="tiny").path
    v = InlineVersion("tiny", 1, "sqlite:///unused.db", str(path), 1, 300.0, 1.0)
    v._count_drift = lambda *a: None  # no stats deployment here: drift counting is covered by the serving tests
    return v


def feed_of(v: InlineVersion, rows: int) -> dict[str, np.ndarray]:
    frame = {k: [r[k] for r in instances(rows)] for k in instances(1)[0]}
    return {t.name: np.asarray(frame[t.name], dtype=object if t.datatype == "BYTES" else np.float32) for t in v.predictor.inputs}


def test_answers_like_the_model_and_a_bad_feed_is_a_user_failure(version: InlineVersion) -> None:
    feed = feed_of(version, 5)
    got = asyncio.run(version.predict(feed))
    want = version.predictor.session.run(None, version.predictor.feed(feed))[0]
    assert got["ok"] and np.allclose(got["outputs"][0], want)
    bad = asyncio.run(version.predict({"nope": np.zeros(2, dtype=np.float32)}))
    assert bad["ok"] is False and bad["user_error"] is True
    assert version.metadata()["inputs"] and version.metadata()["task"] == "regression"


def test_expensive_runs_move_to_threads_and_cheap_ones_back_to_the_loop(
    version: InlineVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert version._loop_rows == _inline.INLINE_LOOP_ROWS
    version._learn(10, seconds=_inline.LOOP_BUDGET_S * 5, on_loop=True)  # 10 rows blocked the loop for 5 ms
    assert version._loop_rows == 9
    version._learn(200, seconds=_inline.LOOP_BUDGET_S / 10, on_loop=False)  # 200 rows were cheap in a thread
    assert version._loop_rows == 200
    version._learn(5, seconds=_inline.LOOP_BUDGET_S * 2, on_loop=True)
    assert version._loop_rows == 4
    # and predict() follows the boundary: a request above it runs in a worker thread
    threads = []
    monkeypatch.setattr(_inline.asyncio, "to_thread", lambda fn, *a: threads.append(fn) or asyncio.sleep(0, fn(*a)))
    asyncio.run(version.predict(feed_of(version, 3)))
    assert not threads
    asyncio.run(version.predict(feed_of(version, 6)))
    assert len(threads) == 1
