"""Load test of the ragpress service: a real local Ray Serve app, a real redis-server, an async
HTTP load generator on loopback. Every phase is bounded in requests AND seconds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load.py            # ~8 min on 2 CPU cores
    .venv/bin/python benchmarks/load.py --quick                       # ~3 min, shorter phases

Phases (method ``embed-sentences``, requests = a HotpotQA dev question + 3 of its paragraphs):

1. floor: ``GET /healthz`` (the ingress alone);
2. cold: ``POST /v1/compress`` on unique passage sets (every request computed);
3. warm: the same requests again (segment-cache hits in Redis);
4. sustained: 32 concurrent clients for 60 s (90 % warm, 10 % cold), errors counted;
5. replicas: cold throughput with 1 vs 2 replicas of the compressor stage (ratio);
6. Redis stopped mid-run and started again: every request answered? ``/readyz`` degraded?
   cache hits again after the restart?
7. a compressor replica killed (``ray.kill``) under load: failed requests counted (the ingress
   sends a lost call again: the target is none), time until Serve has replaced it;
8. overload: open-loop arrivals at 2x the capacity measured in the cold phase, against bounded
   queues (the compressor holds 16 running + 16 queued per ingress replica): accepted requests'
   p99 bounded by the queue, the rest a quick 503 ``overloaded`` with ``Retry-After``, 0 others;
9. efficiency: cold ``/v1/compress`` throughput at saturation against in-process
   ``compress_batch`` over the same requests with the same 2 cores, for several replica / thread
   layouts of the compressor stage (no cache on either side);
10. a two-node Ray cluster on this machine (``ragpress.testing.LocalRayCluster``: a head and a
   second ``ray start --address`` node with its own resources and temp dir), one compressor
   replica on each node, the second node's raylet killed under load: failed requests, the longest
   stall, ``/readyz`` over time.
11. gpu: ``deploy/serve-gpu-cluster.yaml`` fitted to this machine on a two-node cluster whose second
   node declares 2 logical GPUs, load on the ``exit`` compressor only: replica counts over time.

    .venv/bin/python benchmarks/load.py --phases overload,efficiency,cluster,gpu --out benchmarks/results/load_faults

Writes benchmarks/results/load.{json,md} (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragpress.core.errors import ConfigError
from ragpress.evaluation import default_data_dir
from ragpress.services.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
DATA = default_data_dir() / "hotpotqa" / "hotpotqa_dev_ircot500.jsonl"
METHOD = "embed-sentences"
STAGE = f"Compressor-{METHOD}"
HOST = "127.0.0.1"  # loopback only


# ---------------------------------------------------------------------------- infrastructure
def request_stream(path: Path) -> Iterator[dict[str, Any]]:
    """Unique /v1/compress bodies: each dev question with 3 of its paragraphs, first the disjoint
    triples of every record, then other combinations (so no two bodies share a cache key)."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def body(rec, idx):
        return {"query": rec["question"], "method": METHOD, "budget": {"ratio": 0.3},
                "passages": [{"id": f"{rec['id']}:{i}", "title": rec["passages"][i].get("title"),
                              "text": rec["passages"][i]["text"]} for i in idx]}

    seen = set()
    for rec in records:
        n = len(rec["passages"])
        for start in range(0, n - 2, 3):
            idx = (start, start + 1, start + 2)
            seen.add((rec["id"], idx))
            yield body(rec, idx)
    for combo_round in itertools.count():
        for rec in records:
            combos = [c for c in itertools.combinations(range(len(rec["passages"])), 3) if (rec["id"], c) not in seen]
            if combo_round < len(combos):
                yield body(rec, combos[combo_round])


# ---------------------------------------------------------------------------- load generator
@dataclass
class Phase:
    name: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    hits: int = 0
    compress_ok: int = 0
    elapsed: float = 0.0
    timeline: list[tuple[float, int, bool]] = field(default_factory=list)  # (t, status, cache hit)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def errors(self) -> int:
        """Failed requests: anything but a 200 or a request shed (503 ``overloaded`` + Retry-After)."""
        return sum(v for k, v in self.statuses.items() if k not in ("200", "shed"))

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q):
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        return {"phase": self.name, "concurrency": self.concurrency, "requests": len(self.timeline),
                "ok": self.ok, "shed": self.statuses.get("shed", 0), "errors": self.errors,
                "statuses": dict(sorted(self.statuses.items())),
                "seconds": round(self.elapsed, 2), "throughput_rps": round(self.ok / self.elapsed, 1) if self.elapsed else 0,
                "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
                "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
                "cache_hit_ratio": round(self.hits / self.compress_ok, 3) if self.compress_ok else None,
                **self.notes}


