"""Request parsing, validation against a model's signature, and response bodies for the two HTTP protocols.

- Open Inference Protocol v2 (KServe v2): ``{"id", "parameters", "inputs": [{"name", "shape", "datatype", "data"}]}``
  -> ``{"model_name", "model_version", "id", "parameters", "outputs": [{"name", "shape", "datatype", "data"}]}``.
  Tabular inputs are one tensor per feature column: name = column, shape ``[N]`` (``[N, 1]`` is accepted too).
  Every output of the model is answered: ``prediction`` [N] (regression: the value; binary: the probability of
  class 1), or for a multiclass model ``label`` [N] (BYTES, or INT64 when the class labels are integers) and
  ``probabilities`` [N, K] (FP32, flattened row-major in ``data``, columns in the order of the class labels that
  ``GET /v2/models/{name}`` lists under ``parameters.class_labels``).
- KServe v1: ``{"instances": [{column: value, ...}, ...]}`` -> ``{"predictions": [...]}``: the first output (a
  multiclass model's labels). A multiclass model also answers ``"probabilities": [[p_1, ..., p_K], ...]`` and
  ``"class_labels": [...]`` when the request asks with a top-level ``"probabilities": true`` (like ``"segment"``,
  a top-level field next to ``instances``).

Every client mistake raises :class:`HttpError` with a 4xx status and a message that says what was wrong and how to
fix it; validation collects every problem of a request before raising. Pure Python + numpy (no Ray, no torch), so
the ingress stays light and this module is unit-tested directly.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayml.data.schema import UNKNOWN

NUMERIC_DATATYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"})
_NP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
_MAX_LISTED = 5


class HttpError(Exception):
    """A request that cannot be served: ``status`` (4xx for the client's mistakes) and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple:  # picklable, should one ever cross a process boundary
        return (type(self), (self.status, self.message))


@dataclass
class Tensor:
    """One input or output in v2 terms."""

    name: str
    datatype: str
    shape: list[int]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tensor:
        return cls(str(d["name"]), str(d["datatype"]), [int(x) for x in d["shape"]])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ParsedRequest:
    """A request reduced to columns: ``columns[name]`` holds one value per row."""

    columns: dict[str, list[Any]]
    rows: int
    request_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    datatypes: dict[str, str] = field(default_factory=dict)  # v2 only: the datatype each input declared


def parse_json(body: bytes) -> Any:
    """Decode a JSON body; 400 with the position of the first error otherwise."""
    if not body.strip():
        raise HttpError(400, "the request body is empty; send a JSON object (see GET /v2/models/{name} for the inputs)")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HttpError(
            400, f"the request body is not valid JSON ({e}); send a JSON object with Content-Type application/json"
        ) from e


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [x for row in data for x in (_flatten(row) if isinstance(row, list) else [row])]
    return data


def _check_rows(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise HttpError(413, f"the request has {rows} rows, more than the limit of {max_rows}; split it into smaller requests")


def parse_v2(payload: Any, max_rows: int) -> ParsedRequest:
    """Parse an Open Inference Protocol v2 inference request into columns.

    Raises:
        HttpError: 400 when the body is not a v2 request, 413 when it has more than ``max_rows`` rows.
    """
    if not isinstance(payload, dict):
        raise HttpError(400, f"a v2 inference request is a JSON object with 'inputs', not a {type(payload).__name__}")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise HttpError(
            400,
            "a v2 inference request needs a non-empty 'inputs' list: "
            '{"inputs": [{"name": "<column>", "shape": [N], "datatype": "FP32", "data": [...]}, ...]}',
        )
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise HttpError(400, "'parameters' must be a JSON object")
    request_id = payload.get("id")
    problems: list[str] = []
    columns: dict[str, list[Any]] = {}
    datatypes: dict[str, str] = {}
    rows: set[int] = set()
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where} is not an object")
            continue
        name, shape, datatype, data = item.get("name"), item.get("shape"), item.get("datatype"), item.get("data")
        if not isinstance(name, str) or not name:
            problems.append(f"{where} has no 'name'")
            continue
        where = f"input {name!r}"
        if name in columns:
            problems.append(f"{where} is given twice")
            continue
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            problems.append(f"{where} needs a 'shape' like [N] (one value per row)")
            continue
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            problems.append(f"{where} has shape {shape}; a tabular column has shape [N] (or [N, 1])")
            continue
        if not isinstance(datatype, str):
            problems.append(f"{where} needs a 'datatype' (FP32 for numbers, BYTES for strings)")
            continue
        if not isinstance(data, list):
            problems.append(f"{where} needs 'data' as a JSON list")
            continue
        flat = _flatten(data)
        if len(flat) != shape[0]:
            problems.append(f"{where} has shape {shape} but {len(flat)} values in 'data'")
            continue
        columns[name] = flat
        datatypes[name] = datatype.upper()
        rows.add(shape[0])
    if problems:
        raise HttpError(400, f"malformed v2 request: {'; '.join(problems)}")
    if len(rows) > 1:
        lengths = ", ".join(f"{n}={len(v)}" for n, v in columns.items())
        raise HttpError(422, f"inputs have different numbers of rows ({lengths}); every column needs one value per row")
    n = rows.pop()
    _check_rows(n, max_rows)
    if request_id is not None and not isinstance(request_id, (str, int)):
        raise HttpError(400, "'id' must be a string")
    return ParsedRequest(columns, n, None if request_id is None else str(request_id), parameters, datatypes)


def parse_v1(payload: Any, max_rows: int) -> ParsedRequest:
    """Parse a KServe v1 ``{"instances": [{column: value}, ...]}`` request into columns.

    Raises:
        HttpError: 400 when the body is not a v1 request, 413 beyond ``max_rows``, 422 when rows disagree on columns.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list) or not payload["instances"]:
        raise HttpError(
            400, 'a v1 predict request is {"instances": [{"<column>": <value>, ...}, ...]} with at least one instance'
        )
    instances = payload["instances"]
    _check_rows(len(instances), max_rows)
    bad = [i for i, row in enumerate(instances) if not isinstance(row, dict)]
    if bad:
        raise HttpError(400, f"instances {bad[:_MAX_LISTED]} are not objects; each instance maps column names to values")
    names: list[str] = []
    seen: set[str] = set()
    for row in instances:
        for k in row:
            if k not in seen:
                seen.add(k)
                names.append(k)
    missing = {n: [i for i, row in enumerate(instances) if n not in row] for n in names}
    problems = [f"column {n!r} is missing from instances {rows[:_MAX_LISTED]}" for n, rows in missing.items() if rows]
    if problems:
        raise HttpError(422, f"{'; '.join(problems)}; every instance needs the same columns")
    columns = {n: [row[n] for row in instances] for n in names}
    parameters = {k: v for k, v in payload.items() if k != "instances"}
    return ParsedRequest(columns, len(instances), None, parameters, {})


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate(
    request: ParsedRequest, inputs: list[Tensor], allow_missing: bool, ignore: frozenset[str] = frozenset()
) -> dict[str, np.ndarray]:
    """Check columns against a model's inputs and build the ONNX Runtime feed; 422 listing every problem otherwise.

    Args:
        request: the parsed request.
        inputs: the model's inputs (from its ONNX signature).
        allow_missing: whether null/NaN may appear in numeric columns (the model imputes); strings never may be null
            unless this is set (they become the unknown category).
        ignore: extra column names that are allowed and dropped (e.g. a segment column of a model set).
    """
    expected = {t.name: t for t in inputs}
    problems: list[str] = []
    missing = [n for n in expected if n not in request.columns]
    if missing:
        problems.append(f"missing column(s) {missing}")
    extra = [n for n in request.columns if n not in expected and n not in ignore]
    if extra:
        problems.append(f"unknown column(s) {extra}")
    feed: dict[str, np.ndarray] = {} if problems else _numeric_feed(request, inputs)
    for name, tensor in expected.items():
        if name not in request.columns or name in feed:
            continue
        values = request.columns[name]
        declared = request.datatypes.get(name)
        if tensor.datatype == "BYTES":
            if declared is not None and declared != "BYTES":
                problems.append(f"column {name!r} is declared {declared}; the model takes strings (BYTES)")
                continue
            arr, problem = _strings(name, values, allow_missing)
        else:
            if declared is not None and declared not in NUMERIC_DATATYPES:
                problems.append(f"column {name!r} is declared {declared}; the model takes numbers ({tensor.datatype})")
                continue
            arr, problem = _numbers(name, values, tensor.datatype, allow_missing)
        if problem:
            problems.append(problem)
        else:
            feed[name] = arr
    if problems:
        signature = ", ".join(f"{t.name}:{t.datatype}" for t in inputs)
        raise HttpError(
            422, f"the input does not match the model: {'; '.join(problems)}. The model takes one column each of: {signature}"
        )
    return feed


def _numeric_feed(request: ParsedRequest, inputs: list[Tensor]) -> dict[str, np.ndarray]:
    """The feed of every numeric input at once, when every value in them is a finite int or float (the common case:
    one numpy conversion and one finiteness check for all columns, instead of several per column); else ``{}``, and
    :func:`validate` checks column by column to say exactly what is wrong."""
    numeric = [t for t in inputs if t.datatype != "BYTES"]
    if not numeric or any(request.datatypes.get(t.name, "FP32") not in NUMERIC_DATATYPES for t in numeric):
        return {}
    columns = [request.columns[t.name] for t in numeric]
    if any(len(c) != request.rows for c in columns):
        return {}
    if not set(map(type, itertools.chain.from_iterable(columns))) <= {float, int}:  # bools, None, strings, lists
        return {}
    try:
        matrix = np.array(columns, dtype=np.float64).reshape(len(columns), request.rows)
    except (OverflowError, ValueError, TypeError):
        return {}
    if not np.isfinite(matrix).all():
        return {}
    dtypes = {_NP_DTYPES.get(t.datatype, np.float32) for t in numeric}
    if len(dtypes) == 1:  # one cast for all (rows of a C-ordered matrix are contiguous)
        matrix = matrix.astype(dtypes.pop())
        return {t.name: matrix[i] for i, t in enumerate(numeric)}
    return {t.name: matrix[i].astype(_NP_DTYPES.get(t.datatype, np.float32)) for i, t in enumerate(numeric)}


def _rows(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:_MAX_LISTED]))
    return f"row(s) {shown}{' ...' if len(indices) > _MAX_LISTED else ''}"


def _numbers(name: str, values: list[Any], datatype: str, allow_missing: bool) -> tuple[np.ndarray, str | None]:
    dtype = _NP_DTYPES.get(datatype, np.float32)
    arr = np.asarray(values) if values else np.zeros(0)
    if arr.dtype.kind not in "iuf":  # strings, booleans, nulls or a mix: find exactly what is wrong
        not_numbers = [i for i, v in enumerate(values) if v is not None and not _is_number(v)]
        if not_numbers:
            first = values[not_numbers[0]]
            return arr, f"column {name!r} takes numbers; got {first!r} in {_rows(not_numbers)}"
        arr = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
    arr = arr.astype(np.float64, copy=False)
    nan = np.isnan(arr)
    if nan.any() and not allow_missing:
        return arr, (
            f"column {name!r} has missing values (null/NaN) in {_rows(np.flatnonzero(nan).tolist())}; send a number, "
            "or set serve.allow_missing_values=true to let the model impute the training mean"
        )
    inf = np.isinf(arr)
    if inf.any():
        return arr, f"column {name!r} has infinite values in {_rows(np.flatnonzero(inf).tolist())}; send finite numbers"
    return arr.astype(dtype), None


def _strings(name: str, values: list[Any], allow_missing: bool) -> tuple[np.ndarray, str | None]:
    not_strings = [i for i, v in enumerate(values) if not isinstance(v, str) and v is not None]
    if not_strings:
        first = values[not_strings[0]]
        return np.zeros(0), f"column {name!r} takes strings; got {first!r} ({type(first).__name__}) in {_rows(not_strings)}"
    nulls = [i for i, v in enumerate(values) if v is None]
    if nulls and not allow_missing:
        return np.zeros(0), (
            f"column {name!r} has null values in {_rows(nulls)}; send a string (an unseen one maps to the unknown "
            "category), or set serve.allow_missing_values=true"
        )
    return np.asarray([UNKNOWN if v is None else v for v in values], dtype=object), None


def wants_probabilities(request: ParsedRequest) -> bool:
    """Whether a v1 request asked for class probabilities (top-level ``"probabilities": true``).

    Raises:
        HttpError: 400 when the field is given but is not a JSON boolean.
    """
    flag = request.parameters.get("probabilities", False)
    if not isinstance(flag, bool):
        raise HttpError(400, f"'probabilities' must be true or false, not {flag!r}")
    return flag


def to_json_values(values: Any) -> list[Any]:
    """Output values as a flat JSON list, row-major (float32 rounding noise removed; labels as str or int)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return [float(f"{x:.7g}") for x in arr.reshape(-1).tolist()]
    if arr.dtype.kind in "OSU":  # strings from ONNX Runtime, or labels a model set filled in
        return [_json_label(x) for x in arr.reshape(-1).tolist()]
    return arr.reshape(-1).tolist()


def _json_label(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def v2_response(
    model: str,
    version: int,
    outputs: list[Tensor],
    values: list[Any],
    request_id: str | None,
    parameters: dict,
) -> dict[str, Any]:
    """An Open Inference Protocol v2 inference response.

    Args:
        model: the model name.
        version: the version that answered.
        outputs: the model's outputs (name and datatype).
        values: one array per output, [N] or [N, K]: the shape is the array's, the data its values row-major.
        request_id: the request's ``id``, echoed.
        parameters: response parameters (route, segment, ...).
    """
    body: dict[str, Any] = {
        "model_name": model,
        "model_version": str(version),
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(np.shape(v)), "data": to_json_values(v)}
            for t, v in zip(outputs, values, strict=True)
        ],
    }
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = parameters
    return body


