"""Benchmark of ``ragpress batch`` at document-store scale: whole processes timed from launch to
exit (imports, model loads and the job's Ray start included), every figure beside its reference
measured in the same run.

    .venv/bin/python benchmarks/batch.py                     # 1k and 10k passages, exit and embed-sentences
    .venv/bin/python benchmarks/batch.py --sizes 200 --methods embed-sentences --skip-resume   # ~2 min

On this machine (2 CPU cores) ``--sizes 200 --methods embed-sentences`` took 2.7 min and
``--sizes 200,400 --methods exit,embed-sentences`` 16 min (a busy machine: load average 5-13);
at those sizes a job is mostly start-up (~35 s to its first shard: imports, Ray, actors, the
model). The default run is estimated at about 2 hours when the machine is otherwise idle, most
of it the 10k runs (in-process ~10-16 min, the job about as long, the killed job 80 % of that
plus its resume, per method, then the two-method job); ``--skip-resume`` saves about a third.

The store: every distinct ``(title, text)`` passage of the shared QA files (each ``*.jsonl``
under ``ragpress.qa.default_data_dir()`` whose records carry a ``passages`` list; ``orig``
folders skipped; empty texts dropped), ids ``p<sha1(title + text), 12 hex>``, ordered by id so
that any prefix mixes all the sets. ~15.5k passages exist; a larger size repeats them under new
ids (``<id>~k``, the whole store once per k), which the output says.

Per method (``--methods``) and store size (``--sizes``):

1. in-process reference: ``python benchmarks/batch.py _inprocess ...`` (a hidden sub-command of
   this file) creates the compressor, sets ``torch.set_num_threads(T)`` and a ``NullCache``
   segment cache (pure compute, nothing stored) and calls ``precompute`` on batches of 16;
2. ``ragpress batch STORE --methods M --out DIR --no-progress --json`` (Parquet only, no cache):
   the same compute plus what the job stores: wall time, time to the first committed shard,
   peak PSS / RSS of its whole process tree (Ray's gcs, raylet and workers included), docs/s
   against the reference's;
3. resume: the same command on a fresh folder, its process group SIGKILLed once >= 80 % of the
   documents are committed, then run again: the rerun's time against phase 2's, and every
   store id committed exactly once (a small store can arrive in one block, all committed at
   once: ``--job-args "--read-docs 32 --shard-docs 32"`` passes smaller ones to every job);
4. (when both are asked for) ``--methods exit,embed-sentences`` in one job against the slower of
   the two single-method jobs.

T (``--threads``, default: ``$OMP_NUM_THREADS`` if set, else all CPUs) is the same on both sides:
``ragpress batch --threads T`` where the job has that flag, else ``OMP_NUM_THREADS=T`` in its
environment (the output says which). Writes ``<out-prefix>.json``, ``<out-prefix>.md`` and
``<out-prefix>_scaling.png`` (default ``benchmarks/results/batch``).
"""

from __future__ import annotations

# Only the standard library at the top: the ``_inprocess`` sub-command is the reference and its
# whole-process time must not carry this file's plotting or Arrow imports.
import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TWO_METHODS = ("exit", "embed-sentences")
POLL_S = 0.05  # first-shard and committed-rows poll
SAMPLE_S = 0.5  # memory / CPU sampling of the process tree
RESUME_AT = 0.8  # fraction of the store committed when the job is killed
INPROCESS_BATCH = 16
# Targets as ratios (measured / reference); None: no target given, the figure is reported only.
TARGETS: dict[str, tuple[str, float] | None] = {
    "docs_per_s": (">=", 0.8),  # batch docs/s over in-process docs/s (issue: >= 0.8x)
    "first_shard": None,
    "peak_pss": None,
    "resume": ("<=", 0.35),  # resume seconds over whole-job seconds, killed at 80 % (issue: <= 0.35x)
    "two_methods": ("<=", 1.2),  # two methods in one job over the slower single-method job
}


# ---------------------------------------------------------------------------- the store
def store_passages() -> tuple[list[dict], dict]:
    """Distinct ``(title, text)`` passages of the shared QA files, ordered by id, and where they came from."""
    from ragpress.qa import default_data_dir

    data = default_data_dir()
    found: dict[str, dict] = {}
    files: dict[str, int] = {}
    empty = 0
    for path in sorted(data.rglob("*.jsonl")):
        if "orig" in path.relative_to(data).parts[:-1]:
            continue
        n = 0
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                passages = json.loads(line).get("passages")
                if not isinstance(passages, list):
                    continue
                for p in passages:
                    if not isinstance(p, dict):
                        continue
                    title, text = p.get("title") or "", p.get("text")
                    if not isinstance(text, str) or not text.strip():
                        empty += 1
                        continue
                    n += 1
                    pid = "p" + hashlib.sha1(f"{title}{text}".encode()).hexdigest()[:12]
                    found.setdefault(pid, {"id": pid, "title": title, "text": text})
        if n:
            files[str(path.relative_to(data))] = n
    passages = [found[k] for k in sorted(found)]
    return passages, {"data_dir": str(data), "files": files, "passages_read": sum(files.values()),
                      "distinct": len(passages), "empty_dropped": empty}


