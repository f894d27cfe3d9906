"""Staleness measured, not assumed (no Ray): older versions scored on the newest labelled data, the fitted degradation
per day of age, the derived max age and its alert rule, `rayml monitor staleness` on captured rows, and the
pipeline's record-only stage."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from rayml.feedback import CAPTURE_SCHEMA, capture_dir, validate_labels, write_labels
from rayml.monitor import fit_degradation, measure_staleness, recommended_max_age, write_staleness_report
from rayml.registry import Registry
from rayml.testing import register_tiny_model, sample_frame
from tests.inprocess_cli import run_cli

MODEL = "aging"
DAY_MS = 86_400_000
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def _register_aging(
    registry: Registry, tracking_uri: str, scales_and_ages: list[tuple[float, float]], now: dt.datetime = NOW
) -> None:
    """One tiny regression version per (output scale, age in days before ``now``), oldest first: a version's
    predictions are its scale times the scale-1 version's, so the further from 1, the worse against labels made from
    scale 1."""
    for scale, _ in scales_and_ages:
        register_tiny_model(registry, MODEL, seed=0, output_scale=scale)
    # the registry keeps no way to register in the past: move each version's creation time in MLflow's own table
    con = sqlite3.connect(tracking_uri.removeprefix("sqlite:///"))
    now_ms = int(now.timestamp() * 1000)
    for version, (_, age) in enumerate(scales_and_ages, start=1):
        con.execute(
            "UPDATE model_versions SET creation_time = ? WHERE name = ? AND version = ?",
            (now_ms - int(age * DAY_MS), MODEL, version),
        )
    con.commit()
    con.close()


def _labelled(registry: Registry, version: int) -> pd.DataFrame:
    """Rows labelled with ``version``'s predictions plus noise: that version is the best one on them."""
    df = sample_frame()
    best = registry.load(f"{MODEL}:{version}").model_dir.predict_frame(df).astype("float64")
    df["sales"] = best + np.random.default_rng(0).normal(0.0, 0.2 * float(np.mean(best)), len(df))
    return df


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, dtype="float64") - np.asarray(b, dtype="float64")) ** 2)))


def test_older_versions_score_worse_and_the_fitted_trend_gives_the_max_age(
    registry: Registry, tracking_uri: str, tmp_path: Path
) -> None:
    # v1 is older than the window of 3 versions: never scored, however bad
    _register_aging(registry, tracking_uri, [(3.0, 30.0), (1.15, 20.0), (1.07, 10.0), (1.0, 1.0)])
    df = _labelled(registry, 4)
    report = measure_staleness(registry, MODEL, df, versions=3, max_degradation=0.05, source="holdout", now=NOW)

    assert [v.version for v in report.versions] == [2, 3, 4] and report.reference == 4
    assert report.primary_metric == "rmse" and not report.higher_is_better and report.rows == len(df)
    assert [round(v.age_days, 6) for v in report.versions] == [20.0, 10.0, 1.0]
    assert all(v.skipped is None and v.rows == len(df) for v in report.versions)
    base = registry.load(f"{MODEL}:4").model_dir.predict_frame(df)
    rmse = {v: _rmse(k * base, df["sales"]) for v, k in ((2, 1.15), (3, 1.07), (4, 1.0))}
    assert {v.version: v.primary for v in report.versions} == pytest.approx(rmse, rel=1e-4)
    degradation = {v: (rmse[v] - rmse[4]) / rmse[4] for v in rmse}
    assert {v.version: v.degradation for v in report.versions} == pytest.approx(degradation, rel=1e-4)
    assert 0 == degradation[4] < degradation[3] < degradation[2]  # worse the older

    # least squares through the reference on "days older than v4": 19 and 9
    assert [v.older_days for v in report.versions] == pytest.approx([19.0, 9.0, 0.0])
    slope = (19 * degradation[2] + 9 * degradation[3]) / (19**2 + 9**2)
    assert report.degradation_per_day == pytest.approx(slope, rel=1e-4) and slope > 0
    assert report.recommended_max_age_days == pytest.approx(0.05 / slope, rel=1e-4)
    assert report.status == "ok" and "per day of age" in report.reason
    assert report.newest_age_days == pytest.approx(1.0) and report.stale == (0.05 / slope < 1.0)

    # the derived threshold reaches the alert as a Prometheus rule
    rule = yaml.safe_load(report.alert_rule())[0]
    threshold = round(0.05 / slope * 86400)
    assert rule["alert"] == "RaymlModelStale" and rule["labels"] == {"severity": "ticket"}
    assert rule["expr"] == (
        f'time() - max by (model) (ray_rayml_last_training_success_timestamp_seconds{{model="{MODEL}"}}) > {threshold}'
    )
    paths = write_staleness_report(report, tmp_path / "report")
    saved = json.loads(paths["json"].read_text())
    assert saved["recommended_max_age_days"] == pytest.approx(0.05 / slope, rel=1e-4)
    assert [v["version"] for v in saved["versions"]] == [2, 3, 4] and saved["alert_rule"] == report.alert_rule()
    group = yaml.safe_load(paths["rules"].read_text())["groups"][0]
    assert group["rules"] == [rule]
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and "v2" in paths["html"].read_text()

    # a looser tolerance: a proportionally longer max age
    looser = measure_staleness(registry, MODEL, df, versions=3, max_degradation=0.2, now=NOW)
    assert looser.recommended_max_age_days == pytest.approx(4 * report.recommended_max_age_days)


