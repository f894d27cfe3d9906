"""A thin facade over the MLflow model registry.

Embedded default: MLflow on SQLite at ``$RAYML_HOME/mlflow.db`` with artifacts under ``$RAYML_HOME/mlartifacts``;
any tracking URI (an MLflow server with S3/GCS artifacts) works unchanged. A version holds the model directory
(``model.onnx``, ``rayml_model.json``, ``reference_stats.json``) and lineage tags.

Refs: ``name@alias`` (e.g. ``sales-model@production``) or ``name:version`` (e.g. ``sales-model:3``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayml._private import constants
from rayml.config import NAME_PATTERN
from rayml.errors import InvalidNameError, ModelNotFoundError, RegistryError

logger = logging.getLogger("rayml.registry")

_NAME_RE = re.compile(NAME_PATTERN)
MODEL_SUBDIR = "model"
MODEL_FILE = "model.onnx"
META_FILE = "rayml_model.json"
REF_STATS_FILE = "reference_stats.json"
PRODUCTION, CANARY, PREVIOUS = "production", "canary", "previous"
TAG_PREFIX = "rayml."


def validate_name(value: str, what: str = "model name") -> str:
    """Names and aliases are ``[A-Za-z0-9_.-]+``: they may end up in paths and URLs."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in (".", ".."):
        raise InvalidNameError(
            f"{what} {value!r} is not allowed",
            hint="use only letters, digits, '_', '.' and '-' (e.g. sales-model, production)",
        )
    return value


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``name@alias`` -> (name, alias, None); ``name:version`` -> (name, None, version); ``name`` -> (name, None, None)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return validate_name(name), validate_name(alias, "alias"), None
    if ":" in ref:
        name, version = ref.split(":", 1)
        if not version.isdigit() or int(version) < 1:
            raise InvalidNameError(
                f"version {version!r} in {ref!r} is not a positive whole number", hint="write NAME:VERSION, e.g. sales-model:3"
            )
        return validate_name(name), None, int(version)
    return validate_name(ref), None, None


@dataclass
class ModelVersionInfo:
    """One registered version."""

    name: str
    version: int
    aliases: list[str]
    run_id: str | None
    source: str
    tags: dict[str, str]
    created_ms: int
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass
class LoadedModel:
    """A model version downloaded and ready: its ONNX predictor, metadata and reference statistics."""

    info: ModelVersionInfo
    path: Path
    meta: dict[str, Any]
    reference_stats: dict[str, Any] = field(default_factory=dict)
    _predictor: Any = None

    @property
    def kind(self) -> str:
        """``"model"`` for a single model, ``"model_set"`` for a family of segment models (see ``ModelSet``)."""
        return str(self.meta.get("kind", "model"))

    @property
    def predictor(self):
        if self._predictor is None:
            from rayml.models.predictor import OnnxPredictor

            self._predictor = OnnxPredictor(self.path / MODEL_FILE)
        return self._predictor

    def predict(self, rows: Any):
        return self.predictor.predict(rows)


