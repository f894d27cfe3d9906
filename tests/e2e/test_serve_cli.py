"""`rayml serve up/status/down`, `rayml rollout` and `rayml rollback` from the shell against jobs/configs/serve.yaml.

The CLI starts its own local Ray for serving (in a private temp dir derived from $RAYML_HOME), the application
outlives each command, and `rayml serve down` stops that Ray again. The two model versions are tiny registered
ONNX models (training them with `rayml train` would take minutes here).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx

from rayml._private.net import free_port
from rayml.registry import Registry
from rayml.testing import instances, register_tiny_model
from tests.e2e.helpers import run_cli

CONFIG = "jobs/configs/serve.yaml"


def _head_dir(home: Path) -> str:
    """The local serving Ray's temp dir of this $RAYML_HOME (same derivation as rayml._private.constants)."""
    return f"/tmp/rayml-serve-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]}"


def _head_pids(home: Path) -> list[int]:
    """Processes of the local serving Ray of this $RAYML_HOME."""
    needle = _head_dir(home).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_serve_up_status_rollout_rollback_down(cli_env: dict[str, str], tmp_path: Path) -> None:
    home = Path(cli_env["RAYML_HOME"])
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}")
    register_tiny_model(registry, "sales-model", seed=0)  # v1, as `rayml train --config jobs/configs/train.yaml` would
    register_tiny_model(registry, "sales-model", seed=0, output_scale=1.02)  # v2: the candidate
    port = free_port()
    sets = [
        f"serve.port={port}",
        "serve.ingress.num_cpus=0.25",
        "serve.models.sales-model.deployment.num_cpus=0.25",
        "serve.stats_flush_interval_s=0.5",
        "rollout.min_requests=5",
        "rollout.min_shadow_comparisons=5",
        "rollout.poll_interval_s=0.25",
        "rollout.max_p95_latency_ratio=null",
    ]
    flags = ["--config", CONFIG] + [x for s in sets for x in ("--set", s)]
    url = f"http://127.0.0.1:{port}"
    try:
        up = run_cli(["serve", "up", *flags], cli_env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "runs in" in up.stdout and "HEALTHY" in up.stdout and "Next: rayml serve status" in up.stdout

        # the application outlives the command that deployed it
        r = httpx.post(f"{url}/v1/models/sales-model:predict", json={"instances": instances(2)}, timeout=30)
        assert r.status_code == 200 and r.headers["x-rayml-model-version"] == "1" and len(r.json()["predictions"]) == 2

        status = run_cli(["serve", "status", *flags], cli_env, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        # a small model runs in the ingress: the routing table says so (no model deployment of its own)
        for fragment in ("Ingress", "RaymlStats", "HEALTHY", "1/1", "100.00%", "│ ingress"):
            assert fragment in status.stdout, fragment

        stop = threading.Event()
        answers: list[int] = []

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    answers.append(c.post("/v1/models/sales-model:predict", json={"instances": instances(1)}).status_code)
                    time.sleep(0.02)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            rollout = run_cli(
                [
                    "rollout",
                    "start",
                    "--model",
                    "sales-model",
                    "--candidate",
                    "2",
                    "--steps",
                    "100",
                    "--interval-s",
                    "2",
                    *flags,
                ],
                cli_env,
                timeout=300,
            )
        finally:
            stop.set()
            loader.join()
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr
        assert "check passed" in rollout.stdout and "PROMOTED" in rollout.stdout and "Promoted sales-model v2" in rollout.stdout
        assert answers and set(answers) == {200}

        rstatus = run_cli(["rollout", "status", "--model", "sales-model", *flags], cli_env, timeout=120)
        assert rstatus.returncode == 0 and "promoted" in rstatus.stdout and "Audit log:" in rstatus.stdout
        assert (home / "rollouts" / "rayml" / "sales-model.audit.jsonl").is_file()

        back = run_cli(["rollback", "--model", "sales-model", *flags], cli_env, timeout=300)
        assert back.returncode == 0, back.stdout + back.stderr
        assert "v1 serves all traffic" in back.stdout
        r = httpx.post(f"{url}/v1/models/sales-model:predict", json={"instances": instances(1)}, timeout=30)
        assert r.headers["x-rayml-model-version"] == "1"
        assert registry.resolve("sales-model@production").version == 1

        down = run_cli(["serve", "down", *flags], cli_env, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "removed" in down.stdout and "Stopped the local Ray" in down.stdout
        deadline = time.monotonic() + 20
        while _head_pids(home) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _head_pids(home) == []
    finally:
        for pid in _head_pids(home):  # never leave a Ray behind, whatever failed above
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(_head_dir(home), ignore_errors=True)
