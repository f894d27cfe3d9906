"""Start or join Ray for a rayml command.

``RAY_ADDRESS`` (or a ``ray job submit`` driver) joins that cluster; otherwise a local Ray starts with its dashboard
bound to 127.0.0.1. Code never assumes which of the two it got.
"""

from __future__ import annotations

import logging
import os

import ray

from rayml._private import constants

logger = logging.getLogger("rayml")


def ensure_ray(num_cpus: int | None = None) -> None:
    """Initialise Ray once per process (a no-op when already initialised, e.g. inside a Ray job or a test session)."""
    if ray.is_initialized():
        return
    # Quiet the per-task progress noise of Ray Data unless the user asked for it.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    address = constants.ray_address()
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    cpus = num_cpus if num_cpus is not None else constants.ray_num_cpus()
    logger.info("starting a local Ray (num_cpus=%s, dashboard on 127.0.0.1)", cpus or "auto")
    ray.init(num_cpus=cpus, dashboard_host="127.0.0.1", include_dashboard=False, log_to_driver=True)