async def run_phase(client, name: str, next_request: Callable[[int], tuple[str, str, Any] | None],
                    concurrency: int, max_requests: int, max_seconds: float,
                    events: Callable[[float], Any] | None = None) -> Phase:
    """``concurrency`` clients send ``next_request(i)`` (method, path, json) until
    ``max_requests`` were sent, ``max_seconds`` passed or next_request returns None.
    ``events(t0)`` (a coroutine function) runs alongside, for faults injected mid-run."""
    import httpx

    phase = Phase(name, concurrency)
    counter = itertools.count()
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    async def worker():
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= max_requests:
                return
            req = next_request(i)
            if req is None:
                return
            method, path, body = req
            ts = time.perf_counter()
            hit = False
            try:
                r = await client.request(method, path, json=body)
                status = str(r.status_code)
                if r.status_code == 503 and r.headers.get("retry-after") and '"overloaded"' in r.text:
                    status = "shed"  # refused at once by a full queue: the client retries after Retry-After
                if r.status_code == 200 and path == "/v1/compress":
                    hit = bool(r.json()["cache"]["hit"])
                    phase.compress_ok += 1
                    phase.hits += hit
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            te = time.perf_counter()
            if status == "200":
                phase.latencies.append(te - ts)
            phase.statuses[status] = phase.statuses.get(status, 0) + 1
            phase.timeline.append((te - t0, int(status) if status.isdigit() else -1, hit))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    ev = asyncio.create_task(events(t0)) if events else None
    await asyncio.gather(*tasks)
    phase.elapsed = time.perf_counter() - t0
    if ev is not None:
        await ev
    return phase


