"""Progressive delivery of a candidate version: optional shadow phase, canary steps, metric-gated promote/rollback.

This module is the decision logic only (no Ray): a :class:`RolloutController` advances a persisted
:class:`RolloutState` one :meth:`~RolloutController.tick` at a time, talking to the outside world through three small
interfaces (traffic, stats window, registry) and a clock, so unit tests drive it with fakes and a fake clock.

Each step runs for ``interval_s``; then its window of traffic (aggregated over every ingress replica) is checked
against the thresholds (Flagger/Argo style): the candidate's share of errors (5xx) and of rejections (4xx) against the
baseline's on the same traffic, p95 latency against the baseline (ratio) and/or an absolute bound, and disagreement
with the baseline on mirrored requests. A passing check advances (or waits for `rayml rollout approve` at a manual
step); a failing one retries the step, until more than ``failure_budget`` checks have failed: then traffic goes 100%
back to the baseline. A window with too little traffic is inconclusive: the step holds and nothing is decided.

Judging the candidate, not the callers: shares are compared with a one-sided test (:func:`~rayml.serve._stats.
excess_lower_bound`), so inputs that fail every version raise both shares alike and never roll back a good candidate;
at a 100% step the baseline's counts from the rollout's earlier windows stand in for the idle baseline.

Crash safety: the state is written (atomically) before every side effect, and every side effect is idempotent
(absolute weights, an alias move), so a controller restarted at any point redoes at most the last side effect and
never advances a step twice: a step only advances after a check of a full window observed after its weights
were applied. Every decision, with its metric snapshot, is appended to the audit log.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rayml._private import fs
from rayml.config import RolloutConfig
from rayml.errors import RaymlError
from rayml.feedback import LabelStats, quality_excess
from rayml.serve._stats import VersionStats, excess_lower_bound, z_score

logger = logging.getLogger("rayml.serve")

SHADOW_PHASE, CANARY, WAITING, PROMOTING, PROMOTED, ROLLING_BACK, ROLLED_BACK = (
    "shadow",
    "canary",
    "waiting_approval",
    "promoting",
    "promoted",
    "rolling_back",
    "rolled_back",
)
TERMINAL = (PROMOTED, ROLLED_BACK)


class Traffic(Protocol):
    def apply(self, model: str, weights: dict[int, float], shadow: tuple[int, float] | None, remove: list[int]) -> None:
        """Set the model's weights and shadow (absolute, idempotent); ``remove`` drops deployed versions."""


class StatsSource(Protocol):
    def window(self, model: str, since: float, until: float) -> dict[tuple[int, str], VersionStats]:
        """Per (version, route) totals over [since, until) across every ingress replica.

        Raises :class:`WindowIncompleteError` when the counts of part of the window are gone (the stats replica
        restarted after ``since``).
        """


class WindowIncompleteError(RaymlError):
    """The stats deployment holds counts only from ``complete_since`` on (its replica restarted within the window)."""

    def __init__(self, complete_since: float) -> None:
        super().__init__(
            f"the traffic counts before {complete_since:.0f} are gone: the stats replica restarted",
            hint="nothing to do: the rollout holds its step and judges a full window after the restart",
        )
        self.complete_since = complete_since


class Promoter(Protocol):
    def promote(self, model: str, version: int, baseline: int) -> dict[str, int]:
        """Point ``production`` at ``version`` and ``previous`` at ``baseline``; returns the aliases that moved."""


@dataclass
class RolloutState:
    """Everything a controller needs to continue after a crash (written as JSON after every transition)."""

    model: str
    app_name: str
    baseline: int
    candidate: int
    config: dict[str, Any]  # RolloutConfig as JSON (thresholds, steps, intervals)
    task: str = "regression"
    settle_s: float = 2.0  # stats reach the stats deployment up to one flush late
    phase: str = CANARY
    step_index: int = 0
    applied: bool = False
    window_start: float = 0.0
    failures: int = 0
    approvals: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, Any] | None = None  # a manual promote/rollback waiting for the controller
    reason: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    last_error: str | None = None
    last_check: dict[str, Any] | None = None
    # the baseline's primary counts summed over the rollout's judged windows: what a 100% step compares with
    baseline_seen: dict[str, int] = field(default_factory=dict)
    inconclusive: int = 0  # checks that had too little traffic to decide (they hold the step; not failures)

    @property
    def cfg(self) -> RolloutConfig:
        return RolloutConfig.model_validate(self.config)

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    @property
    def step_percent(self) -> float | None:
        """Candidate percent of the current canary step (None in the shadow phase)."""
        if self.phase == SHADOW_PHASE:
            return None
        steps = self.cfg.steps
        return steps[min(self.step_index, len(steps) - 1)]

    def weights(self) -> dict[int, float]:
        """The traffic split this state asks for."""
        if self.phase in (PROMOTING, PROMOTED):
            return {self.baseline: 0.0, self.candidate: 1.0}
        if self.phase in (ROLLING_BACK, ROLLED_BACK, SHADOW_PHASE):
            return {self.baseline: 1.0, self.candidate: 0.0}
        p = (self.step_percent or 0.0) / 100.0
        return {self.baseline: round(1.0 - p, 9), self.candidate: p}

    def shadow(self) -> tuple[int, float] | None:
        if self.phase in (SHADOW_PHASE, CANARY, WAITING) and self.cfg.shadow_percent > 0:
            return (self.candidate, self.cfg.shadow_percent)
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutState:
        return cls(**d)


