"""The stages of continuous training. Each takes the :class:`StageContext` and returns its outputs (JSON-able,
recorded in the run's state file); a stage that must stop the pipeline raises. The five that release a candidate are
followed by ``staleness``, which only records (quality against model age) and never fails the run.

Only the last stage (``promote``) can move ``production``: through a rollout when serving is up (the rollout
controller promotes or rolls back), or by moving the alias itself. A failure anywhere before it leaves production
as it was.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from rayml._private import fs
from rayml.config import DataConfig, PipelineJobConfig, ServeJobConfig
from rayml.data import load_table, validate
from rayml.data.schema import schema_changes
from rayml.errors import ConfigError, DataValidationError, ModelNotFoundError
from rayml.gate import run_gate
from rayml.pipeline._state import PipelineState, StageFailed
from rayml.registry import CANARY, PRODUCTION, Registry
from rayml.train import PreparedData

logger = logging.getLogger("rayml.pipeline")

VALIDATE, TRAIN, GATE, REGISTER, PROMOTE = "validate_data", "train", "gate", "register", "promote"
STALENESS = "staleness"
STAGE_NAMES = (VALIDATE, TRAIN, GATE, REGISTER, PROMOTE, STALENESS)
DRIFT_DIR, GATE_REPORT = "drift", "gate_report.json"


class Release(Protocol):
    """How the last stage reaches serving (:class:`ServeRelease`; unit tests pass a fake)."""

    def detect(self, model: str) -> tuple[bool, str]:
        """Whether the serve application is up and serves ``model``, and why (or why not)."""

    def start(self, model: str, version: int) -> None:
        """Start a rollout of ``version`` (resumes one of the same version already under way)."""

    def outcome(self, model: str, version: int) -> tuple[str, str] | None:
        """The recorded rollout of ``version``: (phase, reason), or None when there is none."""

    def wait(self, model: str, version: int, timeout_s: float) -> tuple[str, str]:
        """Wait for the rollout of ``version`` to end: (``promoted`` | ``rolled_back``, reason)."""


@dataclass
class StageContext:
    """What every stage gets: the config, the registry, the run's folder and state, the new data, serving."""

    cfg: PipelineJobConfig
    registry: Registry
    state: PipelineState
    run_dir: str
    prepared: PreparedData
    release: Release
    save: Callable[[], None] = field(default=lambda: None)  # persists the state (progress inside a long stage)

    @property
    def model(self) -> str:
        return self.cfg.model.name

    def out(self, stage: str) -> dict[str, Any]:
        return self.state.stage(stage).outputs

    def production(self) -> int | None:
        try:
            return self.registry.resolve(f"{self.model}@{PRODUCTION}").version
        except ModelNotFoundError:
            return None


def _publish(local: Path, dest: str) -> str:
    """Put a locally written report folder or file under the run folder (a no-op when the run folder is local)."""
    if "://" not in dest:
        return str(local)
    import pyarrow.fs as pafs

    target_fs, target = fs.filesystem(dest)
    target_fs.create_dir(os.path.dirname(target), recursive=True)
    pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target_fs)
    return dest


def _local_dir(ctx: StageContext, name: str) -> Path:
    dest = fs.join(ctx.run_dir, name)
    return Path(dest) if "://" not in dest else Path(tempfile.mkdtemp(prefix="rayml-pipeline-"))


