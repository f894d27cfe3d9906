"""The router: weight validation, random split by weight, sticky keys by consistent hashing, shadow sampling."""

from __future__ import annotations

import math
import random

import pytest

from rayml.errors import ConfigError
from rayml.serve._router import ModelRoute, Shadow, check_weights, key_point, moved_keys

KEYS = [f"user-{i}" for i in range(20_000)]


@pytest.mark.parametrize(
    "weights, fragment",
    [
        ({1: 0.9, 2: 0.2}, "sum to 1.1, not 1"),
        ({1: 1.5, 2: -0.5}, "weights lie in [0, 1]"),
        ({}, "no versions are listed"),
    ],
)
def test_invalid_weights_are_rejected_with_the_values(weights: dict[int, float], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_weights("m", weights)
    assert fragment in str(e.value) and "Hint:" in str(e.value)


def test_weights_summing_to_one_within_float_rounding_are_fine() -> None:
    check_weights("m", {1: 0.7, 2: 0.2, 3: 0.1})  # 0.7 + 0.2 + 0.1 != 1.0 exactly in floats


def test_unkeyed_requests_split_by_weight() -> None:
    route = ModelRoute("m", {1: 0.8, 2: 0.2}, rng=random.Random(0))
    n = 20_000
    canary = sum(route.choose() == 2 for _ in range(n))
    sd = math.sqrt(n * 0.2 * 0.8)
    assert abs(canary - 0.2 * n) < 4 * sd


def test_zero_weight_versions_get_no_traffic_but_are_known() -> None:
    route = ModelRoute("m", {1: 1.0, 2: 0.0}, shadow=Shadow(3, 10), rng=random.Random(0))
    assert {route.choose() for _ in range(2000)} == {1}
    assert {route.choose(k) for k in KEYS[:2000]} == {1}
    assert route.versions == [1, 2, 3] and route.primary_versions == [1]


def test_same_key_same_version_and_keys_spread_by_weight() -> None:
    route = ModelRoute("m", {1: 0.8, 2: 0.2})
    first = {k: route.choose(k) for k in KEYS}
    assert all(route.choose(k) == v for k, v in first.items())  # deterministic
    share = sum(v == 2 for v in first.values()) / len(KEYS)
    assert abs(share - 0.2) < 0.015
    # another ingress replica (a new object, another rng) agrees key by key
    other = ModelRoute("m", {1: 0.8, 2: 0.2}, rng=random.Random(99))
    assert all(other.choose(k) == v for k, v in first.items())


def test_raising_the_canary_moves_only_the_keys_that_must_move() -> None:
    before = ModelRoute("m", {1: 0.9, 2: 0.1})
    after = ModelRoute("m", {1: 0.75, 2: 0.25})
    moved = moved_keys(before, after, KEYS)
    assert all(before.choose(k) == 1 and after.choose(k) == 2 for k in moved)  # only baseline -> canary
    # exactly the keys whose point lies in the band that changed hands: [0.75, 0.9)
    band = [k for k in KEYS if 0.75 <= key_point("m", k) < 0.9]
    assert sorted(moved) == sorted(band)
    assert abs(len(moved) / len(KEYS) - 0.15) < 0.015
    # a canary that keeps its share keeps its keys when a third version appears at the end (weights of v1 shrink)
    third = ModelRoute("m", {1: 0.65, 2: 0.25, 3: 0.1})
    moved3 = moved_keys(after, third, KEYS)
    assert all(after.choose(k) != 3 and third.choose(k) != 1 for k in moved3)


def test_route_keys_are_per_model() -> None:
    a = ModelRoute("model-a", {1: 0.5, 2: 0.5})
    b = ModelRoute("model-b", {1: 0.5, 2: 0.5})
    disagree = sum(a.choose(k) != b.choose(k) for k in KEYS[:4000])
    assert 1600 < disagree < 2400  # independent halves, not the same split for every model


def test_shadow_is_sampled_by_percent_and_never_mirrors_to_itself() -> None:
    route = ModelRoute("m", {1: 0.5, 3: 0.5}, shadow=Shadow(3, 10.0), rng=random.Random(1))
    n = 20_000
    mirrored = sum(route.shadow_for(1) == 3 for _ in range(n))
    assert abs(mirrored / n - 0.10) < 0.01
    assert all(route.shadow_for(3) is None for _ in range(1000))  # the shadow already answered
    full = ModelRoute("m", {1: 1.0}, shadow=Shadow(2, 100.0))
    assert all(full.shadow_for(1) == 2 for _ in range(100))
    assert ModelRoute("m", {1: 1.0}).shadow_for(1) is None


def test_bad_shadow_percent_is_rejected() -> None:
    with pytest.raises(ConfigError, match="shadow.percent"):
        ModelRoute("m", {1: 1.0}, shadow=Shadow(2, 150.0))
