"""What every framework component (LangChain, LlamaIndex, Haystack) calls to compress: one
:class:`CompressionEngine` per component, in process or against a running ragpress service,
sync or async, with the same budgets and typed errors everywhere.

In process it calls the library (``create_compressor`` / ``Compressor.compress_batch``), the code
the CLI and the service run; with ``endpoint="http://host:port"`` it calls the service instead
(:mod:`ragpress.client`, ``POST /v1/compress``) and loads no model, and the service's errors come
back as the same typed exceptions (``UnknownCompressorError``, ``BudgetError``, ...; an
unreachable service is a ``ServiceUnavailableError``, a slow one a ``ServiceTimeoutError``).

Async calls are native. Remotely they are ``httpx.AsyncClient`` calls (one client per event
loop). In process the blocking model call runs on the engine's bounded thread pool (``workers``
threads, default 1), never on the event loop, and concurrent calls of one event loop arriving
within ``batch_wait_ms`` (or while a batch runs) are gathered into one ``compress_batch`` call of
at most ``max_batch_size`` requests: N concurrent calls cost a few batched model passes, not N.

>>> engine = CompressionEngine("truncate", ratio=0.5)
>>> result, passages = engine.compress([SourceDoc("Acme was founded in 1990 by Jane Roe. It rained all day.")], "")
>>> result.tokens_after <= result.tokens_before
True
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ragpress.core.errors import ConfigError, RagpressError
from ragpress.core.registry import create_compressor, get_compressor_class
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage
from ragpress.integrations.adapter import Compressed, SourceDoc, to_compressed, to_passages

__all__ = ["DEFAULT_METHOD", "CompressionEngine", "MicroBatcher", "for_this_loop", "make_budget"]

DEFAULT_METHOD = "exit"  # in process, when no method is named (remotely: the service's default)

_WARMUP_TEXT = ("The tempfile module creates temporary files and directories. NamedTemporaryFile returns a "
                "file-like object that is deleted when closed. mkstemp returns a low-level handle.")
_WARMUP_CODE = "import os\n\n\ndef temp_path(name):\n    return os.path.join('/tmp', name)\n"


def make_budget(ratio: float | None = None, tokens: int | None = None, threshold: float | None = None) -> Budget | None:
    """The budget of at most one of ``ratio``, ``tokens``, ``threshold`` (None: the method's
    default); a :class:`~ragpress.core.errors.BudgetError` for a bad one."""
    given = {k: v for k, v in (("ratio", ratio), ("tokens", tokens), ("threshold", threshold)) if v is not None}
    return Budget(**given) if given else None


class CompressionEngine:
    """A ragpress compressor for a framework component.

    ``method`` is any registered name (``ragpress methods``; None: ``exit`` in process, the
    service's default remotely), ``config`` its settings; the budget is one of ``ratio``,
    ``tokens`` or ``threshold`` (none: the method's default). ``cache_url`` (``redis://...`` or
    ``memory``) puts results and query-independent work in a segment cache, as the service does.
    ``endpoint`` sends the work to a running service instead (``api_key``, default
    ``$RAGPRESS_API_KEY``; ``timeout`` in seconds per request); ``config`` and ``cache_url`` are the
    service's business there. Bad names, settings and budgets raise the typed errors here (remotely
    an unknown method at the first call). ``workers``: threads doing the blocking work (default 1
    in process, 8 remotely); ``max_batch_size`` / ``batch_wait_ms``: how concurrent async calls are
    gathered (see the module docstring).
    """

    def __init__(self, method: str | None = None, config: dict[str, Any] | None = None, *,
                 ratio: float | None = None, tokens: int | None = None, threshold: float | None = None,
                 cache_url: str | None = None, endpoint: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, workers: int | None = None, max_batch_size: int = 32,
                 batch_wait_ms: float = 2.0, thread_name: str = "ragpress"):
        self.method, self.endpoint, self.api_key, self.timeout = method, endpoint, api_key, timeout
        self.budget = make_budget(ratio, tokens, threshold)
        self.n_workers = workers or (8 if endpoint is not None else 1)
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_ms / 1000
        self.executor = ThreadPoolExecutor(max_workers=self.n_workers, thread_name_prefix=thread_name)
        self.compressor: Any = None  # the in-process compressor (or its cached wrapper); None remotely
        self.client: Any = None
        self._aclient: Any = None  # (weakref to its event loop, AsyncRagpressClient)
        self._batcher: Any = None  # (weakref to its event loop, MicroBatcher)
        if endpoint is not None:
            if config or cache_url:
                raise ConfigError("config= and cache_url= apply in process only; a remote ragpress service "
                                  "(endpoint=) uses its own configuration")
            from ragpress.client import RagpressClient

            self.client = RagpressClient(endpoint, api_key, timeout)
            return
        name = method or DEFAULT_METHOD
        if getattr(get_compressor_class(name), "soft_tokens", False):
            raise ConfigError(f"{name!r} makes soft tokens for a reader's input embeddings, not text: a framework "
                              "document carries text. Use it through ragpress's reader (RagPipeline, `ragpress "
                              "answer`) or pick a text method")
        compressor = create_compressor(name, config or None)
        if cache_url:
            from ragpress.core.cache import CachedCompressor, make_cache

            compressor = CachedCompressor(compressor, make_cache(cache_url))
        self.compressor = compressor

    @property
    def remote(self) -> bool:
        return self.endpoint is not None

    # ------------------------------------------------------------------ documents in, pieces out
    def compress(self, docs: Sequence[SourceDoc], query: str) -> tuple[CompressionResult, list[Passage]]:
        """The ragpress result for ``docs`` under ``query`` (one request), and the passages sent."""
        passages = to_passages(docs)
        return self.run([self.request(passages, query)])[0], passages

    async def acompress(self, docs: Sequence[SourceDoc], query: str) -> tuple[CompressionResult, list[Passage]]:
        """Async :meth:`compress`."""
        passages = to_passages(docs)
        return (await self.arun([self.request(passages, query)]))[0], passages

    def compress_docs(self, docs: Sequence[SourceDoc], query: str) -> list[Compressed]:
        """The compressed pieces of ``docs`` (see :mod:`ragpress.integrations.adapter`); none in, none out."""
        if not docs:
            return []
        result, passages = self.compress(docs, query)
        return to_compressed(result, docs, passages)

    async def acompress_docs(self, docs: Sequence[SourceDoc], query: str) -> list[Compressed]:
        """Async :meth:`compress_docs`."""
        if not docs:
            return []
        result, passages = await self.acompress(docs, query)
        return to_compressed(result, docs, passages)

    def warm_up(self) -> None:
        """Load the method's models now (in process; remotely nothing to load): one small
        compression, outside any cache."""
        if self.compressor is None:
            return
        c = getattr(self.compressor, "compressor", self.compressor)
        code = bool(getattr(c, "handles_code", False))
        budget = Budget(ratio=0.5) if "ratio" in c.budget_modes else None
        try:
            c.compress(CompressionRequest(query="How do I create a temporary file?", budget=budget, passages=[
                Passage(id="warmup", text=_WARMUP_CODE if code else _WARMUP_TEXT,
                        metadata={"language": "python"} if code else {})]))
        except RagpressError:  # a method that wants other input still loads at its first call
            pass

    # ------------------------------------------------------------------ requests
    def request(self, passages: list[Passage], query: str) -> CompressionRequest:
        """The request for ``passages``; in process validated now (typed errors before a batch forms)."""
        request = CompressionRequest(query=query, passages=passages, budget=self.budget)
        if self.compressor is not None:
            getattr(self.compressor, "compressor", self.compressor).validate(request)
        return request

    def run(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        """Results for ``requests`` (one batched call in process; remotely one HTTP request each,
        up to ``workers`` at once)."""
        if self.client is None:
            return self.compressor.compress_batch(requests)
        if len(requests) == 1:
            return [self._remote(requests[0])]
        return list(self.executor.map(self._remote, requests))

    def _remote(self, r: CompressionRequest) -> CompressionResult:
        return self.client.compress(r.query, r.passages, r.budget, method=self.method, protect=r.protect)

    async def arun(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        """Async :meth:`run`: batched with concurrent calls in process, concurrent requests remotely."""
        if self.client is None:
            self._batcher, batcher = for_this_loop(self._batcher, lambda: MicroBatcher(
                self.compressor.compress_batch, self.executor, self.n_workers, self.max_batch_size, self.batch_wait_s))
            return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))
        from ragpress.client import AsyncRagpressClient

        self._aclient, client = for_this_loop(
            self._aclient, lambda: AsyncRagpressClient(self.endpoint, self.api_key, self.timeout))
        return list(await asyncio.gather(*(client.compress(r.query, r.passages, r.budget, method=self.method,
                                                           protect=r.protect) for r in requests)))

    def __repr__(self) -> str:
        where = f"endpoint={self.endpoint!r}" if self.remote else "in process"
        return f"CompressionEngine({self.method or 'default'!r}, budget={self.budget}, {where})"


def for_this_loop(slot: tuple | None, make: Callable[[], Any]) -> tuple[tuple, Any]:
    """(new slot, object) for the running event loop: the slot's object when it was made in this
    loop, else a fresh one (an asyncio object or an httpx.AsyncClient belongs to one loop). One
    slot, not one per loop: a finished ``asyncio.run`` loop is not kept alive by its objects."""
    loop = asyncio.get_running_loop()
    if slot is not None and slot[0]() is loop:
        return slot, slot[1]
    obj = make()
    return (weakref.ref(loop), obj), obj


class MicroBatcher:
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
