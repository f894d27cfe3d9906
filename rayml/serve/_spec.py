"""The deployable spec of a Serve application: the user's config with every version resolved to a number.

An :class:`AppSpec` is plain JSON. It is the ingress deployment's ``user_config`` (so weights and shadow change by
``reconfigure()``, without restarting a replica), the argument of ``rayml.serve.app:build_app`` for ``serve deploy``
and KubeRay, and what the rollout controller reads back from Serve, edits and redeploys.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from rayml.config import (
    CaptureConfig,
    DriftConfig,
    IngressConfig,
    ModelDeploymentConfig,
    ServeConfig,
    ServedModelConfig,
    ServeJobConfig,
)
from rayml.errors import ConfigError, UserError
from rayml.models import KIND_MODEL_SET, ModelDir
from rayml.serve._router import ModelRoute, Shadow, check_weights

logger = logging.getLogger("rayml.serve")

INGRESS = "Ingress"
STATS = "RaymlStats"
_SERVE_DIR = Path(__file__).resolve().parent


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionSpec(_Spec):
    """One served version: its deployment and weight."""

    version: int = Field(description="Registered version number.")
    weight: float = Field(description="Share of the model's traffic.")
    deployment: str = Field(description="Serve deployment that runs it.")
    local_path: str | None = Field(default=None, description="Model dir already on this machine (skips the download).")
    offline_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="The version's validation metrics as registered (val_rmse, val_accuracy, ...): exported next to "
        "its live quality (rayml_offline_quality).",
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_fault(cls, data: Any) -> Any:
        # specs deployed by rayml before the fault hook moved to rayml.testing carry `fault: null`: a running
        # application (and a rendered manifest) must still read back after an upgrade
        if isinstance(data, dict) and "fault" in data:
            data = {k: v for k, v in data.items() if k != "fault"}
        return data


class ShadowSpec(_Spec):
    version: int = Field(description="Mirrored version.")
    percent: float = Field(description="Percent of requests mirrored.")


class CaptureSpec(_Spec):
    """Payload capture of one model (serve.models.<m>.capture, with the destination made absolute)."""

    percent: float = Field(description="Percent of requests captured.")
    destination: str = Field(description="Local folder (absolute) or URI of captures and labels.")
    exclude_columns: list[str] = Field(default_factory=list, description="Input columns never written.")
    queue_size: int = Field(description="Captured requests waiting to be written, per ingress replica.")
    flush_interval_s: float = Field(description="Longest wait before captured rows are written.")
    max_rows_per_file: int = Field(description="Rows that make a file be written at once.")


class ModelSpec(_Spec):
    """One served model."""

    name: str = Field(description="Registered model name.")
    kind: Literal["model", "model_set"] = Field(default="model", description="A single model or a many-models set.")
    task: Literal["regression", "binary", "multiclass"] = Field(
        default="regression",
        description="What the versions predict (how shadow disagreement is measured: regression by the relative "
        "absolute difference, binary and multiclass by the share of rows whose class changed).",
    )
    versions: list[VersionSpec] = Field(description="Served versions (weighted, zero-weight and shadow).")
    shadow: ShadowSpec | None = Field(default=None, description="Mirrored version, if any.")
    sticky_header: str | None = Field(default=None, description="Route-key header, if any.")
    segment_columns: list[str] = Field(default_factory=list, description="Model sets: the segment key columns.")
    deployment: ModelDeploymentConfig = Field(default_factory=ModelDeploymentConfig, description="Replica settings.")
    placement: Literal["ingress", "replicas"] = Field(
        default="replicas",
        description="Where every version of the model runs: in the ingress replicas, or in one deployment per version "
        "(`auto` in the config is resolved to one of them when the application is deployed).",
    )
    capture: CaptureSpec | None = Field(default=None, description="Payload capture; null = none.")

    @property
    def weights(self) -> dict[int, float]:
        return {v.version: v.weight for v in self.versions}

    def version(self, number: int) -> VersionSpec | None:
        return next((v for v in self.versions if v.version == number), None)

    def deployment_of(self, number: int) -> str:
        """The deployment of version ``number``, which must be one of :attr:`versions`."""
        spec = self.version(number)
        assert spec is not None, f"version {number} is not served for {self.name}"
        return spec.deployment

    def route(self, rng: Any = None, salt: str | None = None) -> ModelRoute:
        """The routing table; ``salt`` is the application's hex route salt (:attr:`AppSpec.route_salt`)."""
        shadow = Shadow(self.shadow.version, self.shadow.percent) if self.shadow else None
        kwargs = {"rng": rng} if rng is not None else {}
        return ModelRoute(
            self.name,
            self.weights,
            shadow=shadow,
            sticky_header=self.sticky_header,
            salt=bytes.fromhex(salt) if salt else b"",
            **kwargs,
        )


