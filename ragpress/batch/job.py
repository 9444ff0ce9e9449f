"""The batch job's driver: configuration, the Ray Data pipeline, commits and the report.

::

    read      Ray Data's readers (tasks): documents, bad ones as rows with their reason
    prepare   fused with the read: validate, drop what earlier runs committed
    work      map_batches on an actor pool: every method of the stage, models loaded once per actor
    commit    driver: Arrow tables straight to Parquet shards (the first at once, then per
              ~shard_docs documents or every commit_every_s), atomically

The driver keeps no document, id or result beyond the shard it is about to commit: the done set
travels as 8-byte hashes, results as Arrow tables, counts as sums.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragpress.batch.folder import SUMMARY_FILE, JobFolder
from ragpress.core.errors import ConfigError, RagpressError

log = logging.getLogger(__name__)

_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MAX_BLOCK_BYTES = 4 * 2**20  # the largest block between two stages of a job (Ray Data: 128 MiB)
COMPLETE = "complete.json"


# ---------------------------------------------------------------------------- configuration
class StageSpec(BaseModel):
    """Resources of one stage: ``workers`` actors (a fixed pool), each with ``num_cpus`` /
    ``num_gpus`` (a share: 0.5 puts two actors on one GPU) and ``threads`` torch threads (None: a
    local job gives each actor its share of the machine's CPUs, a cluster job ``num_cpus``
    rounded up), fed ``batch_size`` documents a call."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    threads: int | None = Field(None, ge=1)


