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

Cost of one request (what a hostile caller can make the ingress spend): every step here is linear in the body's
size, and the body is at most ``serve.max_request_bytes`` (1 MiB by default) -- nothing is quadratic in the number
of distinct keys or rows:

- :func:`parse_json` first bounds the nesting depth with a scan of the raw bytes (:data:`MAX_JSON_DEPTH`; a v2
  request needs 5 levels), so the decoder never recurses deeper; integers longer than Python's 4300-digit limit and
  numbers too large for a float are a 400/422, never an exception that escapes.
- :func:`parse_v1` counts each instance's keys once (no names x rows scan) and refuses a request naming more
  distinct columns than the model takes (``max_columns``, from the served versions' signatures plus a margin)
  before it builds any column; :func:`parse_v2` refuses more inputs than that, and a row count over
  ``max_batch_rows`` before it looks at the data.
- Error messages quote at most :data:`_MAX_LISTED` items and :data:`_MAX_SHOWN` characters of any value, so an
  error body stays small whatever the request was.

The bound we keep (``tests/unit/test_serve_protocol.py`` checks it on the worst cases we know: a 1 MiB body of
distinct keys, of deep nesting, of 4300-digit integers, of empty instances): a body of at most 1 MiB costs under
0.5 s of event-loop time on one slow core (typically 20-150 ms) and under 64 MiB of memory (Python objects of the
decoded JSON included), and both grow linearly with ``max_request_bytes``. Reading the body has its own deadline
(``serve.request_read_timeout_s``, 408 beyond), so a slow upload cannot hold an ingress replica either.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayml.data.schema import UNKNOWN

NUMERIC_DATATYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"})
_NP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
_MAX_LISTED = 5  # items an error message lists (rows, columns, problems) before "..."
_MAX_SHOWN = 40  # characters of a caller's value an error message quotes
MAX_JSON_DEPTH = 32  # nesting levels a request body may have (a v2 request needs 5; parameters get the rest)
COLUMN_MARGIN = 8  # distinct columns a request may name beyond what the model takes (ignored extras, typos)

_ESCAPE = re.compile(rb"\\.", re.S)  # a backslash and the character it escapes
_STRING = re.compile(rb'"[^"]*+(?:"|\Z)')  # a JSON string once escapes are gone (or an unterminated one)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_OPENERS = np.frombuffer(b"[{", np.uint8)


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


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a JSON body; 400 with what was wrong otherwise.

    Raises:
        HttpError: 400 when the body is empty, not JSON, nested deeper than ``max_depth`` or has an integer longer
            than Python's digit limit.
    """
    if not body.strip():
        raise HttpError(400, "the request body is empty; send a JSON object (see GET /v2/models/{name} for the inputs)")
    depth = json_depth(body, max_depth)
    if depth > max_depth:
        raise HttpError(
            400,
            f"the request body is nested {depth} levels deep, more than the limit of {max_depth}; an inference "
            "request needs 5 (send each column's values as a flat list)",
        )
    try:
        return json.loads(body)
    except RecursionError as e:  # json_depth bounds the depth first; kept so that no body can escape as a 500
        raise HttpError(400, f"the request body is nested too deeply; keep it within {max_depth} levels") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, and int() refusing a number of 4300+ digits
        if "digits" in str(e) and not isinstance(e, json.JSONDecodeError):
            raise HttpError(400, f"the request body has a number too long to read ({e}); send numbers as floats") from e
        raise HttpError(
            400, f"the request body is not valid JSON ({e}); send a JSON object with Content-Type application/json"
        ) from e


def json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep a JSON body nests (brackets inside strings do not count), from the raw bytes in linear time.

    A body with at most ``limit`` opening brackets cannot nest deeper than that and is not scanned: the answer is
    then a bound (its bracket count), not the exact depth. For a body that is not valid JSON, the depth of its
    valid prefix is never more than the answer, so a decoder fails before it could nest deeper.
    """
    opening = body.count(b"[") + body.count(b"{")
    if opening <= limit:
        return opening
    brackets = _STRING.sub(b"", _ESCAPE.sub(b"", body)).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.where(np.isin(np.frombuffer(brackets, np.uint8), _OPENERS), 1, -1).astype(np.int32)
    return max(0, int(np.cumsum(steps).max()))


def _show(value: Any) -> str:
    """A caller's value for an error message, cut to :data:`_MAX_SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}..."


def _listed(items: list[Any]) -> str:
    shown = ", ".join(_show(x) if isinstance(x, str) else str(x) for x in items[:_MAX_LISTED])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > _MAX_LISTED else ''}]"


def _joined(problems: list[str]) -> str:
    more = len(problems) - _MAX_LISTED
    return "; ".join(problems[:_MAX_LISTED]) + (f"; and {more} more problem(s)" if more > 0 else "")


def _check_rows(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise HttpError(413, f"the request has {rows} rows, more than the limit of {max_rows}; split it into smaller requests")


def _check_columns(count: int, max_columns: int | None) -> None:
    if max_columns is not None and count > max_columns:
        raise HttpError(
            422,
            f"the request names {count} distinct columns, more than the {max_columns} this model can take; send only "
            "the model's inputs (GET /v2/models/{name} lists them)",
        )


def _column_values(shape: list[int], data: list[Any]) -> list[Any] | str:
    """The values of one v2 input with ``shape`` [N] or [N, 1]: ``data`` flat, or N one-value lists; else what is
    wrong with it (a ragged or deeper nesting)."""
    if not any(isinstance(x, list) for x in data):
        return data if len(data) == shape[0] else f"has shape {shape} but {len(data)} values in 'data'"
    if len(data) != shape[0] or not all(isinstance(x, list) and len(x) == 1 for x in data):
        return (
            f"has ragged or nested 'data' for shape {shape}; send {shape[0]} values as a flat list "
            "(or as one-value lists [[v], ...] for shape [N, 1])"
        )
    values = [x[0] for x in data]
    if any(isinstance(x, list) for x in values):
        return f"has 'data' nested deeper than its shape {shape}; send {shape[0]} values as a flat list"
    return values


def parse_v2(payload: Any, max_rows: int, max_columns: int | None = None) -> ParsedRequest:
    """Parse an Open Inference Protocol v2 inference request into columns.

    Args:
        payload: the decoded JSON body.
        max_rows: most rows a request may have.
        max_columns: most inputs a request may name (None: no limit beyond the body's size).

    Raises:
        HttpError: 400 when the body is not a v2 request (ragged or nested 'data' included), 413 when it has more
            than ``max_rows`` rows, 422 when it names more than ``max_columns`` inputs.
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
    _check_columns(len(inputs), max_columns)
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
        where = f"input {_show(name)}"
        if name in columns:
            problems.append(f"{where} is given twice")
            continue
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            problems.append(f"{where} needs a 'shape' like [N] (one value per row)")
            continue
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            problems.append(f"{where} has shape {_show(shape)}; a tabular column has shape [N] (or [N, 1])")
            continue
        _check_rows(shape[0], max_rows)  # before looking at 'data': a huge shape costs nothing
        if not isinstance(datatype, str):
            problems.append(f"{where} needs a 'datatype' (FP32 for numbers, BYTES for strings)")
            continue
        if not isinstance(data, list):
            problems.append(f"{where} needs 'data' as a JSON list")
            continue
        values = _column_values(shape, data)
        if isinstance(values, str):
            problems.append(f"{where} {values}")
            continue
        columns[name] = values
        datatypes[name] = datatype.upper()
        rows.add(shape[0])
    if problems:
        raise HttpError(400, f"malformed v2 request: {_joined(problems)}")
    if len(rows) > 1:
        lengths = ", ".join(f"{_show(n)}={len(v)}" for n, v in itertools.islice(columns.items(), _MAX_LISTED))
        raise HttpError(422, f"inputs have different numbers of rows ({lengths}); every column needs one value per row")
    n = rows.pop()
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
        raise HttpError(400, "'id' must be a string")
    return ParsedRequest(columns, n, None if request_id is None else str(request_id), parameters, datatypes)


def parse_v1(payload: Any, max_rows: int, max_columns: int | None = None) -> ParsedRequest:
    """Parse a KServe v1 ``{"instances": [{column: value}, ...]}`` request into columns, in time linear in its size.

    Args:
        payload: the decoded JSON body.
        max_rows: most instances a request may have.
        max_columns: most distinct column names the instances may use (None: no limit beyond the body's size).

    Raises:
        HttpError: 400 when the body is not a v1 request, 413 beyond ``max_rows``, 422 when rows disagree on columns
            or name more than ``max_columns`` of them.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list) or not payload["instances"]:
        raise HttpError(
            400, 'a v1 predict request is {"instances": [{"<column>": <value>, ...}, ...]} with at least one instance'
        )
    instances = payload["instances"]
    _check_rows(len(instances), max_rows)
    bad = [i for i, row in enumerate(instances) if not isinstance(row, dict)]
    if bad:
        raise HttpError(
            400,
            f"instances {_listed(bad)} are not objects; each instance maps column names to values, e.g. "
            '{"instances": [{"price": 9.5, "promo": "yes"}]}',
        )
    counts = Counter(itertools.chain.from_iterable(instances))  # each key of each row once: linear in the body
    _check_columns(len(counts), max_columns)
    n = len(instances)
    partial = [name for name, c in counts.items() if c < n]
    if partial:
        problems = [  # each listed column costs one pass over the rows, and at most _MAX_LISTED are listed
            f"column {_show(name)} is missing from instances {_listed([i for i, row in enumerate(instances) if name not in row])}"
            for name in partial[:_MAX_LISTED]
        ]
        more = f"; and {len(partial) - _MAX_LISTED} more column(s)" if len(partial) > _MAX_LISTED else ""
        raise HttpError(422, f"{'; '.join(problems)}{more}; every instance needs the same columns")
    columns = {name: [row[name] for row in instances] for name in counts}  # every row has every name: linear too
    parameters = {k: v for k, v in payload.items() if k != "instances"}
    return ParsedRequest(columns, n, None, parameters, {})


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate(
    request: ParsedRequest, inputs: list[Tensor], allow_missing: bool, ignore: frozenset[str] = frozenset()
) -> dict[str, np.ndarray]:
    """Check columns against a model's inputs and build the ONNX Runtime feed; 422 listing every problem otherwise.

    A value the model's input type cannot hold (1e39 for an FP32 input, 2**63 for INT64) is the caller's mistake
    found here, not a model failure later.

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
        problems.append(f"unknown column(s) {_listed(extra)}")
    feed: dict[str, np.ndarray] = {} if problems else _numeric_feed(request, inputs)
    for name, tensor in expected.items():
        if name not in request.columns or name in feed:
            continue
        values = request.columns[name]
        declared = request.datatypes.get(name)
        if tensor.datatype == "BYTES":
            if declared is not None and declared != "BYTES":
                problems.append(f"column {name!r} is declared {declared[:_MAX_SHOWN]}; the model takes strings (BYTES)")
                continue
            arr, problem = _strings(name, values, allow_missing)
        else:
            if declared is not None and declared not in NUMERIC_DATATYPES:
                problems.append(
                    f"column {name!r} is declared {declared[:_MAX_SHOWN]}; the model takes numbers ({tensor.datatype})"
                )
                continue
            arr, problem = _numbers(name, values, tensor.datatype, allow_missing)
        if problem:
            problems.append(problem)
        else:
            feed[name] = arr
    if problems:
        signature = ", ".join(f"{t.name}:{t.datatype}" for t in inputs)
        raise HttpError(
            422, f"the input does not match the model: {_joined(problems)}. The model takes one column each of: {signature}"
        )
    return feed


def _dtype(datatype: str) -> np.dtype:
    return np.dtype(_NP_DTYPES.get(datatype, np.float32))


def _out_of_range(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Which float64 ``values`` the model's input type cannot hold (NaN is not out of range: it is missing)."""
    if dtype.kind == "f":
        return np.abs(values) > np.finfo(dtype).max
    info = np.iinfo(dtype)
    return (values < info.min) | (values >= -float(info.min))  # [-2**63, 2**63) for INT64, as floats


def _numeric_feed(request: ParsedRequest, inputs: list[Tensor]) -> dict[str, np.ndarray]:
    """The feed of every numeric input at once, when every value in them is a finite int or float that the input's
    type can hold (the common case: one numpy conversion and one check for all columns, instead of several per
    column); else ``{}``, and :func:`validate` checks column by column to say exactly what is wrong."""
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
    dtypes = [_dtype(t.datatype) for t in numeric]
    if len(set(dtypes)) == 1:  # one check and one cast for all (rows of a C-ordered matrix are contiguous)
        if _out_of_range(matrix, dtypes[0]).any():
            return {}
        matrix = matrix.astype(dtypes[0])
        return {t.name: matrix[i] for i, t in enumerate(numeric)}
    if any(_out_of_range(matrix[i], dtype).any() for i, dtype in enumerate(dtypes)):
        return {}
    return {t.name: matrix[i].astype(dtype) for i, (t, dtype) in enumerate(zip(numeric, dtypes, strict=True))}


def _rows(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:_MAX_LISTED]))
    return f"row(s) {shown}{' ...' if len(indices) > _MAX_LISTED else ''}"


def _numbers(name: str, values: list[Any], datatype: str, allow_missing: bool) -> tuple[np.ndarray, str | None]:
    dtype = _dtype(datatype)
    try:
        arr = np.asarray(values) if values else np.zeros(0)
    except ValueError:  # ragged lists among the values: the scan below names them
        arr = np.zeros(0, dtype=object)
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:  # strings, booleans, nulls, lists, huge ints: find what is wrong
        not_numbers = [i for i, v in enumerate(values) if v is not None and not _is_number(v)]
        if not_numbers:
            first = values[not_numbers[0]]
            return np.zeros(0), f"column {name!r} takes numbers; got {_show(first)} in {_rows(not_numbers)}"
        try:
            arr = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
        except OverflowError:  # an integer beyond any float
            huge = [i for i, v in enumerate(values) if isinstance(v, int) and abs(v) > float(np.finfo(np.float64).max)]
            return np.zeros(0), (
                f"column {name!r} has numbers too large for {datatype} (the model's input type) in {_rows(huge)}; "
                f"send numbers within +-{_largest(dtype):.4g}"
            )
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
    out = _out_of_range(arr, dtype)
    if out.any():
        return arr, (
            f"column {name!r} has numbers too large for {datatype} (the model's input type) in "
            f"{_rows(np.flatnonzero(out).tolist())}; send numbers within +-{_largest(dtype):.4g}"
        )
    return arr.astype(dtype), None


def _largest(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).max) if dtype.kind == "f" else float(np.iinfo(dtype).max)


def _strings(name: str, values: list[Any], allow_missing: bool) -> tuple[np.ndarray, str | None]:
    not_strings = [i for i, v in enumerate(values) if not isinstance(v, str) and v is not None]
    if not_strings:
        first = values[not_strings[0]]
        return np.zeros(0), (
            f"column {name!r} takes strings; got {_show(first)} ({type(first).__name__}) in {_rows(not_strings)}"
        )
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
        raise HttpError(400, f"'probabilities' must be true or false, not {_show(flag)}")
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
