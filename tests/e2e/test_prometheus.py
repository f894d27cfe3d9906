"""A real Prometheus scrapes the Ray that `rayml serve up` started, while clean and drifted traffic flows through a
canary split; its HTTP API then shows request counts per version and alert-level drift gauges.

Prometheus is the Debian package (/usr/bin/prometheus; `make test` installs it). It listens on a free loopback port,
keeps its storage in the test's tmp dir, finds Ray's metrics endpoint through the service-discovery file that Ray
writes in the serving Ray's own temp dir, and loads rayml's alert rules (so they must parse).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from rayml._private.net import free_port
from rayml.registry import Registry
from rayml.testing import register_tiny_model, sample_frame, v2_body
from tests.e2e.helpers import ROOT, run_cli
from tests.e2e.test_serve_cli import _head_dir, _head_pids

PROMETHEUS = Path("/usr/bin/prometheus")
MODEL = "sales-model"


def _query(prom: str, q: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": q}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _wait(what: str, check, timeout_s: float, *diagnostics) -> object:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = check()
            if last:
                return last
        time.sleep(1.0)
    raise AssertionError(f"{what} within {timeout_s:g}s; last answer: {last}; " + "; ".join(d() for d in diagnostics))


def _sd_file(head: Path) -> Path | None:
    """The Prometheus service-discovery file of the serving Ray, in its temp dir (rayml writes it there)."""
    for p in [head / "prom_metrics_service_discovery.json", *head.glob("session_*/prom_metrics_service_discovery.json")]:
        if p.is_file() and p.read_text().strip():
            return p
    return None


def test_prometheus_scrapes_requests_by_version_and_drift_gauges(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert PROMETHEUS.is_file(), f"{PROMETHEUS} is missing: run `make test` (it installs the prometheus package)"
    home = Path(cli_env["RAYML_HOME"])
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}")
    for seed in (0, 1):
        register_tiny_model(registry, MODEL, seed=seed)
    port, prom_port = free_port(), free_port()
    env = {**cli_env, "RAY_metrics_report_interval_ms": "1000"}  # the replicas export every second, not every 10 s
    sets = [
        f"serve.port={port}",
        f"serve.metrics_export_port={free_port()}",
        f"serve.models={{{MODEL}: {{versions: [{{version: 1, weight: 0.5}}, {{version: 2, weight: 0.5}}]}}}}",
        f"serve.models.{MODEL}.deployment.num_cpus=0.25",
        "serve.ingress.num_cpus=0.25",
        "serve.stats_flush_interval_s=0.5",
    ]
    flags = ["--config", "jobs/configs/serve.yaml"] + [x for s in sets for x in ("--set", s)]
    prom = f"http://127.0.0.1:{prom_port}"
    head = Path(_head_dir(home))
    proc = None
    try:
        up = run_cli(["serve", "up", *flags], env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr

        sd = _wait("no Prometheus service-discovery file", lambda: _sd_file(head), 30, lambda: str(sorted(head.iterdir())))
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(ROOT / "clusters" / "prometheus" / "rules" / "rayml.rules.yml")],
                    "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [str(sd)], "refresh_interval": "1s"}]}],
                }
            )
        )
        log = (tmp_path / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        prom_log = lambda: (tmp_path / "prometheus.log").read_text()[-1500:]  # noqa: E731
        _wait("Prometheus did not become ready", lambda: httpx.get(f"{prom}/-/ready", timeout=2).status_code == 200, 30, prom_log)

        inputs = [i["name"] for i in registry.load(f"{MODEL}:1").meta["inputs"]]
        df = sample_frame()
        clean = json.loads(df[inputs].to_json(orient="records"))
        drifted = json.loads(df.assign(price=df["price"] * 3.0)[inputs].to_json(orient="records"))
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(80):  # a quarter clean, the rest with prices tripled; 10 rows a request
                rows = clean if i % 4 == 0 else drifted
                r = c.post(f"/v2/models/{MODEL}/infer", json=v2_body([rows[(i * 10 + j) % len(rows)] for j in range(10)]))
                assert r.status_code == 200, r.text

        requests_q = f'sum by (version) (ray_rayml_requests_total{{model="{MODEL}"}})'

        def both_versions() -> dict[str, float] | None:
            seen = {s["metric"]["version"]: float(s["value"][1]) for s in _query(prom, requests_q)}
            return seen if len(seen) == 2 and sum(seen.values()) == 80 else None

        by_version = _wait("Prometheus never saw the 80 requests of both versions", both_versions, 45, prom_log)
        assert set(by_version) == {"1", "2"} and sum(by_version.values()) == 80, by_version

        psi = _wait(
            "no alert-level PSI for price in ray_rayml_feature_drift",
            lambda: (
                {
                    s["metric"]["version"]: float(s["value"][1])
                    for s in _query(prom, f'ray_rayml_feature_drift{{model="{MODEL}", feature="price", metric="psi"}} > 0.25')
                }
                or None
            ),
            45,
            lambda: str(_query(prom, '{__name__=~"ray_rayml_(feature_drift|drift_window_rows|data_quality_total)"}')),
        )
        assert set(psi) == {"1", "2"}, psi
        status = _query(prom, f'ray_rayml_feature_drift_status{{model="{MODEL}", feature="price"}}')
        assert {s["metric"]["version"]: s["value"][1] for s in status} == {"1": "2", "2": "2"}, status

        # what RaymlDataQualityErrors divides by: every answered row, counted by the replica that answered it
        rows_q = f'sum(ray_rayml_data_quality_rows_total{{model="{MODEL}"}})'
        _wait(
            "ray_rayml_data_quality_rows_total never reached the 800 rows answered",
            lambda: [float(s["value"][1]) for s in _query(prom, rows_q)] == [800.0],
            45,
            lambda: str(_query(prom, rows_q)),
        )

        # well past two metrics report intervals after the last request, the gauges are still exported (Ray drops a
        # gauge that is not set again; rayml refreshes them every second)
        time.sleep(5)
        still = _query(prom, f'ray_rayml_feature_drift{{model="{MODEL}", feature="price", metric="psi"}}')
        weights = _query(prom, f'ray_rayml_traffic_weight{{model="{MODEL}"}}')
        assert {s["metric"]["version"] for s in still} == {"1", "2"}, still
        assert {s["metric"]["version"] for s in weights} == {"1", "2"}, weights

        shown = run_cli(["serve", "status", *flags], env, timeout=120)
        assert "Drift (online, all replicas)" in shown.stdout and "alert" in shown.stdout and "price (psi" in shown.stdout
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        down = run_cli(["serve", "down", *flags], env, timeout=120)
        for pid in _head_pids(home):  # never leave a Ray behind, whatever failed above
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(head, ignore_errors=True)
        assert "removed" in down.stdout, down.stdout + down.stderr