def write_store(passages: list[dict], size: int, path: Path) -> dict:
    """``size`` lines of JSONL; past the distinct passages the store repeats them as ``<id>~k``."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(size):
            k, p = divmod(i, len(passages))
            rec = passages[p] if k == 0 else {**passages[p], "id": f"{passages[p]['id']}~{k}"}
            fh.write(json.dumps({"id": rec["id"], "title": rec["title"], "text": rec["text"]}) + "\n")
    return {"documents": size, "distinct": min(size, len(passages)), "repeats": max(0, size - len(passages)),
            "mib": path.stat().st_size / 2**20}


def store_ids(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh if line.strip()]


# ---------------------------------------------------------------------------- the in-process reference
def inprocess_main(argv: list[str]) -> None:
    """Hidden sub-command: the pure compute of ``precompute`` over the store, in this process."""
    ap = argparse.ArgumentParser(prog="batch.py _inprocess")
    ap.add_argument("--source", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from ragpress.core.cache import NullCache
    from ragpress.core.registry import create_compressor
    from ragpress.core.types import Passage

    torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    compressor = create_compressor(args.method)
    compressor.segment_cache = NullCache()
    t2 = time.perf_counter()
    compute = first = 0.0
    docs = segments = tokens_in = 0
    batch: list[Passage] = []

    def run(batch: list[Passage]) -> None:
        nonlocal compute, first, docs, segments, tokens_in
        t = time.perf_counter()
        st = compressor.precompute(batch)
        dt = time.perf_counter() - t
        first = first or dt
        compute += dt
        docs += len(batch)
        segments += sum(st.segments)
        tokens_in += sum(st.tokens_in)

    with open(args.source, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                batch.append(Passage(id=r["id"], title=r.get("title"), text=r["text"]))
                if len(batch) == INPROCESS_BATCH:
                    run(batch)
                    batch = []
    if batch:
        run(batch)
    print(json.dumps({"documents": docs, "compute_s": compute, "first_batch_s": first, "import_s": t1 - t0,
                      "create_s": t2 - t1, "segments": segments, "tokens_in": tokens_in,
                      "torch_threads": torch.get_num_threads(), "precomputable": bool(compressor.precomputable)}),
          flush=True)


# ---------------------------------------------------------------------------- whole processes
class TreeSampler(threading.Thread):
    """Every ``SAMPLE_S``: the sum of PSS and of RSS over a process and all its descendants (peaks
    kept), CPU seconds per process (the last value seen), every process seen (for the clean-up)
    and the Ray temp dirs their command lines name."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.stop = threading.Event()
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.cpu: dict[tuple[int, float], float] = {}
        self.temp_dirs: set[str] = set()
        self.peak_pss = self.peak_rss = 0
        self.peak_procs = self.samples = 0
        self.labels: dict[tuple[int, float], str] = {}
        self.peak_by_process: dict[str, float] = {}  # label -> the peak of its PSS, MiB (where memory goes)
        self.at_peak: dict[str, float] = {}  # role -> its PSS (MiB, summed over its processes) at the peak
        self.last: dict[str, dict] = {}  # role -> PSS / RSS (MiB) and processes at the last sample

    def run(self) -> None:
        while True:
            self.sample()
            if self.stop.wait(SAMPLE_S):
                return

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        pss = rss = alive = 0
        now: dict[str, float] = {}
        last: dict[str, dict] = {}
        for p in procs:
            try:
                key = (p.pid, p.create_time())
                cmd = p.cmdline()  # a Ray worker's changes with the task or actor it runs
                if key not in self.seen:
                    self.seen[key] = p
                    self._temp_dirs(cmd)
                self.labels[key] = _label(p, cmd)
                mem = p.memory_full_info()
                t = p.cpu_times()
            except psutil.Error:  # exited between the listing and the read
                continue
            pss += mem.pss
            rss += mem.rss
            label = self.labels[key]
            self.peak_by_process[label] = max(self.peak_by_process.get(label, 0.0), mem.pss / 2**20)
            role = label.rsplit(" [", 1)[0]
            now[role] = now.get(role, 0.0) + mem.pss / 2**20
            r = last.setdefault(role, {"pss_mib": 0.0, "rss_mib": 0.0, "processes": 0})
            r["pss_mib"] += mem.pss / 2**20
            r["rss_mib"] += mem.rss / 2**20
            r["processes"] += 1
            alive += 1
            self.cpu[key] = t.user + t.system
        self.samples += 1
        self.last = {k: {**v, "pss_mib": round(v["pss_mib"], 1), "rss_mib": round(v["rss_mib"], 1)}
                     for k, v in sorted(last.items(), key=lambda kv: -kv[1]["pss_mib"])}
        if pss > self.peak_pss:
            self.at_peak = {k: round(v, 1) for k, v in sorted(now.items(), key=lambda kv: -kv[1])}
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.peak_procs = max(self.peak_procs, alive)

    def _temp_dirs(self, cmdline: list[str]) -> None:
        for arg in cmdline:
            m = re.match(r"--(?:temp[-_]dir|session[-_]dir)=(\S+)", arg)
            if m:
                path = Path(m.group(1))
                path = path.parent if path.name.startswith("session_") else path
                if path.parent == Path("/tmp") and path.name not in ("ray", ""):  # a private instance's, never /tmp/ray
                    self.temp_dirs.add(str(path))

    def figures(self) -> dict:
        return {"peak_pss_mib": self.peak_pss / 2**20, "peak_rss_mib": self.peak_rss / 2**20,
                "peak_processes": self.peak_procs, "processes_seen": len(self.seen),
                "cpu_s_sampled": sum(self.cpu.values()), "samples": self.samples,
                "peak_pss_by_process_mib": {k: round(v, 1) for k, v in sorted(self.peak_by_process.items())},
                "pss_at_peak_by_role_mib": self.at_peak}


