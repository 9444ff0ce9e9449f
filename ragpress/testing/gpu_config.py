"""A cluster Serve config fitted to this machine, for placement tests and benchmarks with logical GPUs.

``deploy/serve-gpu-cluster.yaml`` is what a user deploys on a GPU cluster: hub checkpoints, an HNSW
index on a volume, Redis over TLS, replicas asking for 1-2 CPUs and GPU shares. On a machine
without GPUs Ray still schedules *logical* GPUs exactly as it would real ones (a node started with
``ray start --num-gpus 2`` has two; each replica asking ``num_gpus`` gets its share, its GPU ids and
its own ``CUDA_VISIBLE_DEVICES``). :func:`fit_gpu_config` keeps the file's structure (its stages,
their autoscaling, their relative GPU shares, its limits and keys) and swaps what this machine
cannot have: the offline models instead of the hub ids, the sample index, an in-process cache,
CPU asks a 2-core machine holds, GPU shares scaled so the stages' minimum replicas take a fraction
of the logical GPUs (the rest is room for autoscaling), the proxy on the head only.

>>> config = fit_gpu_config(load_serve_config("deploy/serve-gpu-cluster.yaml"), gpus=2)   # doctest: +SKIP
>>> deploy_serve_config(config)   # in a driver connected to a cluster with a 2-GPU node  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

KEY_ENVS = ("RAGPRESS_API_KEY_APP", "RAGPRESS_API_KEY_OPS")


def load_serve_config(path: str | Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def min_gpus(config: dict[str, Any]) -> float:
    """GPUs the stages' minimum replica counts ask for."""
    total = 0.0
    for d in config["applications"][0]["deployments"]:
        gpus = d.get("ray_actor_options", {}).get("num_gpus", 0)
        n = d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
        total += gpus * n
    return total


def fit_gpu_config(config: dict[str, Any], gpus: int = 2, share_of_gpus_at_min: float = 0.5,
                   num_cpus: float = 0.05, port: int = 8000, upscale_delay_s: float = 3.0) -> dict[str, Any]:
    """``config`` (a Serve deploy config with one ragpress application) fitted to a machine with
    ``gpus`` logical GPUs on one node: GPU shares scaled by one factor so the minimum replicas take
    ``share_of_gpus_at_min`` of them, every CPU ask ``num_cpus``, every autoscaled stage's
    ``min_replicas`` 1 and its ``upscale_delay_s`` short (scaling is what a benchmark watches)."""
    out = copy.deepcopy(config)
    out["proxy_location"] = "HeadOnly"  # two nodes on one host cannot both listen on the port
    out["http_options"] = {**out.get("http_options", {}), "host": "127.0.0.1", "port": port}
    (app,) = out["applications"]
    app.setdefault("runtime_env", {}).setdefault("env_vars", {})["HF_HUB_OFFLINE"] = "1"
    args = app["args"]
    if args.get("retriever") is not None:
        args["retriever"] = {}  # the shipped sample index
    for stage in [*args.get("compressors", []), *([args["encoder"]] if args.get("encoder") else [])]:
        stage["config"] = {}  # each method's offline default
    if args.get("reader") is not None:
        args["reader"] = {"name": "local", "config": {"max_new_tokens": 8}}
    args["cache"] = {}  # in process (the placement is the point, not Redis)
    factor = share_of_gpus_at_min * gpus / max(min_gpus(out), 1e-9)
    for d in app["deployments"]:
        actor = d.setdefault("ray_actor_options", {})
        actor["num_cpus"] = num_cpus
        if actor.get("num_gpus"):
            actor["num_gpus"] = round(actor["num_gpus"] * factor, 4)
        if "autoscaling_config" in d:
            d["autoscaling_config"] = {**d["autoscaling_config"], "min_replicas": 1,
                                       "upscale_delay_s": upscale_delay_s}
    return out


def deploy_serve_config(config: dict[str, Any], timeout_s: float = 600) -> None:
    """Deploy a Serve config dict on the connected cluster (what ``serve deploy FILE`` does,
    without the dashboard's REST API), and wait until its application runs."""
    import time

    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    serve.start(proxy_location=config.get("proxy_location", "HeadOnly"), http_options=config.get("http_options"))
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    name = config["applications"][0]["name"]
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        status = str(getattr(app.status, "value", app.status)) if app else None
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            why = "; ".join(f"{d}: {st.message[-2000:]}" for d, st in app.deployments.items() if st.message)
            raise RuntimeError(f"{name} failed to deploy: {app.message[-1000:]} {why}")
        time.sleep(1.0)
    raise RuntimeError(f"{name} not running after {timeout_s:.0f} s (status {status})")


def replica_placement(app_name: str = "ragpress") -> dict[str, list[dict[str, Any]]]:
    """Per deployment, its running replicas: node id, GPU ids Ray gave it (from the actor's
    resource assignment) and pid."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    out = {}
    for name, d in details["applications"][app_name]["deployments"].items():
        out[name] = [{"node_id": r["node_id"], "pid": r.get("pid"), "actor_id": r.get("actor_id")}
                     for r in d.get("replicas", []) if r["state"] == "RUNNING"]
    return out
