"""The gate's production-readiness checks (ML Test Score): the linear baseline, feature value (importance above
noise), group gaps, reproducible lineage and performance regressions. No Ray: a local MLflow registry, ONNX Runtime,
and hand-made ONNX graphs whose right answers are known."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from rayml.config import GateConfig, PipelineJobConfig, load_config
from rayml.errors import ConfigError, DataError
from rayml.gate import (
    GateReport,
    Predictions,
    group_gaps,
    importance_with_noise,
    linear_baseline,
    performance,
    run_gate,
    unreproducible,
)
from rayml.models import PERF_TAGS, ModelDir
from rayml.registry import Registry

# one shuffle per feature and no serving probe: these tests judge one check at a time
QUICK = dict(permutation_repeats=1, perf_regressions="off")


def _linear_onnx(weight: float, bias: float) -> bytes:
    """prediction = weight * price + bias; the graph also takes `promo` (text) and never reads it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info("price", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("promo", TensorProto.STRING, ["N"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(weight, dtype=np.float32), "w"),
        numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "b"),
    ]
    nodes = [helper.make_node("Mul", ["price", "w"], ["scaled"]), helper.make_node("Add", ["scaled", "b"], ["prediction"])]
    out = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N"])]
    model = helper.make_model(helper.make_graph(nodes, "linear", inputs, out, inits), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _data(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """y = 3 * price exactly; promo is noise; region splits the rows into a big and a small group."""
    rng = np.random.default_rng(seed)
    price = rng.uniform(5.0, 25.0, n).round(3)
    return pd.DataFrame(
        {
            "price": price,
            "promo": rng.choice(["yes", "no"], n),
            "region": np.where(np.arange(n) % 4 == 0, "north", "south"),
            "y": 3.0 * price,
        }
    )


def _register(registry: Registry, tmp_path: Path, weight: float, bias: float = 0.0, commit: str | None = "abc123") -> int:
    out = tmp_path / f"model-{weight}-{bias}-{commit}"
    ModelDir.write_model(
        out, onnx_bytes=_linear_onnx(weight, bias), meta={"task": "regression", "target": "y"}, input_example=_data().head(5)
    )
    run_id = registry.create_run("tests", "linear")
    tags = {} if commit is None else {"rayml.git_commit": commit}
    return registry.register("lin", out, run_id, tags).version


# --- linear baseline -------------------------------------------------------------------------------------------------
def test_the_linear_baseline_is_cross_fitted_so_it_never_scores_rows_it_was_fitted_on() -> None:
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(40, 30)), columns=[f"x{i}" for i in range(30)])
    y = rng.normal(size=40)  # pure noise: only a model that saw a row's label can predict it
    in_sample = Ridge(alpha=1.0).fit(x, y).predict(x)
    assert np.sqrt(np.mean((in_sample - y) ** 2)) < 0.6 * y.std()  # what scoring fitted rows would look like
    fitted = linear_baseline("regression", x, y, list(x.columns), [], [], seed=0)
    assert not isinstance(fitted, str) and fitted.kind == "ridge regression" and len(fitted.rows) == 40
    assert fitted.predictions.metrics("regression", y, [])["rmse"] > 0.95 * y.std()


def test_the_linear_baseline_fits_every_task_with_categories_and_missing_values() -> None:
    rng = np.random.default_rng(2)
    n = 300
    x = rng.normal(size=n)
    cat = rng.choice(["a", "b", None], n)
    df = pd.DataFrame({"x": np.where(np.arange(n) % 10 == 0, np.nan, x), "c": cat, "const": np.inf})
    df.loc[5, "x"] = np.inf
    y = 2.0 * x + np.where(cat == "a", 3.0, 0.0)
    reg = linear_baseline("regression", df, y, ["x", "const"], ["c"], [], seed=0)
    assert not isinstance(reg, str)
    assert reg.predictions.metrics("regression", y, [])["rmse"] < 0.5 * y.std()  # the one-hot category is used

    binary = linear_baseline("binary", df, (y > 1).astype(float), ["x"], ["c"], [], seed=0)
    assert not isinstance(binary, str) and binary.kind == "logistic regression"
    assert binary.predictions.metrics("binary", (y > 1).astype(float), [])["auc"] > 0.85

    classes = ["low", "mid", "high", "rare"]
    labels = np.asarray(np.where(y < 0, "low", np.where(y < 2, "mid", "high")), dtype=object)
    labels[7] = "rare"  # one row: the fold that holds it never saw the class
    multi = linear_baseline("multiclass", df, labels, ["x"], ["c"], classes, seed=0)
    assert not isinstance(multi, str)
    assert multi.predictions.proba is not None and multi.predictions.proba.shape == (n, 4)
    np.testing.assert_allclose(multi.predictions.proba.sum(axis=1), 1.0, atol=1e-9)
    assert set(multi.predictions.values) <= set(classes)
    assert multi.predictions.metrics("multiclass", labels, classes)["accuracy"] > 0.8


