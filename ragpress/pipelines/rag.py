"""The in-process RAG pipeline: retrieve -> compress -> read (when a reader is configured).

The Ray Serve application chains the same steps as separate deployments; both call the same
library code (``VectorIndex.search`` and ``Compressor.compress_batch``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ragpress.core.compressor import Compressor
from ragpress.core.errors import EmptyQueryError
from ragpress.core.registry import create_compressor
from ragpress.core.types import Budget, CompressionRequest, CompressionResult
from ragpress.indexes.faiss_index import SearchHit, VectorIndex
from ragpress.readers.base import Answer, Reader, context_for


@dataclass
class PipelineResult:
    """What one pass through the pipeline produced."""

    query: str
    hits: list[SearchHit]
    compression: CompressionResult
    answer: Answer | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def context(self) -> str:
        return self.compression.text


class RagPipeline:
    """Retrieve the top-``top_k`` passages from ``index``, compress them with ``compressor`` and,
    when a ``reader`` is given, answer from the compressed context.

    >>> pipe = RagPipeline(VectorIndex.load("idx"), "embed-sentences", top_k=5, reader="local")  # doctest: +SKIP
    >>> out = pipe.run("How do I count items?", Budget(ratio=0.3))                              # doctest: +SKIP
    >>> out.answer.text, out.compression.tokens_before, out.compression.tokens_after           # doctest: +SKIP
    """

    def __init__(self, index: VectorIndex, compressor: Compressor | str = "exit", top_k: int = 5,
                 reader: Reader | str | None = None):
        from ragpress.readers import create_reader

        self.index = index
        self.compressor = create_compressor(compressor) if isinstance(compressor, str) else compressor
        self.reader = create_reader(reader) if isinstance(reader, str) else reader
        self.top_k = top_k

    def run(self, query: str, budget: Budget | None = None, top_k: int | None = None) -> PipelineResult:
        return self.run_batch([query], budget, top_k)[0]

    def run_batch(self, queries: list[str], budget: Budget | None = None, top_k: int | None = None) -> list[PipelineResult]:
        """Retrieve for all queries in one batch, then compress all contexts in one batch."""
        for q in queries:
            if not q or not q.strip():
                raise EmptyQueryError("give a non-empty question")
        t0 = time.perf_counter()
        all_hits = self.index.search(queries, k=top_k or self.top_k)
        t_retrieve = time.perf_counter() - t0
        requests = [CompressionRequest(query=q, passages=[h.passage for h in hits], budget=budget)
                    for q, hits in zip(queries, all_hits)]
        t0 = time.perf_counter()
        results = self.compressor.compress_batch(requests)
        t_compress = time.perf_counter() - t0
        n = len(queries)
        timings = {"retrieve": t_retrieve / n, "compress": t_compress / n}
        answers: list[Answer | None] = [None] * n
        if self.reader is not None:
            t0 = time.perf_counter()
            answers = self.reader.read_batch(queries, [context_for(r) for r in results])  # text or soft tokens
            timings["read"] = (time.perf_counter() - t0) / n
        return [PipelineResult(q, hits, res, a, dict(timings))
                for q, hits, res, a in zip(queries, all_hits, results, answers)]
