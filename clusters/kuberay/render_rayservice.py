"""Regenerate ``spec.serveConfigV2`` of clusters/kuberay/rayservice.yaml from the example serving config.

    python clusters/kuberay/render_rayservice.py [--tracking-uri URI] [--resolve-uri URI] [--set serve.port=8000 ...]
    python clusters/kuberay/render_rayservice.py --example    # how the shipped manifest is made (no MLflow needed)

It is ``rayml serve build --config jobs/configs/serve.yaml --set serve.host=0.0.0.0`` (Serve must listen on the pod's
interfaces, not 127.0.0.1), with one difference: the model versions are resolved in the registry at ``--resolve-uri``
(default: ``--tracking-uri``; e.g. ``http://127.0.0.1:5000`` through ``kubectl port-forward svc/mlflow 5000``) while
the replicas are told ``--tracking-uri``, the MLflow server as the cluster reaches it. Everything else is the build
output, byte for byte; tests/unit/test_cluster_manifests.py checks that the manifest matches. ``--example`` resolves
against a throwaway registry holding one tiny ``sales-model`` (version 1), as a fresh cluster would after one
``rayml train --config jobs/configs/train.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "clusters" / "kuberay" / "rayservice.yaml"
SERVE_CONFIG = ROOT / "jobs" / "configs" / "serve.yaml"
CLUSTER_TRACKING_URI = "http://mlflow.rayml.svc.cluster.local:5000"
CLUSTER_OVERRIDES = ["serve.host=0.0.0.0"]
MARKER = "  serveConfigV2: |\n"


def serve_config(tracking_uri: str, registry=None, overrides: list[str] | None = None) -> str:
    """The ``rayml serve build`` text for the example config, as the cluster's replicas must see it."""
    from rayml.config import ServeJobConfig, load_config
    from rayml.registry import Registry
    from rayml.serve import build_serve_config

    registry = registry or Registry(tracking_uri)
    cfg = load_config(ServeJobConfig, SERVE_CONFIG, [*CLUSTER_OVERRIDES, *(overrides or [])])
    text = build_serve_config(cfg, registry)
    if registry.tracking_uri != tracking_uri:
        resolved_line = f"tracking_uri: {registry.tracking_uri}\n"
        if text.count(resolved_line) != 1:
            raise SystemExit(f"cannot find exactly one {resolved_line.strip()!r} in the build output")
        text = text.replace(resolved_line, f"tracking_uri: {tracking_uri}\n")
    return text


def example_serve_config(tracking_uri: str = CLUSTER_TRACKING_URI, overrides: list[str] | None = None) -> str:
    """:func:`serve_config` resolved against a throwaway registry that holds one tiny ``sales-model`` (version 1)."""
    import os
    import tempfile
    from unittest import mock

    from rayml.registry import Registry
    from rayml.testing import register_tiny_model

    with tempfile.TemporaryDirectory(prefix="rayml-render-") as tmp, mock.patch.dict(os.environ, {"RAYML_SERVE_API_KEYS": ""}):
        registry = Registry(f"sqlite:///{tmp}/mlflow.db")
        register_tiny_model(registry, "sales-model", seed=0)
        return serve_config(tracking_uri, registry, overrides)


def embed(manifest: str, config: str) -> str:
    """``manifest`` with its serveConfigV2 block replaced by ``config`` (the block runs to the end of the file)."""
    head, sep, _ = manifest.partition(MARKER)
    if not sep:
        raise SystemExit(f"{MANIFEST}: no line {MARKER.strip()!r}")
    return head + sep + "".join(f"    {line}" if line.strip() else "\n" for line in config.splitlines(keepends=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=CLUSTER_TRACKING_URI, help="MLflow as the cluster reaches it")
    parser.add_argument("--resolve-uri", default=None, help="MLflow as this machine reaches it (default: --tracking-uri)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: section.field=value")
    parser.add_argument("--example", action="store_true", help="resolve against a throwaway registry with sales-model v1")
    args = parser.parse_args()
    from rayml.errors import UserError

    try:
        if args.example:
            config = example_serve_config(args.tracking_uri, args.overrides)
        else:
            from rayml.registry import Registry

            config = serve_config(args.tracking_uri, Registry(args.resolve_uri or args.tracking_uri), args.overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    MANIFEST.write_text(embed(MANIFEST.read_text(), config))
    print(f"wrote {MANIFEST.relative_to(ROOT)}. Next: kubectl apply -f {MANIFEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