def test_the_linear_baseline_says_why_it_was_not_fitted(monkeypatch: pytest.MonkeyPatch) -> None:
    df = _data(10)
    assert "10 validation rows are too few" in str(linear_baseline("regression", df, df["y"].to_numpy(), ["price"], [], [], 0))
    assert "no feature columns" in str(linear_baseline("regression", _data(), _data()["y"].to_numpy(), [], [], [], 0))
    monkeypatch.setitem(sys.modules, "sklearn.exceptions", None)  # as if scikit-learn were not installed
    why = linear_baseline("regression", _data(), _data()["y"].to_numpy(), ["price"], [], [], 0)
    assert isinstance(why, str) and "rayml[sklearn]" in why


def test_a_candidate_that_does_not_beat_the_linear_baseline_fails_warns_or_is_let_through(
    registry: Registry, tmp_path: Path
) -> None:
    data = _data()
    # beats the training mean (RMSE ~3 vs ~17) but not ridge regression, which recovers y = 3 * price
    weak = _register(registry, tmp_path, weight=2.5, bias=7.5)
    report = run_gate(registry, "lin", weak, data, GateConfig(**QUICK), log_to_mlflow=False)
    assert not report.passed and report.candidate_metrics["rmse"] < report.trivial_metrics["rmse"]
    assert report.linear_metrics["rmse"] < 0.5 and report.linear["kind"] == "ridge regression"
    assert report.linear["regression"] > 1.0
    assert any(f.startswith("rmse ") and "does not beat a linear baseline (ridge regression" in f for f in report.failures)
    warned = run_gate(registry, "lin", weak, data, GateConfig(linear_baseline="warn", **QUICK), log_to_mlflow=False)
    assert warned.passed and any("does not beat a linear baseline" in w for w in warned.warnings)
    off = run_gate(registry, "lin", weak, data, GateConfig(linear_baseline="off", **QUICK), log_to_mlflow=False)
    assert off.passed and off.linear_metrics == {} and not any("linear" in w for w in off.warnings)
    # a tolerance lets a candidate that is that much worse through
    lax = GateConfig(linear_tolerance=1e6, **QUICK)
    assert run_gate(registry, "lin", weak, data, lax, log_to_mlflow=False).passed

    exact = _register(registry, tmp_path, weight=3.0)
    good = run_gate(registry, "lin", exact, data, GateConfig(**QUICK), log_to_mlflow=False)
    assert good.passed, good.failures
    assert good.candidate_metrics["rmse"] < good.linear_metrics["rmse"]


# --- feature value ---------------------------------------------------------------------------------------------------
def test_a_feature_the_model_ignores_is_not_above_noise(registry: Registry, tmp_path: Path) -> None:
    model = ModelDir.write_model(
        tmp_path / "m",
        onnx_bytes=_linear_onnx(3.0, 0.0),
        meta={"task": "regression", "target": "y"},
        input_example=_data().head(5),
    )
    data = _data()
    y = data["y"].to_numpy()
    imp = importance_with_noise(model, data, y, ["price", "promo"], repeats=2, seed=0)
    assert list(imp.mean) == ["price", "promo"]  # most important first
    assert imp.mean["promo"] == 0.0 and imp.stderr["promo"] == 0.0  # shuffling it changes nothing at all
    assert imp.mean["price"] > 10 * imp.stderr["price"] > 0
    # the noise level is a standard error: ten times the rows, a smaller one
    big = _data(2000, seed=1)
    assert importance_with_noise(model, big, big["y"].to_numpy(), ["price"], 2, 0).stderr["price"] < imp.stderr["price"]

    version = _register(registry, tmp_path, weight=3.0)
    report = run_gate(registry, "lin", version, data, GateConfig(**QUICK), log_to_mlflow=False)
    assert report.passed  # warn by default
    rows = {r["feature"]: r for r in report.feature_value}
    assert rows["promo"]["above_noise"] is False and rows["price"]["above_noise"] is True
    assert rows["promo"]["nodes"] == 0 and rows["promo"]["bytes"] == 0  # the graph never reads it: it costs nothing
    assert rows["price"]["nodes"] == 2 and rows["price"]["size_share"] > 0  # its Mul and Add
    (warning,) = [w for w in report.warnings if "promo" in w]
    assert "feature 'promo' is not above noise" in warning and "gate.unimportant_features=off" in warning
    failed = run_gate(registry, "lin", version, data, GateConfig(unimportant_features="fail", **QUICK), log_to_mlflow=False)
    assert not failed.passed and any("feature 'promo'" in f for f in failed.failures)
    off = run_gate(registry, "lin", version, data, GateConfig(unimportant_features="off", **QUICK), log_to_mlflow=False)
    assert off.passed and not any("promo" in w for w in off.warnings)


