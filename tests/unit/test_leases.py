"""One writer at a time, and durable commits, without Ray: the lease file (pipeline runs, batch outputs), the
pipeline's re-gate when production moved, fsync on a batch commit, and concurrent downloads of one model version."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rayml._private import fs
from rayml._private.lease import Lease
from rayml.errors import LeaseHeldError


def _race(n: int, fn) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads released at once; each result, or the exception it raised."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


# --- the lease ---------------------------------------------------------------------------------------------------------
def test_of_writers_racing_for_one_lease_exactly_one_wins_and_the_others_name_it(tmp_path: Path) -> None:
    path = str(tmp_path / "lease.json")
    leases = [Lease(path, "pipeline run p/r1") for _ in range(6)]
    results = _race(6, lambda i: leases[i].acquire())
    winners = [r for r in results if isinstance(r, Lease)]
    losers = [r for r in results if isinstance(r, LeaseHeldError)]
    assert len(winners) == 1 and len(losers) == 5, results
    assert f"pid {os.getpid()}" in losers[0].message and "pipeline run p/r1 is in use" in losers[0].message
    assert json.loads(Path(path).read_text())["owner"] == winners[0].owner
    winners[0].release()
    assert not Path(path).exists()
    with Lease(path, "pipeline run p/r1"):  # free again
        pass


def test_a_stale_lease_is_taken_over_and_its_old_owner_learns_it_lost_it(tmp_path: Path) -> None:
    path = str(tmp_path / "lease.json")
    now = [1000.0]
    old = Lease(path, "batch output o", timeout_s=60, clock=lambda: now[0]).acquire()
    old._stop.set()  # a frozen owner: no more heartbeats
    now[0] += 30
    with pytest.raises(LeaseHeldError, match="in use by"):
        Lease(path, "batch output o", timeout_s=60, clock=lambda: now[0]).acquire()  # still live
    now[0] += 31  # 61 s without a heartbeat: stale
    new = Lease(path, "batch output o", timeout_s=60, clock=lambda: now[0]).acquire()
    assert not old.renew() and old.lost and "held by host" in old.lost
    with pytest.raises(LeaseHeldError, match="lease was lost"):
        old.check()
    old.release()  # does not delete the new owner's lease
    assert json.loads(Path(path).read_text())["owner"] == new.owner
    new.release()


def test_a_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """`kill -9` of a batch run, then the same command again: no need to wait for the heartbeat to age."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "lease.json"
    code = (
        "import sys, time; from rayml._private.lease import Lease; "
        f"Lease({str(path)!r}, 'batch output o').acquire(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):  # alive: held
            Lease(str(path), "batch output o").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert json.loads(path.read_text())["pid"] == proc.pid  # the dead owner's lease is still there, heartbeat fresh
    with Lease(str(path), "batch output o") as lease:  # taken over at once
        assert json.loads(path.read_text())["owner"] == lease.owner


def test_the_heartbeat_keeps_a_long_run_s_lease_live(tmp_path: Path) -> None:
    path = str(tmp_path / "lease.json")
    with Lease(path, "pipeline run p/r1", timeout_s=0.4) as held:
        first = json.loads(Path(path).read_text())["heartbeat_at"]
        time.sleep(0.7)  # longer than the timeout: only renewals keep it live
        assert json.loads(Path(path).read_text())["heartbeat_at"] > first
        with pytest.raises(LeaseHeldError):
            Lease(path, "pipeline run p/r1", timeout_s=0.4).acquire()
        held.check()


# --- batch: one run per output folder ------------------------------------------------------------------------------------
class _Won(Exception):
    """The writer got past the lease (it would go on and load the model)."""


class _BatchRegistry:
    tracking_uri = "sqlite:///unused"

    def resolve(self, ref: str):
        return SimpleNamespace(name="m", version=1, run_id=None, ref="m:1")

    def get_version(self, name: str, version: int):
        return self.resolve(name)

    def load(self, ref: str):
        time.sleep(0.3)  # hold the lease a while, as a real run does
        raise _Won()


def test_two_batch_runs_on_one_output_one_wins_and_overwrite_cannot_delete_under_a_live_run(tmp_path: Path) -> None:
    import pandas as pd

    from rayml.batch import run_batch
    from rayml.batch._ledger import CONTROL_DIR, LEASE_FILE, OutputDir

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(inp / "a.parquet")
    (out / CONTROL_DIR / "staging" / "live-attempt").mkdir(parents=True)
    (out / CONTROL_DIR / "staging" / "live-attempt" / "a.parquet").write_bytes(b"being written")

    def run(i: int) -> None:
        run_batch(model="m@production", input=str(inp), output=str(out), overwrite=True, registry=_BatchRegistry())

    results = _race(2, run)
    assert sorted(type(r).__name__ for r in results) == ["LeaseHeldError", "_Won"], results
    held = next(r for r in results if isinstance(r, LeaseHeldError))
    assert "is in use by" in held.message and "another `rayml batch`" in (held.hint or "")
    assert not (out / LEASE_FILE).exists()  # released by the winner on its way out

    # a live run holds the lease: --overwrite (which deletes outputs and staging) and a plain rerun are both refused
    live = OutputDir(str(out)).lease().acquire()
    (out / CONTROL_DIR / "staging" / "live-attempt").mkdir(parents=True, exist_ok=True)
    (out / CONTROL_DIR / "staging" / "live-attempt" / "a.parquet").write_bytes(b"being written")
    for overwrite in (True, False):
        with pytest.raises(LeaseHeldError):
            run_batch(model="m@production", input=str(inp), output=str(out), overwrite=overwrite, registry=_BatchRegistry())
    assert (out / CONTROL_DIR / "staging" / "live-attempt" / "a.parquet").read_bytes() == b"being written"
    live.release()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fsynced fds through /proc (Linux)")
def test_a_commit_is_fsynced_and_refused_once_the_run_lost_its_lease(tmp_path: Path, monkeypatch) -> None:
    from rayml.batch._ledger import InputFile, OutputDir

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    out = OutputDir(str(tmp_path / "out"))
    f = InputFile(str(tmp_path / "a.parquet"), 10, 1)
    lease = out.lease().acquire()
    with out.open_staging("att", f) as s:
        s.write(b"rows")
    entry = out.commit("att", f, 1, owner=lease.owner)
    staging_dir = os.path.dirname(out.staging_path("att", f))
    ledger_dir = out.path("_rayml_batch", "ledger")
    # the staged file before its rename, the output folder after it (and the staging folder), the ledger entry + folder
    assert synced[:3] == [out.staging_path("att", f), out.root, staging_dir], synced
    assert any(p.startswith(ledger_dir + "/") and p.endswith(".tmp") for p in synced) and synced[-1] == ledger_dir
    assert Path(out.output_path(f)).read_bytes() == b"rows" and entry.rows == 1

    # another run took the folder over (this run's heartbeat went stale): its in-flight commits are refused
    lease._stop.set()
    taken = {**json.loads(Path(out.path("_rayml_lease.json")).read_text()), "owner": "another-run", "host": "h2"}
    Path(out.path("_rayml_lease.json")).write_text(json.dumps(taken))
    with out.open_staging("att", f) as s:
        s.write(b"rows again")
    with pytest.raises(LeaseHeldError, match="no longer holds the folder's lease .held by h2"):
        out.commit("att", f, 1, owner=lease.owner)
    assert Path(out.output_path(f)).read_bytes() == b"rows"
    lease.release()
    assert Path(out.path("_rayml_lease.json")).exists()  # not ours any more: left alone


def test_durable_writes_skip_fsync_on_object_stores(monkeypatch) -> None:
    import pyarrow.fs as pafs

    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    moved: list[tuple[str, str]] = []
    store = SimpleNamespace(move=lambda a, b: moved.append((a, b)))
    assert not fs.is_local(store) and fs.is_local(pafs.LocalFileSystem())
    fs.durable_move(store, "bucket/a.tmp", "bucket/a")
    assert moved == [("bucket/a.tmp", "bucket/a")] and calls == []


# --- pipeline: one invocation per run, and a re-gate when production moved -------------------------------------------------
def test_two_invocations_of_one_pipeline_run_one_wins(tmp_path: Path, monkeypatch) -> None:
    from rayml.pipeline import _run

    monkeypatch.setattr(_run, "prepare_data", lambda data, seed: SimpleNamespace(fingerprint="f" * 16))
    ran: list[str] = []

    def leased(cfg, registry, prepared, run_dir, lease, restart, release):
        ran.append(run_dir)
        time.sleep(0.3)
        lease.check()
        return "done"

    monkeypatch.setattr(_run, "_run_leased", leased)
    cfg = ["model.name=m", f"pipeline.state_dir={tmp_path}"]
    results = _race(2, lambda i: _run.run_pipeline(overrides=cfg, registry=SimpleNamespace()))
    assert sorted(type(r).__name__ for r in results) == ["LeaseHeldError", "str"], results
    err = next(r for r in results if isinstance(r, LeaseHeldError))
    assert "pipeline run" in err.message and "rayml pipeline status" in (err.hint or "")
    assert len(ran) == 1 and not Path(ran[0], "lease.json").exists()


def test_a_run_that_lost_its_lease_writes_no_state(tmp_path: Path) -> None:
    from rayml.pipeline import PipelineState, StateStore

    lease = Lease(str(tmp_path / "lease.json"), "pipeline run p/r1").acquire()
    lease.lost = "pipeline run p/r1: the lease was lost; it is held by host h pid 1"
    store = StateStore(str(tmp_path), guard=lease.check)
    with pytest.raises(LeaseHeldError, match="lease was lost"):
        store.save(PipelineState.new("p", "r1", ["a"]))
    assert not (tmp_path / "state.json").exists()
    lease.release()


class _MovingRegistry:
    """production moves from v1 to v3 after the gate (another pipeline promoted meanwhile)."""

    def __init__(self) -> None:
        self.aliases = {"production": 3}

    def resolve(self, ref: str):
        return SimpleNamespace(version=self.aliases[ref.split("@", 1)[1]])

    def set_alias(self, name: str, version: int, alias: str) -> dict[str, int]:
        self.aliases["previous"], self.aliases[alias] = self.aliases["production"], version
        return {alias: version}


def _promote_ctx(registry: Any):
    from rayml.config import PipelineJobConfig, load_config
    from rayml.pipeline import PipelineState
    from rayml.pipeline._stages import GATE, STAGE_NAMES, TRAIN, StageContext

    cfg = load_config(PipelineJobConfig, None, ["model.name=m", "pipeline.rollout=never"])
    state = PipelineState.new("m", "r1", STAGE_NAMES)
    state.stage(TRAIN).outputs = {"version": 2}
    state.stage(GATE).outputs = {"passed": True, "baseline": 1, "report": "old"}
    return StageContext(cfg=cfg, registry=registry, state=state, run_dir="/unused", prepared=None, release=None)


def test_promote_gates_again_when_production_moved_since_the_gate(monkeypatch) -> None:
    from rayml.pipeline import StageFailed, _stages

    gated_against: list[int] = []

    def gate(ctx):
        gated_against.append(ctx.production())
        return {"passed": True, "baseline": ctx.production(), "report": "new"}

    monkeypatch.setattr(_stages, "gate", gate)
    reg = _MovingRegistry()
    ctx = _promote_ctx(reg)
    out = _stages.promote(ctx)
    assert gated_against == [3] and out["outcome"] == "promoted" and reg.aliases["production"] == 2
    assert out["regated"] == [{"production": 3, "passed": True, "report": "new"}] and out["production_before"] == 3
    assert ctx.out(_stages.GATE)["baseline"] == 3

    def refuse(ctx):
        raise StageFailed("the gate refused m:2: rmse regressed 9% > 5%", outputs={"passed": False})

    monkeypatch.setattr(_stages, "gate", refuse)
    reg = _MovingRegistry()
    with pytest.raises(StageFailed, match="production moved to v3 after the gate passed; against it: the gate refused"):
        _stages.promote(_promote_ctx(reg))
    assert reg.aliases == {"production": 3}  # nothing promoted


# --- concurrent downloads of one model version ------------------------------------------------------------------------------
def test_concurrent_downloads_of_one_version_all_succeed(tmp_path: Path, monkeypatch) -> None:
    import mlflow.artifacts

    from rayml._private import constants
    from rayml.models.model_dir import META_FILE, MODEL_FILE
    from rayml.registry import Registry
    from rayml.registry._registry import ModelVersionInfo

    monkeypatch.setenv("RAYML_HOME", str(tmp_path / "home"))
    assert constants.rayml_home() == tmp_path / "home"
    n = 4
    barrier = threading.Barrier(n)

    def download_artifacts(artifact_uri: str, dst_path: str, tracking_uri: str) -> str:
        local = Path(dst_path) / "model"
        local.mkdir()
        (local / META_FILE).write_text("{}")
        (local / MODEL_FILE).write_bytes(b"onnx")
        barrier.wait(timeout=30)  # every download is complete before any is renamed into place
        return str(local)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download_artifacts)
    registry = Registry(f"sqlite:///{tmp_path}/mlflow.db")
    info = ModelVersionInfo("m", 1, [], None, "models:/m/1", {}, 0)
    monkeypatch.setattr(registry, "resolve", lambda ref: info)
    results = _race(n, lambda i: registry.download("m:1"))
    assert all(isinstance(r, tuple) for r in results), results
    paths = {r[1] for r in results}
    assert len(paths) == 1
    cache = paths.pop()
    assert (cache / MODEL_FILE).read_bytes() == b"onnx"
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp dir left behind
