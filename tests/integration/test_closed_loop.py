"""The closed loop on real Serve: every answer has an inference id, captured answers reach Parquet (excluded columns
never do), labels posted over HTTP are validated, stored and joined live, and a rollout whose candidate is fast and
healthy but wrong is rolled back on live quality while a good one is promoted. The application follows the registry's
aliases throughout (serve.follow_aliases, as a user who wants alias-driven deployment runs it): a moved `production`
is served with no `serve up`, and the follower leaves a model under rollout to its rollout."""

from __future__ import annotations

import itertools
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml.config import ServeJobConfig, load_config
from rayml.feedback import list_files, read_labels
from rayml.registry import Registry
from rayml.serve import deploy, start_rollout
from rayml.serve._rollout_runtime import load_state, stop_controllers
from rayml.testing import LIGHT_SERVE, Traffic, instances, register_tiny_model

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = "loop-model"
ROWS = instances(16, seed=3)


@pytest.fixture(scope="module")
def loop(serve_http: dict, tmp_path_factory: pytest.TempPathFactory, _registry_template: Path) -> Any:
    db = tmp_path_factory.mktemp("loop-registry") / "mlflow.db"
    shutil.copy(_registry_template, db)
    registry = Registry(f"sqlite:///{db}")
    register_tiny_model(registry, MODEL, seed=0)  # v1: the baseline
    register_tiny_model(registry, MODEL, seed=0)  # v2: a good candidate (the same answers)
    register_tiny_model(registry, MODEL, seed=0, output_scale=1.5)  # v3: fast, healthy and wrong
    registry.set_alias(MODEL, 1, "production")
    captures = tmp_path_factory.mktemp("captures")
    overrides = [
        "serve.follow_aliases=true",
        "serve.alias_poll_interval_s=0.5",
        f"rollout.state_dir={tmp_path_factory.mktemp('rollouts')}",  # the follower reads the same rollout states
        f"serve.port={serve_http['port']}",
        *LIGHT_SERVE,
        f"serve.models.{MODEL}.deployment.num_cpus=0.1",
        "rollout.steps=[50,100]",
        "rollout.interval_s=2",
        "rollout.min_requests=10",
        "rollout.poll_interval_s=0.25",
        "rollout.failure_budget=0",
        "rollout.max_p95_latency_ratio=null",  # latency on a shared 2-core machine is too noisy for 2 s windows
        "rollout.max_disagreement=null",  # only the labels may tell the wrong candidate apart
        "rollout.max_quality_regression=0.1",
        "rollout.min_labels=20",
    ]
    capture = f"{{destination: {captures}, exclude_columns: [promo], flush_interval_s: 0.5}}"
    served = f"serve.models={{{MODEL}: {{versions: [{{version: production}}], capture: {capture}}}}}"
    cfg = load_config(ServeJobConfig, None, [*overrides, served])
    deploy(cfg, registry=registry)
    url = serve_http["url"]
    # the truth: v1's answers with 5% noise, so the baseline is good but not perfect
    pinned = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": ROWS}, timeout=30).json()["predictions"]
    noise = np.random.default_rng(0).normal(0.0, 0.05, len(ROWS))
    truth = [float(p) * (1.0 + e) for p, e in zip(pinned, noise, strict=True)]
    yield {"cfg": cfg, "registry": registry, "url": url, "captures": str(captures), "truth": truth}
    stop_controllers(cfg.serve.app_name)