def test_a_graph_the_cost_walk_cannot_read_is_a_warning_not_a_verdict(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rayml.gate._run as gate_run

    def unreadable(*args: Any) -> None:
        raise ValueError("an operator attribute it cannot read")

    monkeypatch.setattr(gate_run, "feature_costs", unreadable)
    report = run_gate(registry, "lin", _register(registry, tmp_path, 3.0), _data(), GateConfig(**QUICK), log_to_mlflow=False)
    assert report.passed and "feature costs not measured: ValueError: an operator attribute it cannot read" in report.warnings
    assert report.feature_value and all("size_share" not in r for r in report.feature_value)


# --- groups ----------------------------------------------------------------------------------------------------------
def test_group_gap_is_the_relative_distance_between_the_best_and_worst_group() -> None:
    df = pd.DataFrame({"band": ["a"] * 4 + ["b"] * 4 + ["c"]})
    y = np.zeros(9)
    pred = Predictions(np.r_[np.full(4, 1.0), np.full(4, 2.0), [50.0]])  # RMSE 1 for a, 2 for b; c has one row
    (entry,), failures = group_gaps("regression", df, y, pred, None, GateConfig(group_columns=["band"], min_segment_rows=2))
    assert entry["gap"] == pytest.approx(1.0) and (entry["best"], entry["worst"]) == ("a", "b")  # (2 - 1) / 1
    assert [g["judged"] for g in entry["groups"]] == [True, True, False]  # c: too few rows to judge
    assert len(failures) == 1 and "group gap on 'band'" in failures[0] and "100.0% apart" in failures[0]
    _, ok = group_gaps("regression", df, y, pred, pred, GateConfig(group_columns=["band"], min_segment_rows=2, max_group_gap=1.5))
    assert ok == []

    # AUC: higher is better, so the gap is (best - worst) / best
    auc_df = pd.DataFrame({"g": ["x"] * 4 + ["y"] * 4})
    truth = np.asarray([0, 1, 0, 1, 0, 1, 0, 1], dtype=float)
    scores = Predictions(np.asarray([0.1, 0.9, 0.2, 0.8, 0.6, 0.4, 0.3, 0.5]))  # x: AUC 1; y: AUC 0.5
    (auc,), _ = group_gaps("binary", auc_df, truth, scores, None, GateConfig(group_columns=["g"], min_segment_rows=4))
    assert auc["gap"] == pytest.approx(0.5) and auc["metric"] == "auc"


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    scales=st.lists(st.floats(0.1, 10.0), min_size=5, max_size=5),
    min_rows=st.integers(1, 6),
)
def test_group_gap_matches_its_definition_for_generated_groups(sizes: list[int], scales: list[float], min_rows: int) -> None:
    keys = np.concatenate([np.full(n, f"g{i}") for i, n in enumerate(sizes)])
    errors = np.concatenate([np.full(n, scales[i]) for i, n in enumerate(sizes)])
    cfg = GateConfig(group_columns=["k"], min_segment_rows=min_rows, max_group_gap=0.5)
    (entry,), failures = group_gaps("regression", pd.DataFrame({"k": keys}), np.zeros(len(keys)), Predictions(errors), None, cfg)
    judged = [scales[i] for i, n in enumerate(sizes) if n >= min_rows]
    assert [g["judged"] for g in entry["groups"]] == [n >= min_rows for n in sizes]
    if len(judged) < 2:
        assert entry["gap"] is None and failures == []
    else:
        expected = (max(judged) - min(judged)) / min(judged)
        assert entry["gap"] == pytest.approx(expected) and entry["gap"] >= 0
        assert (len(failures) == 1) == (entry["gap"] > 0.5)


