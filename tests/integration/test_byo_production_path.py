"""Models made elsewhere take the whole production path, on data of their own (scikit-learn's bundled datasets).

Regression on the diabetes data (with a text column): rayml's MLP (v1), an XGBoost model (v2), a scikit-learn
Pipeline with a ColumnTransformer (v3) and a LightGBM model (v4) under ONE model name: a 50/50 canary between the MLP
and XGBoost with the Pipeline mirrored as the shadow, a pinned version, batch scoring and drift with XGBoost, the gate
and an automatic rollout that promotes LightGBM over the MLP. Nothing downstream knows which framework made a version.
(Multiclass on the wine data, a Pipeline next to XGBoost: notebooks/05_bring_your_own_model.ipynb, run by the e2e
suite.)
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

import rayml
from rayml.batch import run_batch
from rayml.config import BatchJobConfig, DataConfig, DriftConfig, GateConfig, ServeJobConfig, load_config
from rayml.gate import run_gate
from rayml.monitor import drift_of_frame, global_reference, predict_frame
from rayml.registry import PRODUCTION, Registry
from rayml.serve import deploy, start_rollout
from rayml.serve._rollout_runtime import load_state, stop_controllers
from rayml.testing import LIGHT_SERVE
from tests.quickmodels import register_quick

pytestmark = pytest.mark.usefixtures("ray_session")



@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, _registry_template: Path) -> Registry:
    db = tmp_path_factory.mktemp("byo-registry") / "mlflow.db"
    shutil.copy(_registry_template, db)
    return Registry(f"sqlite:///{db}")


def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    df = load_diabetes(as_frame=True, scaled=False).frame
    df["sex"] = df["sex"].map({1.0: "F", 2.0: "M"})  # a text column, one-hot encoded inside the Pipeline
    return df


def sklearn_pipeline(df: pd.DataFrame, target: str, estimator):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X = df.drop(columns=[target])
    text = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    numbers = [c for c in X.columns if c not in text]
    prep = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
            ("txt", OneHotEncoder(handle_unknown="ignore"), text),
        ]
    )
    return Pipeline([("prep", prep), ("model", estimator)]).fit(X, df[target])


def serve_cfg(port: int, models: str, *extra: str) -> ServeJobConfig:
    return load_config(ServeJobConfig, None, [f"serve.port={port}", f"serve.models={{{models}}}", *LIGHT_SERVE, *extra])


def stats_window(model: str, since: float) -> dict:
    from ray import serve

    from rayml.serve._stats import by_version

    return by_version(serve.get_deployment_handle("RaymlStats", "rayml").window.remote(model, since).result())


def test_foreign_regressors_share_a_name_with_rayml_and_take_every_step(
    registry: Registry, serve_instance: dict, tmp_path: Path
) -> None:
    import lightgbm
    import xgboost
    from sklearn.linear_model import Ridge

    df = diabetes()
    numbers = df.drop(columns=["target", "sex"])
    # v1: rayml's MLP; v2: XGBoost and v4: LightGBM on the number columns only; v3: a Pipeline that one-hot encodes
    # the text column
    register_quick(registry, "diabetes", df, DataConfig(target="target", segment=[], ignore_columns=[]), epochs=60)
    xgb = xgboost.XGBRegressor(n_estimators=60, max_depth=3).fit(numbers, df["target"])
    v2 = rayml.register_model(xgb, name="diabetes", sample=df, target="target", registry=registry)
    pipe = sklearn_pipeline(df, "target", Ridge())
    v3 = rayml.register_model(pipe, name="diabetes", sample=df, target="target", registry=registry)
    lgbm = lightgbm.LGBMRegressor(n_estimators=60, num_leaves=7, verbose=-1).fit(numbers, df["target"])
    v4 = rayml.register_model(lgbm, name="diabetes", sample=df, target="target", registry=registry)
    assert (v2.version, v3.version, v4.version) == (2, 3, 4)
    tags = {v: registry.get_version("diabetes", v).tags for v in (2, 3, 4)}
    assert [tags[v]["rayml.source_framework"] for v in (2, 3, 4)] == ["xgboost", "sklearn", "lightgbm"]
    assert tags[2]["rayml.data_fingerprint"] and tags[2]["rayml.converter"] == "onnxmltools"
    rows = df.drop(columns=["target"])  # one request shape for all four: the raw columns
    expected = {v: registry.load(f"diabetes:{v}").predict(rows) for v in (1, 2, 3, 4)}
    np.testing.assert_allclose(expected[2], xgb.predict(numbers), rtol=1e-4, atol=1e-3)  # parity, through the registry
    np.testing.assert_allclose(expected[3], pipe.predict(rows), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(expected[4], lgbm.predict(numbers), rtol=1e-4, atol=1e-3)

    # --- serve: a 50/50 canary between rayml's MLP and XGBoost, the Pipeline mirrored as the shadow
    port, url = serve_instance["port"], serve_instance["url"]
    models = "diabetes: {versions: [{version: 1, weight: 0.5}, {version: 2, weight: 0.5}], shadow: {version: 3, percent: 100}}"
    deploy(serve_cfg(port, models), registry=registry)
    since = time.time()
    answered: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(0, 80, 2):
            part = rows.iloc[i : i + 2]
            r = client.post("/v1/models/diabetes:predict", json={"instances": part.to_dict(orient="records")})
            assert r.status_code == 200, r.text
            version = r.headers["x-rayml-model-version"]
            answered[version] = answered.get(version, 0) + 1
            np.testing.assert_allclose(r.json()["predictions"], expected[int(version)][i : i + 2], rtol=1e-4, atol=1e-3)
        pinned = client.post(
            "/v2/models/diabetes/versions/3/infer",
            json={"inputs": [{"name": c, "shape": [3], "datatype": "BYTES" if c == "sex" else "FP64",
                              "data": rows[c].head(3).tolist()} for c in rows.columns]},
        )
        assert pinned.status_code == 200, pinned.text
        np.testing.assert_allclose(pinned.json()["outputs"][0]["data"], expected[3][:3], rtol=1e-4, atol=1e-3)
    assert set(answered) == {"1", "2"}, answered  # both frameworks answer under one name
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not stats_window("diabetes", since).get((3, "shadow")):
        time.sleep(0.5)
    shadow = stats_window("diabetes", since)[(3, "shadow")]
    assert shadow.requests > 0 and shadow.disagreement("regression") is not None

    # --- the gate: LightGBM against the MLP in production, on the same rows
    registry.set_alias("diabetes", 1, PRODUCTION)
    report = run_gate(registry, "diabetes", 4, df, GateConfig(max_regression=0.5, max_segment_regression=0.5))
    assert report.passed, report.failures
    assert report.baseline == 1 and report.primary_metric == "rmse"
    assert report.candidate_metrics["rmse"] < report.trivial_metrics["rmse"]

    # --- batch scoring with XGBoost: every row once, the same predictions
    (tmp_path / "in").mkdir()
    batch_in = df.assign(row=np.arange(len(df)))
    half = len(df) // 2
    batch_in.iloc[:half].to_parquet(tmp_path / "in" / "part-0.parquet")
    batch_in.iloc[half:].to_parquet(tmp_path / "in" / "part-1.parquet")
    out = tmp_path / "out"
    summary = run_batch(BatchJobConfig(), model="diabetes:2", input=str(tmp_path / "in"), output=str(out), registry=registry)
    assert summary.ok and summary.rows == len(df)
    got = pd.read_parquet(out).sort_values("row")
    assert list(got["row"]) == list(range(len(df))) and set(got.model_version) == {2}
    np.testing.assert_allclose(got["prediction"], expected[2], rtol=1e-4, atol=1e-3)

    # --- drift against the XGBoost version's reference statistics (its sample): none on the same rows, bmi shifted
    loaded = registry.load("diabetes:2")
    same = drift_of_frame(global_reference(loaded), df, predict_frame(loaded, df), "target", DriftConfig())
    shifted_df = df.assign(bmi=df.bmi + 3 * df.bmi.std())
    shifted = drift_of_frame(global_reference(loaded), shifted_df, predict_frame(loaded, shifted_df), "target", DriftConfig())
    assert same["status"] == "ok" and shifted["drifted_features"] == ["bmi"]

    # --- an automatic rollout of LightGBM over the MLP, under live traffic: promoted
    rollout = [
        "rollout.steps=[50, 100]",
        "rollout.interval_s=2",
        "rollout.min_requests=5",
        "rollout.poll_interval_s=0.25",
        "rollout.failure_budget=0",
        "rollout.max_p95_latency_ratio=null",
        "rollout.max_disagreement=null",
        f"rollout.state_dir={tmp_path / 'rollouts'}",
    ]
    cfg = serve_cfg(port, "diabetes: {versions: [{version: 1, weight: 1.0}]}", *rollout)
    deploy(cfg, registry=registry)
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                c.post("/v1/models/diabetes:predict", json={"instances": rows.head(2).to_dict(orient="records")})
                time.sleep(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        start_rollout(cfg, "diabetes", 4, registry)
        deadline = time.monotonic() + 120
        state = load_state(cfg, "diabetes")[0]
        while not state.done and time.monotonic() < deadline:
            time.sleep(0.5)
            state = load_state(cfg, "diabetes")[0]
    finally:
        stop.set()
        thread.join()
        stop_controllers(cfg.serve.app_name)
    assert state.done and state.phase == "promoted", state
    assert registry.resolve("diabetes@production").version == 4
