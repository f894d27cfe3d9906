"""Bring your own model: scikit-learn, XGBoost, LightGBM, torch, ONNX and MLflow models convert to rayml's model
contract with parity, unsupported ones say what to do, files are read in safe formats only, and a registered foreign
model loads like a trained one."""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from typer.testing import CliRunner

from rayml.cli.main import app
from rayml.errors import DataError, OnnxParityError, UnsupportedModelError, UserError
from rayml.models import ModelDir, convert
from rayml.models.importers import load_lightgbm, load_skops, load_xgboost

# the models here are fitted for a few iterations: whether they converged is beside the point
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# --- data: small real datasets, one per task --------------------------------------------------------------------


def _frame(loader, target_map=None) -> tuple[pd.DataFrame, pd.Series]:
    x, y = loader(return_X_y=True, as_frame=True)
    return x, y.map(target_map) if target_map else y


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    """Regression, with a string column (sex) and a missing value for the ColumnTransformer."""
    x, y = _frame(load_diabetes)
    x = x.assign(sex=np.where(x["sex"] > 0, "M", "F"))
    x.loc[3, "bmi"] = np.nan
    return x.assign(y=y)


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    x, y = _frame(load_breast_cancer)
    return x.assign(y=y)


@pytest.fixture(scope="module")
def wine() -> pd.DataFrame:
    x, y = _frame(load_wine)
    return x.assign(y=y)


def _xy(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return df.drop(columns="y"), df["y"]


def _column_pipeline(df: pd.DataFrame, estimator) -> Pipeline:
    x, _ = _xy(df)
    numbers = [c for c in x.columns if c != "sex"]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex"]),
        ]
    )
    return Pipeline([("pre", pre), ("model", estimator)])


def _outputs(md: ModelDir, df: pd.DataFrame) -> dict[str, np.ndarray]:
    return md.predictor().predict_all(df)


# --- scikit-learn ------------------------------------------------------------------------------------------------
def test_a_column_transformer_pipeline_takes_raw_columns_text_included(diabetes: pd.DataFrame, tmp_path: Path) -> None:
    x, y = _xy(diabetes)
    pipe = _column_pipeline(diabetes, Ridge()).fit(x, y)
    md = convert(pipe, sample=diabetes, target="y", out_dir=tmp_path / "m")

    assert md.task == "regression" and md.target == "y" and md.path == tmp_path / "m"
    kinds = {t.name: t.datatype for t in md.inputs}
    assert list(kinds) == list(x.columns) and kinds["sex"] == "BYTES" and kinds["age"] == "FP32"
    assert [t.name for t in md.outputs] == ["prediction"]
    np.testing.assert_allclose(md.predict_frame(diabetes), pipe.predict(x), rtol=1e-4, atol=1e-3)
    # an unseen category and a missing number go through the graph's own imputer and encoder
    odd = x.head(2).assign(sex=["X", None], bmi=[np.nan, 0.1])
    np.testing.assert_allclose(md.predict_frame(odd), pipe.predict(odd.fillna({"sex": "X"})), rtol=1e-4, atol=1e-3)

    meta = md.meta
    assert meta["source"]["framework"] == "sklearn" and meta["source"]["converter"] == "skl2onnx"
    assert meta["parity"]["parity_rows"] == len(diabetes) and meta["parity"]["parity_max_abs_diff"] < 1e-2
    assert md.data_fingerprint and md.schema is not None
    assert {f.name: f.kind for f in md.schema.features}["sex"] == "categorical"
    stats = md.reference_stats()
    assert set(stats["features"]) == set(x.columns) and "prediction" in stats and stats["rows"] == len(diabetes)


