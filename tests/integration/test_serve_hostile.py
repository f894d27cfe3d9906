"""Hostile and unlucky callers against real Ray Serve: no 5xx for a client's mistake, bounded cost, nothing leaked.

One application serves the whole module (deployed once; no test changes it): ``sales-model`` (v1, answers), and
``broken-model`` whose v1 raises on every prediction (the test-only fault hook), both behind two API keys, one of
them scoped to ``sales-model``. Generated requests come from the OpenAPI document rayml builds for the application
(:func:`rayml.serve._openapi.openapi_document`) through schemathesis, with a fixed budget; every class of mistake
found by hand has its own regression test next to them. The readiness texts of versions that fail in ways a live
test cannot stage on demand (a probe's exception) are checked on an ingress object with a hand-made routing state.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from rayml.config import ServeJobConfig, load_config
from rayml.registry import Registry
from rayml.serve import deploy
from rayml.serve._apply import app_state
from rayml.serve._protocol import Tensor
from rayml.testing import LIGHT_SERVE, instances, register_tiny_model, serve_faults, v2_body

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL, BROKEN = "sales-model", "broken-model"
ALL_KEY, SCOPED_KEY = "hostile-tests-key-for-all-models", "hostile-tests-key-sales-only-01"
AUTH = {"authorization": f"Bearer {ALL_KEY}"}
ROWS = instances(2)
GENERATED_BUDGET_S = 60.0  # the schemathesis run, all operations and both generation modes together


@pytest.fixture(scope="module")
def app(serve_http: dict, tmp_path_factory: pytest.TempPathFactory, _registry_template: Path) -> dict[str, Any]:
    db = tmp_path_factory.mktemp("hostile-registry") / "mlflow.db"
    shutil.copy(_registry_template, db)
    registry = Registry(f"sqlite:///{db}")
    register_tiny_model(registry, MODEL, seed=0)
    register_tiny_model(registry, BROKEN, seed=1)
    captures = tmp_path_factory.mktemp("hostile-captures")  # capture on: generated labels reach a real label store
    cfg = load_config(
        ServeJobConfig,
        None,
        [
            f"serve.port={serve_http['port']}",
            f"serve.models={{{MODEL}: {{versions: [{{version: 1, weight: 1.0}}], capture: {{destination: {captures}}}}}, "
            f"{BROKEN}: {{versions: [{{version: 1, weight: 1.0}}]}}}}",
            *LIGHT_SERVE,
            "serve.request_read_timeout_s=2",
            f"serve.api_keys=[{{key: {ALL_KEY}}}, {{key: {SCOPED_KEY}, models: [{MODEL}]}}]",
        ],
    )
    with serve_faults({f"{BROKEN}:1": "raise"}):
        state = deploy(cfg, registry=registry)
    assert state.healthy, state
    url = serve_http["url"]
    meta = httpx.get(f"{url}/v2/models/{MODEL}", headers=AUTH, timeout=30).json()
    spec = app_state(cfg.serve.app_name).spec
    return {"url": url, "port": serve_http["port"], "spec": spec, "inputs": [Tensor.from_dict(t) for t in meta["inputs"]]}


def still_serving(url: str) -> None:
    r = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": ROWS}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text


def _json_error(r: httpx.Response) -> str:
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:200])
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


# --- generated input ---------------------------------------------------------------------------------------------
def test_generated_requests_get_a_json_2xx_or_4xx_never_a_5xx(app: dict) -> None:
    """schemathesis generates valid (positive) and schema-breaking (negative) requests for every operation of the
    document rayml builds for this application; whatever it sends, the answer is JSON and not a 5xx."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode

    from rayml.serve._openapi import openapi_document

    working = app["spec"].model_copy(update={"models": {MODEL: app["spec"].models[MODEL]}})  # not the broken one
    schema = schemathesis.openapi.from_dict(openapi_document(working, {MODEL: app["inputs"]}))
    session = requests.Session()
    statuses: dict[int, int] = {}
    failures: list[str] = []
    t0 = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        takes_input = len(operation.body) > 0 or len(operation.path_parameters) > 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):
            examples = 40 if takes_input else 3

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests every run: a failure here is reproducible, not luck
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                r = case.call(base_url=app["url"], session=session, headers=AUTH, timeout=30)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                content_type = r.headers.get("content-type") or [""]  # schemathesis keeps every value of a header
                ok = r.status_code < 500 and content_type[0].startswith("application/json")
                if ok:
                    try:
                        body = json.loads(r.content)
                        ok = r.status_code < 400 or isinstance(body.get("error"), str)
                    except ValueError:
                        ok = False
                if not ok and len(failures) < 5:
                    failures.append(
                        f"{case.method} {r.request.url} {str(case.body)[:200]} -> {r.status_code} {r.content[:200]!r}"
                    )

            call()
    elapsed = time.monotonic() - t0
    assert not failures, failures
    assert elapsed < GENERATED_BUDGET_S, f"the generated run took {elapsed:.1f}s (budget {GENERATED_BUDGET_S:g}s)"
    assert statuses.get(200, 0) > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0, statuses
    still_serving(app["url"])


