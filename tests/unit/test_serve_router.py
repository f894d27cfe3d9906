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


# --- keyed hashing: callers cannot pick keys that land on the candidate -----------------------------------------------
SALT = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_with_the_same_salt_a_key_keeps_its_version_on_every_replica() -> None:
    first = ModelRoute("m", {1: 0.9, 2: 0.1}, salt=SALT)
    again = ModelRoute("m", {1: 0.9, 2: 0.1}, salt=bytes(SALT), rng=random.Random(7))  # another replica / a restart
    assert all(first.choose(k) == again.choose(k) for k in KEYS)
    share = sum(first.choose(k) == 2 for k in KEYS) / len(KEYS)
    assert abs(share - 0.1) < 0.01  # still split by weight


def test_without_the_salt_a_caller_cannot_predict_which_keys_land_on_the_candidate() -> None:
    route = ModelRoute("m", {1: 0.9, 2: 0.1}, salt=SALT)
    # the caller knows the code (and the model name) and picks the keys whose unkeyed point lies in the candidate's band
    picked = [k for k in KEYS if key_point("m", k) >= 0.9]
    assert len(picked) > 1500
    hit = sum(route.choose(k) == 2 for k in picked) / len(picked)
    assert abs(hit - 0.1) < 0.03  # no better than any key at random (unkeyed, every one of them would land there)
    assert all(ModelRoute("m", {1: 0.9, 2: 0.1}).choose(k) == 2 for k in picked)
    # another application's salt deals the keys independently
    other = ModelRoute("m", {1: 0.5, 2: 0.5}, salt=bytes(16))
    mine = ModelRoute("m", {1: 0.5, 2: 0.5}, salt=SALT)
    disagree = sum(other.choose(k) != mine.choose(k) for k in KEYS[:4000])
    assert 1600 < disagree < 2400


def test_a_salt_longer_than_a_blake2b_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="route salt"):
        ModelRoute("m", {1: 1.0}, salt=bytes(65))


def test_the_app_spec_carries_the_salt_and_a_redeploy_keeps_the_running_one() -> None:
    from pydantic import ValidationError

    from rayml.serve._spec import keep_route_salt, new_route_salt
    from tests.unit.serve_specs import app_spec

    spec = app_spec(m={1: 0.9, 2: 0.1})
    running = spec.model_copy(update={"route_salt": new_route_salt()})
    fresh = spec.model_copy(update={"route_salt": new_route_salt()})
    assert running.route_salt != fresh.route_salt and len(bytes.fromhex(fresh.route_salt)) == 16
    kept = keep_route_salt(running, fresh)
    assert kept.route_salt == running.route_salt and keep_route_salt(None, fresh) == fresh
    assert keep_route_salt(spec, fresh) == fresh  # an app deployed before salts existed gets one now
    # the ingress builds its routes from the spec: every replica (and a restarted one) hashes alike
    route = kept.models["m"].route(salt=kept.route_salt)
    expected = ModelRoute("m", {1: 0.9, 2: 0.1}, salt=bytes.fromhex(running.route_salt))
    assert all(route.choose(k) == expected.choose(k) for k in KEYS[:2000])
    with pytest.raises(ValidationError):
        type(spec).model_validate({**spec.model_dump(), "route_salt": "not-hex"})
