"""Rollout decisions with fake traffic, stats and registry, and a fake clock: promote, rollback, manual steps, resume;
and that the decision judges the candidate, not its callers (an adversarial trickle of bad inputs, 4xx, thin traffic,
a stats restart)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rayml.config import RolloutConfig
from rayml.serve._rollout import (
    PROMOTED,
    PROMOTING,
    ROLLED_BACK,
    WAITING,
    RolloutController,
    RolloutState,
    StateStore,
    WindowIncompleteError,
    evaluate,
)
from rayml.serve._stats import VersionStats, excess_lower_bound, wilson_interval


class Clock:
    def __init__(self) -> None:
        self.t = 10_000.0

    def __call__(self) -> float:
        return self.t


def vs(requests: int = 100, errors: int = 0, latency_ms: float = 10.0, compared: int = 0, diff: float = 0.0, rejected: int = 0):
    s = VersionStats(requests=requests, errors=errors, rejected=rejected, compared_rows=compared, diff_sum=diff)
    s.primary_abs_sum = 100.0 * compared
    for _ in range(requests):
        s.observe_latency(latency_ms / 1000)
    return s


class FakeTraffic:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[int, float], tuple[int, float] | None, list[int]]] = []
        self.fail_next = False

    def apply(self, model, weights, shadow, remove) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("Serve controller unreachable")
        self.calls.append((dict(weights), shadow, list(remove)))


class FakeStats:
    """Healthy baseline; the candidate's numbers come from ``candidate``."""

    def __init__(self, candidate: VersionStats | None = None, shadow: VersionStats | None = None) -> None:
        self.candidate = candidate or vs()
        self.shadow = shadow or vs(compared=100, diff=100 * 100 * 0.01)  # 1% relative disagreement
        self.windows: list[tuple[float, float]] = []

    def window(self, model, since, until):
        self.windows.append((since, until))
        return {(1, "primary"): vs(), (2, "primary"): self.candidate, (2, "shadow"): self.shadow}


class FakePromoter:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def promote(self, model, version, baseline):
        self.calls.append((model, version))
        return {"production": version, "previous": 1}


def make(tmp_path: Path, stats: FakeStats | None = None, **cfg) -> tuple[RolloutController, FakeTraffic, FakePromoter, Clock]:
    config = RolloutConfig(**{"steps": [10, 50, 100], "interval_s": 60, "failure_budget": 0, **cfg})
    state = RolloutState(model="m", app_name="app", baseline=1, candidate=2, config=config.model_dump(mode="json"))
    traffic, promoter, clock = FakeTraffic(), FakePromoter(), Clock()
    c = RolloutController(state, StateStore(tmp_path, "app", "m"), traffic, stats or FakeStats(), promoter, clock)
    c.start()
    return c, traffic, promoter, clock


def run(c: RolloutController, clock: Clock, seconds: float, step_s: float = 1.0) -> None:
    end = clock.t + seconds
    while clock.t < end and not c.state.done:
        c.tick()
        clock.t += step_s


def test_a_good_candidate_walks_every_step_and_is_promoted(tmp_path: Path) -> None:
    c, traffic, promoter, clock = make(tmp_path)
    run(c, clock, 400)
    assert c.state.phase == PROMOTED and promoter.calls == [("m", 2)]
    weights = [w for w, _, _ in traffic.calls]
    assert weights == [{1: 0.9, 2: 0.1}, {1: 0.5, 2: 0.5}, {1: 0.0, 2: 1.0}, {1: 0.0, 2: 1.0}]
    assert all(shadow == (2, 100.0) for _, shadow, _ in traffic.calls[:3]) and traffic.calls[-1][1] is None
    events = [r["event"] for r in c.store.history()]
    assert events[0] == "started" and events[-1] == "promoted" and events.count("check_passed") == 3
    promoted = c.store.history()[-1]
    assert "every step passed" in promoted["reason"] and promoted["last_check"]["candidate"]["requests"] == 100
    assert c.store.load().phase == PROMOTED  # persisted


