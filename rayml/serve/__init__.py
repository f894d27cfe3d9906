"""Serving on Ray Serve: ingress (Open Inference Protocol v2, KServe v1), router (weighted canary, sticky A/B,
shadow), ONNX model deployments with dynamic batching, many-models sets, and metric-gated rollouts.

Every function here that acts on an application takes the serve job config as its first argument, ``cfg``
(a :class:`rayml.config.ServeJobConfig`: ``serve.app_name`` names the application, ``serve.models`` what it serves,
``rollout`` how a rollout proceeds, ``registry`` where models come from): the same object for ``deploy`` and for
every call after it. Each one connects to the serving Ray by itself (see :func:`connect`). Like every rayml entry
point, ``deploy`` also takes a YAML path or a dict, plus ``overrides`` (``deploy("serve.yaml", overrides={...})``).

Example:
    >>> from rayml.config import ServeJobConfig, load_config
    >>> from rayml.serve import deploy, drift_status, serve_status, start_rollout, undeploy
    >>> cfg = load_config(ServeJobConfig, "jobs/configs/serve.yaml")
    >>> deploy(cfg).url
    'http://127.0.0.1:8000'
    >>> serve_status(cfg).healthy
    True
    >>> start_rollout(cfg, "sales-model", 3)       # canary steps, metric-gated promote or rollback
    >>> drift_status(cfg)["sales-model"]           # online drift per served version
    >>> live_quality(cfg, "sales-model")           # per version, on the labels posted to the app
    >>> undeploy(cfg)

``rayml.serve.app:build_app`` is the import path for ``serve deploy`` and KubeRay (see :func:`build_serve_config`).
Test helpers, including fault injection into model replicas, are in :mod:`rayml.testing`.
"""

from rayml.errors import ServeDeployError, ServeNotRunningError
from rayml.serve._apply import AppState
from rayml.serve._cluster import connect
from rayml.serve._deploy import deploy, down as undeploy, drift_status, live_quality, status as serve_status
from rayml.serve._rollout import RolloutState
from rayml.serve._rollout_runtime import (
    RolloutStatus,
    approve,
    override,
    rollback_to_previous,
    rollout_status,
    start_rollout,
    traffic_stats,
)
from rayml.serve.app import build_serve_config

__all__ = [
    "AppState",
    "RolloutState",
    "RolloutStatus",
    "ServeDeployError",
    "ServeNotRunningError",
    "approve",
    "build_serve_config",
    "connect",
    "deploy",
    "drift_status",
    "live_quality",
    "override",
    "rollback_to_previous",
    "rollout_status",
    "serve_status",
    "start_rollout",
    "traffic_stats",
    "undeploy",
]