def test_sklearn_classifiers_answer_the_contracts_outputs(cancer: pd.DataFrame, wine: pd.DataFrame) -> None:
    # binary with string classes: prediction = P(class_labels[1]); plain estimator on a matrix of the features
    x, y = _xy(cancer)
    names = y.map({0: "no", 1: "yes"})
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, names)
    md = convert(lr, sample=cancer.assign(y=names), target="y")
    assert (md.task, md.class_labels) == ("binary", ["no", "yes"])
    np.testing.assert_allclose(md.predict_frame(cancer), lr.predict_proba(x)[:, 1], atol=1e-4)

    # multiclass with string labels: label (BYTES) then probabilities [N, K] in class order
    xw, yw = _xy(wine)
    labels = yw.map({0: "a", 1: "b", 2: "c"})
    rf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(xw, labels)
    md = convert(rf, sample=wine.assign(y=labels), target="y")
    assert (md.task, md.class_labels) == ("multiclass", ["a", "b", "c"])
    assert [(t.name, t.datatype) for t in md.outputs] == [("label", "BYTES"), ("probabilities", "FP32")]
    out = _outputs(md, wine)
    assert list(out["label"]) == list(rf.predict(xw))
    np.testing.assert_allclose(out["probabilities"], rf.predict_proba(xw), atol=1e-5)
    assert md.reference_stats()["prediction"]["kind"] == "categorical"  # multiclass predictions are labels


# --- XGBoost and LightGBM: the scikit-learn API, the native Booster and its file -----------------------------------
@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_boosters_convert_from_the_sklearn_api_the_booster_and_its_file(
    framework: str, task: str, diabetes: pd.DataFrame, cancer: pd.DataFrame, wine: pd.DataFrame, tmp_path: Path
) -> None:
    df = {"regression": diabetes.drop(columns="sex"), "binary": cancer, "multiclass": wine}[task]
    x, y = _xy(df)
    if framework == "xgboost":
        import xgboost

        cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
        model = cls(n_estimators=8, max_depth=3, n_jobs=1).fit(x, y)
        booster, path = model.get_booster(), tmp_path / "model.json"
        model.save_model(path)
        from_file = load_xgboost(path)
    else:
        import lightgbm

        cls = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
        model = cls(n_estimators=8, num_leaves=7, n_jobs=1, verbose=-1).fit(x, y)
        booster, path = model.booster_, tmp_path / "model.txt"
        booster.save_model(path)
        from_file = load_lightgbm(path)
    expected = model.predict(x) if task == "regression" else model.predict_proba(x)
    for source in (model, booster, from_file):
        md = convert(source, sample=df, target="y")
        assert md.task == task and md.meta["source"]["converter"] == "onnxmltools", source
        assert md.meta["source"]["framework"] == framework
        out = _outputs(md, df)
        if task == "multiclass":
            assert md.class_labels == [0, 1, 2] and out["label"].dtype == np.int64
            np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
            assert (out["label"] == model.predict(x)).all()
        else:
            want = expected if task == "regression" else expected[:, 1]
            np.testing.assert_allclose(out["prediction"], want, rtol=1e-4, atol=1e-4)


# --- torch ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_a_boosters_encoded_classes_are_named_by_class_labels(framework: str, wine: pd.DataFrame) -> None:
    """Boosters learn class indices: the sklearn-API model's classes_ 0..K-1 are renamed by the caller's labels."""
    names = ["barolo", "grignolino", "barbera"]
    x, y = _xy(wine)
    if framework == "xgboost":
        import xgboost

        model = xgboost.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(x, y)
    else:
        import lightgbm

        model = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=7, n_jobs=1, verbose=-1).fit(x, y)
    named = wine.assign(y=np.asarray(names)[wine["y"]])
    md = convert(model, sample=named, target="y", class_labels=names)
    assert md.class_labels == names
    assert list(_outputs(md, named)["label"]) == list(np.asarray(names)[model.predict(x)])
    with pytest.raises(UserError, match="must name the model's 3 classes once each"):
        convert(model, sample=named, target="y", class_labels=names[:2])


def test_a_sklearn_classifier_keeps_the_labels_it_was_fitted_with(wine: pd.DataFrame) -> None:
    x, y = _xy(wine)
    model = LogisticRegression(max_iter=300).fit(x, y)
    with pytest.raises(UserError, match=r"knows its classes \[0, 1, 2\]; class_labels \['a', 'b', 'c'\] would rename"):
        convert(model, sample=wine, target="y", class_labels=["a", "b", "c"])


