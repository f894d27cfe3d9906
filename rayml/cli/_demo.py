"""The serving step of `rayml quickstart`: deploy, canary + shadow, observe the split, promote (one function)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rayml._private.net import free_port
from rayml.config import ServeJobConfig, load_config


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
        report: called with one line per step (the CLI prints them; the library never prints).
        keep_running: leave the application up at the end (else it is removed).

    Returns:
        What was observed (:class:`DemoResult`).

    Example:
        >>> r = canary_demo(tracking_uri, "sales-model", df.head(50), report=console.print)
        >>> r.split   # {1: 271, 2: 29}
    """
    import httpx

    from rayml.registry import PREVIOUS, PRODUCTION, Registry
    from rayml.serve._deploy import deploy, down

    say = report or (lambda line: None)
    t0 = time.perf_counter()
    stable, canary, shadow = versions
    registry = Registry(tracking_uri)
    port = port or free_port()
    base = [
        f"serve.port={port}",
        f"registry.tracking_uri={tracking_uri}",
        "serve.ingress.num_cpus=0.25",
        f"serve.models.{model}.deployment.num_cpus=0.25",
    ]

    def cfg(models: str) -> ServeJobConfig:
        return load_config(ServeJobConfig, None, [f"serve.models={{{model}: {models}}}", *base])

    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        say(line)

    state = deploy(cfg(f"{{versions: [{{version: {stable}, weight: 1.0}}]}}"), registry)
    step(f"deployed {model} v{stable} (100%) at {state.url}")
    w = round(canary_weight, 6)
    split_cfg = (
        f"{{versions: [{{version: {stable}, weight: {1 - w}}}, {{version: {canary}, weight: {w}}}], "
        f"shadow: {{version: {shadow}, percent: 100}}}}"
    )
    deploy(cfg(split_cfg), registry)
    step(f"added v{canary} as a {w:.0%} canary and v{shadow} in shadow (mirrors every request; answers never returned)")

    with httpx.Client(base_url=state.url, timeout=30) as client:
        inputs = [i["name"] for i in client.get(f"/v2/models/{model}").json()["inputs"]]
        records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
        instances = [{k: r[k] for k in inputs} for r in records]
        answers: Counter[int] = Counter()
        failed = 0
        since = time.time() - 1
        for i in range(requests):
            r = client.post(f"/v1/models/{model}:predict", json={"instances": [instances[i % len(instances)]]})
            if r.status_code == 200:
                answers[int(r.headers["x-rayml-model-version"])] += 1
            else:
                failed += 1
    time.sleep(2.0)  # one stats flush
    mirrored, disagreement = _shadow_stats(state.name, model, shadow, since, state.spec.models[model].task)
    shares = ", ".join(f"v{v}: {n} ({n / max(requests, 1):.1%})" for v, n in sorted(answers.items()))
    step(f"sent {requests} requests: {shares}; failed {failed}; shadow v{shadow} answered {mirrored} mirrored requests")

    deploy(cfg(f"{{versions: [{{version: {stable}, weight: 0.0}}, {{version: {canary}, weight: 1.0}}]}}"), registry)
    moved = registry.set_alias(model, canary, PRODUCTION)
    if PREVIOUS not in moved:
        registry.set_alias(model, stable, PREVIOUS)
    step(f"promoted v{canary}: 100% of traffic, alias production -> v{canary}, previous -> v{stable}")
    if not keep_running:
        down(cfg(f"{{versions: [{{version: {canary}}}]}}").serve, keep_ray=False)
    return DemoResult(
        url=state.url,
        requests=requests,
        split=dict(sorted(answers.items())),
        failed=failed,
        mirrored=mirrored,
        disagreement=disagreement,
        promoted=canary,
        elapsed_s=time.perf_counter() - t0,
        steps=steps,
    )


def _shadow_stats(app_name: str, model: str, version: int, since: float, task: str) -> tuple[int, float | None]:
    from ray import serve

    from rayml.serve._spec import STATS
    from rayml.serve._stats import by_version

    window = by_version(serve.get_deployment_handle(STATS, app_name).window.remote(model, since).result(timeout_s=30))
    s = window.get((version, "shadow"))
    return (s.requests - s.errors, s.disagreement(task)) if s else (0, None)
