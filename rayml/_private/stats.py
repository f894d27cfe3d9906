"""Confidence bounds on proportions, shared by the rollout checks (error shares) and the live-quality gate."""

from __future__ import annotations

import math
import statistics


def z_score(confidence: float) -> float:
    """The one-sided standard normal quantile of ``confidence`` (0.95 -> 1.645)."""
    return statistics.NormalDist().inv_cdf(confidence)


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (sound at 0 and n successes, unlike p +/- z*se).

    ``n == 0`` gives ``(0, 1)``: no observation says nothing.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def excess_lower_bound(a: int, n_a: int, b: int | None, n_b: int, z: float) -> float:
    """Lower confidence bound of ``a/n_a - b/n_b`` (Newcombe 1998, method 10: hybrid Wilson score interval).

    One-sided at the level of ``z``: the true excess of the first share over the second is at least this with that
    confidence. ``b=None`` compares with a second share known to be exactly 0 (e.g. mirrored requests, which the other
    version answered without error).
    """
    p_a = a / n_a if n_a else 0.0
    lo_a, _ = wilson_interval(a, n_a, z)
    if b is None:
        return lo_a
    p_b = b / n_b if n_b else 0.0
    _, hi_b = wilson_interval(b, n_b, z)
    return p_a - p_b - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2)
