"""The ``serve:`` and ``rollout:`` sections: the Ray Serve application and progressive delivery of a candidate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from rayml.config._base import Name, _Section, check_name
from rayml.config.monitor import DriftConfig


def _version_ref(v: int | str) -> int | str:
    """A served version is a positive number or an alias name (a string of digits is a number)."""
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if isinstance(v, int) and v < 1:
        raise ValueError(f"version {v} is not a positive whole number")
    if isinstance(v, str):
        check_name(v)
    return v


class AutoscalingSettings(_Section):
    """Ray Serve autoscaling of one deployment (replaces a fixed ``num_replicas``)."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (0 scales to zero when idle).")
    max_replicas: int = Field(default=4, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(default=8.0, gt=0.0, description="Ongoing requests per replica to aim for.")
    upscale_delay_s: float = Field(default=5.0, ge=0.0, description="Sustained load needed before adding replicas.")
    downscale_delay_s: float = Field(default=60.0, ge=0.0, description="Sustained idleness needed before removing replicas.")

    @model_validator(mode="after")
    def _min_below_max(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        return self


class IngressConfig(_Section):
    """The HTTP ingress deployment (protocols, auth, validation, routing, shadowing)."""

    num_replicas: int = Field(default=1, ge=1, description="Ingress replicas (ignored when `autoscaling` is set).")
    autoscaling: AutoscalingSettings | None = Field(default=None, description="Autoscale the ingress; null = fixed.")
    num_cpus: float = Field(default=0.5, ge=0.0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(default=256, ge=1, description="Concurrent requests one ingress replica accepts.")
    max_model_mb: float = Field(
        default=64.0,
        ge=0.0,
        description="`placement: auto` runs a model in the ingress (one hop) when every served version's ONNX file is "
        "at most this many MiB; larger models get their own deployments.",
    )


class ModelDeploymentConfig(_Section):
    """The Ray Serve deployment that runs one model version (ONNX Runtime, dynamic batching)."""

    num_replicas: int = Field(default=1, ge=1, description="Replicas per version (ignored when `autoscaling` is set).")
    autoscaling: AutoscalingSettings | None = Field(default=None, description="Autoscale each version; null = fixed.")
    num_cpus: float = Field(default=0.5, ge=0.0, description="CPUs reserved per replica.")
    max_ongoing_requests: int = Field(default=64, ge=1, description="Concurrent requests one replica accepts.")
    max_batch_size: int = Field(default=16, ge=1, description="Most requests merged into one ONNX Runtime call.")
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0.0,
        description="How long a batch waits for more requests before it runs anyway. 0: it runs at once with whatever "
        "has queued meanwhile, so batches still form under load and a lone request never waits.",
    )
    intra_op_threads: int = Field(default=1, ge=1, description="ONNX Runtime threads per call.")
    max_models_per_replica: int = Field(
        default=8, ge=1, description="Model sets only: segment models kept loaded per replica (LRU beyond this)."
    )
    max_constructor_retry_count: int = Field(
        default=3, ge=1, description="Replica start attempts before the deployment is reported failed."
    )

    @model_validator(mode="after")
    def _batch_fits_concurrency(self) -> ModelDeploymentConfig:
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) is more than max_ongoing_requests ({self.max_ongoing_requests}): "
                "a batch could never fill"
            )
        return self


class ServedVersion(_Section):
    """One version of a served model and its share of the traffic."""

    version: int | str = Field(
        description="Version number, or an alias (`production`, `canary`, ...) resolved to a number when deployed."
    )
    weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Share of the model's traffic; weights sum to 1.")

    _valid_version = field_validator("version")(_version_ref)


class ShadowSettings(_Section):
    """Mirror a share of a model's requests to another version; its answers are compared, never returned."""

    version: int | str = Field(description="Shadow version number or alias (deployed with weight 0 if not listed).")
    percent: float = Field(default=10.0, ge=0.0, le=100.0, description="Percent of requests mirrored.")

    _valid_version = field_validator("version")(_version_ref)