class StateStore:
    """Rollout state (``<model>.json``, atomic writes) and audit log (``<model>.audit.jsonl``) of one app's model.

    Args:
        root: the state directory (``rollout.state_dir`` or ``$RAYML_HOME/rollouts``).
        app_name: the Serve application.
        model: the model name (validated here: it becomes a file name).
    """

    def __init__(self, root: str | Path, app_name: str, model: str) -> None:
        from rayml.registry import validate_name

        # both end up in file names: never let a user-supplied value walk out of the state directory
        validate_name(app_name, "application name")
        validate_name(model)
        self.dir = Path(root) / app_name
        self.state_path = self.dir / f"{model}.json"
        self.audit_path = self.dir / f"{model}.audit.jsonl"

    def load(self) -> RolloutState | None:
        data = fs.read_json(str(self.state_path))
        return RolloutState.from_dict(data) if data else None

    def save(self, state: RolloutState) -> None:
        fs.write_json(str(self.state_path), state.to_dict())

    def audit(self, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.audit_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a decision that was acted on must not vanish with a crash

    def history(self) -> list[dict[str, Any]]:
        if not self.audit_path.is_file():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]


@dataclass
class Check:
    """The verdict on one window of traffic."""

    passed: bool
    reasons: list[str]
    snapshot: dict[str, Any]
    inconclusive: list[str] = field(default_factory=list)  # too little traffic for these criteria: nothing decided

    @property
    def decided(self) -> bool:
        """A failure decides even with other criteria inconclusive; a pass needs every criterion judged."""
        return bool(self.reasons) or not self.inconclusive


def _share_excess(
    what: str, cand: int, n_cand: int, base: int | None, n_base: int, base_name: str, cfg: RolloutConfig
) -> str | None:
    """Why the candidate's share ``cand/n_cand`` is worse than the baseline's beyond chance, or None when it is not."""
    bound = excess_lower_bound(cand, n_cand, base, n_base, z_score(cfg.confidence))
    if bound <= cfg.max_error_rate_increase:
        return None
    base_share = f"{base / n_base:.2%} ({base}/{n_base}, {base_name})" if base is not None and n_base else base_name
    return (
        f"candidate {what} {cand / n_cand:.2%} ({cand}/{n_cand}) vs baseline {base_share}: at {cfg.confidence:.0%} "
        f"confidence at least {bound:.2%} higher (max_error_rate_increase {cfg.max_error_rate_increase:.2%})"
    )


def quality_check(
    state: RolloutState, since_start: dict[tuple[int, str], VersionStats]
) -> tuple[str | None, str | None, dict[str, Any]]:
    """The quality gate (``rollout.max_quality_regression``) on the labelled predictions since the rollout began.

    The candidate's answers on every route but pinned ones count (its mirrored answers too: a shadow phase is judged
    on real labels); the baseline's primary answers are its reference. Returns ``(failure, inconclusive, snapshot)``.
    """
    cfg = state.cfg
    cand, base = LabelStats(), LabelStats()
    for (version, route), s in since_start.items():
        if version == state.candidate and route != "pinned":
            cand.merge(s.label_stats)
        elif version == state.baseline and route == "primary":
            base.merge(s.label_stats)
    snapshot: dict[str, Any] = {"candidate": cand.summary(state.task), "baseline": base.summary(state.task)}
    if cfg.max_quality_regression is None:
        return None, None, snapshot
    if cand.labelled < cfg.min_labels or base.labelled < cfg.min_labels:
        return (
            None,
            f"only {cand.labelled} labelled candidate and {base.labelled} labelled baseline predictions since the "
            f"rollout began (min_labels {cfg.min_labels}): live quality not judged yet",
            snapshot,
        )
    bound, scale, what = quality_excess(cand, base, state.task, cfg.confidence)
    allowed = cfg.max_quality_regression * scale
    snapshot["excess_lower_bound"] = round(bound, 6)
    if bound <= allowed:
        return None, None, snapshot
    unit = "of the baseline's MAE" if state.task == "regression" else "error-rate points"
    return (
        f"live quality: {what}: at {cfg.confidence:.0%} confidence the candidate is at least {bound:.4g} worse "
        f"(max_quality_regression {cfg.max_quality_regression:g} {unit} = {allowed:.4g})",
        None,
        snapshot,
    )