def v1_response(values: list[Any], task: str, class_labels: list[Any], probabilities: bool) -> dict[str, Any]:
    """A KServe v1 predict response: ``predictions`` (the first output: values, or a multiclass model's labels), and
    for a multiclass model asked for them, ``probabilities`` (one list per row, in ``class_labels`` order).

    Raises:
        HttpError: 422 when probabilities are asked of a model that is not multiclass.
    """
    body: dict[str, Any] = {"predictions": to_json_values(values[0])}
    if probabilities:
        if task != "multiclass" or len(values) < 2:
            raise HttpError(
                422,
                f"'probabilities' is for multiclass models; this is a {task} model"
                + (" whose predictions already are the probability of its class 1" if task == "binary" else "")
                + ": leave 'probabilities' out",
            )
        probs = np.asarray(values[1])
        body["probabilities"] = [to_json_values(row) for row in probs]
        body["class_labels"] = list(class_labels)
    return body


def v2_metadata(
    model: str,
    versions: list[int],
    inputs: list[Tensor],
    outputs: list[Tensor],
    task: str | None = None,
    class_labels: list[Any] | None = None,
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: name, versions, platform, inputs and outputs (from the ONNX signature), and in
    ``parameters`` the task and a classifier's class labels (the column order of ``probabilities``)."""
    body: dict[str, Any] = {
        "name": model,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [t.to_dict() for t in inputs],
        "outputs": [t.to_dict() for t in outputs],
    }
    if task is not None:
        body["parameters"] = {"task": task, **({"class_labels": list(class_labels)} if class_labels else {})}
    return body