class CaptureConfig(_Section):
    """Payload capture of one served model: sampled requests and their answers, written off the response path."""

    percent: float = Field(
        default=100.0,
        ge=0.0,
        le=100.0,
        description="Percent of requests captured (sampled per request; a request's primary and shadow answers are "
        "captured together). Only captured predictions can be joined to labels.",
    )
    destination: str | None = Field(
        default=None,
        description="Local folder or pyarrow URI (s3://, gs://) for the Parquet files, partitioned by model / version / "
        "hour, and for the labels posted to the model; null = $RAYML_HOME/captures.",
    )
    exclude_columns: list[str] = Field(
        default_factory=list,
        description="Input columns never written (personal or sensitive data): names or fnmatch patterns, matched "
        "case-insensitively; the predictions are still captured. The model's own data.sensitive_columns are never "
        "captured either (unless its data.allow_sensitive_in lists `capture`).",
    )
    queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Captured requests waiting to be written, per ingress replica; beyond it new ones are dropped and "
        "counted (rayml_capture_dropped_total), never delaying or failing a request.",
    )
    flush_interval_s: float = Field(default=10.0, gt=0.0, description="Longest time a captured row waits to be written.")
    max_rows_per_file: int = Field(default=100_000, ge=1, description="A file is written once it has this many rows.")


class ServedModelConfig(_Section):
    """How one registered model is served: its versions and weights, shadow, stickiness and replicas."""

    versions: list[ServedVersion] = Field(min_length=1, description="Served versions with their weights (sum to 1).")
    shadow: ShadowSettings | None = Field(default=None, description="Mirror traffic to a version; null = none.")
    sticky_header: str | None = Field(
        default="x-rayml-route-key",
        description="Request header whose value pins a caller to a version (A/B); null = every request split at random.",
    )
    placement: Literal["auto", "ingress", "replicas"] = Field(
        default="auto",
        description="Where the versions run: `ingress` = inside the ingress replicas (one hop, no dynamic batching; "
        "scales with serve.ingress), `replicas` = one Ray Serve deployment per version (two hops; own replicas, "
        "batching and autoscaling), `auto` = `ingress` for a single model whose versions' ONNX files are at most "
        "serve.ingress.max_model_mb and whose `deployment` asks for one fixed replica, else `replicas`. Model sets "
        "always use `replicas`.",
    )
    deployment: ModelDeploymentConfig = Field(
        default_factory=ModelDeploymentConfig,
        description="Replicas, batching and resources of each version (placement `replicas`; `ingress` uses only "
        "intra_op_threads).",
    )
    capture: CaptureConfig | None = Field(
        default=None,
        description="Capture requests and answers (every version: primary, pinned and shadow) for the live-quality "
        "join with ground-truth labels (`POST /v2/models/{name}/labels`, `rayml labels upload`); null = no capture.",
    )

    @field_validator("versions")
    @classmethod
    def _weights_sum_to_one(cls, versions: list[ServedVersion]) -> list[ServedVersion]:
        listed = [v.version for v in versions]
        problems = []
        dupes = sorted({str(v) for v in listed if listed.count(v) > 1})
        if dupes:
            problems.append(f"versions {dupes} are listed more than once")
        total = sum(v.weight for v in versions)
        if abs(total - 1.0) > 1e-6:
            shown = ", ".join(f"{v.version}={v.weight:g}" for v in versions)
            problems.append(f"weights ({shown}) sum to {total:g}, not 1")
        if problems:
            raise ValueError("; ".join(problems))
        return versions


class ApiKeyConfig(_Section):
    """One API key; callers send it as ``Authorization: Bearer <key>``."""

    key: SecretStr = Field(
        min_length=16,
        description="The secret (16+ characters). Prefer $RAYML_SERVE_API_KEYS to files. Shown as ********** in logs, "
        "MLflow params and dumps; only a salted, slow digest of it is deployed.",
    )
    name: str = Field(default="", description="A label for logs (the key itself is never logged).")
    models: list[str] | None = Field(default=None, description="Models this key may call; null = every model.")