def test_each_step_is_judged_on_its_own_full_window(tmp_path: Path) -> None:
    stats = FakeStats()
    c, _, _, clock = make(tmp_path, stats)
    run(c, clock, 400)
    assert len(stats.windows) == 3 and all(until - since == pytest.approx(60) for since, until in stats.windows)
    assert all(b[0] >= a[1] for a, b in zip(stats.windows, stats.windows[1:], strict=False))  # no overlap between steps


def test_an_erroring_candidate_is_rolled_back_with_the_reason(tmp_path: Path) -> None:
    c, traffic, promoter, clock = make(tmp_path, FakeStats(candidate=vs(errors=9)), failure_budget=1)
    run(c, clock, 400)
    assert c.state.phase == ROLLED_BACK and promoter.calls == []
    assert traffic.calls[-1] == ({1: 1.0, 2: 0.0}, None, [2])  # all traffic back, candidate removed
    assert "candidate error rate (5xx) 9.00% (9/100) vs baseline 0.00% (0/100, this window)" in c.state.reason
    assert "max_error_rate_increase 1.00%" in c.state.reason and "2 failed checks" in c.state.reason
    events = [r["event"] for r in c.store.history()]
    assert events.count("check_failed") == 2 and events[-1] == "rolled_back"  # budget 1: the second failure rolls back
    assert max(w.get(2, 0) for w, _, _ in traffic.calls) == pytest.approx(0.1)  # it never got past the first step


@pytest.mark.parametrize(
    "candidate, shadow, fragment",
    [
        (vs(latency_ms=50), None, "x the baseline's"),
        (vs(rejected=20), None, "candidate rejection rate (4xx) 20.00% (20/100) vs baseline 0.00%"),
        (vs(), vs(compared=100, diff=100 * 100 * 3.0), "disagreement with the baseline 3 > max_disagreement 0.25"),
    ],
)
def test_each_threshold_fails_a_check(tmp_path: Path, candidate, shadow, fragment: str) -> None:
    c, _, _, clock = make(tmp_path, FakeStats(candidate=candidate, shadow=shadow))
    run(c, clock, 200)
    assert c.state.phase == ROLLED_BACK and fragment in c.state.reason, c.state.reason


def test_wild_outputs_are_caught_in_the_shadow_phase_before_any_traffic(tmp_path: Path) -> None:
    wild = FakeStats(shadow=vs(compared=200, diff=200 * 100 * 50.0))
    c, traffic, _, clock = make(tmp_path, wild, shadow_s=30)
    run(c, clock, 200)
    assert c.state.phase == ROLLED_BACK and "disagreement" in c.state.reason
    assert all(w.get(2, 0.0) == 0.0 for w, _, _ in traffic.calls)  # the candidate never answered a caller


def test_a_manual_step_waits_for_approval_and_records_it(tmp_path: Path) -> None:
    c, traffic, _, clock = make(tmp_path, manual_steps=[50])
    run(c, clock, 600)
    assert c.state.phase == WAITING and c.state.step_percent == 50
    assert traffic.calls[-1][0] == {1: 0.5, 2: 0.5}  # held at 50%
    c.approve("alice", "dashboards look fine")
    run(c, clock, 200)
    assert c.state.phase == PROMOTED
    approval = next(r for r in c.store.history() if r["event"] == "approved")["approval"]
    assert approval["by"] == "alice" and approval["step_percent"] == 50 and approval["note"] == "dashboards look fine"


def test_manual_rollback_and_promote_overrides(tmp_path: Path) -> None:
    c, traffic, promoter, clock = make(tmp_path)
    run(c, clock, 70)
    c.request("rollback", by="bob", reason="pager went off")
    c.tick()
    assert c.state.phase == ROLLED_BACK and c.state.reason == "manual rollback by bob: pager went off"
    d, _, promoter2, clock2 = make(tmp_path / "other")
    run(d, clock2, 10)
    d.request("promote", by="carol")
    d.tick()
    assert d.state.phase == PROMOTED and promoter2.calls == [("m", 2)]


