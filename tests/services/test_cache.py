"""The segment cache on its own: in-process LRU/TTL, real Redis, failure handling, and
serving cached results through ``compress_with_cache`` with a real compressor."""

from __future__ import annotations

import time

import pytest

from ragpress.core.cache import (
    CachedCompressor,
    InProcessCache,
    RedisCache,
    ResilientCache,
    compress_with_cache,
    decode_result,
    encode_result,
    make_cache,
)
from ragpress.core.cache_keys import result_key, segment_key
from ragpress.core.errors import EmptyPassageError
from ragpress.core.registry import create_compressor
from ragpress.core.types import CompressionRequest, CompressionResult


def test_in_process_lru_bound_and_ttl():
    c = InProcessCache(max_bytes=10, ttl_s=0.2)
    c.set_many({"a": b"12345", "b": b"67890"})
    assert c.get_many(["a"]) == [b"12345"]  # touch a: b is now least recently used
    c.set_many({"c": b"xyz"})
    assert c.get_many(["a", "b", "c"]) == [b"12345", None, b"xyz"]
    assert c.stats()["bytes"] <= 10
    c.set_many({"big": b"x" * 11})
    assert c.get_many(["big"]) == [None]
    time.sleep(0.25)
    assert c.get_many(["a", "c"]) == [None, None]


def test_keys_name_producer_and_content():
    r1 = CompressionRequest.of("q1", ["text one"], ratio=0.5)
    r2 = CompressionRequest.of("q2", ["text one"], ratio=0.5)
    assert result_key("m", "h", None, r1, True) != result_key("m", "h", None, r2, True)
    assert result_key("m", "h", None, r1, False) == result_key("m", "h", None, r2, False)
    assert result_key("m", "h", None, r1, True) != result_key("m", "h2", None, r1, True)
    assert result_key("m", "h", "model/a", r1, True) != result_key("m", "h", "model/b", r1, True)
    r3 = CompressionRequest.of("q1", ["text one"], ratio=0.4)
    assert result_key("m", "h", None, r1, True) != result_key("m", "h", None, r3, True)
    assert segment_key("emb", "m", "h", None, "ab", "c") != segment_key("emb", "m", "h", None, "a", "bc")


def test_codec_keeps_soft_tokens_but_json_does_not():
    torch = pytest.importorskip("torch")
    res = CompressionResult(text="t", tokens_before=4, tokens_after=1, compressor="arc", config_hash="h",
                            soft_tokens=torch.ones(2, 3), soft_token_shape=[2, 3])
    back = decode_result(encode_result(res))
    assert torch.equal(back.soft_tokens, res.soft_tokens) and back.soft_token_shape == [2, 3]
    assert "soft_tokens" not in res.model_dump_json()
    with pytest.raises(ValueError):
        decode_result(b"garbage")


def test_compress_with_cache_serves_hits_and_computes_only_misses(counter):
    comp = create_compressor("truncate")
    cache = make_cache()
    reqs = [CompressionRequest.of("", [f"passage number {i} with a few words in it"], ratio=0.5) for i in range(3)]
    first, s1 = compress_with_cache(comp, reqs[:2], cache)
    assert (s1.hits, s1.misses) == (0, 2)
    both, s2 = compress_with_cache(comp, reqs, cache)
    assert (s2.hits, s2.misses) == (2, 1)
    assert [r.text for r in both[:2]] == [r.text for r in first]
    assert both[0].cache_hits == 1 and both[2].cache_hits == 0
    bad = CompressionRequest.of("", ["   "], ratio=0.5)
    mixed, _ = compress_with_cache(comp, [reqs[0], bad], cache, return_exceptions=True)
    assert isinstance(mixed[0], CompressionResult) and isinstance(mixed[1], EmptyPassageError)
    with pytest.raises(EmptyPassageError):
        compress_with_cache(comp, [bad], cache)
    cc = CachedCompressor(comp, cache)
    assert cc.compress(reqs[2]).cache_hits == 1


