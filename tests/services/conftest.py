"""Fixtures of the service tests: a real ``redis-server`` on a free loopback port and ONE real
local Ray cluster (2 CPUs) with the ragpress application deployed, shared by the session."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A throw-away ``redis-server`` (no persistence) that tests can stop and start again."""

    def __init__(self, port: int | None = None):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            pytest.skip("redis-server is not installed (make setup installs it)")
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server():
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster + Serve HTTP proxy on a free loopback port, per test session."""
    ray = pytest.importorskip("ray")
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def service_config(redis_server):
    """Sample index, embed-sentences + truncate, Redis cache, small body limit."""
    from ragpress.services.app import CompressorStage, ServiceConfig

    return ServiceConfig(
        compressors=[CompressorStage(method="embed-sentences", deployment={"user_config": {"config": {}}}),
                     CompressorStage(method="truncate")],
        cache={"url": redis_server.url, "retry_after_s": 0.2},
        # generous stage timeout: a fuzzed /v1/answer may retrieve and compress MAX_K passages on
        # a loaded 2-core CI machine, and a 504 would read as a server fault to the fuzz test
        limits={"max_body_bytes": 512 * 1024, "timeout_s": 100},
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