def test_groups_are_reported_plotted_and_logged(registry: Registry, tmp_path: Path) -> None:
    version = _register(registry, tmp_path, weight=3.0, bias=0.5)  # off by 0.5 everywhere: both groups alike
    cfg = GateConfig(group_columns=["region"], linear_baseline="off", **QUICK)  # ridge is closer than 0.5
    report = run_gate(registry, "lin", version, _data(), cfg, report_dir=tmp_path / "report")
    assert report.passed, report.failures
    (entry,) = report.groups
    assert {g["group"]: g["rows"] for g in entry["groups"]} == {"north": 50, "south": 150}
    assert entry["gap"] == pytest.approx(0.0, abs=1e-3)
    png = tmp_path / "report" / "plots" / "groups_region.png"
    assert report.plots == ["plots/groups_region.png"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report" / "gate_report.json").is_file()
    logged = [a.path for a in registry.client.list_artifacts(report.mlflow_run_id, "plots")]
    assert logged == ["plots/groups_region.png"]
    metrics = registry.client.get_run(report.mlflow_run_id).data.metrics
    assert metrics["group_gap_region"] == pytest.approx(0.0, abs=1e-3) and metrics["warnings"] == len(report.warnings)


def test_a_group_column_missing_from_the_data_is_a_clear_error(registry: Registry, tmp_path: Path) -> None:
    version = _register(registry, tmp_path, weight=3.0)
    with pytest.raises(DataError) as e:
        run_gate(registry, "lin", version, _data(), GateConfig(group_columns=["age_band"]), log_to_mlflow=False)
    assert "['age_band']" in e.value.message and "gate.group_columns" in e.value.message and e.value.hint


# --- lineage ---------------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(commit=st.one_of(st.text(max_size=50), st.sampled_from(["", "unknown", "abc-dirty", "0123abc", " ", "e2e"])))
def test_only_a_clean_known_commit_is_reproducible(commit: str) -> None:
    fake = SimpleNamespace(info=SimpleNamespace(tags={"rayml.git_commit": commit}, ref="m:3"))
    clean = commit.strip() not in ("", "unknown") and not commit.strip().endswith("-dirty")
    why = unreproducible(fake)  # type: ignore[arg-type]
    assert (why is None) == clean
    if why is not None:
        assert why.startswith("lineage: m:3") and "Hint: commit your changes" in why
        assert "gate.require_reproducible_lineage=false" in why
    assert unreproducible(SimpleNamespace(info=SimpleNamespace(tags={}, ref="m:3"))) is not None  # type: ignore[arg-type]


def test_a_release_against_production_needs_a_reproducible_commit(registry: Registry, tmp_path: Path) -> None:
    data = _data()
    dirty = _register(registry, tmp_path, weight=3.0, commit="abc123-dirty")
    cfg = GateConfig(**QUICK)

    def lineage_failures(**kw: Any) -> list[str]:
        settings = kw.pop("cfg", cfg)
        report = run_gate(registry, "lin", dirty, data, settings, log_to_mlflow=False, **kw)
        return [f for f in report.failures if f.startswith("lineage:")]

    assert lineage_failures() == []  # an experiment (`rayml validate` without --release)
    (why,) = lineage_failures(release=True)  # the pipeline's gate: against production
    assert "lin:1 was trained from uncommitted changes" in why and "'abc123-dirty'" in why
    assert lineage_failures(release=True, baseline_alias="staging") == []  # not a production release
    assert len(lineage_failures(cfg=GateConfig(require_reproducible_lineage=True, **QUICK))) == 1
    assert lineage_failures(release=True, cfg=GateConfig(require_reproducible_lineage=False, **QUICK)) == []
    missing = _register(registry, tmp_path, weight=3.0, commit=None)
    report = run_gate(registry, "lin", missing, data, cfg, log_to_mlflow=False, release=True)
    assert any("records no code commit (rayml.git_commit is missing)" in f for f in report.failures)
    assert report.lineage == {"git_commit": None, "required": True, "reproducible": False}
    clean = _register(registry, tmp_path, weight=3.0, commit="abc123")
    assert run_gate(registry, "lin", clean, data, cfg, log_to_mlflow=False, release=True).passed


def test_the_pipelines_gate_stage_judges_a_release(registry: Registry, tmp_path: Path) -> None:
    from rayml.pipeline import STAGE_NAMES, PipelineState, StageContext, StageFailed
    from rayml.pipeline._stages import TRAIN, gate

    path = tmp_path / "holdout.parquet"
    _data().to_parquet(path)
    dirty = _register(registry, tmp_path, weight=3.0, commit="abc123-dirty")

    def ctx(*extra: str) -> StageContext:
        sets = ["model.name=lin", f"pipeline.gate_data={path}", "gate.perf_regressions=off", "gate.permutation_repeats=1"]
        cfg = load_config(PipelineJobConfig, None, [*sets, *extra])
        state = PipelineState.new("lin", "r1", STAGE_NAMES)
        state.stage(TRAIN).outputs = {"version": dirty}
        return StageContext(cfg=cfg, registry=registry, state=state, run_dir=str(tmp_path / "run"), prepared=None, release=None)  # type: ignore[arg-type]

    with pytest.raises(StageFailed, match="lineage: lin:1 was trained from uncommitted changes"):
        gate(ctx())
    out = gate(ctx("gate.require_reproducible_lineage=false"))
    assert out["passed"] and any("promo" in w for w in out["warnings"])
    assert Path(out["report"]).is_file()


# --- performance -----------------------------------------------------------------------------------------------------
class _Timed:
    """A stand-in model directory that takes ``delay_s`` per call (what the probe measures)."""

    def __init__(self, delay_s: float, columns: tuple[str, ...] = ("price",)) -> None:
        self.delay_s, self.input_names, self.segment_columns = delay_s, list(columns), []

    def predict_outputs(self, df: pd.DataFrame) -> tuple[dict[str, Any], None]:
        assert set(self.input_names) <= set(df.columns), "the probe must send every column the model takes"
        time.sleep(self.delay_s)
        return {}, None


def test_performance_regressions_are_measured_side_by_side_and_read_from_tags() -> None:
    cfg = GateConfig(perf_probe_s=0.04)
    cand_tags = {PERF_TAGS["train_time_s"]: "100", PERF_TAGS["peak_memory_bytes"]: "not a number"}
    base_tags = {PERF_TAGS["train_time_s"]: "20", PERF_TAGS["peak_memory_bytes"]: str(2**30)}
    base = _Timed(0.0005, ("price", "promo"))  # the baseline takes a column the candidate dropped
    section, problems = performance(_Timed(0.004), base, cand_tags, base_tags, _data(20), cfg)  # type: ignore[arg-type]
    assert section["candidate"]["latency_ms"] > 2 * section["baseline"]["latency_ms"]
    assert section["regression"]["latency_ms"] > 0.5 and section["regression"]["throughput_rows_s"] > 0.33
    assert section["regression"]["train_time_s"] == pytest.approx(4.0)  # 100 s against 20 s
    assert "peak_memory_bytes" not in section["candidate"] and "peak_memory_bytes" not in section["regression"]
    assert {p.split()[1] for p in problems} == {"latency_ms", "throughput_rows_s", "train_time_s"}
    assert any("over gate.max_latency_regression 50%" in p for p in problems)

    alone, none = performance(_Timed(0.0), None, cand_tags, None, _data(20), cfg)  # type: ignore[arg-type]
    assert set(alone["candidate"]) == {"latency_ms", "throughput_rows_s", "train_time_s"} and alone["baseline"] == {}
    assert none == [] and alone["regression"] == {}


def test_checks_fail_warn_or_stay_silent_as_configured() -> None:
    report = GateReport("m", 2, 1, "production", "fp", 10, "regression", "rmse", {})
    report.judge("warn", ["slow"])
    report.judge("off", ["ignored"])
    assert report.passed and report.warnings == ["slow"]
    report.judge("fail", ["slower"])
    assert not report.passed and report.failures == ["slower"]
    assert report.to_dict()["warnings"] == ["slow"] and report.to_dict()["passed"] is False


def test_gate_options_are_validated_with_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(PipelineJobConfig, None, ["gate.linear_baseline=sometimes"])
    assert "linear_baseline" in str(e.value) and "'fail', 'warn' or 'off'" in str(e.value)
    with pytest.raises(ConfigError, match="max_group_gap"):
        load_config(PipelineJobConfig, None, ["gate.max_group_gap=-0.1"])
    cfg = load_config(PipelineJobConfig, None, ["gate.group_columns=[region, age_band]", "gate.perf_regressions=fail"])
    assert cfg.gate.group_columns == ["region", "age_band"] and cfg.gate.perf_regressions == "fail"
    assert cfg.gate.require_reproducible_lineage is None and cfg.gate.linear_baseline == "fail"
    # YAML reads a bare `off` as false; for these options it means `off`
    off = load_config(PipelineJobConfig, None, ["gate.linear_baseline=off", "gate.unimportant_features=off"])
    assert off.gate.linear_baseline == "off" and off.gate.unimportant_features == "off"
