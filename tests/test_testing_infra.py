"""The real test infrastructure in ``ragpress.testing``: a loopback S3 server and a two-node Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import psutil
import pytest

pytest.importorskip("moto.server", reason="moto[server] (dev extra) not installed")

from ragpress.testing.ray_cluster import LocalRayCluster  # noqa: E402
from ragpress.testing.s3 import LocalS3  # noqa: E402


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_local_s3_round_trip_through_pyarrow_from_uri(tmp_path):
    import pyarrow.fs as pafs

    src = tmp_path / "store.jsonl"
    src.write_bytes(b'{"id": 1}\n{"id": 2}\n')
    with LocalS3() as s3:
        pid, port = s3.proc.pid, s3.port
        s3.create_bucket("docs")
        uri = s3.upload_file(src, "docs", "store.jsonl")
        assert uri == s3.uri("docs", "store.jsonl")
        assert uri.endswith(f"docs/store.jsonl?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1")

        fs, path = pafs.FileSystem.from_uri(uri)
        assert path == "docs/store.jsonl"
        with fs.open_input_stream(path) as f:
            assert f.read() == src.read_bytes()

        fs, path = pafs.FileSystem.from_uri(s3.uri("docs", "out/part-0.jsonl"))
        with fs.open_output_stream(path) as f:
            f.write(b"written through from_uri\n")
        s3.upload_bytes(b"x", "docs", "out/sub/part-1.jsonl")
        assert s3.list("docs", prefix="out/") == ["out/part-0.jsonl", "out/sub/part-1.jsonl"]
        assert s3.list("docs") == ["out/part-0.jsonl", "out/sub/part-1.jsonl", "store.jsonl"]
        assert s3.read_bytes("docs", "out/part-0.jsonl") == b"written through from_uri\n"
    assert not _running(pid)
    assert not _port_open(port)


def test_local_s3_that_cannot_start_says_why():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        s3 = LocalS3(port=busy.getsockname()[1], start_timeout_s=20)
        with pytest.raises(RuntimeError, match=r"moto server .* (exited|did not answer)") as err:
            s3.start()
    assert "in use" in str(err.value).lower()
    assert s3.proc is None


RAY_DATA_OVER_S3 = """
import json, sys, tempfile, ray
import pyarrow.fs as pafs
uri, out_uri, temp_dir = sys.argv[1:4]
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
fs, path = pafs.FileSystem.from_uri(uri)
texts = [r["text"] for r in ray.data.read_text(path, filesystem=fs).take_all()]
n_uri = len(ray.data.read_text(uri).take_all())  # the URI alone resolves too
out_fs, out_path = pafs.FileSystem.from_uri(out_uri)
ray.data.from_items([{"i": i} for i in range(3)]).repartition(1).write_json(out_path, filesystem=out_fs)
ray.shutdown()
print(json.dumps({"texts": texts, "n_uri": n_uri}))
"""


@pytest.mark.ray
def test_ray_data_reads_and_writes_local_s3():
    # A child process with a private Ray of its own: the session's Ray may have every CPU held by
    # Serve replicas, and Ray Data's read and shuffle tasks each ask for a whole CPU (they waited
    # there forever once: CI's 1800 s no-progress timeout).
    with LocalS3() as s3:
        s3.create_bucket("docs")
        uri = s3.upload_bytes(b"alpha\nbeta\ngamma\n", "docs", "in/lines.txt")
        temp_dir = tempfile.mkdtemp(prefix="rps3-", dir="/tmp")  # short path for Ray's sockets
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "120"}
        try:
            proc = subprocess.run([sys.executable, "-c", RAY_DATA_OVER_S3, uri, s3.uri("docs", "out"), temp_dir],
                                  env=env, capture_output=True, text=True, timeout=240)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result == {"texts": ["alpha", "beta", "gamma"], "n_uri": 3}
        (key,) = s3.list("docs", prefix="out/")
        assert [json.loads(line)["i"] for line in s3.read_bytes("docs", key).splitlines()] == [0, 1, 2]


DRIVER = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=0.5, resources={"node2": 0.1})
def on_node2():
    return ray.get_runtime_context().get_node_id()
node2 = [n["NodeID"] for n in ray.nodes() if "node2" in n["Resources"]]
print(json.dumps({"driver": ray.get_runtime_context().get_node_id(), "task": ray.get(on_node2.remote()),
                  "node2": node2, "alive": sum(n["Alive"] for n in ray.nodes())}))
"""
PLAIN_TASK = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(ray.get(ray.remote(num_cpus=0.5)(lambda: 41 + 1).remote(), timeout=60))
"""


def _driver(cluster: LocalRayCluster, code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, cluster.address], env=cluster.env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.ray
def test_local_ray_cluster_two_nodes_node_loss_and_clean_exit():
    with LocalRayCluster(head_cpus=1, worker_cpus=1, worker_resources={"node2": 1}) as cluster:
        dirs = (cluster.head_dir, cluster.worker_dir)
        assert all(os.path.isdir(d) for d in dirs)
        node2_pids = cluster.worker_pids()
        assert node2_pids and cluster.head_pids()
        assert not set(node2_pids) & set(cluster.head_pids())

        seen = json.loads(_driver(cluster, DRIVER))
        assert seen["alive"] == 2
        assert seen["node2"] == [seen["task"]]  # ran on the second node...
        assert seen["task"] != seen["driver"]  # ...not on the head the driver attached to

        assert cluster.kill_worker_node(timeout_s=30) is True, cluster.last_wait_output
        assert cluster.worker_pids() == [] and not any(map(_running, node2_pids))
        assert _driver(cluster, PLAIN_TASK) == "42"  # the head still runs plain tasks
        head_pids = cluster.head_pids()

    left = [p for p in psutil.process_iter(["cmdline"]) if any(d in " ".join(p.info["cmdline"] or ()) for d in dirs)]
    assert left == []
    assert [pid for pid in head_pids if _running(pid)] == []
    assert not any(os.path.exists(d) for d in dirs)
