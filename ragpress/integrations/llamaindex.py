"""LlamaIndex component: any ragpress compressor as a node postprocessor, in process or against a
running ragpress service (``pip install 'ragpress[llamaindex]'``).

:class:`RagpressNodePostprocessor` compresses the nodes a retriever found for the query, in one
request (the budget is shared: nodes compete for it), and returns one node per input node that
kept something, in input order: the same node (id, metadata, relationships, ``start_char_idx`` /
``end_char_idx`` in its source document) with its text replaced by what was kept and its score
kept. Extractive methods keep a node's spans in source order (code with ``# ...`` markers where
code was dropped); an abstractive method (``tcra-summary``) over several nodes returns one new
node holding the whole compressed text (score: the best input score). Every output node gains
``metadata["ragpress"]`` (compressor, ratio reached, tokens before / after, budget, model id,
config hash, cache hit, and the kept ``spans`` or the ``sources``), left out of what the LLM and the
embedding model see (``excluded_llm_metadata_keys`` / ``excluded_embed_metadata_keys``); a node's
embedding, which described its full text, is dropped. Nodes without text (images) pass through
unchanged. The conversion is :mod:`ragpress.integrations.adapter`, the work
:class:`~ragpress.integrations.engine.CompressionEngine`: the same as the LangChain and Haystack
components, with the same typed errors (``UnknownCompressorError``, ``BudgetError``,
``EmptyQueryError``, ``ServiceUnavailableError``, ...).

``apostprocess_nodes`` (what ``aquery`` / ``aretrieve`` call) is native: an ``httpx.AsyncClient``
call remotely, a batched call on a bounded thread pool in process (concurrent calls of one event
loop share one ``compress_batch``).

>>> from ragpress.integrations.llamaindex import RagpressNodePostprocessor            # doctest: +SKIP
>>> engine = index.as_query_engine(similarity_top_k=5, node_postprocessors=[
...     RagpressNodePostprocessor(method="exit", ratio=0.3)])                           # doctest: +SKIP
>>> remote = RagpressNodePostprocessor(endpoint="http://127.0.0.1:8000", ratio=0.3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

try:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("the LlamaIndex component needs llama-index-core: pip install 'ragpress[llamaindex]'") from exc

from ragpress.integrations.adapter import Compressed, SourceDoc, arrange
from ragpress.integrations.engine import CompressionEngine

__all__ = ["RagpressNodePostprocessor"]

_HIDDEN = "ragpress"  # the metadata key the LLM and the embedder do not see


def _text(node: BaseNode) -> str:
    return node.get_content(metadata_mode=MetadataMode.NONE) or ""


def _hide(keys: Sequence[str]) -> list[str]:
    return [*keys, _HIDDEN] if _HIDDEN not in keys else list(keys)


class RagpressNodePostprocessor(BaseNodePostprocessor):
    """A ragpress compressor as a LlamaIndex ``BaseNodePostprocessor``.

    ``method`` is any registered name (``ragpress methods``; None: ``exit`` in process, the
    service's default remotely), ``config`` its settings; the budget is one of ``ratio``,
    ``tokens`` or ``threshold`` (none: the method's default), shared by the nodes of one call.
    ``cache_url`` (``redis://...`` or ``memory``) puts results and query-independent work in a
    segment cache. ``endpoint="http://host:port"`` sends the work to a running ragpress service
    (``api_key``, default ``$RAGPRESS_API_KEY``; ``timeout`` seconds per request). ``workers``,
    ``max_batch_size`` and ``batch_wait_ms`` shape the async batching (see
    :mod:`ragpress.integrations.engine`). Bad names, settings or budgets raise ragpress's typed
    errors when it is built (remotely: an unknown method at the first call).
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
    def _build(self) -> RagpressNodePostprocessor:
        self._engine = CompressionEngine(
            self.method, self.config, ratio=self.ratio, tokens=self.tokens, threshold=self.threshold,
            cache_url=self.cache_url, endpoint=self.endpoint,
            api_key=self.api_key.get_secret_value() if self.api_key is not None else None, timeout=self.timeout,
            workers=self.workers, max_batch_size=self.max_batch_size, batch_wait_ms=self.batch_wait_ms,
            thread_name="ragpress-llamaindex")
        return self

    @classmethod
    def class_name(cls) -> str:
        return "RagpressNodePostprocessor"

    @property
    def engine(self) -> CompressionEngine:
        """What does the work (:class:`~ragpress.integrations.engine.CompressionEngine`)."""
        return self._engine

    @property
    def compressor(self):
        """The in-process ragpress compressor (or its cached wrapper); None in remote mode."""
        return self._engine.compressor

    # ------------------------------------------------------------------ LlamaIndex hooks
    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        textual, sources = self._sources(nodes)
        pieces = self._engine.compress_docs(sources, self._query(query_bundle)) if sources else []
        return self._merge(nodes, textual, pieces)

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        textual, sources = self._sources(nodes)
        pieces = await self._engine.acompress_docs(sources, self._query(query_bundle)) if sources else []
        return self._merge(nodes, textual, pieces)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _query(query_bundle: QueryBundle | None) -> str:
        return query_bundle.query_str if query_bundle is not None else ""

    @staticmethod
    def _sources(nodes: Sequence[NodeWithScore]) -> tuple[list[int], list[SourceDoc]]:
        """(positions of the nodes with text, their SourceDocs)."""
        textual, sources = [], []
        for i, n in enumerate(nodes):
            if not isinstance(n, NodeWithScore):
                raise TypeError(f"node {i} is a {type(n).__name__}, not a llama_index NodeWithScore")
            text = _text(n.node)
            if text.strip():
                textual.append(i)
                sources.append(SourceDoc(text, n.node.node_id, n.node.metadata))
        return textual, sources

    @staticmethod
    def _merge(nodes: Sequence[NodeWithScore], textual: list[int], pieces: Sequence[Compressed]) -> list[NodeWithScore]:
        """The output nodes in input order (:func:`ragpress.integrations.adapter.arrange`)."""
        out = []
        for item in arrange(pieces, textual, len(nodes)):
            if isinstance(item, int):  # no text: as it was
                out.append(nodes[item])
            elif item.index is None:  # an abstractive text over several nodes: a new node
                scores = [s for s in (nodes[i].score for i in textual) if s is not None]
                node = TextNode(text=item.text, metadata={_HIDDEN: item.ragpress},
                                excluded_llm_metadata_keys=[_HIDDEN], excluded_embed_metadata_keys=[_HIDDEN])
                out.append(NodeWithScore(node=node, score=max(scores) if scores else None))
            else:
                src = nodes[item.index]
                node = src.node.model_copy(deep=True)
                node.set_content(item.text)
                node.embedding = None  # it was the embedding of the full text
                node.metadata = {**src.node.metadata, _HIDDEN: item.ragpress}
                node.excluded_llm_metadata_keys = _hide(src.node.excluded_llm_metadata_keys)
                node.excluded_embed_metadata_keys = _hide(src.node.excluded_embed_metadata_keys)
                out.append(NodeWithScore(node=node, score=src.score))
        return out