class ServeConfig(_Section):
    """`rayml serve ...`: one Ray Serve application serving registered models."""

    app_name: Name = Field(default="rayml", description="Ray Serve application name.")
    route_prefix: str = Field(default="/", description="HTTP route prefix of the application.")
    host: str = Field(default="127.0.0.1", description="HTTP host of the Serve proxy (0.0.0.0 to listen on every interface).")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    models: dict[Name, ServedModelConfig] = Field(default_factory=dict, description="Registered model name -> how it is served.")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="The HTTP ingress deployment.")
    max_batch_rows: int = Field(default=1000, ge=1, description="Most rows one request may carry (413 beyond).")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body in bytes (413 beyond).")
    allow_missing_values: bool = Field(
        default=False,
        description="Accept null/NaN in numeric inputs (the model imputes the training mean); false rejects them (422).",
    )
    request_timeout_s: float = Field(default=30.0, gt=0.0, description="Longest wait for a model's answer (504 beyond).")
    request_read_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        description="Longest time a request body may take to arrive (408 beyond): a slow upload cannot hold the ingress.",
    )
    api_keys: list[ApiKeyConfig] = Field(
        default_factory=list, description="API keys (added to $RAYML_SERVE_API_KEYS); none anywhere = no auth."
    )
    shadow_queue_size: int = Field(
        default=64, ge=1, description="Shadow calls in flight per ingress replica; more are dropped and counted."
    )
    shadow_timeout_s: float = Field(default=10.0, gt=0.0, description="A shadow call running longer counts as an error.")
    stats_flush_interval_s: float = Field(
        default=1.0, gt=0.0, description="How often each ingress replica sends its per-version counts to the stats deployment."
    )
    health_check_interval_s: float = Field(
        default=2.0, gt=0.0, description="How often the ingress checks that each version's deployment answers."
    )
    deploy_timeout_s: float = Field(default=300.0, gt=0.0, description="Longest wait for the application to be running.")
    drift_window_s: float = Field(
        default=300.0,
        gt=0.0,
        description="Online drift: length of the tumbling window (wall clock, aligned across replicas) in which served "
        "rows are counted into the reference bins; the drift gauges show the current window once it has "
        "drift.min_rows rows, else the last complete one.",
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="Online drift thresholds (status per feature and version) and min_rows."
    )
    follow_aliases: bool = Field(
        default=False,
        description="Follow the registry: a served alias (`version: production`) that moves is redeployed by itself "
        "(blue/green, no `serve up`), and moving `rollout_alias` to a version whose gate tag is `passed` starts a "
        "rollout of it (refused otherwise, with the reason in the model's rollout audit log). Runs as a detached Ray "
        "actor next to the application; `rayml serve down` stops it.",
    )
    rollout_alias: str | None = Field(
        default="canary",
        description="With follow_aliases: moving this alias to a version starts its rollout (rollout: settings); the "
        "pipeline's register stage moves `canary`, so a pipeline run then rolls out without any serving command; "
        "null = aliases never start rollouts.",
    )
    alias_poll_interval_s: float = Field(default=10.0, gt=0.0, description="How often the aliases are checked.")
    live_quality_window_s: float = Field(
        default=3600.0,
        gt=0.0,
        description="Live quality (rayml_live_quality) is computed over the labelled predictions made in this trailing "
        "window; the rollout quality gate reads the same counts.",
    )
    live_join_max_predictions: int = Field(
        default=200_000,
        ge=1,
        description="Captured predictions the serving app keeps waiting for their labels (oldest forgotten first); a "
        "label that arrives later is still stored and joined by `rayml monitor quality`, only not live.",
    )
    metrics_export_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Prometheus export port of a local Ray started by `rayml serve up`; null = Ray's choice.",
    )

    @field_validator("rollout_alias")
    @classmethod
    def _valid_alias(cls, v: str | None) -> str | None:
        if v is not None:
            check_name(v)
        return v

    @field_validator("route_prefix")
    @classmethod
    def _valid_prefix(cls, v: str) -> str:
        if not v.startswith("/") or (len(v) > 1 and v.endswith("/")):
            raise ValueError(f"route_prefix {v!r} must start with '/' and not end with one (e.g. / or /ml)")
        return v