def _label(p, cmd: list[str]) -> str:
    """A process's role: the job's own process, a Ray daemon, a Ray worker (its actor or task)
    (the pid tells apart several of one role)."""
    first = cmd[0] if cmd else p.name()
    if first.startswith("ray::"):
        return f"{first} [{p.pid}]"
    name = Path(first).name
    if "python" in name and len(cmd) > 1:
        name = Path(cmd[1]).name if not cmd[1].startswith("-") else " ".join(cmd[1:3])
    return f"{name} [{p.pid}]"


def group_members(pgid: int) -> list:
    import psutil

    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid:
                out.append(p)
    return out


def reap(pgid: int, sampler: TreeSampler | None, grace_s: float = 0.0, wait_s: float = 60.0,
         stragglers: list[int] | None = None) -> list[str]:
    """Safety net: what is left of the process group and of the descendants seen gets ``grace_s``
    to exit on its own (their pids go to ``stragglers``), then SIGKILL; waits until none is alive.
    Returns the ones it killed."""
    import psutil

    left = {p.pid: p for p in group_members(pgid)}
    if sampler is not None:
        for p in sampler.seen.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left[p.pid] = p
    if left and grace_s:
        if stragglers is not None:
            stragglers.extend(p.pid for p in left.values())
        _, alive = psutil.wait_procs(list(left.values()), timeout=grace_s)
        left = {p.pid: p for p in alive}
    names = []
    for p in left.values():
        with contextlib.suppress(psutil.Error):
            names.append(f"{p.name()} ({p.pid})")
    if left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for p in left.values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(list(left.values()), timeout=wait_s)
    deadline = time.monotonic() + wait_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return names


def committed_shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("part-*.parquet"))


class RowCounter:
    """Rows committed under ``out`` (each shard's footer read once)."""

    def __init__(self, out: Path):
        self.out, self.rows = out, {}

    def __call__(self) -> int:
        import pyarrow.parquet as pq

        for p in committed_shards(self.out):
            if p not in self.rows:
                with contextlib.suppress(OSError, ValueError):  # renamed away or not readable yet
                    self.rows[p] = pq.ParquetFile(p).metadata.num_rows
        return sum(self.rows.values())


