"""``run_gate``: every check of the gate on one candidate, its :class:`GateReport`, and where the report goes."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml.config import GateConfig
from rayml.data import fingerprint, validate
from rayml.errors import DataError, DataValidationError, ModelNotFoundError
from rayml.gate._baselines import LINEAR_FOLDS, beats_linear, beats_trivial, linear_baseline, trivial_baseline
from rayml.gate._cost import feature_costs
from rayml.gate._features import feature_value, importance_with_noise, unimportant_message
from rayml.gate._groups import _slices, group_gaps, plot_groups
from rayml.gate._lineage import changes, unreproducible
from rayml.gate._perf import performance
from rayml.gate._predictions import Predictions, predict, relative_regression, true_labels
from rayml.models import ModelDir
from rayml.models.metrics import primary_metric
from rayml.registry import PRODUCTION, LoadedModel, Registry

logger = logging.getLogger("rayml.gate")

GATE_EXPERIMENT = "rayml-gate"
REPORT_FILE = "gate_report.json"


@dataclass
class GateReport:
    """The gate's verdict on one candidate and everything it measured (``to_dict()`` is ``gate_report.json``).

    ``failures`` make the gate fail; ``warnings`` are findings of checks set to ``warn`` (they do not).
    """

    model: str
    candidate: int
    baseline: int | None
    baseline_alias: str
    data_fingerprint: str
    rows: int
    task: str
    primary_metric: str
    candidate_metrics: dict[str, float]
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    trivial_metrics: dict[str, float] = field(default_factory=dict)
    linear_metrics: dict[str, float] = field(default_factory=dict)  # the cross-fitted linear baseline's
    linear: dict[str, Any] = field(default_factory=dict)  # what was fitted (kind, rows, regression) or why not
    regression: float | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    feature_importance: dict[str, float] = field(default_factory=dict)
    feature_value: list[dict[str, Any]] = field(default_factory=list)  # importance, noise and cost per feature
    performance: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)  # the candidate's commit, and whether it had to be clean
    changes: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)  # PNGs, relative to the report's folder
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def judge(self, action: str, problems: list[str]) -> None:
        """File ``problems`` under failures (``fail``) or warnings (``warn``); ``off`` drops them."""
        if action == "fail":
            self.failures += problems
        elif action == "warn":
            self.warnings += problems


def run_gate(
    registry: Registry,
    model: str,
    candidate: int,
    data: pd.DataFrame,
    cfg: GateConfig,
    baseline_alias: str = PRODUCTION,
    log_to_mlflow: bool = True,
    *,
    release: bool = False,
    report_dir: str | Path | None = None,
) -> GateReport:
    """Judge ``model:candidate`` against ``model@baseline_alias`` on ``data`` (which must hold the target column).

    Args:
        registry: where both versions are registered (and the gate's MLflow run is logged).
        model: the registered model name.
        candidate: the version to judge.
        data: labelled validation rows: the model's columns and its target (and ``cfg.group_columns``).
        cfg: the thresholds and which checks fail, warn or are off.
        baseline_alias: the alias of the version to beat (none: the candidate is judged on its own).
        log_to_mlflow: log the report to MLflow (experiment ``rayml-gate``) and tag the candidate with the verdict.
        release: the candidate is judged for release (the pipeline's gate, ``rayml validate --release``): options
            left null take their release defaults (``require_reproducible_lineage`` on when the baseline is
            ``production``).
        report_dir: also write ``gate_report.json`` and the plots (``plots/*.png``) into this folder.

    Raises:
        ModelNotFoundError: the model or candidate version does not exist.
        DataError: the data lacks the model's columns, its target or a group column, or (multiclass) holds a label
            that is not one of the candidate's classes.

    Example:
        >>> report = run_gate(Registry(), "sales-model", 7, holdout, GateConfig(group_columns=["region"]))
        >>> report.passed, report.failures, report.warnings
    """
    cand = registry.load(f"{model}:{candidate}")
    try:
        base: LoadedModel | None = registry.load(f"{model}@{baseline_alias}")
    except ModelNotFoundError:
        base = None  # a first model has nothing to regress against
    if base is not None and base.info.version == cand.info.version:
        base = None
    md = cand.model_dir
    task, target, classes = md.task, md.target, md.class_labels
    if target is None:
        raise DataError(
            f"{cand.info.ref} records no target column, so the gate cannot tell which column holds the labels",
            hint="register the model with its target recorded",
        )
    _check_columns(data, md, target, cfg.group_columns)
    if len(data) == 0:
        raise DataError("the validation data is empty", hint="pass a file with labelled rows")
    y = true_labels(data, target, md)
    pc = predict(cand, data)
    name, _ = primary_metric(task)
    report = GateReport(
        model=model,
        candidate=cand.info.version,
        baseline=base.info.version if base else None,
        baseline_alias=baseline_alias,
        data_fingerprint=fingerprint(data),
        rows=len(data),
        task=task,
        primary_metric=name,
        candidate_metrics={},
    )
    required = cfg.require_reproducible_lineage
    if required is None:
        required = release and baseline_alias == PRODUCTION
    why = unreproducible(cand)
    report.lineage = {"git_commit": cand.info.tags.get("rayml.git_commit"), "required": required, "reproducible": why is None}
    if required and why:
        report.failures.append(why)
    numbers = pc.proba if pc.proba is not None else pc.values
    if not np.isfinite(numbers).all():
        bad = int((~np.isfinite(numbers)).reshape(len(data), -1).any(axis=1).sum())
        report.failures.append(f"the candidate output {bad} NaN/inf prediction(s)")
        if pc.proba is not None:
            pc.proba = np.nan_to_num(pc.proba, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            pc.values = np.nan_to_num(pc.values, nan=0.0, posinf=0.0, neginf=0.0)
    report.candidate_metrics = pc.metrics(task, y, classes)
    trivial, trivial_prediction = trivial_baseline(task, y, md)
    report.trivial_metrics = trivial.metrics(task, y, classes)
    report.failures += beats_trivial(task, report.candidate_metrics, report.trivial_metrics, trivial_prediction)
    schema = md.schema
    features = schema.feature_names if schema is not None else md.input_names
    if cfg.linear_baseline != "off":
        _judge_linear(report, md, features, data, y, pc, cfg)
    pb = None
    if base is not None:
        pb = predict(base, data)
        if pb.proba is not None:
            pb.proba = np.nan_to_num(pb.proba)
        else:
            pb.values = np.nan_to_num(pb.values)
        report.baseline_metrics = pb.metrics(task, y, classes)
        report.regression = relative_regression(task, report.candidate_metrics[name], report.baseline_metrics[name])
        if report.regression > cfg.max_regression:
            report.failures.append(
                f"{name} regressed {report.regression:.1%} vs {model}@{baseline_alias} (v{base.info.version}): "
                f"{report.baseline_metrics[name]:.4g} -> {report.candidate_metrics[name]:.4g}, over --max-regression "
                f"{cfg.max_regression:.1%}"
            )
    default_slices = list(schema.segment) if schema is not None else md.segment_columns
    columns = cfg.segment_columns if cfg.segment_columns is not None else default_slices
    columns = [c for c in columns if c in data.columns]
    report.slices, slice_failures = _slices(task, data, y, pc, pb, columns, cfg, classes)
    report.failures += slice_failures
    report.groups, group_failures = group_gaps(task, data, y, pc, pb, cfg, classes)
    report.failures += group_failures
    importance = importance_with_noise(cand, data, y, features, cfg.permutation_repeats, cfg.seed)
    report.feature_importance = importance.mean
    costs = {} if md.is_model_set else _costs(md, features, report)
    report.feature_value, below = feature_value(importance, costs, cfg.importance_sigmas)
    rows = {r["feature"]: r for r in report.feature_value}
    report.judge(cfg.unimportant_features, [unimportant_message(f, rows[f], cfg.importance_sigmas, name) for f in below])
    if cfg.perf_regressions != "off":
        base_md, base_tags = (base.model_dir, base.info.tags) if base is not None else (None, None)
        report.performance, slower = performance(md, base_md, cand.info.tags, base_tags, data, cfg)
        report.judge(cfg.perf_regressions, slower)
    report.changes = changes(cand, base)
    report.plots = [f"plots/{plot_name(g['column'])}" for g in report.groups]
    if log_to_mlflow:
        report.mlflow_run_id = _log(registry, report)
    if report_dir is not None:
        write_report(report, report_dir)
    return report


def _judge_linear(
    report: GateReport, md: ModelDir, features: list[str], data: pd.DataFrame, y: np.ndarray, pc: Predictions, cfg: GateConfig
) -> None:
    """Fit the linear baseline on the candidate's features and judge the candidate against it (a baseline that
    cannot be fitted is a warning: the candidate is not to blame)."""
    schema = md.schema
    if schema is not None:
        numeric, categorical = schema.numeric, [f.name for f in schema.categorical]
    else:  # an imported graph without a schema: its text inputs are its categories
        text = {t.name for t in md.inputs if t.datatype == "BYTES"}
        numeric, categorical = [f for f in features if f not in text], [f for f in features if f in text]
    linear = linear_baseline(md.task, data, y, numeric, categorical, md.class_labels, cfg.seed)
    if isinstance(linear, str):
        report.linear = {"skipped": linear}
        report.warnings.append(f"linear baseline skipped: {linear}")
        return
    report.linear_metrics, reg, problem = beats_linear(md.task, pc, y, md.class_labels, linear, cfg.linear_tolerance)
    report.linear = {"kind": linear.kind, "rows": len(linear.rows), "folds": LINEAR_FOLDS, "regression": reg}
    report.judge(cfg.linear_baseline, [problem] if problem else [])


def _costs(md: ModelDir, features: list[str], report: GateReport) -> dict[str, dict[str, float]]:
    """Each feature's footprint in the graph; a graph the walk cannot read costs a warning, never the verdict."""
    try:
        return feature_costs(md.model_file, features)
    except Exception as e:  # a report figure: any unexpected graph (an operator attribute it cannot read) skips it
        logger.warning("feature costs of %s not measured: %s", md.name, e, exc_info=True)
        report.warnings.append(f"feature costs not measured: {type(e).__name__}: {e}")
        return {}


def plot_name(column: str) -> str:
    """The PNG of a group column: its name made safe for a file name."""
    return "groups_" + re.sub(r"[^A-Za-z0-9_.-]", "_", column) + ".png"


def write_report(report: GateReport, out_dir: str | Path) -> Path:
    """Write ``gate_report.json`` and the plots (``plots/groups_<column>.png``) into ``out_dir``; returns the JSON's path."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for entry in report.groups:
        plot_groups(entry, out / "plots" / plot_name(entry["column"]))
    path = out / REPORT_FILE
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return path


def _check_columns(data: pd.DataFrame, model: ModelDir, target: str, group_columns: list[str]) -> None:
    """The validation data has the model's columns, its labelled target (schema checks when it has a schema) and
    the group columns."""
    missing_groups = [c for c in group_columns if c not in data.columns]
    if missing_groups:
        raise DataError(
            f"the validation data has no group column(s) {missing_groups} (gate.group_columns); its columns are "
            f"{sorted(map(str, data.columns))[:50]}",
            hint="add the column(s) to the validation data (a group column need not be a model feature), or fix "
            "gate.group_columns",
        )
    schema = model.schema
    if schema is not None:
        validate(data, schema, max_nan_fraction=1.0, require_target=True, source="validation data")
        return
    missing = [c for c in [*model.input_names, *model.segment_columns, target] if c not in data.columns]
    problems = [f"missing column(s) {missing}"] if missing else []
    if target in data.columns and data[target].isna().any():
        problems.append(f"target {target!r} has {int(data[target].isna().sum())} missing value(s)")
    if problems:
        raise DataValidationError(problems, hint=f"the model takes {model.input_names}", source="validation data")


def _metric_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _log(registry: Registry, report: GateReport) -> str:
    run_id = registry.create_run(
        GATE_EXPERIMENT,
        f"gate-{report.model}-v{report.candidate}",
        tags={"rayml.gate_passed": str(report.passed).lower(), "rayml.model": report.model},
    )
    metrics = {f"candidate_{k}": v for k, v in report.candidate_metrics.items()}
    metrics.update({f"baseline_{k}": v for k, v in report.baseline_metrics.items()})
    metrics.update({f"linear_{k}": v for k, v in report.linear_metrics.items()})
    if report.regression is not None:
        metrics["regression"] = report.regression
    metrics.update({f"group_gap_{_metric_key(g['column'])}": g["gap"] for g in report.groups if g["gap"] is not None})
    for side in ("candidate", "baseline"):
        metrics.update({f"perf_{side}_{k}": v for k, v in report.performance.get(side, {}).items()})
    metrics["warnings"] = float(len(report.warnings))
    params = {
        "candidate": str(report.candidate),
        "baseline": str(report.baseline),
        "data_fingerprint": report.data_fingerprint,
        "rows": str(report.rows),
    }
    registry.log_metrics(run_id, metrics, timestamp_ms=0)  # NaN / inf are left out
    registry.log_params(run_id, params)
    with tempfile.TemporaryDirectory() as tmp:
        write_report(report, tmp)
        registry.log_artifact(run_id, Path(tmp) / REPORT_FILE)
        if report.groups:
            registry.log_artifacts(run_id, Path(tmp) / "plots", "plots")
    registry.end_run(run_id, "FINISHED" if report.passed else "FAILED")
    registry.set_version_tags(
        report.model,
        int(report.candidate),
        {"rayml.gate": "passed" if report.passed else "failed", "rayml.gate_run_id": run_id},
    )
    return run_id
