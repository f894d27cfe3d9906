"""Live quality: captured predictions joined to ground-truth labels as the labels arrive, in the serving app.

:class:`LiveJoin` keeps the most recent captured predictions (bounded; the oldest are forgotten first) and turns each
arriving label into :class:`LabelStats` contributions, one per version that answered the request (primary, pinned or
shadow), so a version's live quality can be summed over any time window like request counts. The first label of a
prediction is the one used: a repeat is a duplicate, a different later label a conflict, and both change nothing.

:func:`quality_excess` is the statistics of the rollout quality gate: a one-sided confidence bound on how much worse
the candidate is than the baseline (Newcombe's hybrid score interval for error rates, Welch's normal bound for mean
absolute errors), never a comparison of two point estimates.

Pure Python, no Ray and no serve: the serving app's stats deployment holds a :class:`LiveJoin`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from rayml._private.stats import excess_lower_bound, z_score

_EPS = 1e-7

JOINED, UNKNOWN, DUPLICATE, CONFLICT = "joined", "unknown", "duplicate", "conflict"


@dataclass
class LabelStats:
    """Sums over labelled predictions of one version (regression: errors; classification: mistakes and log-loss)."""

    labelled: int = 0
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0  # also the sum of squared absolute errors: the variance of the MAE comes from it
    wrong: int = 0
    logloss_sum: float = 0.0
    logloss_rows: int = 0
    delay_sum_s: float = 0.0

    def merge(self, other: LabelStats) -> LabelStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self, task: str) -> dict[str, float]:
        """The live metrics these sums give (empty without labelled predictions)."""
        n = self.labelled
        if n == 0:
            return {}
        if task == "regression":
            return {"mae": self.abs_err_sum / n, "rmse": math.sqrt(self.sq_err_sum / n)}
        out = {"accuracy": 1.0 - self.wrong / n, "error_rate": self.wrong / n}
        if self.logloss_rows:
            out["logloss"] = self.logloss_sum / self.logloss_rows
        return out

    def summary(self, task: str) -> dict[str, Any]:
        return {
            "labelled": self.labelled,
            **{k: round(v, 6) for k, v in self.metrics(task).items()},
            **({"mean_label_delay_s": round(self.delay_sum_s / self.labelled, 3)} if self.labelled else {}),
        }


LABEL_FIELDS = tuple(f.name for f in fields(LabelStats))


@dataclass
class _Prediction:
    version: int
    route: str
    ts: float
    value: float | None  # regression: the prediction; binary: the probability of class 1
    label: str | None  # classification: the predicted class as text


class LiveJoin:
    """Recent captured predictions waiting for labels, per model (at most ``max_predictions`` rows in all).

    Args:
        max_predictions: rows kept; adding more forgets the oldest (their labels then count as unknown here and are
            still joined offline by ``rayml monitor quality``).
    """

    def __init__(self, max_predictions: int = 200_000) -> None:
        self.max_predictions = max_predictions
        # (model, inference_id, row) -> [label text or None, the versions' answers]
        self._rows: OrderedDict[tuple[str, str, int], list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        model: str,
        inference_id: str,
        version: int,
        route: str,
        ts: float,
        values: Iterable[float | None],
        labels: Iterable[str | None],
    ) -> None:
        """Remember one request's answers by one version (row ``i`` of the request is ``values[i]``/``labels[i]``)."""
        for row, (value, label) in enumerate(zip(values, labels, strict=True)):
            key = (model, inference_id, row)
            entry = self._rows.get(key)
            if entry is None:
                entry = self._rows[key] = [None, []]
            entry[1].append(_Prediction(version, route, ts, value, label))
        while len(self._rows) > self.max_predictions:
            self._rows.popitem(last=False)

    def label(
        self,
        model: str,
        task: str,
        positive: str | None,
        entries: Iterable[tuple[str, int, str]],
        now: float,
    ) -> tuple[dict[str, int], list[tuple[int, str, float, LabelStats]]]:
        """Join labels ``(inference_id, row, label text)`` to the remembered predictions.

        Args:
            model: the model the labels are for.
            task: regression | binary | multiclass.
            positive: binary: the text of class 1 (the class whose probability the model outputs).
            entries: validated labels (regression: the number as text; classification: the class as text).
            now: wall-clock seconds (label delay is measured to it).

        Returns:
            Counts by outcome (joined / unknown / duplicate / conflict), and one ``(version, route, prediction time,
            contribution)`` per version that answered a newly labelled prediction.
        """
        counts = {JOINED: 0, UNKNOWN: 0, DUPLICATE: 0, CONFLICT: 0}
        contributions: list[tuple[int, str, float, LabelStats]] = []
        for inference_id, row, text in entries:
            entry = self._rows.get((model, inference_id, row))
            if entry is None:
                counts[UNKNOWN] += 1
                continue
            if entry[0] is not None:
                counts[DUPLICATE if entry[0] == text else CONFLICT] += 1
                continue
            entry[0] = text
            counts[JOINED] += 1
            for p in entry[1]:
                contributions.append((p.version, p.route, p.ts, contribution(task, positive, p.value, p.label, text, now - p.ts)))
        return counts, contributions


def contribution(
    task: str, positive: str | None, value: float | None, predicted: str | None, label: str, delay_s: float
) -> LabelStats:
    """What one labelled prediction adds to its version's :class:`LabelStats`."""
    s = LabelStats(labelled=1, delay_sum_s=max(0.0, delay_s))
    if task == "regression":
        err = abs(float(value if value is not None else math.nan) - float(label))
        if not math.isfinite(err):  # never served (non-finite answers are refused): judged nowhere rather than crash
            return LabelStats()
        s.abs_err_sum, s.sq_err_sum = err, err * err
        return s
    s.wrong = int(predicted != label)
    if task == "binary" and value is not None and positive is not None and math.isfinite(value):
        p = min(max(value, _EPS), 1.0 - _EPS)
        s.logloss_sum, s.logloss_rows = -math.log(p if label == positive else 1.0 - p), 1
    return s


def quality_excess(cand: LabelStats, base: LabelStats, task: str, confidence: float) -> tuple[float, float, str]:
    """How much worse the candidate's live quality is than the baseline's, at least, with ``confidence``.

    Returns:
        ``(bound, allowed_unit_scale, what)``: classification: the lower bound of ``error_rate_c - error_rate_b``
        (Newcombe 1998, method 10) and scale 1 (the gate compares the bound with error-rate points); regression: the
        lower bound of ``mae_c - mae_b`` (Welch: difference minus z standard errors) and scale ``mae_b`` (the gate
        compares the bound with a share of the baseline's MAE). ``what`` describes both estimates.
    """
    z = z_score(confidence)
    nc, nb = cand.labelled, base.labelled
    if task == "regression":
        mc, mb = cand.abs_err_sum / nc, base.abs_err_sum / nb
        vc = max(cand.sq_err_sum / nc - mc * mc, 0.0)
        vb = max(base.sq_err_sum / nb - mb * mb, 0.0)
        bound = (mc - mb) - z * math.sqrt(vc / nc + vb / nb)
        return bound, mb, f"candidate MAE {mc:.4g} ({nc} labels) vs baseline {mb:.4g} ({nb} labels)"
    bound = excess_lower_bound(cand.wrong, nc, base.wrong, nb, z)
    return (
        bound,
        1.0,
        f"candidate error rate {cand.wrong / nc:.2%} ({cand.wrong}/{nc}) vs baseline {base.wrong / nb:.2%} ({base.wrong}/{nb})",
    )
