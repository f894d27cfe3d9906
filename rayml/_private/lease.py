"""A lease file: one live owner at a time for a pipeline run or a batch output folder, across processes and hosts.

The lease is a small JSON file (owner: host, pid, a random id; a heartbeat time) next to the state it guards. The
owner renews the heartbeat from a background thread every quarter of ``timeout_s``; a lease whose heartbeat is older
than ``timeout_s`` is stale (its owner died or hangs), and so is one whose owner ran on this host and whose process
is gone (a killed run is rerun at once); the next writer takes it over, with a warning naming the old owner.
Anyone else gets a :class:`~rayml.errors.LeaseHeldError` naming the live owner.

Why a heartbeat and not only an OS lock: run folders and batch outputs may live on shared storage (NFS, s3://) that
another host writes too, where a process's lock dies with neither the process nor the host. On a local filesystem
the read-decide-write of the lease file is itself serialised by ``flock`` on a ``.guard`` file (held for
milliseconds), so two processes racing for a free or stale lease cannot both win. On an object store there is no
such lock: the writer reads its lease back after a short pause and backs off when another owner's write landed last
(best effort; keep concurrent starts on object stores rare, or use a local/NFS state folder).

Heartbeats compare wall clocks of different hosts: ``timeout_s`` must exceed their skew (the default 60 s does).

Example:
    >>> with Lease("/data/out/_rayml_lease.json", "batch output /data/out"):
    ...     run()  # another process entering the same lease now gets LeaseHeldError
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from rayml._private import constants, fs
from rayml.errors import LeaseHeldError

logger = logging.getLogger("rayml.lease")

_VERIFY_S = 0.2  # object stores: how long a writer waits before reading its lease back


@dataclass(frozen=True)
class LeaseRecord:
    """The lease file's content."""

    what: str
    host: str
    pid: int
    owner: str  # a random id per Lease object: two leases of one process are two owners
    acquired_at: float
    heartbeat_at: float
    timeout_s: float

    def stale(self, now: float) -> bool:
        """No heartbeat for ``timeout_s``, or an owner on this host whose process is gone (killed: no need to wait)."""
        return now - self.heartbeat_at > self.timeout_s or self.owner_gone()

    def owner_gone(self) -> bool:
        """True when the owner ran on this host and its process no longer exists (a reused pid reads as alive: the
        lease then goes stale by its heartbeat)."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by another user
            return False
        return False

    def describe(self, now: float) -> str:
        return (
            f"host {self.host} pid {self.pid} (lease {self.owner[:8]}, taken {now - self.acquired_at:.0f}s ago, "
            f"last heartbeat {now - self.heartbeat_at:.0f}s ago, stale after {self.timeout_s:g}s)"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LeaseRecord | None:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


class Lease:
    """One owner's lease on ``path`` (see the module docstring).

    Args:
        path: the lease file (local path or URI), next to what it guards.
        what: what it guards, for messages (``pipeline run nightly/abc123``).
        timeout_s: heartbeat age after which the lease is stale (default ``RAYML_LEASE_TIMEOUT_S``, 60).
        hint: how to go on when someone else holds it (added to :class:`LeaseHeldError`).
        clock: wall-clock seconds (tests pass a fake one).
    """

    def __init__(
        self,
        path: str,
        what: str,
        timeout_s: float | None = None,
        hint: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path, self.what, self.hint, self.clock = path, what, hint, clock
        self.timeout_s = float(timeout_s if timeout_s is not None else constants.lease_timeout_s())
        self.fs, self._p = fs.filesystem(path)
        self.owner = uuid.uuid4().hex
        self.held = False
        self.lost: str | None = None  # why the lease was lost while held (None: not lost)
        self._acquired_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the file ------------------------------------------------------------------------------------------------
    def read(self) -> LeaseRecord | None:
        """The current lease (None: free, or unreadable)."""
        try:
            raw = fs.read_json(self.path)
        except (OSError, ValueError):
            return None
        return LeaseRecord.from_dict(raw) if raw else None

    def _record(self) -> LeaseRecord:
        return LeaseRecord(
            what=self.what,
            host=socket.gethostname(),
            pid=os.getpid(),
            owner=self.owner,
            acquired_at=self._acquired_at,
            heartbeat_at=self.clock(),
            timeout_s=self.timeout_s,
        )

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Serialise the read-decide-write of the lease file among processes (local filesystems only)."""
        if not fs.is_local(self.fs):
            yield
            return
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the read-back check below still catches most races
            yield
            return
        os.makedirs(os.path.dirname(self._p), exist_ok=True)
        fd = os.open(self._p + ".guard", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def acquire(self) -> Lease:
        """Take the lease (free, or stale: taken over) and start the heartbeat.

        Raises:
            LeaseHeldError: a live owner holds it.
        """
        with self._guard():
            now = self.clock()
            current = self.read()
            if current is not None and current.owner != self.owner and not current.stale(now):
                raise LeaseHeldError(
                    f"{self.what} is in use by {current.describe(now)}",
                    hint=self.hint
                    or f"wait for it to finish; a dead owner's lease is taken over {current.timeout_s:g}s "
                    "after its last heartbeat",
                )
            if current is not None and current.owner != self.owner:
                logger.warning("%s: taking over the stale lease of %s", self.what, current.describe(now))
            self._acquired_at = now
            fs.write_json(self.path, asdict(self._record()))
        if not fs.is_local(self.fs):  # no lock on an object store: whoever wrote last owns it
            time.sleep(_VERIFY_S)
            current = self.read()
            if current is None or current.owner != self.owner:
                raise LeaseHeldError(
                    f"{self.what}: another process took the lease at the same time"
                    + (f" ({current.describe(self.clock())})" if current else ""),
                    hint=self.hint or "run one at a time",
                )
        self.held, self.lost = True, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="rayml-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Write a fresh heartbeat; False (and :attr:`lost` set) when someone else owns the lease now."""
        with self._guard():
            current = self.read()
            if current is None or current.owner != self.owner:
                who = current.describe(self.clock()) if current else "nobody (the lease file is gone)"
                self.lost = f"{self.what}: the lease was lost; it is held by {who}"
                return False
            fs.write_json(self.path, asdict(self._record()))
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            try:
                if not self.renew():
                    logger.error("%s", self.lost)
                    return
            except Exception as e:  # storage hiccup: try again at the next beat (the lease is stale only after timeout_s)
                logger.warning("%s: could not renew the lease: %s", self.what, e)

    def check(self) -> None:
        """Raise when the lease was lost while held (the run must not commit anything more).

        Raises:
            LeaseHeldError: another owner holds the lease now.
        """
        if self.lost:
            raise LeaseHeldError(
                self.lost,
                hint="another process took over this run's lease (it saw no heartbeat); "
                "let it finish, or raise RAYML_LEASE_TIMEOUT_S if this one was only slow",
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lease file if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self.held:
            return
        self.held = False
        try:
            with self._guard():
                current = self.read()
                if current is not None and current.owner == self.owner:
                    self.fs.delete_file(self._p)
        except OSError as e:  # it goes stale on its own
            logger.warning("%s: could not release the lease: %s", self.what, e)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