# --- 1. validate the new data ----------------------------------------------------------------------------------------
def validate_data(ctx: StageContext) -> dict[str, Any]:
    """Check the new data against the production model's schema, and its drift from production's training data.

    The new data was already checked on its own (columns, types, missing values, the feature policy) when the run
    was identified. With a production model: every production feature must be present with the right type and the
    target labelled, or the stage fails (a user error: exit 2). How the features the candidate will be trained on
    differ from production's is recorded as ``schema_changes`` (:func:`rayml.data.schema.schema_changes`: features
    added, removed, and whose kind changed between numeric and categorical). Drift (PSI / JS / L-inf per feature,
    prediction and label drift) is written to ``<run>/drift/`` (drift.json, drift.html, PNGs); an alert fails the
    stage only with ``pipeline.block_on_drift``. Without a production model (a first run) there is nothing to compare with.
    """
    from rayml.monitor import drift_of_frame, global_reference, predict_frame, write_report

    p = ctx.prepared
    df = pd.concat([p.train, p.validation], ignore_index=True)
    out: dict[str, Any] = {"rows": len(df), "data_fingerprint": p.fingerprint, "source": p.source, "production": None}
    try:
        prod = ctx.registry.load(f"{ctx.model}@{PRODUCTION}")
    except ModelNotFoundError:
        logger.info("no %s@production yet: the new data is not compared with a production model", ctx.model)
        return out
    if prod.kind != "model":
        raise ConfigError(
            f"{prod.info.ref} (production) is a {prod.kind}; the pipeline trains single models",
            hint="use another model.name, or `rayml manymodels train` for model sets",
        )
    out["production"] = prod.info.version
    prod_schema = prod.model_dir.schema
    source = f"{p.source} (checked against {prod.info.ref}, production)"
    if prod_schema is not None:
        validate(df, prod_schema, max_nan_fraction=ctx.cfg.data.max_nan_fraction, require_target=True, source=source)
    else:  # an imported model records no schema: its inputs are what it needs
        missing = [c for c in prod.model_dir.input_names if c not in df.columns]
        if missing:
            raise DataValidationError([f"missing column(s) {missing}"], hint="the production model takes them", source=source)
    # an imported model records no schema: its inputs' types say which are categories
    old = prod_schema.kinds if prod_schema is not None else {t.name: _input_kind(t.datatype) for t in prod.model_dir.inputs}
    changes = schema_changes(old, p.schema.kinds)
    out["schema_changes"] = changes
    if any(changes.values()):
        logger.info("the new data changes %s's features (vs %s, production): %s", ctx.model, prod.info.ref, changes)
    reference = global_reference(prod)
    result = drift_of_frame(reference, df, predict_frame(prod, df), prod.model_dir.target, ctx.cfg.drift)
    local = _local_dir(ctx, DRIFT_DIR)
    paths = write_report(result, reference, local, title=f"Drift: {p.source} vs {prod.info.ref} (production)")
    out["drift_report"] = _publish(local, fs.join(ctx.run_dir, DRIFT_DIR)) if "://" in ctx.run_dir else str(paths["html"])
    out["drift_status"] = result["status"]
    out["drifted_features"] = list(result.get("drifted_features", []))
    if result["status"] == "alert":
        logger.warning("the new data drifted from %s's training data: %s", prod.info.ref, ", ".join(out["drifted_features"]))
        if ctx.cfg.pipeline.block_on_drift:
            raise StageFailed(
                f"the new data drifted from {prod.info.ref}'s training data (alert: {', '.join(out['drifted_features'])})",
                hint=f"read {out['drift_report']}; to retrain on it anyway, re-run with --set pipeline.block_on_drift=false",
                outputs=out,
            )
    return out


def _input_kind(datatype: str) -> str:
    return "categorical" if datatype == "BYTES" else "numeric"


# --- 2. train or tune ------------------------------------------------------------------------------------------------
def train_candidate(ctx: StageContext) -> dict[str, Any]:
    """Train (or, with a ``tune:`` section, tune) and register the candidate version, with no alias.

    Both are idempotent on their own: a crashed training run resumes from its last checkpoint, a search resumes its
    unfinished trials, and a run that already registered its model returns that version without training again.
    """
    cfg = ctx.cfg
    run: dict[str, Any]
    if cfg.tune is not None:
        from rayml.train import storage_path_for
        from rayml.tune import STATE_FILE, search_name_for, tune

        job = cfg.tune_job()
        exp = fs.join(storage_path_for(job), "tune", search_name_for(job, ctx.prepared.fingerprint))
        resume = fs.read_json(fs.join(exp, STATE_FILE)) is not None  # an earlier attempt (or `rayml tune`) started it
        result = tune(job, resume=resume, registry=ctx.registry)
        info, run = result.model_version, {"search": result.name, "mlflow_run_id": result.parent_run_id}
        metrics = {result.metric: result.best_metric} if result.best_metric is not None else {}
    else:
        from rayml.train import train

        tresult = train(cfg.train_job(), registry=ctx.registry)
        info, run = tresult.model_version, {"train_run": tresult.run_name, "mlflow_run_id": tresult.mlflow_run_id}
        metrics = {k: v for k, v in tresult.metrics.items() if k.startswith("val_")}
        run["resumed_from_epoch"] = max(tresult.resumed_from or [0])
    if info is None:  # cannot happen: the config forces registry.register_version
        raise ConfigError("the candidate was not registered", hint="set registry.register_version=true")
    return {"version": info.version, "ref": info.ref, **run, "metrics": metrics}


