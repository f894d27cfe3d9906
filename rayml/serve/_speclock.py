"""One writer at a time per Serve application: a lease held while a spec change is read, checked and deployed.

Every change of a running application (``rayml serve up``, a rollout step, ``rayml rollout start``, ``rayml
rollback``) goes through :func:`rayml.serve._apply.apply_spec` or :func:`~rayml.serve._apply.update_spec`, which hold
this lock around read-check-deploy. The lock is a lease: its holder renews it from a background thread every third
of ``ttl_s``; a holder that died (a killed CLI, a crashed controller) loses it ``ttl_s`` after its last renewal.

Why a named detached Ray actor (``rayml-spec-lock``, namespace ``rayml``, no CPU): the writers are CLI processes on a
laptop or a CI runner (connected through ``RAY_ADDRESS``) and rollout controllers, detached actors on any node of the
cluster. The one thing they all reach is the Ray cluster (GCS named actors); a file lock under the serving state
dir would serialise writers on one machine only. On a laptop the actor lives in the local serving Ray, and goes with
it at ``rayml serve down``. The actor's table is lost if Ray restarts it; the spec's revision check (compare-and-swap,
:mod:`rayml.serve._apply`) still catches a writer that went stale that way.

The logic is :class:`LockTable` (plain Python: unit tests use it directly, without Ray).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from rayml.errors import SpecConflictError

logger = logging.getLogger("rayml.serve")

NAMESPACE = "rayml"
ACTOR_NAME = "rayml-spec-lock"
TTL_S = 30.0  # a dead holder's lock is free this long after its last renewal


class Backend(Protocol):
    def acquire(self, app: str, owner: str, who: str, ttl_s: float) -> str | None:
        """Take ``app``'s lock for ``owner`` (None), or describe who holds it."""

    def renew(self, app: str, owner: str, ttl_s: float) -> bool:
        """Extend ``owner``'s lock; False when it does not hold it any more."""

    def release(self, app: str, owner: str) -> None:
        """Give the lock back (if ``owner`` holds it)."""


class LockTable:
    """The locks of every application: ``app -> (owner, who, since, expires_at)`` (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._held: dict[str, tuple[str, str, float, float]] = {}
        self._mutex = threading.Lock()

    def acquire(self, app: str, owner: str, who: str, ttl_s: float) -> str | None:
        with self._mutex:
            now = self.clock()
            held = self._held.get(app)
            if held is not None and held[0] != owner and held[3] > now:
                return f"{held[1]} (for {now - held[2]:.0f}s)"
            if held is not None and held[0] != owner:
                logger.warning("application %s: taking over the expired spec lock of %s", app, held[1])
            since = held[2] if held is not None and held[0] == owner else now
            self._held[app] = (owner, who, since, now + ttl_s)
            return None

    def renew(self, app: str, owner: str, ttl_s: float) -> bool:
        with self._mutex:
            held = self._held.get(app)
            if held is None or held[0] != owner:
                return False
            self._held[app] = (owner, held[1], held[2], self.clock() + ttl_s)
            return True

    def release(self, app: str, owner: str) -> None:
        with self._mutex:
            if self._held.get(app, ("",))[0] == owner:
                del self._held[app]


class _RayBackend:
    """:class:`LockTable` in the named detached actor, called synchronously."""

    _actor_cls: Any = None  # made once per process (each ray.remote() of a class exports it anew)

    def __init__(self) -> None:
        import ray

        if _RayBackend._actor_cls is None:
            # Ray's typing of ray.remote(...) lists task options only (not max_concurrency), as for RolloutActor
            _RayBackend._actor_cls = ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1)(LockTable)  # type: ignore[call-overload]
        self._ray = ray
        self._actor = _RayBackend._actor_cls.options(
            name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()

    def acquire(self, app: str, owner: str, who: str, ttl_s: float) -> str | None:
        return self._ray.get(self._actor.acquire.remote(app, owner, who, ttl_s), timeout=60)

    def renew(self, app: str, owner: str, ttl_s: float) -> bool:
        return self._ray.get(self._actor.renew.remote(app, owner, ttl_s), timeout=60)

    def release(self, app: str, owner: str) -> None:
        self._ray.get(self._actor.release.remote(app, owner), timeout=60)


def lock_backend() -> Backend:
    """The lock table every writer of this Ray cluster shares (unit tests replace this function)."""
    return _RayBackend()


def writer(action: str) -> str:
    """Who is writing, for messages: ``user@host pid N (action)``."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()} ({action})"


class SpecLock:
    """Hold ``app``'s spec lock (a context manager); waits up to ``wait_s`` for the current holder to finish.

    Args:
        app: the Serve application.
        who: the writer, for other writers' messages (:func:`writer`).
        wait_s: how long to wait for the lock.
        ttl_s: lease length (renewed every third of it while held).
    """

    def __init__(self, app: str, who: str, wait_s: float, ttl_s: float = TTL_S, poll_s: float = 0.5) -> None:
        self.app, self.who, self.wait_s, self.ttl_s, self.poll_s = app, who, wait_s, ttl_s, poll_s
        self.owner = uuid.uuid4().hex
        self.lost = False
        self._backend: Backend | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SpecLock:
        self._backend = backend = lock_backend()
        deadline = time.monotonic() + self.wait_s
        while True:
            holder = backend.acquire(self.app, self.owner, self.who, self.ttl_s)
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise SpecConflictError(
                    f"application {self.app!r} is being changed by {holder}; waited {self.wait_s:g}s for it",
                    hint="let that change finish (`rayml serve status`, `rayml rollout status --model NAME`), then "
                    "run this command again",
                )
            logger.info("application %s is being changed by %s; waiting", self.app, holder)
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._renew, name="rayml-spec-lock", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        assert self._backend is not None, "renewed only while held"
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self._backend.renew(self.app, self.owner, self.ttl_s):
                    self.lost = True
                    logger.error("application %s: the spec lock expired while this writer held it", self.app)
                    return
            except Exception as e:  # the lock actor is restarting: try again (the spec's revision still guards)
                logger.warning("application %s: could not renew the spec lock: %s", self.app, e)

    def check(self) -> None:
        """Raise when the lock was lost while held (another writer may be changing the application now).

        Raises:
            SpecConflictError: the lock expired.
        """
        if self.lost:
            raise SpecConflictError(
                f"application {self.app!r}: this writer's spec lock expired (no renewal for {self.ttl_s:g}s)",
                hint="another writer may have changed the application; run the command again",
            )

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._backend is not None:
            try:
                self._backend.release(self.app, self.owner)
            except Exception as e:  # it expires on its own
                logger.warning("application %s: could not release the spec lock: %s", self.app, e)
