"""Protocol parsing, validation against a signature, auth, and staged deploy plans (no Ray)."""

from __future__ import annotations

import hashlib
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
from rayml.serve._spec import AppSpec, AuthKey, ShadowSpec, check_spec
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
    keys = [
        AuthKey(digest=hashlib.sha256(b"all-models-key-0001").hexdigest(), name="all"),
        AuthKey(digest=hashlib.sha256(b"only-model-a-key-01").hexdigest(), name="a", models=["a"]),
    ]
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
