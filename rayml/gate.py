"""The validation gate: may a candidate version replace the baseline?

On a fixed, fingerprinted validation set the candidate must
- output only finite numbers;
- beat a trivial model: the training mean for regression; for binary AUC above 0.5 and accuracy above the majority
  share; for multiclass accuracy and macro-F1 above always predicting the training data's majority class;
- not regress the primary metric (:func:`rayml.models.metrics.primary_metric`: RMSE for regression, AUC for binary,
  macro-F1 for multiclass) by more than ``max_regression`` relative to the baseline alias;
- not regress any important slice (segment) by more than ``max_segment_regression``.
Metrics are those of :func:`rayml.models.metrics.task_metrics` (multiclass: accuracy, macro-F1 and log-loss over the
model's class labels). The report also carries permutation feature importance and what changed between the two
versions (data fingerprint, features, library versions). It is logged to MLflow and tagged on the candidate version.
The gate reads only the model directory (task, target, class labels, outputs), whatever framework made the model.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml.config import GateConfig
from rayml.data import fingerprint, validate
from rayml.data.schema import class_labels_of
from rayml.errors import DataError, DataValidationError, ModelNotFoundError
from rayml.models import ModelDir
from rayml.models.metrics import primary_metric, task_metrics
from rayml.models.predictor import LABEL, PROBABILITIES
from rayml.registry import PRODUCTION, LoadedModel, Registry

logger = logging.getLogger("rayml.gate")

GATE_EXPERIMENT = "rayml-gate"
_LINEAGE_TAGS = (
    "rayml.data_fingerprint",
    "rayml.git_commit",
    "rayml.ray_version",
    "rayml.torch_version",
    "rayml.onnxruntime_version",
    "rayml.rayml_version",
)


def relative_regression(task: str, candidate: float, baseline: float) -> float:
    """How much worse the candidate is, relative to the baseline (negative = better)."""
    _, higher = primary_metric(task)
    if not np.isfinite(baseline) or baseline == 0:
        return 0.0 if candidate == baseline else float("inf")
    return (baseline - candidate) / abs(baseline) if higher else (candidate - baseline) / abs(baseline)


@dataclass
class GateReport:
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
    regression: float | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)
    feature_importance: dict[str, float] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Predictions:
    """What one model answered for the validation rows: values (regression), P(class 1) (binary) or labels and
    probabilities [N, K] in class-label order (multiclass)."""

    values: np.ndarray
    proba: np.ndarray | None = None

    def metrics(self, task: str, y: np.ndarray, class_labels: Sequence[Any], mask: Any = slice(None)) -> dict[str, float]:
        """:func:`task_metrics` of these predictions (of the rows ``mask`` selects) against ``y``."""
        proba = self.proba[mask] if self.proba is not None else None
        return task_metrics(task, y[mask], self.values[mask], proba=proba, class_labels=list(class_labels) or None)


def predict(model: LoadedModel | ModelDir, df: pd.DataFrame) -> Predictions:
    """Score ``df`` with any registered kind (a model set routes rows to its segments' models)."""
    md = model if isinstance(model, ModelDir) else model.model_dir
    outputs, _ = md.predict_outputs(df)
    if md.task == "multiclass":
        return Predictions(np.asarray(outputs[LABEL], dtype=object), np.asarray(outputs[PROBABILITIES], dtype="float64"))
    return Predictions(np.asarray(outputs[md.outputs[0].name], dtype="float64"))


def true_labels(data: pd.DataFrame, target: str, model: ModelDir) -> np.ndarray:
    """The target column as the model's task reads it: numbers, or (multiclass) labels that must be its classes.

    Raises:
        DataError: a multiclass label is not one of the model's class labels (they are listed).
    """
    if model.task == "regression":
        return data[target].to_numpy(dtype="float64")
    if model.task == "binary":
        return _binary_truth(data[target], target, model)
    y = class_labels_of(data[target], target)
    classes = model.class_labels
    known = set(classes)
    unknown = sorted({v for v in y.tolist() if v not in known}, key=str)
    if unknown:
        rows = int(sum(1 for v in y.tolist() if v not in known))
        raise DataError(
            f"the validation data's target {target!r} has {len(unknown)} label(s) that are not classes of "
            f"{model.name}: {unknown[:20]} ({rows} row(s)); its classes are {classes}",
            hint="validate on data labelled with the model's classes (or retrain the model on data that has "
            "these classes); note that 1 and '1' are different labels",
        )
    return y


def _binary_truth(values: pd.Series, target: str, model: ModelDir) -> np.ndarray:
    """A binary target as 0/1: 1 where the label is the model's positive class (``class_labels[1]``; 1 by default).

    Raises:
        DataError: a label is neither of the model's two classes.
    """
    negative, positive = (model.class_labels or [0, 1])[:2]
    seen = pd.unique(values.dropna())
    known = {negative, positive}
    unknown = [v for v in seen.tolist() if v not in known]
    if unknown or values.isna().any():
        raise DataError(
            f"the validation data's target {target!r} holds {sorted(map(str, unknown))[:10] or 'missing values'}, "
            f"not only the classes of {model.name}: {[negative, positive]}",
            hint="validate on data labelled with the model's two classes (no missing labels)",
        )
    truth: np.ndarray = (values == positive).to_numpy(dtype="float64")
    return truth


def _trivial(task: str, y: np.ndarray, model: ModelDir) -> tuple[Predictions, Any]:
    """The trivial model the candidate must beat, and what it predicts (the training mean or majority class).

    Uses the training target's reference bins when the model has them, else the validation rows themselves.
    """
    target_ref = model.reference_stats().get("target", {})
    if task == "multiclass":
        classes = model.class_labels
        by_text = {str(c): c for c in classes}  # the bins hold labels as text, most frequent first
        ranked = [by_text[k] for k in target_ref.get("categories", []) if k in by_text]
        shares = dict(zip(target_ref.get("categories", []), target_ref.get("shares", []), strict=False))
        priors = np.asarray([float(shares.get(str(c), 0.0)) for c in classes])
        if target_ref.get("kind") != "categorical" or not ranked or priors.sum() <= 0:  # no class bins: validation counts
            priors = np.asarray([float(np.sum(y == c)) for c in classes])
            ranked = [classes[int(np.argmax(priors))]]
        priors = priors / max(priors.sum(), 1e-12)
        majority = ranked[0]
        return Predictions(np.full(len(y), majority, dtype=object), np.tile(priors, (len(y), 1))), majority
    if task == "binary":
        share = float(target_ref.get("mean", float(np.mean(y))))
        return Predictions(np.full(len(y), 1.0 if share > 0.5 else 0.0)), share
    mean = float(target_ref.get("mean", float(np.mean(y))))
    return Predictions(np.full(len(y), mean)), mean


def permutation_importance(
    loaded: LoadedModel, df: pd.DataFrame, y: np.ndarray, features: list[str], repeats: int, seed: int
) -> dict[str, float]:
    """Mean loss of the primary metric when a feature's column is shuffled (bigger = more important)."""
    md = loaded.model_dir
    name, higher = primary_metric(md.task)
    base = predict(md, df).metrics(md.task, y, md.class_labels)[name]
    rng = np.random.default_rng(seed)
    out = {}
    for f in features:
        drops = []
        for _ in range(repeats):
            shuffled = df.copy()
            shuffled[f] = df[f].to_numpy()[rng.permutation(len(df))]
            value = predict(md, shuffled).metrics(md.task, y, md.class_labels)[name]
            drops.append(base - value if higher else value - base)
        out[f] = float(np.mean(drops))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _changes(cand: LoadedModel, base: LoadedModel | None) -> dict[str, Any]:
    if base is None:
        return {}
    changes: dict[str, Any] = {}
    for tag in _LINEAGE_TAGS:
        a, b = base.info.tags.get(tag), cand.info.tags.get(tag)
        if a != b:
            changes[tag.removeprefix("rayml.")] = {"baseline": a, "candidate": b}
    fa, fb = base.model_dir.input_names, cand.model_dir.input_names
    if fa != fb:
        changes["features"] = {"added": sorted(set(fb) - set(fa)), "removed": sorted(set(fa) - set(fb))}
    ca, cb = base.model_dir.class_labels, cand.model_dir.class_labels
    if ca != cb:
        changes["class_labels"] = {"baseline": ca, "candidate": cb}
    return changes


def _slices(
    task: str,
    df: pd.DataFrame,
    y: np.ndarray,
    pc: np.ndarray | Predictions,
    pb: np.ndarray | Predictions | None,
    columns: list[str],
    cfg: GateConfig,
    class_labels: Sequence[Any] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """The primary metric per slice (the rows of one value of ``columns``) for the candidate and the baseline.

    Args:
        pc, pb: the candidate's and the baseline's predictions (arrays of values or labels, or :class:`Predictions`).
        class_labels: multiclass: the model's classes (macro-F1 averages over them).
    """
    if not columns:
        return [], []
    name, _ = primary_metric(task)
    cand = pc if isinstance(pc, Predictions) else Predictions(np.asarray(pc))
    base = pb if isinstance(pb, Predictions) or pb is None else Predictions(np.asarray(pb))
    keys = df[columns].astype(str).agg("|".join, axis=1).to_numpy()
    slices, failures = [], []
    for key in sorted(set(keys)):
        mask = keys == key
        if mask.sum() < cfg.min_segment_rows or (cfg.important_segments and key not in cfg.important_segments):
            continue
        mc = cand.metrics(task, y, class_labels, mask)[name]
        entry: dict[str, Any] = {"segment": key, "rows": int(mask.sum()), "candidate": mc}
        if base is not None:
            mb = base.metrics(task, y, class_labels, mask)[name]
            reg = relative_regression(task, mc, mb)
            entry.update(baseline=mb, regression=reg)
            if reg > cfg.max_segment_regression:
                failures.append(
                    f"segment {key!r}: {name} regressed {reg:.1%} ({mb:.4g} -> {mc:.4g}), "
                    f"over the slice limit of {cfg.max_segment_regression:.1%}"
                )
        slices.append(entry)
    return slices, failures


def _check_columns(data: pd.DataFrame, model: ModelDir, target: str) -> None:
    """The validation data has the model's columns and its labelled target (schema checks when it has a schema)."""
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


def _beats_trivial(task: str, cm: dict[str, float], tm: dict[str, float], trivial: Any) -> list[str]:
    """Why the candidate does not beat the trivial model ([] when it does)."""
    failures = []
    if task == "binary":
        if not cm["auc"] > 0.5:
            failures.append(f"AUC {cm['auc']:.3f} does not beat a random ranking (0.5)")
        if not cm["accuracy"] > tm["accuracy"]:
            failures.append(f"accuracy {cm['accuracy']:.3f} does not beat the majority class ({tm['accuracy']:.3f})")
    elif task == "multiclass":
        for metric, shown in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            if not cm[metric] > tm[metric]:
                failures.append(
                    f"{shown} {cm[metric]:.3f} does not beat always predicting the majority class {trivial!r} ({tm[metric]:.3f})"
                )
    elif not cm["rmse"] < tm["rmse"]:
        failures.append(f"RMSE {cm['rmse']:.4g} does not beat predicting the training mean ({tm['rmse']:.4g})")
    return failures


def run_gate(
    registry: Registry,
    model: str,
    candidate: int,
    data: pd.DataFrame,
    cfg: GateConfig,
    baseline_alias: str = PRODUCTION,
    log_to_mlflow: bool = True,
) -> GateReport:
    """Judge ``model:candidate`` against ``model@baseline_alias`` on ``data`` (which must hold the target column).

    Raises:
        ModelNotFoundError: the model or candidate version does not exist.
        DataError: the data lacks the model's columns or target, or (multiclass) holds a label that is not one of the
            candidate's classes.
    """
    cand = registry.load(f"{model}:{candidate}")
    try:
        base = registry.load(f"{model}@{baseline_alias}")
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
    _check_columns(data, md, target)
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
    numbers = pc.proba if pc.proba is not None else pc.values
    if not np.isfinite(numbers).all():
        bad = int((~np.isfinite(numbers)).reshape(len(data), -1).any(axis=1).sum())
        report.failures.append(f"the candidate output {bad} NaN/inf prediction(s)")
        if pc.proba is not None:
            pc.proba = np.nan_to_num(pc.proba, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            pc.values = np.nan_to_num(pc.values, nan=0.0, posinf=0.0, neginf=0.0)
    report.candidate_metrics = pc.metrics(task, y, classes)
    trivial, trivial_prediction = _trivial(task, y, md)
    report.trivial_metrics = trivial.metrics(task, y, classes)
    report.failures += _beats_trivial(task, report.candidate_metrics, report.trivial_metrics, trivial_prediction)
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
    schema = md.schema
    default_slices = list(schema.segment) if schema is not None else md.segment_columns
    columns = cfg.segment_columns if cfg.segment_columns is not None else default_slices
    columns = [c for c in columns if c in data.columns]
    report.slices, slice_failures = _slices(task, data, y, pc, pb, columns, cfg, classes)
    report.failures += slice_failures
    features = schema.feature_names if schema is not None else md.input_names
    report.feature_importance = permutation_importance(cand, data, y, features, cfg.permutation_repeats, cfg.seed)
    report.changes = _changes(cand, base)
    if log_to_mlflow:
        report.mlflow_run_id = _log(registry, report)
    return report


def _log(registry: Registry, report: GateReport) -> str:
    run_id = registry.create_run(
        GATE_EXPERIMENT,
        f"gate-{report.model}-v{report.candidate}",
        tags={"rayml.gate_passed": str(report.passed).lower(), "rayml.model": report.model},
    )
    metrics = {f"candidate_{k}": v for k, v in report.candidate_metrics.items()}
    metrics.update({f"baseline_{k}": v for k, v in report.baseline_metrics.items()})
    if report.regression is not None:
        metrics["regression"] = report.regression
    params = {
        "candidate": str(report.candidate),
        "baseline": str(report.baseline),
        "data_fingerprint": report.data_fingerprint,
        "rows": str(report.rows),
    }
    registry.log_metrics(run_id, metrics, timestamp_ms=0)  # NaN / inf are left out
    registry.log_params(run_id, params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gate_report.json"
        path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
        registry.log_artifact(run_id, path)
    registry.end_run(run_id, "FINISHED" if report.passed else "FAILED")
    registry.set_version_tags(
        report.model,
        int(report.candidate),
        {"rayml.gate": "passed" if report.passed else "failed", "rayml.gate_run_id": run_id},
    )
    return run_id
