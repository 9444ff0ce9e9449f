"""The compressor contract: a small class with a name, a pydantic config and
``compress(request) -> CompressionResult``; ``compress_batch`` is the fast path the service calls.

Subclasses implement ``_compress`` (and may override ``_compress_batch``); the public methods
validate input once, so every compressor rejects bad input the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ragpress.core.errors import (
    ConfigError,
    EmptyPassageError,
    EmptyQueryError,
    NoPassagesError,
    UnsupportedBudgetError,
)
from ragpress.core.tokens import TokenCounter, get_token_counter
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Span


class CompressorConfig(BaseModel):
    """Base of every compressor's config. ``tokenizer`` names the reader tokenizer that
    budgets and reported token counts use."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    tokenizer: str = "qwen"


@dataclass
class PrecomputeStats:
    """What one :meth:`Compressor.precompute` call did. Per passage (in order): ``segments`` (the
    units whose work was done: sentences, code chunks, summaries) and ``tokens_out`` (reader tokens
    of text the work produced, e.g. summaries; 0 for vectors and scores). ``entries``: distinct
    segment-cache entries looked up, ``hits``: those the cache already held (the rest were computed
    and written). ``precomputable`` False: the method has no query-independent work, nothing done."""

    method: str
    precomputable: bool
    passages: int = 0
    tokens_in: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    tokens_out: list[int] = field(default_factory=list)
    entries: int = 0
    hits: int = 0
    seconds: float = 0.0

    @property
    def computed(self) -> int:
        return self.entries - self.hits


