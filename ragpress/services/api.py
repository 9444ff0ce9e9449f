"""The REST API (FastAPI): routes, typed errors, request size limits, per-request timeouts.

Built per ingress replica by :func:`create_api` around an object with the stage handles
(:class:`ragpress.services.deployments.Ingress`). Every error is JSON
``{"error": {"type", "code", "message", ...}}`` with a real status: 400 malformed JSON, 404/405
unknown route, 413 payload too large, 422 invalid field / budget / unknown method, 503 stage
unavailable, 504 timeout. A 500 means a bug.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragpress.core.errors import RagpressError, UnknownCompressorError
from ragpress.services.playground import mount_playground
from ragpress.services.protocol import (
    AnswerRequestBody,
    AnswerResponse,
    CompressRequestBody,
    CompressResponse,
    ErrorResponse,
    HealthResponse,
    HitOut,
    MethodInfo,
    MethodsResponse,
    ReadyResponse,
    RetrieveRequestBody,
    RetrieveResponse,
)

log = logging.getLogger("ragpress.services")


class ServiceLimits(BaseModel):
    """Per-request bounds of the ingress."""

    max_body_bytes: int = Field(default=4 * 2**20, ge=1024, description="larger bodies get 413")
    timeout_s: float = Field(default=30.0, gt=0, description="per request; slower ones get 504")
    health_timeout_s: float = Field(default=3.0, gt=0)


class PayloadTooLargeError(RagpressError):
    http_status = 413
    code = "payload_too_large"


class StageTimeoutError(RagpressError):
    http_status = 504
    code = "timeout"


class StageUnavailableError(RagpressError):
    http_status = 503
    code = "stage_unavailable"


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
    @app.exception_handler(RagpressError)
    async def _ragpress_error(request: Request, exc: RagpressError):
        body = exc.to_dict()
        if isinstance(exc, UnknownCompressorError):
            body["error"]["available"] = exc.available
        return JSONResponse(body, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in errors][:20]
        if malformed:
            status, code = 400, "malformed_json"
            reason = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
            message = f"request body is not valid JSON ({reason or 'decode error'})"
        else:
            status, code = 422, "invalid_request"
            message = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in details[:5])
        return JSONResponse({"error": {"type": "RequestValidationError", "code": code, "message": message,
                                       "details": details}}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return JSONResponse(PayloadTooLargeError(str(exc.detail)).to_dict(), status_code=413)
        return JSONResponse({"error": {"type": "HTTPException", "code": f"http_{exc.status_code}",
                                       "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": {"type": "InternalError", "code": "internal_error",
                                       "message": f"internal error ({type(exc).__name__}); see the service log"}},
                            status_code=500)

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
    async def _await(resp, stage: str):
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(resp, timeout=limits.timeout_s)
        except TimeoutError:
            _cancel(resp)
            raise StageTimeoutError(f"the {stage} stage did not answer within {limits.timeout_s:.0f} s; "
                                    "retry, or send fewer passages") from None
        except RagpressError:
            raise
        except Exception as exc:  # replica died, backpressure, actor errors: retryable 503
            log.warning("%s stage failed: %r", stage, exc)
            raise StageUnavailableError(f"the {stage} stage is unavailable ({type(exc).__name__}); retry") from None
        metrics.latency.labels(stage).observe(time.perf_counter() - t0)
        if isinstance(out, dict) and out.get("error"):
            raise StageError(out["error"], out["status"])
        return out

    def _handle(method: str | None):
        name = method or service.default_method
        if name not in service.compressors:
            raise UnknownCompressorError(name, sorted(service.compressors))
        return name, service.compressors[name]

    def _compress_response(out: dict[str, Any], t0: float) -> CompressResponse:
        r = out["result"]
        metrics.observe_compression(r.compressor, r.tokens_before, r.tokens_after, r.cache_hits > 0,
                                    out.get("cache_degraded", False))
        for k in ("cache_read", "compress"):
            if k in r.timings:
                metrics.latency.labels(k).observe(r.timings[k])
        return CompressResponse.from_result(r, out.get("cache_degraded", False),
                                            {"total": time.perf_counter() - t0})

    def _retriever():
        if service.retriever is None:
            raise StageUnavailableError("this service has no retriever configured (retriever: null)")
        return service.retriever

    # ------------------------------------------------------------------ routes
    @app.get("/healthz", response_model=HealthResponse, tags=["ops"])
    async def healthz() -> HealthResponse:
        """Liveness: the ingress answers."""
        return HealthResponse(status="ok")

    @app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}, tags=["ops"])
    async def readyz():
        """Readiness: every stage loaded its models; ``degraded`` when the cache is unreachable
        (requests are still served, uncached)."""
        stages = {"retriever": service.retriever} if service.retriever is not None else {}
        stages.update({f"compressor:{m}": h for m, h in service.compressors.items()})
        names = list(stages)
        results = await asyncio.gather(
            *(asyncio.wait_for(stages[n].health.remote(), limits.health_timeout_s) for n in names),
            return_exceptions=True)
        report, status = {}, "ready"
        for n, r in zip(names, results):
            if isinstance(r, BaseException):
                report[n] = {"loaded": False, "error": f"{type(r).__name__}: {r}"}
                status = "not_ready"
                continue
            report[n] = r
            if not r.get("loaded"):
                status = "not_ready"
            elif r.get("cache", {}).get("degraded") and status == "ready":
                status = "degraded"
        body = ReadyResponse(status=status, stages=report)
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
        """Compress passages (or a code file) for a query (or instruction) to a budget."""
        t0 = time.perf_counter()
        _, handle = _handle(body.method)
        out = await _await(handle.compress.remote(body.to_core()), "compress")
        return _compress_response(out, t0)

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=_ERROR_RESPONSES, tags=["retrieval"])
    async def retrieve(body: RetrieveRequestBody) -> RetrieveResponse:
        """Top-k passages from the service's index."""
        t0 = time.perf_counter()
        hits = await _await(_retriever().search.remote((body.query, body.k)), "retrieve")
        return RetrieveResponse(query=body.query, hits=_hits_out(hits), timings={"total": time.perf_counter() - t0})

    @app.post("/v1/answer", response_model=AnswerResponse, responses=_ERROR_RESPONSES, tags=["compression"])
    async def answer(body: AnswerRequestBody) -> AnswerResponse:
        """Retrieve -> compress. ``answer`` is null (no reader stage yet): give ``context.text``
        to your LLM."""
        t0 = time.perf_counter()
        _, handle = _handle(body.method)
        budget = body.budget.to_core() if body.budget else None
        hits_resp = _retriever().search.remote((body.query, body.k))
        # the retriever's response goes straight to the compressor: no await in between
        out = await _await(handle.compress_retrieved.remote(body.query, hits_resp, budget), "answer")
        hits = await _await(hits_resp, "retrieve")
        context = _compress_response(out, t0)
        return AnswerResponse(query=body.query, answer=None, hits=_hits_out(hits), context=context,
                              tokens_saved=context.tokens_saved, timings={"total": time.perf_counter() - t0})

    mount_playground(app)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    return app


def _cancel(resp) -> None:
    try:
        resp.cancel()
    except Exception:  # already finished or not cancellable
        pass
