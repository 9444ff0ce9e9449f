"""HTTP clients of a running ragpress service: :class:`RagpressClient` (sync) and
:class:`AsyncRagpressClient` (asyncio), both over ``httpx``.

They speak the REST schemas of :mod:`ragpress.services.protocol` (``POST /v1/compress``,
``/v1/retrieve``, ``/v1/answer``) and give back library types where there is one: ``compress``
returns a :class:`~ragpress.core.types.CompressionResult` (text, spans into the passages sent,
tokens before / after, figures), exactly what the in-process compressor returns, so callers such
as the LangChain components treat both alike. No model is loaded on the client side.

Errors are typed. The service answers every error as ``{"error": {"type", "code", "message"}}``
with a real status; the client raises the :mod:`ragpress.core.errors` class with that ``code``
(``EmptyQueryError``, ``BudgetError``, ``UnknownCompressorError`` with ``.available``,
``ContextTooLongError``, ...; a schema error is an ``InvalidRequestError``), else a
:class:`RemoteError` carrying ``status``, ``code`` and ``message``. 401/403 are an
:class:`AuthenticationError`, 429 a :class:`RateLimitedError` (``retry_after``), a 503 (stage unavailable) or a refused connection a
:class:`ServiceUnavailableError` (also a ``ConnectionError``), a 504 or a client-side timeout a
:class:`ServiceTimeoutError` (also a ``TimeoutError``).

>>> from ragpress.client import RagpressClient
>>> with RagpressClient("http://127.0.0.1:8000", api_key="...", timeout=10) as client:   # doctest: +SKIP
...     result = client.compress("Who founded Acme?", ["Acme was founded by Jane Roe.", "It rained."],
...                              ratio=0.5, method="embed-sentences")
...     print(result.text, result.ratio)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import httpx

from ragpress.core import errors as _errors
from ragpress.core.errors import RagpressError, UnknownCompressorError
from ragpress.core.types import Budget, CompressionResult, Passage, Protect, Span

__all__ = ["AsyncRagpressClient", "AuthenticationError", "RagpressClient", "RateLimitedError", "RemoteError",
           "ServiceTimeoutError", "ServiceUnavailableError", "decode_soft_tokens"]

API_KEY_ENV = "RAGPRESS_API_KEY"


class RemoteError(RagpressError):
    """The service answered with an error this client has no more specific class for (or not
    with ragpress's error JSON). ``status`` is the HTTP status (None: no answer at all)."""

    code = "remote_error"

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status = status
        if code:
            self.code = code
        self.body = body


class AuthenticationError(RemoteError):
    """401 / 403: the API key is missing, wrong, or not allowed this route."""

    code = "unauthorized"


class RateLimitedError(RemoteError):
    """429: the API key is over its rate; ``retry_after`` is the service's hint in seconds."""

    code = "rate_limited"

    def __init__(self, message: str, status: int | None = 429, code: str | None = None, body: dict | None = None,
                 retry_after: float | None = None):
        super().__init__(message, status, code, body)
        self.retry_after = retry_after


class ServiceUnavailableError(RemoteError, ConnectionError):
    """The service cannot be reached (connection refused, DNS, reset) or answered 503."""

    code = "service_unavailable"


class ServiceTimeoutError(RemoteError, TimeoutError):
    """No answer within the client's ``timeout``, or the service's own stage timeout (504)."""

    code = "timeout"


def _error_classes() -> dict[str, type[RagpressError]]:
    """``code`` -> the most general class of :mod:`ragpress.core.errors` declaring it."""
    table: dict[str, type[RagpressError]] = {}
    for obj in vars(_errors).values():
        if isinstance(obj, type) and issubclass(obj, RagpressError) and obj is not RagpressError:
            have = table.get(obj.code)
            if have is None or issubclass(have, obj):
                table[obj.code] = obj
    return table


_BY_CODE = _error_classes()


def error_from_response(status: int, body: Any, text: str = "", headers: Any = None) -> RagpressError:
    """The typed exception for an error answer (``body``: its parsed JSON, or None)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        code, message = str(err.get("code") or ""), err["message"]
    else:  # not ragpress's error JSON (a proxy page, an OpenAI-shaped error, ...)
        code, message = "", (text.strip()[:300] or f"HTTP {status}")
    if status in (401, 403):
        return AuthenticationError(message, status, code or None, body)
    if status == 429:
        try:
            retry_after = float((headers or {}).get("retry-after"))
        except (TypeError, ValueError):
            retry_after = None
        return RateLimitedError(message, status, code or None, body, retry_after)
    cls = _BY_CODE.get(code)
    if cls is not None:
        exc = cls.__new__(cls)
        RagpressError.__init__(exc, message)
        if issubclass(cls, (UnknownCompressorError, _errors.UnknownReaderError)):
            exc.available = list(err.get("available") or [])
        if issubclass(cls, _errors.UpstreamError):
            exc.upstream_status = err.get("upstream_status")
        return exc
    if status == 503:
        return ServiceUnavailableError(message, status, code or None, body)
    if status == 504:
        return ServiceTimeoutError(message, status, code or None, body)
    return RemoteError(f"{message} (HTTP {status})", status, code or None, body)


def _transport_error(exc: httpx.HTTPError, url: str, timeout: float) -> RemoteError:
    if isinstance(exc, httpx.TimeoutException):
        return ServiceTimeoutError(f"ragpress at {url} did not answer within {timeout:g} s "
                                   f"({type(exc).__name__}); raise timeout= or retry")
    return ServiceUnavailableError(f"cannot reach ragpress at {url} ({type(exc).__name__}: {exc}); "
                                   "is the service running (ragpress serve)?")


def _passage_json(p: Passage | str | dict) -> dict | str:
    if isinstance(p, Passage):
        return {k: v for k, v in (("id", p.id), ("title", p.title), ("text", p.text)) if v is not None}
    return p


def _budget_json(budget: Budget | None, ratio, tokens, threshold) -> dict | None:
    if budget is not None:
        return budget.model_dump(exclude_none=True)
    given = {k: v for k, v in (("ratio", ratio), ("tokens", tokens), ("threshold", threshold)) if v is not None}
    return given or None


def decode_soft_tokens(soft: Any, as_torch: bool = True) -> Any:
    """The vectors of a response's ``soft_tokens`` (a dict or
    :class:`~ragpress.services.protocol.SoftTokensOut`): a float16 torch tensor (the type the
    in-process compressor returns, which :func:`ragpress.readers.context_for` and the local reader
    take), or a numpy array with ``as_torch=False``; bit-exact. None when the payload was left out.

    >>> decode_soft_tokens({"data": "ADwAQA==", "shape": [1, 2], "dtype": "float16", "reader": "m"}, False)
    array([[1., 2.]], dtype=float16)
    """
    import base64

    import numpy as np

    from ragpress.services.protocol import SoftTokensOut

    soft = SoftTokensOut.model_validate(soft) if isinstance(soft, dict) else soft
    if soft.data is None:
        return None
    raw = base64.b64decode(soft.data, validate=True)
    n = int(np.prod(soft.shape))
    if len(raw) != 2 * n:
        raise RemoteError(f"soft tokens of shape {soft.shape} need {2 * n} bytes, the response holds {len(raw)}")
    arr = np.frombuffer(raw, dtype="<f2").reshape(soft.shape).astype(np.float16)  # native order, writable
    if not as_torch:
        return arr
    import torch

    return torch.from_numpy(arr)


def _result(data: dict) -> CompressionResult:
    """The library result for a ``CompressResponse`` JSON (soft tokens decoded to a float16
    tensor, with the reader they were made for in ``extra["soft_reader"]``, as in process)."""
    from ragpress.services.protocol import CompressResponse

    r = CompressResponse.model_validate(data)
    extra: dict[str, Any] = {"cache": r.cache.model_dump(), "remote": True}
    soft = None
    if r.soft_tokens is not None:
        soft = decode_soft_tokens(r.soft_tokens)
        extra.update(soft_dtype=r.soft_tokens.dtype, soft_reader=r.soft_tokens.reader,
                     pooling_factor=r.soft_tokens.pooling_factor, vector_spans=r.soft_tokens.vector_spans)
    return CompressionResult(
        text=r.text, spans=[Span(**s.model_dump()) for s in r.spans], tokens_before=r.tokens_before,
        tokens_after=r.tokens_after, compressor=r.method, config_hash=r.config_hash, model_id=r.model_id,
        tokenizer=r.tokenizer, budget=Budget(**r.budget) if r.budget else None, timings=r.timings,
        cache_hits=r.cache_hits, soft_token_shape=r.soft_token_shape, soft_tokens=soft, extra=extra)


class _Base:
    """Request building and answer parsing shared by the sync and async clients."""

    def __init__(self, endpoint: str, api_key: str | None = None, timeout: float = 60.0,
                 headers: dict[str, str] | None = None):
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise _errors.ConfigError(f"endpoint must be an http(s) URL of a ragpress service, not {endpoint!r}")
        if not timeout or timeout <= 0:
            raise _errors.ConfigError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.endpoint = endpoint.rstrip("/")
        self.timeout = float(timeout)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._headers = {"accept": "application/json", **(headers or {})}
        if key:
            self._headers["authorization"] = f"Bearer {key}"

    def _http_kwargs(self) -> dict[str, Any]:
        return {"base_url": self.endpoint, "timeout": httpx.Timeout(self.timeout), "headers": self._headers}

    def _check(self, resp: httpx.Response) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, body, resp.text, resp.headers)
        if body is None:
            raise RemoteError(f"ragpress answered {resp.request.url.path} with a non-JSON body", resp.status_code)
        return body

    @staticmethod
    def _compress_body(query: str, passages: Sequence[Passage | str | dict], budget, method, protect,
                       ratio, tokens, threshold, soft_tokens: str = "base64") -> dict:
        body: dict[str, Any] = {"query": query, "passages": [_passage_json(p) for p in passages]}
        if soft_tokens != "base64":
            body["soft_tokens"] = soft_tokens
        if (b := _budget_json(budget, ratio, tokens, threshold)) is not None:
            body["budget"] = b
        if method is not None:
            body["method"] = method
        if protect is not None:
            body["protect"] = protect.model_dump(exclude_none=True) if isinstance(protect, Protect) else protect
        return body

    @staticmethod
    def _answer_body(query, passages, k, budget, method, read, max_new_tokens) -> dict:
        body: dict[str, Any] = {"query": query, "k": k, "read": read}
        if passages is not None:
            body["passages"] = [_passage_json(p) for p in passages]
        if budget is not None:
            body["budget"] = budget.model_dump(exclude_none=True) if isinstance(budget, Budget) else budget
        if method is not None:
            body["method"] = method
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r}, timeout={self.timeout:g})"


class RagpressClient(_Base):
    """Blocking client of a ragpress service at ``endpoint`` (``http://host:port``).

    ``api_key`` (default: ``$RAGPRESS_API_KEY``) is sent as ``Authorization: Bearer <key>``;
    ``timeout`` bounds each request, in seconds. Thread-safe; close it (or use ``with``) to
    release its connections.
    """

    def __init__(self, endpoint: str, api_key: str | None = None, timeout: float = 60.0,
                 headers: dict[str, str] | None = None):
        super().__init__(endpoint, api_key, timeout, headers)
        self._http = httpx.Client(**self._http_kwargs())

    def _post(self, path: str, body: dict) -> Any:
        try:
            resp = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.endpoint + path, self.timeout) from exc
        return self._check(resp)

    def compress(self, query: str, passages: Sequence[Passage | str | dict], budget: Budget | None = None, *,
                 method: str | None = None, protect: Protect | dict | None = None, ratio: float | None = None,
                 tokens: int | None = None, threshold: float | None = None,
                 soft_tokens: str = "base64") -> CompressionResult:
        """``POST /v1/compress``: ``passages`` (strings, ``{id, title, text}`` or ``Passage``)
        compressed for ``query`` to ``budget`` (or one of ``ratio`` / ``tokens`` / ``threshold``;
        none: the method's default) with ``method`` (None: the service's default). A soft-token
        method (``arc``) fills ``result.soft_tokens`` (float16 tensor, bit-exact) and
        ``extra["soft_reader"]``; ``soft_tokens="shape"`` asks for the shape and spans only."""
        body = self._compress_body(query, passages, budget, method, protect, ratio, tokens, threshold, soft_tokens)
        return _result(self._post("/v1/compress", body))

    def retrieve(self, query: str, k: int = 5):
        """``POST /v1/retrieve``: the service index's top-``k`` passages, as
        :class:`~ragpress.services.protocol.HitOut` (id, title, text, score, rank)."""
        from ragpress.services.protocol import RetrieveResponse

        return RetrieveResponse.model_validate(self._post("/v1/retrieve", {"query": query, "k": k})).hits

    def answer(self, query: str, passages: Sequence[Passage | str | dict] | None = None, *, k: int = 5,
               budget: Budget | dict | None = None, method: str | None = None, read: bool = True,
               max_new_tokens: int | None = None):
        """``POST /v1/answer`` (not streamed): (retrieve ->) compress -> read, as an
        :class:`~ragpress.services.protocol.AnswerResponse`."""
        from ragpress.services.protocol import AnswerResponse

        body = self._answer_body(query, passages, k, budget, method, read, max_new_tokens)
        return AnswerResponse.model_validate(self._post("/v1/answer", body))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RagpressClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRagpressClient(_Base):
    """The asyncio twin of :class:`RagpressClient` (same methods, awaited). An instance belongs
    to the event loop it is first used in; ``async with`` or ``await aclose()`` releases it."""

    def __init__(self, endpoint: str, api_key: str | None = None, timeout: float = 60.0,
                 headers: dict[str, str] | None = None):
        super().__init__(endpoint, api_key, timeout, headers)
        self._http = httpx.AsyncClient(**self._http_kwargs())

    async def _post(self, path: str, body: dict) -> Any:
        try:
            resp = await self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.endpoint + path, self.timeout) from exc
        return self._check(resp)

    async def compress(self, query: str, passages: Sequence[Passage | str | dict], budget: Budget | None = None,
                       *, method: str | None = None, protect: Protect | dict | None = None,
                       ratio: float | None = None, tokens: int | None = None,
                       threshold: float | None = None, soft_tokens: str = "base64") -> CompressionResult:
        """See :meth:`RagpressClient.compress`."""
        body = self._compress_body(query, passages, budget, method, protect, ratio, tokens, threshold, soft_tokens)
        return _result(await self._post("/v1/compress", body))

    async def retrieve(self, query: str, k: int = 5):
        """See :meth:`RagpressClient.retrieve`."""
        from ragpress.services.protocol import RetrieveResponse

        return RetrieveResponse.model_validate(await self._post("/v1/retrieve", {"query": query, "k": k})).hits

    async def answer(self, query: str, passages: Sequence[Passage | str | dict] | None = None, *, k: int = 5,
                     budget: Budget | dict | None = None, method: str | None = None, read: bool = True,
                     max_new_tokens: int | None = None):
        """See :meth:`RagpressClient.answer`."""
        from ragpress.services.protocol import AnswerResponse

        body = self._answer_body(query, passages, k, budget, method, read, max_new_tokens)
        return AnswerResponse.model_validate(await self._post("/v1/answer", body))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRagpressClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