# --- 3. gate ---------------------------------------------------------------------------------------------------------
def gate(ctx: StageContext) -> dict[str, Any]:
    """Judge the candidate against ``production`` on fixed labelled data (``pipeline.gate_data``, else the new data's
    held-out split) with :func:`rayml.gate.run_gate`. A first model has no baseline: it must still beat a trivial
    model and output finite numbers. A refusal fails the stage; re-running re-judges the same version (e.g. with new
    ``gate.*`` settings) without training again. It judges a release: the gate's null options take their release
    defaults (``gate.require_reproducible_lineage``: the candidate must come from a clean commit)."""
    version = int(ctx.out(TRAIN)["version"])
    source = ctx.cfg.pipeline.gate_data
    data = load_table(DataConfig(source=source)) if source else ctx.prepared.validation
    local = _local_dir(ctx, "gate")
    # the report folder gets gate_report.json (GATE_REPORT) and the group plots
    report = run_gate(ctx.registry, ctx.model, version, data, ctx.cfg.gate, release=True, report_dir=local)
    path = _publish(local, fs.join(ctx.run_dir, "gate")) if "://" in ctx.run_dir else str(local / GATE_REPORT)
    out = {
        "passed": report.passed,
        "candidate": version,
        "baseline": report.baseline,
        "data": source or "validation split of the new data",
        "data_fingerprint": report.data_fingerprint,
        "metric": report.primary_metric,
        "candidate_metric": report.candidate_metrics.get(report.primary_metric),
        "baseline_metric": report.baseline_metrics.get(report.primary_metric),
        "regression": report.regression,
        "max_regression": ctx.cfg.gate.max_regression,
        "failures": report.failures,
        "warnings": report.warnings,
        "report": path,
        "mlflow_run_id": report.mlflow_run_id,
    }
    if not report.passed:
        raise StageFailed(
            f"the gate refused {ctx.model}:{version}: " + "; ".join(report.failures),
            hint=f"nothing was promoted. Report: {path}. Re-run the same command to judge v{version} again without "
            "retraining (e.g. --set gate.max_regression=...), or change the data/config for a new candidate",
            outputs=out,
        )
    return out


# --- 4. register -----------------------------------------------------------------------------------------------------
def register(ctx: StageContext) -> dict[str, Any]:
    """Mark the gated version as the release candidate: lineage tags of this run and the ``canary`` alias."""
    version = int(ctx.out(TRAIN)["version"])
    tags = {
        "rayml.pipeline": ctx.state.pipeline,
        "rayml.pipeline_run": ctx.state.run_id,
        "rayml.pipeline_mlflow_run": ctx.state.mlflow_run_id or "",
        "rayml.gate_run_id": ctx.out(GATE).get("mlflow_run_id") or "",
    }
    ctx.registry.set_version_tags(ctx.model, version, tags)
    ctx.registry.set_alias(ctx.model, version, CANARY)
    return {"version": version, "alias": CANARY, "tags": tags}


# --- 5. promote ------------------------------------------------------------------------------------------------------
def promote(ctx: StageContext) -> dict[str, Any]:
    """Put the candidate in production: through a rollout when serving is up, else by moving the alias.

    ``pipeline.rollout=auto`` (default) rolls out when the serve application answers and serves the model; the
    rollout controller promotes (``production`` -> candidate) or rolls back, and this stage waits for it
    (``pipeline.rollout_timeout_s``). A rollback fails the stage (production unchanged); re-running the pipeline
    then tries the rollout again. Without serving, ``pipeline.promote_without_serving`` moves ``production`` here
    (the old version becomes ``previous``); otherwise the candidate stays at ``canary`` for a person to promote.
    Right before it rolls out or moves the alias, it checks that ``production`` is still the version the gate
    compared against, and gates again against the new one if not.
    """
    cfg, model = ctx.cfg.pipeline, ctx.model
    version = int(ctx.out(TRAIN)["version"])
    before = ctx.production()
    base: dict[str, Any] = {"version": version, "production_before": before}
    if before == version:
        return {**base, "mode": "none", "outcome": "promoted", "note": "already production"}
    up, why = (False, "pipeline.rollout is never") if cfg.rollout == "never" else ctx.release.detect(model)
    base["serving"] = why
    if up:
        _regate_if_moved(ctx, version, base)
        return _roll_out(ctx, version, base)
    if cfg.rollout == "always":
        raise StageFailed(
            f"pipeline.rollout is always but serving is not up: {why}",
            hint="start it (rayml serve up --config FILE) and re-run; or --set pipeline.rollout=auto",
            outputs=base,
        )
    if not cfg.promote_without_serving:
        logger.info("serving is not up (%s); %s:%d stays at `canary`", why, model, version)
        return {**base, "mode": "none", "outcome": "awaiting_promotion"}
    _regate_if_moved(ctx, version, base)
    moved = ctx.registry.set_alias(model, version, PRODUCTION)
    logger.info("serving is not up (%s); promoted %s:%d by alias", why, model, version)
    return {**base, "mode": "alias", "outcome": "promoted", "aliases": moved}