class Compressor(ABC):
    """Base class of all compressors.

    Class attributes declare what a compressor needs and can do:

    * ``name``: registry name (``ragpress compress --method NAME``);
    * ``config_cls``: its pydantic config;
    * ``query_aware``: whether it needs a non-empty query;
    * ``handles_code``: meant for source code rather than prose;
    * ``soft_tokens``: returns soft-token embeddings instead of text;
    * ``budget_modes``: which :class:`Budget` modes it honours;
    * ``default_budget``: used when a request carries none;
    * ``precomputable``: has query-independent work that :meth:`precompute` can do ahead of
      queries (the batch job, ``ragpress batch``).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[CompressorConfig]] = CompressorConfig
    query_aware: ClassVar[bool] = True
    handles_code: ClassVar[bool] = False
    soft_tokens: ClassVar[bool] = False
    budget_modes: ClassVar[frozenset[str]] = frozenset({"ratio", "tokens"})
    default_budget: ClassVar[Budget] = Budget(ratio=0.5)
    precomputable: ClassVar[bool] = False

    #: A segment cache (``get_many``/``set_many``/``memoize_many``, see
    #: :mod:`ragpress.core.cache`) for query-independent work; None = compute everything.
    #: The service and :class:`~ragpress.core.cache.CachedCompressor` set it.
    segment_cache: Any = None

    def __init__(self, config: CompressorConfig | dict[str, Any] | None = None, **overrides: Any):
        self.segment_hits = 0  # query-independent pieces served by the segment cache
        self.segment_lookups = 0  # distinct pieces looked up in it (hits + computed)
        if config is None or isinstance(config, dict):
            try:
                config = self.config_cls(**{**(config or {}), **overrides})
            except ValidationError as exc:
                raise ConfigError(f"invalid config for {self.name!r}: {exc}") from exc
        elif overrides:
            config = config.model_copy(update=overrides)
        self.config = config

    # ------------------------------------------------------------------ identity
    @property
    def config_hash(self) -> str:
        """Short stable hash of the config (part of every cache key)."""
        blob = json.dumps(self.config.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(f"{self.name}:{blob}".encode()).hexdigest()[:12]

    @property
    def model_id(self) -> str | None:
        """Id of the model doing the work (None for model-free compressors)."""
        return None

    @property
    def counter(self) -> TokenCounter:
        return get_token_counter(self.config.tokenizer)

    def reconfigure(self, **changes: Any) -> None:
        """Change settings in place (the service's live ``user_config``)."""
        try:
            self.config = self.config_cls(**{**self.config.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(f"invalid config for {self.name!r}: {exc}") from exc

    # ------------------------------------------------------------------ public API
    def compress(self, request: CompressionRequest) -> CompressionResult:
        """Compress one request; raises a :class:`~ragpress.core.errors.RagpressError` on bad input."""
        return self.compress_batch([request])[0]

    def compress_batch(self, requests: Sequence[CompressionRequest]) -> list[CompressionResult]:
        """Compress several requests; subclasses batch model calls across them."""
        requests = [self.validate(r) for r in requests]
        skip = [r.budget.skip_under is not None for r in requests]
        if not any(skip):
            return self._compress_batch(requests)
        from ragpress.core.extractive import render_full

        befores = [self.counter.count(render_full(r.passages)) if k else 0 for r, k in zip(requests, skip)]
        short = [k and n < r.budget.skip_under for r, k, n in zip(requests, skip, befores)]
        rest = iter(self._compress_batch([r for r, sh in zip(requests, short) if not sh]) if not all(short) else [])
        return [self.passthrough(r, n) if sh else next(rest) for r, sh, n in zip(requests, short, befores)]

    def passthrough(self, request: CompressionRequest, tokens_before: int | None = None) -> CompressionResult:
        """The whole context, uncompressed (a budget's ``skip_under``): exact spans of every passage,
        ratio 1, ``extra["skipped"]`` says why."""
        from ragpress.core.extractive import render_full

        text = render_full(request.passages)
        n = tokens_before if tokens_before is not None else self.counter.count(text)
        spans = [Span(passage_id=p.id, start=0, end=len(p.text), text=p.text) for p in request.passages]
        res = self._result(request, text, spans, n, {}, extra={
            "skipped": f"the context has {n} tokens, under the budget's skip_under={request.budget.skip_under}"})
        return res

    def validate(self, request: CompressionRequest) -> CompressionRequest:
        """Check a request against this compressor and fill in the default budget."""
        if self.query_aware and not request.query.strip():
            raise EmptyQueryError(f"{self.name!r} is query-aware: give a non-empty query")
        if not request.passages:
            raise NoPassagesError("no passages to compress: give at least one passage")
        for i, p in enumerate(request.passages):
            if not p.text.strip():
                raise EmptyPassageError(
                    f"passage {i} (id {p.id!r}) is empty or whitespace only: drop it or give it text"
                )
        budget = request.budget or self.default_budget
        if budget.mode not in self.budget_modes:
            raise UnsupportedBudgetError(
                f"{self.name!r} does not support a {budget.mode} budget; "
                f"use one of: {', '.join(sorted(self.budget_modes))}"
            )
        if budget is not request.budget:
            request = request.model_copy(update={"budget": budget})
        return request

    def memo(self, kind: str, contents: Sequence[str], compute, model_id: str | None = None,
             shared: bool = False) -> list[Any]:
        """Query-independent work per content string (embeddings, summaries, perplexities):
        ``compute(list_of_contents) -> list_of_values`` runs once per distinct content that the
        segment cache does not hold, and its values are written back. Keys carry ``kind``,
        the model id and, unless ``shared`` (work any compressor may reuse, e.g. embeddings by
        model), this compressor's name and config hash."""
        from ragpress.core.cache_keys import keys_for

        contents = list(contents)
        distinct = list(dict.fromkeys(contents))
        if self.segment_cache is None or not distinct:
            values = list(compute(distinct)) if distinct else []
        else:
            keys = keys_for(kind, "-" if shared else self.name, "-" if shared else self.config_hash,
                            model_id if model_id is not None else self.model_id, distinct)
            values, hits = self.segment_cache.memoize_many(keys, lambda miss: compute([distinct[i] for i in miss]))
            self.segment_hits += hits
            self.segment_lookups += len(distinct)
        at = dict(zip(distinct, values))
        return [at[c] for c in contents]

    def precompute(self, passages: Sequence[Passage], budget: Budget | None = None) -> PrecomputeStats:
        """Do the query-independent work of compressing ``passages`` ahead of any query (sentence
        embeddings, summaries, line perplexities) through the very :meth:`memo` calls that
        :meth:`compress` makes, so it lands in :attr:`segment_cache` and a later ``compress`` of a
        request over these passages reads it back (``segment_hits``). ``budget`` matters only to
        methods whose stored work depends on it (TCRA's summaries: a ratio budget; default: the
        method's default budget). Methods without such work (``precomputable`` False) do nothing.

        >>> c = create_compressor("embed-sentences"); c.segment_cache = make_cache("redis://...")  # doctest: +SKIP
        >>> c.precompute([Passage(id="a", text="One. Two.")]).segments                            # doctest: +SKIP
        [2]
        """
        passages = list(passages)
        for i, p in enumerate(passages):
            if not p.text.strip():
                raise EmptyPassageError(f"passage {i} (id {p.id!r}) is empty or whitespace only: nothing to precompute")
        stats = PrecomputeStats(method=self.name, precomputable=self.precomputable, passages=len(passages),
                                tokens_in=self.counter.count_batch([_render_one(p) for p in passages]) if passages else [])
        if not self.precomputable or not passages:
            stats.segments, stats.tokens_out = [0] * len(passages), [0] * len(passages)
            return stats
        if self.segment_cache is None:
            raise ConfigError(f"precompute of {self.name!r} needs a segment cache to write to: set "
                              "compressor.segment_cache = make_cache(URL) (ragpress.core.cache)")
        budget = budget or self.default_budget
        if budget.mode not in self.budget_modes:
            raise UnsupportedBudgetError(f"{self.name!r} does not support a {budget.mode} budget; "
                                         f"use one of: {', '.join(sorted(self.budget_modes))}")
        hits0, lookups0 = self.segment_hits, self.segment_lookups
        t0 = time.perf_counter()
        stats.segments, stats.tokens_out = self._precompute(passages, budget)
        stats.seconds = time.perf_counter() - t0
        stats.hits, stats.entries = self.segment_hits - hits0, self.segment_lookups - lookups0
        return stats

    # ------------------------------------------------------------------ to implement
    def _precompute(self, passages: list[Passage], budget: Budget) -> tuple[list[int], list[int]]:
        """Run the query-independent memo calls of ``compress`` for ``passages``; return, per
        passage, the segments done and the reader tokens of text produced. Methods that set
        ``precomputable = True`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} sets precomputable but has no _precompute")

    def _compress_batch(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        return [self._compress(r) for r in requests]

    @abstractmethod
    def _compress(self, request: CompressionRequest) -> CompressionResult:
        """Compress one validated request (its budget is set)."""

    def _result(self, request: CompressionRequest, text: str, spans, tokens_before: int,
                timings: dict[str, float], **extra: Any) -> CompressionResult:
        """Build the result with the identity fields filled in."""
        return CompressionResult(
            text=text, spans=spans, tokens_before=tokens_before, tokens_after=self.counter.count(text),
            compressor=self.name, config_hash=self.config_hash, model_id=self.model_id,
            tokenizer=self.counter.name, budget=request.budget, timings=timings, **extra,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def _render_one(p: Passage) -> str:
    """One passage as the reader sees it (``"{title}\\n{text}"``, as :func:`render_full`)."""
    return f"{p.title}\n{p.text}" if p.title else p.text
