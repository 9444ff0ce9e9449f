"""Baselines every learned compressor has to beat.

* ``truncate``: keep the first N tokens of the rendered context (what a context window does);
* ``embed-sentences``: query-aware sentence selection by embedding cosine similarity;
* ``embed-passages``: passage selection by embedding similarity, as LangChain's
  ``EmbeddingsFilter`` does (threshold mode keeps passages at or above the similarity).
"""

from __future__ import annotations

import time

import numpy as np

from ragpress.core.compressor import Compressor, CompressorConfig
from ragpress.core.extractive import (
    PASSAGE_SEP,
    Unit,
    passage_units,
    render,
    render_full,
    select,
    sentence_units,
    structure_notes,
    unit_text,
)
from ragpress.core.models import embed_texts, resolve_model_id
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Span


class TruncateCompressor(Compressor):
    """Keep the context's first tokens up to the budget, cutting the last passage at a token
    boundary. Query-blind: the floor every method must clear."""

    name = "truncate"
    query_aware = False

    def _compress(self, request: CompressionRequest) -> CompressionResult:
        t0 = time.perf_counter()
        passages = request.passages
        full = render_full(passages)
        offsets = self.counter.char_offsets(full)  # one tokenization of the whole context
        before = len(offsets)
        target = request.budget.target_tokens(before)
        # where each passage's text sits in the full context ("{title}\n{text}" joined by a blank line)
        starts, pos = [], 0
        for p in passages:
            pos += len(f"{p.title}\n" if p.title else "")
            starts.append(pos)
            pos += len(p.text) + len(PASSAGE_SEP)
        cut = len(full) if target >= before else (offsets[target - 1][1] if target > 0 else 0)
        while True:
            units = [Unit(i, 0, min(len(p.text), cut - s)) for i, (p, s) in enumerate(zip(passages, starts))
                     if cut > s]
            text, spans = render(units, passages)
            # re-tokenising the prefix can merge differently at the cut: step back until it fits
            if cut == 0 or self.counter.count(text) <= target:
                break
            cut = max([a for a, _ in offsets if a < cut] or [0])
        return self._result(request, text, spans, before, {"compress": time.perf_counter() - t0})


class EmbeddingConfig(CompressorConfig):
    embedder: str | None = None
    batch_size: int = 64


class _EmbeddingSelector(Compressor):
    """Score units by cosine similarity of their embedding with the query's."""

    config_cls = EmbeddingConfig
    budget_modes = frozenset({"ratio", "tokens", "threshold"})

    @property
    def model_id(self) -> str:
        return resolve_model_id("embedder", self.config.embedder)

    precomputable = True  # the units' embeddings do not depend on the query

    def _units(self, passages: list[Passage]) -> list[Unit]:
        raise NotImplementedError

    def _precompute(self, passages: list[Passage], budget: Budget) -> tuple[list[int], list[int]]:
        """Embed every unit (the same texts and memo path as compress: only the query is left)."""
        units = self._units(passages)
        embed_texts([unit_text(u, passages) for u in units], self.config.embedder, self.config.batch_size,
                    memo=self.memo)
        per = [0] * len(passages)
        for u in units:
            per[u.passage] += 1
        return per, [0] * len(passages)

    def _compress_batch(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        t0 = time.perf_counter()
        all_units = [self._units(r.passages) for r in requests]
        t_split = time.perf_counter()
        texts: list[str] = []
        for r, units in zip(requests, all_units):
            texts.append(r.query)
            texts.extend(unit_text(u, r.passages) for u in units)
        emb = embed_texts(texts, self.config.embedder, self.config.batch_size, memo=self.memo)
        t_embed = time.perf_counter()
        results, pos = [], 0
        for r, units in zip(requests, all_units):
            q, e = emb[pos], emb[pos + 1: pos + 1 + len(units)]
            pos += 1 + len(units)
            for u, s in zip(units, np.asarray(e @ q, dtype=float)):
                u.score = float(s)
            before = self.counter.count(render_full(r.passages))
            notes: dict = {}
            kept = select(units, r.passages, r.budget, self.counter, before, query=r.query, protect=r.protect,
                          notes=notes)
            text, spans = render(kept, r.passages)
            share = len(units) / max(1, sum(len(x) for x in all_units))
            results.append(self._result(r, text, spans, before, {
                "split": (t_split - t0) * share, "embed": (t_embed - t_split) * share,
                "select": time.perf_counter() - t_embed,
            }, extra=structure_notes(kept, notes)))
        return results

    def _compress(self, request: CompressionRequest) -> CompressionResult:
        return self._compress_batch([request])[0]


class EmbeddingSentenceCompressor(_EmbeddingSelector):
    """Keep the sentences most similar to the query (original order kept).
    Threshold mode keeps sentences whose cosine similarity reaches the threshold."""

    name = "embed-sentences"
    default_budget = Budget(ratio=0.5)

    def _units(self, passages: list[Passage]) -> list[Unit]:
        return sentence_units(passages)


class EmbeddingPassageCompressor(_EmbeddingSelector):
    """Keep whole passages by similarity to the query, like LangChain's ``EmbeddingsFilter``
    (its default ``similarity_threshold`` is 0.76 for OpenAI embeddings; MiniLM's cosine
    scale is lower, so the default here is 0.3)."""

    name = "embed-passages"
    default_budget = Budget(threshold=0.3)

    def _units(self, passages: list[Passage]) -> list[Unit]:
        return passage_units(passages)


__all__ = ["TruncateCompressor", "EmbeddingSentenceCompressor", "EmbeddingPassageCompressor", "Span"]