def test_versions_the_data_cannot_score_are_skipped_with_the_reason(registry: Registry, tracking_uri: str) -> None:
    # the newest version is the worst here: older ones look better, so no max age follows
    _register_aging(registry, tracking_uri, [(1.0, 10.0), (1.2, 1.0)])
    df = _labelled(registry, 1)
    report = measure_staleness(registry, MODEL, df, versions=5, now=NOW)
    assert report.status == "no_degradation" and report.degradation_per_day < 0
    assert report.recommended_max_age_days is None and report.alert_rule() is None and not report.stale
    assert "not worse" in report.reason

    no_price = measure_staleness(registry, MODEL, df.drop(columns=["price"]), now=NOW)
    assert [v.skipped for v in no_price.versions] == ["the data lacks its input column(s) ['price']"] * 2
    assert no_price.status == "insufficient_versions" and no_price.reference is None
    assert no_price.reason.startswith("0 version(s) could be scored, 2 are needed (v1: the data lacks")
    assert no_price.to_dict()["versions"][0]["primary"] is None

    from rayml.errors import ConfigError, DataError

    with pytest.raises(DataError, match="no target column 'sales'") as e:
        measure_staleness(registry, MODEL, df.drop(columns=["sales"]))
    assert e.value.hint
    with pytest.raises(ConfigError, match="versions >= 2"):
        measure_staleness(registry, MODEL, df, versions=1)


@settings(max_examples=50, deadline=None)
@given(
    slope=st.floats(min_value=1e-4, max_value=1.0),
    ages=st.lists(st.floats(min_value=0.01, max_value=365.0), min_size=1, max_size=8),
    tolerance=st.floats(min_value=0.001, max_value=0.5),
)
def test_the_fit_recovers_a_linear_trend_and_the_max_age_is_where_it_meets_the_tolerance(
    slope: float, ages: list[float], tolerance: float
) -> None:
    fitted = fit_degradation(ages, [slope * a for a in ages])
    assert fitted == pytest.approx(slope, rel=1e-9)
    assert recommended_max_age(fitted, tolerance) * fitted == pytest.approx(tolerance, rel=1e-9)
    improving = fit_degradation(ages, [-slope * a for a in ages])
    assert improving is not None and improving < 0 and recommended_max_age(improving, tolerance) is None


def test_no_fit_without_an_older_version() -> None:
    assert fit_degradation([], []) is None and fit_degradation([0.0], [0.1]) is None
    assert recommended_max_age(None, 0.05) is None and recommended_max_age(0.0, 0.05) is None


def _capture(dest: str, version: int, hour: str, frame: pd.DataFrame, ids: list[str], route: str = "primary") -> None:
    n = len(frame)
    ts = dt.datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=dt.timezone.utc)
    table = pa.Table.from_pydict(
        {
            "inference_id": ids,
            "row": pa.array([0] * n, pa.int32()),
            "ts": pa.array([ts] * n, pa.timestamp("ms", tz="UTC")),
            "model": [MODEL] * n,
            "version": pa.array([version] * n, pa.int64()),
            "route": [route] * n,
            "segment": pa.nulls(n, pa.string()),
            "prediction": pa.array([0.0] * n),
            "predicted_label": pa.nulls(n, pa.string()),
            "probabilities": pa.nulls(n, pa.list_(pa.float64())),
            "inputs": frame.to_json(orient="records", lines=True).splitlines(),
        },
        schema=CAPTURE_SCHEMA,
    )
    folder = Path(capture_dir(dest, MODEL, version, hour))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"part-{version}-{route}.parquet")


