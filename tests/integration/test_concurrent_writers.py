"""The Serve spec lock is one per application for every process of the cluster (a named detached actor): a writer in
a Ray worker waits for, or gives up on, a lock the driver holds, and takes it once released."""

from __future__ import annotations

import pytest

from rayml.errors import SpecConflictError


def test_the_spec_lock_is_shared_by_every_process_of_the_cluster(ray_session) -> None:
    import ray

    from rayml.serve._speclock import ACTOR_NAME, NAMESPACE, SpecLock

    @ray.remote(num_cpus=0)
    def try_lock(app: str, wait_s: float) -> str:
        from rayml.errors import SpecConflictError
        from rayml.serve._speclock import SpecLock

        try:
            with SpecLock(app, "a worker", wait_s=wait_s, poll_s=0.1):
                return "got it"
        except SpecConflictError as e:
            return e.message

    try:
        with SpecLock("cas-app", "the driver (test)", wait_s=5) as held:
            assert "is being changed by the driver (test)" in ray.get(try_lock.remote("cas-app", 0.3))
            assert ray.get(try_lock.remote("other-app", 0.3)) == "got it"  # one lock per application
            held.check()
            with (
                pytest.raises(SpecConflictError, match="being changed by the driver"),
                SpecLock("cas-app", "the driver again", wait_s=0.2, poll_s=0.1),
            ):
                pass
        assert ray.get(try_lock.remote("cas-app", 5)) == "got it"
    finally:
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=NAMESPACE), no_restart=True)