MAX_REGATES = 3  # production moving again during each of that many gates in a row is someone else's rollout race


def _regate_if_moved(ctx: StageContext, version: int, base: dict[str, Any]) -> None:
    """Gate the candidate again when ``production`` moved since the gate compared against it (checked right before
    the candidate is promoted or rolled out): it must beat the version it will replace, not an older one.

    Raises:
        StageFailed: the candidate does not pass against the new production (the gate's verdict is recorded), or
            production kept moving.
    """
    if "baseline" not in ctx.out(GATE):  # no gate verdict recorded: nothing to compare with
        return
    for _ in range(MAX_REGATES):
        now, gated = ctx.production(), ctx.out(GATE).get("baseline")
        if now in (gated, version):
            return
        logger.warning("%s@production moved from v%s to v%s since the gate: gating v%d again", ctx.model, gated, now, version)
        try:
            verdict = gate(ctx)
        except StageFailed as e:
            base["regated"] = [*base.get("regated", []), {"production": now, "passed": False}]
            raise StageFailed(
                f"{PRODUCTION} moved to v{now} after the gate passed; against it: {e.message}",
                hint=e.hint,
                outputs={**base, **e.outputs, "outcome": "refused"},
            ) from e
        ctx.state.stage(GATE).outputs = verdict  # the verdict the promotion now rests on
        base["regated"] = [*base.get("regated", []), {"production": now, "passed": True, "report": verdict["report"]}]
        base["production_before"] = now
        ctx.save()
    raise StageFailed(
        f"{ctx.model}@{PRODUCTION} kept moving while v{version} was gated against it ({MAX_REGATES} gates)",
        hint="another pipeline or an operator is promoting versions of this model; re-run once it has settled",
        outputs=base,
    )


def _roll_out(ctx: StageContext, version: int, base: dict[str, Any]) -> dict[str, Any]:
    model, rec = ctx.model, ctx.state.stage(PROMOTE)
    earlier = dict(rec.outputs)
    recorded = ctx.release.outcome(model, version)
    if earlier.get("rollout_started") and not earlier.get("rollout_reported") and recorded and recorded[0] == "rolled_back":
        phase, reason = recorded  # it ended while no pipeline was watching: report it once; the next re-run retries
    else:
        rec.outputs = {**base, "mode": "rollout", "rollout_started": True}
        ctx.save()  # a driver that dies while waiting finds the rollout again on resume
        ctx.release.start(model, version)
        phase, reason = ctx.release.wait(model, version, ctx.cfg.pipeline.rollout_timeout_s)
    out = {**base, "mode": "rollout", "rollout_started": True, "outcome": phase, "reason": reason}
    if phase != "promoted":
        raise StageFailed(
            f"the rollout of {model}:{version} rolled back: {reason}",
            hint=f"production is unchanged; see rayml rollout status --model {model}; re-running the pipeline rolls "
            "the candidate out again",
            outputs={**out, "rollout_reported": True},
        )
    return out