KDF_ITERATIONS = 200_000  # PBKDF2-HMAC-SHA256: ~60 ms a guess on one core; the ingress pays it once per distinct key
SALT_BYTES = 16


class AuthKey(_Spec):
    """An API key as the ingress knows it: a salted, slow digest (the key itself never leaves the deploying process)."""

    digest: str = Field(description="PBKDF2-HMAC-SHA256 of the key with `salt` and `iterations`, hex.")
    salt: str | None = Field(
        default=None,
        description="Hex salt of the digest (one random salt per application, kept private in $RAYML_HOME/private, so "
        "the same keys give the same spec on every `serve up`). null: an unsalted digest of an older rayml, which "
        "matches no key (redeploy with `rayml serve up`).",
    )
    iterations: int = Field(default=KDF_ITERATIONS, ge=1, description="PBKDF2 iterations of the digest.")
    name: str = Field(default="", description="Label for logs.")
    models: list[str] | None = Field(default=None, description="Models the key may call; null = all.")


class AppSpec(_Spec):
    """Everything the ingress needs (its ``user_config``) and everything needed to rebuild the application."""

    app_name: str
    route_prefix: str = "/"
    tracking_uri: str
    models: dict[str, ModelSpec]
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="Ingress replicas and resources.")
    max_batch_rows: int
    max_request_bytes: int
    allow_missing_values: bool
    request_timeout_s: float
    request_read_timeout_s: float = Field(
        default=ServeConfig.model_fields["request_read_timeout_s"].default,
        description="Longest time a request body may take to arrive (serve.request_read_timeout_s).",
    )
    shadow_queue_size: int
    shadow_timeout_s: float
    stats_flush_interval_s: float
    health_check_interval_s: float
    auth: list[AuthKey] = Field(default_factory=list)
    route_salt: str | None = Field(
        default=None,
        pattern=r"^([0-9a-f]{2}){16,64}$",
        description="Secret hex key of sticky route-key hashing (keyed BLAKE2b), random when the application is first "
        "deployed and kept by every later `serve up` and rollout, so a key keeps its version across restarts while "
        "callers cannot compute which keys land on a canary. `rayml serve build` writes a new one into each manifest "
        "(keep the manifest private; a new salt re-deals every key). null: an application deployed by an older rayml "
        "(unkeyed, predictable hashing until the next `serve up`).",
    )
    drift_window_s: float = Field(
        default=ServeConfig.model_fields["drift_window_s"].default, description="Online drift window (serve.drift_window_s)."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Online drift thresholds (serve.drift).")
    live_quality_window_s: float = Field(
        default=ServeConfig.model_fields["live_quality_window_s"].default,
        description="Trailing window of the live-quality gauges (serve.live_quality_window_s).",
    )
    live_join_max_predictions: int = Field(
        default=ServeConfig.model_fields["live_join_max_predictions"].default,
        description="Captured predictions kept waiting for labels (serve.live_join_max_predictions).",
    )
    revision: int = Field(
        default=0,
        description="Compare-and-swap counter: a change is made against the revision it read and deploys the next "
        "ones (see rayml.serve._apply); 0 for an application not deployed by rayml yet.",
    )

    def to_user_config(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def key_digest(key: SecretStr | str, salt: str, iterations: int = KDF_ITERATIONS) -> str:
    """The digest an :class:`AuthKey` stores: PBKDF2-HMAC-SHA256 of ``key`` with the hex ``salt``, hex."""
    secret = key.get_secret_value() if isinstance(key, SecretStr) else key
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), bytes.fromhex(salt), iterations).hex()


def auth_key(key: SecretStr | str, salt: str, name: str = "", models: list[str] | None = None) -> AuthKey:
    """An :class:`AuthKey` for ``key`` (the digest is slow to compute on purpose)."""
    return AuthKey(digest=key_digest(key, salt), salt=salt, iterations=KDF_ITERATIONS, name=name, models=models)


