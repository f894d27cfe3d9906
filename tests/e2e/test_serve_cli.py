"""`rayml serve up/status/down`, `rayml rollout` and `rayml rollback` from the shell against jobs/configs/serve.yaml.

The CLI starts its own local Ray for serving (in a private temp dir derived from $RAYML_HOME), the application
outlives each command, and `rayml serve down` stops that Ray again. The two model versions are tiny registered
ONNX models (training them with `rayml train` would take minutes here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
ENV_KEY = "env-api-key-that-must-never-leak-01"  # RAYML_SERVE_API_KEYS
CONFIG_KEY = "config-api-key-that-must-never-leak-02"  # serve.api_keys, given with --set
AUTH = {"Authorization": f"Bearer {ENV_KEY}"}
_OUTPUTS: list[str] = []


def _run(args: list[str], env: dict[str, str], timeout: float = 300):
    """run_cli, keeping every output (the test checks none of them shows a key)."""
    r = run_cli(args, env, timeout=timeout)
    _OUTPUTS.append(r.stdout + r.stderr)
    return r


def _head_dir(home: Path) -> str:
    """The local serving Ray's temp dir of this $RAYML_HOME (same derivation as rayml._private.constants)."""
    return f"/tmp/rayml-serve-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]}"


def _head_pids(home: Path, sid: int | None = None) -> list[int]:
    """Live processes of the local serving Ray of this $RAYML_HOME: those naming its temp dir, and with ``sid`` every
    process of the session `ray start` ran in (agents rename themselves ray::DashboardAgent and name no dir)."""
    needle = _head_dir(home).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if stat_fields[0] == "Z":
                    continue  # a zombie: gone, waiting for its parent to reap it
                if needle in (entry / "cmdline").read_bytes() or (sid is not None and int(stat_fields[3]) == sid):
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
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
    cli_env["RAYML_SERVE_API_KEYS"] = ENV_KEY
    sid = None
    _OUTPUTS.clear()
    try:
        up = _run(["serve", "up", *flags, "--set", f"serve.api_keys=[{{key: {CONFIG_KEY}}}]"], cli_env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "runs in" in up.stdout and "HEALTHY" in up.stdout and "Next: rayml serve status" in up.stdout
        # its temp dir and the token of its Ray are private; the marker names the session of every process of it
        head = Path(_head_dir(home))
        assert head.stat().st_mode & 0o777 == 0o700 and (head / "auth_token").stat().st_mode & 0o777 == 0o600
        sid = json.loads((head / "rayml_started_head").read_text())["sid"]

        # the application outlives the command that deployed it; both keys work, salted digests and all
        r = httpx.post(f"{url}/v1/models/sales-model:predict", json={"instances": instances(2)}, timeout=30)
        assert r.status_code == 401
        r = httpx.post(
            f"{url}/v1/models/sales-model:predict",
            json={"instances": instances(1)},
            headers={"Authorization": f"Bearer {CONFIG_KEY}"},
            timeout=30,
        )
        assert r.status_code == 200
        r = httpx.post(f"{url}/v1/models/sales-model:predict", json={"instances": instances(2)}, headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.headers["x-rayml-model-version"] == "1" and len(r.json()["predictions"]) == 2

        status = _run(["serve", "status", *flags], cli_env, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        # a small model runs in the ingress: the routing table says so (no model deployment of its own)
        for fragment in ("Ingress", "RaymlStats", "HEALTHY", "1/1", "100.00%", "│ ingress"):
            assert fragment in status.stdout, fragment

        stop = threading.Event()
        answers: list[int] = []

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30, headers=AUTH) as c:
                while not stop.is_set():
                    answers.append(c.post("/v1/models/sales-model:predict", json={"instances": instances(1)}).status_code)
                    time.sleep(0.02)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            rollout = _run(
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

        rstatus = _run(["rollout", "status", "--model", "sales-model", *flags], cli_env, timeout=120)
        assert rstatus.returncode == 0 and "promoted" in rstatus.stdout and "Audit log:" in rstatus.stdout
        assert (home / "rollouts" / "rayml" / "sales-model.audit.jsonl").is_file()

        back = _run(["rollback", "--model", "sales-model", *flags], cli_env, timeout=300)
        assert back.returncode == 0, back.stdout + back.stderr
        assert "v1 serves all traffic" in back.stdout
        r = httpx.post(f"{url}/v1/models/sales-model:predict", json={"instances": instances(1)}, headers=AUTH, timeout=30)
        assert r.headers["x-rayml-model-version"] == "1"
        assert registry.resolve("sales-model@production").version == 1

        down = _run(["serve", "down", *flags], cli_env, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "removed" in down.stdout and "Stopped the local Ray" in down.stdout
        # every process of that Ray is gone when `serve down` returns, the agents that ignore SIGTERM included
        assert _head_pids(home, sid) == []

        build = _run(["serve", "build", *flags, "--set", f"serve.api_keys=[{{key: {CONFIG_KEY}}}]"], cli_env, timeout=120)
        assert build.returncode == 0, build.stdout + build.stderr
        assert "salt: " in build.stdout and "iterations: " in build.stdout  # salted, slow digests only
        # no key in anything the commands printed or wrote (CLI output and log files, rollout state, MLflow, salts)
        files = [f for f in home.rglob("*") if f.is_file()]
        assert any(f.parent.name == "logs" for f in files)
        for key in (ENV_KEY, CONFIG_KEY):
            assert not [o for o in _OUTPUTS if key in o]
            assert not [f for f in files if key.encode() in f.read_bytes()]
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError):
            sid = sid or json.loads((Path(_head_dir(home)) / "rayml_started_head").read_text())["sid"]
        for pid in _head_pids(home, sid):  # never leave a Ray behind, whatever failed above
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(_head_dir(home), ignore_errors=True)
