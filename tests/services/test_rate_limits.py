"""Per-key rate and in-flight limits shared by ingress replicas through Redis (issue #23): the
Redis token bucket with two limiters as two replicas would hold them, the in-flight leases, the
fallback to per-replica limits while Redis is down and the way back, the defaults, the slot
release on every response path (a real uvicorn server), and a real two-replica Serve ingress.
Real ``redis-server`` processes throughout, no mocks."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from ragpress.services.auth import (
    AuthSettings,
    KeyStore,
    RateLimitedError,
    TooManyInFlightError,
    hash_key,
    install_auth,
    limiter_for,
)
from ragpress.services.redis_server import free_port

KEY = "rl-key"
BEARER = f"Bearer {KEY}"


def settings(store: dict | None, **key) -> dict:
    """One key, ``KEY``, with ``key``'s limits, counted in ``store``."""
    return {"keys": [{"name": "k", "sha256": hash_key(KEY), **key}], "keys_env": None, "store": store}


def store_of(redis_server, **kw) -> dict:
    return {"url": redis_server.url, "key_prefix": f"t{uuid.uuid4().hex[:8]}:", **kw}  # a fresh bucket per test


def key_id(store: KeyStore) -> str:
    return store._keys[hash_key(KEY)].id


def attempt(store: KeyStore) -> tuple[bool, str]:
    """(admitted, backend) of one request that finishes at once."""
    try:
        admission = store.check(BEARER, "/v1/compress")
    except RateLimitedError as exc:
        return False, exc.grant.backend
    admission.release()
    return True, admission.grant.backend


# ---------------------------------------------------------------------------- defaults, no Redis
def test_default_limits_hold_when_none_is_configured():
    now = [0.0]
    store = KeyStore(settings(None), environ={}, clock=lambda: now[0])
    s = AuthSettings()
    assert (s.rate_limit.requests_per_s, s.rate_limit.burst, s.max_in_flight) == (20, 40, 16)
    held = [store.check(BEARER, "/v1/compress") for _ in range(16)]  # 16 in flight, the default
    with pytest.raises(TooManyInFlightError) as err:
        store.check(BEARER, "/v1/compress")
    assert err.value.code == "too_many_in_flight" and err.value.retry_after_s >= 1
    for a in held:
        a.release()
    assert sum(attempt(store)[0] for _ in range(100)) == 40 - 16  # the burst of 40, 16 taken above
    with pytest.raises(RateLimitedError) as err:
        store.check(BEARER, "/v1/compress")
    assert err.value.code == "rate_limited" and err.value.retry_after_s == pytest.approx(1 / 20)
    headers = dict(err.value.grant.headers())
    assert headers == {b"x-ratelimit-backend": b"local", b"x-ratelimit-limit": b"40",
                       b"x-ratelimit-remaining": b"0", b"retry-after": b"1"}
    now[0] += 1.0  # 20 tokens come back in a second
    assert sum(attempt(store)[0] for _ in range(100)) == 20
    assert store.status() == {"enabled": True, "backend": "local", "degraded": False, "shared": False,
                              "store": None, "redis_errors": 0,
                              "reason": "no Redis configured for the rate limits: they are per ingress replica"}


def test_no_limit_is_an_explicit_setting():
    import yaml

    off = AuthSettings.model_validate(yaml.safe_load("rate_limit: off\nmax_in_flight: off"))  # YAML's bare off
    assert off.rate_limit == off.max_in_flight == "off"
    for conf in ({"rate_limit": "off", "max_in_flight": "off"}, {"rate_limit": None, "max_in_flight": None}):
        store = KeyStore({**settings(None), **conf}, environ={})
        held = [store.check(BEARER, "/v1/compress") for _ in range(500)]  # never released, never refused
        assert held[-1].headers() == []  # no limit: no limit headers
    # a key's own "off" wins over the defaults; a key that says nothing inherits them
    store = KeyStore({"keys": [{"name": "free", "sha256": hash_key("free"), "rate_limit": "off", "max_in_flight": "off"},
                               {"name": "std", "sha256": hash_key("std")}], "keys_env": None}, environ={})
    assert all(store.check("Bearer free", "/v1/compress") for _ in range(200))
    with pytest.raises(RateLimitedError):
        for _ in range(41):
            store.check("Bearer std", "/v1/compress").release()
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        AuthSettings(max_in_flight=0)
    assert KeyStore(environ={}).status()["backend"] == "off"  # no keys at all: nothing to limit


