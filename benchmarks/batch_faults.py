"""Faults during ``ragpress batch``, done for real: a worker actor SIGKILLed mid-job on a private
local Ray, and a whole node lost mid-job on a two-node Ray cluster started on this machine (a head
and a second ``ray start --address`` with its own resources and temp dir).

    .venv/bin/python benchmarks/batch_faults.py                   # ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/batch_faults.py --docs 600 --method embed-sentences

For each fault: the job's documents, whether every id is in exactly one committed shard and the
store is covered, the worker restarts its summary reports, the seconds from the fault to the next
committed shard, and the whole run's seconds. Writes benchmarks/results/batch_faults.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def build_store(path: Path, n: int) -> list[str]:
    """``n`` distinct passages of the shared QA files (the same builder as benchmarks/batch.py)."""
    from benchmarks.batch import store_ids, store_passages, write_store

    write_store(store_passages()[0], n, path)
    return store_ids(path)


def shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("part-*.parquet"))


def committed(out: Path, column: str = "id") -> list:
    import pyarrow.parquet as pq

    vals = []
    for p in shards(out):
        try:
            vals += pq.read_table(p, columns=[column]).column(column).to_pylist()
        except OSError:  # renamed away under us: never (commits are atomic), but keep polling
            pass
    return vals


def run_with_fault(cmd: list[str], env: dict, out: Path, fault, after_docs: int, timeout_s: float = 900) -> dict:
    """Start the job; once ``after_docs`` documents are committed call ``fault(out)`` (returns a
    description); wait for the job; the times of the commits around the fault."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    fault_at, what, seen, next_commit = None, None, 0, None
    while proc.poll() is None and time.perf_counter() - t0 < timeout_s:
        n = len(shards(out))
        if fault_at is None and n and len(committed(out)) >= after_docs:
            seen = n
            what = fault(out)
            fault_at = time.perf_counter()
            print(f"  fault at {fault_at - t0:.1f} s: {what}", flush=True)
        elif fault_at is not None and next_commit is None and n > seen:
            next_commit = time.perf_counter()
        time.sleep(0.1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the job failed (rc {proc.returncode}): {stderr[-3000:]}")
    report = json.loads(stdout[stdout.index("{"):])
    return {"seconds": seconds, "fault": what, "fault_at_s": fault_at and fault_at - t0,
            "fault_to_next_commit_s": next_commit and fault_at and next_commit - fault_at, "report": report}


def check(ids: list[str], out: Path, res: dict) -> dict:
    got = committed(out)
    res.update(documents=len(got), ids_once=len(got) == len(set(got)), covered=set(got) == set(ids),
               restarts=res["report"]["restarts"], errors=res["report"]["errors"],
               workers=sorted(set(committed(out, "worker"))))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1500)
    ap.add_argument("--method", default="exit")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch_faults"))
    args = ap.parse_args()

    from ragpress.testing.ray_cluster import LocalRayCluster

    work = Path(tempfile.mkdtemp(prefix="rp-faults-"))
    store = work / "store.jsonl"
    ids = build_store(store, args.docs)
    base = [sys.executable, "-m", "ragpress.cli", "batch", str(store), "--methods", args.method, "--no-progress",
            "--json", "--shard-docs", "64"]
    res: dict = {"method": args.method, "documents": len(ids), "machine": {"cpus": os.cpu_count(),
                                                                             "python": platform.python_version()},
                 "command": "python benchmarks/batch_faults.py " + " ".join(sys.argv[1:]),
                 "load_average_at_start": os.getloadavg()[0]}

    # 1. a worker actor SIGKILLed (private local Ray, one actor)
    print("worker actor SIGKILL", flush=True)

    def kill_worker(out: Path) -> str:
        worker = committed(out, "worker")[-1]
        os.kill(int(worker.split(":")[1]), signal.SIGKILL)
        return f"SIGKILL to the worker actor {worker}"

    out = work / "worker"
    res["worker_kill"] = check(ids, out, run_with_fault(base + ["--out", str(out)], {**os.environ, **ENV}, out,
                                                        kill_worker, after_docs=len(ids) // 4))
    print(f"  {res['worker_kill']['documents']} documents, ids once {res['worker_kill']['ids_once']}, "
          f"restarts {res['worker_kill']['restarts']}", flush=True)

    # 2. a node lost (two-node cluster: head 3 CPUs, second node 2; one actor on each)
    print("node lost", flush=True)
    with LocalRayCluster(head_cpus=3, worker_cpus=2) as cluster:

        def kill_node(out: Path) -> str:
            on_node2 = set(cluster.worker_pids())
            mine = {int(w.split(":")[1]) for w in committed(out, "worker")}
            t = time.perf_counter()
            dead = cluster.kill_worker_node()
            return (f"the second node's processes SIGKILLed ({len(on_node2)} processes, of which the job's workers "
                    f"{sorted(mine & on_node2)}); the GCS saw it dead: {dead}, after {time.perf_counter() - t:.1f} s")

        out = work / "node"
        cmd = base + ["--out", str(out), "--ray-address", cluster.address, "--workers", "2", "--num-cpus", "1"]
        res["node_loss"] = check(ids, out, run_with_fault(cmd, {**cluster.env, **ENV}, out, kill_node,
                                                          after_docs=len(ids) // 4))
    print(f"  {res['node_loss']['documents']} documents, ids once {res['node_loss']['ids_once']}, "
          f"restarts {res['node_loss']['restarts']}", flush=True)
    res["load_average_at_end"] = os.getloadavg()[0]

    outp = Path(args.out)
    outp.with_suffix(".json").write_text(json.dumps(res, indent=2))
    lines = [f"# `ragpress batch` under faults ({res['method']}, {res['documents']} distinct QA passages)", "",
             f"`{res['command']}` on {res['machine']['cpus']} CPUs; load average {res['load_average_at_start']:.1f} "
             f"at the start, {res['load_average_at_end']:.1f} at the end.", "",
             "| fault | documents committed | every id once | store covered | error rows | worker restarts "
             "(summary) | fault -> next commit s | whole run s |", "|---|---|---|---|---|---|---|---|"]
    for name, key in (("worker actor SIGKILLed at 25 %", "worker_kill"), ("second node lost at 25 %", "node_loss")):
        r = res[key]
        nxt = r["fault_to_next_commit_s"]
        lines.append(f"| {name} | {r['documents']} | {r['ids_once']} | {r['covered']} | {r['errors']} | "
                     f"{r['restarts']} | {nxt and f'{nxt:.1f}' or '-'} | {r['seconds']:.1f} |")
    lines += ["", *(f"* {res[k]['fault']}" for k in ("worker_kill", "node_loss")), ""]
    outp.with_suffix(".md").write_text("\n".join(lines))
    print(outp.with_suffix(".md").read_text())
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
