"""What the serving benchmarks share (a helper module: `make bench` runs only the files not starting with "_").

A hand-written Ray Serve baseline that runs a version's ``model.onnx`` with ONNX Runtime and no rayml code, an HTTP load
generator, and measurement in alternating rounds so that load from anything else on the machine hits every side alike.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request type on the plain ingresses.
import asyncio
import logging
import socket
import statistics
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from ray import serve

one_hop_api = FastAPI()


def _session(path: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _feed(body: dict) -> dict[str, np.ndarray]:
    return {i["name"]: np.asarray(i["data"], dtype=object if i["datatype"] == "BYTES" else np.float32) for i in body["inputs"]}


def _v2_answer(name: str, out: np.ndarray) -> dict:
    tensor = {"name": "prediction", "datatype": "FP32", "shape": [len(out)], "data": out.tolist()}
    return {"model_name": name, "outputs": [tensor]}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(one_hop_api)
class OneHopOnnx:
    """What a user writes first in Ray Serve: one deployment that parses the v2 body and runs ONNX Runtime itself."""

    def __init__(self, path: str) -> None:
        self.session = _session(path)

    @one_hop_api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> dict:
        return _v2_answer(name, self.session.run(None, _feed(await request.json()))[0])


def free_port() -> int:
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


def summary(latencies: list[float], throughputs: list[float]) -> dict[str, float]:
    q = np.quantile(np.asarray(latencies), [0.5, 0.99])
    return {"p50_ms": q[0] * 1e3, "p99_ms": q[1] * 1e3, "rps": statistics.median(throughputs), "n": len(latencies)}


def compare(
    sides: dict[str, tuple[str, dict]], concurrency: int, seconds: float, rounds: int, label: str = ""
) -> dict[str, dict[str, float]]:
    """Warm every side up, then load them in rotating order for ``rounds`` rounds; prints each round.

    Args:
        sides: name -> (url, JSON body); each side gets the same rows in its own request format.

    Returns:
        name -> {p50_ms, p99_ms, rps (median over rounds), n}.
    """
    for url, body in sides.values():  # warm up: connections, batch queues, first ONNX runs
        asyncio.run(_load(url, body, concurrency, 1.5))
    names = list(sides)
    lat: dict[str, list[float]] = {k: [] for k in names}
    rps: dict[str, list[float]] = {k: [] for k in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            url, body = sides[name]
            latencies, throughput = asyncio.run(_load(url, body, concurrency, seconds))
            lat[name] += latencies
            rps[name].append(throughput)
            print(f"{label}round {i + 1} {name:28s}: {throughput:7.1f} req/s, p50 {statistics.median(latencies) * 1e3:7.2f} ms")
    return {k: summary(lat[k], rps[k]) for k in names}


def result(bench: str, metric: str, value: float, op: str, target: float) -> None:
    """Print one ``RESULT`` line."""
    ok = value <= target if op == "<=" else value >= target
    print(f"RESULT {bench} {metric}={value:.3g} target{op}{target:g} {'PASS' if ok else 'MISS'}")