def app_salt(app_name: str) -> str:
    """The salt of an application's key digests: random once, then kept in ``$RAYML_HOME/private`` (0600).

    Stable, so that `serve up` with the same keys deploys the same spec (a new salt would reconfigure the ingress,
    and restart every replica of a `serve build` manifest).
    """
    import secrets

    from rayml._private import private_fs

    path = private_fs.private_state_dir() / f"serve-salt-{app_name}"
    salt = private_fs.create_private_file_once(path, secrets.token_hex(SALT_BYTES), "the key salt file").strip()
    try:
        if len(bytes.fromhex(salt)) >= SALT_BYTES:
            return salt
    except ValueError:
        pass
    raise ConfigError(
        f"the key salt file {path} does not hold a hex salt of {SALT_BYTES}+ bytes",
        hint=f"remove it (`rm {path}`); the next `rayml serve up` makes a new one",
    )


def new_route_salt() -> str:
    """A fresh random :attr:`AppSpec.route_salt`."""
    import secrets

    return secrets.token_hex(SALT_BYTES)


def keep_route_salt(running: AppSpec | None, spec: AppSpec) -> AppSpec:
    """``spec`` with the running application's route salt, if it has one: redeploying must not re-deal sticky keys."""
    if running is None or running.route_salt is None:
        return spec
    return spec.model_copy(update={"route_salt": running.route_salt})


def deployment_name(model: str, version: int, kind: str = "model") -> str:
    """Serve deployment of one version (model names are validated, so this is a safe identifier)."""
    return f"{'set' if kind == 'model_set' else 'model'}-{model}-v{version}"


def code_version() -> str:
    """A hash of the serving code: deployments restart when it changes and only then (or when their settings do)."""
    h = hashlib.sha256()
    for p in sorted(_SERVE_DIR.glob("*.py")):
        h.update(p.read_bytes())
    predictor = _SERVE_DIR.parent / "models" / "predictor.py"
    if predictor.is_file():
        h.update(predictor.read_bytes())
    return h.hexdigest()[:16]


def check_spec(spec: AppSpec) -> None:
    """Raise :class:`ConfigError` when a spec's routing tables are inconsistent (all problems at once)."""
    problems = []
    for m in spec.models.values():
        try:
            check_weights(m.name, m.weights)
        except ConfigError as e:
            problems.append(e.message)
        if m.shadow is not None and m.version(m.shadow.version) is None:
            problems.append(f"model {m.name!r}: shadow version {m.shadow.version} is not deployed")
    if problems:
        raise ConfigError("; ".join(problems), hint="weights of a model sum to 1 and a shadow version must be deployed")


def resolve_spec(cfg: ServeJobConfig, registry: Any, local: bool = True) -> AppSpec:
    """Resolve aliases to version numbers, check every version exists and read its kind and task.

    Every problem of every model is collected first and raised once.

    Args:
        cfg: the serve job config.
        registry: a :class:`rayml.registry.Registry`.
        local: pass the locally downloaded model dirs to the replicas (same machine); False for cluster manifests.

    Raises:
        ConfigError: ``serve.models`` is empty, or the resolved weights are invalid.
        UserError: a model, alias or version does not exist, or one model's versions mix kinds.
    """
    s: ServeConfig = cfg.serve
    if not s.models:
        raise ConfigError(
            "serve.models is empty: nothing to serve",
            hint="list models under serve.models, e.g. sales-model: {versions: [{version: 1, weight: 1.0}]} "
            "(see jobs/configs/serve.yaml)",
        )
    problems: list[str] = []
    models: dict[str, ModelSpec] = {}
    for name, mc in s.models.items():
        found = _find_versions(name, mc, registry, problems)
        model = _model_spec(name, mc, found, local, s.ingress.max_model_mb, problems) if found.dirs else None
        if model is not None:
            models[name] = model
    if problems:
        raise UserError(
            f"cannot serve the configured models: {'; '.join(problems)}",
            hint="`rayml models list` / `rayml models show NAME` list what is registered; fix serve.models",
        )
    spec = _app_spec(s, registry.tracking_uri, models)
    check_spec(spec)
    return spec