def test_torch_modules_export_for_every_task_and_logits_are_refused(diabetes: pd.DataFrame, wine: pd.DataFrame) -> None:
    import torch

    torch.manual_seed(0)
    reg = diabetes.drop(columns="sex").fillna(0.0)
    value = torch.nn.Sequential(torch.nn.Linear(9, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1), torch.nn.Flatten(0))
    md = convert(value, sample=reg, target="y")
    assert md.task == "regression" and md.meta["source"]["converter"] == "torch.onnx"
    with torch.no_grad():
        want = value(torch.tensor(reg.drop(columns="y").to_numpy(np.float32))).numpy()
    np.testing.assert_allclose(md.predict_frame(reg), want, atol=1e-5)

    # one probability column: binary only when the caller says so (0/1 target: a value or a probability?)
    scaled = (wine.drop(columns="y") - wine.drop(columns="y").mean()) / wine.drop(columns="y").std()
    two = scaled.assign(y=(wine["y"] == 1).astype(int))
    prob = torch.nn.Sequential(torch.nn.Linear(13, 1), torch.nn.Sigmoid())
    with pytest.raises(DataError, match="task='binary'"):
        convert(prob, sample=two, target="y")
    md = convert(prob, sample=two, target="y", task="binary", class_labels=[0, 1])
    assert md.task == "binary" and md.meta["parity"]["parity_label_agreement"] == 1.0

    # K probability columns: multiclass, labels from the caller
    three = scaled.assign(y=wine["y"].map({0: "a", 1: "b", 2: "c"}))
    softmax = torch.nn.Sequential(torch.nn.Linear(13, 3), torch.nn.Softmax(dim=1))
    md = convert(softmax, sample=three, target="y", class_labels=["a", "b", "c"])
    assert md.task == "multiclass" and set(_outputs(md, three)["label"]) <= {"a", "b", "c"}
    with pytest.raises(DataError, match=r"class\(es\) \['a', 'b', 'c'\].*assumed class labels \[0, 1, 2\]"):
        convert(softmax, sample=three, target="y")  # the module does not know its labels
    with pytest.raises(UnsupportedModelError, match="(?s)not probabilities.*Softmax"):
        convert(torch.nn.Linear(13, 3), sample=three, target="y", class_labels=["a", "b", "c"])


# --- ONNX files and MLflow models ---------------------------------------------------------------------------------
def test_onnx_models_with_column_inputs_or_one_matrix_input_and_zipmap(
    cancer: pd.DataFrame, diabetes: pd.DataFrame, tmp_path: Path
) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    # one [N, 1] input per column, named after the columns, and ZipMap's list-of-dicts probabilities
    x, y = _xy(diabetes)
    labels = (y > y.median()).map({True: "high", False: "low"})
    pipe = _column_pipeline(diabetes, LogisticRegression(max_iter=1000)).fit(x, labels)
    types = [(c, StringTensorType([None, 1]) if c == "sex" else FloatTensorType([None, 1])) for c in x.columns]
    path = tmp_path / "pipe.onnx"
    path.write_bytes(convert_sklearn(pipe, initial_types=types).SerializeToString())  # zipmap on: the default
    md = convert(path, sample=diabetes.assign(y=labels), target="y")
    assert (md.task, md.class_labels) == ("binary", ["high", "low"])  # the graph's own class labels
    np.testing.assert_allclose(md.predict_frame(diabetes), pipe.predict_proba(x)[:, 1], atol=1e-4)

    # one [N, F] matrix input, fed the feature columns in order (as a ModelProto and as bytes)
    xc, yc = _xy(cancer)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xc.to_numpy(), yc)
    proto = convert_sklearn(lr, initial_types=[("input", FloatTensorType([None, xc.shape[1]]))], options={"zipmap": False})
    for model in (proto, proto.SerializeToString()):
        md = convert(model, sample=cancer, target="y")
        assert md.task == "binary" and md.input_names == list(xc.columns)
    with pytest.raises(DataError, match="takes 30 feature"):
        convert(proto, sample=cancer.assign(extra=1.0), target="y")
    md = convert(proto, sample=cancer.assign(extra=1.0), target="y", features=list(xc.columns))
    np.testing.assert_allclose(md.predict_frame(cancer), lr.predict_proba(xc.to_numpy())[:, 1], atol=1e-4)
    # [N] inputs named after columns, of their own types (an int64 one is cast inside the graph)
    h, tp = onnx.helper, onnx.TensorProto
    graph = h.make_graph(
        [h.make_node("Cast", ["s1"], ["s1f"], to=tp.DOUBLE), h.make_node("Add", ["bmi", "s1f"], ["out"])],
        "add",
        [h.make_tensor_value_info("bmi", tp.DOUBLE, ["N"]), h.make_tensor_value_info("s1", tp.INT64, ["N"])],
        [h.make_tensor_value_info("out", tp.DOUBLE, ["N"])],
    )
    md = convert(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), sample=diabetes.assign(s1=3), target="y")
    assert [(t.name, t.datatype) for t in md.inputs] == [("bmi", "FP32"), ("s1", "FP32")] and md.task == "regression"
    np.testing.assert_allclose(md.predict_frame(pd.DataFrame({"bmi": [0.5], "s1": [2]})), [2.5])

    extra = onnx.ModelProto.FromString(proto.SerializeToString())
    extra.graph.input.append(onnx.helper.make_tensor_value_info("nope", onnx.TensorProto.FLOAT, [None]))
    with pytest.raises(UnsupportedModelError, match=r"input\(s\) \['input', 'nope'\] are not columns of the sample"):
        convert(extra, sample=cancer, target="y")


