"""Haystack component: any ragpress compressor as a pipeline component, in process or against a
running ragpress service (``pip install 'ragpress[haystack]'``).

:class:`RagpressDocumentCompressor` takes the ``documents`` a retriever found and the ``query``,
compresses them in one request (the budget is shared: documents compete for it) and outputs
``documents``: one per input document that kept something, in input order, with its ``id``,
``meta``, ``score`` and ``blob`` kept and its ``content`` replaced by what was kept (extractive
methods: its spans in source order, code with ``# ...`` markers where code was dropped; an
abstractive method, ``tcra-summary``, over several documents: one new document with the whole
compressed text and the best input score). Every output document gains ``meta["ragpress"]``
(compressor, ratio reached, tokens before / after, budget, model id, config hash, cache hit, and
the kept ``spans`` or the ``sources``); its embeddings, which described the full text, are
dropped. Documents without text content pass through unchanged. The conversion is
:mod:`ragpress.integrations.adapter`, the work
:class:`~ragpress.integrations.engine.CompressionEngine`: the same as the LangChain and LlamaIndex
components, with the same typed errors.

``run_async`` (what ``AsyncPipeline`` calls) is native: an ``httpx.AsyncClient`` call remotely, a
batched call on a bounded thread pool in process. ``warm_up`` loads the method's models (a
pipeline calls it before its first run). ``to_dict`` / ``from_dict`` carry the settings, so a
pipeline saved with ``Pipeline.dumps`` loads back with ``Pipeline.loads``; the API key is a
Haystack ``Secret`` (default: the environment variable ``RAGPRESS_API_KEY``), saved by name, never
by value.

>>> from ragpress.integrations.haystack import RagpressDocumentCompressor          # doctest: +SKIP
>>> pipe.add_component("compressor", RagpressDocumentCompressor(method="exit", ratio=0.3))  # doctest: +SKIP
>>> pipe.connect("retriever.documents", "compressor.documents")                   # doctest: +SKIP
>>> pipe.connect("compressor.documents", "prompt_builder.documents")              # doctest: +SKIP
"""

# no `from __future__ import annotations`: Haystack reads the socket types from run's annotations,
# and Haystack 2 does not resolve string annotations

from collections.abc import Sequence
from typing import Any

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("the Haystack component needs haystack-ai: pip install 'ragpress[haystack]'") from exc

from ragpress.client import API_KEY_ENV
from ragpress.integrations.adapter import Compressed, SourceDoc, arrange
from ragpress.integrations.engine import CompressionEngine

__all__ = ["RagpressDocumentCompressor"]

_KEY_FROM_ENV = Secret.from_env_var(API_KEY_ENV, strict=False)  # the default api_key: $RAGPRESS_API_KEY, if set


@component
class RagpressDocumentCompressor:
    """A ragpress compressor as a Haystack component: ``documents`` and ``query`` in,
    compressed ``documents`` out.

    ``method`` is any registered name (``ragpress methods``; None: ``exit`` in process, the
    service's default remotely), ``config`` its settings; the budget is one of ``ratio``,
    ``tokens`` or ``threshold`` (none: the method's default), shared by the documents of one run.
    ``cache_url`` (``redis://...`` or ``memory``) puts results and query-independent work in a
    segment cache. ``endpoint="http://host:port"`` sends the work to a running ragpress service
    (``api_key``, a ``Secret``; ``timeout`` seconds per request). ``workers``, ``max_batch_size``
    and ``batch_wait_ms`` shape the async batching (see :mod:`ragpress.integrations.engine`). Bad
    names, settings or budgets raise ragpress's typed errors when it is built (remotely: an unknown
    method at the first run).
    """

    def __init__(self, method: str | None = None, config: dict[str, Any] | None = None,
                 ratio: float | None = None, tokens: int | None = None, threshold: float | None = None,
                 cache_url: str | None = None, endpoint: str | None = None,
                 api_key: Secret | None = _KEY_FROM_ENV,
                 timeout: float = 60.0, workers: int | None = None, max_batch_size: int = 32,
                 batch_wait_ms: float = 2.0):
        self.method, self.config = method, dict(config or {})
        self.ratio, self.tokens, self.threshold = ratio, tokens, threshold
        self.cache_url, self.endpoint, self.api_key, self.timeout = cache_url, endpoint, api_key, timeout
        self.workers, self.max_batch_size, self.batch_wait_ms = workers, max_batch_size, batch_wait_ms
        self.engine = CompressionEngine(
            method, self.config, ratio=ratio, tokens=tokens, threshold=threshold, cache_url=cache_url,
            endpoint=endpoint, api_key=api_key.resolve_value() if api_key is not None else None, timeout=timeout,
            workers=workers, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
            thread_name="ragpress-haystack")

    @property
    def compressor(self):
        """The in-process ragpress compressor (or its cached wrapper); None in remote mode."""
        return self.engine.compressor

    def warm_up(self) -> None:
        """Load the method's models now (in process; nothing to load remotely)."""
        self.engine.warm_up()

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document], query: str = "") -> dict[str, list[Document]]:
        """Compress ``documents`` for ``query`` (query-blind methods need none)."""
        textual, sources = self._sources(documents)
        pieces = self.engine.compress_docs(sources, query) if sources else []
        return {"documents": self._merge(documents, textual, pieces)}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document], query: str = "") -> dict[str, list[Document]]:
        """Async :meth:`run`."""
        textual, sources = self._sources(documents)
        pieces = await self.engine.acompress_docs(sources, query) if sources else []
        return {"documents": self._merge(documents, textual, pieces)}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, method=self.method, config=self.config, ratio=self.ratio, tokens=self.tokens,
            threshold=self.threshold, cache_url=self.cache_url, endpoint=self.endpoint,
            api_key=self.api_key.to_dict() if self.api_key is not None else None, timeout=self.timeout,
            workers=self.workers, max_batch_size=self.max_batch_size, batch_wait_ms=self.batch_wait_ms)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RagpressDocumentCompressor":
        data = {**data, "init_parameters": dict(data.get("init_parameters") or {})}
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _sources(documents: Sequence[Document]) -> tuple[list[int], list[SourceDoc]]:
        textual, sources = [], []
        for i, d in enumerate(documents):
            if not isinstance(d, Document):
                raise TypeError(f"document {i} is a {type(d).__name__}, not a haystack Document")
            if d.content and d.content.strip():
                textual.append(i)
                sources.append(SourceDoc(d.content, d.id, d.meta))
        return textual, sources

    @staticmethod
    def _merge(documents: Sequence[Document], textual: list[int], pieces: Sequence[Compressed]) -> list[Document]:
        """The output documents in input order (:func:`ragpress.integrations.adapter.arrange`)."""
        out = []
        for item in arrange(pieces, textual, len(documents)):
            if isinstance(item, int):  # no text: as it was
                out.append(documents[item])
            elif item.index is None:  # an abstractive text over several documents: a new document
                scores = [s for s in (documents[i].score for i in textual) if s is not None]
                out.append(Document(content=item.text, meta={"ragpress": item.ragpress},
                                    score=max(scores) if scores else None))
            else:
                src = documents[item.index]
                out.append(Document(id=src.id, content=item.text, meta={**src.meta, "ragpress": item.ragpress},
                                    score=src.score, blob=src.blob))
        return out
