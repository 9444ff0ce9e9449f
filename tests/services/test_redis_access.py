"""Redis for production: a key prefix per deployment (two services share the session's Redis
without reading or clearing each other's entries), a password and TLS through the URL (a real
``redis-server`` with ``--requirepass`` and a TLS port), and credentials never shown."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest

from ragpress.core.cache import _redact, compress_with_cache, make_cache
from ragpress.core.errors import ConfigError
from tests.services.conftest import local_redis

pytestmark = pytest.mark.redis
SECRET = "s3cret-Pa55"


def test_two_deployments_share_a_redis_without_seeing_each_other(redis_server):
    from ragpress.core.registry import create_compressor
    from ragpress.core.types import CompressionRequest

    a = make_cache(redis_server.url, key_prefix="team-a:")
    b = make_cache(redis_server.url, key_prefix="team-b:")
    a.set_many({"k": b"from a"})
    b.set_many({"k": b"from b"})
    assert a.get_many(["k"]) == [b"from a"] and b.get_many(["k"]) == [b"from b"]
    a.clear()  # clears only its own entries
    assert a.get_many(["k"]) == [None] and b.get_many(["k"]) == [b"from b"]

    # the real serving path: a result cached by deployment a is a miss for deployment b
    compressor = create_compressor("truncate")
    request = CompressionRequest.of("Who founded Acme?", ["Acme was founded by Jane Roe in 1990. It sells anvils."],
                                    ratio=0.5)
    _, first = compress_with_cache(compressor, [request], a)
    _, again = compress_with_cache(compressor, [request], a)
    _, other = compress_with_cache(compressor, [request], b)
    assert (first.misses, again.hits, other.hits, other.misses) == (1, 1, 0, 1)
    a.clear()
    b.clear()


def test_key_prefix_and_url_env_in_the_service_config(monkeypatch, redis_server):
    from ragpress.services.app import ServiceConfig

    monkeypatch.setenv("RP_TEST_REDIS_URL", redis_server.url)
    config = ServiceConfig(cache={"url_env": "RP_TEST_REDIS_URL", "key_prefix": "prod:"})
    cache = make_cache(**config.cache.model_dump())
    assert cache.backend.url == redis_server.url and cache.stats()["key_prefix"] == "prod:"
    with pytest.raises(ValueError):
        ServiceConfig(cache={"key_prefix": "bad prefix with spaces"})
    monkeypatch.delenv("RP_TEST_REDIS_URL")
    with pytest.raises(ConfigError, match="RP_TEST_REDIS_URL"):
        make_cache(**config.cache.model_dump())


def test_redact_hides_every_credential():
    for url in (f"redis://:{SECRET}@h:6379/0", f"rediss://user:{SECRET}@h:6380/0?ssl_cert_reqs=none",
                f"redis://h:6379/0?password={SECRET}&db=1"):
        assert SECRET not in _redact(url) and "h:63" in _redact(url)
    assert _redact("redis://h:6379/0") == "redis://h:6379/0"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    probe = local_redis()
    server = type(probe)(password=SECRET, tls=(cert, key, cert))  # the self-signed cert is its own CA
    try:
        server.start()
    except ConfigError:
        pytest.skip("this redis-server has no TLS support")
    yield server
    server.stop()


def test_password_and_tls_through_the_url(tls_redis, caplog):
    url = tls_redis.url
    assert url.startswith("rediss://") and SECRET in url
    good = make_cache(url, key_prefix="tls:")
    good.set_many({"k": b"v"})
    assert good.get_many(["k"]) == [b"v"] and not good.degraded

    caplog.set_level(logging.DEBUG)
    wrong_password = make_cache(url.replace(SECRET, "wrong"), retry_after_s=0)
    no_tls = make_cache(f"redis://:{SECRET}@127.0.0.1:{tls_redis.port}/0", retry_after_s=0)
    for cache in (wrong_password, no_tls):
        assert cache.get_many(["k"]) == [None]  # served uncached, never an exception
        assert cache.degraded and cache.errors == 1
        assert SECRET not in str(cache.stats()) and SECRET not in repr(cache.backend)
    assert SECRET not in caplog.text and "failed, serving uncached" in caplog.text
    good.clear()