def test_a_restarted_controller_resumes_without_double_stepping(tmp_path: Path) -> None:
    stats = FakeStats()
    c, traffic, promoter, clock = make(tmp_path, stats)
    run(c, clock, 100)  # step 10% passed, step 50% applied and running
    assert c.state.step_index == 1 and c.state.applied
    applied_before = len(traffic.calls)
    # the process dies; a new controller loads the state from disk
    resumed = RolloutController(c.store.load(), c.store, traffic, stats, promoter, clock)
    resumed.tick()
    assert len(traffic.calls) == applied_before  # weights were already applied: not re-applied, window kept
    assert resumed.state.window_start == c.state.window_start
    run(resumed, clock, 400)
    assert resumed.state.phase == PROMOTED
    assert [w for w, _, _ in traffic.calls].count({1: 0.5, 2: 0.5}) == 1  # step 50% applied exactly once
    assert len(stats.windows) == 3  # three checks for three steps, none repeated


def test_a_crash_between_deciding_and_applying_redoes_only_the_apply(tmp_path: Path) -> None:
    c, traffic, promoter, clock = make(tmp_path)
    run(c, clock, 63)  # first step passes at t+62 (60 s window + 2 s settle); the advance to 50% is saved
    traffic.fail_next = True
    with pytest.raises(ConnectionError):
        run(c, clock, 5)
    state = c.store.load()
    assert state.step_index == 1 and not state.applied  # decided, not yet applied
    resumed = RolloutController(state, c.store, traffic, FakeStats(), promoter, clock)
    resumed.tick()
    assert traffic.calls[-1][0] == {1: 0.5, 2: 0.5} and resumed.state.applied


def test_a_crash_half_way_through_promotion_finishes_it(tmp_path: Path) -> None:
    c, traffic, promoter, clock = make(tmp_path)
    c.state.phase, c.state.reason = PROMOTING, "every step passed"
    c.store.save(c.state)
    resumed = RolloutController(c.store.load(), c.store, traffic, FakeStats(), promoter, clock)
    resumed.tick()
    assert resumed.state.phase == PROMOTED and promoter.calls == [("m", 2)] and traffic.calls[-1][0] == {1: 0.0, 2: 1.0}


def test_evaluate_reports_every_failed_criterion_at_once() -> None:
    cfg = RolloutConfig(max_p95_latency_ms=20.0)
    state = RolloutState(model="m", app_name="a", baseline=1, candidate=2, config=cfg.model_dump(mode="json"))
    check = evaluate(state, {(1, "primary"): vs(), (2, "primary"): vs(errors=50, latency_ms=80.0)})
    assert not check.passed and len(check.reasons) == 3  # error rate, absolute p95, p95 ratio
    assert check.snapshot["candidate"]["errors"] == 50 and check.snapshot["baseline"]["version"] == 1


def test_names_that_would_escape_the_state_directory_are_refused(tmp_path: Path) -> None:
    from rayml.errors import InvalidNameError

    for app, model in (("app", "../../etc/passwd"), ("..", "m"), ("app", "a/b")):
        with pytest.raises(InvalidNameError):
            StateStore(tmp_path, app, model)


def test_a_multiclass_candidate_is_judged_on_the_share_of_changed_labels() -> None:
    cfg = RolloutConfig(max_disagreement=0.1, min_shadow_comparisons=50)
    state = RolloutState(model="m", app_name="a", baseline=1, candidate=2, config=cfg.model_dump(mode="json"), task="multiclass")
    changed = {(1, "primary"): vs(), (2, "primary"): vs(), (2, "shadow"): vs(compared=100, diff=30.0)}  # 30 of 100 labels
    check = evaluate(state, changed)
    assert not check.passed and check.reasons == ["disagreement with the baseline 0.3 > max_disagreement 0.1"]
    assert check.snapshot["shadow"]["disagreement"] == 0.3 and check.snapshot["shadow"]["compared_rows"] == 100
    steady = {**changed, (2, "shadow"): vs(compared=100, diff=5.0)}
    assert evaluate(state, steady).passed