class RolloutConfig(_Section):
    """`rayml rollout start`: shadow phase, canary steps and the checks that gate each step."""

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Candidate traffic percent at each canary step, increasing, ending at 100.",
    )
    interval_s: float = Field(default=60.0, gt=0.0, description="How long each step runs before it is checked.")
    shadow_s: float = Field(default=0.0, ge=0.0, description="Shadow phase before the first step (0 = none).")
    shadow_percent: float = Field(
        default=100.0, ge=0.0, le=100.0, description="Percent of baseline traffic mirrored to the candidate (all phases)."
    )
    manual_steps: list[float] = Field(
        default_factory=list, description="Steps (percents) that wait for `rayml rollout approve` once their check passes."
    )
    max_error_rate_increase: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="How much higher the candidate's share of 5xx answers may be than the baseline's on the same "
        "traffic in the same window (0.01 = one point). A check fails only when the excess is beyond this with "
        "`confidence` (one-sided Newcombe/Wilson score bound), so a trickle of inputs that fail every version never "
        "rolls back a good candidate. 4xx answers (caller mistakes) never count as errors; the candidate's share of "
        "4xx is compared with the baseline's the same way (a candidate that refuses what the baseline accepts). "
        "Without baseline answers to compare with (a 100% step: the baseline's counts of the earlier steps are used; "
        "none at all, or the shadow phase, where the mirrored requests are ones the baseline answered), the "
        "candidate's share itself is bounded by this.",
    )
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1.0,
        description="Confidence of the error and rejection comparisons (one-sided): higher = fewer rollbacks of a "
        "good candidate by chance, more requests needed to catch a bad one.",
    )
    max_p95_latency_ratio: float | None = Field(
        default=1.5, gt=0.0, description="Largest candidate p95 / baseline p95 latency; null = not checked."
    )
    max_p95_latency_ms: float | None = Field(
        default=None, gt=0.0, description="Largest candidate p95 latency in ms; null = not checked."
    )
    max_disagreement: float | None = Field(
        default=0.25,
        ge=0.0,
        description="Largest candidate-vs-baseline disagreement on mirrored requests: sum|diff| / sum|baseline| for "
        "regression, share of differing classes for binary; null = not checked.",
    )
    failure_budget: int = Field(
        default=1,
        ge=0,
        description="Failed checks tolerated (each retries the step); one more rolls back. Inconclusive checks (too "
        "little traffic) do not count.",
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        description="Requests a check needs from the candidate (and from the baseline, else the baseline's counts of "
        "the rollout's earlier windows are used). Fewer: the check is inconclusive and the step holds for another "
        "window (never promoted or rolled back on too little traffic, e.g. while the stats replica restarts).",
    )
    min_shadow_comparisons: int = Field(
        default=20, ge=1, description="Mirrored rows a disagreement check needs (fewer: not judged at a canary step)."
    )
    max_quality_regression: float | None = Field(
        default=None,
        ge=0.0,
        description="Quality gate on ground-truth labels (needs serve.models.<m>.capture and labels posted to the "
        "app): how much worse the candidate's live quality may be than the baseline's on the labelled predictions "
        "made since the rollout began (the candidate's mirrored answers count). Classification: error-rate points "
        "(0.02 = two points less accurate); regression: relative MAE (0.05 = 5% larger mean absolute error). A check "
        "fails only when the excess is beyond this with `confidence` (a one-sided bound: Newcombe/Wilson for error "
        "rates, Welch's normal bound for MAE). Fewer than min_labels labelled predictions of either version: "
        "inconclusive (the step holds). null = not checked.",
    )
    min_labels: int = Field(
        default=30, ge=1, description="Labelled predictions of each version the quality gate needs before it judges."
    )
    poll_interval_s: float = Field(default=1.0, gt=0.0, description="How often the controller wakes up.")
    state_dir: str | None = Field(
        default=None, description="Where rollout state and the audit log are kept; null = $RAYML_HOME/rollouts."
    )

    @model_validator(mode="after")
    def _valid_steps(self) -> RolloutConfig:
        problems = []
        s = self.steps
        if not s:
            problems.append("steps is empty")
        elif any(not 0 < x <= 100 for x in s) or any(b <= a for a, b in zip(s, s[1:], strict=False)) or s[-1] != 100:
            problems.append(f"steps {s} must be increasing percents in (0, 100] that end at 100")
        extra = [m for m in self.manual_steps if m not in s]
        if extra:
            problems.append(f"manual_steps {extra} are not among steps {s}")
        if problems:
            raise ValueError("; ".join(problems))
        return self