def test_mlflow_models_with_an_onnx_flavor_convert_and_pickled_flavors_are_refused(cancer: pd.DataFrame, tmp_path: Path) -> None:
    import mlflow.onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    x, y = _xy(cancer)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x.to_numpy(), y)
    proto = convert_sklearn(lr, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], options={"zipmap": False})
    mlflow.onnx.save_model(proto, str(tmp_path / "onnx-model"))
    md = convert(str(tmp_path / "onnx-model"), sample=cancer, target="y")
    assert md.meta["source"]["framework"] == "mlflow" and md.task == "binary"

    pickled = tmp_path / "sk-model"
    pickled.mkdir()
    (pickled / "MLmodel").write_text(
        "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    sklearn_version: 1.5.0\n"
        "  python_function:\n    loader_module: mlflow.sklearn\n"
    )
    with pytest.raises(UnsupportedModelError, match="no onnx flavor") as e:
        convert(str(pickled), sample=cancer, target="y")
    assert "pickle" in str(e.value) and "mlflow.sklearn.load_model" in str(e.value)


# --- parity -------------------------------------------------------------------------------------------------------
def test_a_parity_failure_names_the_worst_rows(diabetes: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    from rayml.models.importers import _convert

    x, y = _xy(diabetes)
    pipe = _column_pipeline(diabetes, Ridge()).fit(x, y)
    real_wrap = _convert.wrap

    def tampered(*args, **kwargs) -> onnx.ModelProto:
        # the converter "gets" the intercept wrong: every row is off by 5
        model = real_wrap(*args, **kwargs)
        (node,) = [n for n in model.graph.node if n.op_type == "LinearRegressor"]
        (intercepts,) = [a for a in node.attribute if a.name == "intercepts"]
        intercepts.floats[0] += 5
        return model

    monkeypatch.setattr(_convert, "wrap", tampered)
    with pytest.raises(OnnxParityError, match=r"does not match the sklearn Pipeline model on 442 of 442 sample row") as e:
        convert(pipe, sample=diabetes.set_index(diabetes.index + 1000), target="y")
    message = str(e.value)
    assert re.search(r"worst rows: row 1\d{3}: expected [\d.]+, got [\d.]+; row 1\d{3}", message), message
    assert message.count("; row ") == 4 and "Hint:" in message  # the 5 worst rows, and what to do

    monkeypatch.undo()
    with pytest.raises(OnnxParityError, match="worst rows"):  # float32 is not exact: no tolerance at all fails
        convert(pipe, sample=diabetes, target="y", atol=0.0, rtol=0.0)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
    noise=st.floats(-1.0, 1.0, allow_nan=False),
    row=st.integers(0, 19),
)
def test_parity_fails_exactly_when_a_row_is_past_the_tolerance(values: list[float], noise: float, row: int) -> None:
    from rayml.models.importers._parity import PARITY_ATOL, PARITY_RTOL, Answers, check_parity

    e = np.asarray(values)
    g = e.copy()
    i = row % len(e)
    g[i] += noise
    past = abs(g[i] - e[i]) > PARITY_ATOL + PARITY_RTOL * abs(e[i])
    try:
        figures = check_parity(
            Answers(e), Answers(g), task="regression", class_labels=[], index=pd.RangeIndex(len(e)), source="x"
        )
    except OnnxParityError as err:
        assert past and f"row {i}:" in str(err)
    else:
        assert not past and figures["parity_rows"] == len(e)