# --- judging the candidate, not the callers ----------------------------------------------------------------------------
class SimulatedTraffic:
    """Counts for each window as a random split of ``rps`` requests a second would give them, at the weights the rollout
    applied: every request fails with ``trickle`` (a bad input: it fails on any version), and a candidate request
    fails with ``own`` more (the candidate's own bug)."""

    def __init__(self, controller_state, seed: int, trickle: float, own: float = 0.0, rps: float = 20.0) -> None:
        self.state, self.rng, self.trickle, self.own, self.rps = controller_state, random.Random(seed), trickle, own, rps
        self.windows: list[tuple[float, float]] = []

    def _binomial(self, n: int, p: float) -> int:
        return sum(self.rng.random() < p for _ in range(n))

    def window(self, model, since, until):
        self.windows.append((since, until))
        n = int(self.rps * (until - since))
        share = self.state().weights()[2]
        n_cand = self._binomial(n, share)
        n_base = n - n_cand
        base = VersionStats(requests=n_base, errors=self._binomial(n_base, self.trickle))
        cand = VersionStats(requests=n_cand, errors=self._binomial(n_cand, self.trickle + self.own))
        for s in (base, cand):
            for _ in range(s.requests):
                s.observe_latency(0.01)
        return {(1, "primary"): base, (2, "primary"): cand}


def simulate(tmp_path: Path, seed: int, trickle: float, own: float = 0.0) -> RolloutController:
    config = RolloutConfig(steps=[10, 50, 100], interval_s=60, max_disagreement=None)  # failure_budget 1 (default)
    state = RolloutState(model="m", app_name="app", baseline=1, candidate=2, config=config.model_dump(mode="json"))
    holder: list[RolloutController] = []
    stats = SimulatedTraffic(lambda: holder[0].state, seed, trickle, own)
    clock = Clock()
    c = RolloutController(state, StateStore(tmp_path / str(seed), "app", "m"), FakeTraffic(), stats, FakePromoter(), clock)
    holder.append(c)
    c.start()
    run(c, clock, 1200)
    return c


SEEDS = range(20)


def test_an_adversarial_trickle_that_fails_every_version_never_rolls_back_a_good_candidate(tmp_path: Path) -> None:
    trickle = 0.03  # 3x the margin: the old rule (candidate error rate > 1%) rolled back nearly every rollout
    outcomes = [simulate(tmp_path, seed, trickle) for seed in SEEDS]
    assert [c.state.phase for c in outcomes] == [PROMOTED] * len(SEEDS), [c.state.reason for c in outcomes]
    # the candidate really did fail on the trickle, as often as the baseline did
    checked = [r for c in outcomes for r in c.store.history() if r["event"] == "check_passed"]
    assert sum(r["snapshot"]["candidate"]["errors"] for r in checked) > 0.02 * sum(
        r["snapshot"]["candidate"]["requests"] for r in checked
    )


def test_a_truly_bad_candidate_is_rolled_back_under_the_same_trickle(tmp_path: Path) -> None:
    outcomes = [simulate(tmp_path, seed, trickle=0.03, own=0.05) for seed in SEEDS]
    assert [c.state.phase for c in outcomes] == [ROLLED_BACK] * len(SEEDS)
    assert all("candidate error rate (5xx)" in c.state.reason for c in outcomes)
    # mostly caught before it got all the traffic; the rest at 100%, against the baseline's earlier windows
    assert sum(c.state.step_index <= 1 for c in outcomes) >= 0.8 * len(SEEDS)


def test_a_bad_candidate_at_100_percent_is_compared_with_the_baselines_earlier_windows(tmp_path: Path) -> None:
    config = RolloutConfig(steps=[50, 100], max_disagreement=None)
    state = RolloutState(model="m", app_name="a", baseline=1, candidate=2, config=config.model_dump(mode="json"), step_index=1)
    state.baseline_seen = {"requests": 500, "errors": 15, "rejected": 0}  # 3% at the 50% step
    same = {(1, "primary"): VersionStats(), (2, "primary"): vs(requests=1000, errors=30)}
    assert evaluate(state, same).passed  # 3% vs 3%: the trickle, not the candidate
    worse = {(1, "primary"): VersionStats(), (2, "primary"): vs(requests=1000, errors=100)}
    check = evaluate(state, worse)
    assert not check.passed and "vs baseline 3.00% (15/500, earlier windows)" in check.reasons[0]
    assert check.snapshot["baseline_earlier_windows"]["requests"] == 500


