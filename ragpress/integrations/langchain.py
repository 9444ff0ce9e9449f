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

The work is done by :class:`~ragpress.integrations.engine.CompressionEngine` and the documents are
converted by :mod:`ragpress.integrations.adapter`, the same two the LlamaIndex and Haystack
components use.

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

from collections.abc import Sequence
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
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage
from ragpress.integrations.adapter import Compressed, SourceDoc, empty, to_compressed
from ragpress.integrations.adapter import to_passages as _to_passages
from ragpress.integrations.engine import DEFAULT_METHOD, CompressionEngine, MicroBatcher, for_this_loop, make_budget

__all__ = ["DEFAULT_METHOD", "RagpressCompressor", "RagpressRetriever", "documents_to_passages",
           "result_to_documents"]


def _sources(documents: Sequence[Document]) -> list[SourceDoc]:
    out = []
    for i, d in enumerate(documents):
        if not isinstance(d, Document):
            raise TypeError(f"document {i} is a {type(d).__name__}, not a langchain_core Document")
        out.append(SourceDoc(d.page_content, d.id, d.metadata))
    return out


def documents_to_passages(documents: Sequence[Document]) -> list[Passage]:
    """ragpress passages for LangChain documents (ids ``d0``, ``d1``, ... by position; the title
    from ``metadata["title"]``; the metadata travels along, so ``metadata["language"]`` reaches
    the code compressors)."""
    return _to_passages(_sources(documents))


def _documents(pieces: Sequence[Compressed], documents: Sequence[Document]) -> list[Document]:
    out = []
    for c in pieces:
        if c.index is None:  # an abstractive text over several documents: no one document's id or metadata
            out.append(Document(page_content=c.text, metadata={"ragpress": c.ragpress}))
        else:
            src = documents[c.index]
            out.append(Document(page_content=c.text, id=src.id, metadata={**src.metadata, "ragpress": c.ragpress}))
    return out


def result_to_documents(result: CompressionResult, documents: Sequence[Document],
                        passages: Sequence[Passage]) -> list[Document]:
    """Documents for a compression ``result`` of ``documents`` (sent as ``passages``, in the same
    order; see the module docstring and :mod:`ragpress.integrations.adapter`)."""
    return _documents(to_compressed(result, _sources(documents), passages), documents)


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

    _engine: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _build(self) -> RagpressCompressor:
        self._engine = CompressionEngine(
            self.method, self.config, ratio=self.ratio, tokens=self.tokens, threshold=self.threshold,
            cache_url=self.cache_url, endpoint=self.endpoint, api_key=self._key, timeout=self.timeout,
            workers=self.workers, max_batch_size=self.max_batch_size, batch_wait_ms=self.batch_wait_ms,
            thread_name="ragpress-lc")
        return self

    @property
    def _key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    @property
    def engine(self) -> CompressionEngine:
        """What does the work (:class:`~ragpress.integrations.engine.CompressionEngine`)."""
        return self._engine

    @property
    def n_workers(self) -> int:
        return self._engine.n_workers

    @property
    def remote(self) -> bool:
        return self.endpoint is not None

    @property
    def budget(self) -> Budget | None:
        return make_budget(self.ratio, self.tokens, self.threshold)

    @property
    def compressor(self):
        """The in-process ragpress compressor (or its cached wrapper); None in remote mode."""
        return self._engine.compressor

    # ------------------------------------------------------------------ one request per call
    def compress(self, documents: Sequence[Document], query: str) -> CompressionResult:
        """The full ragpress result for ``documents`` under ``query`` (text, spans, figures)."""
        return self._engine.compress(_sources(documents), query)[0]

    async def acompress(self, documents: Sequence[Document], query: str) -> CompressionResult:
        """Async :meth:`compress`."""
        return (await self._engine.acompress(_sources(documents), query))[0]

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Compressed documents for ``query`` (an empty list in, an empty list out)."""
        documents = list(documents)
        return _documents(self._engine.compress_docs(_sources(documents), query), documents)

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Async :meth:`compress_documents`: an ``httpx.AsyncClient`` call remotely, a batched
        call on the bounded thread pool in process."""
        documents = list(documents)
        return _documents(await self._engine.acompress_docs(_sources(documents), query), documents)

    # ------------------------------------------------------------------ the work (the retriever's too)
    def _request(self, passages: list[Passage], query: str) -> CompressionRequest:
        return self._engine.request(passages, query)

    def _run(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        return self._engine.run(requests)

    async def _arun(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        return await self._engine.arun(requests)


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
    _searcher: Any = PrivateAttr(default=None)  # (weakref to its event loop, MicroBatcher of searches)

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

            self._aclient, client = for_this_loop(
                self._aclient, lambda: AsyncRagpressClient(self._client.endpoint, self._client_key(), self.timeout))
            hits = await client.retrieve(query, k)
        else:  # the query embedding is a model call: batched with concurrent calls' on the bounded pool
            c = self.compressor
            self._searcher, searcher = for_this_loop(self._searcher, lambda: MicroBatcher(
                self._search_many, c.engine.executor, c.n_workers, 64, c.engine.batch_wait_s))
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
            source = SourceDoc(p.text, doc.id, doc.metadata)
            # nothing fitted the budget: the document stays, empty, saying why
            pieces = to_compressed(result, [source], [p]) or [empty(result, 0)]
            out.extend(_documents(pieces, [doc]))
        return out
