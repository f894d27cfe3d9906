"""The live half of the closed loop, without Ray: capture off the response path, the live join of labels to captured
answers, and the rollout quality gate (a candidate that is fast and healthy but wrong is rolled back; a good one is
promoted; too few labels decide nothing)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml.feedback import LabelStats, LiveJoin, list_files, quality_excess
from rayml.feedback._capture import Captured, CaptureWriter, to_table
from rayml.serve._rollout import PROMOTED, ROLLED_BACK, evaluate, quality_check
from rayml.serve._stats import StatsRecorder, StatsStore, VersionStats
from tests.unit.test_serve_rollout import FakeStats, make, run, vs


def captured(dest: str, i: int, *, version: int = 1, route: str = "primary", task: str = "regression", n: int = 2) -> Captured:
    outputs = [np.arange(n, dtype=np.float32) + i] if task == "regression" else [np.full(n, 0.8)]
    return Captured(
        destination=dest,
        model="m",
        version=version,
        route=route,
        inference_id=f"id-{i}",
        ts=time.time(),
        task=task,
        class_labels=[] if task == "regression" else ["no", "yes"],
        outputs=outputs,
        inputs={"age": np.full(n, 40.0), "city": np.array(["x"] * n, dtype=object)},
    )


def test_capture_writes_every_row_without_excluded_columns_and_drops_when_full(tmp_path: Path) -> None:
    dropped: list[int] = []
    written: list[tuple] = []
    w = CaptureWriter(3, on_dropped=lambda m, n: dropped.append(n), on_written=lambda *a: written.append(a))
    gate = threading.Event()
    real_add = w._add
    w._add = lambda item: (gate.wait(5), real_add(item))  # type: ignore[method-assign]  # hold the writer thread
    from rayml.feedback._capture import inputs_for_capture

    accepted = 0
    for i in range(10):  # the writer holds one item, the queue three: the rest are dropped, at once
        item = captured(str(tmp_path), i)
        item.inputs = inputs_for_capture(item.inputs or {}, {"city"})
        t0 = time.perf_counter()
        accepted += w.submit(item)
        assert time.perf_counter() - t0 < 0.05, "submit must never wait for the writer"
    gate.set()
    assert w.flush()
    assert 3 <= accepted <= 4 and sum(dropped) == 2 * (10 - accepted) and w.dropped == 10 - accepted
    files = list_files(str(tmp_path), "captures", "m")
    table = pq.read_table(files[0])
    assert table.num_rows == 2 * accepted == sum(n for *_, n in written)
    assert table.column_names[:3] == ["inference_id", "row", "ts"]
    assert all("city" not in s and "age" in s for s in table["inputs"].to_pylist())
    assert "/model=m/version=1/hour=" in files[0]


def test_a_failing_destination_drops_and_counts_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    dropped: list[int] = []
    w = CaptureWriter(10, on_dropped=lambda m, n: dropped.append(n))
    assert w.submit(captured(str(blocker), 0))
    assert w.flush() and dropped == [2] and w.written == 0


def test_capture_rows_per_task() -> None:
    t = to_table([captured("/x", 0, task="binary", n=3)])
    assert t["prediction"].to_pylist() == pytest.approx([0.8] * 3) and t["predicted_label"].to_pylist() == ["yes"] * 3
    multi = Captured("/x", "m", 1, "primary", "a", 0.0, "multiclass", ["a", "b"], [np.array(["b"]), np.array([[0.1, 0.9]])], None)
    row = to_table([multi]).to_pylist()[0]
    assert row["predicted_label"] == "b" and row["probabilities"] == [0.1, 0.9] and row["inputs"] is None


def test_live_join_counts_outcomes_and_judges_every_version_that_answered() -> None:
    j = LiveJoin(max_predictions=3)
    j.add("m", "a", 1, "primary", 100.0, [10.0, 20.0], [None, None])
    j.add("m", "a", 2, "shadow", 100.0, [13.0, 20.0], [None, None])
    counts, contributions = j.label(
        "m", "regression", None, [("a", 0, "11.0"), ("a", 0, "11.0"), ("a", 0, "99"), ("zz", 0, "1")], 110.0
    )
    assert counts == {"joined": 1, "duplicate": 1, "conflict": 1, "unknown": 1}
    by_version = {v: s for v, _, _, s in contributions}
    assert by_version[1].abs_err_sum == 1.0 and by_version[2].abs_err_sum == 2.0 and by_version[2].delay_sum_s == 10.0
    j.add("m", "b", 1, "primary", 101.0, [1.0, 2.0], [None, None])  # 4 rows > 3: the oldest is forgotten
    assert j.label("m", "regression", None, [("a", 0, "1.0")], 120.0)[0]["unknown"] == 1


def test_classification_quality_and_the_confidence_bound() -> None:
    j = LiveJoin()
    for i in range(100):
        j.add("m", f"r{i}", 1, "primary", 0.0, [0.9], ["yes"])
    _, contrib = j.label("m", "binary", "yes", [(f"r{i}", 0, "yes" if i < 90 else "no") for i in range(100)], 1.0)
    s = LabelStats()
    for *_, c in contrib:
        s.merge(c)
    assert s.metrics("binary")["accuracy"] == pytest.approx(0.9) and s.metrics("binary")["logloss"] > 0
    # 20 points worse on 200 labels each: surely worse by more than 5 points; 2 points worse on 50: not provably
    bad, good = LabelStats(labelled=200, wrong=60), LabelStats(labelled=200, wrong=20)
    assert quality_excess(bad, good, "binary", 0.95)[0] > 0.05
    assert quality_excess(LabelStats(labelled=50, wrong=6), LabelStats(labelled=50, wrong=5), "binary", 0.95)[0] < 0.0


def test_stats_store_puts_label_quality_in_the_bucket_of_the_prediction() -> None:
    clock = [1000.0]
    store = StatsStore(clock=lambda: clock[0])
    rec = StatsRecorder(clock=lambda: clock[0])
    rec.prediction("m", "a", 1, "primary", [5.0], [None])
    store.push_predictions(rec.drain_predictions())
    clock[0] = 1500.0
    assert store.label("m", "regression", None, [("a", 0, "7")]) == {"joined": 1, "unknown": 0, "duplicate": 0, "conflict": 0}
    early = store.window("m", 999.0, 1001.0)["1/primary"]
    assert early["labelled"] == 1 and early["abs_err_sum"] == 2.0 and early["delay_sum_s"] == 500.0
    assert store.window("m", 1001.0, 2000.0) == {}


def labelled(n: int, mae: float, sd: float = 0.5) -> VersionStats:
    s = VersionStats()
    s.labelled, s.abs_err_sum, s.sq_err_sum = n, n * mae, n * (mae * mae + sd * sd)
    return s


class QualityStats(FakeStats):
    """FakeStats whose windows also carry labelled predictions (baseline MAE 1.0; the candidate's is given)."""

    def __init__(self, candidate_mae: float, labels: int = 200) -> None:
        super().__init__()
        self.candidate_mae, self.labels = candidate_mae, labels

    def window(self, model, since, until):
        out = super().window(model, since, until)
        out[(1, "primary")].merge(labelled(self.labels, 1.0))
        out[(2, "shadow")].merge(labelled(self.labels, self.candidate_mae))
        return out


def test_a_healthy_but_wrong_candidate_is_rolled_back_on_live_quality(tmp_path: Path) -> None:
    c, traffic, promoter, clock = make(tmp_path, QualityStats(candidate_mae=1.5), max_quality_regression=0.1, min_labels=30)
    run(c, clock, 400)
    assert c.state.phase == ROLLED_BACK and promoter.calls == []
    assert "live quality" in (c.state.reason or "") and "MAE" in (c.state.reason or "")
    # the same candidate without the gate is promoted: nothing else tells it apart
    c2, _, promoter2, clock2 = make(tmp_path / "off", QualityStats(candidate_mae=1.5))
    run(c2, clock2, 400)
    assert c2.state.phase == PROMOTED


def test_a_good_candidate_passes_the_quality_gate_and_too_few_labels_decide_nothing(tmp_path: Path) -> None:
    c, _, promoter, clock = make(tmp_path, QualityStats(candidate_mae=1.02), max_quality_regression=0.1)
    run(c, clock, 400)
    assert c.state.phase == PROMOTED
    starved, _, _, clock3 = make(tmp_path / "few", QualityStats(candidate_mae=3.0, labels=5), max_quality_regression=0.1)
    run(starved, clock3, 400)
    assert starved.state.phase not in (PROMOTED, ROLLED_BACK) and starved.state.inconclusive > 0
    assert "min_labels" in " ".join(starved.state.last_check["reasons"])


def test_pinned_answers_never_count_and_the_snapshot_shows_both_versions(tmp_path: Path) -> None:
    c, *_ = make(tmp_path, max_quality_regression=0.1, min_labels=10)
    window = {(1, "primary"): labelled(50, 1.0), (2, "pinned"): labelled(50, 9.0), (2, "primary"): labelled(50, 1.0)}
    failure, wait, snapshot = quality_check(c.state, window)
    assert failure is None and wait is None and snapshot["candidate"]["labelled"] == 50
    check = evaluate(c.state, {(1, "primary"): vs(), (2, "primary"): vs()}, window)
    assert check.snapshot["live_quality_since_start"]["baseline"]["mae"] == pytest.approx(1.0)