def test_without_any_baseline_answers_the_candidates_own_share_is_bounded() -> None:
    state = RolloutState(model="m", app_name="a", baseline=1, candidate=2, config=RolloutConfig(steps=[100]).model_dump())
    assert evaluate(state, {(2, "primary"): vs(requests=1000, errors=3)}).passed
    check = evaluate(state, {(2, "primary"): vs(requests=1000, errors=50)})
    assert not check.passed and "no baseline answers to compare with" in check.reasons[0]


def test_caller_mistakes_4xx_are_never_candidate_errors() -> None:
    state = RolloutState(
        model="m", app_name="a", baseline=1, candidate=2, config=RolloutConfig(max_disagreement=None).model_dump()
    )
    # a fifth of every version's requests are caller mistakes: nothing is wrong with the candidate
    check = evaluate(state, {(1, "primary"): vs(requests=900, rejected=180), (2, "primary"): vs(requests=100, rejected=20)})
    assert check.passed, check.reasons
    assert check.snapshot["candidate"]["errors"] == 0 and check.snapshot["candidate"]["rejected"] == 20


def test_too_little_traffic_holds_the_step_and_decides_nothing(tmp_path: Path) -> None:
    c, traffic, promoter, clock = make(tmp_path, FakeStats(candidate=vs(requests=5)))
    run(c, clock, 400)
    assert c.state.phase == "canary" and c.state.step_index == 0 and c.state.failures == 0 and promoter.calls == []
    assert c.state.inconclusive >= 5 and "only 5 candidate requests" in c.state.last_check["reasons"][0]
    events = [r["event"] for r in c.store.history()]
    assert "check_failed" not in events and events.count("check_inconclusive") == c.state.inconclusive
    assert [w for w, _, _ in traffic.calls] == [{1: 0.9, 2: 0.1}]  # held at its step


class RestartingStats(FakeStats):
    """The stats replica restarts during the first window: its earlier counts are gone."""

    def __init__(self, restarted_at: float) -> None:
        super().__init__()
        self.restarted_at = restarted_at

    def window(self, model, since, until):
        if since < self.restarted_at:
            self.windows.append((since, -1.0))
            raise WindowIncompleteError(self.restarted_at)
        return super().window(model, since, until)


def test_a_window_the_restarted_stats_replica_did_not_see_is_started_again_not_judged(tmp_path: Path) -> None:
    stats = RestartingStats(restarted_at=10_030.0)  # 30 s into the first step
    c, _, promoter, clock = make(tmp_path, stats)
    run(c, clock, 80)  # the first check (at 62 s) finds the window incomplete; the new one is not over yet
    history = c.store.history()
    restarted = [r for r in history if r["event"] == "window_restarted"]
    assert len(restarted) == 1 and "stats replica restarted" in restarted[0]["reason"]
    assert c.state.step_index == 0 and c.state.failures == 0 and c.state.window_start == 10_030.0 + c.state.settle_s
    run(c, clock, 600)
    assert c.state.phase == PROMOTED and promoter.calls == [("m", 2)]
    judged = [w for w in stats.windows if w[1] > 0]
    assert judged[0][0] >= 10_030.0  # the first judged window began after the restart


def test_the_one_sided_bound_is_sound_at_the_edges() -> None:
    lo, hi = wilson_interval(0, 20, 1.645)
    assert lo == 0.0 and 0.1 < hi < 0.15
    assert wilson_interval(0, 0, 1.645) == (0.0, 1.0)
    assert excess_lower_bound(0, 100, 0, 100, 1.645) < 0  # nothing observed: no excess
    assert excess_lower_bound(50, 100, 0, 100, 1.645) > 0.35  # obviously worse
    assert excess_lower_bound(5, 100, None, 0, 1.645) == pytest.approx(wilson_interval(5, 100, 1.645)[0])
