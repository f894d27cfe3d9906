"""Start or join Ray for a rayml command.

``RAY_ADDRESS`` (or a ``ray job submit`` driver) joins that cluster; otherwise a local Ray starts with its dashboard
bound to 127.0.0.1. Code never assumes which of the two it got.
"""

from __future__ import annotations

import logging
import os

import ray
import ray.data

from rayml._private import constants

logger = logging.getLogger("rayml")

_started_here = False  # this process started its own local Ray (it ends with the process)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Initialise Ray once per process (a no-op when already initialised, e.g. inside a Ray job or a test session)."""
    quiet_ray_data()
    if ray.is_initialized():
        return
    address = constants.ray_address()
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    cpus = num_cpus if num_cpus is not None else constants.ray_num_cpus()
    logger.info("starting a local Ray (num_cpus=%s, dashboard on 127.0.0.1)", cpus or "auto")
    # log_to_driver: the workers' logs come to this process, where a notebook shows them and the CLI writes them to
    # its log file (rayml._private.logs); without it they would only be in Ray's session directory
    ray.init(num_cpus=cpus, dashboard_host="127.0.0.1", include_dashboard=False, log_to_driver=True)
    global _started_here
    _started_here = True


def is_throwaway() -> bool:
    """Whether the connected Ray is one this process started for itself (nothing outlives the process there)."""
    return _started_here and ray.is_initialized()


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars flood a CLI's output; rayml shows its own progress."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def set_train_poll_interval(seconds: float) -> None:
    """Set how often Ray Train's controller polls workers for reports (propagated from the driver to the controller)."""
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(seconds)
