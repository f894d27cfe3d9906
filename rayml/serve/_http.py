"""HTTP plumbing of the ingress: the FastAPI app, JSON error bodies, API-key auth and size- and time-limited body reads."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayml.serve._protocol import HttpError
from rayml.serve._spec import AuthKey, key_digest

VERSION_HEADER = "x-rayml-model-version"
INFERENCE_ID_HEADER = "x-rayml-inference-id"  # the caller's id of a prediction, or one generated; labels name it
logger = logging.getLogger("rayml.serve")


def json_response(status: int, body: dict[str, Any], version: int | None = None) -> Response:
    headers = {VERSION_HEADER: str(version)} if version is not None else None
    return Response(
        content=json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json", headers=headers
    )


def error_response(status: int, message: str, version: int | None = None) -> Response:
    return json_response(status, {"error": message}, version)


def new_request_id() -> str:
    """An id for one failed request, given to the caller and written to the log next to the failure's detail."""
    return uuid.uuid4().hex


def server_error_response(message: str, request_id: str, version: int | None = None) -> Response:
    """A 500: what failed (never the exception's text: that goes to the log) and the id to find it there."""
    return json_response(
        500,
        {"error": f"{message}; the detail is in the server log under request id {request_id}", "request_id": request_id},
        version,
    )


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

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # a bug of ours: still JSON, never a trace
        request_id = new_request_id()
        logger.error("request %s %s failed (request id %s)", request.method, request.url.path, request_id, exc_info=exc)
        return server_error_response("the server failed on this request", request_id)

    return api


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before reading it all, and (408) a body that
    takes longer than ``timeout_s`` to arrive: a slow upload must not hold the ingress replica."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared[:20]) > limit:  # isdigit() alone lets '²' through
        raise HttpError(413, f"the request body has {declared[:20]} bytes, more than the limit of {limit}; send fewer rows")
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the request body is larger than the limit of {limit} bytes; send fewer rows")
            chunks.append(chunk)

    if timeout_s is None:
        await read()
        return b"".join(chunks)
    timeout = getattr(asyncio, "timeout", None)  # Python 3.11+: no extra task on the hot path
    try:
        if timeout is None:
            await asyncio.wait_for(read(), timeout_s)
        else:
            async with timeout(timeout_s):
                await read()
    except asyncio.TimeoutError as e:
        raise HttpError(
            408,
            f"the request body did not arrive within {timeout_s:g}s ({size} bytes came); send the whole body at once, "
            "or raise serve.request_read_timeout_s for slow links",
        ) from e
    return b"".join(chunks)


class _VerifiedTokens:
    """What the slow key digest of each presented token came to, so the ingress pays it once per distinct token.

    Entries are keyed by an HMAC of (salt, iterations, token) under a secret of this process, never by the token, and
    the oldest go first beyond ``size``. Digests of tokens not seen before are rationed (``rate_per_s``, ``burst``): a
    caller trying many different keys gets 429s instead of holding the event loop in PBKDF2.
    """

    def __init__(self, size: int = 1024, rate_per_s: float = 4.0, burst: int = 8) -> None:
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, str] = OrderedDict()
        self._size, self._rate, self._burst = size, rate_per_s, float(burst)
        self._allowance, self._last = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def derive(self, token: str, salt: str, iterations: int) -> str:
        ref = hmac.new(self._secret, f"{salt}:{iterations}:{token}".encode(), hashlib.sha256).digest()
        with self._lock:
            hit = self._entries.get(ref)
            if hit is not None:
                self._entries.move_to_end(ref)
                return hit
            now = time.monotonic()
            self._allowance = min(self._burst, self._allowance + (now - self._last) * self._rate)
            self._last = now
            if self._allowance < 1.0:
                raise HttpError(429, "too many different API keys tried; retry in a few seconds with a valid key")
            self._allowance -= 1.0
        derived = key_digest(token, salt, iterations)
        with self._lock:
            self._entries[ref] = derived
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return derived


_verified = _VerifiedTokens()
MAX_TOKEN_CHARS = 4096


def authorize(keys: list[AuthKey], authorization: str | None, model: str | None) -> AuthKey | None:
    """Check ``Authorization: Bearer <key>`` against the configured keys (by salted digest, in constant time).

    The digest is slow on purpose (a leaked spec must not give the keys away); each distinct token is digested once
    per replica and the result kept in memory (:class:`_VerifiedTokens`). Digests without a salt (an older rayml's)
    match nothing.

    Returns:
        The matching key, or None when no keys are configured (auth is off).

    Raises:
        HttpError: 401 without a valid key, 403 when the key may not call ``model``, 429 when too many different
            unknown keys were tried in a short time.
    """
    if not keys:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, "this endpoint needs an API key: send the header 'Authorization: Bearer <key>'")
    match = None
    if len(token) <= MAX_TOKEN_CHARS:
        derived = {(k.salt, k.iterations): "" for k in keys if k.salt}
        for salt, iterations in derived:  # one salt per application: one digest per token, whatever the key count
            derived[(salt, iterations)] = _verified.derive(token, salt, iterations)
        for k in keys:  # compare with every key, so the time taken says nothing about which key (or prefix) matched
            if k.salt and hmac.compare_digest(k.digest, derived[(k.salt, k.iterations)]):
                match = k
    if match is None:
        raise HttpError(401, "the API key is not valid; check the key sent in 'Authorization: Bearer <key>'")
    if model is not None and match.models is not None and model not in match.models:
        raise HttpError(403, f"this API key may not call model {model!r}; it may call: {', '.join(match.models) or '(none)'}")
    return match
