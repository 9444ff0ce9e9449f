"""A throw-away local ``redis-server`` (loopback, no persistence) that can be stopped and started
again on the same port: what the service tests and the load benchmark run the cache against."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from ragpress.core.errors import ConfigError

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on ``port`` (default: a free one); ``start()`` returns once it answers PING.
    ``password`` requires AUTH; ``tls=(cert_file, key_file, ca_file)`` serves TLS only on that
    port (``url`` is then ``rediss://``, trusting ``ca_file``)."""

    def __init__(self, port: int | None = None, host: str = HOST, password: str | None = None,
                 tls: tuple[str, str, str] | None = None):
        self.exe = shutil.which("redis-server")
        if self.exe is None:
            raise ConfigError("redis-server is not installed: `make setup` installs it (Debian: apt-get install "
                              "redis-server)")
        self.host = host
        self.port = port or free_port(host)
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10) -> RedisServer:
        import redis

        args = [self.exe, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
                "--protected-mode", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            cert, key, ca = self.tls
            args[1:3] = ["--port", "0"]
            args += ["--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                     "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise ConfigError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
