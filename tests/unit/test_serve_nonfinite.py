"""A model that answers NaN or infinity never reaches a caller (rayml.serve._model: "the model produced non-finite
predictions"), without Ray Serve: the run fails alone and is counted in rayml_model_errors_total, and the ingress
answers 422 when the caller's extreme values overflowed the model, else a 500 that names the model and version (and
is counted as one in rayml_requests_total)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.requests import Request

from rayml.serve._ingress import EXTREME_INPUT, Ingress
from rayml.serve._inline import InlineVersion, InlineVersions
from rayml.serve._metrics import IngressMetrics
from rayml.serve._spec import AppSpec, ModelSpec, VersionSpec
from rayml.serve._stats import StatsRecorder
from rayml.testing import instances, v2_body, write_tiny_model

MODEL = "wild"
WILD = 1e38  # the last layer times this: float32 overflows to infinity on ordinary rows


class Counted:
    """Stands in for a Ray counter: what was added, by tags (Ray's own needs a metrics agent to be read back)."""

    def __init__(self) -> None:
        self.added: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.added.append((value, dict(tags or {})))


@pytest.fixture
def model_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counted]:
    from rayml.serve._metrics import model_metrics

    counted = Counted()
    monkeypatch.setattr(model_metrics(), "model_errors", counted)  # the process's shared ModelMetrics
    yield counted


def _feed(v: InlineVersion, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {
        t.name: np.asarray([r[t.name] for r in rows], dtype=object if t.datatype == "BYTES" else np.float32)
        for t in v.predictor.inputs
    }


def _extreme(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with every number near float32's largest: over EXTREME_INPUT, yet a valid FP32 value."""
    return [{k: (3e38 if isinstance(x, (int, float)) else x) for k, x in r.items()} for r in rows]


def test_a_non_finite_answer_fails_the_run_and_is_counted(tmp_path: Path, model_errors: Counted) -> None:
    path = write_tiny_model(str(tmp_path / "m"), seed=0, output_scale=WILD, name=MODEL).path
    v = InlineVersion(MODEL, 4, "sqlite:///unused.db", str(path), 1, 300.0, 1.0)
    raw = v.predictor.session.run(None, v.predictor.feed(_feed(v, instances(3))))[0]
    assert not np.isfinite(raw).all()  # the model itself does answer inf/NaN: the check is what stops it
    got = asyncio.run(v.predict(_feed(v, instances(3))))
    assert got == {"ok": False, "user_error": False, "error": "FloatingPointError: the model produced non-finite predictions"}
    assert model_errors.added == [(1.0, {"model": MODEL, "version": "4"})]


def _request(body: dict[str, Any]) -> Request:
    data = json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    scope = {"type": "http", "method": "POST", "path": f"/v2/models/{MODEL}/infer", "headers": headers, "query_string": b""}
    return Request(scope, receive)


def _ingress(model_dir: str) -> Any:
    """An Ingress object with the version placed in it, configured as Serve would, but outside a replica."""
    # the class as written, under Serve's ASGI wrapper (whose async __del__ would warn when collected); its __init__
    # asks for the Serve replica context, so what it sets is set here instead
    cls = next(b for b in Ingress.func_or_class.__bases__ if b.__module__ == Ingress.func_or_class.__module__)
    ingress = cls.__new__(cls)
    ingress._inline = InlineVersions()
    ingress._state = None
    ingress._signatures = {}
    ingress._recorder = StatsRecorder()
    ingress._metrics = IngressMetrics()
    ingress._shadow = None
    ingress._capture = None
    ingress._tasks = [None]  # no background loops: they talk to the stats deployment, which is not here
    ingress._app_name = "app"
    ingress._last_shadow_log = 0.0
    version = VersionSpec(version=1, weight=1.0, deployment=f"model-{MODEL}-v1", local_path=model_dir)
    spec = AppSpec(
        app_name="app",
        tracking_uri="sqlite:///unused.db",
        models={MODEL: ModelSpec(name=MODEL, versions=[version], placement="ingress")},
        max_batch_rows=100,
        max_request_bytes=1 << 20,
        allow_missing_values=False,
        request_timeout_s=30,
        shadow_queue_size=1,
        shadow_timeout_s=1,
        stats_flush_interval_s=1,
        health_check_interval_s=1,
    )
    asyncio.run(ingress.reconfigure(spec.model_dump()))
    assert ingress.inline_errors() == {}
    return ingress


@pytest.mark.parametrize(
    ("output_scale", "extreme", "status", "words"),
    [
        # the model overflows on ordinary rows: the version's fault, a 500 that names it (detail in the log)
        (WILD, False, 500, f"model {MODEL} version 1 failed on this request"),
        # a sound model overflows on the caller's huge values: the caller's mistake, a 422 that says so
        (1.0, True, 422, f"model {MODEL} version 1 cannot compute a finite prediction for these inputs"),
    ],
)
def test_the_ingress_answers_a_non_finite_prediction_by_whose_fault_it_is(
    tmp_path: Path, model_errors: Counted, output_scale: float, extreme: bool, status: int, words: str
) -> None:
    path = write_tiny_model(str(tmp_path / "m"), seed=0, output_scale=output_scale, name=MODEL).path
    ingress = _ingress(str(path))
    rows = _extreme(instances(2)) if extreme else instances(2)
    assert (max(abs(x) for r in rows for x in r.values() if isinstance(x, float)) > EXTREME_INPUT) is extreme
    response = asyncio.run(ingress._infer(_request(v2_body(rows)), MODEL, None, "v2"))
    body = json.loads(bytes(response.body))
    assert response.status_code == status and words in body["error"], body
    assert "FloatingPointError" not in body["error"]  # the model's own error text stays in the log
    assert ("request_id" in body) is (status == 500)
    assert response.headers["x-rayml-model-version"] == "1"
    assert ingress._metrics._counts == {(MODEL, "1", "primary", str(status)): 1}  # rayml_requests_total{code}
    assert model_errors.added == [(1.0, {"model": MODEL, "version": "1"})]  # rayml_model_errors_total
