"""A real two-node Ray cluster on one machine, for tests and benchmarks of multi-node behaviour.

``ray.init(num_cpus=...)`` gives one node; what a real cluster adds -- tasks placed by custom
resources on another node, objects moved between object stores, a node lost mid-job -- needs a
second raylet. :class:`LocalRayCluster` starts both with the ``ray start`` CLI, as an operator
would, each node with its own ``--temp-dir`` (Ray takes one per node, a non-head node's too: its
sockets, logs and spill files live there) and every port picked free, since two raylets on one
host would clash on the fixed defaults (8265, 10001, 52365...) and so would other people's Ray
instances here (never ``ray stop``: it ends every Ray on the machine).

>>> with LocalRayCluster(head_cpus=1, worker_cpus=1) as cluster:        # doctest: +SKIP
...     subprocess.run([sys.executable, "job.py", "--ray-address", cluster.address], env=cluster.env)
...     cluster.kill_worker_node()          # a node lost: SIGKILL, returns once the GCS sees it dead

Nodes always run with ``RAY_AUTH_MODE=disabled``: a token in ``~/.ray/auth_token`` turns token auth
on for ``ray start --head`` but not for a joining node (which then cannot register), and a token
cluster refuses drivers whose ``RAY_AUTH_MODE`` is unset; an auth-off one takes drivers in any mode.
Ray replaces 127.0.0.1 by the host's address, so nodes report that IP; :attr:`address` still works.
The GCS health check is tightened so a killed node is declared dead in ~2 s, not ~30 s. On exit
every process of both nodes (found by temp dir, with descendants, plus the head's Ray Client
server) gets SIGTERM, then SIGKILL after 2 s; both temp dirs are removed. Measured on this 2-core
machine: start (both nodes registered) 9.5-11.5 s at light load (each ``ray start`` ~5 s, the
registration check ~1.7 s), 23-40 s while another test suite held the load at ~10;
``kill_worker_node`` 3-4.5 s; stop ~3.5 s (raylet and GCS outlast SIGTERM's 2 s). Start, two
drivers, a node kill and stop cost ~15 CPU-seconds in all (~9 s of it Ray's own daemons).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from ragpress.services.redis_server import free_port

# Defaults for the nodes' environment (the caller's own values win).
NODE_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}

# A short-lived driver: exits 0 once the node with node-manager port argv[3] is argv[2] ("alive" /
# "dead") and argv[4] nodes are alive, 1 after argv[5] seconds.
_WAIT_NODE = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
want, port, n_alive, deadline = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), time.time() + float(sys.argv[5])
while time.time() < deadline:
    nodes = ray.nodes()
    mine = [n["Alive"] for n in nodes if n["NodeManagerPort"] == port]
    if mine == [want == "alive"] and sum(n["Alive"] for n in nodes) == n_alive:
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"nodes (port, alive): {[(n['NodeManagerPort'], n['Alive']) for n in ray.nodes()]}")
"""


def _ray_bin() -> str:
    local = Path(sys.executable).parent / "ray"
    found = str(local) if local.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError("LocalRayCluster: the `ray` CLI is neither next to the interpreter nor on PATH")
    return found