class Registry:
    """MLflow-backed model registry.

    Args:
        tracking_uri: MLflow tracking URI; None = ``$MLFLOW_TRACKING_URI`` or SQLite under ``$RAYML_HOME``.

    Example:
        >>> reg = Registry()
        >>> reg.resolve("sales-model@production").version
        3
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri or constants.default_tracking_uri()
        self._embedded = self.tracking_uri.startswith("sqlite:///")
        if self._embedded:
            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        constants.quiet_mlflow()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # --- runs -----------------------------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self._embedded:
            # artifacts live beside the SQLite file: $RAYML_HOME/mlflow.db -> $RAYML_HOME/mlartifacts
            root = Path(self.tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
            root.mkdir(parents=True, exist_ok=True)
            location = (root / validate_name(name, "experiment name")).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def create_run(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags or {})
        return run.info.run_id

    def run_exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    # --- versions -------------------------------------------------------------------------------------------------
    def register(
        self, name: str, model_dir: str | Path, run_id: str, tags: dict[str, str], description: str = ""
    ) -> ModelVersionInfo:
        """Upload ``model_dir`` to the run's artifacts and register it as a new version of ``name``."""
        validate_name(name)
        model_dir = Path(model_dir)
        for required in (MODEL_FILE, META_FILE):
            if not (model_dir / required).is_file():
                raise RegistryError(f"cannot register {model_dir}: {required} is missing")
        self.client.log_artifacts(run_id, str(model_dir), artifact_path=MODEL_SUBDIR)
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        try:
            self.client.get_registered_model(name)
        except Exception:
            try:
                self.client.create_registered_model(name, tags={f"{TAG_PREFIX}managed": "true"})
            except Exception:  # another process created it first
                self.client.get_registered_model(name)
        mv = self.client.create_model_version(
            name, source=f"{artifact_uri}/{MODEL_SUBDIR}", run_id=run_id, tags=tags, description=description
        )
        logger.info("registered %s version %s (run %s)", name, mv.version, run_id)
        return self.get_version(name, int(mv.version))

    def _info(self, mv: Any) -> ModelVersionInfo:
        return ModelVersionInfo(
            name=mv.name,
            version=int(mv.version),
            aliases=sorted(getattr(mv, "aliases", []) or []),
            run_id=mv.run_id,
            source=mv.source,
            tags=dict(mv.tags or {}),
            created_ms=int(mv.creation_timestamp or 0),
            description=mv.description or "",
        )

    def list_models(self) -> list[dict[str, Any]]:
        """Every registered model with its latest version and aliases."""
        out = []
        for rm in self.client.search_registered_models(max_results=1000):
            versions = self.versions(rm.name)
            aliases = self._aliases(rm.name)
            out.append(
                {
                    "name": rm.name,
                    "latest_version": max((v.version for v in versions), default=0),
                    "versions": len(versions),
                    "aliases": dict(sorted(aliases.items())),
                    "kind": (rm.tags or {}).get(f"{TAG_PREFIX}kind", "model"),
                }
            )
        return sorted(out, key=lambda m: m["name"])

    def _require_model(self, name: str) -> None:
        validate_name(name)
        try:
            self.client.get_registered_model(name)
        except Exception as e:
            known = [m.name for m in self.client.search_registered_models(max_results=1000)]
            raise ModelNotFoundError(
                f"model {name!r} is not registered",
                hint=f"registered models: {', '.join(sorted(known)) or '(none yet)'}; train one with `rayml train --config ...`",
            ) from e

    def versions(self, name: str) -> list[ModelVersionInfo]:
        self._require_model(name)
        mvs = self.client.search_model_versions(f"name='{name}'", max_results=10000)
        by_version: dict[int, list[str]] = {}
        for alias, version in self._aliases(name).items():
            by_version.setdefault(version, []).append(alias)
        infos = [self._info(mv) for mv in mvs]
        for info in infos:  # search results do not carry aliases; the registered model does
            info.aliases = sorted(by_version.get(info.version, []))
        return sorted(infos, key=lambda v: v.version)

    def _aliases(self, name: str) -> dict[str, int]:
        aliases = self.client.get_registered_model(name).aliases or {}
        return {a: int(v) for a, v in dict(aliases).items()}

    def get_version(self, name: str, version: int) -> ModelVersionInfo:
        self._require_model(name)
        try:
            return self._info(self.client.get_model_version(name, str(version)))
        except Exception as e:
            have = [v.version for v in self.versions(name)]
            raise ModelNotFoundError(
                f"model {name!r} has no version {version}", hint=f"existing versions: {have or '(none)'}"
            ) from e

    def resolve(self, ref: str) -> ModelVersionInfo:
        """Resolve ``name@alias`` / ``name:version`` (a bare name means ``@production``)."""
        name, alias, version = parse_ref(ref)
        if version is not None:
            return self.get_version(name, version)
        alias = alias or PRODUCTION
        self._require_model(name)
        try:
            return self._info(self.client.get_model_version_by_alias(name, alias))
        except Exception as e:
            aliases = sorted(self._aliases(name))
            raise ModelNotFoundError(
                f"model {name!r} has no alias {alias!r}",
                hint=f"aliases of {name}: {aliases or '(none)'}; set one with `rayml models alias {name} VERSION {alias}`",
            ) from e

    def set_alias(self, name: str, version: int, alias: str) -> dict[str, int]:
        """Point ``alias`` at ``version``. Moving ``production`` keeps the old one as ``previous`` (for rollback).

        Returns:
            The aliases that changed: alias -> version.
        """
        validate_name(alias, "alias")
        target = self.get_version(name, version)
        changed = {}
        if alias == PRODUCTION:
            try:
                current = self._info(self.client.get_model_version_by_alias(name, PRODUCTION))
            except Exception:
                current = None
            if current is not None and current.version != target.version:
                self.client.set_registered_model_alias(name, PREVIOUS, str(current.version))
                changed[PREVIOUS] = current.version
        self.client.set_registered_model_alias(name, alias, str(target.version))
        changed[alias] = target.version
        logger.info("%s: %s", name, ", ".join(f"{a} -> v{v}" for a, v in changed.items()))
        return changed

    def delete_alias(self, name: str, alias: str) -> None:
        self._require_model(name)
        self.client.delete_registered_model_alias(name, validate_name(alias, "alias"))

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(name, key, value)

    # --- artifacts ------------------------------------------------------------------------------------------------
    def download(self, ref: str) -> tuple[ModelVersionInfo, Path]:
        """Download a version's model directory (cached under ``$RAYML_HOME/cache``; a version's artifacts never change)."""
        info = self.resolve(ref)
        # keyed by the artifact source too: the same name:version in another registry is another model
        source_key = hashlib.sha256(info.source.encode()).hexdigest()[:12]
        cache = constants.rayml_home() / "cache" / "models" / info.name / f"{info.version}-{source_key}"
        if (cache / META_FILE).is_file():
            return info, cache
        import mlflow.artifacts

        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".dl-"))
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=info.source, dst_path=str(tmp), tracking_uri=self.tracking_uri
            )
            if cache.exists():  # another process won the race; its copy is identical
                return info, cache
            os.replace(local, cache)
        except OSError as e:
            raise RegistryError(f"cannot download {info.ref} from {info.source}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info, cache

    def load(self, ref: str) -> LoadedModel:
        """Load a version by ref: its ONNX predictor (lazy), metadata and reference statistics."""
        info, path = self.download(ref)
        meta = json.loads((path / META_FILE).read_text())
        stats_path = path / REF_STATS_FILE
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        return LoadedModel(info=info, path=path, meta=meta, reference_stats=stats)

    def load_predictor(self, ref: str):
        return self.load(ref).predictor

    def run_metrics(self, run_id: str | None) -> dict[str, float]:
        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except Exception:
            return {}
