"""Serving on Ray Serve: ingress (Open Inference Protocol v2, KServe v1), router, shadow, rollout."""
