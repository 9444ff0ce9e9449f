"""Benchmark of ``ragpress batch`` over the shared Wikipedia passage sample, and what it buys the
service: one private local Ray instance and one redis-server for every phase.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch.py                 # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/batch.py --limit 60 --queries 12            # shorter

Phases (method ``exit``, the service's default: its head embeds each passage's sentences,
the passage and its title, none of it query-dependent):

1. throughput: the first ``--limit`` passages, cold cache, 1 worker then 2 workers (documents/s
   and tokens/s over the whole run and once results flow; the ratio 2 / 1);
2. resume: a rerun of the finished job (nothing to do), and a half-done job (the shards of the
   first half kept, their cache entries loaded from the shards, the rest cold) resumed;
3. service: ``POST /v1/compress`` (Ray Serve, Redis segment cache) on passage triples the job has
   processed versus triples of passages it has not (the next ``--limit`` of the sample),
   interleaved, one request at a time: p50 / p90 latency of each.

Writes benchmarks/results/batch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ragpress.qa import default_data_dir  # noqa: E402
from ragpress.services.redis_server import RedisServer, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = default_data_dir() / "wiki_passages" / "flashrag_wiki_sample1000.jsonl"
METHOD = "exit"
HOST = "127.0.0.1"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_job(source: Path, out: Path, redis_url: str, workers: int, batch_size: int, shard_docs: int):
    from ragpress.batch import BatchConfig, StageSpec, run_batch

    cfg = BatchConfig(source=str(source), out=str(out), methods=[METHOD], cache_url=redis_url,
                      stage=StageSpec(workers=workers, num_cpus=0.5, batch_size=batch_size), shard_docs=shard_docs,
                      read_docs=batch_size, progress=True)
    report = run_batch(cfg)
    print(f"  {workers} worker(s): {report.summary()}", flush=True)
    return report.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=160, help="passages the job compresses (default 160)")
    ap.add_argument("--queries", type=int, default=20, help="service requests per group (default 20)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch"))
    args = ap.parse_args()

    import ray

    from ragpress.batch import JobFolder, load_entries
    from ragpress.core.cache import make_cache

    records = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()]
    if len(records) < 2 * args.limit:
        sys.exit(f"{DATA} has {len(records)} passages; --limit must be at most half of that")
    work = Path(tempfile.mkdtemp(prefix="rp-batch-bench-"))
    source = work / "store.jsonl"
    source.write_text("".join(json.dumps({k: r[k] for k in ("id", "title", "text")}) + "\n"
                              for r in records[:args.limit]), encoding="utf-8")
    res: dict = {"method": METHOD, "documents": args.limit, "data": str(DATA.relative_to(DATA.parents[2])),
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                 "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch.py " + " ".join(sys.argv[1:])}
    res["load_average_at_start"] = os.getloadavg()[0]
    redis = RedisServer(host=HOST).start()
    ray_tmp = tempfile.mkdtemp(prefix="rpbb-", dir="/tmp")
    t = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, _temp_dir=ray_tmp,
             log_to_driver=False, configure_logging=False, object_store_memory=512 * 2**20,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                                                                   "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}})
    res["ray_start_s"] = time.perf_counter() - t
    cache = make_cache(redis.url).backend
    try:
        # 1. throughput, cold cache each time
        print("throughput", flush=True)
        shard_docs = max(1, args.limit // 8)
        runs = {}
        for workers in (1, 2):
            cache.clear()
            runs[workers] = run_job(source, work / f"w{workers}", redis.url, workers, args.batch_size, shard_docs)
        res["throughput"] = {str(k): v for k, v in runs.items()}
        res["ratio_2_over_1"] = runs[2]["docs_per_s"] / runs[1]["docs_per_s"]
        s1, s2 = runs[1]["steady_docs_per_s"], runs[2]["steady_docs_per_s"]
        res["steady_ratio_2_over_1"] = s2 / s1 if s1 and s2 else None

        # 2. resume costs
        print("resume", flush=True)
        t = time.perf_counter()
        nothing = run_job(source, work / "w2", redis.url, 2, args.batch_size, shard_docs)
        res["resume_all_done"] = {"seconds": time.perf_counter() - t, "documents": nothing["documents"]}
        half = work / "half"
        shutil.copytree(work / "w1", half)
        shards = JobFolder(half).committed()
        for p in shards[len(shards) // 2:]:
            p.unlink()
        cache.clear()
        loaded = load_entries(half, cache)  # the done half's work is in the cache, as after the crash
        resumed = run_job(source, half, redis.url, 1, args.batch_size, shard_docs)
        res["resume_half_done"] = {**resumed, "entries_loaded": loaded,
                                   "vs_full_run": resumed["seconds"] / runs[1]["seconds"]}

        # 3. service p50, processed vs not processed passages (cache holds the job's work only)
        print("service", flush=True)
        cache.clear()
        assert load_entries(work / "w1", cache) > 0
        res["service"] = service_phase(records, args, redis.url)
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # serve never started
            pass
        ray.shutdown()
        redis.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    res["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    write_markdown(res, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())


def service_phase(records: list[dict], args, redis_url: str) -> dict:
    import httpx
    from ray import serve

    from ragpress.services.app import CompressorStage, ServiceConfig, build_app

    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    cfg = ServiceConfig(compressors=[CompressorStage(method=METHOD)], retriever=None, reader=None,
                        cache={"url": redis_url})
    serve.run(build_app(cfg), name="ragpress", route_prefix="/")

    def body(recs):
        return {"query": f"What is known about {recs[0]['title']}?", "method": METHOD, "budget": {"ratio": 0.3},
                "passages": [{"id": r["id"], "title": r["title"], "text": r["text"]} for r in recs]}

    done = [records[i:i + 3] for i in range(0, args.limit - 2, 3)][:args.queries]
    fresh = [records[args.limit + i:args.limit + i + 3] for i in range(0, args.limit - 2, 3)][:args.queries]
    lat: dict[str, list[float]] = {"processed": [], "not_processed": []}
    hits: dict[str, int] = {"processed": 0, "not_processed": 0}
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=120) as client:
        client.post("/v1/compress", json=body(records[-3:])).raise_for_status()  # warm-up (not measured)
        for a, b in zip(done, fresh):
            for group, recs in (("processed", a), ("not_processed", b)):
                t = time.perf_counter()
                r = client.post("/v1/compress", json=body(recs))
                lat[group].append(time.perf_counter() - t)
                r.raise_for_status()
                hits[group] += int(r.json().get("cache_hits") or 0)
    out = {g: {"requests": len(v), "p50_ms": 1000 * statistics.median(v), "p90_ms": 1000 * pct(v, 0.9),
               "result_cache_hits": hits[g]} for g, v in lat.items()}
    out["p50_ratio_processed_over_not"] = out["processed"]["p50_ms"] / out["not_processed"]["p50_ms"]
    return out


def write_markdown(res: dict, path: Path) -> None:
    t1, t2 = res["throughput"]["1"], res["throughput"]["2"]
    half, svc = res["resume_half_done"], res["service"]

    def row(name, r):
        steady = r["steady_docs_per_s"]
        return (f"| {name} | {r['documents']} | {r['seconds']:.1f} | {r['first_result_s'] or 0:.1f} | "
                f"{r['docs_per_s']:.2f} | {r['tokens_per_s']:.0f} | {steady and f'{steady:.2f}' or '-'} |")

    lines = [
        f"# ragpress batch ({res['method']}, {res['documents']} Wikipedia passages)",
        "",
        f"`{res['command']}` on {res['machine']['cpus']} CPUs; local Ray started in {res['ray_start_s']:.1f} s "
        "(not in the job times); cold Redis cache for each throughput run. 1-minute load average "
        f"{res.get('load_average_at_start', float('nan')):.1f} at the start, {res.get('load_average_at_end', float('nan')):.1f} "
        "at the end (above the CPU count: other work shared the machine, and the ratios are noisy).",
        "",
        "| run | documents | seconds | first result s | docs/s | tokens/s | docs/s once flowing |",
        "|---|---|---|---|---|---|---|",
        row("1 worker", t1), row("2 workers", t2), row("resume, half done", half),
        "",
        f"2 workers / 1 worker: {res['ratio_2_over_1']:.2f}x over the whole run"
        + (f", {res['steady_ratio_2_over_1']:.2f}x once results flow" if res.get("steady_ratio_2_over_1") else ""),
        "",
        f"Resume: a rerun of the finished job took {res['resume_all_done']['seconds']:.2f} s "
        f"({res['resume_all_done']['documents']} documents redone, no Ray work); the half-done job "
        f"({half['done_before']} done) finished the other {half['documents']} in {half['seconds']:.1f} s, "
        f"{half['vs_full_run']:.2f}x the full 1-worker run.",
        "",
        "Service `POST /v1/compress` (3 passages, ratio 0.3, one request at a time, interleaved):",
        "",
        "| passages | requests | p50 ms | p90 ms |",
        "|---|---|---|---|",
        f"| processed by the batch job | {svc['processed']['requests']} | {svc['processed']['p50_ms']:.1f} | "
        f"{svc['processed']['p90_ms']:.1f} |",
        f"| not processed | {svc['not_processed']['requests']} | {svc['not_processed']['p50_ms']:.1f} | "
        f"{svc['not_processed']['p90_ms']:.1f} |",
        "",
        f"p50 processed / not processed: {svc['p50_ratio_processed_over_not']:.2f}",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