def test_cli_scores_every_version_on_the_newest_labelled_captures(
    registry: Registry, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    now = dt.datetime.now(dt.timezone.utc)  # the command measures ages up to now
    _register_aging(registry, tracking_uri, [(1.2, 8.0), (1.0, 2.0)], now=now)
    df = _labelled(registry, 2)
    features = df.drop(columns=["sales", "high_sales", "date"])
    dest = str(tmp_path / "captures")
    ids = [f"req-{i}" for i in range(len(df))]
    # v1 served the older half, v2 the newer half and mirrored the older one as a shadow (the same requests)
    half = len(df) // 2
    older, newer = (f"{now - dt.timedelta(hours=h):%Y-%m-%dT%H}" for h in (30, 3))
    _capture(dest, 1, older, features.iloc[:half], ids[:half])
    _capture(dest, 2, older, features.iloc[:half], ids[:half], route="shadow")
    _capture(dest, 2, newer, features.iloc[half:], ids[half:])
    labels = validate_labels(
        [{"inference_id": i, "label": float(y)} for i, y in zip(ids, df["sales"], strict=True)], MODEL, "regression", [], "upload"
    )
    write_labels(dest, MODEL, labels.table)

    base = ["monitor", "staleness", "--model", MODEL, "--destination", dest, "--set", f"registry.tracking_uri={tracking_uri}"]
    code, out = run_cli([*base, "--max-degradation", "1000", "--report", str(tmp_path / "rep")], monkeypatch, capsys)
    assert code == 0, out
    assert f"{len(df)} newest labelled captured rows" in out and "(reference)" in out, out
    assert "Recommended max age:" in out and "RaymlModelStale" in out and f'model="{MODEL}"' in out
    saved = json.loads((tmp_path / "rep" / "staleness.json").read_text())
    assert saved["rows"] == len(df) and [v["rows"] for v in saved["versions"]] == [len(df), len(df)]
    assert saved["versions"][0]["degradation"] > 0 and saved["degradation_per_day"] > 0 and not saved["stale"]
    assert (tmp_path / "rep" / "staleness.rules.yml").is_file() and (tmp_path / "rep" / "staleness.html").is_file()

    # a tolerance the trend passes within hours: the newest version is already stale -> exit 2 for pipelines
    code, out = run_cli([*base, "--max-degradation", "0.0001", "--versions", "2"], monkeypatch, capsys)
    assert code == 2 and "Stale: retrain" in out, out

    # read newest hour first: the newer half alone is enough for max_rows=100
    code, out = run_cli([*base, "--set", "staleness.max_rows=100", "--max-degradation", "1000"], monkeypatch, capsys)
    hour = newer.replace("T", " ")
    span = f"({hour}:00 to {hour}:00 UTC)"
    assert code == 0 and f"100 newest labelled captured rows under {dest} {span}" in out, out

    # with --data, captures are not needed; the data must hold the target
    path = tmp_path / "holdout.parquet"
    df.drop(columns=["sales"]).to_parquet(path)
    code, out = run_cli([*base[:4], "--data", str(path), "--set", f"registry.tracking_uri={tracking_uri}"], monkeypatch, capsys)
    assert code == 2 and "no target column 'sales'" in out and "Hint:" in out, out


def test_the_pipeline_stage_records_staleness_and_never_fails(registry: Registry, tracking_uri: str, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from rayml.config import PipelineJobConfig, load_config
    from rayml.pipeline import PipelineState, StageContext, _stages as stages

    _register_aging(registry, tracking_uri, [(1.1, 6.0), (1.0, 1.0)], now=dt.datetime.now(dt.timezone.utc))
    df = _labelled(registry, 2)
    cfg = load_config(PipelineJobConfig, None, [f"model.name={MODEL}", "staleness.max_degradation=0.1"])
    state = PipelineState.new(MODEL, "r1", stages.STAGE_NAMES)
    prepared = SimpleNamespace(validation=df, source="new.parquet")
    ctx = StageContext(cfg, registry, state, str(tmp_path / "run"), prepared, release=None)  # type: ignore[arg-type]
    out = stages.staleness(ctx)
    assert out["status"] == "ok" and out["reference"] == 2 and [v["version"] for v in out["versions"]] == [1, 2]
    assert out["recommended_max_age_days"] == pytest.approx(0.1 / out["degradation_per_day"])
    assert Path(out["report"]).name == "staleness.html" and (tmp_path / "run" / "staleness" / "staleness.json").is_file()
    json.dumps(out)  # the state file holds it

    # a measurement that cannot run is recorded, not raised: the candidate is already released
    ctx.prepared = SimpleNamespace(validation=df.drop(columns=["sales"]), source="new.parquet")  # type: ignore[assignment]
    out = stages.staleness(ctx)
    assert out["status"] == "error" and "DataError: the data has no target column 'sales'" in out["error"]


def test_a_run_recorded_before_the_staleness_stage_resumes_there() -> None:
    from rayml.pipeline import DONE, PENDING, PipelineState, StageRecord
    from rayml.pipeline._run import with_current_stages
    from rayml.pipeline._stages import STAGE_NAMES

    old = PipelineState.from_dict(
        {"pipeline": "p", "run_id": "r", "stages": [vars(StageRecord(n, status=DONE)) for n in STAGE_NAMES[:-1]]}
    )
    assert old.status == DONE  # before: complete, and no record the staleness stage could be run from
    state = with_current_stages(old)
    assert [s.name for s in state.stages] == list(STAGE_NAMES) and state.stages[-1].status == PENDING
    assert state.next_stage == "staleness" and state.stage("train").status == DONE


def test_versions_minutes_apart_give_no_trend_per_day(registry: Registry, tracking_uri: str) -> None:
    # ten minutes between a much worse and the newest version: a slope per day from that would be huge and meaningless
    _register_aging(registry, tracking_uri, [(1.5, 10 / 1440), (1.0, 0.0)])
    report = measure_staleness(registry, MODEL, _labelled(registry, 2), versions=2, now=NOW)
    assert report.versions[0].degradation is not None and report.versions[0].degradation > 0.1
    assert report.status == "insufficient_versions" and report.degradation_per_day is None
    assert report.recommended_max_age_days is None and "span only 600 s" in report.reason, report.reason