class LocalRayCluster:
    """A head node and a second node, both started by ``ray start`` on this machine.

    ``worker_resources`` (default ``{"node2": 1}``) lets a task pin itself to the second node;
    ``worker_gpus`` gives it logical GPUs (``--num-gpus``; no device needed). ``env`` is added to
    the nodes' environment, over :data:`NODE_ENV` and the caller's own (less ``RAY_ADDRESS``).
    """

    def __init__(self, head_cpus: float = 1, worker_cpus: float = 1, *, worker_gpus: int = 0,
                 worker_resources: dict[str, float] | None = None, head_resources: dict[str, float] | None = None,
                 env: dict[str, str] | None = None, object_store_mb: int = 128, timeout_s: float = 60.0) -> None:
        self.head_cpus, self.worker_cpus, self.worker_gpus = head_cpus, worker_cpus, worker_gpus
        self.worker_resources = {"node2": 1} if worker_resources is None else dict(worker_resources)
        self.head_resources = dict(head_resources or {})
        self.object_store_mb, self.timeout_s = object_store_mb, timeout_s
        caller = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # auth off even where the caller's env says token (a local ray.init() leaves RAY_AUTH_MODE=token there)
        self.node_env = {**NODE_ENV, **caller, "RAY_AUTH_MODE": "disabled", **(env or {})}
        self.port = self.worker_node_manager_port = self.client_port = 0
        self.head_dir: str | None = None
        self.worker_dir: str | None = None
        self.last_wait_output = ""  # the node-state driver's stderr, for error messages

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the GCS, for ``ray.init(address=...)`` or ``--ray-address``."""
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """An environment for a driver subprocess: the nodes' environment plus ``RAY_ADDRESS``."""
        return {**self.node_env, "RAY_ADDRESS": self.address}

    # ------------------------------------------------------------------ start / stop
    def start(self) -> LocalRayCluster:
        self.head_dir = tempfile.mkdtemp(prefix="rpc-h-", dir="/tmp")  # short: unix socket paths max ~107 chars
        self.worker_dir = tempfile.mkdtemp(prefix="rpc-w-", dir="/tmp")
        # the head always starts a Ray Client server (port 0 is refused), so it gets a free port too
        self.port, self.worker_node_manager_port, self.client_port = free_port(""), free_port(""), free_port("")
        health = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
        head = ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus), "--include-dashboard=false",
                "--dashboard-port", str(free_port("")), "--ray-client-server-port", str(self.client_port),
                "--node-manager-port", str(free_port("")), "--resources", json.dumps(self.head_resources),
                "--system-config", json.dumps(health), *self._node_args(self.head_dir)]
        worker = ["--address", self.address, "--num-cpus", str(self.worker_cpus), "--num-gpus", str(self.worker_gpus),
                  "--resources", json.dumps(self.worker_resources), "--node-manager-port",
                  str(self.worker_node_manager_port), *self._node_args(self.worker_dir)]
        procs: list[subprocess.Popen[str]] = []
        try:  # both at once (they overlap their imports): the second one waits up to 60 s for the head's GCS
            procs = [self._ray_start(head), self._ray_start(worker, {"RAY_gcs_server_port_wait_time_s": "60"})]
            self._finish(procs[0], "head node")
            self._finish(procs[1], "second node")
            if not self._wait_node("alive", n_alive=2, timeout_s=self.timeout_s):
                raise RuntimeError(f"LocalRayCluster: the second node did not register within {self.timeout_s:.0f} s:"
                                   f"\n{self.last_wait_output}")
        except BaseException:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            self.stop()
            raise
        return self

    def _node_args(self, temp_dir: str) -> list[str]:
        ports = ["--object-manager-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port", "--metrics-export-port"]
        return ["--temp-dir", temp_dir, "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
                *(a for flag in ports for a in (flag, str(free_port(""))))]

    def _ray_start(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([_ray_bin(), "start", "--disable-usage-stats", *args], env={**self.node_env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)

    def _finish(self, proc: subprocess.Popen[str], what: str) -> None:
        try:
            out, _ = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"LocalRayCluster: the {what} did not start (ray start exit {proc.returncode}):\n"
                               f"{out[-3000:]}")

    def _wait_node(self, want: str, n_alive: int, timeout_s: float) -> bool:
        """Whether the second node reached state ``want`` ("alive" / "dead") with ``n_alive`` nodes alive."""
        cmd = [sys.executable, "-c", _WAIT_NODE, self.address, want, str(self.worker_node_manager_port),
               str(n_alive), str(timeout_s)]
        try:
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s + 30)
        except subprocess.TimeoutExpired:
            self.last_wait_output = f"the node-state driver ran past {timeout_s + 30:.0f} s"
            return False
        self.last_wait_output = proc.stderr[-3000:]
        return proc.returncode == 0

    def stop(self) -> None:
        """End every process both nodes started (SIGTERM, SIGKILL after 2 s) and remove both temp dirs."""
        for _ in range(3):  # again: a raylet may have started a worker while the others were ending
            procs = self._procs(self.head_dir, self.worker_dir, client_server=True)
            if not procs:
                break
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            for p in psutil.wait_procs(procs, timeout=2)[1]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(procs, timeout=2)
        for d in (self.head_dir, self.worker_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ processes
    def _procs(self, *dirs: str | None, client_server: bool = False) -> list[psutil.Process]:
        """Processes whose command line names one of ``dirs`` (a node's temp dir), with their descendants;
        with ``client_server`` also the head's Ray Client server (its command line names no temp dir)."""
        keys = [d for d in dirs if d]
        client_arg = f"--port={self.client_port}" if client_server and self.client_port else None
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            args = p.info["cmdline"] or []
            client = client_arg in args and "ray.util.client.server" in args
            if p.pid != os.getpid() and (client or any(k in " ".join(args) for k in keys)):
                found[p.pid] = p
                with contextlib.suppress(psutil.Error):
                    found.update({c.pid: c for c in p.children(recursive=True)})
        return list(found.values())

    def worker_pids(self) -> list[int]:
        """Pids of the second node's processes (raylet, its agents and workers, log monitor)."""
        return sorted(p.pid for p in self._procs(self.worker_dir))

    def head_pids(self) -> list[int]:
        """Pids of the head node's processes (GCS, raylet, monitor, agents, Ray Client server, workers)."""
        return sorted(p.pid for p in self._procs(self.head_dir, client_server=True))

    def kill_worker_node(self, timeout_s: float = 30.0) -> bool:
        """SIGKILL every process of the second node (a node lost); True once the GCS reports it dead
        (asked by a short-lived driver), False if it has not after ``timeout_s``."""
        for _ in range(3):  # again: a dying raylet may still have forked a worker
            procs = self._procs(self.worker_dir)
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(procs, timeout=5)
        return self._wait_node("dead", n_alive=1, timeout_s=timeout_s)
