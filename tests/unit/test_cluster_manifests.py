"""Cluster manifests in clusters/ are valid for the tools that consume them, offline.

- Ray cluster launcher YAMLs against Ray's own launcher schema (ray/autoscaler/ray-schema.json of the installed Ray);
- KubeRay RayCluster / RayJob / RayService against the CRDs' openAPIV3Schema, read from ../shared/kuberay-crds/ next to
  the project root (the project's test data, kept outside the repo on purpose);
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

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "clusters" / "kuberay"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
LAUNCHER = sorted((ROOT / "clusters" / "launcher").glob("*.yaml"))
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}


@functools.cache
def _crd(kind: str) -> dict:
    path = CRDS / f"ray.io_{KINDS[kind]}.yaml"
    if not path.is_file():
        raise AssertionError(
            f"KubeRay CRD {path} is missing: these tests read the CRDs from ../shared/kuberay-crds/ next to the project "
            "root. Hint: check out the project beside its shared/ folder (or link it there: ln -s /path/to/shared ../shared)"
        )
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
    from rayml.serve._testing import register_tiny_model

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
    assert shipped == built, "regenerate it: python clusters/kuberay/render_rayservice.py --example"
    assert yaml.safe_load(render.serve_config(render.CLUSTER_TRACKING_URI, registry)) == built
    env = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": render.CLUSTER_TRACKING_URI} in env
