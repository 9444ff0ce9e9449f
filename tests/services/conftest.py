"""Fixtures of the service tests: a real ``redis-server`` on a free loopback port and ONE real
local Ray cluster (2 CPUs) with the ragpress application deployed, shared by the session."""

from __future__ import annotations

import pytest


def local_redis(port: int | None = None):
    """A stoppable local redis-server; the tests skip where none is installed."""
    from ragpress.core.errors import ConfigError
    from ragpress.services.redis_server import RedisServer

    try:
        return RedisServer(port)
    except ConfigError as exc:
        pytest.skip(exc.message)


@pytest.fixture(scope="session")
def redis_server():
    server = local_redis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster + Serve HTTP proxy on a free loopback port, per test session."""
    ray = pytest.importorskip("ray")
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ragpress.services.redis_server import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def service_config(redis_server):
    """Sample index, embed-sentences + truncate, Redis cache, small body limit, the local reader
    (SmolLM2-135M on CPU: short answers and a 1024-token window keep generation cheap)."""
    from ragpress.services.app import CompressorStage, ServiceConfig

    return ServiceConfig(
        compressors=[CompressorStage(method="embed-sentences", deployment={"user_config": {"config": {}}}),
                     CompressorStage(method="truncate")],
        cache={"url": redis_server.url, "retry_after_s": 0.2},
        # generous stage timeout: a fuzzed /v1/answer may retrieve and compress MAX_K passages on
        # a loaded 2-core CI machine, and a 504 would read as a server fault to the fuzz test
        limits={"max_body_bytes": 512 * 1024, "timeout_s": 100, "max_new_tokens": 12},
        reader={"name": "local", "config": {"max_new_tokens": 8, "context_window": 1024},
                "deployment": {"user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}}},
    )


@pytest.fixture(scope="session")
def service(ray_cluster, service_config):
    """The ragpress app deployed on the session's cluster, as an HTTP client."""
    import httpx
    from ray import serve

    from ragpress.services.app import build_app

    serve.run(build_app(service_config), name="ragpress", route_prefix="/")
    with httpx.Client(base_url=ray_cluster, timeout=120) as client:
        yield client