# --- 6. staleness (record only) -------------------------------------------------------------------------------------
def staleness(ctx: StageContext) -> dict[str, Any]:
    """Measure staleness on this run's data: the model's newest ``staleness.versions`` versions (the candidate among
    them) scored on the held-out split of the new data (:func:`rayml.monitor.measure_staleness`), the degradation per
    day of age and the recommended max age; the report goes under ``<run>/staleness/`` and the numbers to the run's
    MLflow run. Record only: any error is logged and recorded in the outputs (``status: error``), never raised, so
    it cannot fail a run whose candidate is already released.
    """
    from rayml.monitor import measure_staleness, write_staleness_report

    cfg = ctx.cfg.staleness
    try:
        report = measure_staleness(
            ctx.registry,
            ctx.model,
            ctx.prepared.validation,
            versions=cfg.versions,
            max_degradation=cfg.max_degradation,
            source=f"validation split of {ctx.prepared.source}",
        )
        local = _local_dir(ctx, STALENESS)
        paths = write_staleness_report(report, local)
        path = _publish(local, fs.join(ctx.run_dir, STALENESS)) if "://" in ctx.run_dir else str(paths["html"])
        if ctx.state.mlflow_run_id:
            metrics = {
                "staleness_degradation_per_day": report.degradation_per_day,
                "staleness_recommended_max_age_days": report.recommended_max_age_days,
            }
            ctx.registry.log_metrics(ctx.state.mlflow_run_id, {k: v for k, v in metrics.items() if v is not None})
    except Exception as e:  # record only: a measurement problem must never fail the pipeline
        message = getattr(e, "message", None) or str(e)
        logger.warning("stage %s: could not measure the staleness of %s: %s", STALENESS, ctx.model, message)
        return {"status": "error", "error": f"{type(e).__name__}: {message}"[:2000]}
    return {
        "status": report.status,
        "reason": report.reason,
        "primary_metric": report.primary_metric,
        "reference": report.reference,
        "versions": [
            {
                "version": v.version,
                "age_days": v.age_days,
                "primary": v.primary,
                "degradation": v.degradation,
                "skipped": v.skipped,
            }
            for v in report.versions
        ],
        "degradation_per_day": report.degradation_per_day,
        "max_degradation": report.max_degradation,
        "recommended_max_age_days": report.recommended_max_age_days,
        "stale": report.stale,
        "report": path,
    }


STAGES: tuple[tuple[str, Callable[[StageContext], dict[str, Any]]], ...] = (
    (VALIDATE, validate_data),
    (TRAIN, train_candidate),
    (GATE, gate),
    (REGISTER, register),
    (PROMOTE, promote),
    (STALENESS, staleness),
)


class ServeRelease:
    """:class:`Release` through the running Serve application (``rayml.serve``'s rollout controller)."""

    def __init__(self, serve_cfg: ServeJobConfig, registry: Registry, poll_s: float = 1.0) -> None:
        self.cfg, self.registry, self.poll_s = serve_cfg, registry, poll_s

    @staticmethod
    def connect() -> bool:
        """Join the serving Ray if there is one (so training runs there too: one Ray per process); False if none."""
        from rayml.serve import ServeNotRunningError, connect

        try:
            connect(start_local=False)
        except ServeNotRunningError:
            return False
        return True

    def detect(self, model: str) -> tuple[bool, str]:
        from rayml.serve import serve_status

        if not self.connect():
            return False, "no serving Ray on this machine and RAY_ADDRESS is not set"
        name = self.cfg.serve.app_name
        app = serve_status(self.cfg)
        if app is None:
            return False, f"application {name!r} is not deployed"
        if app.spec is None or model not in app.spec.models:
            return False, f"application {name!r} does not serve {model}"
        if app.status != "RUNNING":
            return False, f"application {name!r} is {app.status}"
        return True, f"application {name!r} at {app.url}"

    def start(self, model: str, version: int) -> None:
        from rayml.serve import start_rollout

        start_rollout(self.cfg, model, version, registry=self.registry)

    def outcome(self, model: str, version: int) -> tuple[str, str] | None:
        from rayml.serve import rollout_status

        state = rollout_status(self.cfg, model).state
        if state is None or state.candidate != version or not state.done:
            return None
        return state.phase, state.reason or ""

    def wait(self, model: str, version: int, timeout_s: float) -> tuple[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self.outcome(model, version)
            if done is not None:
                return done
            time.sleep(self.poll_s)
        raise StageFailed(
            f"the rollout of {model}:{version} did not finish within {timeout_s:g} s",
            hint=f"it goes on in the cluster: rayml rollout status --model {model}; re-run the pipeline to wait again",
        )
