"""The ``registry:`` section: the MLflow tracking server and model registry (used by every job)."""

from __future__ import annotations

from pydantic import Field

from rayml.config._base import _Section


class RegistryConfig(_Section):
    """The MLflow tracking server and model registry."""

    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI or sqlite under $RAYML_HOME."
    )
    experiment: str = Field(default="rayml", description="MLflow experiment for runs.")
    register_version: bool = Field(default=True, description="Register the trained model as a new version.")
    alias: str | None = Field(
        default=None, description="Alias to point at the new version (e.g. `production` for a first model); null = none."
    )
