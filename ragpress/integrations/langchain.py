"""LangChain components: any ragpress compressor as a document compressor, and a retriever that
searches a ragpress FAISS index and compresses what it found.

Both call the same library code as the CLI and the service (``create_compressor`` /
``Compressor.compress``, :class:`~ragpress.pipelines.rag.RagPipeline`), with the same budgets
and typed errors (:mod:`ragpress.core.errors`).

>>> from langchain_core.documents import Document
>>> from ragpress.integrations.langchain import RagpressCompressor
>>> comp = RagpressCompressor(method="exit", ratio=0.3)                         # doctest: +SKIP
>>> docs = comp.compress_documents([Document(page_content=text)], "Who wrote it?")  # doctest: +SKIP

Plugged into LangChain's own ``ContextualCompressionRetriever`` it compresses any retriever's
output; :class:`RagpressRetriever` does retrieval and compression with ragpress alone::

    retriever = RagpressRetriever.from_index_path("index/", method="exit", ratio=0.3, top_k=5)
    docs = retriever.invoke("How do I safely create a temporary file?")

Output documents: extractive methods (``exit``, ``cprs``, ``tcra-semantic``, ``longcodezip``,
the ``embed-*`` / ``truncate`` baselines, ...) return one document per input document that kept
something, holding its kept spans in source order (joined with a space; code as it is, with a
comment marker line where code was dropped) and the input document's metadata. Abstractive methods
(``tcra-summary``, ``tcra``), whose output does not map back to sources, return one document
with the whole compressed context. Every output document's ``metadata["ragpress"]`` holds the
request's figures: compressor, ratio reached, tokens before and after, model id (and, on an
abstractive output, ``sources``: the input documents' ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun, Callbacks
    from langchain_core.documents import Document
    from langchain_core.documents.compressor import BaseDocumentCompressor
    from langchain_core.retrievers import BaseRetriever
except ImportError as exc:  # pragma: no cover - langchain-core is a dependency of ragpress
    raise ImportError("the LangChain components need langchain-core: pip install 'langchain-core>=0.3'") from exc

from ragpress.core.compressor import Compressor
from ragpress.core.registry import create_compressor, get_compressor_class
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Span

__all__ = ["RagpressCompressor", "RagpressRetriever", "documents_to_passages", "result_to_documents"]


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


def result_to_documents(result: CompressionResult, documents: Sequence[Document],
                        passages: Sequence[Passage]) -> list[Document]:
    """Documents for a compression ``result`` of ``documents`` (sent as ``passages``, in the same
    order; see the module docstring)."""
    figures = {"compressor": result.compressor, "ratio": result.ratio, "tokens_before": result.tokens_before,
               "tokens_after": result.tokens_after, "model_id": result.model_id}
    if not result.spans:
        if not result.text.strip():
            return []
        return [Document(page_content=result.text,
                         metadata={"ragpress": {**figures, "sources": [d.id for d in documents]}})]
    is_code = bool(getattr(get_compressor_class(result.compressor), "handles_code", False))
    position = {p.id: i for i, p in enumerate(passages)}
    by_doc: dict[int, list[Span]] = {}
    for s in result.spans:
        by_doc.setdefault(position[s.passage_id], []).append(s)
    out = []
    for i in sorted(by_doc):
        text = _join_spans(sorted(by_doc[i], key=lambda s: s.start), passages[i], is_code)
        if text.strip():
            src = documents[i]
            out.append(Document(page_content=text, id=src.id, metadata={**src.metadata, "ragpress": figures}))
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


class RagpressCompressor(BaseDocumentCompressor):
    """A ragpress compressor as a LangChain ``BaseDocumentCompressor``.

    ``method`` is any registered name (``ragpress methods`` lists them), ``config`` its settings;
    the budget is one of ``ratio``, ``tokens`` or ``threshold`` (none: the method's default).
    ``cache_url`` (``redis://...`` or ``memory``) puts results and query-independent work
    (embeddings, summaries, line perplexities) in a segment cache, as the service does.
    Bad names, settings or budgets raise ragpress's typed errors when the component is built.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    method: str = Field("exit", description="registered compressor name")
    config: dict[str, Any] = Field(default_factory=dict, description="the compressor's settings")
    ratio: float | None = None
    tokens: int | None = None
    threshold: float | None = None
    cache_url: str | None = Field(None, description="segment cache: 'redis://host:port/db' or 'memory'")

    _compressor: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _build(self) -> RagpressCompressor:
        self.budget  # noqa: B018 - validates the budget now (BudgetError), not at the first call
        compressor: Compressor = create_compressor(self.method, self.config or None)
        if self.cache_url:
            from ragpress.core.cache import CachedCompressor, make_cache

            self._compressor = CachedCompressor(compressor, make_cache(self.cache_url))
        else:
            self._compressor = compressor
        return self

    @property
    def budget(self) -> Budget | None:
        given = {k: v for k, v in (("ratio", self.ratio), ("tokens", self.tokens), ("threshold", self.threshold))
                 if v is not None}
        return Budget(**given) if given else None

    @property
    def compressor(self):
        """The ragpress compressor (or its cached wrapper) doing the work."""
        return self._compressor

    def compress(self, documents: Sequence[Document], query: str) -> CompressionResult:
        """The full ragpress result for ``documents`` under ``query`` (text, spans, figures)."""
        return self._compress(documents_to_passages(documents), query)

    def _compress(self, passages: list[Passage], query: str) -> CompressionResult:
        return self._compressor.compress(CompressionRequest(query=query, passages=passages, budget=self.budget))

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """Compressed documents for ``query`` (an empty list in, an empty list out)."""
        documents = list(documents)
        if not documents:
            return []
        passages = documents_to_passages(documents)
        return result_to_documents(self._compress(passages, query), documents, passages)


class RagpressRetriever(BaseRetriever):
    """Search a ragpress FAISS index and compress the top ``top_k`` hits for the query
    (:class:`~ragpress.pipelines.rag.RagPipeline`, the same code as ``ragpress answer``).

    >>> r = RagpressRetriever.from_index_path("index/", method="exit", ratio=0.3)   # doctest: +SKIP
    >>> r.invoke("How do I safely create a temporary file?")                        # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any = Field(description="a ragpress.indexes.VectorIndex")
    compressor: RagpressCompressor = Field(default_factory=RagpressCompressor)
    top_k: int = Field(5, ge=1)

    @classmethod
    def from_index_path(cls, path: str, top_k: int = 5, **compressor: Any) -> RagpressRetriever:
        """A retriever over the index saved at ``path``; ``compressor`` keywords go to
        :class:`RagpressCompressor` (``method``, ``config``, ``ratio``, ...)."""
        from ragpress.indexes import VectorIndex

        return cls(index=VectorIndex.load(path), compressor=RagpressCompressor(**compressor), top_k=top_k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        from ragpress.pipelines.rag import RagPipeline

        out = RagPipeline(self.index, self.compressor.compressor, top_k=self.top_k).run(query, self.compressor.budget)
        found = [Document(page_content=h.passage.text, id=h.passage.id,
                          metadata={**h.passage.metadata, "title": h.passage.title, "score": h.score})
                 for h in out.hits]
        return result_to_documents(out.compression, found, [h.passage for h in out.hits])
