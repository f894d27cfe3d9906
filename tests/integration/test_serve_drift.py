"""Online drift on real Ray Serve over HTTP: two replicas of a version count into its reference bins, the stats
deployment merges them exactly, drifted traffic alerts and clean traffic stays ok.

The clean traffic is the very frame the tiny models' reference bins were computed from (so every distance is 0 up to
float rounding); the drifted traffic is the same rows with prices tripled and an unseen category.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from rayml.config import ServeJobConfig, load_config
from rayml.registry import Registry
from rayml.serve import deploy, drift_status
from rayml.testing import register_tiny_model, sample_frame, v2_body

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = "drift-model"
ROWS_PER_REQUEST = 10
REQUESTS = 40  # per version: 400 rows, over the default min_rows (100)


@pytest.fixture
def env(serve_instance: dict, registry: Registry):
    # per test: drift counts stay in the stats deployment for the whole window, so each test gets a fresh application
    for seed in (0, 1):
        register_tiny_model(registry, MODEL, seed=seed)
    inputs = [i["name"] for i in registry.load(f"{MODEL}:1").meta["inputs"]]
    return {**serve_instance, "registry": registry, "inputs": inputs}


def _rows(inputs: list[str], drifted: bool) -> list[dict]:
    df = sample_frame()  # the frame the reference bins were computed from
    if drifted:
        df = df.assign(price=df["price"] * 3.0, category="gadgets")
    return json.loads(df[inputs].to_json(orient="records"))


async def _send(url: str, path: str, rows: list[dict], n: int) -> list[int]:
    sem = asyncio.Semaphore(8)  # concurrent, so Serve spreads the requests over both replicas
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> int:
            chunk = [rows[(i * ROWS_PER_REQUEST + j) % len(rows)] for j in range(ROWS_PER_REQUEST)]
            async with sem:
                return (await client.post(path, json=v2_body(chunk))).status_code

        return await asyncio.gather(*(one(i) for i in range(n)))


def _wait_for_rows(expected: dict[int, int], timeout_s: float = 20.0) -> dict[int, dict]:
    deadline = time.monotonic() + timeout_s
    reports: dict[int, dict] = {}
    while time.monotonic() < deadline:
        reports = drift_status(ServeJobConfig(), MODEL).get(MODEL, {})  # the default application, "rayml"
        if all(reports.get(v, {}).get("rows") == n for v, n in expected.items()):
            return reports
        time.sleep(0.5)
    raise AssertionError(f"rows never reached {expected}: {({v: r['rows'] for v, r in reports.items()})}")


def test_drifted_traffic_alerts_clean_stays_ok_and_two_replicas_merge_exactly(env: dict) -> None:
    overrides = [
        f"serve.port={env['port']}",
        f"serve.models={{{MODEL}: {{versions: [{{version: 1, weight: 1.0}}, {{version: 2, weight: 0.0}}]}}}}",
        f"serve.models.{MODEL}.deployment.num_cpus=0.1",
        f"serve.models.{MODEL}.deployment.num_replicas=2",
        "serve.ingress.num_cpus=0.1",
        "serve.stats_flush_interval_s=0.5",
        "serve.drift_window_s=1000000",  # one window for the whole test: every row sent is in the report
        "serve.deploy_timeout_s=180",
    ]
    deploy(load_config(ServeJobConfig, None, overrides), registry=env["registry"])
    clean, drifted = _rows(env["inputs"], False), _rows(env["inputs"], True)
    codes = asyncio.run(_send(env["url"], f"/v2/models/{MODEL}/versions/1/infer", clean, REQUESTS))
    codes += asyncio.run(_send(env["url"], f"/v2/models/{MODEL}/versions/2/infer", drifted, REQUESTS))
    assert set(codes) == {200}, codes

    total = REQUESTS * ROWS_PER_REQUEST
    reports = _wait_for_rows({1: total, 2: total})
    ok, bad = reports[1], reports[2]
    # exact totals merged from both replicas of v1
    assert ok["replicas"] == 2, ok["replicas"]
    assert ok["features"]["price"]["rows"] == total and ok["prediction"]["rows"] == total

    assert ok["status"] == "ok" and ok["drifted_features"] == [] and ok["warned_features"] == [], ok
    assert ok["features"]["price"]["metrics"]["psi"] < 0.05 and ok["prediction"]["status"] == "ok"

    assert bad["status"] == "alert"
    assert {"price", "category"} <= set(bad["drifted_features"]), bad["drifted_features"]
    assert bad["features"]["price"]["metrics"]["psi"] > 0.25
    assert bad["features"]["category"]["metrics"]["linf"] > 0.1
    assert bad["features"]["category"]["quality"]["unseen"] == total
    assert bad["features"]["price"]["quality"]["out_of_range"] > 0