@pytest.mark.parametrize("url", [None, "memory://", "none://"])
def test_without_redis_the_limits_are_per_replica_and_not_degraded(url):
    store = KeyStore(settings({"url": url}), environ={})
    assert attempt(store) == (True, "local")
    status = store.status()
    assert status["backend"] == "local" and not status["degraded"] and not status["shared"]
    assert "per ingress replica" in status["reason"]


# ---------------------------------------------------------------------------- Redis
@pytest.mark.redis
def test_two_replicas_share_one_redis_bucket(redis_server):
    """Two limiters (two ingress replicas) hammer one key limited to R/s for a few seconds: the
    accepted count is R*t + burst within 10 %, not twice that."""
    rate, burst, seconds = 40.0, 10, 3.0
    conf = settings(store_of(redis_server), rate_limit={"requests_per_s": rate, "burst": burst})
    replicas = [KeyStore(conf, environ={}), KeyStore(conf, environ={})]
    accepted = [0, 0]
    backends: set[str] = set()
    t0 = time.monotonic()

    def drive(i: int) -> None:
        while time.monotonic() - t0 < seconds:
            ok, backend = attempt(replicas[i])
            accepted[i] += ok
            backends.add(backend)
            time.sleep(0.002)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    expected = rate * elapsed + burst
    print(f"\naccepted {sum(accepted)} ({accepted[0]} + {accepted[1]}) of expected {expected:.0f} "
          f"over {elapsed:.2f} s")
    assert backends == {"redis"} and min(accepted) > 0
    assert abs(sum(accepted) - expected) <= 0.1 * expected, (accepted, expected)
    assert all(r.status()["backend"] == "redis" and not r.status()["degraded"] for r in replicas)


@pytest.mark.redis
def test_redis_keys_expire_when_idle(redis_server):
    import redis

    conf = settings(store_of(redis_server), rate_limit={"requests_per_s": 4, "burst": 2})
    store = KeyStore(conf, environ={})
    attempt(store)
    bucket, in_flight = store.limiter.redis_keys(key_id(store))
    client = redis.Redis.from_url(redis_server.url)
    assert 0 < client.pttl(bucket) <= 2000 + 1000  # full again after burst / rate = 0.5 s (+1 s)
    assert not client.exists(in_flight)  # released: the empty set is gone


@pytest.mark.redis
def test_in_flight_limit_is_shared_and_a_stopped_replica_cannot_keep_its_slots(redis_server):
    conf = settings(store_of(redis_server), rate_limit="off", max_in_flight=2)
    a, b = (KeyStore(conf, environ={}, limiter=limiter_for(AuthSettings.model_validate(conf).store, lease_s=1.5))
            for _ in range(2))
    held = [a.check(BEARER, "/v1/compress"), b.check(BEARER, "/v1/compress")]
    with pytest.raises(TooManyInFlightError) as err:
        b.check(BEARER, "/v1/compress")
    assert dict(err.value.grant.headers()) == {b"x-ratelimit-backend": b"redis", b"retry-after": b"1"}
    assert a.limiter.in_flight(key_id(a)) == 2
    held[1].release()
    held[1].release()  # idempotent: frees one slot once
    assert a.limiter.in_flight(key_id(a)) == 1
    held[1] = b.check(BEARER, "/v1/compress")
    # the lease is 1.5 s; a live replica renews its leases every 0.5 s: its slots stay taken
    time.sleep(2.0)
    with pytest.raises(TooManyInFlightError):
        a.check(BEARER, "/v1/compress")
    # replica a stops without releasing (a crash): its slot lapses after the lease, b's stays
    a.limiter.close()
    time.sleep(2.0)
    late = b.check(BEARER, "/v1/compress")
    with pytest.raises(TooManyInFlightError):
        b.check(BEARER, "/v1/compress")
    late.release()
    held[1].release()
    b.limiter.close()