def test_a_missing_answer_matches_only_a_missing_answer() -> None:
    from rayml.models.importers._parity import Answers, check_parity

    e = np.array([1.0, np.nan, 2.0, np.inf])
    same = check_parity(Answers(e), Answers(e.copy()), task="regression", class_labels=[], index=pd.RangeIndex(4), source="x")
    assert same["parity_max_abs_diff"] == 0.0
    with pytest.raises(OnnxParityError, match=r"on 2 of 4 .*row 1: expected nan, got 3; row 2: expected 2, got nan"):
        got = np.array([1.0, 3.0, np.nan, np.inf])
        check_parity(Answers(e), Answers(got), task="regression", class_labels=[], index=pd.RangeIndex(4), source="x")


def test_classes_must_agree_on_every_row_except_ties() -> None:
    from rayml.models.importers._parity import Answers, check_parity

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.5, 0.0]])
    index = pd.Index(["r0", "r1", "r2"])
    ok = check_parity(
        Answers(probs, np.array(["a", "b", "b"], dtype=object)),
        Answers(probs, np.array(["a", "b", "a"], dtype=object)),  # row 2 is a tie: either class is right
        task="multiclass",
        class_labels=["a", "b", "c"],
        index=index,
        source="x",
    )
    assert ok["parity_label_agreement"] == 1.0
    with pytest.raises(OnnxParityError, match=r"on 1 of 3 .* row 'r1': expected 'b'.*got 'c'"):
        check_parity(
            Answers(probs, np.array(["a", "b", "a"], dtype=object)),
            Answers(probs, np.array(["a", "c", "a"], dtype=object)),
            task="multiclass",
            class_labels=["a", "b", "c"],
            index=index,
            source="x",
        )


# --- what cannot be imported says what to do --------------------------------------------------------------------------
def test_unsupported_models_and_mismatched_tasks_say_what_to_do(
    diabetes: pd.DataFrame, cancer: pd.DataFrame, wine: pd.DataFrame
) -> None:
    from sklearn.cluster import KMeans
    from sklearn.isotonic import IsotonicRegression

    x, y = _xy(cancer)
    with pytest.raises(UnsupportedModelError, match="not fitted"):
        convert(Ridge(), sample=cancer, target="y")
    iso = IsotonicRegression().fit(x[["mean radius"]], y)
    with pytest.raises(UnsupportedModelError, match=r"(?s)no converter for IsotonicRegression.*Hint: export .* \(--onnx\)"):
        convert(iso, sample=cancer, target="y")
    with pytest.raises(UnsupportedModelError, match="neither a regressor nor a classifier"):
        convert(KMeans(n_clusters=2, n_init=1).fit(x), sample=cancer)
    with pytest.raises(UnsupportedModelError, match=r"cannot import a builtins.dict.*\n.*scikit-learn.*MLflow"):
        convert({"weights": [1, 2]}, sample=cancer)
    ridge = Ridge().fit(x, y)
    with pytest.raises(
        UnsupportedModelError, match="task 'binary' was asked for, but the sklearn Ridge model answers regression"
    ):
        convert(ridge, sample=cancer, target="y", task="binary")
    lr = LogisticRegression(max_iter=50).fit(x.to_numpy(), y)
    with pytest.raises(DataError, match=r"class\(es\) \[2\] that are not among the model's class labels \[0, 1\]"):
        convert(lr, sample=cancer.assign(y=cancer["y"] + 1), target="y")
    xd, yd = _xy(diabetes.assign(sex=(diabetes["sex"] == "M").astype(float)).fillna(0.0))
    with pytest.raises(UnsupportedModelError, match=r"one numeric matrix, but column\(s\) \['sex'\] hold text"):
        convert(Ridge().fit(xd.to_numpy(), yd), sample=diabetes, target="y")
    with pytest.raises(DataError, match="target column 'nope' is not in the sample"):
        convert(ridge, sample=cancer, target="nope")

    import xgboost

    softmax = xgboost.XGBClassifier(n_estimators=2, objective="multi:softmax", n_jobs=1).fit(*_xy(wine))
    with pytest.raises(UnsupportedModelError, match="objective 'multi:softmax' is not supported"):
        convert(softmax, sample=wine, target="y")


