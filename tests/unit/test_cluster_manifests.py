"""Cluster manifests in clusters/ are valid for the tools that consume them, offline.

- Ray cluster launcher YAMLs against Ray's own launcher schema (ray/autoscaler/ray-schema.json of the installed Ray);
- KubeRay RayCluster / RayJob / RayService against the CRDs' openAPIV3Schema (kept outside the repo on purpose; found
  by tests/kuberay_crds.py: $RAYML_KUBERAY_CRDS, ../shared/kuberay-crds/, then a download cache);
- the RayService's serveConfigV2 is what `rayml serve build` emits for jobs/configs/serve.yaml (cluster variant);
- every manifest starts with the command that uses it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests import kuberay_crds

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "clusters" / "kuberay"
LAUNCHER = sorted((ROOT / "clusters" / "launcher").glob("*.yaml"))
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}


@functools.cache
def _crds() -> Path | str:
    """The CRD folder, or why there is none (looked up once per session: a failed download is not retried per test)."""
    try:
        return kuberay_crds.find_crds()
    except kuberay_crds.CrdsNotFoundError as e:
        return str(e)


@functools.cache
def _crd(kind: str) -> dict:
    folder = _crds()
    if isinstance(folder, str):
        pytest.fail(folder, pytrace=False)  # a fresh clone must not pass by skipping its manifest checks
    path = folder / f"ray.io_{KINDS[kind]}.yaml"
    # the CRDs are ~1 MB of YAML each: libyaml's loader when PyYAML has it, parsed once per session
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_bytes(), Loader=loader)


def _crd_schema(kind: str, api_version: str) -> dict:
    crd = _crd(kind)
    group, _, version = api_version.partition("/")
    assert group == crd["spec"]["group"], api_version
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{kind} has no version {version}")


def _errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_there_are_manifests_for_each_kind_and_cloud() -> None:
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS)
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayService"]
    assert {p.stem for p in LAUNCHER} == {"aws", "gcp"}


@pytest.mark.parametrize("path", MANIFESTS + LAUNCHER + [ROOT / "clusters" / "Dockerfile"], ids=lambda p: p.name)
def test_every_manifest_starts_with_the_command_that_uses_it(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    rel = str(path.relative_to(ROOT))
    assert first.startswith(("# kubectl apply -f ", "# ray up ", "# docker build ")) and rel in first, first


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_matches_its_crd_schema(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert _errors(_crd_schema(doc["kind"], doc["apiVersion"]), doc) == []


def test_a_broken_manifest_is_caught() -> None:  # the schema check is not vacuous
    doc = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    doc["spec"]["workerGroupSpecs"][0]["minReplicas"] = "two"
    del doc["spec"]["headGroupSpec"]["template"]
    errors = _errors(_crd_schema("RayCluster", "ray.io/v1"), doc)
    assert any("minReplicas" in e for e in errors) and any("'template' is a required property" in e for e in errors)


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_yaml_matches_rays_schema(path: Path) -> None:
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    doc = yaml.safe_load(path.read_text())
    assert _errors(schema, doc) == []
    types = doc["available_node_types"]
    assert types[doc["head_node_type"]]["resources"] == {"CPU": 0}
    assert {"cpu", "gpu"} <= set(types)
    run_options = " ".join(doc["docker"]["run_options"])
    assert "MLFLOW_TRACKING_URI=" in run_options and "RAYML_HOME=/mnt/shared" in run_options  # shared storage


def test_rayservice_serve_config_is_the_rayml_serve_build_output(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from rayml.config import ServeJobConfig, load_config
    from rayml.serve import build_serve_config
    from rayml.testing import register_tiny_model

    monkeypatch.delenv("RAYML_SERVE_API_KEYS", raising=False)
    spec = importlib.util.spec_from_file_location("render_rayservice", KUBERAY / "render_rayservice.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)

    register_tiny_model(registry, "sales-model", seed=0)  # what `rayml train --config jobs/configs/train.yaml` registers
    cfg = load_config(ServeJobConfig, ROOT / "jobs" / "configs" / "serve.yaml", ["serve.host=0.0.0.0"])
    built = yaml.safe_load(build_serve_config(cfg, registry))  # = rayml serve build --config ... --set serve.host=0.0.0.0
    app_spec = built["applications"][0]["args"]["spec"]
    assert app_spec["tracking_uri"] == registry.tracking_uri  # the one machine-local value: the cluster gets its MLflow URL
    app_spec["tracking_uri"] = render.CLUSTER_TRACKING_URI

    manifest = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    shipped = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert _route_salts(built) == [app_spec["route_salt"]] * 2  # a fresh secret per build (sticky-key hashing) ...
    assert _route_salts(shipped) == [_route_salts(shipped)[0]] * 2
    app_spec["route_salt"] = _route_salts(shipped)[0]  # ... so it is the one value not compared
    assert shipped == built, "regenerate it: python clusters/kuberay/render_rayservice.py --example"
    again = yaml.safe_load(render.serve_config(render.CLUSTER_TRACKING_URI, registry))
    assert _route_salts(again)[0] != _route_salts(shipped)[0]
    again["applications"][0]["args"]["spec"]["route_salt"] = app_spec["route_salt"]
    again["applications"][0]["deployments"][0]["user_config"]["route_salt"] = app_spec["route_salt"]
    assert again == built
    env = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": render.CLUSTER_TRACKING_URI} in env


def _route_salts(serve_config: dict) -> list[str]:
    """The route salt of the build's spec and of the ingress' user_config (one dict, one salt, in a build)."""
    app = serve_config["applications"][0]
    salts = [app["args"]["spec"]["route_salt"], app["deployments"][0]["user_config"]["route_salt"]]
    assert all(len(bytes.fromhex(s)) == 16 for s in salts), salts
    return salts


# --- where the CRDs come from: $RAYML_KUBERAY_CRDS, then ../shared/kuberay-crds, then the download cache ------------
class FakeGitHub:
    """Serves made-up CRD files (their checksums pinned by the test) and records every request."""

    def __init__(self, fail: Exception | None = None, corrupt: bool = False) -> None:
        self.fail, self.corrupt, self.urls, self.timeouts = fail, corrupt, [], []

    def __call__(self, url: str, timeout_s: float) -> bytes:
        self.urls.append(url)
        self.timeouts.append(timeout_s)
        if self.fail is not None:
            raise self.fail
        return _fake_crd(url.rsplit("/", 1)[-1]) + (b"tampered" if self.corrupt else b"")


def _fake_crd(name: str) -> bytes:
    return f"kind: CustomResourceDefinition  # {name}\n".encode()


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    import hashlib

    monkeypatch.setattr(kuberay_crds, "SHA256", {n: hashlib.sha256(_fake_crd(n)).hexdigest() for n in kuberay_crds.FILES})
    return {name: tmp_path / name for name in ("mine", "shared", "cache")}


def _fill(folder: Path, files: tuple[str, ...] = kuberay_crds.FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_bytes(_fake_crd(name))
    return folder


def _find(places: dict[str, Path], get: FakeGitHub, env: dict[str, str] | None = None) -> Path:
    return kuberay_crds.find_crds(env=env or {}, shared=places["shared"], cache_root=places["cache"], get=get)


def test_crds_env_var_wins_over_shared_and_cache(places: dict[str, Path]) -> None:
    _fill(places["shared"]), _fill(places["cache"] / kuberay_crds.COMMIT)
    github = FakeGitHub()
    assert _find(places, github, {kuberay_crds.ENV_VAR: str(_fill(places["mine"]))}) == places["mine"]
    assert github.urls == []


def test_crds_env_var_naming_an_incomplete_folder_fails_without_falling_back(places: dict[str, Path]) -> None:
    _fill(places["shared"])
    _fill(places["mine"], kuberay_crds.FILES[:2])
    github = FakeGitHub()
    with pytest.raises(kuberay_crds.CrdsNotFoundError) as e:
        _find(places, github, {kuberay_crds.ENV_VAR: str(places["mine"])})
    assert f"${kuberay_crds.ENV_VAR}={places['mine']}: missing ray.io_rayservices.yaml" in str(e.value)
    assert github.urls == []  # a typo in the variable must not silently validate against another copy


def test_crds_shared_folder_comes_next(places: dict[str, Path]) -> None:
    _fill(places["cache"] / kuberay_crds.COMMIT)
    shared = _fill(places["shared"])
    github = FakeGitHub()
    assert _find(places, github) == shared
    assert github.urls == []


def test_crds_cache_comes_last_and_is_filled_once_from_the_pinned_commit(places: dict[str, Path]) -> None:
    _fill(places["shared"], kuberay_crds.FILES[:1])  # an incomplete shared folder does not count
    github = FakeGitHub()
    cache = places["cache"] / kuberay_crds.COMMIT
    assert _find(places, github) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(kuberay_crds.FILES)
    assert len(github.urls) == 3 and all(f"/kuberay/raw/{kuberay_crds.COMMIT}/ray-operator/" in u for u in github.urls)
    assert max(github.timeouts) <= 5  # offline, a fresh clone's test run must not hang on the download
    assert _find(places, github) == cache and len(github.urls) == 3  # cached: no second download
    assert [p.name for p in places["cache"].iterdir()] == [kuberay_crds.COMMIT]  # no temp folder left behind


def test_crds_a_download_with_the_wrong_checksum_is_not_cached(places: dict[str, Path]) -> None:
    with pytest.raises(kuberay_crds.CrdsNotFoundError) as e:
        _find(places, FakeGitHub(corrupt=True))
    assert "has SHA-256" in str(e.value) and not (places["cache"] / kuberay_crds.COMMIT).exists()
    assert list(places["cache"].iterdir()) == []


def test_crds_nowhere_fails_listing_what_was_tried_and_the_three_ways_to_provide_them(places: dict[str, Path]) -> None:
    github = FakeGitHub(fail=TimeoutError("timed out"))
    with pytest.raises(kuberay_crds.CrdsNotFoundError) as e:
        _find(places, github)
    message = str(e.value)
    assert len(github.urls) == 1  # the first failure stops the download
    assert f"{places['shared']}: no such folder" in message
    assert f"{places['cache'] / kuberay_crds.COMMIT}: not cached, and the download failed: TimeoutError: timed out" in message
    assert f"export {kuberay_crds.ENV_VAR}=" in message and str(places["shared"]) in message
    assert "python -m tests.kuberay_crds" in message