def _labels(url: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{MODEL}/labels", json=body, timeout=30)


def test_inference_ids_capture_and_labels_over_http(loop: dict) -> None:
    url, truth = loop["url"], loop["truth"]
    # ids: generated (v1 and v2), the caller's kept, a bad one refused with a JSON 400
    r1 = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": ROWS[:2]}, timeout=30)
    v2 = {
        "inputs": [
            {"name": k, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP32", "data": [v]}
            for k, v in ROWS[0].items()
        ]
    }
    r2 = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=v2, timeout=30)
    mine = f"order-{uuid.uuid4().hex[:8]}"
    r3 = httpx.post(
        f"{url}/v1/models/{MODEL}:predict", json={"instances": ROWS[:1]}, headers={"x-rayml-inference-id": mine}, timeout=30
    )
    bad = httpx.post(
        f"{url}/v1/models/{MODEL}:predict", json={"instances": ROWS[:1]}, headers={"x-rayml-inference-id": "a b"}, timeout=30
    )
    assert r1.status_code == r2.status_code == r3.status_code == 200, (r1.text, r2.text, r3.text)
    ids = [r1.headers["x-rayml-inference-id"], r2.headers["x-rayml-inference-id"]]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids) and r3.headers["x-rayml-inference-id"] == mine
    assert bad.status_code == 400 and "x-rayml-inference-id" in bad.json()["error"]

    # labels: one bad entry refuses the body and stores nothing; a good body is stored and joined; a repeat is a no-op
    before = read_labels(loop["captures"], MODEL).num_rows
    refused = _labels(url, [{"inference_id": ids[0], "label": 1.0}, {"inference_id": ids[0], "row": 1, "label": "tall"}])
    assert refused.status_code == 422 and "entry 1" in refused.json()["error"] and "none was stored" in refused.json()["error"]
    assert read_labels(loop["captures"], MODEL).num_rows == before
    good = [{"inference_id": ids[0], "row": 0, "label": truth[0]}, {"inference_id": ids[0], "row": 1, "label": truth[1]}]
    good.append({"inference_id": mine, "label": truth[0]})
    good.append({"inference_id": "never-predicted", "label": 3.0})
    first = _labels(url, good)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 4 and first.json()["joined"] == 3 and first.json()["unknown"] == 1, first.json()
    again = _labels(url, good).json()
    assert again["joined"] == 0 and again["duplicate"] == 3, again
    assert read_labels(loop["captures"], MODEL).num_rows == before + 4  # stored twice, read once: the first label wins
    assert _labels(url, {"not": "a list"}).status_code == 422

    # live quality: exactly the joined rows, with v1's error against the truth
    from ray import serve

    live = serve.get_deployment_handle("RaymlStats", loop["cfg"].serve.app_name).live_quality.remote(MODEL).result()
    here = live[int(r1.headers["x-rayml-model-version"])]
    assert here["labelled"] >= 3 and 0.0 <= here["mae"] < float("inf"), live  # the sums: tests/unit

    # capture: the answered rows are in Parquet with their ids, the excluded column never is
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        files = list_files(loop["captures"], "captures", MODEL)
        table = pq.ParquetDataset([f for f in files], partitioning=None).read() if files else None
        if table is not None and {ids[0], ids[1], mine} <= set(table["inference_id"].to_pylist()):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"captures did not appear: {files}")
    rows = [r for r in table.to_pylist() if r["inference_id"] == ids[0]]
    served = int(r1.headers["x-rayml-model-version"])
    assert sorted(r["row"] for r in rows) == [0, 1] and all(r["version"] == served and r["route"] == "primary" for r in rows)
    assert rows[0]["prediction"] == pytest.approx(r1.json()["predictions"][rows[0]["row"]], rel=1e-5)
    assert all('"promo"' not in (r["inputs"] or "") and '"price"' in r["inputs"] for r in table.to_pylist())


class LabelledLoad(Traffic):
    """Callers that send one row with their own inference id and post its true value right after the answer."""

    def __init__(self, url: str, truth: list[float]) -> None:
        super().__init__(url, threads=2, pause_s=0.005)
        self.truth, self.counter = truth, itertools.count()

    def send(self, c: httpx.Client) -> list[tuple]:
        i = next(self.counter)
        row = i % len(ROWS)
        iid = f"t{uuid.uuid4().hex[:12]}"
        try:
            r = c.post(f"/v1/models/{MODEL}:predict", json={"instances": [ROWS[row]]}, headers={"x-rayml-inference-id": iid})
            if r.status_code == 200:
                c.post(f"/v2/models/{MODEL}/labels", json=[{"inference_id": iid, "label": self.truth[row]}])
            return [(time.time(), r.status_code, r.headers.get("x-rayml-model-version"))]
        except httpx.HTTPError as e:
            return [(time.time(), -1, repr(e))]


