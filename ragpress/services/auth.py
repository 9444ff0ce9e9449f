"""Optional API keys with per-key rate and concurrency limits, checked at the ingress before
anything else runs.

Off unless keys are configured. A key comes from the config as its SHA-256 (so the config holds
no secret) or from an environment variable (hashed at start, the plain key is not kept)::

    auth:
      keys:
        - {name: team-a, sha256: 9f86d08...}                      # printf %s "$KEY" | sha256sum
        - {name: ops, key_env: RAGPRESS_OPS_KEY, scopes: [metrics]}
        - {name: batch, key_env: RAGPRESS_BATCH_KEY, scopes: [compress],
           rate_limit: {requests_per_s: 50, burst: 100}, max_in_flight: 64}
        - {name: trusted, key_env: RAGPRESS_TRUSTED_KEY, rate_limit: off, max_in_flight: off}
      keys_env: RAGPRESS_API_KEYS       # comma-separated plain keys with every scope (the default name)
      rate_limit: {requests_per_s: 20, burst: 40}   # per key, for keys without their own (the default)
      max_in_flight: 16                             # per key, for keys without their own (the default)
      protect_metrics: false

Clients send ``Authorization: Bearer <key>``. A missing or unknown key is 401
(``missing_api_key`` / ``invalid_api_key``, with ``WWW-Authenticate: Bearer``), a key without the
route's scope 403 (``forbidden``), a key over its rate 429 (``rate_limited``), a key with
``max_in_flight`` requests already in flight 429 (``too_many_in_flight``); a 429 carries
``Retry-After`` in whole seconds. Bodies are the service's error JSON, OpenAI-shaped on
``/v1/chat/completions``. Open without a key: ``/healthz``, ``/readyz``, the OpenAPI docs, the
playground page, and ``/metrics`` unless ``protect_metrics``. Scopes: ``compress``
(``/v1/compress``, ``/v1/methods``), ``retrieve``, ``answer``, ``chat`` (``/v1/chat/completions``,
``/v1/models``), ``metrics``, or ``*`` (all).

**Limits.** Every key has a token bucket (``rate_limit``: ``requests_per_s`` refill, ``burst``
size) and a bound on its requests in flight (``max_in_flight``; a request holds its slot until
its response ends: success, error, client disconnect, or the end of a stream). Defaults, for
keys without their own: **20 requests/s, burst 40, 16 in flight**. No limit is always a
deliberate setting: ``rate_limit: off`` / ``max_in_flight: off`` (or ``null`` at the top
level) turns a limit off for every key without its own; on one key, ``off`` turns it off for
that key, and leaving the field out inherits the top-level value.

The limits hold across ingress replicas: the counters live in the segment cache's Redis
(``cache.url`` / ``url_env`` / ``key_prefix``, copied into ``auth.store`` by the application
builder; set ``auth.store`` yourself to keep them in another Redis, e.g. one without LRU
eviction), see :mod:`ragpress.services.ratelimit`. Without Redis (in-process or ``none://``
cache), and while Redis is unreachable, each replica applies the same limits on its own (N
replicas then let a key through at up to N times them). Responses on keyed routes say which:
``X-RateLimit-Backend: redis | local``, with ``X-RateLimit-Limit`` (the burst) and
``X-RateLimit-Remaining`` when the key has a rate limit; :meth:`KeyStore.status` reports it for
``/readyz`` (``degraded`` while Redis is configured but unreachable).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragpress.core.errors import ConfigError, RagpressError
from ragpress.services.ratelimit import TOO_MANY_IN_FLIGHT, Grant, KeyLimits, Limiter, TokenBucket

__all__ = ["ApiKey", "AuthMiddleware", "AuthSettings", "AuthenticationError", "KeyStore", "MissingApiKeyError",
           "PermissionDeniedError", "RateLimit", "RateLimitStore", "RateLimitedError", "TokenBucket",
           "TooManyInFlightError", "hash_key", "install_auth", "limiter_for"]

SCOPES: dict[str, tuple[str, ...]] = {
    "compress": ("/v1/compress", "/v1/methods"),
    "retrieve": ("/v1/retrieve",),
    "answer": ("/v1/answer",),
    "chat": ("/v1/chat/completions", "/v1/models"),
    "metrics": ("/metrics",),
}
OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
OPEN_PREFIXES = ("/playground",)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_REQUESTS_PER_S, DEFAULT_BURST, DEFAULT_MAX_IN_FLIGHT = 20.0, 40, 16


class AuthenticationError(RagpressError):
    http_status = 401
    code = "invalid_api_key"


class MissingApiKeyError(AuthenticationError):
    code = "missing_api_key"


class PermissionDeniedError(RagpressError):
    http_status = 403
    code = "forbidden"


class RateLimitedError(RagpressError):
    """429: the key is over its rate (``rate_limited``); ``grant`` carries the limit headers."""

    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float, grant: Grant | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.grant = grant


class TooManyInFlightError(RateLimitedError):
    """429: the key already has ``max_in_flight`` requests in flight."""

    code = TOO_MANY_IN_FLIGHT


def hash_key(key: str) -> str:
    """The SHA-256 (hex) a config stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class _Conf(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimit(_Conf):
    requests_per_s: float = Field(gt=0, description="sustained requests per second")
    burst: int = Field(default=1, ge=1, description="requests allowed at once after a quiet spell")


Off = Literal["off"]
InFlight = Annotated[int, Field(ge=1)]


def _yaml_off(v: Any) -> Any:
    """YAML reads a bare ``off`` as false: both mean "off"."""
    return "off" if v is False else v


class RateLimitStore(_Conf):
    """The Redis that holds the per-key counters every ingress replica shares, named like the
    segment cache's (``redis://`` / ``rediss://`` URL with password and TLS, or ``url_env``);
    a URL that is not Redis (unset, ``memory://``, ``none://``) keeps the limits per replica."""

    url: str | None = None
    url_env: str | None = Field(default=None, description="environment variable holding the URL (wins over url)")
    key_prefix: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$",
                            description="prefix of the limiter's Redis keys, e.g. 'prod:'")
    retry_after_s: float = Field(default=1.0, gt=0,
                                 description="after a Redis error, per-replica limits this long before Redis is "
                                             "tried again (by one request)")


