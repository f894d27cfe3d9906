"""The serving step of `rayml quickstart`: serve a stable version, add a canary and a shadow, send traffic, promote.

It uses only the public serving API (:func:`rayml.serve.deploy`, :func:`rayml.serve.traffic_stats`,
:func:`rayml.serve.undeploy`): what it does, a user can do from a notebook the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayml._private.net import free_port
from rayml.config import ServeJobConfig, load_config

STATS_FLUSH_S = 2.0  # ingress replicas push their counts about every second: wait one flush before reading them


@dataclass
class DemoResult:
    """What :func:`canary_demo` observed."""

    url: str
    requests: int
    split: dict[int, int]  # version -> answers
    failed: int
    mirrored: int  # requests the shadow version answered (never returned to callers)
    disagreement: float | None  # shadow vs primary: sum|diff| / sum|primary| (regression) or class mismatch share
    promoted: int
    elapsed_s: float
    steps: list[str] = field(default_factory=list)


class CanaryDemo:
    """One model's application, changed in place: stable alone, stable + canary + shadow, canary alone.

    Args:
        tracking_uri: MLflow tracking URI holding the versions.
        model: registered model name.
        versions: (stable, canary, shadow) version numbers.
        canary_weight: the canary's share of the traffic.
        port: HTTP port (None: a free one).
    """

    def __init__(
        self, tracking_uri: str, model: str, versions: tuple[int, int, int], canary_weight: float, port: int | None
    ) -> None:
        from rayml.registry import Registry

        self.model = model
        self.stable, self.canary, self.shadow = versions
        self.weight = round(canary_weight, 6)
        self.registry = Registry(tracking_uri)
        # small replicas: the whole story fits a laptop's CPUs next to the Ray that trained the models
        self.overrides = [
            f"serve.port={port or free_port()}",
            f"registry.tracking_uri={tracking_uri}",
            "serve.ingress.num_cpus=0.25",
            f"serve.models.{model}.deployment.num_cpus=0.25",
        ]
        self.url = ""
        self.task = ""
        self.current: ServeJobConfig | None = None  # what was deployed last

    def deploy(self, versions: str) -> Any:
        """Serve ``self.model`` as ``versions`` (the YAML flow mapping of its `serve.models` entry); the app's state."""
        from rayml.serve import deploy

        self.current = load_config(ServeJobConfig, None, [f"serve.models={{{self.model}: {versions}}}", *self.overrides])
        return deploy(self.current, registry=self.registry)

    def deploy_stable(self) -> str:
        state = self.deploy(f"{{versions: [{{version: {self.stable}, weight: 1.0}}]}}")
        self.url, self.task = state.url, state.spec.models[self.model].task
        return f"deployed {self.model} v{self.stable} (100%) at {self.url}"

    def add_canary_and_shadow(self) -> str:
        w = self.weight
        self.deploy(
            f"{{versions: [{{version: {self.stable}, weight: {1 - w}}}, {{version: {self.canary}, weight: {w}}}], "
            f"shadow: {{version: {self.shadow}, percent: 100}}}}"
        )
        return (
            f"added v{self.canary} as a {w:.0%} canary and v{self.shadow} in shadow "
            "(mirrors every request; answers never returned)"
        )

    def send(self, rows: Any, requests: int, on_request: Callable[[int], None]) -> tuple[Counter[int], int]:
        """Send ``requests`` one-row KServe v1 requests; returns (answers per version, failed requests)."""
        import httpx

        answers: Counter[int] = Counter()
        failed = 0
        with httpx.Client(base_url=self.url, timeout=30) as client:
            inputs = [i["name"] for i in client.get(f"/v2/models/{self.model}").json()["inputs"]]
            records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
            instances = [{k: r[k] for k in inputs} for r in records]
            for i in range(requests):
                r = client.post(f"/v1/models/{self.model}:predict", json={"instances": [instances[i % len(instances)]]})
                if r.status_code == 200:
                    answers[int(r.headers["x-rayml-model-version"])] += 1
                else:
                    failed += 1
                on_request(i + 1)
        return answers, failed

    def shadow_answers(self, since: float) -> tuple[int, float | None]:
        """(mirrored requests the shadow answered, its disagreement with the primary) since ``since``."""
        from rayml.serve import traffic_stats

        assert self.current is not None, "deployed first"
        s = traffic_stats(self.current, self.model, since).get((self.shadow, "shadow"))
        return (s.requests - s.errors, s.disagreement(self.task)) if s else (0, None)

    def promote(self) -> str:
        from rayml.registry import PREVIOUS, PRODUCTION

        self.deploy(f"{{versions: [{{version: {self.stable}, weight: 0.0}}, {{version: {self.canary}, weight: 1.0}}]}}")
        moved = self.registry.set_alias(self.model, self.canary, PRODUCTION)
        if PREVIOUS not in moved:
            self.registry.set_alias(self.model, self.stable, PREVIOUS)
        return f"promoted v{self.canary}: 100% of traffic, alias production -> v{self.canary}, previous -> v{self.stable}"

    def remove(self) -> None:
        from rayml.serve import undeploy

        assert self.current is not None, "deployed first"
        undeploy(self.current, keep_ray=False)


def canary_demo(
    tracking_uri: str,
    model: str,
    rows: Any,
    versions: tuple[int, int, int] = (1, 2, 3),
    requests: int = 300,
    canary_weight: float = 0.1,
    port: int | None = None,
    report: Callable[[str], None] | None = None,
    keep_running: bool = False,
    on_request: Callable[[int], None] | None = None,
) -> DemoResult:
    """Serve ``model`` v1, add v2 as a canary with v3 in shadow, send traffic, show the split, promote v2.

    Args:
        tracking_uri: MLflow tracking URI holding the three versions.
        model: registered model name.
        rows: request rows (a DataFrame or a list of dicts); columns the model does not take are dropped.
        versions: (stable, canary, shadow) version numbers.
        requests: how many requests to send.
        canary_weight: the canary's share of the traffic.
        port: HTTP port (None: a free one).
        report: called with one line per step.
        keep_running: leave the application up at the end (else it is removed).
        on_request: called with the number of requests sent so far, after each one (a progress bar).

    Returns:
        What was observed (:class:`DemoResult`).

    Example:
        >>> r = canary_demo(tracking_uri, "sales-model", df.head(50), report=console.print)
        >>> r.split   # {1: 271, 2: 29}
    """
    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        (report or (lambda _: None))(line)

    t0 = time.perf_counter()
    demo = CanaryDemo(tracking_uri, model, versions, canary_weight, port)
    step(demo.deploy_stable())
    step(demo.add_canary_and_shadow())
    since = time.time() - 1
    answers, failed = demo.send(rows, requests, on_request or (lambda _: None))
    time.sleep(STATS_FLUSH_S)
    mirrored, disagreement = demo.shadow_answers(since)
    shares = ", ".join(f"v{v}: {n} ({n / max(requests, 1):.1%})" for v, n in sorted(answers.items()))
    step(f"sent {requests} requests: {shares}; failed {failed}; shadow v{demo.shadow} answered {mirrored} mirrored requests")
    step(demo.promote())
    if not keep_running:
        demo.remove()
    return DemoResult(
        url=demo.url,
        requests=requests,
        split=dict(sorted(answers.items())),
        failed=failed,
        mirrored=mirrored,
        disagreement=disagreement,
        promoted=demo.canary,
        elapsed_s=time.perf_counter() - t0,
        steps=steps,
    )
