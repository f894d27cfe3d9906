"""HTTP plumbing of the ingress: the FastAPI app, JSON error bodies, API-key auth and size-limited body reads."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayml.serve._protocol import HttpError
from rayml.serve._spec import AuthKey

VERSION_HEADER = "x-rayml-model-version"


def json_response(status: int, body: dict[str, Any], version: int | None = None) -> Response:
    headers = {VERSION_HEADER: str(version)} if version is not None else None
    return Response(
        content=json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json", headers=headers
    )


def error_response(status: int, message: str, version: int | None = None) -> Response:
    return json_response(status, {"error": message}, version)


def make_app() -> FastAPI:
    """The FastAPI app; every error, including FastAPI's own, is ``{"error": "..."}``."""
    # No /docs or /openapi.json: they would list model routes to unauthenticated callers.
    api = FastAPI(title="rayml", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> Response:
        return error_response(exc.status, exc.message)

    @api.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = (
                f"no endpoint {request.method} {request.url.path}; endpoints: GET /v2/health/live, GET /v2/health/ready, "
                "GET /v2/models/{name}, POST /v2/models/{name}/infer, POST /v1/models/{name}:predict"
            )
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; inference endpoints take POST, metadata GET"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(422, f"invalid request: {problems}")

    return api


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"the request body has {int(declared)} bytes, more than the limit of {limit}; send fewer rows")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"the request body is larger than the limit of {limit} bytes; send fewer rows")
        chunks.append(chunk)
    return b"".join(chunks)


def authorize(keys: list[AuthKey], authorization: str | None, model: str | None) -> AuthKey | None:
    """Check ``Authorization: Bearer <key>`` against the configured keys (by digest, in constant time).

    Returns:
        The matching key, or None when no keys are configured (auth is off).

    Raises:
        HttpError: 401 without a valid key, 403 when the key may not call ``model``.
    """
    if not keys:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, "this endpoint needs an API key: send the header 'Authorization: Bearer <key>'")
    digest = hashlib.sha256(token.encode()).hexdigest()
    match = None
    for k in keys:  # compare with every key, so the time taken says nothing about which key (or prefix) matched
        if hmac.compare_digest(k.digest, digest):
            match = k
    if match is None:
        raise HttpError(401, "the API key is not valid; check the key sent in 'Authorization: Bearer <key>'")
    if model is not None and match.models is not None and model not in match.models:
        raise HttpError(403, f"this API key may not call model {model!r}; it may call: {', '.join(match.models) or '(none)'}")
    return match
