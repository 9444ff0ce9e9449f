"""The segment cache: compressed segments (and the query-independent work behind them) under
content-hash keys (:mod:`ragpress.core.cache_keys`), in Redis or in process.

* :class:`InProcessCache`: the embedded default, an LRU bounded in bytes, with a TTL;
* :class:`RedisCache`: binary values, a TTL on every key, and an optional memory bound
  (``maxmemory`` + ``allkeys-lru``) applied to the server when allowed;
* :class:`ResilientCache`: wraps either; a cache failure never fails a request: the call is
  answered as a miss (reads) or dropped (writes), counted, and the cache reports itself
  *degraded* until a later call succeeds again (retried after ``retry_after_s``).

:func:`compress_with_cache` is the one place where cached results are served and only the
misses compressed; the Serve deployment and library users (:class:`CachedCompressor`) call it.

>>> from ragpress.core.registry import create_compressor           # doctest: +SKIP
>>> cache = make_cache()                                             # doctest: +SKIP
>>> results, stats = compress_with_cache(create_compressor("truncate"), requests, cache)  # doctest: +SKIP
>>> stats.hits, stats.misses                                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ragpress.core.cache_keys import result_key
from ragpress.core.compressor import Compressor
from ragpress.core.errors import ConfigError, RagpressError
from ragpress.core.types import CompressionRequest, CompressionResult

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAGIC = b"RPC1"


# ---------------------------------------------------------------------------- codec
_SOFT_MAGIC = b"RPS1"


def encode_soft(tensor: Any) -> bytes:
    """Soft tokens (a ``[n, d]`` torch tensor or array) as float16 bytes: magic, rank, shape
    (uint32 each), then the raw little-endian fp16 values."""
    import numpy as np

    arr = tensor.detach().to("cpu").float().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    arr = np.ascontiguousarray(arr, dtype="<f2")
    head = np.array([arr.ndim, *arr.shape], dtype="<u4").tobytes()
    return _SOFT_MAGIC + head + arr.tobytes()


def decode_soft(blob: bytes) -> Any:
    """The fp16 torch tensor :func:`encode_soft` wrote (bit-exact)."""
    import numpy as np
    import torch

    if not blob.startswith(_SOFT_MAGIC):
        raise ValueError("not a ragpress soft-token entry")
    at = len(_SOFT_MAGIC)
    ndim = int(np.frombuffer(blob, dtype="<u4", count=1, offset=at)[0])
    shape = tuple(int(x) for x in np.frombuffer(blob, dtype="<u4", count=ndim, offset=at + 4))
    data = np.frombuffer(blob, dtype="<f2", offset=at + 4 * (ndim + 1))
    if data.size != int(np.prod(shape)):
        raise ValueError("truncated soft-token entry")
    return torch.from_numpy(data.reshape(shape).copy())


def encode_result(result: CompressionResult) -> bytes:
    """Bytes of a result; soft tokens (excluded from JSON, not from the cache) go in as fp16
    bytes (:func:`encode_soft`), never as a pickled tensor."""
    soft = None if result.soft_tokens is None else encode_soft(result.soft_tokens)
    payload = (result.model_dump(mode="python", exclude={"soft_tokens"}), soft)
    return _MAGIC + pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def decode_result(blob: bytes) -> CompressionResult:
    if not blob.startswith(_MAGIC):
        raise ValueError("not a ragpress cache entry")
    data, soft = pickle.loads(blob[len(_MAGIC):])
    data.pop("ratio", None)  # computed field
    result = CompressionResult.model_validate(data)
    result.soft_tokens = decode_soft(soft) if isinstance(soft, bytes) else soft
    return result


# ---------------------------------------------------------------------------- backends
class SegmentCache(ABC):
    """A bytes-valued key/value cache with batched reads and writes."""

    kind: str = "abstract"

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values for ``keys`` in order, None where absent."""

    @abstractmethod
    def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        """Store every item (``ttl_s`` None: the cache's default TTL)."""

    def ping(self) -> bool:
        """Whether the backend answers."""
        return True

    def clear(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def memoize_many(self, keys: Sequence[str], compute: Callable[[list[int]], Sequence[T]],
                     encode: Callable[[T], bytes] = pickle.dumps,
                     decode: Callable[[bytes], T] = pickle.loads) -> tuple[list[T], int]:
        """Values for ``keys``: cached ones decoded, the rest from ``compute(missing_positions)``
        (called once, with the positions of the misses) and written back. Returns
        ``(values, hits)``. Compressors use this for query-independent work (embeddings,
        per-line perplexities, summaries) keyed with :func:`ragpress.core.cache_keys.segment_key`."""
        blobs = self.get_many(keys)
        values: list[Any] = [None] * len(keys)
        missing: list[int] = []
        for i, blob in enumerate(blobs):
            if blob is None:
                missing.append(i)
                continue
            try:
                values[i] = decode(blob)
            except Exception:  # corrupt or foreign entry: recompute
                missing.append(i)
        if missing:
            computed = list(compute(missing))
            for i, v in zip(missing, computed):
                values[i] = v
            self.set_many({keys[i]: encode(v) for i, v in zip(missing, computed)})
        return values, len(keys) - len(missing)


class NullCache(SegmentCache):
    """Caches nothing (``cache: none``)."""

    kind = "none"

    def get_many(self, keys):
        return [None] * len(keys)

    def set_many(self, items, ttl_s=None):
        return None

    def clear(self) -> None:
        return None


class InProcessCache(SegmentCache):
    """Thread-safe LRU cache bounded by the total size of its values, with a TTL.

    >>> c = InProcessCache(max_bytes=10)
    >>> c.set_many({"a": b"12345", "b": b"67890"}); c.set_many({"c": b"x"})
    >>> c.get_many(["a", "b", "c"])
    [None, b'67890', b'x']
    """

    kind = "memory"

    def __init__(self, max_bytes: int = 256 * 2**20, ttl_s: float | None = 24 * 3600):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_many(self, keys):
        now = time.monotonic()
        out: list[bytes | None] = []
        with self._lock:
            for k in keys:
                entry = self._data.get(k)
                if entry is None:
                    out.append(None)
                elif entry[1] is not None and entry[1] < now:
                    self._drop(k)
                    out.append(None)
                else:
                    self._data.move_to_end(k)
                    out.append(entry[0])
        return out

    def set_many(self, items, ttl_s=None):
        ttl = self.ttl_s if ttl_s is None else ttl_s
        expires = None if ttl is None else time.monotonic() + ttl
        with self._lock:
            for k, v in items.items():
                if len(v) > self.max_bytes:
                    continue
                if k in self._data:
                    self._drop(k)
                self._data[k] = (v, expires)
                self._bytes += len(v)
            while self._bytes > self.max_bytes and self._data:
                self._drop(next(iter(self._data)))

    def _drop(self, key: str) -> None:
        value, _ = self._data.pop(key)
        self._bytes -= len(value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def stats(self):
        return {"kind": self.kind, "entries": len(self._data), "bytes": self._bytes, "max_bytes": self.max_bytes}


class RedisCache(SegmentCache):
    """Redis backend: ``MGET`` for reads, one pipelined ``SET key value EX ttl`` batch for writes.

    Password and TLS come with the URL (what redis-py's ``from_url`` reads):
    ``redis://:PASSWORD@host:6379/0``, ``redis://USER:PASSWORD@host``, or TLS with ``rediss://``
    (``?ssl_ca_certs=/path/ca.pem`` for a private CA, ``ssl_cert_reqs=none`` to skip the check,
    ``ssl_certfile`` / ``ssl_keyfile`` for mutual TLS). The URL is never logged with its
    credentials (:func:`_redact`). ``namespace`` prefixes every key, so deployments that share a
    Redis do not read (or clear) each other's entries.

    ``max_memory`` (e.g. ``"256mb"``) asks the server for ``maxmemory`` with ``allkeys-lru``
    eviction; servers that forbid ``CONFIG SET`` (managed Redis) keep their own policy.
    Timeouts are short so a stopped server costs milliseconds, not seconds.
    """

    kind = "redis"

    def __init__(self, url: str, ttl_s: float | None = 24 * 3600, max_memory: str | None = None,
                 socket_timeout_s: float = 0.5, namespace: str = ""):
        import redis

        self.url = url
        self.ttl_s = ttl_s
        self.max_memory = max_memory
        self.namespace = namespace
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                            socket_connect_timeout=socket_timeout_s, health_check_interval=0)
        self._configured = False

    def _k(self, key: str) -> str:
        return self.namespace + key

    def _configure(self) -> None:
        if self._configured:
            return
        self._configured = True
        if self.max_memory:
            try:
                self._client.config_set("maxmemory", self.max_memory)
                self._client.config_set("maxmemory-policy", "allkeys-lru")
            except Exception as exc:  # managed servers refuse CONFIG: keep theirs
                log.warning("redis refused CONFIG SET maxmemory (%s); using the server's policy", exc)

    def get_many(self, keys):
        if not keys:
            return []
        self._configure()
        return list(self._client.mget([self._k(k) for k in keys]))

    def set_many(self, items, ttl_s=None):
        if not items:
            return
        self._configure()
        ttl = self.ttl_s if ttl_s is None else ttl_s
        pipe = self._client.pipeline(transaction=False)
        for k, v in items.items():
            pipe.set(self._k(k), v, ex=None if ttl is None else max(1, int(ttl)))
        pipe.execute()

    def ping(self) -> bool:
        return bool(self._client.ping())

    def clear(self) -> None:
        if self.namespace:
            for k in self._client.scan_iter(match=self.namespace + "*"):
                self._client.delete(k)
        else:
            self._client.flushdb()

    def stats(self):
        return {"kind": self.kind, "url": _redact(self.url), "max_memory": self.max_memory,
                "key_prefix": self.namespace}

    def __repr__(self) -> str:
        return f"RedisCache({_redact(self.url)!r}, namespace={self.namespace!r})"


_SECRET_PARAMS = re.compile(r"((?:^|[?&])(?:password|ssl_password|ssl_keyfile_password|username)=)[^&]*", re.I)


def _redact(url: str) -> str:
    """``redis://user:secret@host/0?password=x`` -> ``redis://***@host/0?password=***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head, q, query = rest.partition("?")
    if "@" in head:
        head = "***@" + head.rsplit("@", 1)[1]
    if q:
        query = _SECRET_PARAMS.sub(r"\1***", query)
    return f"{scheme}://{head}{q}{query}"


class ResilientCache(SegmentCache):
    """Wraps a backend so that its failures never reach the caller.

    A failed read answers "all misses", a failed write is dropped; both are counted in
    ``errors``. After a failure the backend is skipped for ``retry_after_s`` (so a dead server
    does not add a timeout to every request) and then tried again: when it answers, the cache
    is used again and ``degraded`` clears.
    """

    def __init__(self, backend: SegmentCache, retry_after_s: float = 1.0):
        self.backend = backend
        self.kind = backend.kind
        self.retry_after_s = retry_after_s
        self.errors = 0
        self.skipped = 0
        self.last_error: str | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        return self.last_error is not None

    def _available(self) -> bool:
        if time.monotonic() < self._down_until:
            with self._lock:
                self.skipped += 1
            return False
        return True

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._down_until = time.monotonic() + self.retry_after_s
        log.warning("segment cache (%s) failed, serving uncached: %s", self.kind, exc)

    def _ok(self) -> None:
        if self.last_error is not None:
            with self._lock:
                self.last_error = None

    def get_many(self, keys):
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            out = self.backend.get_many(keys)
        except Exception as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._ok()
        return out

    def set_many(self, items, ttl_s=None):
        if not items or not self._available():
            return
        try:
            self.backend.set_many(items, ttl_s)
        except Exception as exc:
            self._failed(exc)
            return
        self._ok()

    def ping(self) -> bool:
        try:
            ok = self.backend.ping()
        except Exception as exc:
            self._failed(exc)
            return False
        if ok:
            with self._lock:
                self.last_error = None
                self._down_until = 0.0
        return ok

    def clear(self) -> None:
        self.backend.clear()

    def stats(self):
        return {**self.backend.stats(), "errors": self.errors, "skipped": self.skipped,
                "degraded": self.degraded, "last_error": self.last_error}


def make_cache(url: str | None = None, ttl_s: float | None = 24 * 3600, max_bytes: int = 256 * 2**20,
               max_memory: str | None = None, retry_after_s: float = 1.0, key_prefix: str = "",
               url_env: str | None = None) -> ResilientCache:
    """The cache a URL names: ``None``/``memory://`` in process, ``redis://``/``rediss://``/
    ``unix://`` Redis (password and TLS in the URL, see :class:`RedisCache`), ``none://`` no
    caching; always wrapped in :class:`ResilientCache`. ``url_env`` names an environment variable
    that holds the URL instead (so a secret stays out of config files; it wins over ``url``).
    ``key_prefix`` keeps this deployment's Redis entries apart from others' on the same Redis."""
    if url_env:
        url = os.environ.get(url_env, "").strip()
        if not url:
            raise ConfigError(f"the cache URL comes from the environment variable {url_env}, which is not set")
    if url is None or url in ("", "memory", "memory://"):
        backend: SegmentCache = InProcessCache(max_bytes=max_bytes, ttl_s=ttl_s)
    elif url in ("none", "none://"):
        backend = NullCache()
    elif url.startswith(("redis://", "rediss://", "unix://")):
        backend = RedisCache(url, ttl_s=ttl_s, max_memory=max_memory, namespace=key_prefix)
    else:
        raise ConfigError(f"unsupported cache URL {_redact(url)!r}: use memory://, none:// or redis://HOST:PORT/DB")
    return ResilientCache(backend, retry_after_s=retry_after_s)


# ---------------------------------------------------------------------------- serving through the cache
@dataclass
class CacheStats:
    """What one :func:`compress_with_cache` call did."""

    hits: int = 0
    misses: int = 0
    errors: int = 0  # cache failures during the call (the requests were served uncached)
    timings: dict[str, float] = field(default_factory=dict)


def compress_with_cache(compressor: Compressor, requests: Sequence[CompressionRequest],
                        cache: SegmentCache | None, *, return_exceptions: bool = False
                        ) -> tuple[list[CompressionResult | RagpressError], CacheStats]:
    """Compress ``requests``, serving cached results and compressing only the misses (in one
    ``compress_batch`` call).

    Keys come from :func:`ragpress.core.cache_keys.result_key` (compressor name, config hash,
    model id, passages, budget, and the query for query-aware compressors). With
    ``return_exceptions`` a request that fails validation gets its :class:`RagpressError` in
    its slot instead of failing the whole batch (what the batching Serve deployment needs).
    Served-from-cache results carry ``cache_hits=1`` and a ``cache_read`` timing.
    """
    stats = CacheStats()
    out: list[Any] = [None] * len(requests)
    valid: list[tuple[int, CompressionRequest]] = []
    for i, r in enumerate(requests):
        try:
            valid.append((i, compressor.validate(r)))
        except RagpressError as exc:
            if not return_exceptions:
                raise
            out[i] = exc
    if not valid:
        return out, stats
    errors_before = getattr(cache, "errors", 0)
    name, chash, mid, qa = compressor.name, compressor.config_hash, compressor.model_id, compressor.query_aware
    keys = [result_key(name, chash, mid, r, qa) for _, r in valid]
    t0 = time.perf_counter()
    blobs = cache.get_many(keys) if cache is not None else [None] * len(keys)
    t_read = time.perf_counter() - t0
    todo: list[int] = []
    for j, ((i, _), blob) in enumerate(zip(valid, blobs)):
        result = None
        if blob is not None:
            try:
                result = decode_result(blob)
            except Exception:  # a corrupt or foreign entry is a miss
                result = None
        if result is None:
            todo.append(j)
            continue
        result.cache_hits = 1
        result.timings = {"cache_read": t_read / len(valid)}
        out[i] = result
        stats.hits += 1
    stats.timings["cache_read"] = t_read
    if todo:
        stats.misses = len(todo)
        t0 = time.perf_counter()
        if return_exceptions:
            computed = _compress_each_on_failure(compressor, [valid[j][1] for j in todo])
        else:
            computed = compressor.compress_batch([valid[j][1] for j in todo])
        stats.timings["compress"] = time.perf_counter() - t0
        fresh = {}
        for j, res in zip(todo, computed):
            out[valid[j][0]] = res
            if isinstance(res, CompressionResult):
                fresh[keys[j]] = encode_result(res)
        if cache is not None and fresh:
            t0 = time.perf_counter()
            cache.set_many(fresh)
            stats.timings["cache_write"] = time.perf_counter() - t0
    stats.errors = getattr(cache, "errors", 0) - errors_before
    return out, stats


def lookup_cached(compressor: Compressor, request: CompressionRequest,
                  cache: SegmentCache | None) -> CompressionResult | None:
    """The cached result of one request, or None (a miss, an invalid request, or a cache that
    failed: the caller then goes the normal way, which reports errors). One cache read; the
    Serve stage uses it to answer hits without waiting for a batch."""
    if cache is None:
        return None
    try:
        valid = compressor.validate(request)
    except RagpressError:
        return None
    key = result_key(compressor.name, compressor.config_hash, compressor.model_id, valid, compressor.query_aware)
    t0 = time.perf_counter()
    blob = cache.get_many([key])[0]
    if blob is None:
        return None
    try:
        result = decode_result(blob)
    except Exception:  # corrupt or foreign entry: a miss
        return None
    result.cache_hits = 1
    result.timings = {"cache_read": time.perf_counter() - t0}
    return result


def _compress_each_on_failure(compressor: Compressor, requests: list[CompressionRequest]) -> list[Any]:
    """One batch call; if it raises a RagpressError, retry one by one so only the bad request fails."""
    try:
        return compressor.compress_batch(requests)
    except RagpressError:
        if len(requests) == 1:
            raise
    out: list[Any] = []
    for r in requests:
        try:
            out.append(compressor.compress_batch([r])[0])
        except RagpressError as exc:
            out.append(exc)
    return out


class CachedCompressor:
    """A compressor whose results go through a segment cache; same ``compress`` /
    ``compress_batch`` as the compressor it wraps. The compressor's query-independent work
    (embeddings of passages' sentences, summaries, per-line perplexities) goes through the same
    cache, so a passage seen again under a new query is not embedded (summarised, ...) again.

    >>> cc = CachedCompressor(create_compressor("embed-sentences"), make_cache("redis://localhost:6379/0"))  # doctest: +SKIP
    >>> cc.compress(request).cache_hits    # 1 the second time                                              # doctest: +SKIP
    """

    def __init__(self, compressor: Compressor, cache: SegmentCache | None = None):
        self.compressor = compressor
        self.cache = cache if cache is not None else make_cache()
        self.name = compressor.name
        compressor.segment_cache = self.cache  # query-independent work too (embeddings, summaries, ...)

    def compress(self, request: CompressionRequest) -> CompressionResult:
        return self.compress_batch([request])[0]

    def compress_batch(self, requests: Sequence[CompressionRequest]) -> list[CompressionResult]:
        results, _ = compress_with_cache(self.compressor, requests, self.cache)
        return results  # type: ignore[return-value]
