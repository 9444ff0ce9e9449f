"""Does ``ragpress batch`` stay flat in memory as the store grows? Peak memory of the job's whole
process tree (driver, Ray's gcs / raylet / workers) over stores of growing size, the same job.

    .venv/bin/python benchmarks/batch_memory.py                                  # truncate --emit text, 10k / 100k, ~5 min
    .venv/bin/python benchmarks/batch_memory.py --methods exit --emit work --sizes 10000,100000   # hours on 2 cores

The default job is ``--methods truncate --emit text``: no model, so a 100,000-document store costs
minutes, and every document still goes the whole way (read, prepare, the worker stage, the driver's
dedupe and commit, the compressed store written from the shards at the end): what grows with the
store if anything holds it whole. A model's own memory is the same at every size (one actor, one
model). Stores are built as in benchmarks/batch.py (the shared QA files' distinct passages, then
the same passages under new ids). Writes benchmarks/results/batch_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from benchmarks.batch import parse_json_out, run_process, store_passages, write_store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--methods", default="truncate")
    ap.add_argument("--emit", default="text", choices=("work", "text"))
    ap.add_argument("--ratio", default="0.5")
    ap.add_argument("--job-args", default="", help="more arguments for every job, e.g. '--blocks-mb 256' (a baseline)")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results" / "batch_memory"))
    ap.add_argument("--render", action="store_true", help="only redo the Markdown from the JSON of the last run")
    args = ap.parse_args()
    if args.render:
        prefix = Path(args.out_prefix)
        res = json.loads(prefix.with_suffix(".json").read_text())
        prefix.with_suffix(".md").write_text(render(res, args.methods, args.emit))
        print(prefix.with_suffix(".md").read_text())
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rp-batch-mem-"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    passages, info = store_passages()
    res: dict = {"command": "python benchmarks/batch_memory.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(),
                 "store": info, "runs": {}}
    try:
        for n in sizes:
            store = work / f"store-{n}.jsonl"
            res["runs"][str(n)] = {"store": write_store(passages, n, store)}
            out = work / f"job-{n}"
            cmd = [str(Path(sys.executable).parent / "ragpress"), "batch", str(store), "--methods", args.methods,
                   "--emit", args.emit, "--out", str(out), "--no-progress", "--json"]
            if args.emit == "text":
                cmd += ["--ratio", args.ratio]
            cmd += shlex.split(args.job_args)
            print(f"[{n} documents] {' '.join(cmd[1:])}", flush=True)
            r = run_process(cmd, env, work, f"mem-{n}", shards_of=out)
            r["report"] = parse_json_out(r.pop("stdout"))
            if r["rc"] != 0:
                raise SystemExit(f"the job failed: {r['stderr_tail']}")
            res["runs"][str(n)].update(r)
            print(f"  {r['wall_s']:.1f} s, peak PSS {r['peak_pss_mib']:.0f} MiB, RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"{r['report']['documents']} documents", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            store.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lo, hi = str(min(sizes)), str(max(sizes))
    for k in ("peak_pss_mib", "peak_rss_mib"):
        res[f"{k}_ratio"] = res["runs"][hi][k] / res["runs"][lo][k]
    prefix = Path(args.out_prefix)
    prefix.with_suffix(".json").write_text(json.dumps(res, indent=2))
    prefix.with_suffix(".md").write_text(render(res, args.methods, args.emit))
    print(prefix.with_suffix(".md").read_text())


def render(res: dict, methods: str, emit: str) -> str:
    """The Markdown page of a run's JSON (``python benchmarks/batch_memory.py --render`` redoes it)."""
    sizes = sorted(int(n) for n in res["runs"])
    lo, hi = str(min(sizes)), str(max(sizes))
    lines = [f"# `ragpress batch` memory against store size ({methods}, --emit {emit})", "",
             f"`{res['command']}` on {res['cpus']} CPUs. Peak of the summed memory of the job's whole process tree, "
             "sampled every 0.5 s (PSS counts shared pages once).", "",
             "| documents | whole run s | docs/s | peak PSS MiB | peak RSS MiB |", "|---|---|---|---|---|"]
    for n in sizes:
        r = res["runs"][str(n)]
        lines.append(f"| {n} | {r['wall_s']:.1f} | {n / r['wall_s']:.0f} | {r['peak_pss_mib']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    for a, b in zip(sizes, sizes[1:]):
        lines.append("")
        lines.append(f"{b} against {a} documents: peak PSS "
                     f"{res['runs'][str(b)]['peak_pss_mib'] / res['runs'][str(a)]['peak_pss_mib']:.2f}x.")
    lines += ["", "At the peak: PSS per role, MiB (summed over the role's processes at the sample of the peak; a "
                  "Ray worker is named by the task or actor it runs):", "",
              "| role | " + " | ".join(f"{n} documents" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    roles: dict[str, dict[int, float]] = {}
    for n in sizes:
        for role, v in res["runs"][str(n)].get("pss_at_peak_by_role_mib", {}).items():
            roles.setdefault(role, {})[n] = v
    for role, by in sorted(roles.items(), key=lambda kv: -max(kv[1].values())):
        if max(by.values()) >= 20:
            lines.append(f"| {_short(role)} | " + " | ".join(f"{by.get(n, 0):.0f}" for n in sizes) + " |")
    lines += ["", f"{hi} against {lo} documents: peak PSS {res['peak_pss_mib_ratio']:.2f}x, peak RSS "
                  f"{res['peak_rss_mib_ratio']:.2f}x (target <= 1.2x).", ""]
    return "\n".join(lines)


def _short(role: str) -> str:
    """A role without the paths of its command line."""
    return " ".join(Path(w).name if "/" in w else w for w in role.split())


if __name__ == "__main__":
    main()