@pytest.mark.redis
def test_redis_backend_roundtrip_ttl_and_memory_bound(redis_server):
    c = RedisCache(redis_server.url, ttl_s=1, max_memory="64mb", namespace="t1:")
    c.set_many({"k1": b"\x00\x01binary", "k2": b"v2"})
    assert c.get_many(["k1", "k2", "k3"]) == [b"\x00\x01binary", b"v2", None]
    assert 0 < c._client.ttl("t1:k1") <= 1
    assert c._client.config_get("maxmemory")["maxmemory"] == str(64 * 2**20)
    assert c._client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    c.clear()
    assert c.get_many(["k1"]) == [None]


@pytest.mark.redis
def test_resilient_cache_survives_a_stopped_redis_and_recovers():
    from tests.services.conftest import local_redis

    server = local_redis().start()
    try:
        cache = make_cache(server.url, retry_after_s=0.1)
        cache.set_many({"a": b"1"})
        assert cache.get_many(["a"]) == [b"1"] and not cache.degraded
        server.stop()
        assert cache.get_many(["a"]) == [None]  # a miss, not an exception
        cache.set_many({"b": b"2"})  # dropped (skipped while down)
        assert cache.degraded and cache.errors >= 1 and not cache.ping()
        server.start()
        time.sleep(0.15)
        cache.set_many({"a": b"again"})
        assert cache.get_many(["a"]) == [b"again"] and not cache.degraded
    finally:
        server.stop()


def test_make_cache_rejects_unknown_urls():
    from ragpress.core.errors import ConfigError

    with pytest.raises(ConfigError):
        make_cache("memcached://x")
    assert isinstance(make_cache("none://"), ResilientCache)


def test_lookup_cached_answers_hits_only():
    from ragpress.core.cache import lookup_cached

    comp = create_compressor("truncate")
    cache = make_cache()
    req = CompressionRequest.of("", ["one passage with several words for the cache"], ratio=0.5)
    assert lookup_cached(comp, req, cache) is None
    (first,), _ = compress_with_cache(comp, [req], cache)
    hit = lookup_cached(comp, req, cache)
    assert hit is not None and hit.cache_hits == 1 and hit.text == first.text and "cache_read" in hit.timings
    assert lookup_cached(comp, CompressionRequest.of("", ["   "], ratio=0.5), cache) is None  # invalid: slow path
    other = create_compressor("truncate", {"tokenizer": "whitespace"})  # another config hash: another key
    assert other.config_hash != comp.config_hash and lookup_cached(other, req, cache) is None


@pytest.mark.redis
@pytest.mark.parametrize("method", ["embed-sentences", "exit"])
def test_query_independent_work_is_reused_across_queries(redis_server, method):
    """A passage seen again under a NEW query is a result miss, but its sentence embeddings come
    from Redis (memo hits), and the result equals an uncached compressor's."""
    passages = ["Acme was founded by Jane Roe in 1990. It sells anvils to coyotes.",
                "The Road Runner is fast. Anvils are heavy."]
    first = CompressionRequest.of("Who founded Acme?", passages, ratio=0.5)
    second = CompressionRequest.of("What does Acme sell?", passages, ratio=0.5)
    cache = ResilientCache(RedisCache(redis_server.url, namespace=f"memo-{method}:"))
    cache.clear()
    cached = CachedCompressor(create_compressor(method), cache)
    cached.compress(first)
    comp = cached.compressor
    assert comp.segment_hits == 0
    out = cached.compress(second)
    assert out.cache_hits == 0  # a new query: the result itself is not cached
    n_sentences = 4
    assert comp.segment_hits >= n_sentences  # ... but every sentence's embedding was
    plain = create_compressor(method).compress(second)
    assert out.text == plain.text and [s.start for s in out.spans] == [s.start for s in plain.spans]
    assert [round(s.score, 5) for s in out.spans] == [round(s.score, 5) for s in plain.spans]