def run_process(cmd: list[str], env: dict, work: Path, label: str, shards_of: Path | None = None,
                kill_at_rows: int | None = None, timeout_s: float = 6 * 3600) -> dict:
    """Run ``cmd`` in its own session; wall time from launch to exit, peak memory of its tree,
    time to the first committed shard of ``shards_of``; SIGKILL its group at ``kill_at_rows``."""
    tag = re.sub(r"\W+", "-", label).strip("-")
    out_f, err_f = work / f"{tag}.out", work / f"{tag}.err"
    res: dict = {"command": " ".join(cmd), "load_average_at_start": os.getloadavg()[0]}
    counter = RowCounter(shards_of) if shards_of is not None and kill_at_rows is not None else None
    before = set(committed_shards(shards_of)) if shards_of is not None else set()  # a resume's earlier shards
    with out_f.open("wb") as so, err_f.open("wb") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=so, stderr=se, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        first_shard = killed_at = None
        try:
            while True:
                try:
                    rc = proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.perf_counter() - t0
                if shards_of is not None and first_shard is None and set(committed_shards(shards_of)) - before:
                    first_shard = now
                if counter is not None and killed_at is None and first_shard is not None:
                    rows = counter()
                    if rows >= kill_at_rows:
                        sampler.sample()  # the tree as it is, for the clean-up
                        os.killpg(proc.pid, signal.SIGKILL)
                        killed_at = now
                        res["killed"] = {"at_s": now, "rows_committed": rows}
                if now > timeout_s and not res.get("timed_out"):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    res["timed_out"] = True
        finally:
            wall = time.perf_counter() - t0
            sampler.stop.set()
            sampler.join()
            if proc.poll() is None:  # interrupted here: the job must not outlive the benchmark
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            t = time.perf_counter()
            # a job that exits by itself gets 5 s for stragglers to go; a killed one none
            stragglers: list[int] = []
            res["killed_after_exit"] = reap(proc.pid, sampler, grace_s=0.0 if killed_at else 5.0,
                                            stragglers=stragglers)
            res["alive_at_exit"], res["reap_s"] = len(stragglers), time.perf_counter() - t
            temp_left = [d for d in sorted(sampler.temp_dirs) if Path(d).exists()]
            if temp_left:  # a killed local Ray leaves its private temp dir behind
                res["temp_dirs_removed"] = temp_left
                for d in temp_left:
                    shutil.rmtree(d, ignore_errors=True)
    res.update(rc=rc, wall_s=wall, first_shard_s=first_shard, **sampler.figures())
    res["stdout"] = out_f.read_text(encoding="utf-8", errors="replace")
    res["stderr_tail"] = err_f.read_text(encoding="utf-8", errors="replace")[-3000:]
    return res


def parse_json_out(text: str) -> dict | None:
    """The JSON object a command printed (the whole output, else its last ``{``-line)."""
    text = text.strip()
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(text)
    for i in [m.start() for m in re.finditer(r"^\{", text, re.M)][::-1]:
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(text[i:])
    return None


def check_ids(out: Path, expected: list[str]) -> dict:
    """Each store id committed exactly once (per method where the shards carry a ``method`` column)."""
    from collections import Counter

    import pyarrow.parquet as pq

    shards = committed_shards(out)
    keys: Counter = Counter()
    per_method = False
    for p in shards:
        cols = pq.ParquetFile(p).schema_arrow.names
        per_method = per_method or "method" in cols
        t = pq.read_table(p, columns=["id", "method"] if "method" in cols else ["id"])
        ids = t.column("id").to_pylist()
        keys.update(zip(t.column("method").to_pylist(), ids) if "method" in cols else ids)
    got = {k[1] if per_method else k for k in keys}
    want = set(expected)
    dup = sum(1 for c in keys.values() if c > 1)
    res = {"shards": len(shards), "rows": sum(keys.values()), "duplicates": dup, "missing": len(want - got),
           "unexpected": len(got - want), "per_method_rows": per_method}
    res["ok"] = dup == 0 and not res["missing"] and not res["unexpected"]
    return res


