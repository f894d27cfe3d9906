"""Which Ray the serving commands talk to, and the local Ray that `rayml serve up` starts on a laptop.

A Serve application must outlive the command that deployed it, so `rayml serve up` cannot use a Ray that dies with
its own process. Order: an already initialised Ray (a notebook, a test, a Ray job) > ``$RAY_ADDRESS`` (a cluster) >
the local Ray that rayml started earlier for this ``$RAYML_HOME`` > (for `serve up` only) a new local Ray started
with ``ray start --head`` in a private temp dir, which `rayml serve down` stops again once no application is left.

The private temp dir matters: Ray records the address of a ``ray start`` in its temp dir, and a plain ``ray.init()``
anywhere on the machine attaches to the cluster recorded in the default one (/tmp/ray). Ours lives elsewhere, so no
other program on the machine joins it by accident.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ray

from rayml._private import constants
from rayml._private.net import free_port
from rayml.errors import RaymlError, ServeNotRunningError

logger = logging.getLogger("rayml.serve")

ADDRESS_FILE = "ray_current_cluster"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
STARTED_MARKER = "rayml_started_head"
SD_FILE = "prom_metrics_service_discovery.json"  # the name Ray gives its own service-discovery file


def _address_file() -> Path:
    return constants.serve_head_dir() / ADDRESS_FILE


def _local_address() -> str | None:
    f = _address_file()
    if not f.is_file():
        return None
    address = f.read_text().strip()
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
    # Let Ray discover the head through the address file in its private temp dir (not by passing the address):
    # Ray turns token auth on by itself only for a discovered cluster, never for an explicit address.
    head_dir = str(constants.serve_head_dir())
    ray.init(address="auto", _temp_dir=head_dir, log_to_driver=False, logging_level=logging.WARNING)
    with contextlib.suppress(Exception):  # monitoring aid only: never fail serving over it
        write_service_discovery(constants.serve_head_dir())
    return f"local Ray at {address} (temp dir {constants.serve_head_dir()})"


def write_service_discovery(head_dir: Path) -> Path:
    """Write Prometheus file-based service discovery for the local serving Ray: ``<temp dir>/SD_FILE``.

    Ray writes this file from its dashboard, which the local serving Ray runs without; rayml writes the same format
    (one target per alive node's metrics export port) in the same place, so a Prometheus ``file_sd_configs`` entry
    pointing at it scrapes the serving Ray (see clusters/prometheus/prometheus.yml).
    """
    import json

    targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n.get("Alive")]
    path = head_dir / SD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    tmp.replace(path)
    return path


def _start_local_head(metrics_export_port: int | None) -> str:
    head_dir = constants.serve_head_dir()
    head_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={head_dir}",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    env = os.environ.copy()
    if env.get(AUTH_MODE_ENV) is None:
        # token auth on, whatever the machine's defaults: this Ray listens on the node's address
        env[AUTH_MODE_ENV] = "token"
        ray_bin = str(Path(sys.executable).parent / "ray")
        subprocess.run([ray_bin, "get-auth-token", "--generate"], capture_output=True, timeout=60, env=env)
    cpus = constants.ray_num_cpus()
    if cpus:
        cmd.append(f"--num-cpus={cpus}")
    if metrics_export_port:
        cmd.append(f"--metrics-export-port={metrics_export_port}")
    logger.info("starting a local Ray for serving: %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    if result.returncode != 0:
        raise RaymlError(f"`ray start` failed (exit {result.returncode}): {result.stderr[-2000:] or result.stdout[-2000:]}")
    (head_dir / STARTED_MARKER).write_text(str(port))
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while _local_address() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return _local_address() or address


def started_local_head() -> bool:
    """Whether this process is connected to the local Ray that rayml started (so rayml may stop it)."""
    return (constants.serve_head_dir() / STARTED_MARKER).is_file() and _local_address() is not None


def _head_pids(head_dir: Path) -> list[int]:
    """Processes of the local Ray rayml started: their command lines name its private temp dir, and nothing else does."""
    import psutil  # a Ray dependency

    needle = str(head_dir)
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info["pid"] != os.getpid() and any(needle in part for part in cmdline):
            pids.append(proc.info["pid"])
    return pids


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_local_head(timeout_s: float = 3.0) -> int:
    """Stop the local Ray that rayml started (by the ids of its own processes; never `ray stop`, which stops every Ray).

    Returns:
        How many processes were signalled.
    """
    head_dir = constants.serve_head_dir()
    if ray.is_initialized():
        ray.shutdown()
    pids = _head_pids(head_dir)
    signalled = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            break
    for name in (STARTED_MARKER, ADDRESS_FILE):
        (head_dir / name).unlink(missing_ok=True)
    return signalled