@dataclass
class _Found:
    """One configured model's versions as the registry resolved them."""

    weights: dict[int, float] = field(default_factory=dict)  # version -> weight (the shadow version at 0 if unlisted)
    dirs: dict[int, ModelDir] = field(default_factory=dict)  # version -> its downloaded model directory
    shadow: int | None = None


def _find_versions(name: str, mc: ServedModelConfig, registry: Any, problems: list[str]) -> _Found:
    """Resolve ``name``'s listed versions and shadow to numbers; what is missing or listed twice goes to ``problems``."""
    found = _Found()

    def load(ref: int | str) -> int | None:
        try:
            loaded = registry.load(f"{name}:{ref}" if isinstance(ref, int) else f"{name}@{ref}")
        except UserError as e:
            problems.append(e.message + (f" ({e.hint})" if e.hint else ""))
            return None
        found.dirs[loaded.info.version] = loaded.model_dir
        return loaded.info.version

    for v in mc.versions:
        number = load(v.version)
        if number is not None and number in found.weights:
            problems.append(f"model {name!r}: {v.version!r} resolves to version {number}, which is already listed")
        elif number is not None:
            found.weights[number] = v.weight
    found.shadow = load(mc.shadow.version) if mc.shadow is not None else None
    if found.shadow is not None:
        found.weights.setdefault(found.shadow, 0.0)
    return found


def _model_spec(
    name: str, mc: ServedModelConfig, found: _Found, local: bool, max_model_mb: float, problems: list[str]
) -> ModelSpec | None:
    """The routing table of one model from its resolved versions; None (and a problem) when they mix kinds."""
    dirs = found.dirs
    kinds = {d.kind for d in dirs.values()}
    tasks = {d.task for d in dirs.values()}
    if len(kinds) > 1:
        problems.append(f"model {name!r}: versions mix kinds {sorted(kinds)}; serve model sets and models separately")
    if len(tasks) > 1:
        by_task = ", ".join(f"{t}: {sorted(v for v, d in dirs.items() if d.task == t)}" for t in sorted(tasks))
        problems.append(
            f"model {name!r}: versions predict different tasks ({by_task}); a canary or shadow is compared with the "
            "version it may replace, so serve versions of one task under one name"
        )
    if len(kinds) > 1 or len(tasks) > 1:
        return None
    kind = kinds.pop()
    placement = _placement(name, mc, kind, dirs, max_model_mb, problems)
    segment_columns = []
    for d in dirs.values():
        segment_columns = d.segment_columns
    versions = [
        VersionSpec(
            version=v,
            weight=w,
            deployment=deployment_name(name, v, kind),
            local_path=str(dirs[v].path) if local else None,
            offline_metrics=_offline_metrics(dirs[v]),
        )
        for v, w in sorted(found.weights.items())
    ]
    return ModelSpec(
        name=name,
        kind=cast(Literal["model", "model_set"], kind),  # a ModelDir's kind; the model validates it
        task=cast(Literal["regression", "binary", "multiclass"], tasks.pop()),  # a ModelDir's task; validated here
        versions=versions,
        shadow=ShadowSpec(version=found.shadow, percent=mc.shadow.percent)
        if found.shadow is not None and mc.shadow is not None  # found.shadow is set only from mc.shadow
        else None,
        sticky_header=mc.sticky_header.lower() if mc.sticky_header else None,
        segment_columns=segment_columns if kind == KIND_MODEL_SET else [],
        deployment=mc.deployment,
        placement=placement,
        capture=_capture_spec(mc.capture),
    )


def _offline_metrics(model_dir: ModelDir) -> dict[str, float]:
    """A version's registered validation metrics (``val_*``, finite numbers only)."""
    import math

    metrics = model_dir.meta.get("metrics") or {}
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _capture_spec(c: CaptureConfig | None) -> CaptureSpec | None:
    if c is None or c.percent <= 0:
        return None
    from rayml._private import constants
    from rayml.feedback import local_destination

    destination = c.destination if c.destination is not None else str(constants.default_capture_dir())
    return CaptureSpec(
        percent=c.percent,
        destination=local_destination(destination),
        exclude_columns=list(c.exclude_columns),
        queue_size=c.queue_size,
        flush_interval_s=c.flush_interval_s,
        max_rows_per_file=c.max_rows_per_file,
    )