class BatchConfig(BaseModel):
    """A batch job. The methods share one stage (one read, one actor pool, work they share done
    once) unless ``stages`` gives a method resources of its own."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="local path or URI (s3://, gs://, hdfs://, file://)")
    out: str = Field(description="job folder (local path or URI): committed Parquet shards, errors.jsonl, job.json, "
                                 "summary.json")
    methods: list[str] = Field(min_length=1)
    emit: Literal["work", "text"] = Field("work", description="work: each method's query-independent work into the "
                                                              "cache and shards; text: a compressed copy of the store")
    configs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="method -> compressor config")
    cache_url: str | None = Field(None, description="segment cache to fill (redis://...); None: Parquet only")
    ratio: float | None = Field(None, gt=0, le=1, description="ratio budget (TCRA summaries; --emit text); None: "
                                                              "each method's default")
    stage: StageSpec = Field(default_factory=StageSpec, description="resources of the shared stage")
    stages: dict[str, StageSpec] = Field(default_factory=dict, description="methods with a stage of their own")
    read_num_cpus: float = Field(0.25, gt=0)
    read_tasks: int = Field(2, ge=1, description="read and prepare tasks at once (each one a Ray worker process of "
                                                 "~120 MiB; more only while the workers wait on the read)")
    read_docs: int = Field(64, ge=1, description="documents per block between the read and the workers (small: "
                                                 "results stream, the first shard comes soon after the models load)")
    shard_docs: int = Field(256, ge=1, description="documents per committed shard (about)")
    commit_every_s: float = Field(10.0, gt=0, description="commit at least this often while results arrive")
    max_chars: int = Field(200_000, ge=1, description="documents longer than this go to the errors file")
    values: bool = Field(True, description="store the cache entries (key, value) in the shards too")
    ray_address: str | None = Field(None, description="None: start a private local Ray; else connect")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (default: this machine's)")
    object_store_mb: int = Field(512, ge=64, description="object store of the local Ray")
    blocks_mb: int = Field(64, ge=1, description="object store the job's blocks may fill ahead of the workers "
                                                 "(Ray Data holds the read back past it: memory stays flat as "
                                                 "the store grows)")
    progress: bool = True
    grace_s: float = Field(30.0, ge=0)

    @field_validator("methods")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from ragpress.core.registry import get_compressor_class

        for m in v:
            get_compressor_class(m)  # UnknownCompressorError lists the methods
        if len(set(v)) != len(v):
            raise ValueError(f"methods repeat: {v}")
        return v

    @model_validator(mode="after")
    def _emit_text(self) -> BatchConfig:
        if self.emit == "text":
            check_text_methods(self.methods)
        return self

    def spec(self, method: str) -> StageSpec:
        return self.stages.get(method, self.stage)


def check_text_methods(methods: list[str]) -> None:
    """``--emit text`` needs exactly one query-independent method that returns text."""
    from ragpress.core.registry import available, get_compressor_class

    ok = [m for m in available() if not get_compressor_class(m).query_aware and not get_compressor_class(m).soft_tokens]
    if len(methods) != 1:
        raise ConfigError(f"--emit text writes one compressed copy of the store: give one method (one of {', '.join(ok)})")
    cls = get_compressor_class(methods[0])
    if cls.soft_tokens:
        raise ConfigError(f"{methods[0]!r} makes soft tokens, not text: --emit text cannot store them; run it with "
                          "--emit work (the default) to store its soft tokens in the cache and shards")
    if cls.query_aware:
        raise ConfigError(f"{methods[0]!r} is query-aware: what it keeps depends on the question, so no compressed copy "
                          f"can be made before the questions come. Use --emit work (the default) to do its "
                          f"query-independent work ahead of queries, or a query-independent method for --emit text: "
                          f"{', '.join(ok)}")


@dataclass
class BatchReport:
    """What a run did (this run only; ``done_before`` were committed by earlier runs)."""

    documents: int = 0  # processed and committed by this run, errors included
    errors: int = 0
    segments: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    entries: int = 0  # cache entries looked up per method and document (hits included)
    hits: int = 0  # entries the cache already held
    shards: int = 0
    done_before: int = 0
    seconds: float = 0.0
    first_result_s: float | None = None  # from the start to the first document back (Ray, actors, models)
    first_commit_s: float | None = None  # from the start to the first committed shard
    workers: int = 0  # actors the job asked for
    restarts: int = 0  # actors that came back after dying (Ray restarted them; their work was retried)
    stopped: str | None = None  # the signal that stopped the run early, if any
    complete: bool = False  # the whole source was read and committed
    emitted: int | None = None  # --emit text: documents in compressed.jsonl / .parquet
    methods: dict[str, dict] = field(default_factory=dict)

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_in / self.seconds if self.seconds else 0.0

    @property
    def steady_docs_per_s(self) -> float | None:
        """Documents per second once results flow (start-up of Ray, actors and models excluded)."""
        if self.first_result_s is None or self.seconds <= self.first_result_s:
            return None
        return self.documents / (self.seconds - self.first_result_s)

    def to_dict(self) -> dict:
        return {**asdict(self), "docs_per_s": self.docs_per_s, "tokens_per_s": self.tokens_per_s,
                "steady_docs_per_s": self.steady_docs_per_s}

    def summary(self) -> str:
        head = f"stopped by {self.stopped}: " if self.stopped else ""
        tail = f"; {self.restarts} worker restart(s), their work redone" if self.restarts else ""
        emitted = f"; {self.emitted} compressed documents written" if self.emitted is not None else ""
        return (f"{head}{self.documents} documents ({self.errors} errors, {self.done_before} done before) in "
                f"{self.seconds:.1f} s: {self.docs_per_s:.1f} docs/s, {self.tokens_per_s:.0f} tokens/s; "
                f"{self.segments} segments, tokens in {self.tokens_in} / out {self.tokens_out}, "
                f"{self.entries} cache entries ({self.hits} already cached), {self.shards} shards{emitted}{tail}")


# ---------------------------------------------------------------------------- the pipeline
def stage_plan(cfg: BatchConfig) -> list[tuple[list[str], StageSpec]]:
    """``[(methods, spec)]``: the shared stage first, then each method with a stage of its own.
    Methods with nothing to do ahead of queries get no stage (``--emit work``)."""
    from ragpress.core.registry import create_compressor

    if cfg.emit == "text":
        return [(list(cfg.methods), cfg.stage)]
    work = [m for m in cfg.methods if create_compressor(m, cfg.configs.get(m) or None).precomputable]
    shared = [m for m in work if m not in cfg.stages]
    plan = [(shared, cfg.stage)] if shared else []
    return plan + [([m], cfg.stages[m]) for m in work if m in cfg.stages]


def _threads(cfg: BatchConfig, spec: StageSpec, actors: int) -> int:
    if spec.threads:
        return spec.threads
    if cfg.ray_address is None:  # a private local Ray: share this machine's CPUs between the actors
        return max(1, (cfg.ray_num_cpus or os.cpu_count() or 1) // max(1, actors))
    return max(1, int(np.ceil(spec.num_cpus)))


def build_dataset(cfg: BatchConfig, source, done: np.ndarray, plan):
    """read -> prepare -> one ``map_batches`` per stage of ``plan`` (actor pools)."""
    import ray

    from ragpress.batch.sources import read_documents
    from ragpress.batch.stages import WorkStage, prepare

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # A read task gathers what it reads into blocks of up to target_max_block_size (128 MiB by
    # default) before it hands them on: one JSONL file of a large store would sit whole in one
    # read worker's memory. Small blocks stream; a budget of the job's own holds the read back
    # once its blocks fill it, so the job's memory stays flat as the store grows.
    ctx.target_max_block_size = MAX_BLOCK_BYTES
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=cfg.blocks_mb * 2**20)
    # Ray Data would run as many read / prepare tasks as CPUs allow, each one a worker process: a
    # large store then holds several at once, and memory grows with it. Two keep the workers fed.
    ds = read_documents(source, cfg.read_num_cpus, cfg.read_docs, tasks=cfg.read_tasks)
    ds = ds.map_batches(prepare, fn_kwargs={"done": done, "max_chars": cfg.max_chars}, batch_format="pyarrow",
                        batch_size=None, num_cpus=cfg.read_num_cpus,
                        compute=ray.data.TaskPoolStrategy(size=cfg.read_tasks))
    # Ray Data gathers a task's output into blocks of up to 128 MiB, and an actor takes a whole block
    # per call: a file would reach the workers as one block and its results the driver only at the
    # end. Blocks of read_docs documents stream work, results and commits at the pace the work goes.
    ds = ds.repartition(target_num_rows_per_block=cfg.read_docs)
    _ask_cpus(ds, cfg.read_num_cpus, cfg.read_tasks)
    actors = sum(spec.workers for _, spec in plan)
    for methods, spec in plan:
        ds = ds.map_batches(
            WorkStage,
            fn_constructor_kwargs={"methods": methods, "configs": cfg.configs, "cache_url": cfg.cache_url,
                                   "ratio": cfg.ratio, "values": cfg.values, "emit": cfg.emit,
                                   "threads": _threads(cfg, spec, actors)},
            batch_size=spec.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=spec.workers),
            num_cpus=spec.num_cpus, num_gpus=spec.num_gpus or None,
            # on a cluster, one worker per node before two on one: a lost node then takes the fewest
            **({"scheduling_strategy": "SPREAD"} if cfg.ray_address else {}))
    return ds


def _ask_cpus(ds, num_cpus: float, tasks: int) -> None:
    """The last operator's tasks ask for ``num_cpus``, at most ``tasks`` of them at once.
    ``repartition`` takes no resource arguments and its tasks ask for a whole CPU, which a cluster
    busy with other work (Serve replicas on the same Ray) may never free: the job would wait
    forever; and as many of them would run as CPUs allow. Ray Data keeps both on the logical
    operator (``ray_remote_args`` and ``compute``, as ``map_batches(num_cpus=..., compute=...)``
    sets them); where a Ray version has no such fields, they stay as Ray Data makes them."""
    import ray

    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)
    args = getattr(op, "ray_remote_args", None)
    if isinstance(args, dict):
        args["num_cpus"] = num_cpus
    else:
        log.warning("Ray Data's repartition asks for a whole CPU per task here (no ray_remote_args to set)")
    if isinstance(getattr(op, "compute", None), ray.data.TaskPoolStrategy):
        object.__setattr__(op, "compute", ray.data.TaskPoolStrategy(size=tasks))  # a frozen dataclass
    else:
        log.warning("Ray Data's repartition runs as many tasks at once as CPUs allow here (no compute to set)")


class _LocalRay:
    """A private local Ray instance for one job (its own temp dir, no dashboard), or a connection
    to ``ray_address``."""

    def __init__(self, cfg: BatchConfig):
        self.cfg = cfg
        self.started = False
        self.temp_dir: str | None = None
        self.before: set[int] = set()

    def __enter__(self):
        import ray

        env = {**_ENV, **{k: os.environ[k] for k in ("RAGPRESS_CACHE", "RAGPRESS_DEVICE") if k in os.environ}}
        if ray.is_initialized():
            return self
        if self.cfg.ray_address:
            ray.init(address=self.cfg.ray_address, runtime_env={"env_vars": env}, log_to_driver=False,
                     configure_logging=False)
        else:
            from ragpress.core.lifecycle import descendants

            self.before = {c.pid for c in descendants()}  # not Ray's: never ended here
            self.temp_dir = tempfile.mkdtemp(prefix="rpbatch-", dir="/tmp")
            # the workers inherit the environment of the Ray this process starts: no runtime_env, so the
            # workers Ray prestarts at init take the actors at once (a runtime_env needs new ones, ~5 s)
            os.environ.update(env)
            try:
                ray.init(address="local", num_cpus=self.cfg.ray_num_cpus or os.cpu_count() or 2,
                         include_dashboard=False, _temp_dir=self.temp_dir, log_to_driver=False,
                         configure_logging=False, object_store_memory=self.cfg.object_store_mb * 2**20)
            except Exception as exc:  # e.g. a node that timed out starting on an overloaded machine
                self.started = True
                self.__exit__()
                raise RagpressError(f"the local Ray instance did not start ({type(exc).__name__}: {exc}); "
                                    "nothing was processed: run the command again") from exc
        self.started = True
        return self

    def __exit__(self, *exc):
        if not self.started:
            return
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        if self.temp_dir:
            import psutil

            from ragpress.core.lifecycle import descendants

            left = [c for c in descendants() if c.pid not in self.before]  # what this Ray started
            for c in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    c.terminate()
            _, alive = psutil.wait_procs(left, timeout=5)
            for c in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    c.kill()
            if left:
                log.info("ended %d processes the local Ray left", len(left))
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class _Seen:
    """Ids this job has committed or is about to, as sorted 64-bit hashes (8 bytes a document)."""

    def __init__(self, done: np.ndarray):
        self.base = done
        self.recent: list[np.ndarray] = []

    def contains(self, h: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(h), dtype=bool)
        if len(self.base):
            pos = np.searchsorted(self.base, h).clip(max=len(self.base) - 1)
            hit |= self.base[pos] == h
        if self.recent:
            hit |= np.isin(h, np.concatenate(self.recent))
        return hit

    def add(self, h: np.ndarray) -> None:
        self.recent.append(h)
        if sum(len(r) for r in self.recent) > 4096:
            self.base = np.union1d(self.base, np.concatenate(self.recent))
            self.recent = []


def _dedupe(table, seen: _Seen):
    """A document id seen before (in this source or a committed shard) becomes an error row under
    ``id@source``: the first one is kept, nothing is dropped silently."""
    import pyarrow as pa

    from ragpress.batch.stages import id_hashes, job_schema

    h = id_hashes(table.column("id").to_pylist())
    dup = seen.contains(h)
    _, first = np.unique(h, return_index=True)
    inside = np.ones(len(h), dtype=bool)
    inside[first] = False
    dup |= inside
    seen.add(h)
    if not dup.any():
        return table
    rows = table.to_pylist()
    for i in np.flatnonzero(dup):
        r = rows[i]
        r.update(error=f"duplicate id {r['id']!r} in the source (kept the first)", id=f"{r['id']}@{r['source']}",
                 text="", work=[], entries=[], compressed=None, spans=None, tokens_after=None)
    return pa.Table.from_pylist(rows, schema=job_schema())


def _results(ds, stop):
    """The dataset's result tables as they come, until it ends or ``stop`` is requested: Ray Data
    is read on a feeder thread, so a stop request never waits for a slow batch (work in flight is
    redone by the next run); the feeder's errors are raised here."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=2)
    end = object()

    def feed() -> None:
        try:
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=1):
                while not stop.requested:
                    try:
                        q.put(table, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.requested:
                    return
            q.put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
            q.put(exc)

    threading.Thread(target=feed, name="ragpress-batch-results", daemon=True).start()
    while not stop.requested:
        try:
            item = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
    while True:  # stopped: what has already arrived is committed too
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        if item is end or isinstance(item, BaseException):
            return
        yield item


def _count(report: BatchReport, table) -> None:
    import pyarrow.compute as pc

    report.documents += table.num_rows
    errors = table.column("error").is_valid()
    report.errors += int(pc.sum(errors).as_py() or 0)
    report.tokens_in += int(pc.sum(table.column("tokens_in")).as_py() or 0)
    work = pc.list_flatten(table.column("work"))
    if not len(work):
        return
    names = pc.struct_field(work, "method")
    for m in set(names.to_pylist()):
        sel = pc.filter(work, pc.equal(names, m))
        row = report.methods.setdefault(m, {"segments": 0, "tokens_out": 0, "entries": 0, "hits": 0})
        for k in ("segments", "tokens_out", "entries", "hits"):
            v = int(pc.sum(pc.struct_field(sel, k)).as_py() or 0)
            row[k] += v
            setattr(report, k, getattr(report, k) + v)


# ---------------------------------------------------------------------------- the driver
def _manifest(cfg: BatchConfig, source_uri: str) -> dict:
    from ragpress.core.registry import create_compressor

    methods = {}
    for m in cfg.methods:
        c = create_compressor(m, cfg.configs.get(m) or None)
        methods[m] = {"config_hash": c.config_hash, "precomputable": bool(c.precomputable)}
    job = {"source": source_uri, "methods": methods, "ratio": cfg.ratio, "values": cfg.values}
    if cfg.emit != "work":  # older job folders have no "emit": they are work jobs and stay resumable
        job["emit"] = cfg.emit
    return {"job": job, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _source_stamp(source) -> dict:
    """What a finished job read (size and mtime of a local source): a rerun over the same
    unchanged store starts nothing; a changed one is read again for what is new."""
    import pyarrow.fs as pafs

    paths = [source.paths] if isinstance(source.paths, str) else source.paths
    infos = source.filesystem.get_file_info(paths)
    return {"files": len(paths), "bytes": sum(i.size or 0 for i in infos),
            "mtime_ns": max((i.mtime_ns or 0 for i in infos if i.type == pafs.FileType.File), default=0)}


def run_batch(cfg: BatchConfig, stop=None) -> BatchReport:
    """Run (or resume) the job ``cfg``; see the module docstring. ``stop``: a
    :class:`~ragpress.core.lifecycle.GracefulShutdown` whose request ends the run after a commit."""
    from tqdm import tqdm

    from ragpress.batch.sources import redact, resolve_source
    from ragpress.core.lifecycle import GracefulShutdown

    t0 = time.perf_counter()
    stop = stop or GracefulShutdown(grace_s=cfg.grace_s)
    source = resolve_source(cfg.source)
    plan = stage_plan(cfg)
    if not plan:
        from ragpress.core.registry import available, create_compressor

        some = [m for m in available() if create_compressor(m).precomputable]
        raise ConfigError(f"none of {', '.join(cfg.methods)} has query-independent work to do ahead of queries; "
                          f"methods that have: {', '.join(some)} (or --emit text with a query-independent method)")
    folder = JobFolder(cfg.out)  # only once the job is known to be valid: job.json pins it
    folder.open(_manifest(cfg, redact(source.uri) if "://" in source.uri else source.path))
    done = folder.done_hashes()
    staged = {m for methods, _ in plan for m in methods}
    report = BatchReport(done_before=len(done), workers=sum(s.workers for _, s in plan), methods={
        m: {"precomputable": m in staged, "segments": 0, "tokens_out": 0, "entries": 0, "hits": 0}
        for m in cfg.methods})
    stamp = _source_stamp(source)
    finished = folder.read_json(COMPLETE) == {"source": stamp, "documents": len(done)}
    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    seen = _Seen(done)
    pending: list = []
    pending_rows = 0
    workers_seen: set[str] = set()
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal pending, pending_rows, last_commit
        if pending:
            import pyarrow as pa

            folder.commit(pa.concat_tables(pending), f"part-{run_id}-{report.shards:05d}.parquet")
            report.shards += 1
            if report.first_commit_s is None:
                report.first_commit_s = time.perf_counter() - t0
            pending, pending_rows = [], 0
        last_commit = time.monotonic()

    bar = tqdm(unit="doc", disable=not cfg.progress or finished, file=sys.stderr, mininterval=1.0,
               desc=f"batch {','.join(cfg.methods)}", dynamic_ncols=True)
    with stop, (_LocalRay(cfg) if not finished else contextlib.nullcontext()):
        stop.install()  # again: ray.init replaces the SIGTERM handler
        try:
            if not finished:
                ds = build_dataset(cfg, source, done, plan)
                for table in _results(ds, stop):
                    if report.first_result_s is None:
                        report.first_result_s = time.perf_counter() - t0
                    table = _dedupe(table, seen)
                    _count(report, table)
                    workers_seen.update(table.column("worker").unique().to_pylist())
                    pending.append(table)
                    pending_rows += table.num_rows
                    bar.update(table.num_rows)
                    bar.set_postfix(errors=report.errors, segments=report.segments, tok_in=report.tokens_in,
                                    refresh=False)
                    if (report.shards == 0 or pending_rows >= cfg.shard_docs
                            or time.monotonic() - last_commit >= cfg.commit_every_s):
                        commit()
                if stop.requested:
                    report.stopped = stop.reason
                else:
                    report.complete = True
            commit()
        finally:
            bar.close()
    workers_seen.discard(None)
    report.restarts = max(0, len(workers_seen) - report.workers)
    folder.rebuild_errors()
    if report.complete:
        folder.write_bytes(COMPLETE, json.dumps({"source": stamp, "documents": len(done) + report.documents}).encode())
    report.complete = report.complete or finished
    if cfg.emit == "text" and report.complete:
        report.emitted = folder.export_text(cfg.methods[0])
    report.seconds = time.perf_counter() - t0
    folder.write_bytes(SUMMARY_FILE, json.dumps(report.to_dict(), indent=2).encode())
    return report


__all__ = ["BatchConfig", "BatchReport", "StageSpec", "build_dataset", "check_text_methods", "run_batch", "stage_plan"]
