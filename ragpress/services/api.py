"""The REST API (FastAPI): routes, typed errors, request size limits, per-request timeouts.

Built per ingress replica by :func:`create_api` around an object with the stage handles
(:class:`ragpress.services.deployments.Ingress`). Every error is JSON
``{"error": {"type", "code", "message", ...}}`` with a real status: 400 malformed JSON, 404/405
unknown route, 413 payload too large, 422 invalid field / budget / unknown method, 503 stage
unavailable, 504 timeout. A 500 means a bug.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragpress.core.errors import RagpressError, UnknownCompressorError
from ragpress.readers.base import context_for
from ragpress.services.playground import mount_playground
from ragpress.services.protocol import (
    AnswerRequestBody,
    AnswerResponse,
    CacheInfo,
    CompressRequestBody,
    CompressResponse,
    ErrorResponse,
    HealthResponse,
    HitOut,
    MethodInfo,
    MethodsResponse,
    ReaderAnswerOut,
    ReadyResponse,
    RetrieveRequestBody,
    RetrieveResponse,
    SpanOut,
    StageOut,
)

log = logging.getLogger("ragpress.services")


class ServiceLimits(BaseModel):
    """Per-request bounds of the ingress."""

    max_body_bytes: int = Field(default=4 * 2**20, ge=1024, description="larger bodies get 413")
    timeout_s: float = Field(default=30.0, gt=0, description="per request; slower ones get 504")
    health_timeout_s: float = Field(default=3.0, gt=0)
    max_new_tokens: int = Field(default=1024, ge=1, le=4096,
                                description="bound on a request's answer tokens (larger asks are clamped to it)")
    retry_attempts: int = Field(default=6, ge=0, le=20,
                                description="re-sends of an idempotent stage call whose replica died (0: none)")
    retry_wait_s: float = Field(default=60.0, ge=0,
                                description="how long a stage call may wait, in all, for a live replica after "
                                            "its replica died (a single replica's replacement loads its models)")
    max_in_flight: int = Field(default=192, ge=1,
                               description="requests one ingress replica serves at once; past it a typed 503 "
                                           "`overloaded` with Retry-After (keep it under the ingress's "
                                           "max_ongoing_requests, so the refusal is ours and immediate)")


class PayloadTooLargeError(RagpressError):
    http_status = 413
    code = "payload_too_large"


class StageTimeoutError(RagpressError):
    http_status = 504
    code = "timeout"


class StageUnavailableError(RagpressError):
    http_status = 503
    code = "stage_unavailable"
    retry_after_s = 1.0


class OverloadedError(RagpressError):
    """More requests than a stage (its ``max_queued_requests``) or the ingress (``max_in_flight``)
    holds: refused at once, to be retried after ``Retry-After`` seconds, never queued into a timeout."""

    http_status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after_header(exc: Exception) -> dict[str, str] | None:
    """``Retry-After`` (whole seconds, at least 1) for an error that says when to retry."""
    after = getattr(exc, "retry_after_s", None)
    return {"retry-after": str(max(1, math.ceil(after)))} if after is not None else None


def replica_lost(exc: BaseException) -> bool:
    """The call failed because its replica (or its node) died or became unreachable: the same
    call may be sent again, to another replica or to the replacement."""
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    lost = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError,
            sex.ReplicaUnavailableError, sex.DeploymentUnavailableError)
    seen = 0
    while exc is not None and seen < 5:  # a chained argument's loss arrives wrapped in a task error
        if isinstance(exc, lost):
            return True
        exc, seen = getattr(exc, "cause", None) or exc.__cause__, seen + 1
    return False


def backpressure(exc: BaseException) -> bool:
    from ray.serve.exceptions import BackPressureError

    return isinstance(exc, BackPressureError)


class StageError(RagpressError):
    """A typed error a stage returned (kept as the stage wrote it)."""

    def __init__(self, body: dict[str, Any], status: int):
        super().__init__(body["error"]["message"])
        self.body = body
        self.http_status = status

    def to_dict(self) -> dict:
        return self.body


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d} for s, d in (
        (400, "malformed JSON"), (413, "payload too large"), (422, "invalid request"),
        (503, "stage unavailable"), (504, "timeout"))
}


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (by Content-Length, or counted while
    streaming for chunked uploads) before FastAPI parses anything."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = PayloadTooLargeError(f"request body exceeds {self.max_bytes} bytes; send fewer or shorter passages")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_bytes:
                        return await _send_error(send, too_large)
                except ValueError:
                    pass
        if any(name == b"content-length" for name, _ in scope.get("headers", [])):
            return await self.app(scope, receive, send)
        # no Content-Length (chunked upload): read it here, bounded, then replay it to the app
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return None
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await _send_error(send, too_large)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)


async def _send_error(send, exc: RagpressError) -> None:
    resp = JSONResponse(exc.to_dict(), status_code=exc.http_status)
    await send({"type": "http.response.start", "status": resp.status_code, "headers": resp.raw_headers})
    await send({"type": "http.response.body", "body": resp.body})


def sse(event: str, data: str) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {data}\n\n".encode()


class DeltaText:
    """Stream pieces whose concatenation is the final answer (which readers strip): leading
    whitespace is dropped, trailing whitespace held back until more text follows it."""

    def __init__(self) -> None:
        self.sent = ""
        self._pending = ""

    def feed(self, piece: str) -> str:
        if not self.sent and not self._pending:
            piece = piece.lstrip()
        joined = self._pending + piece
        core = joined.rstrip()
        self._pending = joined[len(core):]
        self.sent += core
        return core

    def finish(self, final: str) -> str:
        """What is left of ``final`` to send (nothing when the pieces already spelled it)."""
        rest = final[len(self.sent):] if final.startswith(self.sent) else ""
        self.sent += rest
        return rest


def reader_answer_out(a) -> ReaderAnswerOut:
    return ReaderAnswerOut(text=a.text, reader=a.reader, model_id=a.model_id, tokens_in=a.tokens_in,
                           tokens_out=a.tokens_out, prefill_ms=a.prefill_ms, decode_ms=a.decode_ms,
                           finish_reason=a.finish_reason, context_tokens_cut=a.context_tokens_cut, empty=a.empty)


def bypass_context(passages, timings: dict[str, float] | None = None) -> CompressResponse:
    """The full rendered context as a CompressResponse (method ``none``, ratio 1)."""
    from ragpress.core.extractive import render_full
    from ragpress.core.tokens import get_token_counter

    text = render_full(passages)
    counter = get_token_counter(None)
    n = counter.count(text)
    spans = [SpanOut(passage_id=p.id, start=0, end=len(p.text), text=p.text) for p in passages]
    return CompressResponse(method="none", text=text, spans=spans, tokens_before=n, tokens_after=n, tokens_saved=0,
                            ratio=1.0, budget=None, tokenizer=counter.name, config_hash="bypass", model_id=None,
                            cache=CacheInfo(hit=False), cache_hits=0, timings=timings or {})


def _hits_out(hits) -> list[HitOut]:
    return [HitOut(id=h.passage.id, title=h.passage.title, text=h.passage.text, score=h.score, rank=h.rank)
            for h in hits]


def create_api(service) -> FastAPI:
    """The FastAPI app over ``service`` (stage handles, limits, metrics, defaults)."""
    from ragpress.core.registry import get_compressor_class

    limits: ServiceLimits = service.limits
    metrics = service.metrics
    app = FastAPI(
        title="ragpress", version="0.1.0",
        description="RAG context compression: retrieve, compress with provenance, cache compressed segments.",
    )

    # ------------------------------------------------------------------ errors
    from ragpress.services.openai_api import is_openai_route, to_openai_error

    def _error_response(request: Request, body: dict[str, Any], status: int, headers=None) -> JSONResponse:
        if is_openai_route(request.url.path):
            body = to_openai_error(body, status)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RagpressError)
    async def _ragpress_error(request: Request, exc: RagpressError):
        body = exc.to_dict()
        if isinstance(exc, UnknownCompressorError):
            body["error"]["available"] = exc.available
        return _error_response(request, body, exc.http_status, headers=retry_after_header(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in errors][:20]
        if malformed or is_openai_route(request.url.path):  # OpenAI answers 400 to an invalid body
            status, code = 400, "malformed_json" if malformed else "invalid_request"
            reason = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
            message = f"request body is not valid JSON ({reason or 'decode error'})"
        else:
            status, code = 422, "invalid_request"
        if not malformed:
            message = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in details[:5])
        return _error_response(request, {"error": {"type": "RequestValidationError", "code": code,
                                                   "message": message, "details": details}}, status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return _error_response(request, PayloadTooLargeError(str(exc.detail)).to_dict(), 413)
        return _error_response(request, {"error": {"type": "HTTPException", "code": f"http_{exc.status_code}",
                                                   "message": str(exc.detail)}}, exc.status_code,
                               headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error_response(request, {"error": {"type": "InternalError", "code": "internal_error",
                                                   "message": f"internal error ({type(exc).__name__}); "
                                                              "see the service log"}}, 500)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(response.status_code)).inc()
        if path.startswith("/v1/"):
            metrics.latency.labels("ingress").observe(time.perf_counter() - t0)
        return response

    # ------------------------------------------------------------------ helpers
    async def _await(call, stage: str):
        """A stage's answer. ``call`` is a zero-argument function that sends the (idempotent)
        call, or an already-sent response. A call whose replica died is sent again, to another
        replica or, for a stage with one, to its replacement: at most ``retry_attempts`` times,
        waiting at most ``retry_wait_s`` for a live replica on top of the stage's ``timeout_s``.
        A stage whose queue is full answers a typed 503 ``overloaded`` at once."""
        t0 = time.perf_counter()
        deadline = t0 + limits.timeout_s
        attempt = 0
        while True:
            resp = call() if callable(call) else call
            try:
                out = await asyncio.wait_for(resp, timeout=max(0.05, deadline - time.perf_counter()))
                break
            except TimeoutError:
                _cancel(resp)
                raise StageTimeoutError(f"the {stage} stage did not answer within {limits.timeout_s:.0f} s; "
                                        "retry, or send fewer passages") from None
            except RagpressError:
                raise
            except Exception as exc:
                if backpressure(exc):
                    metrics.shed.labels(stage).inc()
                    raise OverloadedError(f"the {stage} stage is at capacity (its queue is full); retry after "
                                          "a second, or add replicas") from None
                if callable(call) and replica_lost(exc) and attempt < limits.retry_attempts:
                    attempt += 1
                    deadline = max(deadline, time.perf_counter() + limits.retry_wait_s) if attempt == 1 else deadline
                    if time.perf_counter() < deadline:
                        metrics.retries.labels(stage).inc()
                        log.warning("%s stage: replica lost (%s); sending again (%d/%d)", stage,
                                    type(exc).__name__, attempt, limits.retry_attempts)
                        await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0, max(0.0, deadline - time.perf_counter())))
                        continue
                log.warning("%s stage failed: %r", stage, exc)  # actor errors: retryable by the client
                raise StageUnavailableError(f"the {stage} stage is unavailable ({type(exc).__name__}); "
                                            "retry") from None
        metrics.latency.labels(stage).observe(time.perf_counter() - t0)
        if isinstance(out, dict) and out.get("error"):
            raise StageError(out["error"], out["status"])
        return out

    def _handle(method: str | None):
        name = method or service.default_method
        if name not in service.compressors:
            raise UnknownCompressorError(name, sorted(service.compressors))
        return name, service.compressors[name]

    def _compress_response(out: dict[str, Any], t0: float, soft_payload: bool = True) -> CompressResponse:
        r = out["result"]
        metrics.observe_compression(r.compressor, r.tokens_before, r.tokens_after, r.cache_hits > 0,
                                    out.get("cache_degraded", False))
        for k in ("cache_read", "compress"):
            if k in r.timings:
                metrics.latency.labels(k).observe(r.timings[k])
        return CompressResponse.from_result(r, out.get("cache_degraded", False),
                                            {"total": time.perf_counter() - t0}, soft_payload)

    def _retriever():
        if service.retriever is None:
            raise StageUnavailableError("this service has no retriever configured (retriever: null)")
        return service.retriever

    async def _next(gen, stage: str):
        """The next item of a reader stream, bounded by the stage timeout; errors as items."""
        try:
            return await asyncio.wait_for(gen.__anext__(), timeout=limits.timeout_s)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            _cancel(gen)
            exc = StageTimeoutError(f"the {stage} stage did not answer within {limits.timeout_s:.0f} s")
        except Exception as e:
            log.warning("%s stream failed: %r", stage, e)
            exc = StageUnavailableError(f"the {stage} stage is unavailable ({type(e).__name__}); retry")
        return {"result": None, "error": exc.to_dict(), "status": exc.http_status}

    async def _stream_reader(prompt, stage: str, check: bool = False):
        """Start the reader's stream and wait for its first item (so a failing reader is a real
        4xx/5xx, not a 200 stream with an error inside); returns (first item, generator). Until
        that first item nothing was sent to the client, so a lost replica's stream is started
        again like any idempotent call."""
        gens: list = []

        def start():
            gens.append(service.reader.options(stream=True).stream.remote(prompt, check))
            return gens[-1].__anext__()

        try:
            first = await _await(start, stage)
        except StopAsyncIteration:
            raise StageUnavailableError(f"the {stage} stage ended its stream without an answer") from None
        except BaseException:
            if gens:
                _cancel(gens[-1])
            raise
        return first, gens[-1]

    # ------------------------------------------------------------------ routes
    @app.get("/healthz", response_model=HealthResponse, tags=["ops"])
    async def healthz() -> HealthResponse:
        """Liveness: the ingress answers."""
        return HealthResponse(status="ok")

    replica_counts = ReplicaCounts(limits.health_timeout_s)

    @app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}, tags=["ops"])
    async def readyz():
        """Readiness: every stage loaded its models; ``degraded`` when the cache is unreachable
        (requests are still served, uncached) or a stage runs fewer replicas than its target
        (one died and is being replaced: its requests are sent to the others, or wait for it)."""
        stages = {"retriever": service.retriever} if service.retriever is not None else {}
        encoder = getattr(service, "settings", {}).get("encoder")
        stages.update({f"{'encoder' if m == encoder else 'compressor'}:{m}": h for m, h in service.compressors.items()})
        if service.reader is not None:
            stages["reader"] = service.reader
        names = list(stages)
        results, counts = await asyncio.gather(
            asyncio.gather(*(asyncio.wait_for(stages[n].health.remote(), limits.health_timeout_s) for n in names),
                           return_exceptions=True),
            replica_counts.get())
        report, status = {}, "ready"
        for n, r in zip(names, results):
            if isinstance(r, BaseException):
                report[n] = {"loaded": False, "error": f"{type(r).__name__}: {r}"}
                status = "not_ready"
                continue
            report[n] = r
            live = counts.get(getattr(stages[n], "deployment_name", None))
            if live is not None:
                r["replicas"] = {"running": live[0], "target": live[1]}
            if not r.get("loaded"):
                status = "not_ready"
            elif status == "ready" and (r.get("cache", {}).get("degraded") or (live and live[0] < live[1])):
                status = "degraded"
        limiter = await asyncio.to_thread(app.state.keys.status)  # may PING Redis once while degraded
        if limiter.get("degraded") and status == "ready":
            status = "degraded"
        body = ReadyResponse(status=status, stages=report, rate_limits=limiter)
        return JSONResponse(body.model_dump(mode="json"), status_code=503 if status == "not_ready" else 200)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics():
        """Prometheus text format."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/methods", response_model=MethodsResponse, tags=["compression"])
    async def methods() -> MethodsResponse:
        """The compression methods this service serves."""
        out = []
        for name in sorted(service.compressors):
            cls = get_compressor_class(name)
            out.append(MethodInfo(name=name, query_aware=cls.query_aware, handles_code=cls.handles_code,
                                  soft_tokens=cls.soft_tokens, budget_modes=sorted(cls.budget_modes),
                                  default_budget=cls.default_budget.model_dump(exclude_none=True)))
        return MethodsResponse(default=service.default_method, methods=out)

    @app.post("/v1/compress", response_model=CompressResponse, responses=_ERROR_RESPONSES, tags=["compression"])
    async def compress(body: CompressRequestBody) -> CompressResponse:
        """Compress passages (or a code file) for a query (or instruction) to a budget. A
        soft-token method (``arc``, served by the Encoder deployment) returns vectors instead of
        text: ``soft_tokens`` (base64 float16, shape, dtype, the reader they were made for, the
        span of each vector); ``"soft_tokens": "shape"`` leaves the payload out."""
        t0 = time.perf_counter()
        _, handle = _handle(body.method)
        request = body.to_core()
        out = await _await(lambda: handle.compress.remote(request), "compress")
        return _compress_response(out, t0, body.soft_tokens == "base64")

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=_ERROR_RESPONSES, tags=["retrieval"])
    async def retrieve(body: RetrieveRequestBody) -> RetrieveResponse:
        """Top-k passages from the service's index."""
        t0 = time.perf_counter()
        hits = await _await(lambda: _retriever().search.remote((body.query, body.k)), "retrieve")
        return RetrieveResponse(query=body.query, hits=_hits_out(hits), timings={"total": time.perf_counter() - t0})

    @app.post("/v1/answer", response_model=AnswerResponse, tags=["answer"],
              responses={**_ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}},
                                                   "description": "JSON, or server-sent events with stream=true"}})
    async def answer(body: AnswerRequestBody):
        """(Retrieve ->) compress -> read. With ``passages`` the given passages are used (no
        retrieval); ``bypass`` reads the full context; ``read: false`` (or a service without a
        reader) stops after compression (``answer`` null). ``stream: true`` answers with
        server-sent events: ``context`` (the compressed context), ``delta`` (``{"text"}``)...,
        then ``answer`` (the full response) or ``error``. Errors before the first answer piece
        (a 422 ``context_too_long`` with ``truncate: false``, an unreachable upstream) are plain
        HTTP errors. A soft-token method (``arc``) hands its vectors to the reader server-side
        (``reader.tokens_in`` counts each vector as one position; ``context.soft_tokens`` gives
        their shape, without the payload); a reader other than the one they were made for is a
        422 ``reader_mismatch``, a text-only reader a 422 ``soft_tokens_unsupported``."""
        t0 = time.perf_counter()
        _, handle = _handle(body.method)
        budget = body.budget.to_core() if body.budget else None
        passages = body.core_passages()
        hits: list = []
        stages: dict[str, StageOut] = {}
        if passages is None:
            if body.bypass:
                hits = await _await(lambda: _retriever().search.remote((body.query, body.k)), "retrieve")
                passages = [h.passage for h in hits]
                stages["retrieve"] = StageOut(ms=1000 * (time.perf_counter() - t0))
            else:
                # the retriever's response goes straight to the compressor: no await in between
                # (sent again together when a replica of either stage died)
                sent: dict[str, Any] = {}

                def retrieve_then_compress():
                    sent["hits"] = _retriever().search.remote((body.query, body.k))
                    return handle.compress_retrieved.remote(body.query, sent["hits"], budget)

                out = await _await(retrieve_then_compress, "answer")
                hits = await _await(sent["hits"], "retrieve")  # resolved already: the compressor had it
        t_c = time.perf_counter()
        read_context = None
        if body.bypass:
            context = await asyncio.to_thread(bypass_context, passages, {})
            context.timings["total"] = time.perf_counter() - t0
        else:
            if passages is not None:
                from ragpress.core.types import CompressionRequest

                request = CompressionRequest(query=body.query, passages=passages, budget=budget)
                out = await _await(lambda: handle.compress.remote(request), "compress")
            context = _compress_response(out, t0, soft_payload=False)
            if out["result"].soft_tokens is not None:  # the vectors go to the reader, not the text
                read_context = context_for(out["result"])
            if hits:  # retrieval and compression ran chained: split by the compressor's own timings
                c_ms = 1000 * (context.timings.get("compress", 0.0) + context.timings.get("cache_read", 0.0))
                stages["retrieve"] = StageOut(ms=max(0.0, 1000 * (t_c - t0) - c_ms))
        if "retrieve" in stages:
            stages["retrieve"].tokens_out = context.tokens_before
        c_ms = 1000 * (time.perf_counter() - t_c) if not hits or body.bypass else \
            1000 * (t_c - t0) - stages["retrieve"].ms
        stages["compress"] = StageOut(ms=c_ms, tokens_in=context.tokens_before, tokens_out=context.tokens_after)
        base = dict(query=body.query, hits=_hits_out(hits), context=context, tokens_saved=context.tokens_saved)

        def done(a=None, t_r: float | None = None) -> AnswerResponse:
            if a is not None:
                metrics.observe_answer("/v1/answer", a.tokens_out, a.empty)
                stages["read"] = StageOut(ms=1000 * (time.perf_counter() - t_r), tokens_in=a.tokens_in,
                                          tokens_out=a.tokens_out)
            return AnswerResponse(**base, answer=a.text if a is not None else None,
                                  reader=reader_answer_out(a) if a is not None else None, stages=stages,
                                  timings={"total": time.perf_counter() - t0})

        if not body.read or service.reader is None:
            resp = done()
            if not body.stream:
                return resp

            async def no_read():
                yield sse("context", context.model_dump_json())
                yield sse("answer", resp.model_dump_json())
            return StreamingResponse(no_read(), media_type="text/event-stream")
        t_r = time.perf_counter()
        new = min(body.max_new_tokens, limits.max_new_tokens) if body.max_new_tokens else None
        if read_context is None:
            read_context = context.text
        if not body.stream:
            out = await _await(lambda: service.reader.read.remote(body.query, read_context, "qa", body.truncate, new),
                               "read")
            return done(out["result"], t_r)
        prep = await _await(lambda: service.reader.prepare.remote(body.query, read_context, "qa", body.truncate, new),
                            "read")
        first, gen = await _stream_reader(prep["result"], "read")

        async def events():
            yield sse("context", context.model_dump_json())
            item, delta = first, DeltaText()
            try:
                while item is not None:
                    if "text" in item:
                        if piece := delta.feed(item["text"]):
                            yield sse("delta", json.dumps({"text": piece}, ensure_ascii=False))
                    elif "answer" in item:
                        if rest := delta.finish(item["answer"].text):
                            yield sse("delta", json.dumps({"text": rest}, ensure_ascii=False))
                        yield sse("answer", done(item["answer"], t_r).model_dump_json())
                        return
                    else:  # a typed error from the reader, or a timeout
                        yield sse("error", json.dumps(item["error"], ensure_ascii=False))
                        return
                    item = await _next(gen, "read")
                yield sse("error", json.dumps(StageUnavailableError("the read stage ended without an answer")
                                              .to_dict()))
            finally:
                _cancel(gen)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    from types import SimpleNamespace

    from ragpress.services.openai_api import add_chat_routes

    add_chat_routes(app, SimpleNamespace(
        service=service, limits=limits, metrics=metrics, await_=_await, handle=_handle, retriever=_retriever,
        compress_response=_compress_response, stream_reader=_stream_reader, next_item=_next))

    mount_playground(app)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    from ragpress.services.auth import install_auth
    from ragpress.services.drain import install_drain

    # API keys and rate limits (off without keys): 401/403/429 before a body is read
    app.state.keys = install_auth(app, getattr(service, "settings", {}).get("auth"), metrics)
    # outermost: 503 while the service drains for a stop, or when max_in_flight requests are being served
    app.state.drain = install_drain(app, metrics, limits.max_in_flight)
    return app


