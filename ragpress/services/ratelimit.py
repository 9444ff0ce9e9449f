"""Per-key rate and concurrency limits shared by every ingress replica, kept in Redis.

Each API key has a token bucket (``requests_per_s`` refill, ``burst`` size: a request takes one
token) and a bound on its requests in flight (``max_in_flight``). :class:`Limiter` keeps both in
the Redis of the segment cache, so N ingress replicas enforce one limit together instead of N
times it, and falls back to the same limits in the replica's memory while Redis is unreachable
or when the service has no Redis at all (``cache.url`` unset, ``memory://`` or ``none://``).

**Why one Lua script, not the ``limits`` library.** The whole decision (refill, check the
in-flight leases, take a token, add a lease) is one ``EVALSHA`` of :data:`ACQUIRE_LUA`: atomic
on the server, one round trip per request, and timed by the server's ``TIME``, so the replicas'
clocks never enter into it. ``limits`` offers fixed and moving windows (no token bucket with a
burst), no concurrency limit, a clock on the client side for some strategies, and builds its own
Redis client from a storage URI; the script reuses the segment cache's client instead (password,
TLS, ``url_env`` and ``key_prefix`` exactly as :func:`ragpress.core.cache.make_cache` reads
them) and adds no dependency.

Redis keys, per API key (``<id>``: the first 32 hex digits of the key's SHA-256; the hash tag
keeps both keys of one API key in one cluster slot):

* ``<prefix>ratelimit:{<id>}:bucket``: a hash ``tokens`` / ``ts`` (server µs); it expires once
  the bucket would be full again, so idle keys vanish;
* ``<prefix>ratelimit:{<id>}:in_flight``: a sorted set of leases (member: replica id and a
  counter, score: the lease's expiry in server µs). A replica renews its live leases every
  ``lease_s / 3``, releases each one when its response ends (``ZREM``), and a crashed replica's
  leases lapse after ``lease_s``: it cannot hold slots forever.

**Fallback and reconnect.** A Redis error (refused, timeout, ...) switches the replica to its
local buckets and slots for ``retry_after_s``; then one request (never all of them at once) tries
Redis again, and on success the shared limits apply again. :meth:`Limiter.status` says which
backend is in use and why (``degraded`` while Redis is configured but unreachable).

>>> limiter = Limiter(redis_client=None)                                    # per replica only
>>> grant = limiter.acquire("k1", KeyLimits(requests_per_s=20, burst=40, max_in_flight=16))
>>> grant.allowed, grant.backend, grant.remaining
(True, 'local', 39)
>>> grant.release()
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RATE_LIMITED, TOO_MANY_IN_FLIGHT = "rate_limited", "too_many_in_flight"
IN_FLIGHT_RETRY_AFTER_S = 1.0  # a slot's release cannot be foreseen: retry in a second

# KEYS[1]: the bucket (hash: tokens, ts), KEYS[2]: the in-flight leases (zset: member -> expiry µs)
# ARGV: rate (tokens/s, 0 = no rate limit), burst, max in flight (0 = none), lease ms, lease member
# -> {verdict (0 granted, 1 rate limited, 2 too many in flight), tokens left (floor), retry after ms}
ACQUIRE_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_in_flight, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = burst
if rate > 0 then
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  if b[1] and b[2] then
    tokens = math.min(burst, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate / 1000000)
  end
end
if max_in_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_in_flight then
    return {2, math.floor(tokens), 1000}
  end
end
if rate > 0 then
  if tokens < 1 then
    return {1, 0, math.ceil((1 - tokens) * 1000 / rate)}
  end
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
end
if max_in_flight > 0 then
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + lease_ms * 1000), ARGV[5])
  redis.call('PEXPIRE', KEYS[2], lease_ms + 1000)
end
return {0, math.floor(tokens), 0}
"""

