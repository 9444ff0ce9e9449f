"""Where the served process tree's memory goes: ``ragpress serve`` as a user starts it, every stage
sent real requests (the ``--smoke`` set: compress cold and warm, retrieve -> compress -> read,
answer, chat), then left at rest; the tree's PSS and RSS per role (a Serve replica by its
deployment, Ray's and Serve's own processes by name).

    .venv/bin/python benchmarks/serve_memory.py                       # the embedded defaults, ~2 min
    .venv/bin/python benchmarks/serve_memory.py --serve-args "--methods exit"

PSS counts a page shared by several processes (the libraries every Ray worker maps, the object
store) once in all, split between them; RSS counts it in each. Writes
benchmarks/results/serve_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REST_S = 10.0  # after the last request, before the figures at rest


def _stage(role: str) -> str:
    """A role's group: a Serve replica's deployment, Serve's own actors, Ray's, the CLI."""
    if role.startswith("ray::ServeReplica:"):
        return "stage: " + role.rsplit(":", 1)[-1]
    if role.startswith(("ray::ServeController", "ray::ProxyActor")):
        return "Serve: controller and HTTP proxy"
    if "ragpress" in role or role.startswith("ray::DrainCoordinator"):
        return "ragpress serve: the driver and its drain actor"
    if role.startswith("ray::IDLE"):
        return "Ray: idle workers"
    return "Ray: daemons (GCS, raylet, dashboard, agents, monitors)"


def snapshot(pid: int) -> dict:
    """PSS / RSS (MiB) and process count per role of the tree under ``pid``, now."""
    from benchmarks.batch import TreeSampler

    s = TreeSampler(pid)
    s.sample()
    return s.last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve-args", default="", help="more arguments for ragpress serve")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results" / "serve_memory"))
    ap.add_argument("--render", action="store_true", help="only redo the Markdown from the JSON of the last run")
    args = ap.parse_args()
    prefix = Path(args.out_prefix)
    if args.render:
        res = json.loads(prefix.with_suffix(".json").read_text())
    else:
        res = measure(args.serve_args)
        prefix.with_suffix(".json").write_text(json.dumps(res, indent=2))
    prefix.with_suffix(".md").write_text(render(res))
    print(prefix.with_suffix(".md").read_text())


def measure(serve_args: str) -> dict:
    """Start ``ragpress serve``, send every stage the smoke requests, take the tree's figures."""
    import httpx

    from benchmarks.batch import TreeSampler, reap
    from ragpress.services.redis_server import free_port
    from ragpress.services.serve_cli import smoke

    port = free_port("127.0.0.1")
    cmd = [str(Path(sys.executable).parent / "ragpress"), "serve", "--port", str(port), *shlex.split(serve_args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="rp-serve-mem-"))
    res: dict = {"command": ("python benchmarks/serve_memory.py " + " ".join(sys.argv[1:])).strip(),
                 "serve": " ".join(["ragpress serve", *shlex.split(serve_args)]),
                 "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    url = f"http://127.0.0.1:{port}"
    with (work / "serve.out").open("wb") as so, (work / "serve.err").open("wb") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=so, stderr=se, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            deadline = time.time() + 600
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"ragpress serve exited {proc.returncode}: "
                                     f"{(work / 'serve.err').read_text()[-2000:]}")
                try:
                    r = httpx.get(f"{url}/readyz", timeout=2)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("ragpress serve was not ready in 600 s")
                time.sleep(0.5)
            res["ready_s"] = round(time.perf_counter() - t0, 1)
            methods = httpx.get(f"{url}/v1/methods", timeout=10).json()
            served = [methods["default"]] + [m["name"] for m in methods["methods"] if m["name"] != methods["default"]]
            res["after_start"] = snapshot(proc.pid)
            t1 = time.perf_counter()
            res["smoke_rc"] = smoke(url, served, has_retriever=True, has_reader=True)
            res["smoke_s"] = round(time.perf_counter() - t1, 1)
            time.sleep(REST_S)
            res["at_rest"] = snapshot(proc.pid)
        finally:
            sampler.stop.set()
            sampler.join()
            res["peak_pss_mib"] = round(sampler.peak_pss / 2**20, 1)
            res["peak_rss_mib"] = round(sampler.peak_rss / 2**20, 1)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                res["exit_code"] = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                res["exit_code"] = proc.wait()
            res["killed_after_exit"] = reap(proc.pid, sampler, grace_s=5.0)
    return res


def render(res: dict) -> str:
    rest, start = res["at_rest"], res["after_start"]
    groups: dict[str, list[float]] = {}
    for role, r in rest.items():
        g = groups.setdefault(_stage(role), [0.0, 0.0, 0])
        g[0] += r["pss_mib"]
        g[1] += r["rss_mib"]
        g[2] += r["processes"]
    total = sum(g[0] for g in groups.values())
    serve = re.sub(r" --port \d+", "", res["serve"])
    serve = serve if serve.startswith("ragpress") else f"ragpress {serve}"
    lines = [f"# The served process tree's memory (`{serve}`)", "",
             f"`{res['command']}` on {res['cpus']} CPUs (load average {res['load_average_at_start']:.2f} at start). "
             f"Ready after {res['ready_s']} s; the `--smoke` requests (every stage) answered "
             f"{'all 200' if res['smoke_rc'] == 0 else 'with errors'} in {res['smoke_s']} s; figures at rest "
             f"{REST_S:.0f} s later. Peak over the run: PSS {res['peak_pss_mib']:.0f} MiB, RSS {res['peak_rss_mib']:.0f} MiB. "
             f"SIGTERM: exit {res['exit_code']}, {len(res['killed_after_exit'])} processes left behind.", "",
             "## By group, at rest", "",
             "| group | PSS MiB | share | RSS MiB | processes |", "|---|---|---|---|---|"]
    for name, (pss, rss, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {name} | {pss:.0f} | {100 * pss / total:.0f} % | {rss:.0f} | {n} |")
    lines.append(f"| **whole tree** | **{total:.0f}** | 100 % | {sum(g[1] for g in groups.values()):.0f} | "
                 f"{sum(g[2] for g in groups.values())} |")
    lines += ["", "## By process role: after start (no request yet) and at rest", "",
              "| role | PSS MiB after start | PSS MiB at rest | RSS MiB at rest | processes |", "|---|---|---|---|---|"]
    for role, r in rest.items():
        lines.append(f"| {role} | {start.get(role, {}).get('pss_mib', 0):.0f} | {r['pss_mib']:.0f} | "
                     f"{r['rss_mib']:.0f} | {r['processes']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
