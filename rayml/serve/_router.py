"""Traffic routing per model: weighted split, sticky keys by consistent hashing, shadow sampling.

Pure Python (no Ray): the ingress builds one :class:`ModelRoute` per served model from its ``user_config`` and asks it,
per request, which version answers and whether the request is mirrored to the shadow.

Stickiness: a route key is hashed (with the model name) to a point in [0, 1); versions own consecutive bands of that
interval, in ascending version order, as wide as their weights. The hash is keyed BLAKE2b under the application's
secret route salt (``AppSpec.route_salt``): without it nobody can tell which keys fall in which band, so a caller
cannot pick keys that land on a canary (the newest version owns the top band) before it is even deployed. A key keeps
its version while the weights hold, and when a weight changes only the keys whose point lies in a band that moved
change version (raising a canary from 10% to 25% moves exactly the keys in the 15% band that changed hands, never a
key from one old version to another).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rayml.errors import ConfigError

WEIGHT_TOLERANCE = 1e-6
PRIMARY, SHADOW, PINNED = "primary", "shadow", "pinned"


def check_weights(model: str, weights: Mapping[int, float]) -> None:
    """Raise :class:`ConfigError` unless ``weights`` are in [0, 1] and sum to 1 (within 1e-6)."""
    problems = [f"version {v} has weight {w!r}; weights lie in [0, 1]" for v, w in weights.items() if not 0.0 <= w <= 1.0]
    total = sum(weights.values())
    if not weights:
        problems.append("no versions are listed")
    elif abs(total - 1.0) > WEIGHT_TOLERANCE:
        listed = ", ".join(f"v{v}={w:g}" for v, w in sorted(weights.items()))
        problems.append(f"weights {listed} sum to {total:g}, not 1")
    if problems:
        raise ConfigError(
            f"traffic split of model {model!r} is invalid: {'; '.join(problems)}",
            hint="give every served version a weight between 0 and 1 so that they sum to exactly 1 (e.g. 0.9 and 0.1)",
        )


def key_point(model: str, key: str, salt: bytes = b"") -> float:
    """The stable point in [0, 1) of a route key (the model name is mixed in, so models split independently).

    Args:
        model: the model name.
        key: the caller's route key.
        salt: the secret key of the hash (up to 64 bytes; empty: unkeyed, predictable by anyone).
    """
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Shadow:
    """Mirror ``percent`` % of the requests (served by another version) to ``version``."""

    version: int
    percent: float


@dataclass
class ModelRoute:
    """The routing table of one model.

    Args:
        model: the model name.
        weights: version -> share of the traffic (validated: [0, 1], summing to 1).
        shadow: the mirrored version and share, or None.
        sticky_header: the request header carrying the route key (None: every request is split at random).
        rng: random source for unkeyed requests and shadow sampling (a seeded one in tests).
        salt: the secret key of route-key hashing (see :func:`key_point`); every ingress replica gets the same one.
    """

    model: str
    weights: dict[int, float]
    shadow: Shadow | None = None
    sticky_header: str | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)
    salt: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if len(self.salt) > hashlib.blake2b.MAX_KEY_SIZE:
            raise ConfigError(
                f"the route salt of model {self.model!r} has {len(self.salt)} bytes",
                hint=f"a BLAKE2b key has at most {hashlib.blake2b.MAX_KEY_SIZE} bytes (rayml makes 16)",
            )
        check_weights(self.model, self.weights)
        if self.shadow is not None and not 0.0 <= self.shadow.percent <= 100.0:
            raise ConfigError(
                f"shadow of model {self.model!r} mirrors {self.shadow.percent!r}% of requests",
                hint="shadow.percent lies in [0, 100]",
            )
        # Bands in ascending version order: a stable order is what makes hashing consistent across weight changes.
        self._bands: list[tuple[float, int]] = []
        upper = 0.0
        for version in sorted(self.weights):
            if self.weights[version] > 0:
                upper += self.weights[version]
                self._bands.append((upper, version))

    @property
    def versions(self) -> list[int]:
        """Every version this route knows (weighted, zero-weight and shadow), ascending."""
        out = set(self.weights)
        if self.shadow is not None:
            out.add(self.shadow.version)
        return sorted(out)

    @property
    def primary_versions(self) -> list[int]:
        """Versions that receive traffic (weight > 0)."""
        return [v for _, v in self._bands]

    def choose(self, key: str | None = None) -> int:
        """The version that answers a request: by the key's point when a key is given, else at random by weight."""
        point = key_point(self.model, key, self.salt) if key else self.rng.random()
        for upper, version in self._bands:
            if point < upper:
                return version
        return self._bands[-1][1]  # point within float rounding of 1.0

    def shadow_for(self, primary: int) -> int | None:
        """The version to mirror this request to, or None (not sampled, or the shadow already answered it)."""
        s = self.shadow
        if s is None or s.percent <= 0 or s.version == primary:
            return None
        if s.percent >= 100 or self.rng.random() * 100.0 < s.percent:
            return s.version
        return None


def moved_keys(before: ModelRoute, after: ModelRoute, keys: Sequence[str]) -> list[str]:
    """Keys whose version differs between two routing tables (a diagnostic for weight changes)."""
    return [k for k in keys if before.choose(k) != after.choose(k)]
