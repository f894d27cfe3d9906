"""Secrets stay secret (API keys as SecretStr, salted slow digests, a token cache keyed by HMAC) and rayml's temp and
state dirs are private (0700, the user's own, checked when found); `serve down` stops every process of its Ray."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayml._private import constants, logs, private_fs
from rayml.config import ServeJobConfig, dump_config, load_config
from rayml.errors import ConfigError, UnsafePathError
from rayml.serve import _cluster, _http
from rayml.serve._protocol import HttpError
from rayml.serve._spec import KDF_ITERATIONS, _auth_keys, auth_key, key_digest
from rayml.train._run import config_params

KEY = "a-secret-key-that-must-not-leak-0001"
ENV_KEY = "an-env-key-that-must-not-leak-0002"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- private dirs and files -----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _as_in_a_fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests run where `rayml serve` runs, in a process that uses no Ray yet. In a suite's process another
    test's Ray may be up: `connect()` would return at once, and `stop_local_head()` would shut that Ray down (it
    disconnects this process first), breaking every later test that uses it."""
    monkeypatch.setattr(_cluster.ray, "is_initialized", lambda: False)


def test_private_dir_is_created_0700_and_an_own_lax_one_is_tightened(tmp_path: Path) -> None:
    d = private_fs.ensure_private_dir(tmp_path / "new")
    assert _mode(d) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)
    assert _mode(private_fs.ensure_private_dir(old)) == 0o700