class ApiKey(_Conf):
    """One key: its SHA-256, or the environment variable that holds it; its scopes, and its own
    limits where they differ from the top-level ones."""

    name: str = Field(min_length=1, description="shown in logs and errors, never the key")
    sha256: str | None = Field(default=None, description="hex SHA-256 of the key")
    key_env: str | None = Field(default=None, description="environment variable holding the plain key")
    scopes: list[str] = Field(default_factory=lambda: ["*"])
    rate_limit: RateLimit | Off | None = Field(default=None, description="this key's rate limit; 'off' = none; "
                                                                         "unset = the top-level rate_limit")
    max_in_flight: InFlight | Off | None = Field(default=None, description="this key's requests in flight at most; "
                                                                            "'off' = no bound; unset = the top-level "
                                                                            "max_in_flight")

    _off = field_validator("rate_limit", "max_in_flight", mode="before")(_yaml_off)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _HEX64.match(v.lower()):
            raise ValueError("sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)")
        return v.lower() if v else v

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        unknown = set(v) - set(SCOPES) - {"*"}
        if unknown or not v:
            raise ValueError(f"unknown scope(s) {sorted(unknown)}; scopes: *, {', '.join(SCOPES)}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.sha256 is None) == (self.key_env is None):
            raise ValueError(f"key {self.name!r}: give exactly one of sha256 and key_env")
        return self


class AuthSettings(_Conf):
    """API keys of the ingress (``auth`` in the service config); off when no key is configured."""

    enabled: bool | None = Field(default=None, description="None: on when any key is configured")
    keys: list[ApiKey] = Field(default_factory=list)
    keys_env: str | None = Field(default="RAGPRESS_API_KEYS",
                                 description="environment variable with comma-separated plain keys (every scope)")
    rate_limit: RateLimit | Off | None = Field(
        default_factory=lambda: RateLimit(requests_per_s=DEFAULT_REQUESTS_PER_S, burst=DEFAULT_BURST),
        description=f"per key, for keys without their own: a token bucket shared by every ingress replica "
                    f"(default {DEFAULT_REQUESTS_PER_S:g} requests/s, burst {DEFAULT_BURST}); 'off' or null = "
                    "no rate limit")
    max_in_flight: InFlight | Off | None = Field(
        default=DEFAULT_MAX_IN_FLIGHT,
        description=f"per key, for keys without their own: requests in flight at most, across every ingress "
                    f"replica (default {DEFAULT_MAX_IN_FLIGHT}); 'off' or null = no bound")
    store: RateLimitStore | None = Field(
        default=None, description="the Redis of the shared counters; unset: the segment cache's (the application "
                                  "builder copies cache.url, url_env, key_prefix, retry_after_s)")
    protect_metrics: bool = Field(default=False, description="require a key with the metrics scope for /metrics")

    _off = field_validator("rate_limit", "max_in_flight", mode="before")(_yaml_off)


def _limits(rate: RateLimit | str | None, max_in_flight: int | str | None) -> KeyLimits:
    rate = rate if isinstance(rate, RateLimit) else None
    return KeyLimits(requests_per_s=rate.requests_per_s if rate else None, burst=rate.burst if rate else 1,
                     max_in_flight=max_in_flight if isinstance(max_in_flight, int) else None)


class _Key:
    def __init__(self, name: str, digest: str, scopes: list[str], limits: KeyLimits):
        self.name = name
        self.id = digest[:32]  # names the key's counters in Redis
        self.scopes = set(scopes)
        self.limits = limits


@dataclass
class Admission:
    """A request let in: the key's name and its :class:`Grant` (``release()`` frees the
    request's in-flight slot; idempotent)."""

    name: str
    grant: Grant

    def release(self) -> None:
        self.grant.release()

    def headers(self) -> list[tuple[bytes, bytes]]:
        return self.grant.headers() if not self.grant.limits.off else []


def limiter_for(store: RateLimitStore | dict[str, Any] | None, clock: Callable[[], float] = time.monotonic,
                lease_s: float = 60.0) -> Limiter:
    """The :class:`Limiter` over ``store``'s Redis, connected by the segment cache's own code
    (:func:`ragpress.core.cache.make_cache`: URL, password, TLS, ``url_env``, ``key_prefix``);
    a local-only one when ``store`` names no Redis. ``lease_s``: how long a stopped replica's
    in-flight slots outlive it."""
    from ragpress.core.cache import RedisCache, make_cache

    if isinstance(store, dict):
        store = RateLimitStore.model_validate(store)
    if store is None:
        return Limiter(None, clock=clock, unshared_reason="no Redis configured for the rate limits: they are per "
                                                         "ingress replica")
    backend = make_cache(url=store.url, url_env=store.url_env, key_prefix=store.key_prefix,
                         retry_after_s=store.retry_after_s, max_bytes=0).backend
    if not isinstance(backend, RedisCache):
        return Limiter(None, clock=clock, unshared_reason=f"the cache is {backend.kind!r}, not Redis: the rate limits "
                                                         "are per ingress replica")
    return Limiter(backend._client, key_prefix=backend.namespace, retry_after_s=store.retry_after_s, clock=clock,
                   lease_s=lease_s, store_name=backend.stats()["url"])


class KeyStore:
    """The configured keys by hash, with their scopes and limits, and the :class:`Limiter` that
    counts them (``limiter``: given, e.g. in tests; else built from ``settings.store``)."""

    def __init__(self, settings: AuthSettings | dict[str, Any] | None = None, environ: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, limiter: Limiter | None = None):
        s = settings if isinstance(settings, AuthSettings) else AuthSettings.model_validate(settings or {})
        env = os.environ if environ is None else environ
        self.protect_metrics = s.protect_metrics
        self._keys: dict[str, _Key] = {}
        for k in s.keys:
            if k.key_env is not None:
                plain = env.get(k.key_env, "")
                if not plain.strip():
                    raise ConfigError(f"API key {k.name!r}: environment variable {k.key_env} is not set")
                digest = hash_key(plain.strip())
            else:
                digest = k.sha256
            limits = _limits(s.rate_limit if k.rate_limit is None else k.rate_limit,
                             s.max_in_flight if k.max_in_flight is None else k.max_in_flight)
            self._add(digest, _Key(k.name, digest, k.scopes, limits))
        if s.keys_env:
            plain_keys = [x.strip() for x in env.get(s.keys_env, "").split(",") if x.strip()]
            for i, plain in enumerate(plain_keys):
                digest = hash_key(plain)
                self._add(digest, _Key(f"{s.keys_env}[{i}]", digest, ["*"], _limits(s.rate_limit, s.max_in_flight)))
        self.enabled = bool(self._keys) if s.enabled is None else s.enabled
        if self.enabled and not self._keys:
            raise ConfigError("auth is enabled but no API key is configured (auth.keys, or the environment "
                              f"variable {s.keys_env or 'named by auth.keys_env'})")
        if limiter is None:  # no Redis client unless some key is limited
            limited = self.enabled and any(not k.limits.off for k in self._keys.values())
            limiter = limiter_for(s.store if limited else None, clock)
        self.limiter = limiter

    def _add(self, digest: str, key: _Key) -> None:
        if digest in self._keys:
            raise ConfigError(f"API keys {self._keys[digest].name!r} and {key.name!r} are the same key")
        self._keys[digest] = key

    def __len__(self) -> int:
        return len(self._keys)

    def status(self) -> dict[str, Any]:
        """Where the limits are counted: ``{"enabled", "backend": "redis" | "local", "degraded",
        "reason", ...}`` (see :meth:`Limiter.status`; may wait for one Redis round trip while
        degraded: call it off the event loop). Without keys: ``backend`` ``"off"``."""
        if not self.enabled:
            return {"enabled": False, "backend": "off", "degraded": False, "reason": "no API keys: no per-key limits",
                    "shared": False, "store": None, "redis_errors": 0}
        return {"enabled": True, **self.limiter.status()}

    def authenticate(self, authorization: str | None, path: str) -> _Key | None:
        """The key that may call ``path`` (None for an open path); raises the typed 401 / 403."""
        scope = required_scope(path, self.protect_metrics)
        if scope is None:
            return None
        if not authorization:
            raise MissingApiKeyError("this service needs an API key: send 'Authorization: Bearer <key>'")
        kind, _, token = authorization.strip().partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <key>'")
        key = self._keys.get(hash_key(token.strip()))
        if key is None:
            raise AuthenticationError("the API key is not valid")
        if scope != "any" and "*" not in key.scopes and scope not in key.scopes:
            raise PermissionDeniedError(f"API key {key.name!r} may not call {path} (needs scope {scope!r}; "
                                        f"it has {', '.join(sorted(key.scopes))})")
        return key

    def admit(self, key: _Key) -> Admission:
        """Take a token and an in-flight slot for ``key`` (one Redis round trip when shared);
        raises the typed 429. The caller releases the admission when the response ends."""
        grant = self.limiter.acquire(key.id, key.limits)
        if grant.allowed:
            return Admission(key.name, grant)
        if grant.reason == TOO_MANY_IN_FLIGHT:
            raise TooManyInFlightError(f"API key {key.name!r} already has {key.limits.max_in_flight} requests in "
                                       f"flight, its limit; retry when one has finished", grant.retry_after_s, grant)
        raise RateLimitedError(f"API key {key.name!r} is over its rate limit of {key.limits.requests_per_s:g} "
                               f"requests/s (burst {key.limits.burst}); retry after {grant.retry_after_s:.2f} s",
                               grant.retry_after_s, grant)

    def check(self, authorization: str | None, path: str) -> Admission | None:
        """:meth:`authenticate` then :meth:`admit`: the admission when ``authorization`` may call
        ``path`` now (None for an open path); raises the typed 401 / 403 / 429 otherwise."""
        key = self.authenticate(authorization, path)
        return None if key is None else self.admit(key)


def required_scope(path: str, protect_metrics: bool) -> str | None:
    """The scope ``path`` needs: None (open), a scope name, or ``any`` (any valid key)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path == "/metrics" and not protect_metrics:
        return None
    for scope, routes in SCOPES.items():
        if path.rstrip("/") in routes:
            return scope
    return "any"


def app_path(scope) -> str:
    """The request path inside the application (without a Serve ``route_prefix``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class AuthMiddleware:
    """ASGI middleware over :class:`KeyStore` (see the module docstring). With Redis the limiter's
    round trips run on a worker thread, never on the event loop; the in-flight slot is released
    when the inner application returns or raises (a finished response, an error, a client gone,
    a stream's end), even when the request task is cancelled."""

    def __init__(self, app, store: KeyStore, metrics=None):
        self.app = app
        self.store = store
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"authorization")
        path = app_path(scope)
        try:
            key = self.store.authenticate(raw.decode("latin-1") if raw is not None else None, path)
            if key is None:
                return await self.app(scope, receive, send)
            if self.store.limiter.shared:
                admission = await asyncio.to_thread(self.store.admit, key)
            else:
                admission = self.store.admit(key)
        except RagpressError as exc:
            return await self._refuse(path, exc, send)
        scope.setdefault("state", {})["api_key"] = admission.name
        extra = admission.headers()

        async def send_with_limits(message):
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            await self._release(admission)

    async def _release(self, admission: Admission) -> None:
        if not self.store.limiter.shared:
            admission.release()
            return
        done = asyncio.get_running_loop().run_in_executor(None, admission.release)
        await asyncio.shield(done)  # a cancelled request still gives its slot back

    async def _refuse(self, path: str, exc: RagpressError, send) -> None:
        from ragpress.services.openai_api import is_openai_route, to_openai_error

        body = exc.to_dict()
        if is_openai_route(path):
            body = to_openai_error(body, exc.http_status)
        headers = [(b"content-type", b"application/json")]
        if exc.http_status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="ragpress"'))
        if isinstance(exc, RateLimitedError):
            if exc.grant is not None:
                headers += exc.grant.headers()
            else:
                headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
        if self.metrics is not None:
            self.metrics.requests.labels("auth", str(exc.http_status)).inc()
        await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def install_auth(app, settings: AuthSettings | dict[str, Any] | None, metrics=None) -> KeyStore:
    """Add :class:`AuthMiddleware` to ``app`` when keys are configured; returns the store
    (``app.state.keys`` in the service: its :meth:`KeyStore.status` belongs in ``/readyz``)."""
    store = KeyStore(settings)
    if store.enabled:
        app.add_middleware(AuthMiddleware, store=store, metrics=metrics)
    return store
