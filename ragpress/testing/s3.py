r"""A real S3-compatible server on loopback (moto's standalone server), for tests and benchmarks.

Code that reads and writes ``s3://`` URIs (the batch job's inputs and outputs, through
``pyarrow.fs`` and Ray Data) is tested against real HTTP S3 requests, not a mock of boto or of
pyarrow: :class:`LocalS3` runs ``python -m moto.server`` as a *subprocess* on a free port, so Ray
worker processes reach it while the test process is busy (an in-thread server would stall with it).

>>> with LocalS3() as s3:                                     # doctest: +SKIP
...     s3.create_bucket("docs")
...     s3.upload_file("store.jsonl", "docs", "store.jsonl")
...     uri = s3.uri("docs", "store.jsonl")
...     fs, path = pyarrow.fs.FileSystem.from_uri(uri)       # or ray.data.read_text(uri)
...     ray.data.read_text(path, filesystem=fs)

URIs carry everything pyarrow needs, so they work in any process (a Ray worker, a CLI
subprocess) without extra environment::

    s3://testing:testing@docs/store.jsonl?endpoint_override=127.0.0.1:PORT&scheme=http&region=us-east-1

pyarrow's S3 URI parser refuses ``access_key``/``secret_key`` query parameters ("Unexpected
query parameter") but takes credentials as the URI's user info (``KEY:SECRET@bucket``).
The credentials are fake but not optional: without any, pyarrow sends unsigned writes with
``aws-chunked`` framing that moto stores verbatim (an object ``b"zz"`` reads back as
``b"2\r\nzz\r\n0\r\nx-amz-checksum-crc64nvme:...``); signed requests round-trip. :attr:`LocalS3.env`
holds the same credentials as ``AWS_*`` variables for tools that read those (boto3, the AWS CLI).
Requires ``moto[server]`` (the ``dev`` extra). Starts in ~1-2 s here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

import pyarrow.fs as pafs

from ragpress.services.redis_server import free_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


class LocalS3:
    """``with LocalS3() as s3:`` -- moto's S3 server on ``127.0.0.1:<free port>``, stopped on exit."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 30.0) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._fs: pafs.S3FileSystem | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` (pyarrow's ``endpoint_override``)."""
        return f"{self.host}:{self.port}"

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` (boto3's ``endpoint_url``, ``AWS_ENDPOINT_URL``)."""
        return f"http://{self.endpoint}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables pointing boto3 / the AWS CLI at this server with its fake credentials
        (pyarrow's ``S3FileSystem()`` ignores ``AWS_ENDPOINT_URL``: use :meth:`uri` or :attr:`filesystem`)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_EC2_METADATA_DISABLED": "true"}

    def uri(self, bucket: str, key: str = "") -> str:
        """An ``s3://`` URI that ``pyarrow.fs.FileSystem.from_uri`` (and Ray Data) resolve to this server."""
        return f"s3://{ACCESS_KEY}:{SECRET_KEY}@{bucket}/{key.lstrip('/')}?endpoint_override={self.endpoint}&scheme=http&region={REGION}"

    @property
    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem on this server (paths are ``bucket/key``)."""
        if self._fs is None:
            self._fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scheme="http",
                                         endpoint_override=self.endpoint, allow_bucket_creation=True,
                                         allow_bucket_deletion=True)
        return self._fs

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalS3:
        self._log = tempfile.TemporaryFile(prefix="locals3-")  # the server's output, for errors
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.env})
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self._fail(f"did not answer on {self.endpoint_url} within {self.start_timeout_s:.0f} s")
        raise AssertionError("unreachable")

    def _fail(self, what: str) -> None:
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"LocalS3: moto server (python -m moto.server) {what}; is moto[server] installed?\n{tail}")

    def _log_tail(self, n: int = 3000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); every object it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc, self._fs = None, None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ bucket / object operations
    def create_bucket(self, bucket: str) -> None:
        self.filesystem.create_dir(bucket)

    def upload_bytes(self, data: bytes, bucket: str, key: str) -> str:
        """Write ``data`` to ``bucket/key``; returns its :meth:`uri`."""
        with self.filesystem.open_output_stream(f"{bucket}/{key.lstrip('/')}") as f:
            f.write(data)
        return self.uri(bucket, key)

    def upload_file(self, local_path: str | os.PathLike[str], bucket: str, key: str) -> str:
        """Copy a local file to ``bucket/key``; returns its :meth:`uri`."""
        return self.upload_bytes(Path(local_path).read_bytes(), bucket, key)

    def read_bytes(self, bucket: str, key: str) -> bytes:
        with self.filesystem.open_input_stream(f"{bucket}/{key.lstrip('/')}") as f:
            return f.read()

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys in ``bucket`` that start with ``prefix``, sorted (objects only, at any depth)."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(bucket, recursive=True))
        keys = (i.path[len(bucket) + 1:] for i in infos if i.type == pafs.FileType.File)
        return sorted(k for k in keys if k.startswith(prefix))