def test_files_are_read_in_safe_formats_only(cancer: pd.DataFrame, tmp_path: Path) -> None:
    import skops.io

    x, y = _xy(cancer)
    lr = LogisticRegression(max_iter=50).fit(x, y)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(lr))
    with pytest.raises(UnsupportedModelError, match="never loads pickles"):
        load_xgboost(tmp_path / "model.pkl")
    with pytest.raises(UnsupportedModelError, match="not a LightGBM text model file"):
        load_lightgbm(tmp_path / "model.pkl")
    with pytest.raises(UnsupportedModelError, match="is not a skops file"):
        load_skops(tmp_path / "model.pkl")
    with pytest.raises(UnsupportedModelError, match="does not exist"):
        load_xgboost(tmp_path / "missing.json")

    custom = make_pipeline(FunctionTransformer(_double), LogisticRegression(max_iter=50)).fit(x, y)
    skops.io.dump(custom, tmp_path / "custom.skops")
    with pytest.raises(UnsupportedModelError, match=r"types rayml does not trust: \['.*_double'\]"):
        load_skops(tmp_path / "custom.skops")


def _double(a):
    return a * 2


# --- the registry and the CLI ---------------------------------------------------------------------------------------
def test_a_registered_foreign_model_carries_lineage_and_loads_like_a_trained_one(registry, wine: pd.DataFrame) -> None:
    import lightgbm

    import rayml

    x, y = _xy(wine)
    model = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=5, n_jobs=1, verbose=-1).fit(x, y)
    info = rayml.register_model(
        model, name="wine", sample=wine, target="y", reference=wine.head(50), registry=registry, alias="canary"
    )
    assert (info.name, info.version, info.aliases) == ("wine", 1, ["canary"])
    tags = info.tags
    assert tags["rayml.source_framework"] == "lightgbm" and tags["rayml.converter"] == "onnxmltools"
    assert tags["rayml.source_framework_version"] == lightgbm.__version__ and tags["rayml.converter_version"]
    assert tags["rayml.data_fingerprint"] and tags["rayml.git_commit"] and tags["rayml.run_id"] == info.run_id
    assert registry.run_metrics(info.run_id)["parity_label_agreement"] == 1.0
    assert registry.get_run(info.run_id).status == "FINISHED"

    loaded = registry.load("wine@canary")
    assert loaded.model_dir.lineage["rayml.run_id"] == info.run_id and loaded.model_dir.class_labels == [0, 1, 2]
    assert (loaded.model_dir.predict_frame(wine) == model.predict(x)).all()
    assert loaded.model_dir.reference_stats()["rows"] == 50  # the reference rows, not the sample

    # a registered version is an MLflow model with an onnx flavor: it imports again, resolved in THIS registry (not
    # MLflow's process-wide one), by version or by alias
    for uri in ("models:/wine/1", "models:/wine@canary"):
        again = rayml.register_model(uri, name="wine-copy", sample=wine, target="y", class_labels=[0, 1, 2], registry=registry)
        assert registry.load(again.ref).model_dir.meta["source"]["framework"] == "mlflow"
        assert (registry.load(again.ref).model_dir.predict_frame(wine) == model.predict(x)).all()


