"""Real Ray Serve over HTTP: protocols, split, stickiness, shadow, bad input, auth, zero-downtime changes, metrics.

One Serve instance (on a free port) and one set of tiny registered models serve the whole module; each test
starts by deploying the whole spec it asserts on as an update of the same application (most updates only
reconfigure the ingress, so tests run alone and in any order without a fresh application each), and the
application is deleted and Serve shut down at the end. Misbehaving models use the test-only fault hook of the model
deployment (``with rayml.testing.serve_faults({"name:version": "raise" | "sleep:S" | "scale:K"}): deploy(...)``):
the real ONNX deployment, told to raise, sleep or scale its outputs.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy.stats import binom

from rayml.config import ServeJobConfig, load_config
from rayml.errors import ConfigError
from rayml.registry import Registry
from rayml.serve import deploy
from rayml.serve._apply import app_state
from rayml.testing import LIGHT_SERVE, instances, register_tiny_model, register_tiny_model_set, serve_faults, v2_body

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = "sales-model"
MULTICLASS = "sales-band"
ROWS = instances(4)


@pytest.fixture(scope="module")
def served(serve_http: dict, tmp_path_factory: pytest.TempPathFactory, _registry_template: Path):
    db = tmp_path_factory.mktemp("serve-registry") / "mlflow.db"
    shutil.copy(_registry_template, db)
    registry = Registry(f"sqlite:///{db}")
    for seed in (0, 1, 2):  # versions 1, 2, 3: same signature, different predictions
        register_tiny_model(registry, MODEL, seed=seed)
    register_tiny_model_set(registry, "store-models")  # a many-models family: one model per store + a fallback
    for seed in (0, 1):  # multiclass versions 1, 2 of MULTICLASS: labels low / medium / high, some rows differ
        register_tiny_model(registry, MULTICLASS, seed=seed, task="multiclass")
    return {**serve_http, "registry": registry}


@pytest.fixture
def env(served: dict):
    """The module's Serve and registry for one test, which starts by deploying (``up``) the whole spec it asserts on.

    A deploy is a full spec, not a delta, so nothing an earlier test served reaches the next one; the registry loses
    the versions a test registered.
    """
    registry: Registry = served["registry"]
    known = {m: [v.version for v in registry.versions(m)] for m in (MODEL, "store-models")}
    yield served
    for model, versions in known.items():
        for v in registry.versions(model):
            if v.version not in versions:
                registry.client.delete_model_version(model, str(v.version))


def cfg(env: dict, models: str, *extra: str) -> ServeJobConfig:
    per_model = [f"serve.models.{MODEL}.deployment.num_cpus=0.1"] if f"{MODEL}:" in models else []
    return load_config(
        ServeJobConfig,
        None,
        [f"serve.port={env['port']}", f"serve.models={{{models}}}", *LIGHT_SERVE, *per_model, *extra],
    )


def up(env: dict, models: str, *extra: str, faults: dict[str, str] | None = None):
    with serve_faults(faults or {}):
        return deploy(cfg(env, models, *extra), registry=env["registry"])


def replica_pids(app: str = "rayml") -> dict[str, set[int]]:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    details = ServeInstanceDetails(**_get_global_client().get_serve_details())
    return {name: {r.pid for r in d.replicas} for name, d in details.applications[app].deployments.items()}


def stats_window(model: str, since: float) -> dict:
    from ray import serve

    from rayml.serve._stats import by_version

    return by_version(serve.get_deployment_handle("RaymlStats", "rayml").window.remote(model, since).result())


async def _fire(url: str, path: str, bodies: list[dict], headers: list[dict] | None = None, concurrency: int = 8):
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int):
            async with sem:
                r = await client.post(path, json=bodies[i], headers=(headers or [{}] * len(bodies))[i])
                return r.status_code, r.headers.get("x-rayml-model-version")

        return await asyncio.gather(*(one(i) for i in range(len(bodies))))


def fire(env: dict, n: int, path: str = f"/v1/models/{MODEL}:predict", headers: list[dict] | None = None):
    return asyncio.run(_fire(env["url"], path, [{"instances": ROWS[:1]}] * n, headers))


# --- protocols ---------------------------------------------------------------------------------------------------
def test_v2_and_v1_protocols_metadata_and_version_header(env: dict) -> None:
    state = up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}, {{version: 2, weight: 0.0}}]}}")
    assert state.healthy, state
    c = httpx.Client(base_url=env["url"], timeout=30)
    assert c.get("/v2/health/live").json() == {"live": True}
    deadline = time.monotonic() + 30
    while c.get("/v2/health/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert c.get("/v2/health/ready").json() == {"ready": True}
    meta = c.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["versions"] == ["1", "2"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "price": "FP32",
        "temperature": "FP32",
        "competitor_distance": "FP32",
        "day_of_week": "FP32",
        "month": "FP32",
        "region": "BYTES",
        "category": "BYTES",
        "promo": "BYTES",
    }
    assert all(i["shape"] == [-1] for i in meta["inputs"]) and meta["outputs"][0]["name"] == "prediction"
    assert c.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True

    r = c.post(f"/v2/models/{MODEL}/infer", json=v2_body(ROWS, id="req-7"))
    body = r.json()
    assert r.status_code == 200 and r.headers["x-rayml-model-version"] == "1"
    assert body["model_name"] == MODEL and body["model_version"] == "1" and body["id"] == "req-7"
    out = body["outputs"][0]
    assert out["name"] == "prediction" and out["datatype"] == "FP32" and out["shape"] == [4] and len(out["data"]) == 4
    assert all(math.isfinite(x) for x in out["data"])

    v1 = c.post(f"/v1/models/{MODEL}:predict", json={"instances": ROWS})
    assert v1.status_code == 200 and v1.json()["predictions"] == pytest.approx(out["data"], rel=1e-5)

    pinned = c.post(f"/v2/models/{MODEL}/versions/2/infer", json=v2_body(ROWS))  # weight 0, still reachable pinned
    assert pinned.status_code == 200 and pinned.headers["x-rayml-model-version"] == "2"
    assert pinned.json()["parameters"]["route"] == "pinned" and pinned.json()["outputs"][0]["data"] != out["data"]
    missing = c.post(f"/v2/models/{MODEL}/versions/9/infer", json=v2_body(ROWS))
    assert missing.status_code == 404 and "served versions: 1, 2" in missing.json()["error"]


# --- traffic split and stickiness --------------------------------------------------------------------------------
def test_1000_requests_at_80_20_land_within_the_binomial_interval(env: dict) -> None:
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 0.8}}, {{version: 2, weight: 0.2}}]}}")
    results = fire(env, 1000)
    assert {s for s, _ in results} == {200}
    canary = sum(v == "2" for _, v in results)
    lo, hi = binom.ppf(0.0005, 1000, 0.2), binom.ppf(0.9995, 1000, 0.2)  # two-sided 99.9% interval
    assert lo <= canary <= hi, f"{canary} canary answers of 1000, expected {lo:.0f}..{hi:.0f}"


def test_sticky_keys_stay_put_and_a_weight_change_moves_only_what_it_must(env: dict) -> None:
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 0.8}}, {{version: 2, weight: 0.2}}]}}")
    pids_before = replica_pids()
    keys = [{"x-rayml-route-key": f"user-{i}"} for i in range(150)]
    first = fire(env, len(keys), headers=keys)
    again = fire(env, len(keys), headers=keys)
    assert first == again  # same key, same version, every time
    on_canary = {k["x-rayml-route-key"] for k, (_, v) in zip(keys, first, strict=True) if v == "2"}
    assert 10 < len(on_canary) < 55

    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 0.5}}, {{version: 2, weight: 0.5}}]}}")
    after = fire(env, len(keys), headers=keys)
    moved = [(b, a) for (_, b), (_, a) in zip(first, after, strict=True) if b != a]
    assert moved and all((b, a) == ("1", "2") for b, a in moved)  # only baseline -> canary, never back
    assert all(v == "2" for k, (_, v) in zip(keys, after, strict=True) if k["x-rayml-route-key"] in on_canary)
    assert replica_pids() == pids_before  # weights changed by reconfigure(): not one replica restarted


# --- bad input never becomes a 500, and the server keeps serving ---------------------------------------------------
def test_every_bad_input_class_gets_its_4xx_with_a_fix(env: dict) -> None:
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}", "serve.max_batch_rows=50", "serve.max_request_bytes=16384")
    c = httpx.Client(base_url=env["url"], timeout=30)
    good = v2_body(ROWS)
    extra = v2_body(ROWS)
    extra["inputs"].append({"name": "shoe_size", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]})
    mistyped = json.loads(json.dumps(good))
    next(i for i in mistyped["inputs"] if i["name"] == "price")["data"][0] = "cheap"
    with_nan = json.loads(json.dumps(good))
    next(i for i in with_nan["inputs"] if i["name"] == "temperature")["data"][0] = None
    missing = {"inputs": [i for i in good["inputs"] if i["name"] != "month"]}
    cases = [
        (
            "malformed JSON",
            c.post(f"/v2/models/{MODEL}/infer", content=b'{"inputs": [', headers={"content-type": "application/json"}),
            400,
            "not valid JSON",
        ),
        ("not v2", c.post(f"/v2/models/{MODEL}/infer", json={"rows": []}), 400, "'inputs'"),
        ("missing column", c.post(f"/v2/models/{MODEL}/infer", json=missing), 422, "missing column(s) ['month']"),
        ("extra column", c.post(f"/v2/models/{MODEL}/infer", json=extra), 422, "unknown column(s) ['shoe_size']"),
        ("mistyped column", c.post(f"/v2/models/{MODEL}/infer", json=mistyped), 422, "takes numbers; got 'cheap'"),
        ("NaN not allowed", c.post(f"/v2/models/{MODEL}/infer", json=with_nan), 422, "missing values (null/NaN)"),
        (
            "too many rows",
            c.post(f"/v1/models/{MODEL}:predict", json={"instances": ROWS[:1] * 51}),
            413,
            "more than the limit of 50",
        ),
        ("body too large", c.post(f"/v1/models/{MODEL}:predict", content=b"{" + b" " * 20000 + b"}"), 413, "limit of 16384"),
        ("unknown model", c.post("/v2/models/no-such-model/infer", json=good), 404, "served models: sales-model"),
        ("unknown model v1", c.post("/v1/models/../etc/passwd:predict", json=good), 404, ""),
        ("unknown endpoint", c.get("/v3/whatever"), 404, "endpoints:"),
        ("wrong method", c.get(f"/v2/models/{MODEL}/infer"), 405, "not allowed"),
    ]
    for name, r, status, fragment in cases:
        assert r.status_code == status, (name, r.status_code, r.text)
        assert fragment in r.json()["error"], (name, r.text)
    ok = c.post(f"/v2/models/{MODEL}/infer", json=good)
    assert ok.status_code == 200  # still serving


def test_api_keys_401_403_and_open_health(env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYML_SERVE_API_KEYS", "env-key-for-every-model-0001")
    up(
        env,
        f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}",
        "serve.api_keys=[{key: scoped-key-other-model-01, models: [other-model]}]",
    )
    c = httpx.Client(base_url=env["url"], timeout=30)
    path, body = f"/v1/models/{MODEL}:predict", {"instances": ROWS[:1]}
    assert c.post(path, json=body).status_code == 401
    assert c.post(path, json=body, headers={"authorization": "Bearer wrong-key-0000000000"}).status_code == 401
    r = c.post(path, json=body, headers={"authorization": "Bearer scoped-key-other-model-01"})
    assert r.status_code == 403 and "may not call model 'sales-model'" in r.json()["error"]
    assert c.post(path, json=body, headers={"authorization": "Bearer env-key-for-every-model-0001"}).status_code == 200
    assert c.get(f"/v2/models/{MODEL}").status_code == 401  # metadata is protected too
    assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
    monkeypatch.delenv("RAYML_SERVE_API_KEYS")
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}")
    assert c.post(path, json=body).status_code == 200


# --- shadow ------------------------------------------------------------------------------------------------------
def test_a_raising_shadow_never_fails_a_primary_and_its_errors_are_counted(env: dict) -> None:
    up(
        env,
        f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}], shadow: {{version: 3, percent: 100}}}}",
        faults={f"{MODEL}:3": "raise"},
    )
    since = time.time() - 1

    def window_when(done) -> dict:
        deadline = time.monotonic() + 20  # counts reach the stats deployment on each ingress's next flush
        while time.monotonic() < deadline:
            w = stats_window(MODEL, since)
            if done(w):
                return w
            time.sleep(0.3)
        raise AssertionError(f"stats never reached the expected counts: {w}")

    def shadow_errors(w: dict) -> int:
        return w[(3, "shadow")].errors if (3, "shadow") in w else 0

    first = fire(env, 60)
    errors_1 = shadow_errors(window_when(lambda w: shadow_errors(w) > 0))
    second = fire(env, 60)
    w = window_when(lambda w: shadow_errors(w) > errors_1 and (1, "primary") in w and w[(1, "primary")].requests >= 120)
    assert {s for s, _ in first + second} == {200} and {v for _, v in first + second} == {"1"}
    assert 0 < errors_1 < shadow_errors(w)  # rising, and never seen by a caller
    assert w[(1, "primary")].errors == 0 and w[(1, "primary")].requests >= 120


def test_a_slow_shadow_does_not_move_primary_p50(env: dict) -> None:
    up(
        env,
        f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}], shadow: {{version: 3, percent: 100}}}}",
        "serve.shadow_queue_size=200",
        faults={f"{MODEL}:3": "sleep:0.2"},
    )
    started = time.time()
    c = httpx.Client(base_url=env["url"], timeout=30)
    body = {"instances": ROWS[:1]}
    routed, pinned = [], []
    for _ in range(20):  # warm up both paths
        c.post(f"/v1/models/{MODEL}:predict", json=body)
    # Interleave: a routed request (mirrored to the 200 ms shadow) and a pinned one (never mirrored) hit the same v1
    # replicas under the same load, so only the shadow differs between the two medians.
    for i in range(300):
        t0 = time.perf_counter()
        if i % 2:
            r = c.post(f"/v1/models/{MODEL}:predict", json=body)
            routed.append(time.perf_counter() - t0)
        else:
            r = c.post(f"/v2/models/{MODEL}/versions/1/infer", json=v2_body(ROWS[:1]))
            pinned.append(time.perf_counter() - t0)
        assert r.status_code == 200
    p50_routed, p50_pinned = statistics.median(routed), statistics.median(pinned)
    assert p50_routed <= 1.10 * p50_pinned + 0.0005, f"p50 routed {p50_routed * 1e3:.2f} ms vs pinned {p50_pinned * 1e3:.2f} ms"
    assert p50_routed < 0.1  # nowhere near the shadow's 200 ms
    time.sleep(1.0)
    assert stats_window(MODEL, started)[(3, "shadow")].requests > 50  # the shadow really ran (in this test)


# --- zero-downtime changes -----------------------------------------------------------------------------------------
def test_weight_and_version_changes_under_continuous_load_lose_no_request(env: dict) -> None:
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}")
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=env["url"], timeout=60) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"/v1/models/{MODEL}:predict", json={"instances": ROWS[:1]})
                    results.append((r.status_code, r.headers.get("x-rayml-model-version")))
                except httpx.HTTPError as e:
                    results.append((-1, repr(e)))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 0.7}}, {{version: 2, weight: 0.3}}]}}")  # add v2
        time.sleep(1.0)
        up(env, f"{MODEL}: {{versions: [{{version: 2, weight: 1.0}}]}}")  # all to v2, then drain and remove v1
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}"
    versions = [v for _, v in results]
    assert "1" in versions and "2" in versions and versions[-1] == "2" and len(results) > 100
    state = app_state("rayml")
    assert {d.name for d in state.deployments} == {"Ingress", "RaymlStats"}  # a small model runs in the ingress
    assert [v.version for v in state.spec.models[MODEL].versions] == [2]  # v1 was unloaded


# --- metrics -----------------------------------------------------------------------------------------------------
def test_metrics_are_exported_to_prometheus(env: dict) -> None:
    import ray

    up(env, f"{MODEL}: {{versions: [{{version: 2, weight: 1.0}}]}}")
    fire(env, 20)
    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = {
        "ray_rayml_requests_total",
        "ray_rayml_request_latency_seconds_bucket",
        "ray_rayml_traffic_weight",
        "ray_rayml_model_load_seconds_bucket",
    }
    labels = ('model="sales-model"', 'version="2"', 'route="primary"', 'code="200"')

    def this_tests_requests(text: str) -> list[str]:
        return [x for x in text.splitlines() if x.startswith("ray_rayml_requests_total{") and all(la in x for la in labels)]

    deadline, text = time.monotonic() + 40, ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        # wait for this test's own series too: earlier tests in the session already export every metric name
        if all(name in text for name in wanted) and this_tests_requests(text):
            break
        fire(env, 2)
        time.sleep(2)
    missing = sorted(n for n in wanted if n not in text)
    assert not missing, f"not exported: {missing}"
    lines = [x for x in text.splitlines() if x.startswith("ray_rayml_requests_total{")]
    assert this_tests_requests(text), lines[:5]


# --- failures are visible --------------------------------------------------------------------------------------------
def test_a_version_that_cannot_load_is_reported_by_deploy_and_status_and_never_gets_traffic(
    env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rayml.cli import serve as serve_cli
    from rayml.serve import ServeDeployError

    registry: Registry = env["registry"]
    good = registry.load(f"{MODEL}:1")
    broken = tmp_path / "broken"
    shutil.copytree(good.path, broken)
    (broken / "model.onnx").write_bytes(b"this is not an ONNX graph")
    run_id = registry.create_run("serve-tests", "broken")
    version = registry.register(MODEL, broken, run_id, {"rayml.run_id": run_id}).version
    split = f"{MODEL}: {{versions: [{{version: 1, weight: 0.5}}, {{version: {version}, weight: 0.5}}]}}"

    def v1_kept_serving() -> None:  # the broken version never received traffic (stage 1 adds it at weight 0)
        r = httpx.post(f"{env['url']}/v1/models/{MODEL}:predict", json={"instances": ROWS[:1]}, timeout=30)
        assert r.status_code == 200 and r.headers["x-rayml-model-version"] == "1"

    # placed in the ingress (the default for a small model): the ingress keeps serving v1 and names the broken one
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}")
    with pytest.raises(ServeDeployError) as e:
        up(env, split)
    assert f"{MODEL}:{version}" in str(e.value) and "cannot load ONNX model" in str(e.value)
    v1_kept_serving()
    ready = httpx.get(f"{env['url']}/v2/models/{MODEL}/versions/{version}/ready", timeout=30)
    assert ready.status_code == 503 and ready.json()["ready"] is False
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}")  # recovers: the broken version is dropped
    assert app_state("rayml").healthy and [v.version for v in app_state("rayml").spec.models[MODEL].versions] == [1]

    # in a deployment of its own: the replica constructor fails, and deploy and `serve status` say why
    replicas = [f"serve.models.{MODEL}.placement=replicas", f"serve.models.{MODEL}.deployment.max_constructor_retry_count=1"]
    with pytest.raises(ConfigError, match="runs in ingress"):  # a served model is not moved in place
        up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}", *replicas)
    from ray import serve

    serve.delete("rayml")
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}", *replicas)
    with pytest.raises(ServeDeployError) as e:
        up(env, split, *replicas)
    assert f"model-{MODEL}-v{version}" in str(e.value) and "cannot load ONNX model" in str(e.value)
    state = app_state("rayml")
    failed = next(d for d in state.deployments if d.name == f"model-{MODEL}-v{version}")
    assert failed.status == "DEPLOY_FAILED" and "cannot load ONNX model" in failed.message
    # a wide terminal: at 80 columns the message cell is narrower while a replica is "stopping", and wraps mid-phrase
    monkeypatch.setattr(serve_cli.console, "width", 200)
    with serve_cli.console.capture() as captured:
        serve_cli.print_state(state)
    assert "DEPLOY_FAILED" in captured.get() and "cannot load ONNX model" in captured.get()  # what `serve status` shows
    v1_kept_serving()
    up(env, f"{MODEL}: {{versions: [{{version: 1, weight: 1.0}}]}}", *replicas)  # recovers: the failed deployment goes
    assert app_state("rayml").healthy
    serve.delete("rayml")  # the next test's sales-model starts where placement auto puts it (a served one stays put)


# --- many models -----------------------------------------------------------------------------------------------------
def test_a_model_set_is_served_multiplexed_by_segment(env: dict) -> None:
    import pandas as pd

    from rayml.registry import ModelSet

    up(
        env,
        f"{MODEL}: {{versions: [{{version: 1}}]}}, store-models: {{versions: [{{version: 1}}], "
        "deployment: {num_cpus: 0.1, max_models_per_replica: 2}}",
    )
    local = ModelSet.from_loaded(env["registry"].load("store-models:1"))
    rows = instances(3, drop=("sales", "high_sales", "date"))  # stores 000, 001, 002, with their store_id column
    expected, _ = local.predict(pd.DataFrame(rows))
    c = httpx.Client(base_url=env["url"], timeout=30)
    features = [{k: v for k, v in r.items() if k != "store_id"} for r in rows]
    for i, key in enumerate(["store_000", "store_001", "store_002", "store_000"]):  # 3 segments through an LRU of 2
        j = i % 3
        r = c.post("/v2/models/store-models/infer", json=v2_body([features[j]], parameters={"segment": key}))
        assert r.status_code == 200, r.text
        assert r.json()["parameters"]["served_by"] == key and r.json()["parameters"]["segment"] == key
        assert r.json()["outputs"][0]["data"][0] == pytest.approx(float(expected[j]), rel=1e-5)
    v1 = c.post("/v1/models/store-models:predict", json={"instances": [features[1]], "segment": "store_001"})
    assert v1.status_code == 200 and v1.json()["predictions"][0] == pytest.approx(float(expected[1]), rel=1e-5)
    from_rows = c.post("/v1/models/store-models:predict", json={"instances": [rows[2]]})  # segment from store_id
    assert from_rows.status_code == 200 and from_rows.json()["predictions"][0] == pytest.approx(float(expected[2]), rel=1e-5)
    unknown = c.post("/v2/models/store-models/infer", json=v2_body([features[0]], parameters={"segment": "store_999"}))
    assert unknown.status_code == 200 and unknown.json()["parameters"]["served_by"] == "__fallback__"
    missing = c.post("/v1/models/store-models:predict", json={"instances": [features[0]]})
    assert missing.status_code == 422 and "model set" in missing.json()["error"]
    mixed = c.post("/v1/models/store-models:predict", json={"instances": rows[:2]})
    assert mixed.status_code == 422 and "2 segments" in mixed.json()["error"]
    meta = c.get("/v2/models/store-models").json()
    assert "store_id" not in {i["name"] for i in meta["inputs"]} and "segment" in meta["parameters"]


# --- multiclass ------------------------------------------------------------------------------------------------------
def test_a_multiclass_canary_with_a_shadow_answers_labels_probabilities_and_label_disagreement(env: dict) -> None:
    import pandas as pd

    from rayml.serve import drift_status

    state = up(
        env,
        f"{MULTICLASS}: {{versions: [{{version: 1, weight: 0.8}}, {{version: 2, weight: 0.2}}], "
        "shadow: {version: 2, percent: 100}, deployment: {num_cpus: 0.1}}",
    )
    assert state.healthy, state
    since = time.time() - 1
    rows = instances(40)
    local = {v: env["registry"].load(f"{MULTICLASS}:{v}").model_dir.predict_outputs(pd.DataFrame(rows))[0] for v in (1, 2)}
    classes = ["low", "medium", "high"]
    c = httpx.Client(base_url=env["url"], timeout=30)
    meta = c.get(f"/v2/models/{MULTICLASS}").json()
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert meta["parameters"] == {"task": "multiclass", "class_labels": classes}

    v2 = c.post(f"/v2/models/{MULTICLASS}/versions/1/infer", json=v2_body(rows))
    label, probs = v2.json()["outputs"]
    assert v2.status_code == 200 and label["shape"] == [40] and probs["shape"] == [40, 3] and probs["datatype"] == "FP32"
    assert label["data"] == list(local[1]["label"])
    assert probs["data"] == pytest.approx(local[1]["probabilities"].reshape(-1).tolist(), abs=1e-6)

    for _ in range(12):  # routed: 80/20 between the versions; v1's answers are mirrored to v2
        v1 = c.post(f"/v1/models/{MULTICLASS}:predict", json={"instances": rows, "probabilities": True})
        version = int(v1.headers["x-rayml-model-version"])
        assert v1.status_code == 200 and v1.json()["predictions"] == list(local[version]["label"])
        assert v1.json()["class_labels"] == classes and len(v1.json()["probabilities"]) == 40
        assert v1.json()["probabilities"][0] == pytest.approx(local[version]["probabilities"][0].tolist(), abs=1e-6)

    changed = float(np.mean(local[1]["label"] != local[2]["label"]))  # the share of rows whose label differs
    assert changed > 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        w = stats_window(MULTICLASS, since)
        if (2, "shadow") in w and w[(2, "shadow")].compared_rows >= 40:
            break
        time.sleep(0.3)
    shadow = w[(2, "shadow")]
    assert shadow.compared_rows % 40 == 0 and shadow.disagreement("multiclass") == pytest.approx(changed)
    # without the flag, v1 answers labels only (sent after the shadow check: its mirror would add 2 rows to the count)
    plain = c.post(f"/v1/models/{MULTICLASS}:predict", json={"instances": rows[:2]})
    assert set(plain.json()) == {"predictions"} and set(plain.json()["predictions"]) <= set(classes)
    # online drift counts the predicted classes
    drift: dict = {}
    while time.monotonic() < deadline + 10 and not drift.get("prediction"):
        drift = drift_status(ServeJobConfig(), MULTICLASS).get(MULTICLASS, {}).get(1, {})
        time.sleep(0.5)
    assert drift["prediction"]["kind"] == "categorical" and drift["rows"] >= 40