@pytest.mark.redis
def test_redis_down_falls_back_to_local_limits_and_comes_back():
    from tests.services.conftest import local_redis

    server = local_redis().start()
    try:
        conf = settings({"url": server.url, "retry_after_s": 0.3},
                        rate_limit={"requests_per_s": 2, "burst": 3}, max_in_flight=4)
        store = KeyStore(conf, environ={})
        assert attempt(store) == (True, "redis")
        server.stop()
        t0 = time.monotonic()
        outcomes = [attempt(store) for _ in range(300)]  # a storm of requests while Redis is down
        took = time.monotonic() - t0
        assert {b for _, b in outcomes} == {"local"}
        assert sum(ok for ok, _ in outcomes) == 3  # the local bucket: its burst, then 429
        status = store.status()
        assert status["backend"] == "local" and status["degraded"] and "Redis unreachable" in status["reason"]
        assert status["redis_errors"] <= 2 and took < 1.0  # no connection attempt per request
        server.start()  # the same port
        time.sleep(0.35)  # past the retry interval: the next request tries Redis again
        assert attempt(store)[1] == "redis"
        assert store.status()["backend"] == "redis" and not store.status()["degraded"]
    finally:
        server.stop()


@pytest.mark.redis
def test_a_closed_port_is_degraded_from_the_start():
    store = KeyStore(settings({"url": f"redis://127.0.0.1:{free_port()}/0", "retry_after_s": 5}), environ={})
    assert store.status()["backend"] == "redis"  # not tried yet
    assert attempt(store) == (True, "local")
    status = store.status()
    assert status["degraded"] and status["backend"] == "local" and status["redis_errors"] == 1


# ---------------------------------------------------------------------------- the middleware, on a real server
@pytest.fixture(scope="module")
def keyed_server(redis_server):
    """A small FastAPI app behind :class:`AuthMiddleware` on a real uvicorn server: a quick route,
    a route that fails, and a slow stream; ``KEY`` may hold 2 requests in flight."""
    import asyncio

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.get("/v1/compress")
    async def quick():
        return {"ok": True}

    @app.get("/v1/answer")
    async def fails():
        raise RuntimeError("boom")

    @app.get("/v1/retrieve")
    async def stream(n: int = 5):
        async def chunks():
            for i in range(n):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.1)

        return StreamingResponse(chunks(), media_type="text/plain")

    keys = install_auth(app, settings(store_of(redis_server), rate_limit={"requests_per_s": 1000, "burst": 1000},
                                      max_in_flight=2))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"authorization": BEARER}, timeout=30) as client:
        yield client, keys
    server.should_exit = True
    thread.join(timeout=10)


