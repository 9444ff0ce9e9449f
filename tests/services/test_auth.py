"""API keys, scopes and rate limits, checked on a real second application on the session's Ray
cluster (route prefix ``/auth``: the shared app stays open for the other tests), with a real
compressor behind it; the key store and the token bucket on their own, without Ray."""

from __future__ import annotations

import pytest

from ragpress.core.errors import ConfigError
from ragpress.services.auth import (
    AuthSettings,
    KeyStore,
    MissingApiKeyError,
    PermissionDeniedError,
    RateLimitedError,
    TokenBucket,
    hash_key,
)

FULL, RETRIEVE_ONLY, OPS, LIMITED = "rp-full-key", "rp-retrieve-key", "rp-ops-key-from-env", "rp-limited-key"
APP, PREFIX = "ragpress-auth", "/auth"
BODY = {"query": "Who founded Acme?", "passages": ["Acme was founded by Jane Roe in 1990. It sells anvils."],
        "budget": {"ratio": 0.5}}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# ---------------------------------------------------------------------------- without Ray
def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token comes back every 0.5 s
    now[0] += 0.5
    assert bucket.take() == 0.0 and bucket.take() > 0
    now[0] += 100
    assert [bucket.take() for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # never more than the burst


def test_key_store_hashes_env_keys_and_checks_scopes():
    store = KeyStore({"keys": [{"name": "ops", "key_env": "OPS", "scopes": ["metrics"]},
                               {"name": "a", "sha256": hash_key("k-a").upper()}],
                      "keys_env": "KEYS", "protect_metrics": True},
                     environ={"OPS": " ops-secret ", "KEYS": "k1, k2,"})
    assert store.enabled and len(store) == 4
    assert "ops-secret" not in repr(vars(store)) and "k1" not in str(list(store._keys))  # only hashes kept
    assert store.check("Bearer ops-secret", "/metrics").name == "ops"
    assert store.check("bearer k2", "/v1/answer").name == "KEYS[1]"
    assert store.check(None, "/healthz") is None and store.check(None, "/playground") is None
    with pytest.raises(PermissionDeniedError, match="needs scope 'compress'"):
        store.check("Bearer ops-secret", "/v1/compress")
    with pytest.raises(MissingApiKeyError):
        store.check(None, "/v1/unknown-route")  # unknown routes need a key too (then 404)
    assert not KeyStore(environ={}).enabled  # no keys configured: open


@pytest.mark.parametrize("settings, match", [
    ({"keys": [{"name": "x", "sha256": "abc"}]}, "64 hex"),
    ({"keys": [{"name": "x"}]}, "exactly one"),
    ({"keys": [{"name": "x", "key_env": "E", "sha256": "0" * 64}]}, "exactly one"),
    ({"keys": [{"name": "x", "sha256": "0" * 64, "scopes": ["admin"]}]}, "unknown scope"),
    ({"keys": [{"name": "x", "sha256": "0" * 64, "rate_limit": {"requests_per_s": 0}}]}, "greater than 0"),
])
def test_bad_auth_settings_are_rejected(settings, match):
    with pytest.raises(ValueError, match=match):
        AuthSettings.model_validate(settings)


def test_key_store_config_errors():
    with pytest.raises(ConfigError, match="OPS is not set"):
        KeyStore({"keys": [{"name": "ops", "key_env": "OPS"}]}, environ={})
    with pytest.raises(ConfigError, match="no API key"):
        KeyStore({"enabled": True}, environ={})
    with pytest.raises(ConfigError, match="same key"):
        KeyStore({"keys": [{"name": "a", "sha256": hash_key("k")}], "keys_env": "K"}, environ={"K": "k"})
    limited = KeyStore({"keys": [{"name": "a", "sha256": hash_key("k")}], "rate_limit": {"requests_per_s": 1}},
                       environ={})
    limited.check("Bearer k", "/v1/compress")
    with pytest.raises(RateLimitedError) as err:
        limited.check("Bearer k", "/v1/compress")
    assert 0 < err.value.retry_after_s <= 1


# ---------------------------------------------------------------------------- a real service
@pytest.fixture(scope="module")
def auth_service(ray_cluster):
    """A second, small application with keys on (truncate only; the ops key reaches the ingress
    replica through its environment, the others as hashes in the config)."""
    import httpx
    from ray import serve

    from ragpress.services.app import CompressorStage, ServiceConfig, build_app

    small = {"num_cpus": 0.1}
    config = ServiceConfig(
        compressors=[CompressorStage(method="truncate", deployment={"ray_actor_options": small})],
        retriever=None, reader=None, cache={"url": "none://"},
        ingress={"ray_actor_options": {**small, "runtime_env": {"env_vars": {"RP_TEST_OPS_KEY": OPS}}}},
        auth={"keys": [{"name": "full", "sha256": hash_key(FULL)},
                       {"name": "retrieve-only", "sha256": hash_key(RETRIEVE_ONLY), "scopes": ["retrieve"]},
                       {"name": "ops", "key_env": "RP_TEST_OPS_KEY", "scopes": ["metrics"]},
                       {"name": "limited", "sha256": hash_key(LIMITED),
                        "rate_limit": {"requests_per_s": 0.2, "burst": 2}}],
              "keys_env": None, "protect_metrics": True})
    serve.run(build_app(config), name=APP, route_prefix=PREFIX)
    with httpx.Client(base_url=ray_cluster + PREFIX, timeout=120) as client:
        yield client
    serve.delete(APP, _blocking=False)  # the replicas stop in the background


def test_health_is_open_and_keys_are_required(auth_service):
    assert auth_service.get("/healthz").status_code == 200
    assert auth_service.get("/readyz").json()["status"] == "ready"
    for headers, code in (({}, "missing_api_key"), (bearer("nope"), "invalid_api_key"),
                          ({"authorization": f"Basic {FULL}"}, "invalid_api_key")):
        r = auth_service.post("/v1/compress", json=BODY, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"] == code and r.json()["error"]["type"].endswith("Error")
    r = auth_service.post("/v1/compress", json=BODY, headers=bearer(FULL))
    assert r.status_code == 200 and r.json()["method"] == "truncate" and r.json()["tokens_after"] > 0


def test_scopes_answer_403_and_chat_errors_are_openai_shaped(auth_service):
    r = auth_service.post("/v1/compress", json=BODY, headers=bearer(RETRIEVE_ONLY))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "retrieve-only" in r.json()["error"]["message"] and RETRIEVE_ONLY not in r.text
    r = auth_service.post("/v1/retrieve", json={"query": "x"}, headers=bearer(RETRIEVE_ONLY))
    assert r.status_code == 503 and r.json()["error"]["code"] == "stage_unavailable"  # past auth: no retriever
    r = auth_service.post("/v1/chat/completions", json={"model": "ragpress", "messages": []})
    err = r.json()["error"]
    assert r.status_code == 401 and err["type"] == "authentication_error" and err["code"] == "missing_api_key"
    assert set(err) >= {"message", "type", "param", "code"}


def test_metrics_protected_by_config(auth_service):
    assert auth_service.get("/metrics").status_code == 401
    assert auth_service.get("/metrics", headers=bearer(RETRIEVE_ONLY)).status_code == 403
    r = auth_service.get("/metrics", headers=bearer(OPS))  # the key from the replica's environment
    assert r.status_code == 200 and 'ragpress_requests_total{route="auth",status="401"}' in r.text


def test_rate_limit_answers_429_with_retry_after(auth_service):
    codes = [auth_service.post("/v1/compress", json=BODY, headers=bearer(LIMITED)) for _ in range(3)]
    assert [r.status_code for r in codes[:2]] == [200, 200]  # the burst
    r = codes[2]
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 5
    assert r.headers["x-ratelimit-backend"] == "local" and r.headers["x-ratelimit-remaining"] == "0"  # none:// cache
    assert codes[0].headers["x-ratelimit-limit"] == "2" and codes[0].headers["x-ratelimit-remaining"] == "1"
    assert auth_service.post("/v1/compress", json=BODY, headers=bearer(FULL)).status_code == 200  # per key