def _placement(
    name: str, mc: ServedModelConfig, kind: str, dirs: dict[int, ModelDir], max_model_mb: float, problems: list[str]
) -> Literal["ingress", "replicas"]:
    """Where ``name``'s versions run (``serve.models.<name>.placement``, with ``auto`` decided here)."""
    if kind == KIND_MODEL_SET:
        if mc.placement == "ingress":
            problems.append(
                f"model {name!r} is a model set: its segment models are multiplexed over their own replicas, so it "
                "cannot be placed in the ingress (use placement: auto or replicas)"
            )
        return "replicas"
    if mc.placement != "auto":
        return mc.placement
    d = mc.deployment
    if d.autoscaling is not None or d.num_replicas != 1:  # the user asked for replicas of their own
        return "replicas"
    largest = max(_file_mb(dirs[v]) for v in dirs)
    return "ingress" if largest <= max_model_mb else "replicas"


def _file_mb(model_dir: ModelDir) -> float:
    try:
        return model_dir.model_file.stat().st_size / 2**20
    except OSError:  # cannot tell: its own deployment is always safe
        return float("inf")


def keep_placements(cfg: ServeJobConfig, running: AppSpec | None, spec: AppSpec) -> AppSpec:
    """``spec`` with every model that is already served left where it runs now.

    Moving a serving model between the ingress and deployments of its own is not staged (its versions would vanish
    from one place before they answer in the other), so ``placement: auto`` keeps a served model where it is (a larger
    new version, or a new ``max_model_mb``, takes effect once the model is served anew), and an explicit change is
    refused.

    Raises:
        ConfigError: ``serve.models.<name>.placement`` names a placement other than the one the model runs in.
    """
    if running is None:
        return spec
    models, problems = dict(spec.models), []
    for name, m in spec.models.items():
        now = running.models.get(name)
        if now is None or now.placement == m.placement:
            continue
        if cfg.serve.models[name].placement == "auto":
            logger.info("model %s keeps running in %s (placement auto; it is already served there)", name, now.placement)
            models[name] = m.model_copy(update={"placement": now.placement})
        else:
            problems.append(f"model {name!r} runs in {now.placement}; serve.models.{name}.placement asks for {m.placement}")
    if problems:
        raise ConfigError(
            "; ".join(problems) + ": moving a serving model between the ingress and deployments of its own is not done "
            "in place",
            hint="remove the model from serve.models and `rayml serve up`, then add it back with the new placement (or "
            "`rayml serve down` first); placement: auto keeps a served model where it runs",
        )
    return spec.model_copy(update={"models": models})


def _auth_keys(s: ServeConfig) -> list[AuthKey]:
    """Digests of the configured keys and of ``RAYML_SERVE_API_KEYS``' (the keys never leave this process)."""
    from rayml._private import constants

    env_keys = constants.serve_api_keys()
    if not s.api_keys and not env_keys:
        return []
    salt = app_salt(s.app_name)
    keys = [auth_key(k.key, salt, k.name or f"config-{i}", k.models) for i, k in enumerate(s.api_keys)]
    keys += [auth_key(k, salt, f"env-{i}", m) for i, (k, m) in enumerate(env_keys)]
    return keys


def _app_spec(s: ServeConfig, tracking_uri: str, models: dict[str, ModelSpec]) -> AppSpec:
    return AppSpec(
        app_name=s.app_name,
        route_prefix=s.route_prefix,
        tracking_uri=tracking_uri,
        models=models,
        ingress=s.ingress,
        max_batch_rows=s.max_batch_rows,
        max_request_bytes=s.max_request_bytes,
        allow_missing_values=s.allow_missing_values,
        request_timeout_s=s.request_timeout_s,
        request_read_timeout_s=s.request_read_timeout_s,
        shadow_queue_size=s.shadow_queue_size,
        shadow_timeout_s=s.shadow_timeout_s,
        stats_flush_interval_s=s.stats_flush_interval_s,
        health_check_interval_s=s.health_check_interval_s,
        auth=_auth_keys(s),
        route_salt=new_route_salt(),
        drift_window_s=s.drift_window_s,
        drift=s.drift,
        live_quality_window_s=s.live_quality_window_s,
        live_join_max_predictions=s.live_join_max_predictions,
    )
