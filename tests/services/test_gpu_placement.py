"""Each stage on its own GPU share, checked on a real two-node Ray cluster whose second node
declares 2 logical GPUs (``ray start --num-gpus 2``: Ray schedules them as it would real ones).
``deploy/serve-gpu-cluster.yaml`` itself, fitted to this machine (offline models, small CPU asks,
GPU shares scaled by one factor: :func:`ragpress.testing.gpu_config.fit_gpu_config`), is deployed
from a driver process: every GPU stage lands on the GPU node with the GPU ids Ray gave it as its
``CUDA_VISIBLE_DEVICES``, and the ingress stays on CPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragpress.services.redis_server import free_port
from ragpress.testing.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]

DRIVER = """
import json, sys, httpx, ray
from ragpress.testing.gpu_config import deploy_serve_config, fit_gpu_config, load_serve_config, replica_placement
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
config = fit_gpu_config(load_serve_config(sys.argv[2]), gpus=2, port=int(sys.argv[3]))
deploy_serve_config(config, timeout_s=600)
ready = httpx.get(f"http://127.0.0.1:{sys.argv[3]}/readyz", timeout=60).json()
gpu_node = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
print(json.dumps({"config": config, "ready": ready, "replicas": replica_placement(), "gpu_node": gpu_node}))
"""


def test_the_gpu_cluster_config_places_every_stage_on_its_gpu_share():
    keys = {"RAGPRESS_API_KEY_APP": "rp-app-key", "RAGPRESS_API_KEY_OPS": "rp-ops-key"}  # as the file's header says:
    with LocalRayCluster(head_cpus=2, worker_cpus=2, worker_gpus=2, timeout_s=180, env=keys) as cluster:  # on nodes
        port = free_port()
        proc = subprocess.run([sys.executable, "-c", DRIVER, cluster.address,
                               str(ROOT / "deploy" / "serve-gpu-cluster.yaml"), str(port)],
                              env=cluster.env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    (gpu_node,) = out["gpu_node"]
    deployments = {d["name"]: d for d in out["config"]["applications"][0]["deployments"]}
    stages = out["ready"]["stages"]
    assert out["ready"]["status"] == "ready", out["ready"]
    by_deployment = {"retriever": "Retriever", "reader": "Reader", "encoder:arc": "Encoder",
                     **{k: f"Compressor-{k.split(':', 1)[1]}" for k in stages if k.startswith("compressor:")}}
    checked = 0
    for stage, report in stages.items():
        wants = deployments[by_deployment[stage]]["ray_actor_options"].get("num_gpus", 0)
        where = report["placement"]
        if wants:
            assert where["node_id"] == gpu_node, (stage, where)
            assert where["gpu_ids"] and where["cuda_visible_devices"] == ",".join(where["gpu_ids"]), (stage, where)
            checked += 1
        else:  # a CPU stage (truncate) gets no GPU
            assert not where["gpu_ids"], (stage, where)
    assert checked >= 5, stages  # retriever, exit, tcra, longcodezip, encoder, reader
    for name, replicas in out["replicas"].items():  # every stage at its minimum, the ingress off the GPUs
        assert replicas, name
        if name == "Ingress":
            assert not deployments[name]["ray_actor_options"].get("num_gpus")
