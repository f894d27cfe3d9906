"""Which Ray the serving commands talk to, and the local Ray that `rayml serve up` starts on a laptop.

A Serve application must outlive the command that deployed it, so `rayml serve up` cannot use a Ray that dies with
its own process. Order: an already initialised Ray (a notebook, a test, a Ray job) > ``$RAY_ADDRESS`` (a cluster) >
the local Ray that rayml started earlier for this ``$RAYML_HOME`` > (for `serve up` only) a new local Ray started
with ``ray start --head`` in a private temp dir, which `rayml serve down` stops again once no application is left.

The private temp dir matters: Ray records the address of a ``ray start`` in its temp dir, and a plain ``ray.init()``
anywhere on the machine attaches to the cluster recorded in the default one (/tmp/ray). Ours lives elsewhere, so no
other program on the machine joins it by accident. It is private (0700, checked to be the user's when found: its name
is predictable, and another user who created it first would choose the Ray rayml deploys to), and so is the Ray auth
token rayml generates for that Ray (0600, in the same dir).

`rayml serve down` stops every process of that Ray: ``ray start`` runs in a session of its own, and every process of
that Ray (raylet, GCS, agents that rename themselves ``ray::DashboardAgent``, workers) keeps that session id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import ray

from rayml._private import constants, private_fs
from rayml._private.net import free_port
from rayml.errors import RaymlError, ServeNotRunningError

logger = logging.getLogger("rayml.serve")
_T = TypeVar("_T")

ADDRESS_FILE = "ray_current_cluster"
# Ray's own --temp-dir, one level down: Ray makes its temp dir world-writable (0777), so it cannot be the private dir
RAY_SUBDIR = "ray"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_TOKEN_FILE = "auth_token"
STARTED_MARKER = "rayml_started_head"  # JSON: the GCS port and the session id of every process of that Ray
STOP_TIMEOUT_S = 10.0
WHAT = "the temp dir of rayml's serving Ray"
SD_FILE = "prom_metrics_service_discovery.json"  # the name Ray gives its own service-discovery file


def _address_file() -> Path:
    return _ray_dir() / ADDRESS_FILE


def _ray_dir() -> Path:
    """Ray's temp dir (sessions, sockets, logs, its address file), inside rayml's private one."""
    return constants.serve_head_dir() / RAY_SUBDIR


def _local_address() -> str | None:
    if private_fs.existing_private_dir(constants.serve_head_dir(), WHAT) is None:
        return None
    address = (private_fs.read_private_file(_address_file(), "the address file of rayml's serving Ray") or "").strip()
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None


def connect(start_local: bool = False, metrics_export_port: int | None = None) -> str:
    """Connect this process to the Ray that serves rayml applications; returns a description of it.

    Every serve function that acts on a running application calls it first; call it yourself to join that Ray
    before other Ray work (one Ray per process). It does nothing when this process already uses a Ray.

    Args:
        start_local: start a local Ray for serving when there is none (what `rayml serve up` does).
        metrics_export_port: the metrics export port of that local Ray (``serve.metrics_export_port``).

    Raises:
        ServeNotRunningError: nothing to connect to and ``start_local`` is False.

    Example:
        >>> from rayml.serve import connect
        >>> connect()
        'local Ray at 127.0.0.1:61234 (temp dir /tmp/rayml-serve-3f2a9c1b07)'
    """
    if ray.is_initialized():
        return "the Ray this process already uses"
    address = constants.ray_address()
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return f"Ray cluster at {address}"
    address = _local_address()
    if address is None:
        if not start_local:
            raise ServeNotRunningError(
                "no rayml serving Ray is running on this machine (and RAY_ADDRESS is not set)",
                hint="start one with `rayml serve up --config FILE`, or set RAY_ADDRESS to your cluster",
            )
        address = _start_local_head(metrics_export_port)
    _use_local_token()
    # Let Ray discover the head through the address file in its private temp dir (not by passing the address):
    # Ray turns token auth on by itself only for a discovered cluster, never for an explicit address.
    ray.init(address="auto", _temp_dir=str(_ray_dir()), log_to_driver=False, logging_level=logging.WARNING)
    with contextlib.suppress(Exception):  # monitoring aid only: never fail serving over it
        write_service_discovery(constants.serve_head_dir())
    return f"local Ray at {address} (temp dir {constants.serve_head_dir()})"


def write_service_discovery(head_dir: Path) -> Path:
    """Write Prometheus file-based service discovery for the local serving Ray: ``<temp dir>/SD_FILE``.

    Ray writes this file from its dashboard, which the local serving Ray runs without; rayml writes the same format
    (one target per alive node's metrics export port) in the same place, so a Prometheus ``file_sd_configs`` entry
    pointing at it scrapes the serving Ray (see clusters/prometheus/prometheus.yml).
    """
    targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n.get("Alive")]
    return private_fs.write_private_file(head_dir / SD_FILE, json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))


def _use_local_token() -> None:
    """Point this process at the auth token of the local serving Ray (when rayml generated one for it)."""
    if os.environ.get(AUTH_MODE_ENV) is not None:
        return  # the user chose the auth mode (and token) themselves
    token = constants.serve_head_dir() / AUTH_TOKEN_FILE
    if private_fs.read_private_file(token, "the Ray auth token of rayml's serving Ray"):
        os.environ[AUTH_MODE_ENV] = "token"
        os.environ[AUTH_TOKEN_PATH_ENV] = str(token)
        with contextlib.suppress(ImportError, AttributeError):  # Ray caches its config: refresh it (as Ray does)
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")


def _start_local_head(metrics_export_port: int | None) -> str:
    head_dir = private_fs.ensure_private_dir(constants.serve_head_dir(), WHAT)
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={head_dir / RAY_SUBDIR}",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    # the serving Ray outlives this command: it keeps no secret of it in its environment (the ingress gets digests)
    env = {k: v for k, v in os.environ.items() if k != "RAYML_SERVE_API_KEYS"}
    if env.get(AUTH_MODE_ENV) is None:
        # token auth on, whatever the machine's defaults: this Ray listens on the node's address. Its own token, in
        # its private dir (Ray's default ~/.ray/auth_token is created readable by everyone)
        token = private_fs.create_private_file_once(
            head_dir / AUTH_TOKEN_FILE, secrets.token_hex(32), "the Ray auth token of rayml's serving Ray"
        )
        if not token.strip():
            private_fs.write_private_file(head_dir / AUTH_TOKEN_FILE, secrets.token_hex(32))
        env[AUTH_MODE_ENV] = "token"
        env[AUTH_TOKEN_PATH_ENV] = str(head_dir / AUTH_TOKEN_FILE)
    cpus = constants.ray_num_cpus()
    if cpus:
        cmd.append(f"--num-cpus={cpus}")
    if metrics_export_port:
        cmd.append(f"--metrics-export-port={metrics_export_port}")
    logger.info("starting a local Ray for serving: %s", " ".join(cmd))
    # a session of its own: every process of this Ray keeps its id, which is how `serve down` finds them all
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    private_fs.write_private_file(head_dir / STARTED_MARKER, json.dumps({"port": port, "sid": proc.pid}))
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        stop_local_head()
        raise RaymlError("`ray start` did not finish in 180 s", hint="run `rayml serve up --verbose` to see its log") from None
    if proc.returncode != 0:
        stop_local_head()
        raise RaymlError(f"`ray start` failed (exit {proc.returncode}): {stderr[-2000:] or stdout[-2000:]}")
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while _local_address() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return _local_address() or address


def started_local_head() -> bool:
    """Whether this process is connected to the local Ray that rayml started (so rayml may stop it)."""
    return _marker() is not None and _local_address() is not None


def _marker() -> dict | None:
    head_dir = constants.serve_head_dir()
    if private_fs.existing_private_dir(head_dir, WHAT) is None:
        return None
    text = private_fs.read_private_file(head_dir / STARTED_MARKER, "the marker of rayml's serving Ray")
    if not text:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return {"port": int(text)} if text.strip().isdigit() else None  # written by an older rayml: a bare port
    return marker if isinstance(marker, dict) else None


def _head_pids(head_dir: Path, sid: int | None, sid_confirmed: bool = False) -> list[int]:
    """Processes of the local Ray rayml started (the current user's only).

    Those in the session ``ray start`` ran in (every one of them, whatever it renamed itself to; trusted only while
    a process of it names the temp dir, as a recycled session id would not), those whose command line names the
    private temp dir (a Ray started by an older rayml, in no session of its own), and their children.
    """
    import psutil  # a Ray dependency

    me, uid = os.getpid(), private_fs.current_uid()
    own_sid = os.getsid(0)
    needle = str(head_dir)
    found: set[int] = set()
    session: set[int] = set()
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "uids"]):
        info = proc.info
        pid = info["pid"]
        if pid == me or info.get("uids") is None or info["uids"].real != uid:
            continue
        children.setdefault(info["ppid"], []).append(pid)
        try:
            if sid is not None and sid != own_sid and os.getsid(pid) == sid:
                session.add(pid)
        except OSError:
            pass
        if any(needle in part for part in info.get("cmdline") or []):
            found.add(pid)
    if sid_confirmed or found & session:
        found |= session
    todo = list(found)
    while todo:  # children that renamed themselves (ray::DashboardAgent) still have their parent
        for child in children.get(todo.pop(), []):
            if child not in found and child != me:
                found.add(child)
                todo.append(child)
    return sorted(found)


def _in_session(pids: list[int], sid: int) -> bool:
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.getsid(pid) == sid:
                return True
    return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_local_head(timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Stop the local Ray that rayml started: every one of its processes, by id (never `ray stop`, which stops every
    Ray of the machine).

    SIGTERM first; what is still there after a grace period gets SIGKILL (Ray's agents ignore SIGTERM), and the
    processes are looked up again until none is left (a raylet that was stopping may have started one more worker),
    for at most ``timeout_s``.

    Returns:
        How many processes were signalled.

    Raises:
        RaymlError: some of them were still there after ``timeout_s`` (their ids are in the message).
    """
    head_dir = constants.serve_head_dir()
    marker = _marker() or {}
    sid = marker.get("sid") if isinstance(marker.get("sid"), int) else None
    if ray.is_initialized():
        ray.shutdown()
    deadline = time.monotonic() + timeout_s
    grace = min(3.0, timeout_s / 3)
    signalled: set[int] = set()
    left = _head_pids(head_dir, sid)
    # the session is that Ray's (not a recycled id): once its GCS and raylet are gone, what is left of it still is
    sid_confirmed = sid is not None and _in_session(left, sid)
    while left and time.monotonic() < deadline:
        new = [p for p in left if p not in signalled]
        for pid in left:  # SIGKILL for what a SIGTERM did not stop, SIGTERM for a process seen for the first time
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM if pid in new else signal.SIGKILL)
        signalled.update(left)
        wait_until = min(deadline, time.monotonic() + (grace if new else 0.5))
        while time.monotonic() < wait_until and any(_alive(p) for p in left):
            time.sleep(0.1)
        left = [p for p in _head_pids(head_dir, sid, sid_confirmed) if _alive(p)]
    if left:
        raise RaymlError(
            f"the local serving Ray in {head_dir} did not stop in {timeout_s:g} s: processes {left} are still running",
            hint=f"stop them with `kill -KILL {' '.join(map(str, left))}`, then run `rayml serve down` again",
        )
    if private_fs.existing_private_dir(head_dir, WHAT) is not None:
        (head_dir / STARTED_MARKER).unlink(missing_ok=True)
        _address_file().unlink(missing_ok=True)
    return len(signalled)


def outside_event_loop(fn: Callable[[], _T]) -> _T:
    """``fn()``, from a thread when the caller runs inside an event loop (a Jupyter cell): Serve refuses blocking
    handle calls (``.result()``) there."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()