# --- every class of client mistake, by hand ----------------------------------------------------------------------
def _v1(value: Any, column: str = "price") -> bytes:
    row = dict(ROWS[0])
    row[column] = "__VALUE__"
    return json.dumps({"instances": [row]}).replace('"__VALUE__"', value).encode()


def _v2_ragged() -> dict:
    body = v2_body(ROWS)
    next(i for i in body["inputs"] if i["name"] == "price")["data"] = [1.0, [2.0, 3.0]]
    return body


_V1 = f"/v1/models/{MODEL}:predict"
_V2 = f"/v2/models/{MODEL}/infer"
MISTAKES = [
    ("deep nesting", _V2, b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested"),
    ("nesting just over the bound", _V2, b'{"parameters": {"a": ' + b"[" * 40 + b"]" * 40 + b"}}", 400, "nested"),
    ("integer over Python's digit limit", _V1, _v1("9" * 5000), 400, "too long"),
    ("integer too large for a float", _V1, _v1("9" * 400), 422, "too large"),
    ("float literal too large", _V1, _v1("1e400"), 422, "infinite"),
    ("float32 overflow", _V1, _v1("1e39"), 422, "too large for FP32"),
    (
        "float32 values that overflow the model",  # each value fits FP32; the model's arithmetic on them does not
        _V1,
        json.dumps({"instances": [{k: -3.4e38 if isinstance(v, (int, float)) else v for k, v in ROWS[0].items()}]}).encode(),
        422,
        "cannot compute a finite prediction",
    ),
    ("ragged v2 data", _V2, json.dumps(_v2_ragged()).encode(), 400, "ragged"),
    (
        "v2 data nested deeper than its shape",
        _V2,
        json.dumps(
            v2_body(ROWS) | {"inputs": [{"name": "price", "shape": [2, 1], "datatype": "FP32", "data": [[[1.0]], [[2.0]]]}]}
        ).encode(),
        400,
        "deeper",
    ),
    ("v1 instances of different columns", _V1, json.dumps({"instances": [ROWS[0], {"price": 1.0}]}).encode(), 422, "missing"),
    ("v1 instances as ragged lists", _V1, b'{"instances": [[1, 2], [3]]}', 400, "not objects"),
    ("v1 list value", _V1, _v1("[1, [2, 3]]"), 422, "takes numbers"),
    ("many distinct keys", _V1, json.dumps({"instances": [{f"k{i}": 1 for i in range(50_000)}]}).encode(), 422, "distinct"),
    (
        "v2 more inputs than the model has",
        _V2,
        json.dumps({"inputs": [{"name": f"c{i}", "shape": [1], "datatype": "FP32", "data": [1]} for i in range(500)]}).encode(),
        422,
        "distinct",
    ),
    ("body over max_request_bytes", _V1, b'{"instances": [' + b" " * 1_100_000 + b"]}", 413, "limit"),
    ("not JSON", _V1, b"\xff\xfe{", 400, "not valid JSON"),
]
VERSIONS = ["²", "١٢", "1" * 5000, "-1", "01x", "%20"]


@pytest.mark.parametrize("name, path, body, status, fragment", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_client_mistake_is_a_json_4xx_that_says_what_to_fix(
    app: dict, name: str, path: str, body: bytes, status: int, fragment: str
) -> None:
    t0 = time.perf_counter()
    r = httpx.post(app["url"] + path, content=body, headers={**AUTH, "content-type": "application/json"}, timeout=30)
    elapsed = time.perf_counter() - t0
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert fragment in _json_error(r), (name, r.text[:300])
    assert len(r.content) < 2048, f"{name}: the error body is {len(r.content)} bytes"  # bounded whatever was sent
    assert elapsed < 2.0, f"{name}: answered in {elapsed:.2f}s"
    still_serving(app["url"])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_version_that_is_not_ascii_digits_is_a_404(app: dict, version: str) -> None:
    """'²' and '١٢' pass str.isdigit(); int() refuses the first and reads the second as 12."""
    for r in (
        httpx.post(f"{app['url']}/v2/models/{MODEL}/versions/{version}/infer", json=v2_body(ROWS), headers=AUTH, timeout=30),
        httpx.get(f"{app['url']}/v2/models/{MODEL}/versions/{version}", headers=AUTH, timeout=30),
    ):
        assert r.status_code == 404, (version[:10], r.status_code, r.text[:200])
        assert "served versions: 1" in _json_error(r)


def test_client_mistakes_are_counted_in_the_request_metrics(app: dict) -> None:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = ('model="sales-model"', 'code="400"', 'version="none"')

    def counted() -> float:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [x for x in text.splitlines() if x.startswith("ray_rayml_requests_total{") and all(w in x for w in wanted)]
        return sum(float(x.rsplit(" ", 1)[1]) for x in lines)

    before = counted()
    deep = b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    for _ in range(3):
        assert httpx.post(app["url"] + _V2, content=deep, headers=AUTH, timeout=30).status_code == 400
    deadline = time.monotonic() + 30
    while counted() < before + 3 and time.monotonic() < deadline:
        time.sleep(1)
    assert counted() >= before + 3


# --- cost ----------------------------------------------------------------------------------------------------------
def test_a_slow_upload_gets_a_408_and_frees_the_ingress(app: dict) -> None:
    """The body read has a deadline (serve.request_read_timeout_s=2 here): a caller that sends the headers and a
    trickle of the body gets a 408 instead of holding a request slot of the ingress."""
    head = (
        f"POST {_V1} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ALL_KEY}\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", app["port"]), timeout=30) as s:
        s.sendall(head + b'{"instances": [')
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    elapsed = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 1.5 < elapsed < 15, elapsed
    still_serving(app["url"])


# --- leaks ---------------------------------------------------------------------------------------------------------
def test_a_404_lists_only_the_models_the_key_may_call(app: dict) -> None:
    url = f"{app['url']}/v2/models/no-such-model/infer"
    scoped = httpx.post(url, json=v2_body(ROWS), headers={"authorization": f"Bearer {SCOPED_KEY}"}, timeout=30)
    assert scoped.status_code == 404 and MODEL in _json_error(scoped) and BROKEN not in scoped.text, scoped.text
    full = httpx.post(url, json=v2_body(ROWS), headers=AUTH, timeout=30)
    assert full.status_code == 404 and MODEL in _json_error(full) and BROKEN in full.text, full.text
    nobody = httpx.post(url, json=v2_body(ROWS), timeout=30)
    assert nobody.status_code == 401 and MODEL not in nobody.text and BROKEN not in nobody.text, nobody.text


def test_a_failing_model_is_a_500_with_a_request_id_and_no_detail(app: dict) -> None:
    r = httpx.post(f"{app['url']}/v1/models/{BROKEN}:predict", json={"instances": ROWS}, headers=AUTH, timeout=30)
    assert r.status_code == 500, r.text
    message, request_id = _json_error(r), r.json()["request_id"]
    assert f"model {BROKEN} version 1 failed" in message and request_id in message, message
    assert "injected" not in r.text and "RuntimeError" not in r.text, r.text  # the model's own error text is logged only
    assert r.headers["x-rayml-model-version"] == "1"
    still_serving(app["url"])


def test_the_open_readiness_endpoint_says_nothing_a_caller_without_a_key_may_not_know(app: dict) -> None:
    r = httpx.get(f"{app['url']}/v2/health/ready", timeout=30)
    assert r.status_code == 200 and r.json() == {"ready": True}, r.text


def test_readiness_never_shows_an_exception_text() -> None:
    """A version whose probe failed with an exception: the open endpoint shows how many versions are not ready while
    API keys are on, which ones without keys, and in either case never the exception's text."""
    from rayml.serve._ingress import Ingress, _Model, _State
    from tests.unit.serve_specs import app_spec

    spec = app_spec(m={1: 1.0})
    secret = "ActorDiedError: the actor died at /home/ops/secret-path/model.onnx"
    m = spec.models["m"]
    state = _State(spec=spec, models={"m": _Model(m, m.route(), {})}, ready={m.deployment_of(1): secret})
    ingress = SimpleNamespace(_state=state)  # ready() reads only the routing state: no replica needed
    ready = Ingress.func_or_class.ready
    body = json.loads(asyncio.run(ready(ingress)).body)
    assert body == {"ready": False, "not_ready": {"m:1": "not ready (see `rayml serve status` or the ingress log for why)"}}
    state.spec = spec.model_copy(update={"auth": [object()]})  # API keys on
    assert json.loads(asyncio.run(ready(ingress)).body) == {"ready": False, "not_ready_versions": 1}


def test_labels_take_the_keys_of_inference_and_a_model_without_capture_says_how_to_turn_it_on(app: dict) -> None:
    url, body = app["url"], [{"inference_id": "x1", "label": 1.0}]
    assert httpx.post(f"{url}/v2/models/{MODEL}/labels", json=body, timeout=30).status_code == 401
    scoped = {"authorization": f"Bearer {SCOPED_KEY}"}
    assert httpx.post(f"{url}/v2/models/{BROKEN}/labels", json=body, headers=scoped, timeout=30).status_code == 403
    ok = httpx.post(f"{url}/v2/models/{MODEL}/labels", json=body, headers=scoped, timeout=30)
    assert ok.status_code == 200 and ok.json()["accepted"] == 1 and ok.json()["unknown"] == 1, ok.text
    off = httpx.post(f"{url}/v2/models/{BROKEN}/labels", json=body, headers=AUTH, timeout=30)
    assert off.status_code == 409 and f"serve.models.{BROKEN}.capture" in _json_error(off)