def _in_flight_drops_to(keys: KeyStore, n: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while keys.limiter.in_flight(key_id(keys)) != n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.redis
def test_every_response_path_gives_the_slot_back(keyed_server):
    client, keys = keyed_server
    r = client.get("/v1/compress")
    assert r.status_code == 200 and r.headers["x-ratelimit-backend"] == "redis"
    assert r.headers["x-ratelimit-limit"] == "1000" and int(r.headers["x-ratelimit-remaining"]) >= 990
    assert _in_flight_drops_to(keys, 0)
    r = httpx.get(client.base_url.join("/v1/answer"), headers={"authorization": BEARER})  # uvicorn drops the connection
    assert r.status_code == 500  # the route raised
    assert _in_flight_drops_to(keys, 0)
    r = client.get("/v1/retrieve", params={"n": 3})  # a stream, read to its end
    assert r.status_code == 200 and r.text.count("chunk") == 3 and _in_flight_drops_to(keys, 0)
    # two streams hold both slots: a third request is refused, typed, with Retry-After
    with client.stream("GET", "/v1/retrieve", params={"n": 100}) as s1, \
            client.stream("GET", "/v1/retrieve", params={"n": 100}) as s2:
        chunks = [s.iter_bytes() for s in (s1, s2)]  # (kept: a dropped iterator closes its response)
        assert all(next(c).startswith(b"chunk 0") for c in chunks)
        assert keys.limiter.in_flight(key_id(keys)) == 2
        r = client.get("/v1/compress")
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_in_flight"
        assert r.headers["retry-after"] == "1" and r.headers["x-ratelimit-backend"] == "redis"
    # both clients left mid-stream (10 s of chunks were left): their slots come back at once
    assert _in_flight_drops_to(keys, 0, within_s=2.0)
    assert client.get("/v1/compress").status_code == 200
    assert client.get("/healthz").status_code == 404 and _in_flight_drops_to(keys, 0)  # open path: no slot


# ---------------------------------------------------------------------------- two real ingress replicas
@pytest.mark.ray
@pytest.mark.redis
def test_two_ingress_replicas_enforce_one_limit(ray_cluster, redis_server):
    """A small app (truncate, no model; two ingress replicas) on the session's Ray and Redis: one
    key limited to R/s, driven for 10 s by four client threads: accepted ~ R*t + burst, once."""
    from ray import serve

    from ragpress.services.app import CompressorStage, ServiceConfig, build_app

    rate, burst, seconds, app_name = 5.0, 5, 10.0, "ragpress-rl2"
    small = {"num_cpus": 0.1}
    config = ServiceConfig(
        compressors=[CompressorStage(method="truncate", deployment={"ray_actor_options": small})],
        retriever=None, reader=None,  # warmup on: a cold first request would hold the clients, not the limit
        cache={"url": redis_server.url, "key_prefix": f"rl2-{uuid.uuid4().hex[:6]}:"},
        ingress={"num_replicas": 2, "ray_actor_options": small},
        auth={"keys": [{"name": "k", "sha256": hash_key(KEY), "rate_limit": {"requests_per_s": rate, "burst": burst}}],
              "keys_env": None})
    serve.run(build_app(config), name=app_name, route_prefix="/rl2")
    try:
        ingress = serve.status().applications[app_name].deployments["Ingress"]
        assert ingress.replica_states.get("RUNNING") == 2, ingress
        body = {"query": "q", "passages": ["Acme was founded by Jane Roe in 1990. It sells anvils."],
                "budget": {"ratio": 0.5}}
        codes: list[int] = []
        backends: set[str] = set()
        t0 = time.monotonic()

        def drive() -> None:
            with httpx.Client(base_url=ray_cluster + "/rl2", headers={"authorization": BEARER}, timeout=60) as c:
                while time.monotonic() - t0 < seconds:
                    r = c.post("/v1/compress", json=body)
                    codes.append(r.status_code)
                    backends.add(r.headers.get("x-ratelimit-backend"))
                    time.sleep(0.02)

        threads = [threading.Thread(target=drive) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        accepted = codes.count(200)
        expected = rate * elapsed + burst
        print(f"\ntwo ingress replicas: {accepted} accepted of {len(codes)} sent, expected {expected:.0f} "
              f"(R={rate:g}/s over {elapsed:.1f} s + burst {burst})")
        assert set(codes) <= {200, 429} and backends == {"redis"}, (set(codes), backends)
        assert len(codes) > 3 * expected  # the clients pushed well past the limit
        assert abs(accepted - expected) <= 0.1 * expected, (accepted, expected)
    finally:
        serve.delete(app_name, _blocking=False)