class ReplicaCounts:
    """Running and target replicas of each deployment of this ingress's application, from the
    Serve controller (asked at most every ``ttl_s``; empty outside a Serve replica or when the
    controller does not answer in ``timeout_s``)."""

    def __init__(self, timeout_s: float, ttl_s: float = 2.0):
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._at = -1e9
        self._value: dict[str, tuple[int, int]] = {}

    async def get(self) -> dict[str, tuple[int, int]]:
        if time.monotonic() - self._at < self.ttl_s:
            return self._value
        try:
            self._value = await asyncio.wait_for(asyncio.to_thread(self._ask), self.timeout_s)
        except Exception as exc:  # not in a Serve replica, or the controller is busy: no counts
            log.debug("replica counts unavailable: %r", exc)
            self._value = {}
        self._at = time.monotonic()
        return self._value

    @staticmethod
    def _ask() -> dict[str, tuple[int, int]]:
        from ray import serve
        from ray.serve.context import _get_global_client

        app_name = serve.get_replica_context().app_name
        details = _get_global_client().get_serve_details()
        deployments = details["applications"][app_name]["deployments"]
        return {name: (sum(r["state"] == "RUNNING" for r in d.get("replicas", [])), int(d["target_num_replicas"]))
                for name, d in deployments.items() if d.get("target_num_replicas") is not None}


def _cancel(resp) -> None:
    try:
        resp.cancel()
    except Exception:  # already finished or not cancellable
        pass