# ---------------------------------------------------------------------------- service control
def service_config(redis_url: str, replicas: int, threads: int = 1, **deployment: Any):
    """The compressor stage: ``replicas`` x ``threads`` (BLAS/torch threads per replica), 16
    requests running (one batch) and 16 queued per caller; past that a typed 503."""
    from ragpress.services.app import CompressorStage, ServiceConfig

    actor = {"num_cpus": 0.5}
    if threads != 1:
        actor["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}
    return ServiceConfig(
        compressors=[CompressorStage(method=METHOD, deployment={
            "num_replicas": replicas, "max_ongoing_requests": 16, "max_queued_requests": 16,
            "ray_actor_options": actor,
            "user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}, **deployment})],
        retriever=None, reader=None, cache={"url": redis_url, "retry_after_s": 0.5},
        ingress={"ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 512},
        limits={"timeout_s": 30},
    )


def deploy(redis_url: str, replicas: int, threads: int = 1, **deployment: Any) -> None:
    from ray import serve

    from ragpress.services.app import build_app

    serve.run(build_app(service_config(redis_url, replicas, threads, **deployment)), name="ragpress",
              route_prefix="/")
    wait_replicas(replicas, timeout=180)


def running_replicas() -> int:
    from ray import serve

    try:
        dep = serve.status().applications["ragpress"].deployments[STAGE]
        return int(dep.replica_states.get("RUNNING", 0))
    except KeyError:
        return 0


def wait_replicas(n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    while running_replicas() < n:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{STAGE} did not reach {n} running replicas in {timeout:.0f} s")
        time.sleep(0.25)
    return time.perf_counter() - t0


def replica_actor_names() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if isinstance(a, dict) and "SERVE_REPLICA" in a["name"] and STAGE in a["name"])


# ---------------------------------------------------------------------------- main
async def main_async(args) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    s = args.scale
    try:
        redis = RedisServer(host=HOST).start()
    except ConfigError as exc:
        sys.exit(exc.message)
    port = free_port(HOST)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t_boot = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env})
    serve.start(http_options={"host": HOST, "port": port})
    deploy(redis.url, 1)
    boot_s = time.perf_counter() - t_boot
    base = f"http://{HOST}:{port}"
    stream = request_stream(Path(args.data))
    results: dict[str, Any] = {"config": {
        "method": METHOD, "cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
        "omp_threads_per_replica": 1, "compressor_num_cpus": 0.5, "cache": "redis (loopback)",
        "request": "HotpotQA dev question + 3 paragraphs, budget ratio 0.3", "boot_s": round(boot_s, 1),
        "scale": s}, "phases": {}}
    phases = results["phases"]

    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def ready_status() -> str:
            try:
                return (await client.get("/readyz")).json()["status"]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                return type(exc).__name__

        # warm-up (not reported): connections, batching paths, models
        warm_bodies = [next(stream) for _ in range(16)]
        await run_phase(client, "warmup", lambda i: ("POST", "/v1/compress", warm_bodies[i % 16]), 4, 64, 30)
        await run_phase(client, "warmup-floor", lambda i: ("GET", "/healthz", None), 4, 200, 10)

        if "base" in args.phases:
            conc = args.concurrency
            phases["floor"] = (await run_phase(client, "floor /healthz", lambda i: ("GET", "/healthz", None),
                                               conc, 5000, 10 * s)).summary()
            cold = [next(stream) for _ in range(int(args.cold))]
            phases["cold"] = (await run_phase(client, "cold /v1/compress", lambda i: ("POST", "/v1/compress", cold[i]),
                                              conc, len(cold), 90 * s)).summary()
            phases["warm"] = (await run_phase(client, "warm /v1/compress", lambda i: ("POST", "/v1/compress", cold[i]),
                                              conc, len(cold), 60 * s)).summary()
            f, c, w = phases["floor"], phases["cold"], phases["warm"]
            results["ratios"] = {
                "warm_p50_over_floor_p50": round(w["p50_ms"] / f["p50_ms"], 2),
                "cold_p50_over_warm_p50": round(c["p50_ms"] / w["p50_ms"], 1),
                "warm_over_cold_throughput": round(w["throughput_rps"] / c["throughput_rps"], 1),
            }
            print(json.dumps({k: phases[k] for k in ("floor", "cold", "warm")}, indent=1), results["ratios"], flush=True)

            # sustained: 32 clients, 90 % warm (from the cold set), 10 % new passages
            def mixed(i):
                return ("POST", "/v1/compress", next(stream) if i % 10 == 9 else cold[i % len(cold)])

            phases["sustained_32"] = (await run_phase(client, "sustained 32 clients", mixed, 32, 10**6,
                                                      args.sustained_s)).summary()
            print(phases["sustained_32"], flush=True)

            # replicas: cold throughput with 1 then 2 replicas of the compressor stage
            rep_s = 20 * s
            one = (await run_phase(client, "cold, 1 replica", lambda i: ("POST", "/v1/compress", next(stream)),
                                   16, 10**6, rep_s)).summary()
            t0 = time.perf_counter()
            await asyncio.to_thread(deploy, redis.url, 2)
            scale_s = time.perf_counter() - t0
            await run_phase(client, "warmup 2 replicas", lambda i: ("POST", "/v1/compress", next(stream)), 16, 64, 20)
            two = (await run_phase(client, "cold, 2 replicas", lambda i: ("POST", "/v1/compress", next(stream)),
                                   16, 10**6, rep_s)).summary()
            phases["replicas_1"], phases["replicas_2"] = one, two
            results["ratios"]["throughput_2_over_1_replicas"] = round(two["throughput_rps"] / one["throughput_rps"], 2)
            results["ratios"]["scale_up_seconds"] = round(scale_s, 1)
            print(one, two, results["ratios"], flush=True)

            # Redis stopped mid-run, then started again (empty: no persistence)
            stop_at, start_at, red_s = 5.0, 12.0, 22.0
            ready_log: list[tuple[float, str]] = []

            async def redis_fault(t0):
                await asyncio.sleep(stop_at)
                await asyncio.to_thread(redis.stop)
                while time.perf_counter() - t0 < start_at:
                    ready_log.append((round(time.perf_counter() - t0, 1), await ready_status()))
                    await asyncio.sleep(0.5)
                await asyncio.to_thread(redis.start)
                while time.perf_counter() - t0 < red_s:
                    ready_log.append((round(time.perf_counter() - t0, 1), await ready_status()))
                    await asyncio.sleep(0.5)

            hot = cold[:16]  # few enough that each is requested again soon after Redis returns

            def redis_mix(i):
                return ("POST", "/v1/compress", next(stream) if i % 4 == 3 else hot[i % len(hot)])

            rp = await run_phase(client, "redis stopped mid-run", redis_mix, 16, 10**6, red_s, redis_fault)

            def window(a, b):
                sel = [(st, h) for t, st, h in rp.timeline if a <= t < b]
                return {"requests": len(sel), "ok": sum(st == 200 for st, _ in sel),
                        "hit_ratio": round(sum(h for _, h in sel) / max(1, sum(st == 200 for st, _ in sel)), 3)}

            rp.notes = {
                "redis_stopped_at_s": stop_at, "redis_started_at_s": start_at,
                "before_stop": window(0, stop_at), "while_down": window(stop_at + 0.5, start_at),
                "after_restart": window(start_at + 3, red_s + 1),
                "readyz_while_down": sorted({st for t, st in ready_log if stop_at + 0.5 < t < start_at}),
                "readyz_after_restart": ready_log[-1][1] if ready_log else None,
            }
            probe = next(stream)  # a new passage set, twice: the second must be a Redis hit
            first = (await client.post("/v1/compress", json=probe)).json()["cache"]["hit"]
            second = (await client.post("/v1/compress", json=probe)).json()["cache"]["hit"]
            rp.notes["probe_after_restart"] = {"first_hit": first, "second_hit": second}
            phases["redis_fault"] = rp.summary()
            print(phases["redis_fault"], flush=True)

            # a compressor replica killed under load (2 replicas running)
            kill_at, kill_s = 5.0, 25.0 * max(1.0, s)
            killed: dict[str, Any] = {}

            async def kill_replica(t0):
                await asyncio.sleep(kill_at)
                names = replica_actor_names()
                victim = names[0]
                handle = ray.get_actor(victim, namespace="serve")
                ray.kill(handle, no_restart=True)
                killed.update(actor=victim, replicas_before=len(names), at_s=round(time.perf_counter() - t0, 2))
                tk = time.perf_counter()
                while running_replicas() >= 2 and time.perf_counter() - tk < 10:  # controller notices the death
                    await asyncio.sleep(0.1)
                while running_replicas() < 2 and time.perf_counter() - tk < 120:
                    await asyncio.sleep(0.25)
                killed["replaced_after_s"] = round(time.perf_counter() - tk, 1) if running_replicas() >= 2 else None

            kp = await run_phase(client, "replica killed under load", redis_mix, 16, 10**6, kill_s, kill_replica)
            kp.notes = {"killed": killed, "failed_requests": kp.errors,
                        "failed_statuses": {k: v for k, v in kp.statuses.items() if k != "200"}}
            phases["replica_killed"] = kp.summary()
            print(phases["replica_killed"], flush=True)
            metrics = (await client.get("/metrics")).text
            results["metrics_excerpt"] = [ln for ln in metrics.splitlines()
                                          if ln.startswith(("ragpress_cache_hit_ratio", "ragpress_cache_degraded"))]

        if "overload" in args.phases:
            # capacity at saturation (16 closed-loop clients fill the batches), then twice that offered
            await run_phase(client, "warmup", lambda i: ("POST", "/v1/compress", next(stream)), 16, 32, 30)
            capacity = (await run_phase(client, "capacity", lambda i: ("POST", "/v1/compress", next(stream)),
                                        16, 10**6, 20 * s)).summary()["throughput_rps"]
            phases["overload"] = await overload_phase(client, stream, 2 * capacity, 30 * s)
            phases["overload"]["capacity_rps"] = capacity
            print(phases["overload"], flush=True)
    if "efficiency" in args.phases:
        results["efficiency"] = await efficiency_phase(base, redis.url, args)
        print(results["efficiency"], flush=True)

    serve.shutdown()
    ray.shutdown()
    if "cluster" in args.phases:
        results["cluster"] = await cluster_phase(redis.url, args)
        print(results["cluster"], flush=True)
    if "gpu" in args.phases:
        results["gpu"] = await gpu_phase(args)
        print(results["gpu"], flush=True)
    redis.stop()
    return results


# ---------------------------------------------------------------------------- overload
async def overload_phase(client, stream, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop arrivals (a request every 1/rate s, whatever the answers): accepted, shed and
    other outcomes, with latencies."""
    import httpx

    out: list[tuple[int | str, float, bool]] = []  # status, seconds, Retry-After present

    async def one(body) -> None:
        ts = time.perf_counter()
        try:
            r = await client.post("/v1/compress", json=body)
            shed = r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
            out.append((r.status_code if not shed else "shed", time.perf_counter() - ts,
                        r.headers.get("retry-after") is not None))
        except httpx.HTTPError as exc:
            out.append((type(exc).__name__, time.perf_counter() - ts, False))

    t0 = time.perf_counter()
    tasks = []
    for k in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(next(stream))))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0

    def pct(xs, q):
        xs = sorted(xs)
        return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None

    ok = [t for st, t, _ in out if st == 200]
    shed = [(t, ra) for st, t, ra in out if st == "shed"]
    other: dict[str, int] = {}
    for st, _, _ in out:
        if st not in (200, "shed"):
            other[str(st)] = other.get(str(st), 0) + 1
    return {"phase": f"overload, open loop at {rate:.1f} req/s", "offered_rps": round(rate, 2),
            "requests": len(out), "seconds": round(elapsed, 1), "accepted": len(ok),
            "accepted_rps": round(len(ok) / elapsed, 2), "accepted_p50_ms": pct(ok, 0.5),
            "accepted_p99_ms": pct(ok, 0.99), "shed": len(shed), "shed_with_retry_after": sum(ra for _, ra in shed),
            "shed_p99_ms": pct([t for t, _ in shed], 0.99), "other": other}


# ---------------------------------------------------------------------------- efficiency
def efficiency_bodies(path: Path, n: int) -> list[dict[str, Any]]:
    """``n`` requests whose paragraphs are all distinct (nothing shared, nothing cached)."""
    out, seen = [], set()
    for body in request_stream(path):
        keys = {p["text"] for p in body["passages"]}
        if keys & seen:
            continue
        seen |= keys
        out.append(body)
        if len(out) == n:
            return out
    return out


def in_process_rate(bodies: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """``compress_batch`` over the bodies in this process (model loaded and warmed first)."""
    import torch

    from ragpress.core.registry import create_compressor
    from ragpress.core.types import Budget, CompressionRequest, Passage

    torch.set_num_threads(threads)
    comp = create_compressor(METHOD)
    reqs = [CompressionRequest(query=b["query"], budget=Budget(**b["budget"]),
                               passages=[Passage(**p) for p in b["passages"]]) for b in bodies]
    comp.compress_batch(reqs[:4])  # load + warm (not timed)
    warm = create_compressor(METHOD)  # same cached model, a fresh object: nothing memoised per request
    t0 = time.perf_counter()
    for k in range(0, len(reqs), 16):  # batches of 16, as the service's
        warm.compress_batch(reqs[k:k + 16])
    dt = time.perf_counter() - t0
    return {"requests": len(reqs), "seconds": round(dt, 2), "rps": round(len(reqs) / dt, 2), "threads": threads}


async def efficiency_phase(base: str, redis_url: str, args) -> dict[str, Any]:
    """The service's cold throughput at saturation (16 clients) against in-process
    ``compress_batch`` of the same requests, several layouts of the compressor stage."""
    import httpx

    n = int(args.efficiency_requests)
    bodies = efficiency_bodies(Path(args.data), n)  # the same requests on both sides (no cache anywhere)
    if len(bodies) < n:
        raise SystemExit(f"only {len(bodies)} requests with distinct paragraphs; lower --efficiency-requests")
    ref = await asyncio.to_thread(in_process_rate, bodies, 2)
    out: dict[str, Any] = {"in_process": ref, "layouts": []}
    layouts = [(1, 1), (1, 2), (2, 1)]  # replicas x threads per replica
    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)) as client:
        for replicas, threads in layouts:
            await asyncio.to_thread(deploy, "none://", replicas, threads)
            await run_phase(client, "warmup", lambda i: ("POST", "/v1/compress", bodies[i % n]), 4, 8, 60)
            ph = (await run_phase(client, f"service {replicas}x{threads}",
                                  lambda i: ("POST", "/v1/compress", bodies[i]), 16, n, 300)).summary()
            out["layouts"].append({"replicas": replicas, "threads_per_replica": threads, "rps": ph["throughput_rps"],
                                   "errors": ph["errors"], "p50_ms": ph["p50_ms"],
                                   "ratio_to_in_process": round(ph["throughput_rps"] / ref["rps"], 2)})
            print(out["layouts"][-1], flush=True)
    await asyncio.to_thread(deploy, redis_url, 1)
    return out


# ---------------------------------------------------------------------------- two nodes
async def cluster_phase(redis_url: str, args) -> dict[str, Any]:
    """One compressor replica per node of a two-node cluster; the second node's raylet killed."""
    import httpx
    import ray
    from ray import serve

    from ragpress.services.app import build_app
    from ragpress.testing.ray_cluster import LocalRayCluster

    s = args.scale
    stream = request_stream(Path(args.data))
    with LocalRayCluster(head_cpus=2, worker_cpus=1, head_resources={"head": 1}) as cluster:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        port = free_port(HOST)
        serve.start(proxy_location="HeadOnly", http_options={"host": HOST, "port": port})
        config = service_config(redis_url, 2, max_replicas_per_node=1)
        config.ingress["ray_actor_options"] = {"num_cpus": 0.25, "resources": {"head": 0.01}}
        serve.run(build_app(config), name="ragpress", route_prefix="/")
        wait_replicas(2, timeout=240)
        nodes = {n["NodeID"]: ("head" if "head" in n["Resources"] else "node2") for n in ray.nodes() if n["Alive"]}
        placement = sorted(nodes.get(a.get("node_id", ""), "?") for a in _replica_nodes())
        ready_log: list[tuple[float, str]] = []
        killed: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=60) as client:
            await run_phase(client, "warmup", lambda i: ("POST", "/v1/compress", next(stream)), 8, 32, 60)

            async def kill_node(t0):
                await asyncio.sleep(4.0)
                ready_log.append((round(time.perf_counter() - t0, 1), (await client.get("/readyz")).json()["status"]))
                await asyncio.sleep(max(0.0, 5.0 - (time.perf_counter() - t0)))
                killed["at_s"] = round(time.perf_counter() - t0, 2)
                await asyncio.to_thread(cluster.kill_worker_node)
                killed["node_dead_after_s"] = round(time.perf_counter() - t0 - killed["at_s"], 1)
                while time.perf_counter() - t0 < 30 * max(1.0, s):
                    try:
                        st = (await client.get("/readyz")).json()["status"]
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        st = type(exc).__name__
                    ready_log.append((round(time.perf_counter() - t0, 1), st))
                    await asyncio.sleep(1.0)

            ph = await run_phase(client, "two nodes, node 2 killed", lambda i: ("POST", "/v1/compress", next(stream)),
                                 8, 10**6, 30 * max(1.0, s), kill_node)
            metrics = (await client.get("/metrics")).text
        retries = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("ragpress_stage_retries_total{"))
        ok_times = sorted(t for t, st, _ in ph.timeline if st == 200)
        after = [t for t in ok_times if t >= killed.get("at_s", 0)]
        gaps = [b - a for a, b in zip([killed.get("at_s", 0)] + after, after)]
        serve.shutdown()
        ray.shutdown()
    summary = ph.summary()
    summary.update(placement_before=placement, killed=killed, longest_stall_s=round(max(gaps, default=0.0), 2),
                   stage_calls_sent_again=int(retries),
                   readyz=sorted({st for _, st in ready_log}), readyz_log=ready_log[:40])
    return summary


async def gpu_phase(args) -> dict[str, Any]:
    """``deploy/serve-gpu-cluster.yaml`` fitted to this machine on a two-node cluster whose second
    node has 2 logical GPUs; load on the ``exit`` compressor only; every stage's replica count over
    time (the ``exit`` stage should scale up to what the GPUs hold, the others stay)."""
    import httpx
    import ray

    from ragpress.testing.gpu_config import deploy_serve_config, fit_gpu_config, load_serve_config
    from ragpress.testing.ray_cluster import LocalRayCluster

    stream = request_stream(Path(args.data))
    keys = {"RAGPRESS_API_KEY_APP": "rp-bench-app", "RAGPRESS_API_KEY_OPS": "rp-bench-ops"}
    port = free_port(HOST)
    config = fit_gpu_config(load_serve_config(ROOT / "deploy" / "serve-gpu-cluster.yaml"), gpus=2, port=port)
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Compressor-exit":  # a CPU replica serves a few at once, not a GPU's 16
            d["autoscaling_config"].update(target_ongoing_requests=2, downscale_delay_s=600)
            gpu_share = d["ray_actor_options"]["num_gpus"]
    with LocalRayCluster(head_cpus=2, worker_cpus=2, worker_gpus=2, timeout_s=180, env=keys) as cluster:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        await asyncio.to_thread(deploy_serve_config, config, 900)
        counts: list[tuple[float, dict[str, int]]] = []

        def count() -> dict[str, str]:
            """Per stage ``running/target`` replicas (a new replica loads its model before it runs)."""
            from ray.serve.context import _get_global_client

            deps = _get_global_client().get_serve_details()["applications"]["ragpress"]["deployments"]
            return {n: f"{sum(r['state'] == 'RUNNING' for r in d['replicas'])}/{d.get('target_num_replicas')}"
                    for n, d in deps.items()}

        async def watch(t0):
            while time.perf_counter() - t0 < 150 * max(1.0, args.scale):
                counts.append((round(time.perf_counter() - t0, 1), await asyncio.to_thread(count)))
                await asyncio.sleep(3.0)

        headers = {"authorization": f"Bearer {keys['RAGPRESS_API_KEY_APP']}"}
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=120, headers=headers) as client:
            def exit_request(i):
                body = {**next(stream), "method": "exit"}
                return ("POST", "/v1/compress", body)

            ph = await run_phase(client, "load on exit only", exit_request, 12, 10**6, 150 * max(1.0, args.scale),
                                 watch)
        ray.shutdown()
    def target(c: str) -> int:
        return int(c.split("/")[1]) if c.split("/")[1].isdigit() else 0

    first, last = counts[0][1], counts[-1][1]
    grew = sorted(n for n in last if max(target(c[n]) for _, c in counts) > target(first.get(n, "0/0")))
    return {**ph.summary(), "exit_gpu_share": gpu_share, "replicas_first": first, "replicas_last": last,
            "grew": grew, "counts": counts}


def _replica_nodes() -> list[dict[str, Any]]:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    dep = details["applications"]["ragpress"]["deployments"][STAGE]
    return [r for r in dep["replicas"] if r["state"] == "RUNNING"]


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    r, p = res.get("ratios", {}), res["phases"]
    out = []
    if "sustained_32" in p:
        out += [
            ("warm p50 within 2x the floor's p50", f"{r['warm_p50_over_floor_p50']}x",
             r["warm_p50_over_floor_p50"] <= 2),
            ("warm over cold speed-up >= 10x (p50)", f"{r['cold_p50_over_warm_p50']}x",
             r["cold_p50_over_warm_p50"] >= 10),
            ("32 clients, 60 s: every request served or shed at once (0 errors), p99 of the served bounded by "
             "the queue (< 10 s)", f"{p['sustained_32']['errors']} errors, {p['sustained_32']['shed']} shed / "
             f"{p['sustained_32']['requests']} in {p['sustained_32']['seconds']} s, p99 {p['sustained_32']['p99_ms']} ms",
             p["sustained_32"]["errors"] == 0 and p["sustained_32"]["p99_ms"] < 10_000),
            ("throughput rises with a 2nd compressor replica", f"{r['throughput_2_over_1_replicas']}x",
             r["throughput_2_over_1_replicas"] > 1),
            ("Redis stopped: every request answered", f"{p['redis_fault']['errors']} errors / "
             f"{p['redis_fault']['requests']}", p["redis_fault"]["errors"] == 0),
            ("Redis stopped: /readyz degraded", ",".join(p["redis_fault"]["readyz_while_down"]),
             "degraded" in p["redis_fault"]["readyz_while_down"]),
            ("Redis back: cache used again", f"hit ratio {p['redis_fault']['after_restart']['hit_ratio']} after "
             f"restart; repeat probe hit: {p['redis_fault']['probe_after_restart']['second_hit']}",
             p["redis_fault"]["after_restart"]["hit_ratio"] > 0 and p["redis_fault"]["probe_after_restart"]["second_hit"]),
            ("replica killed under load: 0 failed requests", f"{p['replica_killed']['failed_requests']} failed / "
             f"{p['replica_killed']['requests']}; replaced after {p['replica_killed']['killed'].get('replaced_after_s')} s",
             p["replica_killed"]["failed_requests"] == 0),
        ]
    if "overload" in p:
        o = p["overload"]
        out.append(("overload at 2x capacity: accepted or a quick 503 with Retry-After, nothing else",
                    f"{o['accepted']} accepted (p99 {o['accepted_p99_ms']} ms), {o['shed']} shed "
                    f"({o['shed_with_retry_after']} with Retry-After, p99 {o['shed_p99_ms']} ms), other {o['other']}",
                    not o["other"] and o["shed"] == o["shed_with_retry_after"] and o["accepted"] > 0))
    if "efficiency" in res:
        best = max(res["efficiency"]["layouts"], key=lambda x: x["ratio_to_in_process"])
        out.append(("service cold throughput >= 0.8x in-process compress_batch (best layout)",
                    f"{best['ratio_to_in_process']}x ({best['replicas']} replica(s) x "
                    f"{best['threads_per_replica']} thread(s))", best["ratio_to_in_process"] >= 0.8))
    if "cluster" in res:
        c = res["cluster"]
        out.append(("two nodes, node 2 lost under load: 0 failed requests", f"{c['errors']} failed / "
                    f"{c['requests']}; longest stall {c['longest_stall_s']} s; /readyz {c['readyz']}", c["errors"] == 0))
    if "gpu" in res:
        g = res["gpu"]
        out.append(("load on one stage scales that stage only", f"grew: {g['grew']}",
                    g["grew"] == ["Compressor-exit"]))
    return out


def write_markdown(res: dict[str, Any], path: Path, command: str) -> None:
    cols = ["concurrency", "requests", "shed", "errors", "seconds", "throughput_rps", "p50_ms", "p99_ms",
            "cache_hit_ratio"]
    lines = ["# Service load test", "", f"`{command}` on this machine ({res['config']['cpus']} CPU cores, "
             f"Ray {res['config']['ray']}); {res['config']['request']}; method `{METHOD}`, "
             f"Redis segment cache on loopback; compressor replicas num_cpus=0.5, 1 BLAS thread each unless said, "
             "16 running + 16 queued per caller. The load generator (httpx, async) runs on the same 2 cores.", ""]
    table = [ph for ph in res["phases"].values() if "concurrency" in ph]
    if table:
        lines += ["| phase | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {ph['phase']} | " + " | ".join(str(ph.get(c)) for c in cols) + " |" for ph in table]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in targets(res)]
    p = res["phases"]
    if "redis_fault" in p:
        rf, rk = p["redis_fault"], p["replica_killed"]
        lines += ["", "Redis fault windows (requests, ok, cache hit ratio): "
                  f"before stop {rf['before_stop']}, while down {rf['while_down']}, after restart "
                  f"{rf['after_restart']}; /readyz while down: {rf['readyz_while_down']}, after restart: "
                  f"{rf['readyz_after_restart']}.", "",
                  f"Replica kill: {rk['killed']}; failed statuses {rk['failed_statuses']}."]
    if "overload" in p:
        lines += ["", f"Overload: {p['overload']}"]
    if "efficiency" in res:
        e = res["efficiency"]
        lines += ["", f"## Efficiency: service against in-process `compress_batch` ({e['in_process']['requests']} "
                  f"requests with distinct paragraphs, no cache on either side)", "",
                  f"In process, {e['in_process']['threads']} threads: {e['in_process']['rps']} requests/s.", "",
                  "| compressor replicas | threads per replica | service requests/s | ratio | p50 ms | errors |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {x['replicas']} | {x['threads_per_replica']} | {x['rps']} | {x['ratio_to_in_process']}x | "
                  f"{x['p50_ms']} | {x['errors']} |" for x in e["layouts"]]
    if "cluster" in res:
        c = res["cluster"]
        lines += ["", "## Two nodes, the second one's raylet killed under load", "",
                  f"Replicas before (node of each): {c['placement_before']}; killed: {c['killed']}; "
                  f"{c['requests']} requests, {c['errors']} failed ({c['statuses']}), "
                  f"{c['stage_calls_sent_again']} stage call(s) sent again; longest stall after the kill "
                  f"{c['longest_stall_s']} s; /readyz seen: {c['readyz']}.", "",
                  f"/readyz over time (s, status): {c['readyz_log']}"]
    if "gpu" in res:
        g = res["gpu"]
        lines += ["", "## Stages scaling on their own: serve-gpu-cluster.yaml on 2 logical GPUs", "",
                  f"Load on the `exit` compressor only ({g['requests']} requests, {g['errors']} failed, "
                  f"{g['throughput_rps']} requests/s); its GPU share {g['exit_gpu_share']}. Replicas (running / "
                  f"target) per stage at the start: {g['replicas_first']}; at the end: {g['replicas_last']}; grew: "
                  f"{g['grew']}.", "", "| s (running/target) | " + " | ".join(sorted(g["replicas_first"])) + " |",
                  "|---|" + "---|" * len(g["replicas_first"])]
        lines += [f"| {t} | " + " | ".join(str(c.get(n, 0)) for n in sorted(g["replicas_first"])) + " |"
                  for t, c in g["counts"]]
    if res.get("ratios"):
        lines += ["", "Ratios: " + ", ".join(f"{k} = {v}" for k, v in res["ratios"].items())]
    path.write_text("\n".join(lines + [""]), encoding="utf-8")


def main() -> None:
    global METHOD, STAGE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--concurrency", type=int, default=8, help="clients in the floor/cold/warm phases")
    ap.add_argument("--cold", type=int, default=200, help="unique requests in the cold (and warm) phase")
    ap.add_argument("--sustained-s", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="shorter phases (smoke run)")
    ap.add_argument("--phases", default="base,overload,efficiency,cluster,gpu",
                    help="comma-separated: base (phases 1-7), overload, efficiency, cluster, gpu")
    ap.add_argument("--efficiency-requests", type=int, default=48, help="requests per efficiency measurement")
    ap.add_argument("--method", default=METHOD, help=f"the compressor under load (default {METHOD})")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load"))
    args = ap.parse_args()
    METHOD, STAGE = args.method, f"Compressor-{args.method}"
    args.scale = 0.5 if args.quick else 1.0
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if args.quick:
        args.cold, args.sustained_s = min(args.cold, 120), min(args.sustained_s, 20)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    res = asyncio.run(main_async(args))
    res["config"]["total_s"] = round(time.perf_counter() - t0, 1)
    command = "python " + " ".join(["benchmarks/load.py", *sys.argv[1:]])
    res["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(res)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, out.with_suffix(".md"), command)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