def test_the_cli_registers_model_files(
    registry, diabetes: pd.DataFrame, cancer: pd.DataFrame, wine: pd.DataFrame, tmp_path: Path, monkeypatch, capsys
) -> None:
    import lightgbm
    import skops.io
    import xgboost
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    x, y = _xy(diabetes)
    sample = tmp_path / "diabetes.parquet"
    diabetes.to_parquet(sample)
    skops.io.dump(_column_pipeline(diabetes, Ridge()).fit(x, y), tmp_path / "pipe.skops")
    xc, yc = _xy(cancer)
    cancer.to_csv(tmp_path / "cancer.csv", index=False)
    xgboost.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=1).fit(xc, yc).save_model(tmp_path / "x.json")
    xw, yw = _xy(wine)
    wine.assign(y=yw.map({0: "a", 1: "b", 2: "c"})).to_parquet(tmp_path / "wine.parquet")
    lightgbm.LGBMClassifier(n_estimators=4, num_leaves=4, n_jobs=1, verbose=-1).fit(xw, yw).booster_.save_model(
        tmp_path / "l.txt"
    )
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xc.to_numpy(), yc)
    onnx_path = tmp_path / "lr.onnx"
    onnx_path.write_bytes(
        convert_sklearn(lr, initial_types=[("input", FloatTensorType([None, 30]))], options={"zipmap": False}).SerializeToString()
    )
    base = ["models", "register", "--set", f"registry.tracking_uri={registry.tracking_uri}"]
    runs = {
        "skops": ["--skops", str(tmp_path / "pipe.skops"), "--sample", str(sample), "--target", "y"],
        "xgb": ["--xgboost", str(tmp_path / "x.json"), "--sample", str(tmp_path / "cancer.csv"), "--target", "y"],
        "lgb": ["--lightgbm", str(tmp_path / "l.txt"), "--sample", str(tmp_path / "wine.parquet"), "--target", "y"]
        + ["--class-labels", "a,b,c"],
        "onnx": ["--onnx", str(onnx_path), "--sample", str(tmp_path / "cancer.csv"), "--target", "y", "--alias", "canary"],
    }
    for name, args in runs.items():
        result = CliRunner().invoke(app, [*base, "--name", name, *args], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert f"Registered model: {name} version 1" in result.output and f"Next: rayml models show {name}:1" in result.output
    assert registry.load("skops:1").model_dir.meta["source"]["framework"] == "sklearn"
    assert registry.load("lgb:1").model_dir.class_labels == ["a", "b", "c"]
    assert registry.resolve("onnx@canary").tags["rayml.source_framework"] == "onnx"

    # the feature policy from the command line, as data.* gives it to training
    xgb = [*base, *runs["xgb"]]
    kept = CliRunner().invoke(
        app, [*xgb, "--name", "private", "--sensitive-columns", "mean*", "--allow-sensitive-in", "capture"], terminal_width=200
    )
    assert kept.exit_code == 0, kept.output
    md = registry.load("private:1").model_dir
    assert md.sensitive_columns == ["mean*"] and md.withheld_from("batch_output") == ["mean*"]
    assert md.withheld_from("capture") == []
    from rayml.cli import main as cli_main

    for args, message in (
        (["--forbidden-features", "*RADIUS*"], "matches data.forbidden_features"),
        (["--allow-sensitive-in", "logs"], "['logs']: not a use rayml knows"),
    ):
        monkeypatch.setattr(sys, "argv", ["rayml", *xgb, "--name", "refused", *args])
        with pytest.raises(SystemExit) as e:
            cli_main.main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Hint:" in err, err
    assert "refused" not in {m.name for m in registry.client.search_registered_models()}


def test_cli_mistakes_exit_2_with_a_hint(registry, cancer: pd.DataFrame, tmp_path: Path, monkeypatch, capsys) -> None:
    from rayml.cli import main as cli_main

    cancer.to_csv(tmp_path / "cancer.csv", index=False)
    base = ["rayml", "models", "register", "--name", "m", "--sample", str(tmp_path / "cancer.csv"), "--target", "y"]
    base += ["--set", f"registry.tracking_uri={registry.tracking_uri}"]
    (tmp_path / "a.json").write_text("{}")
    cases = {
        "give exactly one model source, got none": [],
        "got ['--onnx', '--xgboost']": ["--onnx", str(tmp_path / "a.onnx"), "--xgboost", str(tmp_path / "a.json")],
        "ONNX file": ["--onnx", str(tmp_path / "missing.onnx")],
        "XGBoost cannot read": ["--xgboost", str(tmp_path / "a.json")],
        "names no MLflow model": ["--mlflow-uri", str(tmp_path)],
    }
    for message, args in cases.items():
        monkeypatch.setattr(sys, "argv", [*base, *args])
        with pytest.raises(SystemExit) as e:
            cli_main.main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Hint:" in err, err
