"""The MLflow face of a model directory: what :class:`rayml.models.ModelDir` writes so that every version is a
standard MLflow model, and the loader MLflow calls.

The ``MLmodel`` file (the names are :mod:`rayml.models.model_dir`'s) has two flavors:

- ``python_function``, ``loader_module: rayml.models._pyfunc``: ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")``
  and ``mlflow models serve`` answer with :meth:`ModelDir.predict_frame`, so they give exactly what
  ``rayml.registry.Registry().load(ref).predict(df)`` gives, for a single model and for a model set (rows routed
  to their segment's model). It needs rayml in the environment: the requirements name ``rayml==<version>``.
- ``onnx``: ``model.onnx`` (a model set's global model) for ONNX-aware tools, with the onnx version and the
  execution providers rayml serves with.

The signature has one required column per input in the graph's order, after a model set's segment columns (rows
need them to be routed; MLflow drops columns the signature does not name). Column types are those of the input
example: the frame the model was trained on, so a frame like it passes MLflow's schema check (MLflow never
narrows ``float64`` to ``float`` nor widens ``int64`` to ``double``; the ONNX graph's FP32 is rayml's business).
Without an example, numbers are ``double`` and categories ``string``: give ``input_example`` to the writers.

Outputs: regression and binary answer ``prediction`` (float [N]: the value, or the probability of
``class_labels[1]``); multiclass answers ``label`` [N]. A multiclass model's signature also has the param
``probabilities`` (boolean, default false): ``predict(df, params={"probabilities": True})`` answers a frame with
``label`` and one ``proba_<class>`` column per class, in ``class_labels`` order.

The input example is at most :data:`MAX_EXAMPLE_ROWS` rows of the caller's ``input_example`` (only the columns the
model takes: no target, nothing else). Without one, it is one row made of aggregates, never a training row: a
number's median decile edge (else its mean, else 0) from the reference statistics, a category's most frequent value
(from the statistics or the schema, else ""), a model set's first segment.
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

import numpy as np
import pandas as pd

from rayml.errors import ModelError
from rayml.models.model_dir import (
    CONDA_ENV_FILE,
    INPUT_EXAMPLE_FILE,
    MLMODEL_FILE,
    MODEL_FILE,
    PYTHON_ENV_FILE,
    REQUIREMENTS_FILE,
    SERVING_INPUT_FILE,
    ModelDir,
)
from rayml.models.predictor import LABEL, PREDICTION, PROBABILITIES, TensorInfo

LOADER_MODULE = __name__
MAX_EXAMPLE_ROWS = 5
PROBABILITIES_PARAM = PROBABILITIES
# rayml's predictor serves on CPU (onnxruntime's CPU build); a GPU tool may edit the MLmodel
EXECUTION_PROVIDERS = ["CPUExecutionProvider"]


# --- loading (called by MLflow) ------------------------------------------------------------------------------------------
class PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` wraps: a model directory that predicts frames (see the module docstring)."""

    def __init__(self, model_dir: ModelDir) -> None:
        self.model_dir = model_dir

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray | pd.DataFrame:
        """Predictions [N] for raw rows, as rayml gives them; a frame with the class probabilities when asked."""
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if (params or {}).get(PROBABILITIES_PARAM):
            return self.probabilities(df)
        return self.model_dir.predict_frame(df)

    def probabilities(self, df: pd.DataFrame) -> pd.DataFrame:
        """``label`` and one ``proba_<class>`` column per class, in ``class_labels`` order (multiclass)."""
        md = self.model_dir
        if md.task != "multiclass":
            raise ModelError(
                f"{md.name} is a {md.task} model; only a multiclass model answers class probabilities",
                hint=f"call predict without params {{{PROBABILITIES_PARAM!r}: True}}",
            )
        outputs, _ = md.predict_outputs(df)
        probs = np.asarray(outputs[PROBABILITIES]).reshape(len(df), -1)
        frame = pd.DataFrame({LABEL: outputs[LABEL]}, index=df.index)
        for k, column in enumerate(md.probability_columns):
            frame[column] = probs[:, k]
        return frame


def _load_pyfunc(path: str) -> PyfuncModel:
    """MLflow's entry point (``loader_module``): ``path`` is the downloaded version, the model directory."""
    return PyfuncModel(ModelDir.read(path))