def evaluate(
    state: RolloutState,
    stats: dict[tuple[int, str], VersionStats],
    since_start: dict[tuple[int, str], VersionStats] | None = None,
) -> Check:
    """Judge one window for ``state``'s phase against its thresholds; every failed criterion is listed.

    Errors (5xx) and rejections (4xx) are compared with the baseline's over the same window (see
    :class:`~rayml.config.RolloutConfig` ``max_error_rate_increase``); 4xx never count as errors. Live quality (when
    ``max_quality_regression`` is set) is judged on ``since_start``: the counts since the rollout began, because
    labels are sparse and late. Criteria without enough traffic (or labels) are listed in :attr:`Check.inconclusive`
    instead of failing.
    """
    cfg = state.cfg
    base = stats.get((state.baseline, "primary"), VersionStats())
    cand = stats.get((state.candidate, "primary"), VersionStats())
    shadow = stats.get((state.candidate, "shadow"), VersionStats())
    reasons: list[str] = []
    inconclusive: list[str] = []
    # the baseline to compare with: this window's answers, else (a 100% step) its answers in the rollout's earlier windows
    seen = state.baseline_seen
    if base.requests >= cfg.min_requests:
        ref, ref_name = base, "this window"
    elif seen.get("requests", 0) >= cfg.min_requests:
        ref = VersionStats(requests=seen["requests"], errors=seen.get("errors", 0), rejected=seen.get("rejected", 0))
        ref_name = "earlier windows"
    else:
        ref, ref_name = None, "no baseline answers to compare with"
    if state.phase == SHADOW_PHASE:
        if shadow.requests < cfg.min_requests:
            inconclusive.append(
                f"only {shadow.requests} mirrored requests to the candidate in the window (min_requests {cfg.min_requests})"
            )
        else:  # mirrored requests are ones the baseline answered (200): every failure on them is the candidate's
            why = _share_excess("error rate", shadow.errors, shadow.requests, None, 0, "0% (it answered them)", cfg)
            reasons += [why] if why else []
    elif cand.requests < cfg.min_requests:
        inconclusive.append(f"only {cand.requests} candidate requests in the window (min_requests {cfg.min_requests})")
    else:
        for what, c, b in (
            ("error rate (5xx)", cand.errors, ref.errors if ref else None),
            # refusing what the baseline accepts is the candidate's failure; a caller's bad input hits both alike
            ("rejection rate (4xx)", cand.rejected, ref.rejected if ref else None),
        ):
            why = _share_excess(what, c, cand.requests, b, ref.requests if ref else 0, ref_name, cfg)
            reasons += [why] if why else []
    judged = shadow if state.phase == SHADOW_PHASE else cand
    p95_c, p95_b = judged.p95_ms, base.p95_ms
    if cfg.max_p95_latency_ms is not None and p95_c is not None and p95_c > cfg.max_p95_latency_ms:
        reasons.append(f"candidate p95 {p95_c:.1f} ms > max_p95_latency_ms {cfg.max_p95_latency_ms:g}")
    if (
        cfg.max_p95_latency_ratio is not None
        and p95_c is not None
        and p95_b is not None
        and base.requests >= cfg.min_requests
        and judged.requests >= cfg.min_requests
        and p95_c > cfg.max_p95_latency_ratio * p95_b
    ):
        reasons.append(
            f"candidate p95 {p95_c:.1f} ms is {p95_c / p95_b:.2f}x the baseline's {p95_b:.1f} ms "
            f"(max_p95_latency_ratio {cfg.max_p95_latency_ratio:g})"
        )
    if cfg.max_disagreement is not None:
        d = shadow.disagreement(state.task)
        if shadow.compared_rows >= cfg.min_shadow_comparisons and d is not None and d > cfg.max_disagreement:
            reasons.append(f"disagreement with the baseline {d:.4g} > max_disagreement {cfg.max_disagreement:g}")
        elif state.phase == SHADOW_PHASE and shadow.compared_rows < cfg.min_shadow_comparisons:
            inconclusive.append(
                f"only {shadow.compared_rows} mirrored rows compared (min_shadow_comparisons {cfg.min_shadow_comparisons})"
            )
    snapshot = {
        "baseline": {"version": state.baseline, **base.summary(state.task)},
        "candidate": {"version": state.candidate, **cand.summary(state.task)},
        "shadow": {"version": state.candidate, **shadow.summary(state.task)},
    }
    if since_start is not None:
        failure, wait, quality = quality_check(state, since_start)
        reasons += [failure] if failure else []
        inconclusive += [wait] if wait else []
        snapshot["live_quality_since_start"] = quality
    if ref is not None and ref is not base:
        snapshot["baseline_earlier_windows"] = ref.summary(state.task)
    return Check(passed=not reasons and not inconclusive, reasons=reasons, snapshot=snapshot, inconclusive=inconclusive)


