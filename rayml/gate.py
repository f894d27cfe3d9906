"""The validation gate: may a candidate version replace the baseline?

On a fixed, fingerprinted validation set the candidate must
- output only finite numbers;
- beat a trivial model (the training mean for regression; AUC above 0.5 and accuracy above the majority share for
  binary);
- not regress the primary metric (RMSE for regression, AUC for binary) by more than ``max_regression`` relative to
  the baseline alias;
- not regress any important slice (segment) by more than ``max_segment_regression``.
The report also carries permutation feature importance and what changed between the two versions (data fingerprint,
features, library versions). It is logged to MLflow and tagged on the candidate version.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayml.config import GateConfig
from rayml.data import fingerprint, validate
from rayml.data.schema import Schema
from rayml.errors import DataError, ModelNotFoundError
from rayml.models.metrics import roc_auc
from rayml.monitor import predict_frame
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


def metrics_for(task: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if task == "binary":
        clipped = np.clip(p, 1e-7, 1 - 1e-7)
        return {
            "auc": roc_auc(y, p),
            "accuracy": float(((p > 0.5) == (y > 0.5)).mean()),
            "logloss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        }
    err = p - y
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def primary(task: str) -> tuple[str, bool]:
    """The primary metric and whether higher is better."""
    return ("auc", True) if task == "binary" else ("rmse", False)


def relative_regression(task: str, candidate: float, baseline: float) -> float:
    """How much worse the candidate is, relative to the baseline (negative = better)."""
    _, higher = primary(task)
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


def _trivial(task: str, y: np.ndarray, loaded: LoadedModel) -> np.ndarray:
    target_ref = loaded.model_dir.reference_stats().get("target", {})
    if task == "binary":
        share = float(target_ref.get("mean", float(np.mean(y))))
        return np.full(len(y), 1.0 if share > 0.5 else 0.0)
    return np.full(len(y), float(target_ref.get("mean", float(np.mean(y)))))


def permutation_importance(
    loaded: LoadedModel, df: pd.DataFrame, y: np.ndarray, features: list[str], repeats: int, seed: int
) -> dict[str, float]:
    """Mean loss of the primary metric when a feature's column is shuffled (bigger = more important)."""
    task = str(loaded.meta["task"])
    name, higher = primary(task)
    base = metrics_for(task, y, predict_frame(loaded, df))[name]
    rng = np.random.default_rng(seed)
    out = {}
    for f in features:
        drops = []
        for _ in range(repeats):
            shuffled = df.copy()
            shuffled[f] = df[f].to_numpy()[rng.permutation(len(df))]
            value = metrics_for(task, y, predict_frame(loaded, shuffled))[name]
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
    fa = [i["name"] for i in base.meta.get("inputs", [])]
    fb = [i["name"] for i in cand.meta.get("inputs", [])]
    if fa != fb:
        changes["features"] = {"added": sorted(set(fb) - set(fa)), "removed": sorted(set(fa) - set(fb))}
    return changes


def _slices(
    task: str, df: pd.DataFrame, y: np.ndarray, pc: np.ndarray, pb: np.ndarray | None, columns: list[str], cfg: GateConfig
) -> tuple[list[dict[str, Any]], list[str]]:
    if not columns:
        return [], []
    name, _ = primary(task)
    keys = df[columns].astype(str).agg("|".join, axis=1).to_numpy()
    slices, failures = [], []
    for key in sorted(set(keys)):
        mask = keys == key
        if mask.sum() < cfg.min_segment_rows or (cfg.important_segments and key not in cfg.important_segments):
            continue
        mc = metrics_for(task, y[mask], pc[mask])[name]
        entry: dict[str, Any] = {"segment": key, "rows": int(mask.sum()), "candidate": mc}
        if pb is not None:
            mb = metrics_for(task, y[mask], pb[mask])[name]
            reg = relative_regression(task, mc, mb)
            entry.update(baseline=mb, regression=reg)
            if reg > cfg.max_segment_regression:
                failures.append(
                    f"segment {key!r}: {name} regressed {reg:.1%} ({mb:.4g} -> {mc:.4g}), "
                    f"over the slice limit of {cfg.max_segment_regression:.1%}"
                )
        slices.append(entry)
    return slices, failures


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
        DataError: the data lacks the model's columns or target.
    """
    cand = registry.load(f"{model}:{candidate}")
    try:
        base = registry.load(f"{model}@{baseline_alias}")
    except ModelNotFoundError:
        base = None  # a first model has nothing to regress against
    if base is not None and base.info.version == cand.info.version:
        base = None
    task, target = str(cand.meta["task"]), str(cand.meta["target"])
    schema = Schema.from_dict(cand.meta["schema"])
    validate(data, schema, max_nan_fraction=1.0, require_target=True, source="validation data")
    if len(data) == 0:
        raise DataError("the validation data is empty", hint="pass a file with labelled rows")
    y = data[target].to_numpy(dtype="float64")
    pc = predict_frame(cand, data)
    name, _ = primary(task)
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
    if not np.isfinite(pc).all():
        report.failures.append(f"the candidate output {int((~np.isfinite(pc)).sum())} NaN/inf prediction(s)")
        pc = np.nan_to_num(pc, nan=0.0, posinf=0.0, neginf=0.0)
    report.candidate_metrics = metrics_for(task, y, pc)
    report.trivial_metrics = metrics_for(task, y, _trivial(task, y, cand))
    if task == "binary":
        if not report.candidate_metrics["auc"] > 0.5:
            report.failures.append(f"AUC {report.candidate_metrics['auc']:.3f} does not beat a random ranking (0.5)")
        if not report.candidate_metrics["accuracy"] > report.trivial_metrics["accuracy"]:
            report.failures.append(
                f"accuracy {report.candidate_metrics['accuracy']:.3f} does not beat the majority class "
                f"({report.trivial_metrics['accuracy']:.3f})"
            )
    elif not report.candidate_metrics["rmse"] < report.trivial_metrics["rmse"]:
        report.failures.append(
            f"RMSE {report.candidate_metrics['rmse']:.4g} does not beat predicting the training mean "
            f"({report.trivial_metrics['rmse']:.4g})"
        )
    pb = None
    if base is not None:
        pb = np.nan_to_num(predict_frame(base, data))
        report.baseline_metrics = metrics_for(task, y, pb)
        report.regression = relative_regression(task, report.candidate_metrics[name], report.baseline_metrics[name])
        if report.regression > cfg.max_regression:
            report.failures.append(
                f"{name} regressed {report.regression:.1%} vs {model}@{baseline_alias} (v{base.info.version}): "
                f"{report.baseline_metrics[name]:.4g} -> {report.candidate_metrics[name]:.4g}, over --max-regression "
                f"{cfg.max_regression:.1%}"
            )
    columns = cfg.segment_columns if cfg.segment_columns is not None else list(schema.segment)
    columns = [c for c in columns if c in data.columns]
    report.slices, slice_failures = _slices(task, data, y, pc, pb, columns, cfg)
    report.failures += slice_failures
    report.feature_importance = permutation_importance(cand, data, y, schema.feature_names, cfg.permutation_repeats, cfg.seed)
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