# KEYS[1]: in-flight leases; ARGV[1]: lease ms, ARGV[2..]: members to renew (those still there)
RENEW_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local expiry = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1]) * 1000)
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = expiry
  args[#args + 1] = ARGV[i]
end
if #args > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(args))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
end
return 0
"""


@dataclass(frozen=True)
class KeyLimits:
    """One key's limits: ``requests_per_s`` None = no rate limit, ``max_in_flight`` None = no
    concurrency limit."""

    requests_per_s: float | None = None
    burst: int = 1
    max_in_flight: int | None = None

    @property
    def off(self) -> bool:
        return self.requests_per_s is None and self.max_in_flight is None


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; each request takes one (per replica)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.t = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


@dataclass
class Grant:
    """The limiter's answer for one request. When ``allowed``, the request holds an in-flight
    slot (if its key has a concurrency limit) until :meth:`release` (idempotent)."""

    allowed: bool
    backend: str  # "redis" | "local"
    limits: KeyLimits
    remaining: int | None = None  # tokens left in the bucket (None: no rate limit)
    reason: str | None = None  # RATE_LIMITED | TOO_MANY_IN_FLIGHT when refused
    retry_after_s: float = 0.0
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``X-RateLimit-Backend`` and, with a rate limit, ``X-RateLimit-Limit`` (the burst) and
        ``X-RateLimit-Remaining`` (tokens left); ``Retry-After`` (whole seconds) when refused."""
        out = [(b"x-ratelimit-backend", self.backend.encode())]
        if self.limits.requests_per_s is not None:
            out += [(b"x-ratelimit-limit", str(self.limits.burst).encode()),
                    (b"x-ratelimit-remaining", str(max(0, self.remaining or 0)).encode())]
        if not self.allowed:
            out.append((b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode()))
        return out


class _LocalKey:
    def __init__(self, limits: KeyLimits, clock: Callable[[], float]):
        self.limits = limits
        self.bucket = TokenBucket(limits.requests_per_s, limits.burst, clock) if limits.requests_per_s else None
        self.in_flight = 0


class Limiter:
    """Per-key token buckets and in-flight slots: in Redis (``redis_client``, shared by every
    replica) with the replica's memory as the fallback, or in memory only (``redis_client``
    None). ``key_prefix`` namespaces the Redis keys (the cache's ``key_prefix``);
    ``retry_after_s`` is how long a replica stays on its local limits after a Redis error;
    ``lease_s`` is how long an in-flight slot outlives a replica that stopped renewing it.
    ``unshared_reason`` is what :meth:`status` says when there is no Redis."""

    def __init__(self, redis_client: Any = None, *, key_prefix: str = "", retry_after_s: float = 1.0,
                 lease_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 unshared_reason: str = "no Redis configured: limits are per ingress replica",
                 store_name: str | None = None):
        self.redis = redis_client
        self.key_prefix = key_prefix
        self.retry_after_s = float(retry_after_s)
        self.lease_s = float(lease_s)
        self.clock = clock
        self.unshared_reason = unshared_reason
        self.store_name = store_name
        self.errors = 0  # failed Redis calls (each starts or extends a spell on local limits)
        self.last_error: str | None = None
        self._down_until = 0.0
        self._probe = threading.Lock()  # after a failure, one caller at a time tries Redis again
        self._lock = threading.Lock()
        self._local: dict[str, _LocalKey] = {}
        self._replica = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._leases: dict[str, set[str]] = {}  # in-flight key -> live lease members of this replica
        self._renewer: threading.Thread | None = None
        self._closed = threading.Event()
        if redis_client is not None:
            self._acquire_script = redis_client.register_script(ACQUIRE_LUA)
            self._renew_script = redis_client.register_script(RENEW_LUA)

    # ------------------------------------------------------------------ state
    @property
    def shared(self) -> bool:
        """Redis is configured (whether or not it answers right now)."""
        return self.redis is not None

    @property
    def degraded(self) -> bool:
        return self.shared and self.last_error is not None

    def status(self) -> dict[str, Any]:
        """``{"backend": "redis" | "local", "degraded": bool, "reason": str | None, ...}``.
        While degraded, and the retry interval has passed, it tries Redis once (a ``PING``,
        at most one socket timeout): call it off the event loop."""
        if self.degraded:
            self._call(self.redis.ping)
        if not self.shared:
            backend, reason = "local", self.unshared_reason
        elif self.last_error is not None:
            backend = "local"
            reason = (f"Redis unreachable ({self.last_error}): limits are per ingress replica until it answers "
                      f"again (retried every {self.retry_after_s:g} s)")
        else:
            backend, reason = "redis", None
        return {"backend": backend, "degraded": self.degraded, "reason": reason, "shared": self.shared,
                "store": self.store_name, "redis_errors": self.errors}

    def _call(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """``(True, fn())`` through Redis, or ``(False, None)`` when Redis is skipped (down, in
        its retry interval, or another caller is probing it) or fails now."""
        probing = False
        if self.last_error is not None:
            if self.clock() < self._down_until or not self._probe.acquire(blocking=False):
                return False, None
            probing = True
        try:
            out = fn()
        except Exception as exc:  # any Redis failure: limits go local, the request is still decided
            self._failed(exc)
            return False, None
        finally:
            if probing:
                self._probe.release()
        if self.last_error is not None:
            with self._lock:
                self.last_error = None
            log.warning("rate limits: Redis answers again; limits are shared by every ingress replica again")
        return True, out

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self.last_error is None
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._down_until = self.clock() + self.retry_after_s
        if first:
            log.warning("rate limits: Redis failed (%s); limits are per ingress replica until it answers "
                        "(retried every %g s)", self.last_error, self.retry_after_s)

    # ------------------------------------------------------------------ acquire / release
    def redis_keys(self, key_id: str) -> tuple[str, str]:
        base = f"{self.key_prefix}ratelimit:{{{key_id}}}"
        return f"{base}:bucket", f"{base}:in_flight"

    def acquire(self, key_id: str, limits: KeyLimits) -> Grant:
        """Take a token and an in-flight slot for ``key_id`` (in Redis when it answers, else
        locally); a refused :class:`Grant` says why and when to retry."""
        if limits.off:
            return Grant(True, "redis" if self.shared and self.last_error is None else "local", limits)
        if self.redis is not None:
            member = f"{self._replica}:{next(self._ids)}"
            bucket, in_flight = self.redis_keys(key_id)
            args = [limits.requests_per_s or 0, limits.burst, limits.max_in_flight or 0,
                    int(self.lease_s * 1000), member]
            ok, out = self._call(lambda: self._acquire_script(keys=[bucket, in_flight], args=args))
            if ok:
                verdict, tokens, retry_ms = (int(x) for x in out)
                remaining = tokens if limits.requests_per_s is not None else None
                if verdict:
                    return Grant(False, "redis", limits, remaining, (RATE_LIMITED, TOO_MANY_IN_FLIGHT)[verdict - 1],
                                 retry_ms / 1000)
                release = None
                if limits.max_in_flight is not None:
                    self._hold(in_flight, member)
                    release = lambda: self._release_redis(in_flight, member)  # noqa: E731
                return Grant(True, "redis", limits, remaining, _release=release)
        return self._acquire_local(key_id, limits)

    def _acquire_local(self, key_id: str, limits: KeyLimits) -> Grant:
        with self._lock:
            local = self._local.get(key_id)
            if local is None or local.limits != limits:
                local = self._local[key_id] = _LocalKey(limits, self.clock)
            if limits.max_in_flight is not None and local.in_flight >= limits.max_in_flight:
                remaining = int(local.bucket.tokens) if local.bucket else None
                return Grant(False, "local", limits, remaining, TOO_MANY_IN_FLIGHT, IN_FLIGHT_RETRY_AFTER_S)
            wait = local.bucket.take() if local.bucket else 0.0
            remaining = int(local.bucket.tokens) if local.bucket else None
            if wait > 0:
                return Grant(False, "local", limits, remaining, RATE_LIMITED, wait)
            release = None
            if limits.max_in_flight is not None:
                local.in_flight += 1
                release = lambda: self._release_local(local)  # noqa: E731
            return Grant(True, "local", limits, remaining, _release=release)

    def _release_local(self, local: _LocalKey) -> None:
        with self._lock:
            local.in_flight -= 1

    def _release_redis(self, in_flight: str, member: str) -> None:
        with self._lock:
            members = self._leases.get(in_flight)
            if members is not None:
                members.discard(member)
                if not members:
                    del self._leases[in_flight]
        # when Redis is down the lease lapses on its own after lease_s
        self._call(lambda: self.redis.zrem(in_flight, member))

    def _hold(self, in_flight: str, member: str) -> None:
        with self._lock:
            self._leases.setdefault(in_flight, set()).add(member)
            if self._renewer is None and not self._closed.is_set():
                self._renewer = threading.Thread(target=self._renew_loop, name="ratelimit-lease-renewer",
                                                 daemon=True)
                self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._closed.wait(self.lease_s / 3):
            self.renew()

    def renew(self) -> None:
        """Extend this replica's live in-flight leases by ``lease_s`` (the renewer thread calls
        it every ``lease_s / 3``)."""
        with self._lock:
            leases = {k: sorted(v) for k, v in self._leases.items() if v}
        if not leases:
            return
        lease_ms = int(self.lease_s * 1000)

        def renew_all() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for key, members in leases.items():
                self._renew_script(keys=[key], args=[lease_ms, *members], client=pipe)
            pipe.execute()

        self._call(renew_all)

    def in_flight(self, key_id: str) -> int:
        """Requests of ``key_id`` in flight: across replicas (Redis) or in this replica (local)."""
        if self.shared and self.last_error is None:
            ok, n = self._call(lambda: self.redis.zcard(self.redis_keys(key_id)[1]))
            if ok:
                return int(n)
        with self._lock:
            local = self._local.get(key_id)
            return local.in_flight if local else 0

    def close(self) -> None:
        """Stop renewing leases (those still held lapse after ``lease_s``)."""
        self._closed.set()
