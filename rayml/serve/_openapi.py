"""An OpenAPI 3 document of a rayml application's HTTP API, built from its spec (and, when known, its signatures).

The ingress does not serve ``/openapi.json``: it would list the served models to callers who have no key. This
module builds the same description in code instead, for whoever may see it: the property-based tests generate
requests from it (``schemathesis.openapi.from_dict(openapi_document(spec, inputs))``), and an operator can hand it
to client generators. Routes: ``GET /v2/health/live``, ``GET /v2/health/ready``, and per served model
``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``,
``POST /v2/models/{name}/versions/{version}/infer``, ``POST /v1/models/{name}:predict`` and
``POST /v2/models/{name}/labels``, with JSON schemas of the
request bodies (the model's columns when its inputs are given) and of the answers, errors included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayml.serve._protocol import NUMERIC_DATATYPES, Tensor
from rayml.serve._spec import AppSpec

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong and how to fix it."},
        "request_id": {"type": "string", "description": "A 500's id: the server log has the detail under it."},
    },
}
_SCALAR: dict[str, Any] = {"type": ["number", "string", "boolean", "null"]}
_LABELS_BODY: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["inference_id", "label"],
        "properties": {
            "inference_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
            "label": {"type": ["number", "string", "boolean"]},
            "row": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
    },
}


def openapi_document(spec: AppSpec, inputs: Mapping[str, Sequence[Tensor]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the application ``spec`` describes.

    Args:
        spec: the application (its models, row limit and whether API keys are on).
        inputs: each model's inputs (``GET /v2/models/{name}`` lists them), to describe its request bodies column by
            column; a model left out gets the protocols' generic bodies.

    Returns:
        The document as a JSON-ready dict.

    Example:
        >>> doc = openapi_document(spec, {"sales-model": [Tensor("price", "FP32", [-1])]})
        >>> sorted(doc["paths"])[:2]
        ['/v1/models/sales-model:predict', '/v2/health/live']
    """
    inputs = inputs or {}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _operation("live", "The server is up (open to every caller).", auth=False)},
        "/v2/health/ready": {
            "get": _operation("ready", "Every served version answers (open to every caller).", auth=False, unready=True)
        },
    }
    for name in sorted(spec.models):
        columns = list(inputs.get(name, ()))
        version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
        paths[f"/v2/models/{name}"] = {"get": _operation(f"metadata {name}", f"Inputs, outputs and versions of {name}.")}
        paths[f"/v2/models/{name}/ready"] = {
            "get": _operation(f"ready {name}", f"Every primary version of {name} answers.", unready=True)
        }
        paths[f"/v2/models/{name}/infer"] = {
            "post": _operation(f"infer {name}", "Open Inference Protocol v2.", body=_v2_body(columns, spec.max_batch_rows))
        }
        paths[f"/v2/models/{name}/versions/{{version}}/infer"] = {
            "post": _operation(
                f"infer {name} version",
                "Open Inference Protocol v2, answered by one version (bypasses the split).",
                body=_v2_body(columns, spec.max_batch_rows),
                parameters=[version],
            )
        }
        paths[f"/v1/models/{name}:predict"] = {
            "post": _operation(f"predict {name}", "KServe v1.", body=_v1_body(columns, spec.max_batch_rows))
        }
        paths[f"/v2/models/{name}/labels"] = {
            "post": _operation(
                f"labels {name}",
                "Ground-truth labels of captured predictions (409 when the model does not capture; 422, nothing "
                "stored, when any entry is invalid).",
                body=_LABELS_BODY,
            )
        }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"rayml application {spec.app_name}", "version": "v2"},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR}},
    }
    if spec.auth:
        document["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"apiKey": []}]
    return document


def _operation(
    summary: str,
    description: str,
    *,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    auth: bool = True,
    unready: bool = False,
) -> dict[str, Any]:
    error = {"description": "The request cannot be served.", "content": _json({"$ref": "#/components/schemas/Error"})}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": _json({"type": "object"})}}
    if unready:
        responses["503"] = {"description": "Not ready.", "content": _json({"type": "object"})}
    responses["default"] = error
    operation: dict[str, Any] = {"summary": summary, "description": description, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if not auth:
        operation["security"] = []
    return operation


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _value(t: Tensor) -> dict[str, Any]:
    """A JSON schema of one value of input ``t``: a string, or a number its type can hold."""
    if t.datatype == "BYTES":
        return {"type": "string"}
    if t.datatype in ("FP32", "FP16"):
        largest = float(np.finfo(np.float32 if t.datatype == "FP32" else np.float16).max)
        return {"type": "number", "minimum": -largest, "maximum": largest}
    if t.datatype in NUMERIC_DATATYPES and t.datatype.startswith(("INT", "UINT")):
        return {"type": "integer"}
    return {"type": "number"}


def _v1_body(columns: list[Tensor], max_rows: int) -> dict[str, Any]:
    instance: dict[str, Any] = {"type": "object", "additionalProperties": _SCALAR}
    if columns:
        instance = {
            "type": "object",
            "required": [t.name for t in columns],
            "properties": {t.name: _value(t) for t in columns},
            "additionalProperties": False,
        }
    return {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {"type": "array", "minItems": 1, "maxItems": max_rows, "items": instance},
            "segment": {"type": "string", "description": "A model set's segment key."},
            "probabilities": {"type": "boolean", "description": "Multiclass: answer class probabilities too."},
        },
    }


def _v2_body(columns: list[Tensor], max_rows: int) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": sorted(NUMERIC_DATATYPES | {"BYTES"})},
            "data": {"type": "array", "maxItems": max_rows, "items": _SCALAR},
        },
    }
    if columns:
        tensor["properties"]["name"] = {"type": "string", "enum": [t.name for t in columns]}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"segment": {"type": "string"}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": max(1, len(columns) or 16), "items": tensor},
        },
    }
