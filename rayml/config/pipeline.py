"""The ``pipeline:`` section: stages, state and promotion of continuous training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayml.config._base import Name, _Section


class PipelineConfig(_Section):
    """Continuous training: validate new data -> train or tune -> gate -> register -> roll out or promote."""

    name: Name | None = Field(
        default=None, description="Pipeline name (its state folder and MLflow run names); null = model.name."
    )
    gate_data: str | None = Field(
        default=None,
        description="Labelled, fixed validation data the gate judges candidate and production on (parquet/CSV path, "
        "directory or URI); null = the held-out validation split of the new data (data.validation_fraction, "
        "train.seed).",
    )
    block_on_drift: bool = Field(
        default=False,
        description="Fail the data-validation stage when the new data drifts (any feature at alert) from the production "
        "model's reference; false = report the drift (drift.json/html in the run folder) and go on: drift is usually "
        "why a model is retrained.",
    )
    rollout: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Last stage. auto: when the serve application (serve.app_name) is up and serves model.name, roll the "
        "candidate out through it (rollout.*) and wait for promote or rollback; otherwise promote without serving (see "
        "promote_without_serving). always: serving must be up (else the stage fails). never: never roll out.",
    )
    promote_without_serving: bool = Field(
        default=True,
        description="When no rollout runs: point `production` at the candidate (the old version becomes `previous`), so "
        "batch jobs on NAME@production pick it up. false = leave it as `canary` for a person to promote.",
    )
    rollout_timeout_s: float = Field(
        default=3600.0,
        gt=0.0,
        description="Longest wait for a rollout to promote or roll back; past it the stage fails (the rollout goes on; "
        "re-running the pipeline waits for it again).",
    )
    serve_config: str | None = Field(
        default=None,
        description="A serve YAML (as for `rayml serve up`) whose serve/rollout sections are used; null = this file's "
        "serve/rollout sections.",
    )
    state_dir: str | None = Field(
        default=None,
        description="Where run state lives (<state_dir>/<name>/<run-id>/state.json, drift report, gate report); local "
        "dir or pyarrow URI; null = $RAYML_HOME/pipelines.",
    )
    experiment: str = Field(default="rayml-pipeline", description="MLflow experiment of the pipeline runs.")
