"""Serving on Ray Serve: ingress (Open Inference Protocol v2, KServe v1), router (weighted canary, sticky A/B,
shadow), ONNX model deployments with dynamic batching, many-models sets, and metric-gated rollouts."""

from rayml.serve._demo import canary_demo
from rayml.serve._deploy import AppState, ServeDeployError, app_state, deploy, drift_status
from rayml.serve._deploy import down as undeploy
from rayml.serve._deploy import status as serve_status
from rayml.serve._rollout import RolloutController, RolloutState
from rayml.serve._rollout_runtime import approve, override, rollback_to_previous, start_rollout, traffic_stats
from rayml.serve.app import build_app, build_serve_config

__all__ = [
    "AppState",
    "RolloutController",
    "RolloutState",
    "ServeDeployError",
    "app_state",
    "approve",
    "build_app",
    "build_serve_config",
    "canary_demo",
    "deploy",
    "drift_status",
    "override",
    "rollback_to_previous",
    "serve_status",
    "start_rollout",
    "traffic_stats",
    "undeploy",
]
