"""Every registered version is a standard MLflow model: ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` predicts
exactly what ``Registry().load("NAME@ALIAS").predict`` does (regression, binary, multiclass, a model set), with a
signature and an input example; versions registered before the MLflow files existed still load in rayml."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from onnx import TensorProto, helper

import rayml
from rayml.config import DataConfig
from rayml.data import infer_schema, reference_stats
from rayml.errors import ModelError
from rayml.models import ModelDir, ModelSetWriter, OnnxPredictor, build_model, build_spec, export_onnx
from rayml.models.model_dir import (
    CONDA_ENV_FILE,
    INPUT_EXAMPLE_FILE,
    META_FILE,
    MLMODEL_FILE,
    MODEL_FILE,
    PYTHON_ENV_FILE,
    REQUIREMENTS_FILE,
    SERVING_INPUT_FILE,
)
from rayml.registry import Registry
from rayml.testing import sample_frame

MLFLOW_FILES = (MLMODEL_FILE, INPUT_EXAMPLE_FILE, SERVING_INPUT_FILE, REQUIREMENTS_FILE, PYTHON_ENV_FILE, CONDA_ENV_FILE)
CLASSES = ["high", "low", "mid"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return sample_frame(rows_per_segment=20, segments=3)


@pytest.fixture(scope="module")
def models(frame: pd.DataFrame) -> dict[str, tuple[bytes, dict]]:
    """ONNX bytes and metadata per task: the real MLP export for regression and binary, a hand-built multiclass graph."""
    out = {}
    for task, target in (("regression", "sales"), ("binary", "high_sales")):
        ignore = ["date", "sales", "high_sales"]
        ignore.remove(target)
        schema = infer_schema(frame, DataConfig(target=target, task=task, ignore_columns=ignore))
        onnx_bytes = export_onnx(build_model(build_spec(frame, schema, [8], 0.0, 2), seed=1))
        out[task] = (onnx_bytes, {"task": task, "target": target, "schema": schema.to_dict()})
    out["multiclass"] = (_multiclass_graph(), {"task": "multiclass", "target": "tier", "class_labels": CLASSES})
    return out


def _multiclass_graph(classes: list[str] | list[int] = CLASSES) -> bytes:
    """Raw columns ``price`` (FP32) and ``region`` (BYTES) in; ``label`` (one of ``classes``, strings or integers) and
    ``probabilities`` [N, 3] out."""
    ints = all(isinstance(c, int) for c in classes)
    label_type = TensorProto.INT64 if ints else TensorProto.STRING
    nodes = [
        helper.make_node("Unsqueeze", ["price", "axis1"], ["price_col"]),
        helper.make_node("Mul", ["price_col", "weights"], ["scaled"]),
        helper.make_node("Equal", ["region", "west"], ["is_west"]),
        helper.make_node("Cast", ["is_west"], ["west_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["west_f", "axis1"], ["west_col"]),
        helper.make_node("Mul", ["west_col", "west_weights"], ["west_term"]),
        helper.make_node("Add", ["scaled", "west_term"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["best"], axis=1, keepdims=0),
        helper.make_node("Gather", ["classes", "best"], ["label"], axis=0),
    ]
    inits = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("weights", TensorProto.FLOAT, [1, 3], [0.3, -0.2, 0.05]),
        helper.make_tensor("west", TensorProto.STRING, [], [b"west"]),
        helper.make_tensor("west_weights", TensorProto.FLOAT, [1, 3], [-2.0, 1.0, 3.0]),
        helper.make_tensor("classes", label_type, [3], classes if ints else [str(c).encode() for c in classes]),
    ]
    graph = helper.make_graph(
        nodes,
        "multiclass",
        [
            helper.make_tensor_value_info("price", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("region", TensorProto.STRING, ["N"]),
        ],
        [
            helper.make_tensor_value_info("label", label_type, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _write_model(frame: pd.DataFrame, models: dict, task: str, out: Path, **kw) -> Path:
    onnx_bytes, meta = models[task]
    return ModelDir.write_model(out, onnx_bytes=onnx_bytes, meta=meta, **kw).path


def _write_set(frame: pd.DataFrame, models: dict, out: Path, **kw) -> Path:
    _, meta = models["regression"]
    schema = infer_schema(frame, DataConfig(target="sales", ignore_columns=["date", "high_sales"]))
    spec = build_spec(frame, schema, [8], 0.0, 2)
    writer = ModelSetWriter(out, ["store_id"])
    for i, key in enumerate(["store_000", "store_001"]):
        writer.add_segment(key, i, export_onnx(build_model(spec, seed=20 + i)), rows=20)
    writer.add_fallback_segment("store_002", rows=3)
    return writer.finish(
        export_onnx(build_model(spec, seed=19)),
        serve_fallback=True,
        meta=meta,
        reference_stats={"global": reference_stats(frame, schema), "segments": {}},
        **kw,
    )


def _register(registry: Registry, name: str, path: Path) -> str:
    info = registry.register(name, path, registry.create_run("mlflow-model-tests", name), {})
    registry.set_alias(name, info.version, "production")
    return f"{name}@production"


@pytest.fixture
def models_uri(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The test's registry as MLflow's own tracking and registry URI (what ``models:/`` URIs resolve against)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry.tracking_uri)
    return registry


WRITERS: dict[str, Callable[..., Path]] = {
    "regression": lambda f, m, out, **kw: _write_model(f, m, "regression", out, **kw),
    "binary": lambda f, m, out, **kw: _write_model(f, m, "binary", out, **kw),
    "multiclass": lambda f, m, out, **kw: _write_model(f, m, "multiclass", out, **kw),
    "model_set": _write_set,
}
EXPECTED_INPUTS = {  # the signature: a model set's segment column first, then the graph's inputs, typed as the frame is
    "regression": {"price": "double", "day_of_week": "long", "region": "string"},
    "binary": {"price": "double", "month": "long", "promo": "string"},
    "multiclass": {"price": "double", "region": "string"},
    "model_set": {"store_id": "string", "price": "double", "day_of_week": "long", "category": "string"},
}


# --- the promise ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(WRITERS))
def test_mlflow_pyfunc_predicts_what_rayml_predicts(kind: str, frame, models, models_uri: Registry, tmp_path: Path) -> None:
    path = WRITERS[kind](frame, models, tmp_path / kind, input_example=frame.head(8))
    ref = _register(models_uri, f"m-{kind}".replace("_", "-"), path)

    pyfunc = mlflow.pyfunc.load_model(f"models:/{ref}")
    rows = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)  # a set's segments interleaved
    ours = Registry(models_uri.tracking_uri).load(ref).predict(rows)
    np.testing.assert_array_equal(np.asarray(pyfunc.predict(rows)), ours)
    assert len(ours) == len(rows)

    # the MLmodel: both flavors, the signature (one typed column per input) and the input example
    mlmodel = yaml.safe_load((path / MLMODEL_FILE).read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "rayml.models._pyfunc"
    assert mlmodel["flavors"]["onnx"]["data"] == MODEL_FILE and mlmodel["flavors"]["onnx"]["onnx_version"] == onnx.__version__
    assert mlmodel["flavors"]["onnx"]["providers"] == ["CPUExecutionProvider"]
    signature = pyfunc.metadata.get_input_schema()
    columns = signature.input_names()
    types = {s.name: s.type.name for s in signature.inputs}
    assert all(s.required for s in signature.inputs)
    md = ModelDir.read(path)
    assert columns == [*md.segment_columns, *md.input_names]
    assert {c: types[c] for c in EXPECTED_INPUTS[kind]} == EXPECTED_INPUTS[kind]
    outputs = pyfunc.metadata.get_output_schema().input_names()
    assert outputs == (["label"] if kind == "multiclass" else ["prediction"])
    pd.testing.assert_frame_equal(pyfunc.input_example, frame.head(5)[columns], check_dtype=False)
    np.testing.assert_array_equal(pyfunc.predict(pyfunc.input_example), md.predict_frame(frame.head(5)))


def test_a_multiclass_model_answers_probabilities_when_asked(frame, models, tmp_path: Path) -> None:
    path = _write_model(frame, models, "multiclass", tmp_path / "m", input_example=frame.head(3))
    pyfunc = mlflow.pyfunc.load_model(str(path))
    labels = pyfunc.predict(frame)
    assert set(labels) <= set(CLASSES) and len(set(labels)) > 1  # the graph's strings, more than one class
    answer = pyfunc.predict(frame, params={"probabilities": True})
    assert list(answer.columns) == ["label", "proba_high", "proba_low", "proba_mid"]
    np.testing.assert_array_equal(answer["label"], labels)
    expected = OnnxPredictor(models["multiclass"][0]).predict_all(frame)["probabilities"]
    np.testing.assert_array_equal(answer.iloc[:, 1:].to_numpy(), expected)
    params = pyfunc.metadata.get_params_schema()
    assert [(p.name, p.dtype.name, p.default) for p in params.params] == [("probabilities", "boolean", False)]


def test_integer_class_labels_are_integer_labels(frame, tmp_path: Path) -> None:
    meta = {"task": "multiclass", "target": "tier", "class_labels": [3, 7, 9]}
    path = ModelDir.write_model(tmp_path / "m", onnx_bytes=_multiclass_graph([3, 7, 9]), meta=meta).path
    pyfunc = mlflow.pyfunc.load_model(str(path))
    assert [(s.name, s.type.name) for s in pyfunc.metadata.get_output_schema().inputs] == [("label", "long")]
    labels = pyfunc.predict(frame)
    assert labels.dtype == np.int64 and set(labels) <= {3, 7, 9}
    np.testing.assert_array_equal(labels, ModelDir.read(path).predict_frame(frame))
    answer = pyfunc.predict(frame, params={"probabilities": True})
    assert list(answer.columns) == ["label", "proba_3", "proba_7", "proba_9"]


def test_a_versions_environment_names_rayml(frame, models, tmp_path: Path) -> None:
    path = _write_model(frame, models, "regression", tmp_path / "m")
    requirements = (path / REQUIREMENTS_FILE).read_text().split()
    assert f"rayml=={rayml.__version__}" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    assert any(r.startswith("onnxruntime==") for r in requirements)
    assert mlflow.pyfunc.get_model_dependencies(str(path)) == str(path / REQUIREMENTS_FILE)
    conda = yaml.safe_load((path / CONDA_ENV_FILE).read_text())
    assert f"rayml=={rayml.__version__}" in conda["dependencies"][-1]["pip"]
    assert yaml.safe_load((path / PYTHON_ENV_FILE).read_text())["dependencies"] == ["-r requirements.txt"]
    assert json.loads((path / SERVING_INPUT_FILE).read_text())["dataframe_split"]["columns"]


def test_the_file_names_are_mlflows() -> None:
    # MLflow finds MLmodel and requirements.txt by name; the rest are named in MLmodel but keep MLflow's names too
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.models.utils import EXAMPLE_FILENAME, SERVING_INPUT_FILENAME
    from mlflow.utils.environment import _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME, _REQUIREMENTS_FILE_NAME

    assert (MLMODEL_FILE, REQUIREMENTS_FILE, PYTHON_ENV_FILE, CONDA_ENV_FILE) == (
        MLMODEL_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _CONDA_ENV_FILE_NAME,
    )
    assert (INPUT_EXAMPLE_FILE, SERVING_INPUT_FILE) == (EXAMPLE_FILENAME, SERVING_INPUT_FILENAME)


# --- without an input example: one row of aggregates -------------------------------------------------------------------
def test_without_an_example_one_row_is_derived_from_the_statistics(frame, models, tmp_path: Path) -> None:
    onnx_bytes, meta = models["regression"]
    schema = infer_schema(frame, DataConfig(target="sales", ignore_columns=["date", "high_sales"]))
    stats = reference_stats(frame, schema)
    path = ModelDir.write_model(tmp_path / "m", onnx_bytes=onnx_bytes, meta=meta, reference_stats=stats).path
    pyfunc = mlflow.pyfunc.load_model(str(path))
    example = pyfunc.input_example
    assert len(example) == 1 and list(example.columns) == ModelDir.read(path).input_names
    region = stats["features"]["region"]
    assert example.loc[0, "region"] == region["categories"][0]  # the most frequent category
    edges = stats["features"]["price"]["edges"]
    assert example.loc[0, "price"] == edges[len(edges) // 2]  # the median decile edge, not a training row
    types = {s.name: s.type.name for s in pyfunc.metadata.get_input_schema().inputs}
    assert set(types.values()) == {"double", "string"} and types["day_of_week"] == "double"
    np.testing.assert_array_equal(pyfunc.predict(example), OnnxPredictor(onnx_bytes).predict(example))


def test_a_model_sets_derived_example_is_of_its_first_segment(frame, models, tmp_path: Path) -> None:
    path = _write_set(frame, models, tmp_path / "set")
    pyfunc = mlflow.pyfunc.load_model(str(path))
    assert pyfunc.input_example.loc[0, "store_id"] == "store_000"
    np.testing.assert_array_equal(pyfunc.predict(pyfunc.input_example), ModelDir.read(path).predict_frame(pyfunc.input_example))


def test_the_example_keeps_only_a_few_rows_of_the_models_columns(frame, models, tmp_path: Path) -> None:
    path = _write_model(frame, models, "multiclass", tmp_path / "m", input_example=frame)
    split = json.loads((path / INPUT_EXAMPLE_FILE).read_text())
    assert split["columns"] == ["price", "region"] and len(split["data"]) == 5  # no target, no other column


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (pd.DataFrame({"price": [1.0]}), r"lacks column\(s\) \['region'\]"),
        (pd.DataFrame({"price": [], "region": []}), "has no rows"),
        ([{"price": 1.0, "region": "west"}], "must be a pandas DataFrame, not list"),
    ],
)
def test_a_bad_example_is_a_clear_error_and_writes_nothing(models, tmp_path: Path, example, message: str) -> None:
    onnx_bytes, meta = models["multiclass"]
    with pytest.raises(ModelError, match=message) as e:
        ModelDir.write_model(tmp_path / "m", onnx_bytes=onnx_bytes, meta=meta, input_example=example)
    assert e.value.hint and not (tmp_path / "m").exists()


# --- the old layout ---------------------------------------------------------------------------------------------------
def test_a_version_registered_before_the_mlflow_files_still_loads(frame, models, models_uri: Registry, tmp_path: Path) -> None:
    path = _write_model(frame, models, "binary", tmp_path / "new", input_example=frame.head(3))
    old = tmp_path / "old"
    shutil.copytree(path, old)
    for name in MLFLOW_FILES:
        (old / name).unlink()
    assert sorted(p.name for p in old.iterdir()) == sorted([MODEL_FILE, META_FILE])
    ref = _register(models_uri, "old-layout", old)

    loaded = Registry(models_uri.tracking_uri).load(ref)
    assert loaded.model_dir.task == "binary" and loaded.model_dir.input_names == ModelDir.read(path).input_names
    np.testing.assert_array_equal(loaded.predict(frame), ModelDir.read(path).predict_frame(frame))
    with pytest.raises(mlflow.exceptions.MlflowException, match="MLmodel"):  # MLflow needs the new layout
        mlflow.pyfunc.load_model(f"models:/{ref}")