class RolloutController:
    """Advances one rollout. Not thread-safe: callers serialise :meth:`tick` and the overrides.

    Args:
        state: the rollout to drive (new or loaded after a crash).
        store: where state and decisions are written.
        traffic: applies weights and shadow to the Serve application.
        stats: reads traffic windows.
        promoter: moves registry aliases.
        clock: wall-clock seconds (a fake one in tests).
    """

    def __init__(
        self,
        state: RolloutState,
        store: StateStore,
        traffic: Traffic,
        stats: StatsSource,
        promoter: Promoter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state, self.store, self.traffic, self.stats, self.promoter, self.clock = (
            state,
            store,
            traffic,
            stats,
            promoter,
            clock,
        )

    # --- records ------------------------------------------------------------------------------------------------
    def _record(self, event: str, **details: Any) -> dict[str, Any]:
        s = self.state
        record = {
            "ts": self.clock(),
            "event": event,
            "model": s.model,
            "app": s.app_name,
            "baseline": s.baseline,
            "candidate": s.candidate,
            "phase": s.phase,
            "step_percent": s.step_percent,
            "weights": {str(k): v for k, v in s.weights().items()},
            **details,
        }
        self.store.audit(record)
        logger.info("rollout %s v%s: %s %s", s.model, s.candidate, event, details.get("reasons") or details.get("reason") or "")
        return record

    def _save(self) -> None:
        self.store.save(self.state)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin a new rollout (records it; the first tick applies the first phase)."""
        s = self.state
        s.started_at = s.started_at or self.clock()
        s.phase = SHADOW_PHASE if s.cfg.shadow_s > 0 else CANARY
        s.step_index, s.applied = 0, False
        self._save()
        self._record("started", config=s.config)

    def _apply_current(self) -> None:
        s = self.state
        remove = [s.candidate] if s.phase in (ROLLING_BACK, ROLLED_BACK) else []
        self.traffic.apply(s.model, s.weights(), s.shadow(), remove)

    def _duration(self) -> float:
        cfg = self.state.cfg
        return cfg.shadow_s if self.state.phase == SHADOW_PHASE else cfg.interval_s

    def tick(self) -> dict[str, Any] | None:
        """Do the next thing the rollout needs, if any; returns the decision recorded, else None."""
        s = self.state
        if s.done:
            return None
        if s.pending is not None and s.phase not in (PROMOTING, ROLLING_BACK):
            pending, s.pending = s.pending, None
            return self._finish(
                pending["action"],
                f"manual {pending['action']} by {pending.get('by', '?')}: {pending.get('reason', '')}".rstrip(": "),
            )
        if s.phase == PROMOTING:  # resumed half-way through a promotion: redo it (idempotent)
            return self._finish("promote", s.reason or "promoted")
        if s.phase == ROLLING_BACK:
            return self._finish("rollback", s.reason or "rolled back")
        if s.phase == WAITING and self._approved():  # its last check passed; the approval was all it waited for
            return self._advance(
                Check(True, [], {k: v for k, v in (s.last_check or {}).items() if k in ("baseline", "candidate", "shadow")})
            )
        if not s.applied:
            self._apply_current()
            s.applied, s.window_start = True, self.clock()
            self._save()
            return self._record("step_applied")
        now = self.clock()
        if now < s.window_start + self._duration() + s.settle_s:
            return None
        until = s.window_start + self._duration()
        try:
            window = self.stats.window(s.model, s.window_start, until)
        except WindowIncompleteError as e:  # counts lost with a stats restart: never judge what was not seen
            # settle_s: pushes drained while the replica was down are lost too (one flush interval, plus a second)
            s.window_start = max(s.window_start, e.complete_since + s.settle_s)
            self._save()
            return self._record("window_restarted", reason=e.message)
        check = evaluate(s, window, self._since_start(until) if s.cfg.max_quality_regression is not None else None)
        s.last_check = {
            "passed": check.passed,
            "reasons": check.reasons + check.inconclusive,
            "at": now,
            **check.snapshot,
        }
        base = window.get((s.baseline, "primary"), VersionStats())
        for k in ("requests", "errors", "rejected"):
            s.baseline_seen[k] = s.baseline_seen.get(k, 0) + getattr(base, k)
        if not check.decided:  # too little traffic: hold the step for another window, decide nothing
            s.inconclusive += 1
            s.window_start = until
            self._save()
            return self._record("check_inconclusive", reasons=check.inconclusive, snapshot=check.snapshot)
        if not check.passed:
            s.failures += 1
            if s.failures > s.cfg.failure_budget:
                reason = f"check failed ({s.failures} failed checks, failure_budget {s.cfg.failure_budget}): " + "; ".join(
                    check.reasons
                )
                self._record("check_failed", reasons=check.reasons, snapshot=check.snapshot, failures=s.failures)
                return self._finish("rollback", reason)
            s.window_start = until  # retry the step on the next window
            self._save()
            return self._record("check_failed", reasons=check.reasons, snapshot=check.snapshot, failures=s.failures, retry=True)
        s.window_start = until
        if s.phase == CANARY and s.step_percent in s.cfg.manual_steps and not self._approved():
            s.phase = WAITING
            self._save()
            return self._record("waiting_for_approval", snapshot=check.snapshot)
        if s.phase == WAITING and not self._approved():
            self._save()
            return self._record("check_passed_waiting", snapshot=check.snapshot)
        return self._advance(check)

    def _since_start(self, until: float) -> dict[tuple[int, str], VersionStats]:
        """Counts since the rollout began (the quality gate's); from the stats replica's restart on if it restarted."""
        s = self.state
        try:
            return self.stats.window(s.model, s.started_at, until)
        except WindowIncompleteError as e:  # labels of the lost part are stored; live, only what is left is judged
            return self.stats.window(s.model, e.complete_since + s.settle_s, until)

    def _approved(self) -> bool:
        s = self.state
        return any(a.get("step_percent") == s.step_percent for a in s.approvals)

    def _advance(self, check: Check) -> dict[str, Any]:
        s = self.state
        passed_percent = s.step_percent
        if s.phase == SHADOW_PHASE:
            s.phase, s.step_index = CANARY, 0
        elif s.step_index + 1 < len(s.cfg.steps):
            s.phase, s.step_index = CANARY, s.step_index + 1
        else:
            self._record("check_passed", snapshot=check.snapshot, step_passed=passed_percent)
            return self._finish("promote", f"every step passed its checks ({', '.join(f'{p:g}%' for p in s.cfg.steps)})")
        s.applied = False
        self._save()  # the advance is on disk before the new weights are applied
        return self._record("check_passed", snapshot=check.snapshot, step_passed=passed_percent)

    def _finish(self, action: str, reason: str) -> dict[str, Any]:
        s = self.state
        s.phase, s.reason = (PROMOTING, reason) if action == "promote" else (ROLLING_BACK, reason)
        self._save()
        self._apply_current()
        moved = self.promoter.promote(s.model, s.candidate, s.baseline) if action == "promote" else {}
        s.phase, s.finished_at = (PROMOTED if action == "promote" else ROLLED_BACK), self.clock()
        self._save()
        return self._record(
            "promoted" if action == "promote" else "rolled_back", reason=reason, aliases=moved, last_check=s.last_check
        )

    # --- operator overrides -------------------------------------------------------------------------------------
    def approve(self, by: str, note: str = "") -> dict[str, Any]:
        """Record an approval of the current step (a manual step then advances on its next passing check)."""
        s = self.state
        approval = {"step_percent": s.step_percent, "by": by, "note": note, "at": self.clock()}
        s.approvals.append(approval)
        self._save()
        return self._record("approved", approval=approval)

    def request(self, action: str, by: str, reason: str = "") -> None:
        """Ask for a manual promote/rollback; the next :meth:`tick` carries it out (and records it)."""
        self.state.pending = {"action": action, "by": by, "reason": reason}
        self._save()
