"""LangChain components: any ragpress compressor as a document compressor, and a retriever that
searches a ragpress index and compresses what it found; in process, or against a running
ragpress service.

In process (the default) both call the same library code as the CLI and the service
(``create_compressor`` / ``Compressor.compress_batch``, ``VectorIndex.search``) with the same
budgets and typed errors (:mod:`ragpress.core.errors`). With ``endpoint="http://host:port"`` they
call the service over HTTP instead (:mod:`ragpress.client`: ``POST /v1/compress`` and
``/v1/retrieve``) and load no model; the service's errors come back as the same typed
exceptions (``UnknownCompressorError``, ``BudgetError``, ...), an unreachable service as a
``ServiceUnavailableError`` and a slow one as a ``ServiceTimeoutError``.

>>> from langchain_core.documents import Document
>>> from ragpress.integrations.langchain import RagpressCompressor
>>> comp = RagpressCompressor(method="exit", ratio=0.3)                         # doctest: +SKIP
>>> docs = comp.compress_documents([Document(page_content=text)], "Who wrote it?")  # doctest: +SKIP
>>> remote = RagpressCompressor(endpoint="http://127.0.0.1:8000", ratio=0.3)    # doctest: +SKIP
>>> docs = await remote.acompress_documents(docs, "Who wrote it?")             # doctest: +SKIP

Plugged into LangChain's own ``ContextualCompressionRetriever`` it compresses any retriever's
output; :class:`RagpressRetriever` does retrieval and compression with ragpress alone::

    retriever = RagpressRetriever.from_index_path("index/", method="exit", ratio=0.3, top_k=5)
    docs = retriever.invoke("How do I safely create a temporary file?", top_k=3)

Async: ``acompress_documents`` / ``ainvoke`` are native. Remotely they are plain
``httpx.AsyncClient`` calls (one client per event loop). In process the blocking model call runs
on the component's own bounded thread pool (``workers`` threads, default 1), never on the event
loop; concurrent async calls of one event loop that arrive within ``batch_wait_ms`` (or while a
batch is running) are gathered into one ``compress_batch`` call of at most ``max_batch_size``
requests (and the retriever's searches into one ``VectorIndex.search``), so N concurrent
``ainvoke`` calls cost a few batched model passes, not N.

Output documents of :class:`RagpressCompressor` (one request over all the documents, so the
budget is shared: documents compete for it): extractive methods (``exit``, ``cprs``,
``tcra-semantic``, ``longcodezip``, the ``embed-*`` / ``truncate`` baselines, ...) return one
document per input document that kept something, holding its kept spans in source order (joined
with a space; code as it is, with a comment marker line where code was dropped), its ``id`` and
its own metadata. Abstractive methods (``tcra-summary``, ``tcra``), whose output does not map
back to sources, return one document with the whole compressed context (with a single input
document: that document's id and metadata). Every output document gains
``metadata["ragpress"]``: ``compressor``, ``ratio`` reached, ``tokens_before`` and
``tokens_after`` (of the request), ``budget``, ``model_id``, ``config_hash``, ``cache_hit``, and
``spans`` (``start``, ``end``, ``score`` of each kept span in the document's ``page_content``;
``sources``, the input documents' ids, on an abstractive output).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
        Callbacks,
    )
    from langchain_core.documents import Document
    from langchain_core.documents.compressor import BaseDocumentCompressor
    from langchain_core.retrievers import BaseRetriever
except ImportError as exc:  # pragma: no cover - langchain-core is a dependency of ragpress
    raise ImportError("the LangChain components need langchain-core: pip install 'langchain-core>=0.3'") from exc

from ragpress.core.errors import ConfigError, EmptyQueryError, InvalidRequestError
from ragpress.core.registry import create_compressor, get_compressor_class
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Span

__all__ = ["RagpressCompressor", "RagpressRetriever", "documents_to_passages", "result_to_documents"]

DEFAULT_METHOD = "exit"  # in process, when no method is named (remotely: the service's default)


def documents_to_passages(documents: Sequence[Document]) -> list[Passage]:
    """ragpress passages for LangChain documents (ids ``d0``, ``d1``, ... by position; the title
    from ``metadata["title"]``; the metadata travels along, so ``metadata["language"]`` reaches
    the code compressors)."""
    passages = []
    for i, d in enumerate(documents):
        if not isinstance(d, Document):
            raise TypeError(f"document {i} is a {type(d).__name__}, not a langchain_core Document")
        title = d.metadata.get("title")
        passages.append(Passage(id=f"d{i}", text=d.page_content, title=str(title) if title else None,
                                metadata=dict(d.metadata)))
    return passages


def _figures(result: CompressionResult) -> dict[str, Any]:
    return {"compressor": result.compressor, "ratio": result.ratio, "tokens_before": result.tokens_before,
            "tokens_after": result.tokens_after, "budget": result.budget.model_dump(exclude_none=True)
            if result.budget else None, "model_id": result.model_id, "config_hash": result.config_hash,
            "cache_hit": result.cache_hits > 0}


def result_to_documents(result: CompressionResult, documents: Sequence[Document],
                        passages: Sequence[Passage]) -> list[Document]:
    """Documents for a compression ``result`` of ``documents`` (sent as ``passages``, in the same
    order; see the module docstring)."""
    figures = _figures(result)
    if not result.spans:
        if not result.text.strip():
            return []
        if len(documents) == 1:
            src = documents[0]
            return [Document(page_content=result.text, id=src.id,
                             metadata={**src.metadata, "ragpress": {**figures, "sources": [src.id]}})]
        return [Document(page_content=result.text,
                         metadata={"ragpress": {**figures, "sources": [d.id for d in documents]}})]
    is_code = bool(getattr(get_compressor_class(result.compressor), "handles_code", False))
    position = {p.id: i for i, p in enumerate(passages)}
    by_doc: dict[int, list[Span]] = {}
    for s in result.spans:
        by_doc.setdefault(position[s.passage_id], []).append(s)
    out = []
    for i in sorted(by_doc):
        spans = sorted(by_doc[i], key=lambda s: s.start)
        text = _join_spans(spans, passages[i], is_code)
        if text.strip():
            src = documents[i]
            kept = [{"start": s.start, "end": s.end, "score": s.score} for s in spans]
            out.append(Document(page_content=text, id=src.id,
                                metadata={**src.metadata, "ragpress": {**figures, "spans": kept}}))
    return out


def _join_spans(spans: list[Span], passage: Passage, is_code: bool) -> str:
    """Kept spans of one passage in source order: text spans joined by a space; code spans joined
    as they are, with a comment marker line (``# ...`` / ``// ...``) wherever code was dropped."""
    if not is_code:
        return " ".join(s.text.strip() for s in spans)
    from ragpress.compressors.code_chunking import comment_marker, guess_language

    marker = comment_marker(passage.metadata.get("language") or guess_language(passage.text))
    parts, cursor = [], 0
    for s in spans:
        gap = passage.text[cursor:s.start]
        if gap.strip():
            line = next(ln for ln in gap.split("\n") if ln.strip())
            parts.append(f"{line[: len(line) - len(line.lstrip())]}{marker} ...\n")
        parts.append(s.text)
        cursor = s.end
    if passage.text[cursor:].strip():
        parts.append(f"{marker} ...\n")
    return "".join(parts).rstrip("\n")


def _for_this_loop(slot: tuple | None, make: Callable[[], Any]) -> tuple[tuple, Any]:
    """(new slot, object) for the running event loop: the slot's object when it was made in this
    loop, else a fresh one (an asyncio object or an httpx.AsyncClient belongs to one loop). One
    slot, not one per loop: a finished ``asyncio.run`` loop is not kept alive by its objects."""
    loop = asyncio.get_running_loop()
    if slot is not None and slot[0]() is loop:
        return slot, slot[1]
    obj = make()
    return (weakref.ref(loop), obj), obj


class _MicroBatcher:
    """Concurrent async calls of ONE event loop gathered into batched calls ``run(items) ->
    results`` (``compress_batch``, ``VectorIndex.search``), each run on a bounded executor. A
    batch starts when ``max_batch`` items wait, after ``wait_s``, or when a running batch ends;
    at most ``workers`` batches run at once. A batch that fails is retried item by item, so one
    bad item fails only its own caller."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], executor: ThreadPoolExecutor, workers: int,
                 max_batch: int, wait_s: float):
        self.run, self.executor, self.workers, self.max_batch, self.wait_s = run, executor, workers, max_batch, wait_s
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    def submit(self, item: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._flush)
        return fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending and self._running < self.workers:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            live = [(r, f) for r, f in batch if not f.done()]  # a cancelled caller needs no result
            if not live:
                return
            try:
                outcomes: list[Any] = await loop.run_in_executor(self.executor, self.run, [r for r, _ in live])
            except Exception as exc:
                if len(live) == 1:
                    outcomes = [exc]
                else:
                    outcomes = []
                    for r, _ in live:
                        try:
                            outcomes.extend(await loop.run_in_executor(self.executor, self.run, [r]))
                        except Exception as one:
                            outcomes.append(one)
            for (_, f), out in zip(live, outcomes):
                if not f.done():
                    f.set_exception(out) if isinstance(out, BaseException) else f.set_result(out)
        finally:
            self._running -= 1
            if self._pending:
                self._flush()


class RagpressCompressor(BaseDocumentCompressor):
    """A ragpress compressor as a LangChain ``BaseDocumentCompressor``.

    ``method`` is any registered name (``ragpress methods`` lists them; None: ``exit`` in
    process, the service's default remotely), ``config`` its settings; the budget is one of
    ``ratio``, ``tokens`` or ``threshold`` (none: the method's default), shared by all the
    documents of one call. ``cache_url`` (``redis://...`` or ``memory``) puts results and
    query-independent work (embeddings, summaries, line perplexities) in a segment cache, as the
    service does. Bad names, settings or budgets raise ragpress's typed errors when the component
    is built (remotely: an unknown method at the first call).

    ``endpoint="http://host:port"`` sends the work to a running ragpress service instead
    (``api_key``, default ``$RAGPRESS_API_KEY``, as ``Authorization: Bearer``; ``timeout`` in
    seconds per request); ``config`` and ``cache_url`` are the service's business there.

    ``workers`` bounds the threads doing the blocking work for async calls (in process: model
    batches, default 1; remotely: concurrent requests of one sync retriever call, default 8);
    ``max_batch_size`` and ``batch_wait_ms`` shape how concurrent async calls are batched (see
    the module docstring).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    method: str | None = Field(None, description="registered compressor name (None: exit / the service's default)")
    config: dict[str, Any] = Field(default_factory=dict, description="the compressor's settings (in process)")
    ratio: float | None = None
    tokens: int | None = None
    threshold: float | None = None
    cache_url: str | None = Field(None, description="segment cache: 'redis://host:port/db' or 'memory'")
    endpoint: str | None = Field(None, description="URL of a ragpress service; None: in process")
    api_key: SecretStr | None = Field(None, description="sent as Authorization: Bearer (remote)")
    timeout: float = Field(60.0, gt=0, description="seconds per HTTP request (remote)")
    workers: int | None = Field(None, ge=1, description="threads for blocking work (default 1; remote 8)")
    max_batch_size: int = Field(32, ge=1, description="most requests per batched in-process call")
    batch_wait_ms: float = Field(2.0, ge=0, description="how long an async call waits for companions")

    _compressor: Any = PrivateAttr(default=None)
    _client: Any = PrivateAttr(default=None)
    _aclient: Any = PrivateAttr(default=None)  # (weakref to its event loop, AsyncRagpressClient)
    _batcher: Any = PrivateAttr(default=None)  # (weakref to its event loop, _MicroBatcher)
    _executor: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _build(self) -> RagpressCompressor:
        self.budget  # noqa: B018 - validates the budget now (BudgetError), not at the first call
        self._executor = ThreadPoolExecutor(max_workers=self.n_workers, thread_name_prefix="ragpress-lc")
        if self.endpoint is not None:
            if self.config or self.cache_url:
                raise ConfigError("config= and cache_url= apply in process only; a remote ragpress service "
                                  "(endpoint=) uses its own configuration")
            from ragpress.client import RagpressClient

            self._client = RagpressClient(self.endpoint, self._key, self.timeout)
            return self
        if getattr(get_compressor_class(self.method or DEFAULT_METHOD), "soft_tokens", False):
            raise ConfigError(f"{self.method!r} makes soft tokens for a reader's input embeddings, not text: "
                              "a LangChain Document carries text. Use it through ragpress's reader "
                              "(RagPipeline, `ragpress answer`) or pick a text method")
        compressor = create_compressor(self.method or DEFAULT_METHOD, self.config or None)
        if self.cache_url:
            from ragpress.core.cache import CachedCompressor, make_cache

            self._compressor = CachedCompressor(compressor, make_cache(self.cache_url))
        else:
            self._compressor = compressor
        return self

    @property
    def _key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    @property
    def n_workers(self) -> int:
        return self.workers or (8 if self.endpoint is not None else 1)

    @property
    def remote(self) -> bool:
        return self.endpoint is not None

    @property
    def budget(self) -> Budget | None:
        given = {k: v for k, v in (("ratio", self.ratio), ("tokens", self.tokens), ("threshold", self.threshold))
                 if v is not None}
        return Budget(**given) if given else None

    @property
    def compressor(self):
        """The in-process ragpress compressor (or its cached wrapper); None in remote mode."""
        return self._compressor

    # ------------------------------------------------------------------ one request per call
    def compress(self, documents: Sequence[Document], query: str) -> CompressionResult:
        """The full ragpress result for ``documents`` under ``query`` (text, spans, figures)."""
        return self._run([self._request(documents_to_passages(documents), query)])[0]

    async def acompress(self, documents: Sequence[Document], query: str) -> CompressionResult:
        """Async :meth:`compress`."""
        return (await self._arun([self._request(documents_to_passages(documents), query)]))[0]

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Compressed documents for ``query`` (an empty list in, an empty list out)."""
        documents = list(documents)
        if not documents:
            return []
        passages = documents_to_passages(documents)
        return result_to_documents(self._run([self._request(passages, query)])[0], documents, passages)

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Async :meth:`compress_documents`: an ``httpx.AsyncClient`` call remotely, a batched
        call on the bounded thread pool in process."""
        documents = list(documents)
        if not documents:
            return []
        passages = documents_to_passages(documents)
        return result_to_documents((await self._arun([self._request(passages, query)]))[0], documents, passages)

    # ------------------------------------------------------------------ the work
    def _request(self, passages: list[Passage], query: str) -> CompressionRequest:
        request = CompressionRequest(query=query, passages=passages, budget=self.budget)
        if self._compressor is not None:  # typed errors now, before a batch is formed
            getattr(self._compressor, "compressor", self._compressor).validate(request)
        return request

    def _run(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        """Results for ``requests`` (one batched call in process; remotely one HTTP request each,
        up to ``workers`` at once)."""
        if self._client is None:
            return self._compressor.compress_batch(requests)
        if len(requests) == 1:
            return [self._remote(requests[0])]
        return list(self._executor.map(self._remote, requests))

    def _remote(self, r: CompressionRequest) -> CompressionResult:
        return self._client.compress(r.query, r.passages, r.budget, method=self.method, protect=r.protect)

    async def _arun(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        if self._client is None:
            self._batcher, batcher = _for_this_loop(self._batcher, lambda: _MicroBatcher(
                self._compressor.compress_batch, self._executor, self.n_workers, self.max_batch_size,
                self.batch_wait_ms / 1000))
            return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))
        from ragpress.client import AsyncRagpressClient

        self._aclient, client = _for_this_loop(
            self._aclient, lambda: AsyncRagpressClient(self.endpoint, self._key, self.timeout))
        return list(await asyncio.gather(*(client.compress(r.query, r.passages, r.budget, method=self.method,
                                                           protect=r.protect) for r in requests)))


class RagpressRetriever(BaseRetriever):
    """Search a ragpress index (``index=``, in process) or a ragpress service's index
    (``endpoint=``), and compress each of the ``top_k`` hits for the query.

    What ``top_k`` (the LangChain ``k``) means: the number of documents retrieved AND returned.
    ``invoke(query)`` returns exactly ``min(top_k, index size)`` documents, in rank order;
    ``invoke(query, top_k=n)`` overrides it for one call. Each retrieved document is compressed
    on its own to the budget (a ``ratio`` is the share of each document kept; ``tokens`` a
    per-document target), in one batched call (remotely: one ``/v1/compress`` request per
    document, sent concurrently, which the service batches), so every document comes back with its
    kept text:
    the extractive methods always keep at least a document's best unit, cut to fit the budget.
    (Only a budget too small for even that, e.g. ``tokens`` below a title, leaves a document's
    ``page_content`` empty, with ``metadata["ragpress"]["empty_reason"]`` saying why.) For one
    budget shared across documents, where documents compete and some may be dropped, put a
    :class:`RagpressCompressor` in a ``ContextualCompressionRetriever`` instead.

    Each document keeps the hit's metadata (plus ``title``, ``score``, ``rank``) and gains
    ``metadata["ragpress"]`` with its own figures (see the module docstring).

    ``compressor`` is a :class:`RagpressCompressor` (default: in process ``exit`` with its
    default budget, or the service's default method when ``endpoint`` is given); it may be
    remote while the index is local, or the reverse.

    >>> r = RagpressRetriever.from_index_path("index/", method="exit", ratio=0.3)   # doctest: +SKIP
    >>> r.invoke("How do I safely create a temporary file?", top_k=3)               # doctest: +SKIP
    >>> r = RagpressRetriever(endpoint="http://127.0.0.1:8000", top_k=4)            # doctest: +SKIP
    >>> await r.ainvoke("How do I safely create a temporary file?")                 # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any = Field(None, description="a ragpress.indexes.VectorIndex (in process)")
    endpoint: str | None = Field(None, description="URL of a ragpress service whose index to search")
    api_key: SecretStr | None = Field(None, description="sent as Authorization: Bearer (remote)")
    timeout: float = Field(60.0, gt=0, description="seconds per HTTP request (remote)")
    compressor: RagpressCompressor | None = None
    top_k: int = Field(5, ge=1, description="documents retrieved and returned")

    _client: Any = PrivateAttr(default=None)
    _aclient: Any = PrivateAttr(default=None)  # (weakref to its event loop, AsyncRagpressClient)
    _searcher: Any = PrivateAttr(default=None)  # (weakref to its event loop, _MicroBatcher of searches)

    @model_validator(mode="after")
    def _check(self) -> RagpressRetriever:
        if (self.index is None) == (self.endpoint is None):
            raise ConfigError("give exactly one of index= (a ragpress VectorIndex, in process) or endpoint= "
                              "(the URL of a ragpress service)")
        if self.endpoint is not None:
            from ragpress.client import RagpressClient

            key = self.api_key.get_secret_value() if self.api_key is not None else None
            self._client = RagpressClient(self.endpoint, key, self.timeout)
            if self.compressor is None:
                self.compressor = RagpressCompressor(endpoint=self.endpoint, api_key=self.api_key,
                                                     timeout=self.timeout)
        elif self.compressor is None:
            self.compressor = RagpressCompressor()
        return self

    @classmethod
    def from_index_path(cls, path: str, top_k: int = 5, **compressor: Any) -> RagpressRetriever:
        """A retriever over the index saved at ``path``; ``compressor`` keywords go to
        :class:`RagpressCompressor` (``method``, ``config``, ``ratio``, ...)."""
        from ragpress.indexes import VectorIndex

        return cls(index=VectorIndex.load(path), compressor=RagpressCompressor(**compressor), top_k=top_k)

    # ------------------------------------------------------------------ LangChain hooks
    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                top_k: int | None = None) -> list[Document]:
        k = self._k(query, top_k)
        if self._client is not None:
            found = self._documents(self._client.retrieve(query, k))
        else:
            found = self._documents(self.index.search(query, k=k)[0])
        return self._compressed(found, self.compressor._run(self._requests(found, query)))

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       top_k: int | None = None) -> list[Document]:
        k = self._k(query, top_k)
        if self._client is not None:
            from ragpress.client import AsyncRagpressClient

            self._aclient, client = _for_this_loop(
                self._aclient, lambda: AsyncRagpressClient(self._client.endpoint, self._client_key(), self.timeout))
            hits = await client.retrieve(query, k)
        else:  # the query embedding is a model call: batched with concurrent calls' on the bounded pool
            c = self.compressor
            self._searcher, searcher = _for_this_loop(self._searcher, lambda: _MicroBatcher(
                self._search_many, c._executor, c.n_workers, 64, c.batch_wait_ms / 1000))
            hits = await searcher.submit((query, k))
        found = self._documents(hits)
        return self._compressed(found, await self.compressor._arun(self._requests(found, query)))

    # ------------------------------------------------------------------ helpers
    def _client_key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    def _k(self, query: str, top_k: int | None) -> int:
        if not isinstance(query, str) or not query.strip():
            raise EmptyQueryError("give a non-empty question")
        k = self.top_k if top_k is None else top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidRequestError(f"top_k must be an integer >= 1, got {top_k!r}")
        return k

    def _search_many(self, items: list[tuple[str, int]]) -> list[list]:
        """Hits for (query, k) pairs: one batched embedding and one FAISS call at the largest k."""
        found = self.index.search([q for q, _ in items], k=max(k for _, k in items))
        return [hits[:k] for hits, (_, k) in zip(found, items)]

    @staticmethod
    def _documents(hits) -> list[tuple[Document, Passage]]:
        """(document, passage) per hit: a library ``SearchHit`` or the service's ``HitOut``."""
        out = []
        for h in hits:
            p = h.passage if hasattr(h, "passage") else Passage(id=h.id, title=h.title, text=h.text)
            meta = {**p.metadata, "title": p.title, "score": h.score, "rank": h.rank}
            out.append((Document(page_content=p.text, id=p.id, metadata=meta), p))
        return out

    def _requests(self, found: list[tuple[Document, Passage]], query: str) -> list[CompressionRequest]:
        return [self.compressor._request([p], query) for _, p in found]

    @staticmethod
    def _compressed(found: list[tuple[Document, Passage]], results: list[CompressionResult]) -> list[Document]:
        out = []
        for (doc, p), result in zip(found, results):
            docs = result_to_documents(result, [doc], [p])
            if not docs:  # nothing fitted the budget: the document stays, empty, saying why
                docs = [Document(page_content="", id=doc.id, metadata={**doc.metadata, "ragpress": {
                    **_figures(result), "spans": [],
                    "empty_reason": result.extra.get("empty_reason", "the compressor kept nothing")}})]
            out.extend(docs)
        return out
