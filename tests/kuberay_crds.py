"""Where the tests find the KubeRay CRDs that clusters/kuberay/*.yaml are validated against (kept out of the repo).

In order, the first that has all three files wins:

1. ``$RAYML_KUBERAY_CRDS``: a folder you name (when it is set it is the only place looked at: a typo must not
   silently fall back to another copy);
2. ``../shared/kuberay-crds/`` next to the project root (CI and the development machines);
3. the cache ``${XDG_CACHE_HOME:-~/.cache}/rayml/kuberay-crds/<commit>/``, filled on first use by downloading the
   pinned KubeRay commit's files from GitHub (a few seconds' timeout; every file is checked against its SHA-256).

Fill the cache by hand, e.g. before going offline::

    python -m tests.kuberay_crds
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "RAYML_KUBERAY_CRDS"
SHARED = ROOT.parent / "shared" / "kuberay-crds"
# The KubeRay commit the manifests were written against (ray-project/kuberay). GitHub resolves the abbreviated
# hash; the checksums below pin the content, so a different file can never land in the cache.
COMMIT = "feeaf72fa"
SOURCE = "https://github.com/ray-project/kuberay/raw/{commit}/ray-operator/config/crd/bases/{file}"
SHA256 = {
    "ray.io_rayclusters.yaml": "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1",
    "ray.io_rayjobs.yaml": "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5",
    "ray.io_rayservices.yaml": "0a8fc325e6e22b9231c1f282b309555e2ecf94227ca20a03df3d1d9a403907ab",
}
FILES = tuple(SHA256)
DOWNLOAD_TIMEOUT_S = 5.0

Downloader = Callable[[str, float], bytes]


class CrdsNotFoundError(LookupError):
    """None of the places holds the three CRD files; the message lists what was tried and how to provide them."""


def default_cache_root(env: Mapping[str, str] = os.environ) -> Path:
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "rayml" / "kuberay-crds"


def _missing(folder: Path) -> list[str]:
    return [f for f in FILES if not (folder / f).is_file()]


def http_get(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read()


def download(cache: Path, get: Downloader = http_get, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download the pinned commit's CRDs into ``cache``, all or nothing (a checksum mismatch raises ``ValueError``)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}-"))
    try:
        for name in FILES:  # the first failure stops: offline, this costs one quick connection error
            data = get(SOURCE.format(commit=COMMIT, file=name), timeout_s)
            digest = hashlib.sha256(data).hexdigest()
            if digest != SHA256[name]:
                raise ValueError(f"{name} from KubeRay {COMMIT} has SHA-256 {digest}, expected {SHA256[name]}")
            (tmp / name).write_bytes(data)
        if not cache.exists():  # else another process finished first, with the same verified files
            os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_crds(
    env: Mapping[str, str] = os.environ,
    shared: Path = SHARED,
    cache_root: Path | None = None,
    get: Downloader = http_get,
) -> Path:
    """The folder that holds ``ray.io_{rayclusters,rayjobs,rayservices}.yaml``.

    Raises:
        CrdsNotFoundError: none of the places has them (the message lists each one and why it did not do).
    """
    cache_root = cache_root or default_cache_root(env)
    if env.get(ENV_VAR):
        folder = Path(env[ENV_VAR]).expanduser()
        missing = _missing(folder)
        if not missing:
            return folder
        raise CrdsNotFoundError(_help([f"${ENV_VAR}={folder}: missing {', '.join(missing)}"], shared, cache_root))
    tried = []
    missing = _missing(shared)
    if not missing:
        return shared
    tried.append(f"{shared}: {'no such folder' if not shared.is_dir() else 'missing ' + ', '.join(missing)}")
    cache = cache_root / COMMIT
    if not _missing(cache):
        return cache
    try:
        download(cache, get)
    except Exception as e:  # offline, proxy, GitHub down, checksum mismatch: all say the same to the user
        tried.append(f"{cache}: not cached, and the download failed: {type(e).__name__}: {e}")
    else:
        return cache
    raise CrdsNotFoundError(_help(tried, shared, cache_root))


def _help(tried: list[str], shared: Path, cache_root: Path) -> str:
    lines = ["KubeRay CRDs (" + ", ".join(FILES) + ") not found. Tried:"]
    lines += [f"  - {t}" for t in tried]
    lines += [
        "Hint: provide them in one of three ways:",
        f"  1. export {ENV_VAR}=/path/to/folder (holding the three files, e.g. a kuberay checkout's "
        "ray-operator/config/crd/bases);",
        f"  2. put the project next to its shared/ folder, so that {shared} exists;",
        f"  3. with network access the tests download KubeRay {COMMIT}'s CRDs into {cache_root / COMMIT}/ themselves "
        "(or run `python -m tests.kuberay_crds` once, before going offline).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(find_crds())
