"""Small serve app specs for unit tests (no Ray): one model per keyword, its versions' weights as the value."""

from __future__ import annotations

from rayml.serve._spec import AppSpec, ModelSpec, VersionSpec


def app_spec(**weights_by_model: dict[int, float]) -> AppSpec:
    models = {
        name: ModelSpec(
            name=name,
            versions=[VersionSpec(version=v, weight=w, deployment=f"model-{name}-v{v}") for v, w in sorted(ws.items())],
        )
        for name, ws in weights_by_model.items()
    }
    return AppSpec(
        app_name="app",
        tracking_uri="sqlite:///x.db",
        models=models,
        max_batch_rows=10,
        max_request_bytes=1024,
        allow_missing_values=False,
        request_timeout_s=1,
        shadow_queue_size=1,
        shadow_timeout_s=1,
        stats_flush_interval_s=1,
        health_check_interval_s=1,
    )
