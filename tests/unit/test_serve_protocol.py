"""Protocol parsing, validation against a signature, auth, and staged deploy plans (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from rayml.config import ServeJobConfig, load_config
from rayml.errors import ConfigError
from rayml.serve._apply import plan_stages
from rayml.serve._http import authorize
from rayml.serve._protocol import (
    HttpError,
    Tensor,
    parse_json,
    parse_v1,
    parse_v2,
    to_json_values,
    v1_response,
    v2_metadata,
    v2_response,
    validate,
    wants_probabilities,
)
from rayml.serve._spec import AppSpec, ShadowSpec, auth_key, check_spec
from tests.unit.serve_specs import app_spec

INPUTS = [Tensor("price", "FP32", [-1]), Tensor("promo", "BYTES", [-1])]


def v2(price: list, promo: list, **kw) -> dict:
    return {
        "inputs": [
            {"name": "price", "shape": [len(price)], "datatype": kw.pop("price_type", "FP32"), "data": price},
            {"name": "promo", "shape": [len(promo)], "datatype": "BYTES", "data": promo},
        ],
        **kw,
    }


def status_of(fn, *args) -> tuple[int, str]:
    with pytest.raises(HttpError) as e:
        fn(*args)
    return e.value.status, e.value.message


def test_v2_request_becomes_columns_and_feed() -> None:
    req = parse_v2(v2([1.5, 2], ["yes", "no"], id="r-1", parameters={"segment": "s1"}), max_rows=10)
    assert req.rows == 2 and req.request_id == "r-1" and req.parameters == {"segment": "s1"}
    feed = validate(req, INPUTS, allow_missing=False)
    assert feed["price"].dtype == np.float32 and feed["price"].tolist() == [1.5, 2.0]
    assert feed["promo"].tolist() == ["yes", "no"]
    nested = parse_v2({"inputs": [{"name": "price", "shape": [2, 1], "datatype": "FP64", "data": [[1.0], [2.0]]}]}, 10)
    assert nested.columns["price"] == [1.0, 2.0]


def test_v1_request_becomes_columns() -> None:
    req = parse_v1({"instances": [{"price": 1.0, "promo": "yes"}, {"price": 2.0, "promo": "no"}], "segment": "s"}, 10)
    assert req.columns == {"price": [1.0, 2.0], "promo": ["yes", "no"]} and req.parameters == {"segment": "s"}


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "body is empty"),
        (b"[1, 2]", 400, "JSON object with 'inputs'"),
        (b'{"inputs": []}', 400, "non-empty 'inputs'"),
        (b'{"inputs": [{"name": "price", "shape": [2], "datatype": "FP32", "data": [1]}]}', 400, "1 values"),
        (b'{"inputs": [{"name": "price", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}', 400, "tabular column"),
        (b'{"inputs": [{"name": "price", "shape": [1], "data": [1]}]}', 400, "datatype"),
    ],
)
def test_malformed_v2_bodies_are_400_with_what_to_fix(body: bytes, status: int, fragment: str) -> None:
    code, message = status_of(lambda: parse_v2(parse_json(body), 10))
    assert (code, fragment in message) == (status, True), message


def test_too_many_rows_is_413_in_both_protocols() -> None:
    assert status_of(parse_v2, v2([1.0] * 11, ["x"] * 11), 10)[0] == 413
    assert status_of(parse_v1, {"instances": [{"price": 1.0}] * 11}, 10)[0] == 413


@pytest.mark.parametrize(
    "payload, fragments",
    [
        ({"inputs": [{"name": "price", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, ["missing column(s) ['promo']"]),
        (
            v2([1.0], ["x"])
            | {"inputs": v2([1.0], ["x"])["inputs"] + [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]},
            ["unknown column(s) ['z']"],
        ),
        (v2(["cheap"], ["x"]), ["column 'price' takes numbers; got 'cheap'"]),
        (v2([1.0], ["x"], price_type="BYTES"), ["declared BYTES; the model takes numbers"]),
        (v2([1.0], [3]), ["column 'promo' takes strings; got 3 (int)"]),
        (v2([None, 1.0], ["x", "y"]), ["missing values (null/NaN) in row(s) 0", "allow_missing_values"]),
        (v2([float("nan")], ["x"]), ["missing values"]),
        (v2([float("inf")], ["x"]), ["infinite values"]),
        (v2([True], ["x"]), ["takes numbers; got True"]),
    ],
)
def test_signature_mismatches_are_422_listing_every_problem(payload: dict, fragments: list[str]) -> None:
    req = parse_v2(json.loads(json.dumps(payload)), 10)
    code, message = status_of(validate, req, INPUTS, False)
    assert code == 422
    for f in fragments:
        assert f in message, message
    assert "price:FP32, promo:BYTES" in message  # says what the model takes


def test_all_problems_at_once_and_missing_values_when_allowed() -> None:
    req = parse_v2(v2(["x", None], [1, "y"]), 10)
    message = status_of(validate, req, INPUTS, False)[1]
    assert "price" in message and "promo" in message
    ok = validate(parse_v2(v2([None, 2.0], [None, "y"]), 10), INPUTS, allow_missing=True)
    assert np.isnan(ok["price"][0]) and ok["promo"].tolist() == ["__unknown__", "y"]


_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(["1.5", "a"]),
)
_NUMERIC_INPUTS = [Tensor("a", "FP32", [-1]), Tensor("b", "FP64", [-1]), Tensor("c", "INT64", [-1])]


@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda n: st.lists(st.lists(_VALUES, min_size=n, max_size=n), min_size=3, max_size=3)
    ),
    st.sampled_from([_NUMERIC_INPUTS[:1], _NUMERIC_INPUTS[:2], _NUMERIC_INPUTS, [Tensor("a", "FP32", [-1])] * 1]),
    st.booleans(),
)
def test_the_all_columns_at_once_feed_equals_the_column_by_column_one(columns, inputs, allow_missing) -> None:
    """validate() converts every numeric column in one go when it can; whatever it is sent, the feed (values and
    dtypes) or the 422 it answers must be exactly what checking column by column gives."""
    from rayml.serve import _protocol

    payload = {
        "inputs": [
            {"name": t.name, "shape": [len(col)], "datatype": t.datatype, "data": col}
            for t, col in zip(inputs, columns, strict=False)
        ]
    }
    request = parse_v2(payload, 100)

    def outcome(fast: bool):
        saved = _protocol._numeric_feed
        if not fast:
            _protocol._numeric_feed = lambda request, inputs: {}
        try:
            feed = validate(request, inputs, allow_missing)
            return {k: (v.dtype.str, v.tolist()) for k, v in feed.items()}
        except HttpError as e:
            return (e.status, e.message)
        finally:
            _protocol._numeric_feed = saved

    fast, slow = outcome(True), outcome(False)
    assert json.dumps(fast, default=str) == json.dumps(slow, default=str)


def test_v1_rows_with_different_columns_are_422() -> None:
    code, message = status_of(parse_v1, {"instances": [{"price": 1.0, "promo": "a"}, {"price": 2.0}]}, 10)
    assert code == 422 and "'promo' is missing from instances [1]" in message


def test_response_shapes_follow_the_v2_spec() -> None:
    body = v2_response("m", 3, [Tensor("prediction", "FP32", [-1])], [[1.5, 2.25]], "id-1", {"route": "primary"})
    assert body == {
        "model_name": "m",
        "model_version": "3",
        "id": "id-1",
        "parameters": {"route": "primary"},
        "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [2], "data": [1.5, 2.25]}],
    }
    assert to_json_values(np.asarray([0.1, 123.456], dtype=np.float32)) == [0.1, 123.456]


MULTICLASS_OUTPUTS = [Tensor("label", "BYTES", [-1]), Tensor("probabilities", "FP32", [-1, 3])]
CLASSES = ["low", "medium", "high"]
PROBS = np.asarray([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)


def test_multiclass_v2_answers_labels_and_an_n_by_k_probability_tensor() -> None:
    labels = np.asarray(["low", "high"], dtype=object)  # what ONNX Runtime returns for a string output
    body = v2_response("m", 1, MULTICLASS_OUTPUTS, [labels, PROBS], None, {"route": "primary"})
    assert body["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["low", "high"]},
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "data": [0.7, 0.2, 0.1, 0.1, 0.3, 0.6]},
    ]
    assert json.loads(json.dumps(body)) == body  # plain JSON all the way down
    ints = v2_response("m", 1, [Tensor("label", "INT64", [-1]), MULTICLASS_OUTPUTS[1]], [np.asarray([2, 0]), PROBS], None, {})
    assert ints["outputs"][0]["data"] == [2, 0] and all(type(x) is int for x in ints["outputs"][0]["data"])
    # bytes, numpy scalars and a model set's unanswered rows (None) are JSON too
    assert to_json_values(np.asarray([b"low", np.int64(3), None, "high"], dtype=object)) == ["low", 3, None, "high"]
    meta = v2_metadata("m", [1, 2], INPUTS, MULTICLASS_OUTPUTS, "multiclass", CLASSES)
    assert meta["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    assert meta["parameters"] == {"task": "multiclass", "class_labels": CLASSES}
    assert v2_metadata("m", [1], INPUTS, [Tensor("prediction", "FP32", [-1])], "regression")["parameters"] == {
        "task": "regression"
    }


def test_multiclass_v1_answers_labels_and_probabilities_on_request() -> None:
    labels = np.asarray(["low", "high"], dtype=object)
    plain = parse_v1({"instances": [{"price": 1.0}, {"price": 2.0}]}, 10)
    assert not wants_probabilities(plain)
    assert v1_response([labels, PROBS], "multiclass", CLASSES, False) == {"predictions": ["low", "high"]}
    asked = parse_v1({"instances": [{"price": 1.0}, {"price": 2.0}], "probabilities": True}, 10)
    assert wants_probabilities(asked)
    assert v1_response([labels, PROBS], "multiclass", CLASSES, True) == {
        "predictions": ["low", "high"],
        "probabilities": [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],
        "class_labels": CLASSES,
    }
    code, message = status_of(v1_response, [np.asarray([0.4])], "binary", [0, 1], True)
    assert code == 422 and "already are the probability" in message and "leave 'probabilities' out" in message
    assert status_of(v1_response, [np.asarray([3.5])], "regression", [], True)[0] == 422


@given(st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(), st.lists(st.booleans(), max_size=2)))
def test_a_probabilities_flag_that_is_not_a_boolean_is_400(flag) -> None:
    parsed = parse_v1({"instances": [{"price": 1.0}], "probabilities": flag}, 10)
    code, message = status_of(wants_probabilities, parsed)
    assert code == 400 and "'probabilities' must be true or false" in message


def test_auth_401_403_and_constant_time_digest_match() -> None:
    salt = "00" * 16
    keys = [auth_key("all-models-key-0001", salt, "all"), auth_key("only-model-a-key-01", salt, "a", models=["a"])]
    assert authorize([], None, "a") is None  # no keys configured: auth is off
    assert status_of(authorize, keys, None, "a")[0] == 401
    assert status_of(authorize, keys, "Basic xyz", "a")[0] == 401
    assert status_of(authorize, keys, "Bearer wrong-key-000000", "a")[0] == 401
    assert authorize(keys, "Bearer all-models-key-0001", "b").name == "all"
    assert authorize(keys, "bearer only-model-a-key-01", "a").name == "a"
    code, message = status_of(authorize, keys, "Bearer only-model-a-key-01", "b")
    assert code == 403 and "may not call model 'b'" in message


def _weights(spec: AppSpec) -> dict[str, dict[int, float]]:
    return {n: m.weights for n, m in spec.models.items()}


def test_plan_adds_versions_at_weight_zero_first_and_removes_them_last() -> None:
    old = app_spec(m={1: 1.0})
    new = app_spec(m={2: 1.0})
    stages = plan_stages(old, new)
    assert [_weights(s) for s in stages] == [
        {"m": {1: 1.0, 2: 0.0}},  # v2 starts with no traffic; v1 untouched
        {"m": {1: 0.0, 2: 1.0}},  # traffic moves (ingress reconfigure only)
        {"m": {2: 1.0}},  # v1 removed once it has no traffic
    ]
    assert plan_stages(None, new) == [new]
    assert plan_stages(new, new) == [new]
    weights_only = plan_stages(app_spec(m={1: 0.9, 2: 0.1}), app_spec(m={1: 0.5, 2: 0.5}))
    assert [_weights(s) for s in weights_only] == [{"m": {1: 0.5, 2: 0.5}}]
    new_model = plan_stages(app_spec(m={1: 1.0}), app_spec(m={1: 1.0}, n={1: 1.0}))
    assert [_weights(s) for s in new_model] == [{"m": {1: 1.0}, "n": {1: 1.0}}]
    gone_model = plan_stages(app_spec(m={1: 1.0}, n={1: 1.0}), app_spec(m={1: 1.0}))
    assert [_weights(s) for s in gone_model] == [{"m": {1: 1.0}, "n": {1: 1.0}}, {"m": {1: 1.0}}]


def test_spec_checks_weights_and_shadow() -> None:
    spec = app_spec(m={1: 0.5, 2: 0.4})
    with pytest.raises(ConfigError, match="sum to 0.9"):
        check_spec(spec)
    spec = app_spec(m={1: 1.0})
    spec.models["m"].shadow = ShadowSpec(version=7, percent=10)
    with pytest.raises(ConfigError, match="shadow version 7 is not deployed"):
        check_spec(spec)


def test_serve_config_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(
            ServeJobConfig,
            None,
            [
                "serve.models={m: {versions: [{version: 1, weight: 0.7}, {version: 2, weight: 0.2}]}}",
                "serve.models.m.deployment.max_batch_size=100",
                "rollout.steps=[50, 25]",
                "rollout.manual_steps=[30]",
            ],
        )
    message = str(e.value)
    for fragment in ("sum to 0.9", "max_batch_size (100)", "steps [50.0, 25.0]", "manual_steps [30.0]"):
        assert fragment in message, message
    with pytest.raises(ConfigError, match="'bad name'"):
        load_config(ServeJobConfig, None, ["serve.models={'bad name': {versions: [{version: 1}]}}"])
    ok = load_config(ServeJobConfig, None, ["serve.models={m: {versions: [{version: '2'}, {version: canary, weight: 0}]}}"])
    assert [v.version for v in ok.serve.models["m"].versions] == [2, "canary"]


# --- hostile input: never anything but a 4xx, at a bounded cost -----------------------------------------------------
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["price", "promo", "x", "inputs"]), inner),
    max_leaves=12,
)
_V2_INPUT = st.fixed_dictionaries(
    {"name": st.sampled_from(["price", "promo", "z"]), "shape": _JSON | st.lists(st.integers(-1, 3), max_size=3)},
    optional={"datatype": st.sampled_from(["FP32", "BYTES", "INT64", "x"]) | _JSON, "data": _JSON},
)


def _outcome(payload, protocol: str, inputs=INPUTS) -> str:
    """What the ingress would answer: 'ok', or the status of the HttpError; any other exception fails the test."""
    try:
        request = (parse_v2 if protocol == "v2" else parse_v1)(payload, 5, 10)
        validate(request, inputs, allow_missing=False)
        wants_probabilities(request)
    except HttpError as e:
        assert 400 <= e.status < 500 and len(e.message) < 2048, (e.status, len(e.message))
        return str(e.status)
    return "ok"


@given(
    st.one_of(
        _JSON,
        st.fixed_dictionaries({"instances": st.lists(st.dictionaries(st.sampled_from(["price", "promo", "q"]), _JSON))}),
        st.fixed_dictionaries({"inputs": st.lists(_V2_INPUT, max_size=3)}, optional={"id": _JSON, "parameters": _JSON}),
    ),
    st.sampled_from(["v1", "v2"]),
    st.sampled_from([INPUTS, [Tensor("price", "INT64", [-1]), Tensor("promo", "FP64", [-1])]]),
)
def test_any_json_payload_is_parsed_or_refused_with_a_4xx(payload, protocol: str, inputs: list[Tensor]) -> None:
    _outcome(payload, protocol, inputs)


@given(st.binary(max_size=64) | _JSON.map(lambda x: json.dumps(x).encode()))
def test_any_body_is_json_or_a_400(body: bytes) -> None:
    try:
        parse_json(body)
    except HttpError as e:
        assert e.status == 400


@given(_JSON, st.integers(0, 40))
def test_json_depth_is_exact_beyond_the_bound_and_ignores_brackets_in_strings(value, extra: int) -> None:
    from rayml.serve._protocol import json_depth

    def depth(x) -> int:
        children = list(x.values()) if isinstance(x, dict) else x if isinstance(x, list) else None
        return 0 if children is None else 1 + max(map(depth, children), default=0)

    nested = value
    for i in range(extra):
        nested = [nested, '][}{\\"'] if i % 2 else {"k[": nested}
    body = json.dumps(nested).encode()
    got = json_depth(body, limit=8)
    assert got == depth(nested) if got > 8 else depth(nested) <= 8


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested 100000 levels deep"),
        (b'{"a": ' * 33 + b"1" + b"}" * 33, "nested 33 levels deep"),
        (b"[" + b"9" * 5000 + b"]", "number too long to read"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bodies_no_parser_should_recurse_into_are_400(body: bytes, fragment: str) -> None:
    code, message = status_of(parse_json, body)
    assert code == 400 and fragment in message, message


@pytest.mark.parametrize(
    "payload, protocol, status, fragment",
    [
        ({"instances": [{"price": 10**400, "promo": "a"}]}, "v1", 422, "too large for FP32"),
        ({"instances": [{"price": 1e39, "promo": "a"}]}, "v1", 422, "too large for FP32"),
        ({"instances": [{"price": -3.5e38, "promo": "a"}]}, "v1", 422, "too large for FP32"),
        ({"instances": [{"price": [1, [2, 3]], "promo": "a"}]}, "v1", 422, "takes numbers; got [1, [2, 3]]"),
        ({"instances": [{"price": [1, 2], "promo": "a"}, {"price": [3, 4], "promo": "b"}]}, "v1", 422, "takes numbers"),
        ({"instances": [[1, 2], [3]]}, "v1", 400, "are not objects"),
        ({"instances": [{"price": 1, "promo": "a"}, {"price": 2}]}, "v1", 422, "'promo' is missing from instances [1]"),
        (v2([1.0, [2.0, 3.0]], ["a", "b"]), "v2", 400, "ragged"),
        (v2([[1.0], [2.0, 3.0]], ["a", "b"]), "v2", 400, "ragged"),
        (v2([[[1.0]], [[2.0]]], ["a", "b"]), "v2", 400, "nested deeper than its shape"),
        ({"inputs": [{"name": "price", "shape": [True], "datatype": "FP32", "data": [1]}]}, "v2", 400, "'shape'"),
        ({"inputs": [{"name": "price", "shape": [10**30], "datatype": "FP32", "data": []}]}, "v2", 413, "limit of 5"),
        ({"instances": [{"price": "x" * 100_000, "promo": "a"}]}, "v1", 422, "got 'xxxxxxxx"),
    ],
)
def test_each_hostile_value_class_is_its_4xx(payload: dict, protocol: str, status: int, fragment: str) -> None:
    code, message = status_of(lambda: validate((parse_v2 if protocol == "v2" else parse_v1)(payload, 5), INPUTS, False))
    assert (code, fragment in message) == (status, True), message
    assert len(message) < 1024  # a 100 kB value is quoted as 40 characters


def test_int64_inputs_refuse_what_int64_cannot_hold() -> None:
    inputs = [Tensor("n", "INT64", [-1])]
    assert validate(parse_v1({"instances": [{"n": 2**62}]}, 5), inputs, False)["n"].tolist() == [2**62]
    for big in (2**63, -(2**64), 1e30):
        code, message = status_of(validate, parse_v1({"instances": [{"n": big}]}, 5), inputs, False)
        assert code == 422 and "too large for INT64" in message, message


def test_v1_distinct_columns_beyond_the_models_are_refused_before_any_column_is_built() -> None:
    payload = {"instances": [{f"k{i}": 1} for i in range(3)]}
    code, message = status_of(parse_v1, payload, 5, 2)
    assert code == 422 and "3 distinct columns, more than the 2" in message
    many = {"instances": [{f"c{i}": 1 for i in range(50)}, {"c0": 1}]}
    code, message = status_of(parse_v1, many, 5)
    assert code == 422 and message.count("is missing from instances") == 5 and "and 44 more column(s)" in message


MiB = 1 << 20


def _fill(head: bytes, item, tail: bytes, size: int = MiB) -> bytes:
    """``head`` + as many ``item(i)`` joined by commas as fit in ``size`` bytes + ``tail``."""
    parts, used = [], len(head) + len(tail)
    while True:
        piece = item(len(parts))
        if used + len(piece) + 1 > size:
            return head + b",".join(parts) + tail
        parts.append(piece)
        used += len(piece) + 1


_WORST = {  # the costliest 1 MiB bodies we know for each step of parsing (see rayml/serve/_protocol.py)
    "v1 one distinct key per row": _fill(b'{"instances":[', lambda i: b'{"k%d":1}' % i, b"]}"),
    "v1 one row of distinct keys": _fill(b'{"instances":[{', lambda i: b'"k%d":1' % i, b"}]}"),
    "v1 empty rows": _fill(b'{"instances":[', lambda i: b"{}", b"]}"),
    "v1 1000 full rows": _fill(b'{"instances":[', lambda i: b'{"price":1e38,"promo":"' + b"x" * 1100 + b'"}', b"]}"),
    "v2 many inputs": _fill(b'{"inputs":[', lambda i: b'{"name":"c%d","shape":[1],"datatype":"FP32","data":[1]}' % i, b"]}"),
    "v2 one long input": _fill(b'{"inputs":[{"name":"price","shape":[1000],"datatype":"FP32","data":[', lambda i: b"1", b"]}]}"),
    "deep nesting": b"[" * MiB,
    "brackets in strings": _fill(b"[", lambda i: b'"[[[[{{{{"', b"]"),
    "escaped quotes": b'["' + b'\\"' * (MiB // 2 - 4) + b'"]',
    "4300-digit integers": _fill(b"[", lambda i: b"9" * 4300, b"]"),
    "integers beyond float": _fill(b'{"instances":[', lambda i: b'{"price":' + b"9" * 400 + b',"promo":"a"}', b"]}"),
}


@pytest.mark.parametrize("name", list(_WORST))
def test_a_1_mib_worst_case_body_costs_under_half_a_second_and_64_mib(name: str) -> None:
    """The documented bound of one request of max_request_bytes (1 MiB): event-loop time (best of 3, so that another
    process on the machine does not decide it) and peak memory of the whole parse + validate."""
    import time
    import tracemalloc

    body = _WORST[name]
    assert len(body) <= MiB

    def handle() -> str:
        try:
            payload = parse_json(body)
            request = (parse_v2 if b'"inputs"' in body[:20] else parse_v1)(payload, 1000, 2 + 8)
            validate(request, INPUTS, allow_missing=False)
        except HttpError as e:
            return str(e.status)
        return "ok"

    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        handle()
        seconds.append(time.perf_counter() - t0)
    tracemalloc.start()
    try:
        handle()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert min(seconds) < 0.5, f"{name}: {min(seconds):.3f}s"
    assert peak < 64 * MiB, f"{name}: {peak / MiB:.1f} MiB"