def _rollout(loop: dict, candidate: int, timeout_s: float = 120) -> tuple[Any, list[dict]]:
    start_rollout(loop["cfg"], MODEL, candidate, loop["registry"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, store = load_state(loop["cfg"], MODEL)
        if state is not None and state.done:
            return state, store.history()
        time.sleep(0.25)
    raise AssertionError(f"rollout did not finish: {load_state(loop['cfg'], MODEL)[0]}")


def _production(loop: dict) -> int:
    return int(loop["registry"].resolve(f"{MODEL}@production").version)


def test_a_healthy_but_wrong_candidate_is_rolled_back_on_live_quality_and_a_good_one_promoted(loop: dict) -> None:
    good = 2 if _production(loop) == 1 else 1  # v1 and v2 answer alike: the other one is a good candidate
    load = LabelledLoad(loop["url"], loop["truth"])
    load.start()
    try:
        wrong, history = _rollout(loop, 3)
        assert wrong.phase == "rolled_back", wrong
        assert "live quality" in wrong.reason and "MAE" in wrong.reason, wrong.reason
        failed = [r for r in history if r["event"] == "check_failed"][-1]
        quality = failed["snapshot"]["live_quality_since_start"]
        assert quality["candidate"]["mae"] > quality["baseline"]["mae"] and quality["candidate"]["labelled"] >= 20
        assert not any("error rate" in reason for reason in failed["reasons"])  # it was healthy: only quality failed
        promoted, _ = _rollout(loop, good)
        assert promoted.phase == "promoted", promoted
        assert promoted.last_check["live_quality_since_start"]["candidate"]["labelled"] >= 20
        assert _production(loop) == good  # the rollout moved the alias; the follower left its traffic alone
    finally:
        load.stop()
    statuses = [s for _, s, _ in load.results]
    assert statuses.count(200) == len(statuses), set(statuses)  # no caller saw a failure through all of it


def test_a_served_alias_that_moves_is_followed_without_serve_up(loop: dict) -> None:
    """`version: production` follows the alias (blue/green); moving `canary` to a version without a passed gate is
    refused in the audit log."""
    from rayml.serve._rollout_runtime import state_dir

    registry: Registry = loop["registry"]
    now = _production(loop)
    moved = 2 if now == 1 else 1
    url = f"{loop['url']}/v1/models/{MODEL}:predict"
    assert httpx.post(url, json={"instances": ROWS[:1]}, timeout=30).headers["x-rayml-model-version"] == str(now)
    registry.set_alias(MODEL, moved, "production")  # `rayml models alias loop-model N production`, nothing else
    deadline = time.monotonic() + 90
    seen = str(now)
    while time.monotonic() < deadline and seen != str(moved):
        r = httpx.post(url, json={"instances": ROWS[:1]}, timeout=30)
        assert r.status_code == 200, r.text  # blue/green: no caller sees the switch
        seen = r.headers["x-rayml-model-version"]
        time.sleep(0.2)
    assert seen == str(moved), "the served alias was not followed"
    try:
        registry.set_alias(MODEL, 3, "canary")  # v3 has no gate verdict: refused, and said why
        audit = state_dir(loop["cfg"]) / loop["cfg"].serve.app_name / f"{MODEL}.audit.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "alias_rollout_refused" not in (audit.read_text() if audit.exists() else ""):
            time.sleep(0.2)
        assert "alias_rollout_refused" in audit.read_text() and "alias_followed" in audit.read_text()
        assert httpx.post(url, json={"instances": ROWS[:1]}, timeout=30).headers["x-rayml-model-version"] == str(moved)
    finally:
        registry.delete_alias(MODEL, "canary")
