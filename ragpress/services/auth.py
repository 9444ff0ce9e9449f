"""Optional API keys and a per-key rate limit, checked at the ingress before anything else runs.

Off unless keys are configured. A key comes from the config as its SHA-256 (so the config holds
no secret) or from an environment variable (hashed at start, the plain key is not kept)::

    auth:
      keys:
        - {name: team-a, sha256: 9f86d08...}                      # printf %s "$KEY" | sha256sum
        - {name: ops, key_env: RAGPRESS_OPS_KEY, scopes: [metrics]}
        - {name: batch, key_env: RAGPRESS_BATCH_KEY, scopes: [compress], rate_limit: {requests_per_s: 50, burst: 100}}
      keys_env: RAGPRESS_API_KEYS       # comma-separated plain keys with every scope (the default name)
      rate_limit: {requests_per_s: 10, burst: 20}   # per key, for keys without their own
      protect_metrics: false

Clients send ``Authorization: Bearer <key>``. A missing or unknown key is 401
(``missing_api_key`` / ``invalid_api_key``, with ``WWW-Authenticate: Bearer``), a key without the
route's scope 403 (``forbidden``), a key over its rate 429 (``rate_limited``, with
``Retry-After`` in whole seconds); bodies are the service's error JSON, OpenAI-shaped on
``/v1/chat/completions``. Open without a key: ``/healthz``, ``/readyz``, the OpenAPI docs, the
playground page, and ``/metrics`` unless ``protect_metrics``. Scopes: ``compress``
(``/v1/compress``, ``/v1/methods``), ``retrieve``, ``answer``, ``chat`` (``/v1/chat/completions``,
``/v1/models``), ``metrics``, or ``*`` (all). The rate limit is a token bucket per key and per
ingress replica (N replicas let a key through at up to N times the rate).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragpress.core.errors import ConfigError, RagpressError

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


class AuthenticationError(RagpressError):
    http_status = 401
    code = "invalid_api_key"


class MissingApiKeyError(AuthenticationError):
    code = "missing_api_key"


class PermissionDeniedError(RagpressError):
    http_status = 403
    code = "forbidden"


class RateLimitedError(RagpressError):
    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def hash_key(key: str) -> str:
    """The SHA-256 (hex) a config stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class _Conf(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimit(_Conf):
    requests_per_s: float = Field(gt=0, description="sustained requests per second")
    burst: int = Field(default=1, ge=1, description="requests allowed at once after a quiet spell")


class ApiKey(_Conf):
    """One key: its SHA-256, or the environment variable that holds it."""

    name: str = Field(min_length=1, description="shown in logs and errors, never the key")
    sha256: str | None = Field(default=None, description="hex SHA-256 of the key")
    key_env: str | None = Field(default=None, description="environment variable holding the plain key")
    scopes: list[str] = Field(default_factory=lambda: ["*"])
    rate_limit: RateLimit | None = None

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
    rate_limit: RateLimit | None = Field(default=None, description="per key, for keys without their own")
    protect_metrics: bool = Field(default=False, description="require a key with the metrics scope for /metrics")


class _Key:
    def __init__(self, name: str, scopes: list[str], rate: RateLimit | None, clock: Callable[[], float]):
        self.name = name
        self.scopes = set(scopes)
        self.bucket = TokenBucket(rate.requests_per_s, rate.burst, clock) if rate else None


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; each request takes one."""

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


class KeyStore:
    """The configured keys by hash, with their scopes and buckets."""

    def __init__(self, settings: AuthSettings | dict[str, Any] | None = None, environ: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
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
            self._add(digest, _Key(k.name, k.scopes, k.rate_limit or s.rate_limit, clock))
        if s.keys_env:
            plain_keys = [x.strip() for x in env.get(s.keys_env, "").split(",") if x.strip()]
            for i, plain in enumerate(plain_keys):
                self._add(hash_key(plain), _Key(f"{s.keys_env}[{i}]", ["*"], s.rate_limit, clock))
        self.enabled = bool(self._keys) if s.enabled is None else s.enabled
        if self.enabled and not self._keys:
            raise ConfigError("auth is enabled but no API key is configured (auth.keys, or the environment "
                              f"variable {s.keys_env or 'named by auth.keys_env'})")

    def _add(self, digest: str, key: _Key) -> None:
        if digest in self._keys:
            raise ConfigError(f"API keys {self._keys[digest].name!r} and {key.name!r} are the same key")
        self._keys[digest] = key

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, authorization: str | None, path: str) -> str | None:
        """The key's name when ``authorization`` may call ``path`` now (None for an open path);
        raises the typed 401 / 403 / 429 otherwise."""
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
        if key.bucket is not None and (wait := key.bucket.take()) > 0:
            raise RateLimitedError(f"API key {key.name!r} is over its rate limit of "
                                   f"{key.bucket.rate:g} requests/s; retry after {wait:.1f} s", wait)
        return key.name


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
    """ASGI middleware over :class:`KeyStore` (see the module docstring)."""

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
            name = self.store.check(raw.decode("latin-1") if raw is not None else None, path)
        except RagpressError as exc:
            return await self._refuse(path, exc, send)
        if name is not None:
            scope.setdefault("state", {})["api_key"] = name
        return await self.app(scope, receive, send)

    async def _refuse(self, path: str, exc: RagpressError, send) -> None:
        from ragpress.services.openai_api import is_openai_route, to_openai_error

        body = exc.to_dict()
        if is_openai_route(path):
            body = to_openai_error(body, exc.http_status)
        headers = [(b"content-type", b"application/json")]
        if exc.http_status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="ragpress"'))
        if isinstance(exc, RateLimitedError):
            headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
        if self.metrics is not None:
            self.metrics.requests.labels("auth", str(exc.http_status)).inc()
        await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def install_auth(app, settings: AuthSettings | dict[str, Any] | None, metrics=None) -> KeyStore:
    """Add :class:`AuthMiddleware` to ``app`` when keys are configured; returns the store."""
    store = KeyStore(settings)
    if store.enabled:
        app.add_middleware(AuthMiddleware, store=store, metrics=metrics)
    return store
