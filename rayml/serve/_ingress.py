"""The ingress deployment: protocols, auth, validation, routing, shadowing, metrics.

Lifecycle of a replica: ``__init__`` takes no settings; Serve then calls ``reconfigure(user_config)`` with the
:class:`~rayml.serve._spec.AppSpec`, and again whenever weights, shadow or versions change (no restart). Each call
builds a new routing state and swaps it in one assignment, so a request in flight keeps the table it started with.
Background tasks push per-version counts to the stats deployment and check every version's deployment for readiness.

Placement: a model placed in the ingress (``placement: ingress``, the default for small single models) has its
versions loaded into this replica by ``reconfigure`` (:mod:`rayml.serve._inline`) and answered here, one hop from the
proxy; the others are called through their deployments' handles. Everything else (auth, validation, routing, sticky
keys, shadow, metrics) is the same code for both.

Hostile or unlucky callers: every mistake a caller can make is a JSON 4xx counted in the ``rayml_*`` request metrics
(:mod:`rayml.serve._protocol` says which, and bounds what one request of at most ``max_request_bytes`` may cost:
linear parsing, a nesting bound, a column bound from the served signatures, error messages of bounded size); a body
must arrive within ``request_read_timeout_s`` (408). A model that fails on valid input is a 500 that names the model
and version and gives a request id; the failure's text goes to the log under that id, never to the caller. What a
caller sees of the served models is what its key may call: a 404 lists only those, and the open readiness endpoint
says no more than how many versions are not ready while API keys are on (and never an exception's text).
"""

# No `from __future__ import annotations`: FastAPI must see real types on the route methods (e.g. Request).
import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from ray import serve
from ray.serve.exceptions import BackPressureError

from rayml.feedback import (
    Captured,
    CaptureWriter,
    binary_classes,
    check_inference_id,
    inputs_for_capture,
    new_inference_id,
    predictions_of,
    validate_labels,
    write_labels,
)
from rayml.serve._http import (
    INFERENCE_ID_HEADER,
    authorize,
    error_response,
    json_response,
    make_app,
    new_request_id,
    read_body,
    server_error_response,
)
from rayml.serve._inline import InlineVersions
from rayml.serve._metrics import GAUGE_REFRESH_S, offline_quality
from rayml.serve._protocol import (
    COLUMN_MARGIN,
    HttpError,
    ParsedRequest,
    Tensor,
    parse_json,
    parse_v1,
    parse_v2,
    v1_response,
    v2_metadata,
    v2_response,
    validate,
    wants_probabilities,
)
from rayml.serve._router import PINNED, PRIMARY, SHADOW, ModelRoute
from rayml.serve._shadow import ShadowDispatcher, disagreement
from rayml.serve._spec import STATS, AppSpec, ModelSpec
from rayml.serve._stats import StatsRecorder

logger = logging.getLogger("rayml.serve")

api = make_app()
_DISAGREEMENT_ROWS_OBSERVED = 64  # per mirrored request: bounds the metric cost of large requests


@dataclass
class _Signature:
    inputs: list[Tensor]
    outputs: list[Tensor]
    task: str
    class_labels: list[Any]
    lineage: dict[str, Any]
    capture_withheld: frozenset[str] = frozenset()  # the version's sensitive columns: never captured


@dataclass
class _Model:
    spec: ModelSpec
    route: ModelRoute
    handles: dict[int, Any]
    excluded: frozenset[str] = frozenset()  # capture.exclude_columns, built once per routing table


@dataclass
class _State:
    spec: AppSpec
    models: dict[str, _Model]
    ready: dict[str, str | None] = field(default_factory=dict)  # deployment -> None when ready, else why not


class _Outcome(HttpError):
    """A finished request that is not a 200: carries the status, the version that was chosen (for the header) and,
    for a 500, the request id under which the log has the detail."""

    def __init__(self, status: int, message: str, version: int | None, request_id: str | None = None) -> None:
        super().__init__(status, message)
        self.version = version
        self.request_id = request_id

    def __reduce__(self) -> tuple:
        return (_Outcome, (self.status, self.message, self.version, self.request_id))


def _outcome_response(o: _Outcome) -> Response:
    if o.request_id is not None:
        return server_error_response(o.message, o.request_id, o.version)
    return error_response(o.status, o.message, o.version)


EXTREME_INPUT = 1e18  # an input beyond this that makes a model's output non-finite is the caller's doing (422)