def test_a_world_writable_dir_is_refused_with_a_hint(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(UnsafePathError) as e:
        private_fs.ensure_private_dir(d, "the temp dir")
    assert "writable by others (mode 777)" in str(e.value) and "Hint:" in str(e.value)
    assert _mode(d) == 0o777  # refused, not silently "fixed": someone else may already have put files in it


def test_a_dir_or_file_owned_by_someone_else_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = private_fs.ensure_private_dir(tmp_path / "d")
    f = private_fs.write_private_file(d / "token", "x")
    monkeypatch.setattr(private_fs, "current_uid", lambda: os.getuid() + 1)
    with pytest.raises(UnsafePathError, match="not by you"):
        private_fs.ensure_private_dir(d)
    with pytest.raises(UnsafePathError, match="not by you"):
        private_fs.read_private_file(f)


def test_private_files_are_0600_atomic_and_checked_when_read(tmp_path: Path) -> None:
    f = private_fs.write_private_file(tmp_path / "token", "secret")
    assert _mode(f) == 0o600 and [p.name for p in tmp_path.iterdir()] == ["token"]  # no temp file left
    assert private_fs.read_private_file(tmp_path / "missing") is None
    os.chmod(f, 0o666)
    with pytest.raises(UnsafePathError, match="writable by others"):
        private_fs.read_private_file(f)
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(UnsafePathError):
        private_fs.read_private_file(link)


def test_a_file_created_once_keeps_its_first_content(tmp_path: Path) -> None:
    assert private_fs.create_private_file_once(tmp_path / "salt", "first") == "first"
    assert private_fs.create_private_file_once(tmp_path / "salt", "second") == "first"
    assert _mode(tmp_path / "salt") == 0o600 and sorted(p.name for p in tmp_path.iterdir()) == ["salt"]


def test_the_serving_temp_dir_is_refused_when_it_is_not_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = tmp_path / "serve-head"
    (head / _cluster.RAY_SUBDIR).mkdir(parents=True)
    (head / _cluster.RAY_SUBDIR / _cluster.ADDRESS_FILE).write_text("127.0.0.1:1")  # planted: rayml would deploy there
    os.chmod(head, 0o777)
    monkeypatch.setenv("RAYML_SERVE_RAY_DIR", str(head))
    with pytest.raises(UnsafePathError, match="serving Ray"):
        _cluster._local_address()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # as in a fresh process (see _as_in_a_fresh_process)
    with pytest.raises(UnsafePathError):
        _cluster.connect(start_local=True)  # refused before any Ray is started or joined
    os.chmod(head, 0o700)
    monkeypatch.setattr(private_fs, "current_uid", lambda: os.getuid() + 1)
    with pytest.raises(UnsafePathError, match="not by you"):
        _cluster._local_address()


def test_serve_down_kills_every_process_of_the_session_even_renamed_ones_that_ignore_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for the serving Ray: a session led by a process that names the temp dir and stops on SIGTERM (the
    GCS), and a child in a process group of its own whose command line does not name it and that ignores SIGTERM (what
    ray::DashboardAgent does)."""
    head = private_fs.ensure_private_dir(tmp_path / "head")
    monkeypatch.setenv("RAYML_SERVE_RAY_DIR", str(head))
    ready = tmp_path / "ready"
    agent = tmp_path / "agent.py"  # ignores SIGTERM, then says it is ready (its pid)
    agent.write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(600)\n"
    )
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(agent)!r}, {str(ready)!r}], process_group=0)\n"
        "time.sleep(600)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", code, str(head)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (ready.is_file() and ready.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = [int(p) for p in ready.read_text().split()]
        private_fs.write_private_file(head / _cluster.STARTED_MARKER, f'{{"port": 1, "sid": {leader.pid}}}')
        found = _cluster._head_pids(head, leader.pid)
        assert {leader.pid, *kids} <= set(found)
        t0 = time.monotonic()
        assert _cluster.stop_local_head(timeout_s=10) >= 2
        took = time.monotonic() - t0
        leader.wait(timeout=5)
        assert [p for p in _cluster._head_pids(head, leader.pid) if _cluster._alive(p)] == []
        assert took < 8 and not (head / _cluster.STARTED_MARKER).exists()
    finally:
        for pid in [leader.pid, *(int(p) for p in (ready.read_text().split() if ready.is_file() else []))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_recorded_session_is_not_trusted_when_none_of_it_names_the_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale marker whose session id now belongs to something else (ids are recycled): that is left alone."""
    head = private_fs.ensure_private_dir(tmp_path / "head")
    monkeypatch.setenv("RAYML_SERVE_RAY_DIR", str(head))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        private_fs.write_private_file(head / _cluster.STARTED_MARKER, f'{{"port": 1, "sid": {other.pid}}}')
        assert _cluster._head_pids(head, other.pid) == []
        assert _cluster.stop_local_head(timeout_s=2) == 0 and other.poll() is None
    finally:
        other.kill()
        other.wait()


# --- secrets ----------------------------------------------------------------------------------------------------------
def _cfg() -> ServeJobConfig:
    return load_config(ServeJobConfig, None, [f"serve.api_keys=[{{key: {KEY}, name: ops, models: [m]}}]"])


def test_api_keys_are_masked_in_config_dumps_params_and_repr() -> None:
    cfg = _cfg()
    assert cfg.serve.api_keys[0].key.get_secret_value() == KEY
    for text in (dump_config(cfg), repr(cfg), str(cfg), str(config_params(cfg)), cfg.model_dump_json()):
        assert KEY not in text
    assert "**********" in dump_config(cfg)


def test_a_bad_key_is_reported_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(ServeJobConfig, None, ["serve.api_keys=[{key: short-secret-1}]"])
    assert "short-secret-1" not in str(e.value) and "serve.api_keys.0.key" in str(e.value)
    with pytest.raises(ConfigError) as e1:
        load_config(ServeJobConfig, None, [f"serve.api_keys=[{{key: {KEY}"])  # not YAML: its parser quotes the text
    assert KEY not in str(e1.value) and "not valid YAML" in str(e1.value)
    monkeypatch.setenv("RAYML_SERVE_API_KEYS", "tiny-secret:")
    with pytest.raises(ConfigError) as e2:
        constants.serve_api_keys()
    assert "tiny-secret" not in str(e2.value)


def test_the_logged_command_line_hides_secret_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["rayml", "serve", "up", "--set", f"serve.api_keys=[{{key: {KEY}}}]", f"--set=serve.api_keys.0.key={KEY}"]
    monkeypatch.setattr(sys, "argv", argv + ["--set", "serve.port=8001"])
    line = logs._argv()
    assert KEY not in line and "serve.port=8001" in line and "serve.api_keys=**********" in line
    from rayml.cli.serve import _flags  # the "Next: rayml serve status --set ..." hint

    assert KEY not in _flags(None, [f"serve.api_keys=[{{key: {KEY}}}]"])


def test_digests_are_salted_slow_and_stable_per_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYML_SERVE_API_KEYS", f"{ENV_KEY}:m")
    cfg = _cfg()
    keys = _auth_keys(cfg.serve)
    assert [k.name for k in keys] == ["ops", "env-0"] and keys[1].models == ["m"]
    assert all(k.iterations == KDF_ITERATIONS >= 100_000 and len(bytes.fromhex(k.salt or "")) >= 16 for k in keys)
    assert keys[0].digest == key_digest(KEY, keys[0].salt or "") and KEY not in keys[0].model_dump_json()
    assert [k.digest for k in _auth_keys(cfg.serve)] == [k.digest for k in keys]  # same keys -> same spec
    salt_file = constants.rayml_home() / "private" / f"serve-salt-{cfg.serve.app_name}"
    assert _mode(salt_file) == 0o600 and _mode(salt_file.parent) == 0o700
    other = load_config(ServeJobConfig, None, [f"serve.api_keys=[{{key: {KEY}}}]", "serve.app_name=other"])
    assert _auth_keys(other.serve)[0].digest != keys[0].digest  # one salt per application


def test_the_ingress_digests_each_token_once_and_caches_by_hmac(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = _http.key_digest
    monkeypatch.setattr(_http, "key_digest", lambda t, s, i: calls.append(t) or real(t, s, i))
    monkeypatch.setattr(_http, "_verified", _http._VerifiedTokens(size=2, rate_per_s=1000, burst=1000))
    salt = "11" * 16
    keys = [auth_key(KEY, salt, "ops"), auth_key(ENV_KEY, salt, "scoped", ["m"])]
    for _ in range(3):
        assert _http.authorize(keys, f"Bearer {KEY}", "m").name == "ops"
    assert calls == [KEY]  # one digest for the token, whatever the number of keys and requests
    assert all(KEY.encode() not in ref for ref in _http._verified._entries)
    with pytest.raises(HttpError) as e:
        _http.authorize(keys, f"Bearer {ENV_KEY}", "other")
    assert e.value.status == 403 and ENV_KEY not in e.value.message
    for bad in ("wrong-token-0000000001", "wrong-token-0000000002"):
        with pytest.raises(HttpError) as e:
            _http.authorize(keys, f"Bearer {bad}", "m")
        assert e.value.status == 401 and bad not in e.value.message
    assert len(_http._verified._entries) == 2  # bounded: the oldest went first
    legacy = [keys[0].model_copy(update={"salt": None})]  # an unsalted digest of an older rayml matches nothing
    with pytest.raises(HttpError):
        _http.authorize(legacy, f"Bearer {KEY}", "m")


def test_many_unknown_tokens_are_rationed_not_digested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_verified", _http._VerifiedTokens(rate_per_s=0.001, burst=2))
    keys = [auth_key(KEY, "22" * 16, "ops")]
    statuses = []
    for i in range(4):
        try:
            _http.authorize(keys, f"Bearer unknown-token-{i:010d}", None)
        except HttpError as e:
            statuses.append(e.status)
    assert statuses == [401, 401, 429, 429]


# --- clusters/local.sh ------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def _local_sh(cmd: str, cluster_dir: Path, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAYML_LOCAL_DIR": str(cluster_dir), "RAY": str(Path(sys.executable).parent / "ray")}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run(["bash", str(ROOT / "clusters" / "local.sh"), cmd], env=env, capture_output=True, text=True)


def test_local_sh_refuses_a_cluster_dir_or_file_that_is_not_private(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    os.chmod(d, 0o777)
    r = _local_sh("down", d)
    assert r.returncode == 2 and "writable by others (mode 777)" in r.stderr and "Hint:" in r.stderr
    os.chmod(d, 0o700)
    (d / "nodes").symlink_to(tmp_path / "elsewhere")
    r = _local_sh("down", d)
    assert r.returncode == 2 and "the node list" in r.stderr and "symlink" in r.stderr
    (d / "nodes").unlink()
    fake = tmp_path / "bin"  # `stat` that reports another owner: what another user's dir looks like
    fake.mkdir()
    (fake / "stat").write_text("#!/bin/sh\necho '4242 700'\n")
    os.chmod(fake / "stat", 0o755)
    r = _local_sh("status", d, fake)
    assert r.returncode == 2 and "owned by user id 4242, not by you" in r.stderr
    r = _local_sh("status", d)
    assert r.returncode == 1 and "no local cluster" in r.stdout  # a private dir of ours is fine