# ---------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
        self.env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(self.threads),
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        exe = Path(sys.executable).parent / "ragpress"
        self.ragpress = [str(exe)] if exe.exists() else [sys.executable, "-m", "ragpress.cli"]
        self.threads_flag: bool | None = None
        self.notes: list[str] = []

    def probe_cli(self) -> dict:
        t = time.perf_counter()
        r = subprocess.run([*self.ragpress, "batch", "--help"], env=self.env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        res = {"rc": r.returncode, "seconds": time.perf_counter() - t}
        if r.returncode != 0:
            res["stderr_tail"] = r.stderr[-2000:]
            self.notes.append(f"`ragpress batch --help` failed (rc {r.returncode}): the batch job phases will fail")
        self.threads_flag = "--threads" in r.stdout
        if not self.threads_flag:
            self.notes.append(f"`ragpress batch` has no --threads: the job got OMP_NUM_THREADS={self.env['OMP_NUM_THREADS']} "
                              "in its environment instead (what its Ray actors do with it is up to the job)")
        return res

    def batch_cmd(self, source: Path, methods: str, out: Path) -> list[str]:
        cmd = [*self.ragpress, "batch", str(source), "--methods", methods, "--out", str(out)]
        if self.threads_flag:
            cmd += ["--threads", str(self.threads)]
        cmd += shlex.split(self.args.job_args or "")
        return [*cmd, "--no-progress", "--json"]

    def inprocess(self, source: Path, method: str, n: int) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_inprocess", "--source", str(source), "--method", method,
               "--threads", str(self.threads)]
        res = run_process(cmd, self.env, self.work, f"inprocess-{method}-{n}")
        res["report"] = parse_json_out(res.pop("stdout"))
        res["ok"] = res["rc"] == 0 and bool(res["report"]) and res["report"]["documents"] == n
        res["docs_per_s"] = n / res["wall_s"] if res["ok"] else None
        rep = res["report"] or {}
        rest = (rep.get("compute_s") or 0) - (rep.get("first_batch_s") or 0)
        res["steady_docs_per_s"] = (n - min(n, INPROCESS_BATCH)) / rest if res["ok"] and rest > 0 else None
        return res

    def batch(self, source: Path, methods: str, n: int, ids: list[str], label: str, kill_at: float | None = None) -> dict:
        out = self.work / f"job-{label}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = self.batch_cmd(source, methods, out)
        kill_rows = math.ceil(kill_at * n) if kill_at else None
        res = run_process(cmd, self.env, self.work, label, shards_of=out, kill_at_rows=kill_rows)
        res["report"] = parse_json_out(res.pop("stdout"))
        if kill_at:
            killed = res.get("killed")
            res["ok"] = killed is not None or res["rc"] == 0
            if killed is None:
                self.notes.append(f"{label}: the job finished ({res['rc']=}) before {kill_at:.0%} of {n} documents were "
                                  "committed (shards hold more than the rest): its resume reruns a finished job")
            elif killed["rows_committed"] >= n:
                self.notes.append(f"{label}: every document was committed by the time the kill came "
                                  f"({killed['at_s']:.1f} s; no commit fell between {kill_at:.0%} and 100 %: smaller "
                                  "blocks and shards, --job-args '--read-docs K --shard-docs K', make some): its resume "
                                  "reruns a finished job")
            res["before_kill"] = check_ids(out, ids) if committed_shards(out) else None
            print(f"    killed at {killed['at_s']:.1f} s, {killed['rows_committed']}/{n} committed" if killed else
                  f"    not killed: finished in {res['wall_s']:.1f} s", flush=True)
            again = run_process(cmd, self.env, self.work, f"{label}-resume", shards_of=out)
            again["report"] = parse_json_out(again.pop("stdout"))
            again["ok"] = again["rc"] == 0
            again["ids"] = check_ids(out, ids) if again["ok"] else None
            res["resume"] = again
        else:
            res["ok"] = res["rc"] == 0
            res["ids"] = check_ids(out, ids) if res["ok"] else None
            res["docs_per_s"] = n / res["wall_s"] if res["ok"] else None
        for r in (res, res.get("resume") or {}):
            if r.get("killed_after_exit") and not r.get("killed"):
                self.notes.append(f"{r is res and label or label + ' resume'}: processes still alive 5 s after the job "
                                  f"exited, killed here: {', '.join(r['killed_after_exit'])}")
        if not res["ok"]:
            self.notes.append(f"{label}: `ragpress batch` exited {res['rc']}: {res['stderr_tail'][-300:]!r}")
        shutil.rmtree(out, ignore_errors=True)
        return res


def fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def say(run: dict, what: str) -> None:
    if run.get("ok"):
        shard = f", first shard {run['first_shard_s']:.1f} s" if run.get("first_shard_s") is not None else ""
        print(f"    {what}: {run['wall_s']:.1f} s, peak PSS {run['peak_pss_mib']:.0f} MiB{shard}", flush=True)
    else:
        print(f"    {what}: FAILED rc={run['rc']}: {run['stderr_tail'][-400:]}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_inprocess":
        inprocess_main(sys.argv[2:])
        return
    # Ctrl-C (even where a shell started us with SIGINT ignored) and SIGTERM unwind through the
    # clean-up: each job's process group is killed, the temp dirs go.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="store sizes, comma-separated (default 1000,10000)")
    ap.add_argument("--methods", default="exit,embed-sentences", help="methods (default exit,embed-sentences)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads, both sides (default: $OMP_NUM_THREADS if set, else all CPUs)")
    ap.add_argument("--job-args", default="",
                    help='more arguments for every `ragpress batch` run, e.g. "--read-docs 32 --shard-docs 32" (a '
                         f"small store whose commits jump past {RESUME_AT * 100:.0f} %% to 100 %% is killed only once all is "
                         "committed)")
    ap.add_argument("--skip-resume", action="store_true", help="no kill-and-resume phase")
    ap.add_argument("--skip-inprocess", action="store_true", help="no in-process reference")
    ap.add_argument("--out-prefix", default=str(ROOT / "benchmarks" / "results" / "batch"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not sizes or min(sizes) < 1 or not methods:
        ap.error("give at least one size >= 1 and one method")

    started = time.perf_counter()
    res: dict = {"command": shlex.join([Path(sys.executable).name, *sys.argv]),
                 "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                 "load_average_at_start": os.getloadavg(), "sizes": sizes, "methods": methods}
    print("building the store ...", flush=True)
    t = time.perf_counter()
    passages, res["store"] = store_passages()
    res["store"]["build_s"] = time.perf_counter() - t
    print(f"  {res['store']['distinct']} distinct passages from {len(res['store']['files'])} files "
          f"({res['store']['passages_read']} read) in {res['store']['build_s']:.1f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rp-batch-bench-"))
    bench = Bench(args, work)
    res["threads"] = bench.threads
    res["env"] = {k: bench.env[k] for k in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE",
                                            "TRANSFORMERS_OFFLINE")}
    if os.environ.get("OMP_NUM_THREADS") and os.environ["OMP_NUM_THREADS"] != str(bench.threads):
        bench.notes.append(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} from the caller's environment was kept "
                           f"for every subprocess; torch threads T={bench.threads}")
    runs: dict[str, dict] = {}
    try:
        res["cli_probe"] = bench.probe_cli()
        res["threads_via"] = "--threads" if bench.threads_flag else "OMP_NUM_THREADS"
        for n in sizes:
            source = work / f"store-{n}.jsonl"
            store = write_store(passages, n, source)
            if store["repeats"]:
                bench.notes.append(f"store of {n}: {store['distinct']} distinct passages, {store['repeats']} of them "
                                   "repeated under new ids (<id>~k)")
            ids = store_ids(source)
            per: dict = {"store": store, "methods": {}}
            runs[str(n)] = per
            for m in methods:
                print(f"[{n} docs] {m}", flush=True)
                r: dict = {}
                per["methods"][m] = r
                if not args.skip_inprocess:
                    r["inprocess"] = bench.inprocess(source, m, n)
                    say(r["inprocess"], "in-process")
                r["batch"] = bench.batch(source, m, n, ids, f"batch-{m}-{n}")
                say(r["batch"], "batch job")
                if r["batch"]["ok"] and r.get("inprocess", {}).get("ok"):
                    r["docs_per_s_ratio"] = r["batch"]["docs_per_s"] / r["inprocess"]["docs_per_s"]
                    print(f"    docs/s batch {r['batch']['docs_per_s']:.1f} / in-process "
                          f"{r['inprocess']['docs_per_s']:.1f} = {r['docs_per_s_ratio']:.2f}", flush=True)
                if not args.skip_resume:
                    r["resume"] = bench.batch(source, m, n, ids, f"killed-{m}-{n}", kill_at=RESUME_AT)
                    again = r["resume"]["resume"]
                    say(again, "resume")
                    if again["ok"] and r["batch"]["ok"]:
                        r["resume_ratio"] = again["wall_s"] / r["batch"]["wall_s"]
                        print(f"    resume / whole job {r['resume_ratio']:.2f}, ids exactly once: "
                              f"{again['ids'] and again['ids']['ok']}", flush=True)
            if all(m in methods for m in TWO_METHODS):
                print(f"[{n} docs] {','.join(TWO_METHODS)} in one job", flush=True)
                two = bench.batch(source, ",".join(TWO_METHODS), n, ids, f"batch-two-{n}")
                say(two, "two-method job")
                singles = [per["methods"][m]["batch"] for m in TWO_METHODS]
                if two["ok"] and all(s["ok"] for s in singles):
                    slower = max(s["wall_s"] for s in singles)
                    two["slower_single_s"], two["ratio"] = slower, two["wall_s"] / slower
                    print(f"    two methods / slower single {two['ratio']:.2f}", flush=True)
                per["two_methods"] = two
            source.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["runs"] = runs
    late = [r for per in runs.values() for r in [*(x.get("batch") for x in per["methods"].values()),
                                                  *((x.get("resume") or {}).get("resume") for x in per["methods"].values()),
                                                  per.get("two_methods")] if r and r.get("alive_at_exit")]
    if late:
        bench.notes.append(f"{len(late)} job run(s) had Ray processes alive when the job's own process exited (at most "
                           f"{max(r['alive_at_exit'] for r in late)}; they went on their own within "
                           f"{max(r['reap_s'] for r in late):.1f} s): the wall times stop at the job's exit")
    res["notes"] = bench.notes
    res["load_average_at_end"] = os.getloadavg()
    res["total_s"] = time.perf_counter() - started
    prefix = Path(args.out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (prefix.with_name(prefix.name + s) for s in (".json", ".md", "_scaling.png"))
    json_path.write_text(json.dumps(res, indent=2))
    md_path.write_text(markdown(res, png_path.name))
    plot(res, png_path)
    print(md_path.read_text())
    print(f"wrote {json_path}, {md_path}, {png_path} ({res['total_s']:.0f} s in all)", flush=True)


# ---------------------------------------------------------------------------- outputs
def target_cells(key: str, ratio: float | None) -> tuple[str, str]:
    t = TARGETS.get(key)
    if t is None:
        return "-", ""
    op, v = t
    met = None if ratio is None else (ratio <= v if op == "<=" else ratio >= v)
    return f"{op} {v:g}", "" if met is None else (" (met)" if met else " (**missed**)")


def markdown(res: dict, png: str) -> str:
    sizes, methods, runs = res["sizes"], res["methods"], res["runs"]
    big = str(max(sizes))
    mib = ".0f"
    lines = [f"# ragpress batch at document-store scale ({', '.join(methods)}; {', '.join(map(str, sizes))} passages)", "",
             f"`{res['command']}` on {res['machine']['cpus']} CPUs, T={res['threads']} threads on both sides "
             f"(the job's via {res['threads_via']}); 1/5/15-minute load average "
             f"{'/'.join(f'{x:.1f}' for x in res['load_average_at_start'])} at the start, "
             f"{'/'.join(f'{x:.1f}' for x in res['load_average_at_end'])} at the end; {res['total_s'] / 60:.1f} min in all.",
             f"Store: {res['store']['distinct']} distinct passages of the shared QA files "
             f"({res['store']['passages_read']} read from {len(res['store']['files'])} files). "
             "Every time is a whole process, launch to exit (imports, model loads, the job's Ray start)."
             + (" The load average was above the CPU count: other work shared the machine, each run's time carries it "
                "and the ratios are noisy (each run's own load average is in the JSON)."
                if max(*res["load_average_at_start"][:2], *res["load_average_at_end"][:2]) > res["machine"]["cpus"]
                else ""), "",
             f"## Targets ({big} passages)", "",
             "| figure | measured | reference | ratio | target |", "|---|---|---|---|---|"]
    per = runs.get(big, {}).get("methods", {})
    for m in methods:
        r = per.get(m, {})
        b, ip = r.get("batch", {}), r.get("inprocess", {})
        ratio = r.get("docs_per_s_ratio")
        tgt, met = target_cells("docs_per_s", ratio)
        lines.append(f"| {m}: docs/s, batch job vs in-process | {fmt(b.get('docs_per_s'), '.1f')} | "
                     f"{fmt(ip.get('docs_per_s'), '.1f')} | {fmt(ratio)}{met} | {tgt} |")
        fs = b.get("first_shard_s")
        r_fs = fs / b["wall_s"] if fs is not None and b.get("ok") else None
        tgt, met = target_cells("first_shard", r_fs)
        lines.append(f"| {m}: first committed shard s, vs whole job s | {fmt(fs, '.1f')} | "
                     f"{fmt(b.get('wall_s') if b.get('ok') else None, '.1f')} | {fmt(r_fs)}{met} | {tgt} |")
        r_mem = b["peak_pss_mib"] / ip["peak_pss_mib"] if b.get("ok") and ip.get("ok") else None
        tgt, met = target_cells("peak_pss", r_mem)
        lines.append(f"| {m}: peak PSS MiB, job tree vs in-process | {fmt(b.get('peak_pss_mib'), mib)} | "
                     f"{fmt(ip.get('peak_pss_mib'), mib)} | {fmt(r_mem)}{met} | {tgt} |")
        if "resume" in r:
            again = r["resume"]["resume"]
            killed = r["resume"].get("killed")
            rr = r.get("resume_ratio")
            tgt, met = target_cells("resume", rr)
            at = f"killed at {killed['rows_committed']}/{big}" if killed else "not killed: finished first"
            lines.append(f"| {m}: resume s ({at}) vs whole job s | {fmt(again.get('wall_s') if again.get('ok') else None, '.1f')} "
                         f"| {fmt(b.get('wall_s') if b.get('ok') else None, '.1f')} | {fmt(rr)}{met} | {tgt} |")
            ids = again.get("ids") or {}
            lines.append(f"| {m}: ids committed exactly once after kill + resume | "
                         f"{'yes' if ids.get('ok') else 'no' if ids else '-'} ({ids.get('duplicates', '-')} duplicated, "
                         f"{ids.get('missing', '-')} missing) | {big} ids | - | each exactly once |")
    two = runs.get(big, {}).get("two_methods")
    if two:
        tgt, met = target_cells("two_methods", two.get("ratio"))
        lines.append(f"| {'+'.join(TWO_METHODS)} in one job s vs the slower single-method job s | "
                     f"{fmt(two.get('wall_s') if two.get('ok') else None, '.1f')} | {fmt(two.get('slower_single_s'), '.1f')} "
                     f"| {fmt(two.get('ratio'))}{met} | {tgt} |")
    lines += ["", "## Per store size", "",
              "| method | passages | in-process s (compute s) | batch s | first shard s | docs/s in-process | "
              "docs/s batch | batch / in-process | peak PSS MiB in-process / batch | peak RSS MiB batch | "
              "batch CPU s (sampled) | resume s | resume / whole | ids ok |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        per = runs.get(str(n), {})
        rows = [(m, per.get("methods", {}).get(m, {})) for m in methods]
        if per.get("two_methods"):
            rows.append(("+".join(TWO_METHODS) + " (one job)", {"batch": per["two_methods"]}))
        for m, r in rows:
            b, ip = r.get("batch", {}), r.get("inprocess", {})
            again = r.get("resume", {}).get("resume", {})
            ok_b, ok_ip = b.get("ok"), ip.get("ok")
            compute = (ip.get("report") or {}).get("compute_s")
            ids = again.get("ids") or b.get("ids") or {}
            lines.append(
                f"| {m} | {n} | {fmt(ip['wall_s'] if ok_ip else None, '.1f')} ({fmt(compute, '.1f')}) | "
                f"{fmt(b['wall_s'] if ok_b else None, '.1f') if b else '-'}{'' if ok_b or not b else ' failed'} | "
                f"{fmt(b.get('first_shard_s'), '.1f')} | {fmt(ip.get('docs_per_s'), '.1f')} | "
                f"{fmt(b.get('docs_per_s'), '.1f')} | {fmt(r.get('docs_per_s_ratio'))} | "
                f"{fmt(ip.get('peak_pss_mib'), mib)} / {fmt(b.get('peak_pss_mib'), mib)} | "
                f"{fmt(b.get('peak_rss_mib'), mib)} | {fmt(b.get('cpu_s_sampled'), '.0f')} | "
                f"{fmt(again.get('wall_s') if again.get('ok') else None, '.1f')} | {fmt(r.get('resume_ratio'))} | "
                f"{'yes' if ids.get('ok') else 'no' if ids else '-'} |")
    lines += ["", "Peak memory: the sum over the process and all its descendants, sampled every "
              f"{SAMPLE_S:g} s (PSS counts shared pages once; RSS counts them per process). CPU s: user + system "
              "of every process seen, as last sampled (a process's final half second may be missed). "
              f"Resume: a fresh job folder, the job's process group SIGKILLed once >= {RESUME_AT:.0%} of the "
              "documents were committed, then the same command again; ids checked over every committed shard.",
              "", f"![docs/s and peak PSS against store size]({png})", ""]
    if res["notes"]:
        lines += ["## Notes", "", *(f"- {x}" for x in res["notes"]), ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sizes = res["sizes"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(res["methods"]):
        c = colors[i % len(colors)]
        for side, style, mk, what in (("batch", "-", "o", "batch job"), ("inprocess", "--", "^", "in-process")):
            pts = [(n, res["runs"][str(n)]["methods"][m].get(side, {})) for n in sizes]
            xy = [(n, r["docs_per_s"]) for n, r in pts if r.get("ok")]
            if xy:
                ax1.plot(*zip(*xy), style, marker=mk, fillstyle="full" if mk == "o" else "none", color=c,
                         label=f"{m}, {what}")
            xy = [(n, r["peak_pss_mib"]) for n, r in pts if r.get("ok")]
            if xy:
                ax2.plot(*zip(*xy), style, marker=mk, fillstyle="full" if mk == "o" else "none", color=c,
                         label=f"{m}, {what}")
    two = [(n, res["runs"][str(n)].get("two_methods") or {}) for n in sizes]
    xy = [(n, r["docs_per_s"]) for n, r in two if r.get("ok")]
    if xy:
        ax1.plot(*zip(*xy), ":", marker="s", color="black", label=f"{'+'.join(TWO_METHODS)}, one job")
        ax2.plot(*zip(*[(n, r["peak_pss_mib"]) for n, r in two if r.get("ok")]), ":", marker="s", color="black",
                 label=f"{'+'.join(TWO_METHODS)}, one job")
    ax1.set(xscale="log", xlabel="store size (passages)", ylabel="documents / s (whole process)",
            title="throughput")
    ax2.set(xscale="log", xlabel="store size (passages)", ylabel="peak PSS, MiB (process tree)", title="memory")
    for ax in (ax1, ax2):
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"ragpress batch, {res['machine']['cpus']} CPUs, T={res['threads']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the jobs' process groups were killed and the temp dirs removed; no results written")
