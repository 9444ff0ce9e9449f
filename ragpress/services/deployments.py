"""Ray Serve deployments, one per pipeline stage, each scaled on its own:

* :class:`RetrieverDeployment`: FAISS + embedder (``VectorIndex.search``), batched;
* :class:`CompressorDeployment`: one per configured text method (``compress_with_cache`` over
  ``Compressor.compress_batch``), batched with ``@serve.batch``; settings change live through
  ``user_config`` -> :meth:`CompressorDeployment.reconfigure`;
* :class:`EncoderDeployment`: the same for a soft-token method (``arc``), with its own replicas
  and GPU share; its soft tokens leave it as float16 arrays;
* :class:`ReaderDeployment`: the reader (``ragpress.readers``: a local causal LM or an
  OpenAI-compatible upstream), generation batched with ``@serve.batch``, plus a streaming method
  (called with ``handle.options(stream=True)``) that yields text pieces then the answer;
* :class:`Ingress`: the FastAPI app (:mod:`ragpress.services.api`), chaining the stages through
  ``DeploymentHandle`` calls; in ``/v1/answer`` the retriever's response is handed to the
  compressor without being awaited in between.

Stages return plain dicts (``{"result": ..., "error": ..., "status": ...}``) rather than raising,
so a bad request in a batch fails alone and crosses process boundaries as a typed 4xx.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ray import serve

from ragpress.core.errors import RagpressError
from ragpress.core.types import Budget, CompressionRequest, Passage

log = logging.getLogger("ragpress.services")

_WARMUP_PASSAGE = ("The tempfile module creates temporary files and directories. NamedTemporaryFile returns a "
                   "file-like object that is deleted when closed. mkstemp returns a low-level handle.")


WEDGED_AFTER_S = float(os.environ.get("RAGPRESS_WEDGED_AFTER_S", "300"))


class Watchdog:
    """The work a replica is doing, for its ``check_health``: a piece of work (a batch, a stream)
    still running after ``wedged_after_s`` (``RAGPRESS_WEDGED_AFTER_S``, default 300 s, far above
    any request's ``timeout_s``) means the replica is wedged, and Serve replaces it. A replica
    whose event loop is blocked is caught by Serve itself (its health call times out)."""

    def __init__(self, wedged_after_s: float | None = None):
        import itertools

        self.wedged_after_s = wedged_after_s or WEDGED_AFTER_S
        self._running: dict[int, float] = {}
        self._ids = itertools.count()

    def start(self) -> int:
        k = next(self._ids)
        self._running[k] = time.monotonic()
        return k

    def done(self, k: int) -> None:
        self._running.pop(k, None)

    async def run(self, fn, *args, **kwargs):
        """``asyncio.to_thread(fn, ...)``, watched."""
        k = self.start()
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        finally:
            self.done(k)

    def check(self, what: str) -> None:
        if self._running:
            age = time.monotonic() - min(self._running.values())
            if age > self.wedged_after_s:
                raise RuntimeError(f"{what} is wedged: one piece of work has run {age:.0f} s "
                                   f"(> {self.wedged_after_s:.0f} s); Serve replaces this replica")


def placement() -> dict[str, Any]:
    """Where this replica runs: its node, the GPU ids Ray gave it and the CUDA_VISIBLE_DEVICES it
    sees (Ray sets it per replica from its ``num_gpus`` share), part of every stage's health."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _error(exc: RagpressError) -> dict[str, Any]:
    body = exc.to_dict()
    if hasattr(exc, "available"):
        body["error"]["available"] = list(exc.available)
    return {"result": None, "error": body, "status": exc.http_status}


class _CompressStage:
    """One compression method behind ``compress_with_cache`` (the body of both
    :class:`CompressorDeployment` and :class:`EncoderDeployment`). ``user_config`` (live):
    ``{"config": {...method config...}, "max_batch_size": 8, "batch_wait_timeout_s": 0.005}``;
    ``cache``: :func:`make_cache` kwargs (``url`` None = in process)."""

    def __init__(self, method: str, config: dict[str, Any] | None = None, cache: dict[str, Any] | None = None,
                 warmup: bool = True):
        from ragpress.core.cache import make_cache
        from ragpress.core.registry import create_compressor

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.method = method
        self.base_config = dict(config or {})
        self.cache = make_cache(**(cache or {}))
        self.compressor = create_compressor(method, self.base_config)
        self.compressor.segment_cache = self.cache  # query-independent work (embeddings, summaries, ...)
        self.loaded = False
        self.batches = 0
        self.fast_hits = 0
        self.watchdog = Watchdog()
        if warmup:
            self._warmup()

    def _warmup(self) -> None:
        """Load the method's models now, so the replica is ready only once it can serve."""
        t0 = time.perf_counter()
        try:
            self.compressor.compress(CompressionRequest(
                query="How do I create a temporary file?", passages=[Passage(id="warmup", text=_WARMUP_PASSAGE)],
                budget=self._warmup_budget()))
        except RagpressError as exc:  # a method that wants other input (e.g. code) still loads lazily
            log.info("warm-up of %s skipped: %s", self.method, exc.message)
        self.loaded = True
        log.info("compressor %s ready in %.1f s", self.method, time.perf_counter() - t0)

    def _warmup_budget(self) -> Budget | None:
        return Budget(ratio=0.5) if "ratio" in self.compressor.budget_modes else None

    def _ship(self, result):
        """The result as it leaves the replica (the encoder turns soft tokens into an array)."""
        return result

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live settings: ``config`` overlays the deployment's method config (validated: a bad
        one raises and the replica keeps the old), and the batching knobs."""
        from ragpress.core.registry import create_compressor

        wanted = {**self.base_config, **(user_config.get("config") or {})}
        if wanted != self.compressor.config.model_dump(exclude_unset=True):
            # declarative: the deployment's config overlaid by user_config (models are cached per process)
            self.compressor = create_compressor(self.method, wanted)
            self.compressor.segment_cache = self.cache
        if "max_batch_size" in user_config:
            self._batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self._batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[CompressionRequest, float]]) -> list[dict[str, Any]]:
        from ragpress.core.cache import compress_with_cache

        t_start = time.perf_counter()
        requests = [r for r, _ in items]
        try:
            results, stats = await self.watchdog.run(compress_with_cache, self.compressor, requests, self.cache,
                                                     return_exceptions=True)
        except RagpressError as exc:  # e.g. a model that cannot load: every request gets the typed error
            return [_error(exc) for _ in items]
        self.batches += 1
        degraded = stats.errors > 0
        out = []
        for (_, t_enqueued), res in zip(items, results):
            if isinstance(res, RagpressError):
                out.append(_error(res))
                continue
            res.timings = {**res.timings, "queue": max(0.0, t_start - t_enqueued)}
            out.append({"result": self._ship(res), "error": None, "status": 200, "cache_degraded": degraded,
                        "batch_size": len(items)})
        return out

    async def compress(self, request: CompressionRequest) -> dict[str, Any]:
        """Compress one request: a segment-cache hit is answered at once (one cache read, no
        batch wait); a miss is batched with concurrent ones."""
        from ragpress.core.cache import lookup_cached

        t0 = time.perf_counter()
        errors_before = getattr(self.cache, "errors", 0)
        hit = await self.watchdog.run(lookup_cached, self.compressor, request, self.cache)
        if hit is not None:
            self.fast_hits += 1
            hit.timings = {**hit.timings, "queue": 0.0}
            return {"result": self._ship(hit), "error": None, "status": 200, "cache_degraded": False,
                    "batch_size": 0}
        out = await self._batched((request, t0))
        if getattr(self.cache, "errors", 0) > errors_before and out.get("status") == 200:
            out["cache_degraded"] = True  # the lookup failed: served uncached
        return out

    async def compress_retrieved(self, query: str, hits: list, budget: Budget | None) -> dict[str, Any]:
        """Compress retrieval hits (the retriever's response, resolved by Serve)."""
        if isinstance(hits, dict):  # the retriever answered with an error
            return hits
        request = CompressionRequest(query=query, passages=[h.passage for h in hits], budget=budget)
        return await self.compress(request)

    def health(self) -> dict[str, Any]:
        stats = self.cache.stats()
        cache_ok = self.cache.ping()
        return {"loaded": self.loaded, "method": self.method, "config_hash": self.compressor.config_hash,
                "cache": {**stats, "ok": cache_ok, "degraded": not cache_ok or stats.get("degraded", False)},
                "batches": self.batches, "fast_hits": self.fast_hits,
                "segment_hits": self.compressor.segment_hits, "placement": placement()}

    def check_health(self) -> None:
        """Serve's periodic check (a raise replaces the replica): the method's compressor exists
        and no batch is wedged. An unreachable cache is not a failure here: a new replica would
        not bring Redis back; requests are served uncached and ``/readyz`` says ``degraded``."""
        if self.compressor is None:
            raise RuntimeError(f"compressor {self.method} is not built")
        self.watchdog.check(f"compressor {self.method}")

    def clear_cache(self) -> None:
        self.cache.clear()


@serve.deployment(name="Compressor", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                  max_queued_requests=32)
class CompressorDeployment(_CompressStage):
    """Serves one text compression method (see :class:`_CompressStage`)."""


@serve.deployment(name="Encoder", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                  max_queued_requests=16)
class EncoderDeployment(_CompressStage):
    """Serves a soft-token method (``arc``: ARC-Encoder) with its own replicas and GPU share:
    the same ``compress_with_cache`` over ``compress_batch`` as :class:`CompressorDeployment`,
    soft tokens cached per segment (fp16 bytes) in the same segment cache. Results leave the
    replica with their soft tokens as a little-endian float16 numpy array (Ray ships arrays
    without pickling a tensor); the ingress encodes them (``/v1/compress``) or hands them to the
    reader (``/v1/answer``, chat), which refuses vectors made for another model (422)."""

    def _warmup_budget(self) -> Budget | None:
        return Budget(tokens=4096) if "tokens" in self.compressor.budget_modes else None

    def _ship(self, result):
        from ragpress.services.protocol import soft_array

        if result.soft_tokens is not None:
            result.soft_tokens = soft_array(result.soft_tokens)
        return result

    def health(self) -> dict[str, Any]:
        out = super().health()
        try:
            out["soft_reader"] = self.compressor.reader_id
        except (RagpressError, AttributeError):
            out["soft_reader"] = None
        return out


@serve.deployment(name="Retriever", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64,
                  max_queued_requests=64)
class RetrieverDeployment:
    """FAISS retrieval over a saved :class:`~ragpress.indexes.VectorIndex` (the shipped sample
    index when ``index_path`` is None)."""

    def __init__(self, index_path: str | None = None):
        from ragpress.indexes import VectorIndex
        from ragpress.pipelines.sample import ensure_sample_index

        t0 = time.perf_counter()
        self.index_path = str(index_path or ensure_sample_index(show_progress=False))
        self.index = VectorIndex.load(self.index_path)
        self.index.search(["warm-up query"], k=1)  # loads the embedder
        self.loaded = True
        self.watchdog = Watchdog()
        log.info("retriever ready (%d passages) in %.1f s", len(self.index), time.perf_counter() - t0)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        if "max_batch_size" in user_config:
            self.search.set_max_batch_size(int(user_config["max_batch_size"]))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def search(self, items: list[tuple[str, int]]) -> list[Any]:
        """Top-k hits for each ``(query, k)``: one embedding batch, one FAISS call."""
        k_max = max(k for _, k in items)
        try:
            hits = await self.watchdog.run(self.index.search, [q for q, _ in items], k_max)
        except RagpressError as exc:
            return [_error(exc) for _ in items]
        return [h[:k] for h, (_, k) in zip(hits, items)]

    def health(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "passages": len(self.index), "index": self.index_path, "placement": placement()}

    def check_health(self) -> None:
        """Serve's periodic check: the index is loaded and no search is wedged."""
        if not self.loaded or len(self.index) == 0:
            raise RuntimeError(f"the retriever's index {self.index_path} is not loaded")
        self.watchdog.check("retriever")


_WARMUP_QUERY = "What does NamedTemporaryFile return?"


@serve.deployment(name="Reader", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                  max_queued_requests=16)
class ReaderDeployment:
    """Serves one reader (:func:`ragpress.readers.create_reader`). ``user_config`` (live):
    ``{"max_batch_size": 4, "batch_wait_timeout_s": 0.01}``. Every method returns
    ``{"result": ..., "error": ..., "status": ...}`` (errors as typed dicts, like the compressor's);
    :meth:`stream` yields ``{"text": piece}`` items then ``{"answer": Answer}`` (or ``{"error"...}``)."""

    def __init__(self, name: str = "local", config: dict[str, Any] | None = None, warmup: bool = True):
        from ragpress.readers import create_reader

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.name = name
        self.reader = create_reader(name, dict(config or {}))
        self.loaded = False
        self.batches = 0
        self.empty_answers = 0
        self.watchdog = Watchdog()
        if warmup:
            self._warmup()
        else:
            self.loaded = True

    def _warmup(self) -> None:
        """Load the model now (a local reader generates one token; an upstream reader only builds
        its client: a remote server that is down must not keep the service from starting)."""
        t0 = time.perf_counter()
        try:
            self.reader.count_tokens("warm-up")  # loads the tokenizer (lazy imports are not thread-safe)
            if self.name == "local":
                prompts = self.reader.prepare([_WARMUP_QUERY], [_WARMUP_PASSAGE], max_new_tokens=1)
                self.reader.generate_batch(prompts)
        except RagpressError as exc:
            log.warning("warm-up of reader %s failed: %s", self.name, exc.message)
        self.loaded = True
        log.info("reader %s ready in %.1f s", self.name, time.perf_counter() - t0)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        if "max_batch_size" in user_config:
            self._batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self._batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def info(self) -> dict[str, Any]:
        return {"reader": self.name, "model_id": self.reader.model_id, "config_hash": self.reader.config_hash,
                "max_new_tokens": self.reader.config.max_new_tokens}

    # ------------------------------------------------------------------ prompts
    def _prepare(self, query: str, context: Any, task: str, truncate: bool | None,
                 max_new_tokens: int | None):
        return self.reader.prepare([query], [context], task, truncate, max_new_tokens)[0]

    def _check_fits(self, prompt) -> None:
        """A chat prompt is the client's own messages: never cut, it fits or is a 422 (soft
        tokens: only in the reader they were made for, else a 422 too)."""
        from ragpress.core.errors import InvalidRequestError

        if prompt.soft is not None:
            self.reader.check_soft(prompt.soft)
        try:
            self.reader._fit(prompt)
        except RagpressError:
            raise
        except (ValueError, TypeError, KeyError) as exc:  # the chat template refuses these messages
            raise InvalidRequestError(f"reader {self.reader.model_id!r} cannot render these messages "
                                      f"({type(exc).__name__}: {exc})") from None
        except Exception as exc:
            if not type(exc).__module__.startswith("jinja2"):
                raise
            raise InvalidRequestError(f"reader {self.reader.model_id!r} cannot render these messages "
                                      f"({type(exc).__name__}: {exc})") from None

    async def prompt_tokens(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Tokens of ``messages`` rendered as this reader's prompt (e.g. before compression)."""
        from ragpress.readers import Prompt

        try:
            n = await asyncio.to_thread(self.reader.prompt_tokens, Prompt(messages=messages))
        except RagpressError as exc:
            return _error(exc)
        return {"result": n, "error": None, "status": 200}

    # ------------------------------------------------------------------ generation
    def _with_tensor(self, prompt):
        """A prompt whose soft tokens came as an array (they cross deployments as float16
        numpy arrays), with them as the torch tensor a local reader embeds."""
        if prompt.soft is None or hasattr(prompt.soft.embeds, "detach") or not self.reader.supports_soft:
            return prompt
        import numpy as np
        import torch

        from ragpress.readers import SoftContext

        embeds = torch.from_numpy(np.array(prompt.soft.embeds, dtype=np.float16))  # a writable copy
        return prompt.model_copy(update={"soft": SoftContext(embeds=embeds, reader=prompt.soft.reader)})

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _batched(self, prompts: list[Any]) -> list[dict[str, Any]]:
        try:
            prompts = [self._with_tensor(p) for p in prompts]
            answers = await self.watchdog.run(self.reader.generate_batch, prompts)
        except RagpressError as exc:  # upstream down, model cannot load: every prompt gets it
            return [_error(exc) for _ in prompts]
        self.batches += 1
        self.empty_answers += sum(a.empty for a in answers)
        return [{"result": a, "error": None, "status": 200} for a in answers]

    async def generate(self, prompt) -> dict[str, Any]:
        """One :class:`~ragpress.readers.Prompt` -> its :class:`~ragpress.readers.Answer`, batched
        with concurrent ones."""
        return await self._batched(prompt)

    async def chat(self, prompt) -> dict[str, Any]:
        """Generate from the client's messages (checked to fit the window, never cut)."""
        try:
            await asyncio.to_thread(self._check_fits, prompt)
        except RagpressError as exc:
            return _error(exc)
        return await self._batched(prompt)

    async def read(self, query: str, context: Any, task: str = "qa", truncate: bool | None = None,
                   max_new_tokens: int | None = None) -> dict[str, Any]:
        """Prompt (template of ``task``, fitted to the window) + generate, in one call. ``context``:
        text, None, or a :class:`~ragpress.readers.SoftContext` (soft tokens as an array; a
        reader that takes text only, or another model than theirs, answers a typed 422)."""
        try:
            prompt = await asyncio.to_thread(self._prepare, query, context, task, truncate, max_new_tokens)
        except RagpressError as exc:
            return _error(exc)
        return await self._batched(prompt)

    async def prepare(self, query: str, context: Any, task: str = "qa", truncate: bool | None = None,
                      max_new_tokens: int | None = None) -> dict[str, Any]:
        """The fitted prompt only (the ingress streams it next, so a too-long context is a 422
        before the event stream starts)."""
        try:
            prompt = await asyncio.to_thread(self._prepare, query, context, task, truncate, max_new_tokens)
        except RagpressError as exc:
            return _error(exc)
        return {"result": prompt, "error": None, "status": 200}

    async def stream(self, prompt, check: bool = False):
        """Serve streaming (``handle.options(stream=True).stream.remote(prompt)``): yields
        ``{"text": piece}`` as the reader writes, then ``{"answer": Answer}``; a failure is one
        ``{"result": None, "error": body, "status": s}`` item. The reader's generator runs in one
        worker thread from start to end (torch's inference mode is per thread) and hands its
        items over through a queue; a client that goes away stops it at the next piece."""
        import threading

        from ragpress.readers import Answer

        if check:
            try:
                await asyncio.to_thread(self._check_fits, prompt)
            except RagpressError as exc:
                yield _error(exc)
                return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        end = object()

        def produce() -> None:
            it = self.reader.stream(self._with_tensor(prompt))
            try:
                for item in it:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                    if stop.is_set():
                        break
            except RagpressError as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            except Exception as exc:  # a bug: logged here, raised to the caller below
                log.exception("reader stream failed")
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                it.close()
                loop.call_soon_threadsafe(queue.put_nowait, end)

        watched = self.watchdog.start()
        threading.Thread(target=produce, name="reader-stream", daemon=True).start()
        try:
            while (item := await queue.get()) is not end:
                if isinstance(item, Answer):
                    self.empty_answers += int(item.empty)
                    yield {"answer": item}
                elif isinstance(item, RagpressError):
                    yield _error(item)
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield {"text": item}
        finally:
            stop.set()
            self.watchdog.done(watched)

    def check_health(self) -> None:
        """Serve's periodic check: the reader is built and no generation is wedged. An upstream
        server that is down is not a failure here (a new replica would not bring it back); its
        requests get a typed 502/503."""
        if self.reader is None:
            raise RuntimeError(f"reader {self.name} is not built")
        self.watchdog.check(f"reader {self.name}")

    def health(self) -> dict[str, Any]:
        out = {"loaded": self.loaded, "reader": self.name, "model_id": self.reader.model_id,
               "batches": self.batches, "empty_answers": self.empty_answers, "placement": placement()}
        if self.name == "local" and self.loaded:
            out["context_window"] = self.reader.context_window
        return out


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """The HTTP front door. ``compressors`` maps method name -> compressor handle; the FastAPI
    app is built per replica by :func:`ragpress.services.api.create_api`."""

    def __init__(self, retriever, compressors: dict[str, Any], settings: dict[str, Any] | None = None,
                 reader=None):
        from ragpress.services.api import ServiceLimits
        from ragpress.services.metrics import ServiceMetrics

        self.retriever = retriever
        self.reader = reader
        self.compressors = dict(compressors)
        self.settings = settings or {}
        self.limits = ServiceLimits(**self.settings.get("limits", {}))
        self.default_method = self.settings.get("default_method") or next(iter(self.compressors))
        self.default_top_k = int(self.settings.get("default_top_k", 5))
        self.metrics = ServiceMetrics()

    def __serve_build_asgi_app__(self):
        from ragpress.services.api import create_api

        return create_api(self)