# --- writing (called by ModelDir) -----------------------------------------------------------------------------------------
def mlflow_files(
    *,
    kind: str,
    meta: dict[str, Any],
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    reference_stats: dict[str, Any] | None,
    input_example: pd.DataFrame | None,
) -> dict[str, str]:
    """The MLflow files of a model directory: file name -> text (``MLmodel``, input examples, environments).

    Args:
        kind: the directory's kind.
        meta: its metadata (``task``, ``class_labels``, ``schema``, a model set's ``segment_columns``/``segments``).
        inputs: the graph's inputs.
        outputs: the graph's outputs.
        reference_stats: the reference statistics file's content (for the derived example).
        input_example: rows the model takes (the first :data:`MAX_EXAMPLE_ROWS`, their input columns, are kept).

    Raises:
        ModelError: ``input_example`` is not a frame with a row and every column the model takes.
    """
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.models.utils import _Example
    from mlflow.pyfunc import add_to_model
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    segment_columns = [c for c in meta.get("segment_columns") or []] if kind == "model_set" else []
    columns = list(dict.fromkeys([*segment_columns, *(i.name for i in inputs)]))
    example = (
        _derived_example(meta, inputs, segment_columns, reference_stats)
        if input_example is None
        else _given_example(input_example, columns)
    )
    task = str(meta.get("task", "regression"))
    input_schema = _input_schema(example, columns)
    if task == "multiclass":
        int_labels = any(o.name == LABEL and o.datatype == "INT64" for o in outputs)
        signature = ModelSignature(
            inputs=input_schema,
            outputs=Schema([ColSpec("long" if int_labels else "string", LABEL)]),
            params=ParamSchema([ParamSpec(PROBABILITIES_PARAM, "boolean", False)]),
        )
    else:
        signature = ModelSignature(inputs=input_schema, outputs=Schema([ColSpec("float", PREDICTION)]))

    ex = _Example(example)
    info = {**ex.info, "artifact_path": INPUT_EXAMPLE_FILE}
    files = {INPUT_EXAMPLE_FILE: ex.json_input_example}
    if ex.json_serving_input:
        info["serving_input_path"] = SERVING_INPUT_FILE
        files[SERVING_INPUT_FILE] = ex.json_serving_input

    model = Model(signature=signature, saved_input_example_info=info, metadata={"rayml_kind": kind, "rayml_task": task})
    add_to_model(model, loader_module=LOADER_MODULE, conda_env=CONDA_ENV_FILE, python_env=PYTHON_ENV_FILE)
    env = _environment()
    model.add_flavor("onnx", onnx_version=env["onnx"], data=MODEL_FILE, providers=EXECUTION_PROVIDERS, onnx_session_options=None)
    files.update({name: env[name] for name in (REQUIREMENTS_FILE, PYTHON_ENV_FILE, CONDA_ENV_FILE)})
    files[MLMODEL_FILE] = model.to_yaml()
    return files


@functools.lru_cache(maxsize=1)
def _environment() -> dict[str, str]:
    """The environment files' text and the onnx version: the same for every model a process writes.

    The requirements are given, not inferred: MLflow's inference loads the model in a subprocess (seconds a write).
    """
    import yaml
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv
    from mlflow.version import VERSION as mlflow_version

    onnx = _pinned("onnx")  # the onnx flavor's loader needs it
    requirements = [f"mlflow=={mlflow_version}", f"rayml=={_rayml_version()}", _pinned("onnxruntime", "onnxruntime-gpu"), onnx]
    python_env = {k: v for k, v in _PythonEnv.current().to_dict().items() if v}  # as _PythonEnv.to_yaml writes it
    conda_env = _mlflow_conda_env(additional_pip_deps=requirements, install_mlflow=False)
    return {
        "onnx": onnx.partition("==")[2],
        REQUIREMENTS_FILE: "\n".join(requirements) + "\n",
        PYTHON_ENV_FILE: yaml.safe_dump(python_env, sort_keys=False, default_flow_style=False),
        CONDA_ENV_FILE: yaml.safe_dump(conda_env, default_flow_style=False),
    }


def _rayml_version() -> str:
    # the top package is loaded before any of its modules; importing it by name would import every layer (lint-imports)
    return str(sys.modules["rayml"].__version__)


def _pinned(*distributions: str) -> str:
    """``name==version`` of the first of ``distributions`` that is installed (the bare first name when none is)."""
    import importlib.metadata

    for name in distributions:
        try:
            return f"{name}=={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return distributions[0]


def _input_schema(example: pd.DataFrame, columns: list[str]) -> Any:
    """One required ColSpec per column, typed like the example's column (MLflow's inference, all columns required)."""
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "integer columns cannot hold missing values" hint, once per write
        inferred = infer_signature(example[columns]).inputs
    types = {spec.name: spec.type for spec in inferred.inputs}
    return Schema([ColSpec(types[c], c) for c in columns])


def _given_example(example: Any, columns: list[str]) -> pd.DataFrame:
    if not isinstance(example, pd.DataFrame):
        raise ModelError(
            f"input_example must be a pandas DataFrame, not {type(example).__name__}",
            hint="pass a few raw rows the model takes, e.g. the first rows of its training data",
        )
    missing = [c for c in columns if c not in example.columns]
    problems = [f"it lacks column(s) {missing}"] if missing else []
    if len(example) == 0:
        problems.append("it has no rows")
    if problems:
        raise ModelError(
            f"input_example does not fit the model: {'; '.join(problems)}; the model takes {columns}",
            hint="pass a few raw rows the model takes, e.g. the first rows of its training data",
        )
    return example[columns].head(MAX_EXAMPLE_ROWS).reset_index(drop=True)


def _derived_example(
    meta: dict[str, Any], inputs: list[TensorInfo], segment_columns: list[str], reference_stats: dict[str, Any] | None
) -> pd.DataFrame:
    """One row of aggregates (see the module docstring): nothing in it is a training row."""
    from rayml.data.stats import OTHER
    from rayml.models.segments import split_segment_key

    stats = reference_stats or {}
    if "global" in stats or "segments" in stats:  # a model set's file
        stats = stats.get("global") or {}
    features = stats.get("features") or {}
    schema_categories = {f["name"]: f.get("categories") or [] for f in (meta.get("schema") or {}).get("features", [])}
    row: dict[str, pd.Series] = {}
    keys = sorted(meta.get("segments") or {})
    parts = split_segment_key(keys[0]) if keys else []
    for i, column in enumerate(segment_columns):
        row[column] = pd.Series([parts[i] if i < len(parts) else ""], dtype=object)
    for t in inputs:
        if t.name in row:
            continue
        bins = features.get(t.name) or {}
        if t.datatype == "BYTES":
            seen = [c for c in bins.get("categories") or [] if c != OTHER] or list(schema_categories.get(t.name, []))
            row[t.name] = pd.Series([str(seen[0]) if seen else ""], dtype=object)
        else:
            edges = bins.get("edges") or []
            value = edges[len(edges) // 2] if edges else bins.get("mean", 0.0)
            row[t.name] = pd.Series([float(value)], dtype="float64")
    return pd.DataFrame(row)
