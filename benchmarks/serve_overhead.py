"""Latency and throughput of rayml serving (90/10 canary + 10% shadow) against a plain Ray Serve app, in one run.

(a) plain: a minimal FastAPI ingress (parse the v2 body into columns, call the model, answer) in front of the same
ONNX model deployment rayml uses (`ModelServer`: ONNX Runtime, dynamic batching); (b) rayml: the real application
(auth off) with v1/v2 at 90/10 and v3 mirrored on 10% of requests. Both apps run side by side on one Serve instance
and take the same 1-row v2 requests from the same client at a fixed concurrency; the two are measured in
alternating rounds (a, b, a, b, ...) so load from anything else on the machine hits both alike. Prints p50/p99
latency and throughput of each side, then:

    RESULT serve_overhead p50_ratio=<rayml p50 / plain p50> target<=1.25 PASS|MISS
    RESULT serve_overhead throughput_ratio=<rayml req/s / plain req/s> target>=0.8 PASS|MISS

Usage: python benchmarks/serve_overhead.py [--concurrency 8] [--seconds 8] [--rounds 3]
"""

# No `from __future__ import annotations`: FastAPI must see the real Request type on the plain ingress.
import argparse
import asyncio
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from ray import serve

P50_TARGET, THROUGHPUT_TARGET = 1.25, 0.8
plain_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(plain_api)
class PlainIngress:
    """The baseline: what a minimal hand-written v2 ingress in front of the same model deployment does."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @plain_api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> dict:
        body = await request.json()
        feed = {
            i["name"]: np.asarray(i["data"], dtype=object if i["datatype"] == "BYTES" else np.float32) for i in body["inputs"]
        }
        result = await self.model.predict.remote(feed)
        out = result["outputs"][0]
        return {
            "model_name": name,
            "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [len(out)], "data": out.tolist()}],
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, body: dict, concurrency: int, seconds: float) -> tuple[list[float], float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                if r.status_code != 200:
                    errors += 1
                    if errors == 1:
                        logging.warning("%s answered %s: %s", url, r.status_code, r.text[:300])
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{errors} requests to {url} failed")
    return latencies, len(latencies) / elapsed


def _summary(latencies: list[float], throughputs: list[float]) -> dict[str, float]:
    q = np.quantile(np.asarray(latencies), [0.5, 0.99])
    return {"p50_ms": q[0] * 1e3, "p99_ms": q[1] * 1e3, "rps": statistics.median(throughputs), "n": len(latencies)}


def compare(urls: dict[str, str], body: dict, concurrency: int, seconds: float, rounds: int) -> tuple[dict, dict]:
    """Warm both sides up, then load ``urls["plain"]`` and ``urls["rayml"]`` in alternating rounds (a, b, b, a, ...) so
    load from anything else on the machine hits both alike; prints each round. Returns both sides' summaries."""
    for url in urls.values():  # warm up: connections, batch queues, first ONNX runs
        asyncio.run(_load(url, body, concurrency, 2.0))
    lat: dict[str, list[float]] = {k: [] for k in urls}
    rps: dict[str, list[float]] = {k: [] for k in urls}
    for i in range(rounds):
        for side in ("plain", "rayml") if i % 2 == 0 else ("rayml", "plain"):
            latencies, throughput = asyncio.run(_load(urls[side], body, concurrency, seconds))
            lat[side] += latencies
            rps[side].append(throughput)
            print(f"round {i + 1} {side:5s}: {throughput:7.1f} req/s, p50 {statistics.median(latencies) * 1e3:6.2f} ms")
    return _summary(lat["plain"], rps["plain"]), _summary(lat["rayml"], rps["rayml"])


def report(bench: str, plain: tuple[str, dict], rayml: tuple[str, dict], args: argparse.Namespace) -> None:
    """Print both sides' figures and the ``RESULT`` lines of the p50 and throughput ratios (rayml / plain)."""
    (a_name, a), (b_name, b) = plain, rayml
    for name, s in ((a_name, a), (b_name, b)):
        print(f"{name:26s} p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms  {s['rps']:7.1f} req/s  ({s['n']} requests)")
    p50_ratio, tput_ratio = b["p50_ms"] / a["p50_ms"], b["rps"] / a["rps"]
    print(f"concurrency {args.concurrency}, {args.rounds} rounds x {args.seconds:g}s per side")
    print(f"load average after: {os.getloadavg()}")
    p50_ok = "PASS" if p50_ratio <= P50_TARGET else "MISS"
    print(f"RESULT {bench} p50_ratio={p50_ratio:.2f} target<={P50_TARGET} {p50_ok}")
    tput_ok = "PASS" if tput_ratio >= THROUGHPUT_TARGET else "MISS"
    print(f"RESULT {bench} throughput_ratio={tput_ratio:.2f} target>={THROUGHPUT_TARGET} {tput_ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measured round per side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load average before: {os.getloadavg()}")

    import ray

    home = tempfile.mkdtemp(prefix="rayml-bench-serve-")
    os.environ["RAYML_HOME"] = home
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        from rayml.config import ServeJobConfig, load_config
        from rayml.registry import Registry
        from rayml.serve import deploy
        from rayml.serve._model import ModelServer
        from rayml.testing import instances, register_tiny_model, v2_body

        registry = Registry(f"sqlite:///{home}/mlflow.db")
        for seed in (0, 1, 2):
            register_tiny_model(registry, "sales-model", seed=seed)
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        light = ["serve.ingress.num_cpus=0.25", "serve.models.sales-model.deployment.num_cpus=0.25"]
        cfg = load_config(
            ServeJobConfig,
            None,
            [
                f"serve.port={port}",
                "serve.models={sales-model: {versions: [{version: 1, weight: 0.9}, {version: 2, weight: 0.1}], "
                "shadow: {version: 3, percent: 10}}}",
                *light,
            ],
        )
        deploy(cfg, registry=registry)
        v1 = registry.load("sales-model:1")
        model = ModelServer.options(name="plain-model", ray_actor_options={"num_cpus": 0.25}).bind(
            model="sales-model", version=1, tracking_uri=registry.tracking_uri, local_path=str(v1.path)
        )
        serve.run(PlainIngress.bind(model), name="plain", route_prefix="/plain")

        body = v2_body(instances(1))
        urls = {
            "plain": f"http://127.0.0.1:{port}/plain/v2/models/sales-model/infer",
            "rayml": f"http://127.0.0.1:{port}/v2/models/sales-model/infer",
        }
        a, b = compare(urls, body, args.concurrency, args.seconds, args.rounds)
        report("serve_overhead", ("plain Ray Serve", a), ("rayml 90/10 + 10% shadow", b), args)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