def _largest_input(feed: dict[str, Any]) -> float:
    """The largest magnitude among the numeric inputs of a feed (0 when there are none, NaN ignored)."""
    largest = 0.0
    for values in feed.values():
        if getattr(values, "dtype", None) is not None and values.dtype.kind in "iuf" and values.size:
            magnitudes = np.abs(values.astype(np.float64))
            largest = max(largest, float(np.max(magnitudes, initial=0.0, where=~np.isnan(magnitudes))))
    return largest


def _not_loaded(m: _Model, version: int) -> str:
    return (
        f"model {m.spec.name} version {version} is not available: it could not be loaded into the ingress "
        "(`rayml serve status` shows why); retry later or ask the operator"
    )


# Helpers sit above the class: @serve.ingress pickles the app when the class is defined, capturing the
# module globals that exist at that moment.
async def _await(response: Any) -> Any:
    return await response


async def _await_within(response: Any, timeout_s: float) -> Any:
    """``await response`` with a timeout; on Python 3.11+ without wrapping it in an extra task (the hot path)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:
        return await asyncio.wait_for(_await(response), timeout_s)
    async with timeout(timeout_s):
        return await response


def _signature(meta: dict[str, Any]) -> _Signature:
    return _Signature(
        inputs=[Tensor.from_dict(t) for t in meta["inputs"]],
        outputs=[Tensor.from_dict(t) for t in meta["outputs"]],
        task=meta["task"],
        class_labels=list(meta.get("class_labels") or []),
        lineage=meta.get("lineage") or {},
        capture_withheld=frozenset(meta.get("capture_withheld") or ()),
    )


_VERSION = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also takes '²' and '١٢', which int() refuses or reads


def _pinned(m: _Model, version: str) -> int:
    if not _VERSION.fullmatch(version) or m.spec.version(int(version)) is None:
        served = ", ".join(str(v) for v in m.route.versions)
        shown = version if len(version) <= 20 else f"{version[:17]}..."
        raise HttpError(404, f"model {m.spec.name!r} has no served version {shown!r}; served versions: {served}")
    return int(version)


def _public(why: str | None) -> str:
    """A version's readiness as callers may see it: our own words, never an exception's text (that is in the log
    and in `rayml serve status`)."""
    if why is None:
        return "ready"
    if why == _NOT_CHECKED or why.startswith(_NO_ANSWER):
        return why
    return "not ready (see `rayml serve status` or the ingress log for why)"


_NOT_CHECKED = "not checked yet"
_NO_ANSWER = "no answer within"


def _segment(m: _Model, parsed: ParsedRequest) -> str | None:
    """The segment key of a request to a model set: parameter/field ``segment``, else the rows' segment columns."""
    if m.spec.kind != "model_set":
        return None
    from rayml.registry import segment_key

    segment = parsed.parameters.get("segment")
    if isinstance(segment, list) or (isinstance(segment, (int, float)) and not isinstance(segment, bool)):
        segment = segment_key(segment)
    cols = m.spec.segment_columns
    if segment is None and cols and all(c in parsed.columns for c in cols):
        keys = {segment_key([parsed.columns[c][i] for c in cols]) for i in range(parsed.rows)}
        if len(keys) > 1:
            shown = ", ".join(k[:40] for k in sorted(keys)[:5])
            raise HttpError(422, f"the rows belong to {len(keys)} segments ({shown}); send one segment per request")
        segment = keys.pop() if keys else None
    if not isinstance(segment, str) or not segment:
        raise HttpError(
            422,
            f"model {m.spec.name!r} is a model set: say which segment to use with parameters.segment (v2) or a "
            f'top-level \'segment\' field (v1), e.g. "segment": "store_001" (segment columns: {cols})',
        )
    return segment


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front door of a rayml application (see the module docstring for its lifecycle)."""

    def __init__(self, _faults: dict[str, str] | None = None, **bound: Any) -> None:
        # `bound` holds handles of the model deployments only so that Serve deploys them with this application;
        # handles are looked up by name from the spec, which is what changes at runtime. `_faults` is set only by the
        # test hook (rayml.testing.serve_faults) for versions placed in the ingress.
        from rayml.serve._metrics import IngressMetrics

        self._inline = InlineVersions(_faults)
        self._state: _State | None = None
        self._signatures: dict[str, _Signature] = {}
        self._recorder = StatsRecorder()
        self._metrics = IngressMetrics()
        self._shadow: ShadowDispatcher | None = None
        self._capture: CaptureWriter | None = None
        self._tasks: list[asyncio.Task] = []
        self._app_name = serve.get_replica_context().app_name
        self._last_shadow_log = 0.0

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        spec = AppSpec.model_validate(user_config)
        # versions placed here are loaded before the new routing goes live (in threads: requests keep being answered)
        await self._inline.sync(spec, spec.tracking_uri)
        models = {}
        for name, m in spec.models.items():
            handles = {
                v.version: serve.get_deployment_handle(v.deployment, self._app_name)
                for v in m.versions
                if m.placement == "replicas"
            }
            excluded = frozenset(m.capture.exclude_columns) if m.capture else frozenset()
            models[name] = _Model(spec=m, route=m.route(salt=spec.route_salt), handles=handles, excluded=excluded)
        old = self._state
        ready = dict(old.ready) if old else {}
        for deployment in self._inline.wanted(spec):
            inline = self._inline.get(deployment)
            if inline is not None:
                self._signatures[deployment] = _signature(inline.metadata())
            ready[deployment] = None if inline is not None else self._inline.errors.get(deployment, "not loaded")
        self._state = _State(spec=spec, models=models, ready=ready)
        self._set_config_gauges()
        if self._shadow is None:
            self._shadow = ShadowDispatcher(
                spec.shadow_queue_size, spec.shadow_timeout_s, self._shadow_dropped, self._shadow_failed
            )
        else:
            self._shadow.max_in_flight, self._shadow.timeout_s = spec.shadow_queue_size, spec.shadow_timeout_s
        queue_sizes = [m.capture.queue_size for m in spec.models.values() if m.capture is not None]
        if queue_sizes and self._capture is None:
            self._capture = CaptureWriter(max(queue_sizes), self._capture_dropped, self._capture_written)
        elif queue_sizes and self._capture is not None:
            self._capture.queue_size = max(queue_sizes)
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._flush_stats_forever()),
                loop.create_task(self._check_health_forever()),
                loop.create_task(self._refresh_gauges_forever()),
            ]
        logger.info(
            "routing: %s",
            "; ".join(
                f"{n}: {', '.join(f'v{v}={w:g}' for v, w in m.route.weights.items())}"
                + (f", shadow v{m.spec.shadow.version} {m.spec.shadow.percent:g}%" if m.spec.shadow else "")
                for n, m in models.items()
            ),
        )

    # --- background ---------------------------------------------------------------------------------------------
    def _set_config_gauges(self) -> None:
        """Weight and shadow-percent gauges of the current routing, set again every GAUGE_REFRESH_S: Ray stops exporting
        a gauge that has not been set for two metrics report intervals (and a removed version's gauges age out)."""
        state = self._state
        if state is None:
            return
        for name, m in state.models.items():
            for v in m.spec.versions:
                self._metrics.weight.set(v.weight, tags={"model": name, "version": str(v.version)})
                if m.spec.capture is not None:
                    for metric, value in offline_quality(v.offline_metrics).items():
                        tags = {"model": name, "version": str(v.version), "metric": metric}
                        self._metrics.offline_quality.set(value, tags=tags)
            if m.spec.shadow is not None:
                shadow = m.spec.shadow
                self._metrics.shadow_percent.set(shadow.percent, tags={"model": name, "version": str(shadow.version)})

    async def _refresh_gauges_forever(self) -> None:
        while True:
            await asyncio.sleep(GAUGE_REFRESH_S)
            self._set_config_gauges()
            self._metrics.flush_counts()

    async def _flush_stats_forever(self) -> None:
        stats = serve.get_deployment_handle(STATS, self._app_name)
        while True:
            await asyncio.sleep(self._state.spec.stats_flush_interval_s if self._state else 1.0)
            rows = self._recorder.drain()
            if rows:
                try:
                    await stats.push.remote(rows)
                except Exception as e:  # rollout decisions lose a second of counts; serving goes on
                    logger.warning("could not push stats to %s: %s", STATS, e)
            await self._push_predictions(stats)

    async def _push_predictions(self, stats: Any) -> None:
        """Hand the captured answers since the last push to the stats deployment (the live join with labels)."""
        predictions = self._recorder.drain_predictions()
        if predictions:
            try:
                await stats.push_predictions.remote(predictions)
            except Exception as e:  # their labels will join offline (`rayml monitor quality`), not live
                logger.warning("could not push %d captured answers to %s: %s", len(predictions), STATS, e)

    async def _check_health_forever(self) -> None:
        while True:
            state = self._state
            if state is not None:
                names = [v.deployment for m in state.models.values() if m.spec.placement == "replicas" for v in m.spec.versions]
                timeout = max(5.0, state.spec.health_check_interval_s)  # a cold or busy replica may take seconds
                results = await asyncio.gather(*(self._probe(state, n, timeout) for n in names), return_exceptions=True)
                state.ready.update({n: (None if r is None else str(r)) for n, r in zip(names, results, strict=True)})
                await asyncio.sleep(state.spec.health_check_interval_s)
            else:
                await asyncio.sleep(0.5)

    async def _probe(self, state: _State, deployment: str, timeout: float) -> str | None:
        try:
            meta = await asyncio.wait_for(
                _await(serve.get_deployment_handle(deployment, self._app_name).metadata.remote()), timeout
            )
        except asyncio.TimeoutError:
            return f"no answer within {timeout:g}s (starting, overloaded or failing; see `rayml serve status`)"
        except Exception as e:  # kept for `rayml serve status` and the log; callers see _public()'s words
            return f"{type(e).__name__}: {e}"
        self._signatures[deployment] = _signature(meta)
        return None

    def inline_errors(self) -> dict[str, str]:
        """Versions placed in this ingress that could not be loaded: deployment name -> why (read after a deploy)."""
        return dict(self._inline.errors)

    # --- health and metadata ------------------------------------------------------------------------------------
    @api.get("/v2/health/live")
    async def live(self) -> Response:
        return json_response(200, {"live": True})

    @api.get("/v2/health/ready")
    async def ready(self) -> Response:
        """Open to every caller (load balancers probe it), so it says only what anyone may know: with API keys on,
        how many versions are not ready; without, which ones and in our own words (never an exception's text)."""
        state = self._state
        if state is None:
            return json_response(503, {"ready": False, "error": "the ingress has no routing table yet"})
        waiting = {
            f"{m.spec.name}:{v}": _public(state.ready.get(m.spec.deployment_of(v), _NOT_CHECKED))
            for m in state.models.values()
            for v in m.route.primary_versions
            if state.ready.get(m.spec.deployment_of(v), _NOT_CHECKED) is not None
        }
        if waiting and state.spec.auth:
            return json_response(503, {"ready": False, "not_ready_versions": len(waiting)})
        if waiting:
            return json_response(503, {"ready": False, "not_ready": waiting})
        return json_response(200, {"ready": True})

    @api.get("/v2")
    async def server_metadata(self) -> Response:
        return json_response(200, {"name": "rayml", "version": "v2", "extensions": []})

    @api.get("/v2/models/{model}")
    async def model_metadata(self, model: str, request: Request) -> Response:
        state, m = self._model(request, model)
        version = max(m.route.weights, key=lambda v: (m.route.weights[v], v))
        sig = await self._signature(state, m, version)
        body = v2_metadata(model, m.route.versions, sig.inputs, sig.outputs, sig.task, sig.class_labels)
        if m.spec.kind == "model_set":
            body["parameters"]["segment"] = f"required: the segment key ({', '.join(m.spec.segment_columns)})"
        return json_response(200, body, version)

    @api.get("/v2/models/{model}/versions/{version}")
    async def version_metadata(self, model: str, version: str, request: Request) -> Response:
        state, m = self._model(request, model)
        v = _pinned(m, version)
        sig = await self._signature(state, m, v)
        body = v2_metadata(model, [v], sig.inputs, sig.outputs, sig.task, sig.class_labels)
        return json_response(200, {**body, "lineage": sig.lineage}, v)

    @api.get("/v2/models/{model}/ready")
    async def model_ready(self, model: str, request: Request) -> Response:
        state, m = self._model(request, model)
        waiting = {
            str(v): _public(state.ready.get(m.spec.deployment_of(v), _NOT_CHECKED))
            for v in m.route.primary_versions
            if state.ready.get(m.spec.deployment_of(v), _NOT_CHECKED) is not None
        }
        return json_response(
            503 if waiting else 200, {"name": model, "ready": not waiting, **({"not_ready": waiting} if waiting else {})}
        )

    @api.get("/v2/models/{model}/versions/{version}/ready")
    async def version_ready(self, model: str, version: str, request: Request) -> Response:
        state, m = self._model(request, model)
        v = _pinned(m, version)
        why = state.ready.get(m.spec.deployment_of(v), _NOT_CHECKED)
        return json_response(200 if why is None else 503, {"name": model, "version": str(v), "ready": why is None}, v)

    # --- inference ----------------------------------------------------------------------------------------------
    @api.post("/v2/models/{model}/infer")
    async def infer(self, model: str, request: Request) -> Response:
        return await self._infer(request, model, None, "v2")

    @api.post("/v2/models/{model}/versions/{version}/infer")
    async def infer_version(self, model: str, version: str, request: Request) -> Response:
        return await self._infer(request, model, version, "v2")

    @api.post("/v1/models/{model}:predict")
    async def predict_v1(self, model: str, request: Request) -> Response:
        return await self._infer(request, model, None, "v1")

    # --- ground truth ---------------------------------------------------------------------------------------------
    @api.post("/v2/models/{model}/labels")
    async def labels(self, model: str, request: Request) -> Response:
        """Ground-truth labels of captured predictions: ``[{"inference_id": ..., "label": ..., "row": 0}, ...]``.

        All or nothing: one invalid entry refuses the body (422, every problem named) and nothing is stored. Valid
        labels are stored next to the model's captures (for ``rayml monitor quality``) and joined live to the
        captured answers the app still holds (live quality gauges, the rollout quality gate). Posting the same labels
        again changes nothing (the first label of a prediction is the one used).
        """
        try:
            state, m = self._model(request, model)
            capture = m.spec.capture
            if capture is None:
                raise HttpError(
                    409,
                    f"model {model!r} does not capture its predictions, so labels have nothing to join: set "
                    f"serve.models.{model}.capture (e.g. capture: {{percent: 100}}) and run `rayml serve up`",
                )
            body = await read_body(request, state.spec.max_request_bytes, state.spec.request_read_timeout_s)
            payload = parse_json(body)
            if isinstance(payload, dict) and set(payload) == {"labels"}:
                payload = payload["labels"]
            version = max(m.route.weights, key=lambda v: (m.route.weights[v], v))
            sig = await self._signature(state, m, version)
            batch = validate_labels(payload, model, m.spec.task, sig.class_labels, "http")
            if batch.problem_count:
                self._metrics.labels.inc(batch.problem_count, tags={"model": model, "outcome": "invalid"})
                total = len(payload) if isinstance(payload, list) else 1
                raise HttpError(
                    422,
                    f"{batch.problem_count} of {total} labels are invalid and none was stored: "
                    + "; ".join(batch.problems)
                    + ('; send [{"inference_id": "<the x-rayml-inference-id of the answer>", "label": <the true value>, '
                    '"row": <row in that request, default 0>}, ...]'),
                )
            if batch.accepted == 0:
                raise HttpError(422, 'no labels in the body: send [{"inference_id": ..., "label": ...}, ...]')
            try:
                await asyncio.to_thread(write_labels, capture.destination, model, batch.table)
            except Exception as e:  # the destination is down: the caller retries (nothing was joined yet)
                request_id = new_request_id()
                logger.warning("could not store labels of %s (request id %s): %s", model, request_id, e)
                return server_error_response(f"could not store the labels of model {model!r}; retry", request_id, None)
            counts = await self._join_labels(m, sig, batch)
        except HttpError as e:
            return error_response(e.status, e.message)
        return json_response(200, {"model_name": model, "accepted": batch.accepted, "stored": True, **counts})

    async def _join_labels(self, m: _Model, sig: _Signature, batch: Any) -> dict[str, Any]:
        """Join stored labels to the answers the stats deployment holds; counts by outcome (empty if it is away)."""
        stats = serve.get_deployment_handle(STATS, self._app_name)
        await self._push_predictions(stats)  # this replica's answers of the last second, so their labels join now
        t = batch.table
        entries = list(zip(t["inference_id"].to_pylist(), t["row"].to_pylist(), t["label"].to_pylist(), strict=True))
        positive = binary_classes(sig.class_labels)[1] if m.spec.task == "binary" else None
        try:
            counts = await stats.label.remote(m.spec.name, m.spec.task, positive, entries)
        except Exception as e:  # stored all the same: `rayml monitor quality` joins them
            logger.warning("could not join labels of %s live: %s", m.spec.name, e)
            return {"live_join": "unavailable"}
        for outcome, n in counts.items():
            if n:
                self._metrics.labels.inc(n, tags={"model": m.spec.name, "outcome": outcome})
        return dict(counts)

    def _model(self, request: Request, model: str) -> tuple[_State, _Model]:
        state = self._state
        if state is None:
            raise HttpError(503, "the ingress is starting and has no routing table yet; retry in a moment")
        key = authorize(state.spec.auth, request.headers.get("authorization"), None)
        m = state.models.get(model)
        if m is None:
            # list only what this caller's key may call: a key scoped to some models learns nothing of the others
            scoped = key.models if key is not None else None
            visible = sorted(set(scoped) & set(state.models) if scoped is not None else state.models)
            shown = model if len(model) <= 64 else f"{model[:61]}..."
            listed = "models this API key may call" if scoped is not None else "served models"
            raise HttpError(404, f"model {shown!r} is not served here; {listed}: {', '.join(visible) or '(none)'}")
        authorize(state.spec.auth, request.headers.get("authorization"), model)
        return state, m

    def _max_columns(self, m: _Model) -> int | None:
        """Most distinct columns a request to ``m`` may name: every served version's inputs (siblings' columns are
        ignored, not refused), its segment columns and a margin; None while a version's signature is not known."""
        count = len(m.spec.segment_columns) + 1 + COLUMN_MARGIN  # + 1: the 'segment' field
        for v in m.spec.versions:
            sig = self._signatures.get(m.spec.deployment_of(v.version))
            if sig is None:
                return None
            count += len(sig.inputs)
        return count

    async def _infer(self, request: Request, model: str, pinned: str | None, protocol: str) -> Response:
        t0 = time.perf_counter()
        route = PINNED if pinned is not None else PRIMARY
        version: int | None = None
        label = model
        given = request.headers.get(INFERENCE_ID_HEADER)
        inference_id = given if given is not None and check_inference_id(given) is None else None
        try:
            try:
                state, m = self._model(request, model)
            except HttpError:
                label = model if self._state is not None and model in self._state.models else "<unknown>"
                raise
            if given is not None and inference_id is None:
                raise HttpError(
                    400,
                    f"header {INFERENCE_ID_HEADER}: {check_inference_id(given)}; send such an id, or leave the header out "
                    "and one is generated (returned in the same header)",
                )
            inference_id = inference_id or new_inference_id()
            body = await read_body(request, state.spec.max_request_bytes, state.spec.request_read_timeout_s)
            payload = parse_json(body)
            parse = parse_v2 if protocol == "v2" else parse_v1
            parsed = parse(payload, state.spec.max_batch_rows, self._max_columns(m))
            if pinned is not None:
                version = _pinned(m, pinned)
            else:
                key = request.headers.get(m.route.sticky_header) if m.route.sticky_header else None
                version = m.route.choose(key)
            probabilities = protocol == "v1" and wants_probabilities(parsed)
            segment = _segment(m, parsed)
            result, sig, feed = await self._call(state, m, version, parsed, segment)
            if protocol == "v2":
                params = {"route": route, **({"segment": segment} if segment is not None else {})}
                if "served_by" in result:
                    params["served_by"] = result["served_by"]
                if sig.lineage.get("run_id"):
                    params["run_id"] = sig.lineage["run_id"]
                response_body = v2_response(model, version, sig.outputs, result["outputs"], parsed.request_id, params)
            else:
                response_body = v1_response(result["outputs"], sig.task, sig.class_labels, probabilities)
        except _Outcome as o:
            return self._finish(label, o.version, route, o.status, t0, _outcome_response(o), inference_id)
        except HttpError as e:
            response = error_response(e.status, e.message, version)
            return self._finish(label, version, route, e.status, t0, response, inference_id)
        except Exception as e:  # a bug of ours, not the caller's mistake: a counted JSON 500, the detail in the log
            request_id = new_request_id()
            logger.error("request to %s failed in the ingress (request id %s)", model, request_id, exc_info=e)
            response = server_error_response(f"the ingress failed on this request to model {model!r}", request_id, version)
            return self._finish(label, version, route, 500, t0, response, inference_id)
        response = json_response(200, response_body, version)
        capture = m.spec.capture
        captured = capture is not None and (capture.percent >= 100.0 or random.random() * 100.0 < capture.percent)
        if captured:
            self._capture_answer(m, version, route, inference_id, result["outputs"], sig, feed, segment)
        shadow = m.route.shadow_for(version) if pinned is None else None
        if shadow is not None:
            # fire-and-forget, after the primary answer exists: its latency and failures never reach this caller
            primary = result["outputs"][0]
            assert self._shadow is not None, "reconfigure() sets it with the routing table"
            shadow_id = inference_id if captured else None
            self._shadow.submit((model, shadow), lambda: self._mirror(state, m, shadow, parsed, segment, primary, shadow_id))
        return self._finish(model, version, route, 200, t0, response, inference_id)

    def _capture_answer(
        self,
        m: _Model,
        version: int,
        route: str,
        inference_id: str,
        outputs: list[Any],
        sig: _Signature,
        feed: Any,
        segment: str | None,
    ) -> None:
        """Queue one answer for the capture files and remember it for the live join (both off the response path)."""
        c = m.spec.capture
        if c is None or self._capture is None:
            return
        predictions = predictions_of(sig.task, sig.class_labels, outputs)
        item = Captured(
            destination=c.destination,
            model=m.spec.name,
            version=version,
            route=route,
            inference_id=inference_id,
            ts=time.time(),
            task=sig.task,
            class_labels=sig.class_labels,
            outputs=outputs,
            inputs=inputs_for_capture(feed, m.excluded, sig.capture_withheld),
            segment=segment,
            max_rows_per_file=c.max_rows_per_file,
            flush_interval_s=c.flush_interval_s,
            predictions=predictions,
        )
        if self._capture.submit(item):
            self._recorder.prediction(m.spec.name, inference_id, version, route, predictions[0], predictions[1])

    def _capture_dropped(self, model: str, rows: int) -> None:
        self._metrics.capture_dropped.inc(rows, tags={"model": model})

    def _capture_written(self, model: str, version: int, route: str, rows: int) -> None:
        self._metrics.capture_rows.inc(rows, tags={"model": model, "version": str(version), "route": route})

    def _finish(
        self,
        model: str,
        version: int | None,
        route: str,
        status: int,
        t0: float,
        response: Response,
        inference_id: str | None = None,
    ) -> Response:
        if inference_id is not None:
            response.headers[INFERENCE_ID_HEADER] = inference_id
        latency = time.perf_counter() - t0
        if version is not None and model != "<unknown>":
            self._recorder.request(model, version, route, status, latency)
        self._metrics.request(model, "none" if version is None else version, route, status, latency)
        return response

    async def _call(
        self, state: _State, m: _Model, version: int, parsed: ParsedRequest, segment: str | None
    ) -> tuple[dict[str, Any], _Signature, Any]:
        sig = await self._signature(state, m, version)
        ignore = frozenset(m.spec.segment_columns) | {"segment"} | await self._sibling_columns(state, m, version)
        feed = validate(parsed, sig.inputs, state.spec.allow_missing_values, ignore)
        inline = None
        if m.spec.placement == "ingress":
            inline = self._inline.get(m.spec.deployment_of(version))
            if inline is None:
                raise _Outcome(503, _not_loaded(m, version), version)
            response: Any = inline.predict(feed)  # a coroutine: a timeout cancels it where it waits
        else:
            handle = m.handles[version]
            if segment is not None:
                handle = handle.options(multiplexed_model_id=segment)
            response = handle.predict.remote(feed)
        try:
            result = await _await_within(response, state.spec.request_timeout_s)
        except asyncio.TimeoutError as e:
            if inline is None:
                response.cancel()
            raise _Outcome(
                504,
                f"model {m.spec.name} version {version} did not answer within {state.spec.request_timeout_s:g}s; retry later",
                version,
            ) from e
        except BackPressureError as e:
            raise _Outcome(503, f"model {m.spec.name} version {version} is overloaded; retry with backoff", version) from e
        except Exception as e:  # replica died, deployment gone: the server's fault, never the client's
            request_id = new_request_id()
            logger.warning("model %s version %s is unavailable (request id %s): %r", m.spec.name, version, request_id, e)
            raise _Outcome(500, f"model {m.spec.name} version {version} is unavailable", version, request_id) from e
        if not result["ok"]:
            if result["user_error"] and result.get("status") == 404:
                raise _Outcome(404, f"model {m.spec.name} version {version}: {result['error']}", version)
            if result["user_error"]:
                raise _Outcome(422, f"the input does not match model {m.spec.name} version {version}: {result['error']}", version)
            largest = _largest_input(feed)
            if largest > EXTREME_INPUT and "non-finite" in str(result["error"]):  # the model's FloatingPointError
                # float32 arithmetic overflowed on the caller's values: their mistake (a 4xx), not the version's
                raise _Outcome(
                    422,
                    f"model {m.spec.name} version {version} cannot compute a finite prediction for these inputs: values "
                    f"up to {largest:.3g} (over {EXTREME_INPUT:.0e}) overflow its float32 arithmetic; send values in the "
                    "range the model was trained on",
                    version,
                )
            # the model's own error text (paths, internals) goes to the log only: the caller gets the id to find it
            request_id = new_request_id()
            logger.warning("model %s version %s failed (request id %s): %s", m.spec.name, version, request_id, result["error"])
            raise _Outcome(500, f"model {m.spec.name} version {version} failed on this request", version, request_id)
        return result, sig, feed

    async def _sibling_columns(self, state: _State, m: _Model, version: int) -> frozenset[str]:
        """Columns the model's other served versions take: a caller sends one row to the model name, and a version
        that uses fewer columns (an imported model trained on a subset) ignores the rest instead of refusing them."""
        if len(m.spec.versions) < 2:
            return frozenset()
        names: set[str] = set()
        for v in m.spec.versions:
            if v.version == version:
                continue
            sig = self._signatures.get(m.spec.deployment_of(v.version))
            if sig is None:  # not asked yet: ask now (once); a version that is not ready adds nothing
                try:
                    sig = await self._signature(state, m, v.version)
                except _Outcome:
                    continue
            names.update(t.name for t in sig.inputs)
        return frozenset(names)

    async def _signature(self, state: _State, m: _Model, version: int) -> _Signature:
        deployment = m.spec.deployment_of(version)
        sig = self._signatures.get(deployment)
        if sig is None and m.spec.placement == "ingress":
            raise _Outcome(503, _not_loaded(m, version), version)
        if sig is None:
            why = await self._probe(state, deployment, state.spec.request_timeout_s)
            sig = self._signatures.get(deployment)
            if sig is None:
                raise _Outcome(503, f"model {m.spec.name} version {version} is {_public(why)}; retry later", version)
        return sig

    # --- shadow -------------------------------------------------------------------------------------------------
    async def _mirror(
        self,
        state: _State,
        m: _Model,
        version: int,
        parsed: ParsedRequest,
        segment: str | None,
        primary: Any,
        inference_id: str | None = None,
    ) -> None:
        t0 = time.perf_counter()
        try:
            result, sig, feed = await self._call(state, m, version, parsed, segment)
        except (_Outcome, HttpError) as e:
            raise RuntimeError(e.message) from e
        latency = time.perf_counter() - t0
        if inference_id is not None:  # the primary answer was captured: the shadow's answer to it is judged too
            self._capture_answer(m, version, SHADOW, inference_id, result["outputs"], sig, feed, segment)
        d = disagreement(primary, result["outputs"][0], m.spec.task)  # multiclass: the labels
        self._recorder.shadow(
            m.spec.name,
            version,
            latency_s=latency,
            compared_rows=int(d.abs_diff.size),
            diff_sum=float(d.abs_diff.sum()),
            primary_abs_sum=float(d.abs_primary.sum()),
        )
        tags = {"model": m.spec.name, "version": str(version)}
        self._metrics.request(m.spec.name, version, SHADOW, 200, latency)
        for x in d.abs_diff[:_DISAGREEMENT_ROWS_OBSERVED].tolist():
            self._metrics.disagreement.observe(x, tags=tags)

    def _shadow_dropped(self, tag: tuple[str, int]) -> None:
        model, version = tag
        self._recorder.shadow(model, version, dropped=True)
        self._metrics.shadow_dropped.inc(tags={"model": model, "version": str(version)})

    def _shadow_failed(self, tag: tuple[str, int], error: BaseException) -> None:
        model, version = tag
        self._recorder.shadow(model, version, error=True)
        self._metrics.shadow_errors.inc(tags={"model": model, "version": str(version)})
        self._metrics.request(model, version, SHADOW, 500, None)
        now = time.monotonic()
        if now - self._last_shadow_log > 10.0:  # one line per 10 s: a broken shadow must not flood the logs
            self._last_shadow_log = now
            logger.warning("shadow %s:%s failed (counted in rayml_shadow_errors_total): %s", model, version, error)
