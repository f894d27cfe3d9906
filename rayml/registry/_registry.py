"""A thin facade over the MLflow model registry.

Embedded default: MLflow on SQLite at ``$RAYML_HOME/mlflow.db`` with artifacts under ``$RAYML_HOME/mlartifacts``;
any tracking URI (an MLflow server with S3/GCS artifacts) works unchanged. A version holds a model directory
(:class:`rayml.models.ModelDir`: a single model or a model set) and lineage tags.

Refs: ``name@alias`` (e.g. ``sales-model@production``) or ``name:version`` (e.g. ``sales-model:3``).

Performance records. Every version is tagged with its serving figures, measured when it is registered by a short
probe (:func:`rayml.models.probe_serving`, about 0.2 s) on the model directory's MLflow input example:
``rayml.perf.latency_ms`` (median one-row call) and ``rayml.perf.throughput_rows_s``; a version trained by rayml also
carries ``rayml.perf.train_time_s`` and ``rayml.perf.peak_memory_bytes`` (:data:`rayml.models.PERF_TAGS`). A probe
that fails only logs a warning: registration never fails for it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rayml._private import constants
from rayml.config import NAME_PATTERN
from rayml.errors import InvalidModelDirError, InvalidNameError, ModelNotFoundError, RegistryError
from rayml.models import PERF_TAGS, probe_serving
from rayml.models.model_dir import ModelDir
from rayml.registry._runs import MetricPoint, RunRecord, metric_entities, param_batches, tag_filter

logger = logging.getLogger("rayml.registry")

_NAME_RE = re.compile(NAME_PATTERN)
MODEL_SUBDIR = "model"
PRODUCTION, CANARY, PREVIOUS = "production", "canary", "previous"
TAG_PREFIX = "rayml."
# each of the probe's two measurements (one-row latency, batch throughput) runs about this long: a registration costs
# about 0.2 s more (every test and pipeline registers), and a millisecond call is still measured a hundred times. The
# figures are for the record; the gate probes candidate and production side by side itself.
PROBE_BUDGET_S = 0.1


def validate_name(value: str, what: str = "model name") -> str:
    """Names and aliases are ``[A-Za-z0-9_.-]+``: they may end up in paths and URLs."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in (".", ".."):
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
    """A model version downloaded and ready: the registered version and its model directory.

    Everything about the model comes from :attr:`model_dir` (a :class:`rayml.models.ModelDir`); ``path``, ``meta``,
    ``reference_stats``, ``kind``, ``predictor`` and ``predict`` are shortcuts to it.
    """

    info: ModelVersionInfo
    model_dir: ModelDir

    @property
    def path(self) -> Path:
        return self.model_dir.path

    @property
    def meta(self) -> dict[str, Any]:
        return self.model_dir.meta

    @property
    def reference_stats(self) -> dict[str, Any]:
        """The reference statistics as saved (a model set's hold ``global`` and ``segments``; {} when none).

        ``model_dir.reference_stats(segment)`` gives the bins to compare data with, whatever the kind.
        """
        return self.model_dir.all_reference_stats

    @property
    def kind(self) -> str:
        """``"model"`` for a single model, ``"model_set"`` for a family of segment models (see ``ModelSet``)."""
        return self.model_dir.kind

    @property
    def predictor(self):
        """The ONNX predictor of the model (a model set's global model), created on first use."""
        return self.model_dir.predictor()

    def predict(self, rows: Any):
        """Predictions [N] for raw rows (a frame or a column -> values mapping), whatever the kind: a model set
        routes each row to its segment's model (:meth:`rayml.models.ModelDir.predict_frame`)."""
        return self.model_dir.predict_frame(rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(dict(rows)))


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
        """The id of experiment ``name``, created (with its artifact location) when it does not exist yet."""
        found = self.find_experiment(name)
        if found is not None:
            return found
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

    # --- run records ----------------------------------------------------------------------------------------------
    # Everything train, tune, many models, the gate and the pipeline do to an MLflow run or a version's tags goes
    # through these methods: nothing outside rayml.registry touches ``self.client`` (tests/unit/test_architecture.py).
    def get_run(self, run_id: str) -> RunRecord:
        """The run's status and latest metrics, params and tags.

        Raises:
            RegistryError: there is no run ``run_id`` in this tracking store.
        """
        try:
            return RunRecord.from_mlflow(self.client.get_run(run_id))
        except Exception as e:
            raise RegistryError(
                f"MLflow run {run_id!r} not found in {self.tracking_uri}: {e}",
                hint="check registry.tracking_uri (or MLFLOW_TRACKING_URI): the run belongs to another tracking store",
            ) from e

    def search_runs(
        self,
        experiment_id: str,
        tags: Mapping[str, str],
        max_results: int = 50_000,
        *,
        tag_prefixes: Mapping[str, str] | None = None,
        status: str | None = None,
        newest_first: bool = False,
    ) -> list[RunRecord]:
        """Active runs of ``experiment_id`` that carry every tag of ``tags`` with that value.

        Args:
            tag_prefixes: tags whose values must start with the given prefix (``""``: the tag is set at all).
            status: only runs in this status (e.g. ``RUNNING``).
            newest_first: order by start time, newest first (else MLflow's default order).
        """
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=tag_filter(tags, tag_prefixes, status),
            order_by=["attributes.start_time DESC"] if newest_first else None,
            max_results=max_results,
        )
        return [RunRecord.from_mlflow(r) for r in runs]

    def find_experiment(self, name: str) -> str | None:
        """The id of experiment ``name``, or None when it does not exist yet (unlike :meth:`experiment_id`, which
        creates it)."""
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else str(exp.experiment_id)

    def set_run_running(self, run_id: str) -> None:
        """Mark a run RUNNING again: a resumed run continues the run it started instead of opening a new one."""
        self.client.update_run(run_id, status="RUNNING")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Set a run's terminal status (``FINISHED``, ``FAILED`` or ``KILLED``) and end time."""
        self.client.set_terminated(run_id, status=status)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params (values cut to MLflow's 6000 characters, 100 a batch)."""
        for batch in param_batches(params):
            self.client.log_batch(run_id, params=batch)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0, timestamp_ms: int | None = None) -> None:
        """Log the finite numbers of ``metrics`` at ``step`` (None, NaN and inf are left out).

        Args:
            timestamp_ms: when they were measured; None = now.
        """
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        batch = metric_entities(metrics, step, ts)
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every value logged for ``key``, in the order it was logged (time, then step)."""
        points = [MetricPoint(int(m.step), float(m.value), int(m.timestamp)) for m in self.client.get_metric_history(run_id, key)]
        return sorted(points, key=lambda p: (p.timestamp_ms, p.step))

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_path=artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)

    def model_tags(self, name: str) -> dict[str, str] | None:
        """The registered model's own tags (e.g. ``rayml.kind``); None when ``name`` is not registered."""
        try:
            rm = self.client.get_registered_model(name)
        except Exception:
            return None
        return dict(rm.tags or {})

    def set_version_tags(self, name: str, version: int, tags: Mapping[str, str]) -> None:
        """Tag one version (e.g. the gate's verdict, the pipeline run that released it)."""
        for k, v in tags.items():
            self.client.set_model_version_tag(name, str(version), k, v)

    # --- versions -------------------------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        model_dir: str | Path,
        run_id: str,
        tags: dict[str, str],
        description: str = "",
        *,
        perf: Mapping[str, float | None] | None = None,
    ) -> ModelVersionInfo:
        """Upload ``model_dir`` to the run's artifacts and register it as a new version of ``name``.

        The version is tagged with the serving probe's figures (see the module docstring) and with ``perf``; the probe's
        are also logged as metrics of the run (``serving_latency_ms``, ``serving_throughput_rows_s``).

        Args:
            perf: what the training run measured: ``train_time_s``, ``peak_memory_bytes`` (keys of
                :data:`rayml.models.PERF_TAGS`; None or non-finite values are left out).

        Raises:
            RegistryError: ``model_dir`` is not a valid model directory (see :meth:`rayml.models.ModelDir.read`).
        """
        validate_name(name)
        model_dir = Path(model_dir)
        try:
            md = ModelDir.read(model_dir)
        except InvalidModelDirError as e:
            raise RegistryError(f"cannot register {model_dir}: {e.message}", hint=e.hint) from e
        probed = probe_version(md)
        tags = {**tags, **perf_tags({**(perf or {}), **probed})}
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
        if probed:
            self.log_metrics(run_id, {f"serving_{k}": v for k, v in probed.items()})
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
        if ModelDir.is_complete(cache):
            return info, cache
        import mlflow.artifacts

        cache.parent.mkdir(parents=True, exist_ok=True)
        # a temp dir of its own per download: concurrent downloads of one version (processes, threads, nodes sharing
        # RAYML_HOME) never write into each other's files; the first complete copy renamed into place wins
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".dl-{info.version}-"))
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(tmp), tracking_uri=self.tracking_uri)
            )
            _install(local, cache)
        except OSError as e:
            raise RegistryError(f"cannot download {info.ref} from {info.source}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info, cache

    def load(self, ref: str) -> LoadedModel:
        """Load a version by ref: its model directory, checked (metadata and reference statistics read, predictors lazy).

        Raises:
            ModelNotFoundError: no such version. InvalidModelDirError: the downloaded directory is not a model directory.
        """
        info, path = self.download(ref)
        return LoadedModel(info=info, model_dir=ModelDir.read(path, ref=info.ref))

    def load_predictor(self, ref: str):
        return self.load(ref).predictor

    def run_metrics(self, run_id: str | None) -> dict[str, float]:
        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except Exception:
            return {}


def probe_version(md: ModelDir, budget_s: float = PROBE_BUDGET_S) -> dict[str, float]:
    """The serving probe's figures (``latency_ms``, ``throughput_rows_s``) for a model directory, on its MLflow input
    example (a model set's rows carry their segment columns, so the probe routes them as serving does).

    Never raises: a directory without an input example (written before rayml wrote MLflow files) or a probe that fails
    gives {} and a log line, and the version is registered without them.
    """
    try:
        from mlflow.models import Model

        path = str(md.path)
        sample = Model.load(path).load_input_example(path)
    except Exception as e:
        logger.info("%s: no MLflow input example to probe serving with (%s); no serving figures recorded", md.name, e)
        return {}
    try:
        if not isinstance(sample, pd.DataFrame):
            raise TypeError(f"the input example is a {type(sample).__name__}, not a frame of rows")
        if len(sample) == 0:
            raise ValueError("the input example has no rows")
        return probe_serving(md, sample, budget_s=budget_s)
    except Exception as e:
        logger.warning(
            "%s: the serving probe failed (%s: %s); registering it without serving figures", md.name, type(e).__name__, e
        )
        return {}


def perf_tags(figures: Mapping[str, float | None]) -> dict[str, str]:
    """Version tags (``rayml.perf.*``) for performance figures keyed as in :data:`rayml.models.PERF_TAGS`; None and
    non-finite values are left out. Times and latencies keep 6 significant digits, counts and bytes are whole numbers.

    Raises:
        ValueError: a key that is not a performance figure (a bug in the caller).
    """
    unknown = sorted(set(figures) - set(PERF_TAGS))
    if unknown:
        raise ValueError(f"not performance figures: {unknown}; known: {sorted(PERF_TAGS)}")
    out = {}
    for key, value in figures.items():
        if value is None or not math.isfinite(value):
            continue
        whole = key in ("throughput_rows_s", "peak_memory_bytes")
        out[PERF_TAGS[key]] = str(int(round(value))) if whole else f"{value:.6g}"
    return out


def _install(local: Path, cache: Path) -> None:
    """Rename a complete download ``local`` to ``cache``; if another download got there first, keep its copy.

    A version's artifacts never change, so any complete copy is the copy. An incomplete directory at ``cache`` (left
    by an older rayml that could be interrupted mid-copy) is moved aside and replaced.

    Raises:
        OSError: the rename failed and no complete copy is at ``cache``.
    """
    for _ in range(3):
        try:
            os.replace(local, cache)  # atomic; fails when cache is a non-empty directory (another download won)
            return
        except OSError:
            if ModelDir.is_complete(cache):
                return
            if not cache.exists():
                continue  # the winner's rename is not visible yet, or a stale copy was just moved aside: try again
            stale = cache.with_name(f".stale-{cache.name}-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(cache, stale)
            except OSError:
                continue  # someone else moved it aside first
            shutil.rmtree(stale, ignore_errors=True)
    if not ModelDir.is_complete(cache):
        os.replace(local, cache)  # last try: let its error say why
