"""Batch compression of a document store ahead of queries, on Ray Data.

``ragpress batch SOURCE --methods exit,embed-sentences --cache redis://... --out DIR`` does every
method's query-independent work (:meth:`~ragpress.core.compressor.Compressor.precompute`:
sentence embeddings, EXIT head features, TCRA summaries, code line perplexities, ARC soft
tokens) for every document and writes it to the
segment cache (Redis) and to Parquet shards under ``--out``, so the service answers later
queries over those documents warm: the same ``memo`` keys, written by the same code.

SOURCE is a JSONL file (``id``, ``text`` or ``contents``, optional ``title``; other fields are
metadata), a Parquet file or a folder of Parquet files (same columns), a folder of text /
markdown / code files, or a ragpress index folder (its ``docstore.jsonl``: the passages the
service retrieves, so their cached work is exactly what queries hit).

The job (:func:`run_batch`)::

    plan (driver: byte ranges / files / row groups)  -> Ray Data
    read      map_batches, tasks:       decode, validate, skip documents already done
    <method>  map_batches, actor pool:  one stage per method, sized by its StageSpec
    commit    driver:                   Parquet shard per ~shard_docs documents, atomically

* Local mode (no ``--ray-address``) starts a private Ray instance (its own temp dir, no
  dashboard, never an instance someone else started) and stops it at the end; with an address
  (``auto``, ``HOST:PORT``, ``ray://...``) the same stages run on that cluster.
* Exactly once: a shard is written to a temp name and renamed, so it is either committed whole
  or absent; a rerun of the same command reads the ids of the committed shards and processes
  only the rest. Cache keys are content hashes, so work redone after a crash rewrites the same
  entries. Every document id lands in exactly one committed shard.
* A document that fails (not UTF-8, not JSON, no text, empty, over ``max_chars``, a method
  refusing it) becomes a row with its reason, and ``errors.jsonl`` (id, source, reason) is
  rebuilt from the shards at the end; the job goes on. A failing cache fails the job (rerun to
  resume): its documents are not done.
* SIGTERM / SIGINT (:class:`~ragpress.core.lifecycle.GracefulShutdown`): stop taking results,
  commit what has arrived, stop Ray, exit 0; work that was in flight is redone by the next run.

>>> report = run_batch(BatchConfig(source="docs.jsonl", out="out/", methods=["exit"],
...                                cache_url="redis://localhost:6379/0"))   # doctest: +SKIP
>>> report.summary()                                                       # doctest: +SKIP
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
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ragpress.core.errors import ConfigError, RagpressError

log = logging.getLogger(__name__)

SHARDS_DIR, MANIFEST, ERRORS_FILE, SUMMARY_FILE = "shards", "job.json", "errors.jsonl", "summary.json"
_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1"}


# ---------------------------------------------------------------------------- configuration
class StageSpec(BaseModel):
    """Resources of one stage: ``workers`` actors (a fixed pool), each with ``num_cpus`` /
    ``num_gpus`` (a share: 0.5 puts two actors on one GPU), fed ``batch_size`` documents."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)


class BatchConfig(BaseModel):
    """A batch job. ``stages`` overrides the default :class:`StageSpec` per method."""

    model_config = ConfigDict(extra="forbid")

    source: str
    out: str = Field(description="job folder: committed Parquet shards, errors.jsonl, job.json, summary.json")
    methods: list[str] = Field(min_length=1)
    configs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="method -> compressor config")
    cache_url: str | None = Field(None, description="segment cache to fill (redis://...); None: Parquet only")
    ratio: float | None = Field(None, gt=0, le=1, description="ratio budget for budget-dependent work (TCRA "
                                                              "summaries); None: each method's default")
    stage: StageSpec = Field(default_factory=StageSpec, description="default resources of a method stage")
    stages: dict[str, StageSpec] = Field(default_factory=dict)
    read_num_cpus: float = Field(0.25, gt=0)
    read_docs: int = Field(64, ge=1, description="documents (lines, files) per read task")
    shard_docs: int = Field(256, ge=1, description="documents per committed shard (at most)")
    commit_every_s: float = Field(10.0, gt=0, description="commit at least this often while results arrive")
    max_chars: int = Field(200_000, ge=1, description="documents longer than this go to the errors file")
    values: bool = Field(True, description="store the cache entries (key, value) in the shards too")
    ray_address: str | None = Field(None, description="None: start a private local Ray; else connect")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (default: this machine's)")
    object_store_mb: int = Field(512, ge=64, description="object store of the local Ray")
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

    def spec(self, method: str) -> StageSpec:
        return self.stages.get(method, self.stage)


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
    stopped: str | None = None  # the signal that stopped the run early, if any
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
        return (f"{head}{self.documents} documents ({self.errors} errors, {self.done_before} done before) in "
                f"{self.seconds:.1f} s: {self.docs_per_s:.1f} docs/s, {self.tokens_per_s:.0f} tokens/s; "
                f"{self.segments} segments, tokens in {self.tokens_in} / out {self.tokens_out}, "
                f"{self.entries} cache entries ({self.hits} already cached), {self.shards} shards")


# ---------------------------------------------------------------------------- the source
def _is_docstore(path: Path) -> bool:
    return path.is_dir() and (path / "docstore.jsonl").is_file() and (path / "meta.json").is_file()


def plan_source(source: str | Path, per_unit: int = 64) -> tuple[str, list[dict], int]:
    """``(kind, read units, documents expected)``: a read unit is a slice of the source one read
    task loads (lines of a JSONL file, files of a folder, a row group of a Parquet file)."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"batch source {path} does not exist: give a JSONL file, a Parquet file or folder, "
                          "a folder of text files, or a ragpress index folder")
    if _is_docstore(path):
        return "docstore", *_plan_jsonl(path / "docstore.jsonl", "passage", per_unit)
    if path.is_file() and path.suffix == ".jsonl":
        return "jsonl", *_plan_jsonl(path, "record", per_unit)
    parquet = [path] if path.is_file() and path.suffix == ".parquet" else \
        sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_"))) if path.is_dir() else []
    if parquet:
        import pyarrow.parquet as pq

        units = []
        for f in parquet:
            meta = pq.ParquetFile(f).metadata
            units += [{"kind": "parquet", "path": str(f), "group": g} for g in range(meta.num_row_groups)]
        return "parquet", units, sum(pq.ParquetFile(f).metadata.num_rows for f in parquet)
    if path.is_dir():
        from ragpress.indexes.chunking import TEXT_SUFFIXES

        files = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise ConfigError(f"{path} has no text, markdown, code or Parquet files")
        units = [{"kind": "files", "root": str(path), "files": files[i:i + per_unit]}
                 for i in range(0, len(files), per_unit)]
        return "folder", units, len(files)
    raise ConfigError(f"cannot read {path} as a batch source: use .jsonl, .parquet, a folder, or an index folder")


def _plan_jsonl(path: Path, fmt: str, per_unit: int) -> tuple[list[dict], int]:
    """Byte ranges of ``per_unit`` lines each (one pass counting newlines)."""
    units, start, first, line, pos = [], 0, 1, 0, 0
    with open(path, "rb") as f:
        for raw in f:
            line += 1
            pos += len(raw)
            if line - first + 1 >= per_unit:
                units.append({"kind": fmt, "path": str(path), "start": start, "end": pos, "first_line": first})
                start, first = pos, line + 1
    if pos > start:
        units.append({"kind": fmt, "path": str(path), "start": start, "end": pos, "first_line": first})
    return units, line


def _record(id_: str, source: str, title: Any = None, text: str = "", metadata: dict | None = None,
            error: str | None = None) -> dict:
    return {"id": id_, "source": source, "title": title if isinstance(title, str) else None, "text": text,
            "metadata": json.dumps(metadata or {}, ensure_ascii=False, default=str), "error": error}


def read_unit(unit: dict) -> list[dict]:
    """The documents of one read unit; a bad one is a record with ``error`` set, never an exception."""
    kind = unit["kind"]
    out = []
    if kind in ("record", "passage"):
        with open(unit["path"], "rb") as f:
            f.seek(unit["start"])
            blob = f.read(unit["end"] - unit["start"])
        for n, raw in enumerate(blob.split(b"\n"), unit["first_line"]):
            if not raw.strip():
                continue
            where = f"{unit['path']}:{n}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                out.append(_record(f"line:{n}", where, error=f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            except json.JSONDecodeError as exc:
                out.append(_record(f"line:{n}", where, error=f"invalid JSON ({exc.msg})"))
                continue
            if not isinstance(row, dict):
                out.append(_record(f"line:{n}", where, error="a line must be one JSON object"))
                continue
            id_ = str(row["id"]) if row.get("id") is not None else f"line:{n}"
            text = row.get("text", row.get("contents"))
            if not isinstance(text, str):
                out.append(_record(id_, where, error="no string 'text' (or 'contents') field"))
                continue
            meta = row.get("metadata") if kind == "passage" else \
                {k: v for k, v in row.items() if k not in {"id", "title", "text", "contents"}}
            out.append(_record(id_, where, row.get("title"), text, meta if isinstance(meta, dict) else {}))
    elif kind == "files":
        root = Path(unit["root"])
        for rel in unit["files"]:
            p = root / rel
            try:
                text = p.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                out.append(_record(rel, str(p), error=f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            except OSError as exc:
                out.append(_record(rel, str(p), error=f"unreadable ({exc.strerror})"))
                continue
            out.append(_record(rel, str(p), rel, text, {"source": str(p)}))
    elif kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(unit["path"]).read_row_group(unit["group"])
        names = set(table.column_names)
        text_col = "text" if "text" in names else "contents" if "contents" in names else None
        base = sum(pq.ParquetFile(unit["path"]).metadata.row_group(g).num_rows for g in range(unit["group"]))
        for k, row in enumerate(table.to_pylist()):
            n = base + k
            where = f"{unit['path']}#{n}"
            id_ = str(row["id"]) if row.get("id") is not None else f"row:{n}"
            text = row.get(text_col) if text_col else None
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    out.append(_record(id_, where, error=f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                    continue
            if not isinstance(text, str):
                out.append(_record(id_, where, error="no string 'text' (or 'contents') column value"))
                continue
            meta = {k2: v for k2, v in row.items() if k2 not in {"id", "title", "text", "contents"}}
            out.append(_record(id_, where, row.get("title"), text, meta))
    else:  # pragma: no cover - plan_source makes only the kinds above
        raise ValueError(f"unknown read unit {kind!r}")
    return out


def _validate(rec: dict, max_chars: int) -> dict:
    if rec["error"] is None:
        if not rec["text"].strip():
            rec["error"] = "empty document (no text)"
        elif len(rec["text"]) > max_chars:
            rec["error"] = f"over the size limit ({len(rec['text'])} characters > max_chars {max_chars})"
    if rec["error"] is not None:
        rec["text"] = ""
    return rec


# ---------------------------------------------------------------------------- the stages
def _schema():
    import pyarrow as pa

    work = pa.struct([("method", pa.string()), ("segments", pa.int64()), ("tokens_out", pa.int64()),
                      ("entries", pa.int64()), ("hits", pa.int64()), ("precomputable", pa.bool_())])
    entry = pa.struct([("key", pa.string()), ("value", pa.binary())])
    return pa.schema([("id", pa.string()), ("source", pa.string()), ("title", pa.string()), ("text", pa.string()),
                      ("metadata", pa.string()), ("error", pa.string()), ("tokens_in", pa.int64()),
                      ("work", pa.list_(work)), ("entries", pa.list_(entry))])


class _ReadStage:
    """Read units -> validated documents, skipping ids already committed."""

    def __init__(self, done: frozenset[str], max_chars: int):
        from ragpress.core.tokens import get_token_counter

        self.done = done
        self.max_chars = max_chars
        self.counter = get_token_counter()

    def __call__(self, batch):
        import pyarrow as pa

        rows = []
        for unit_json in batch.column("unit").to_pylist():
            for rec in read_unit(json.loads(unit_json)):
                if rec["id"] in self.done:
                    continue
                rec = _validate(rec, self.max_chars)
                text = f"{rec['title']}\n{rec['text']}" if rec["title"] else rec["text"]
                rows.append({**rec, "tokens_in": self.counter.count(text) if rec["error"] is None else 0,
                             "work": [], "entries": []})
        return pa.Table.from_pylist(rows, schema=_schema())


class _Tee:
    """Segment cache of the first pass: a batch-local memory in front of the job's cache (or of
    nothing): reads check memory, then the cache; writes go to both."""

    def __init__(self, memory, cache):
        self.memory, self.cache = memory, cache
        self.cached: set[str] = set()  # keys the job's cache already held

    def get_many(self, keys):
        out = self.memory.get_many(keys)
        miss = [i for i, v in enumerate(out) if v is None]
        if miss and self.cache is not None:
            for i, v in zip(miss, self.cache.get_many([keys[i] for i in miss])):
                out[i] = v
                if v is not None:
                    self.cached.add(keys[i])
            self.memory.set_many({keys[i]: out[i] for i in miss if out[i] is not None})
        return out

    def set_many(self, items, ttl_s=None):
        self.memory.set_many(items)
        if self.cache is not None:
            self.cache.set_many(items, ttl_s)

    def memoize_many(self, keys, compute):
        from ragpress.core.cache import SegmentCache

        return SegmentCache.memoize_many(self, keys, compute)


class _Recorder(_Tee):
    """Second pass, per document: serves from the batch memory and records every entry read,
    so each document's row carries exactly the entries its passage needs."""

    def __init__(self, memory):
        super().__init__(memory, None)
        self.items: dict[str, bytes] = {}

    def get_many(self, keys):
        out = self.memory.get_many(keys)
        self.items.update({k: v for k, v in zip(keys, out) if v is not None})
        return out

    def set_many(self, items, ttl_s=None):  # only reached if the memory lost an entry
        self.memory.set_many(items)
        self.items.update(items)


class _MethodStage:
    """One method's precompute over a batch of documents (an actor: the model loads once)."""

    def __init__(self, method: str, config: dict, cache_url: str | None, ratio: float | None, values: bool):
        import torch

        from ragpress.core.cache import make_cache
        from ragpress.core.registry import create_compressor
        from ragpress.core.types import Budget

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.compressor = create_compressor(method, config or None)
        # the bare backend: a cache that fails must fail the batch (its documents are not done)
        self.cache = make_cache(cache_url).backend if cache_url else None
        if self.cache is not None:
            self.cache.ping()
        self.budget = Budget(ratio=ratio) if ratio is not None else None
        self.values = values

    def __call__(self, batch):
        import pyarrow as pa

        from ragpress.core.cache import InProcessCache
        from ragpress.core.types import Passage

        rows = batch.to_pylist()
        todo = [r for r in rows if r["error"] is None]
        c = self.compressor
        passages = [Passage(id=r["id"], title=r["title"], text=r["text"], metadata=json.loads(r["metadata"]))
                    for r in todo]
        memory = InProcessCache(max_bytes=2**62, ttl_s=None)
        first = _Tee(memory, self.cache)
        if passages:
            c.segment_cache = first
            try:
                c.precompute(passages, self.budget)  # one batched pass: the model work
            except RagpressError:
                pass  # the per-document pass below says which document it was
        for r, p in zip(todo, passages):
            rec = _Recorder(memory)
            c.segment_cache = tee = _Tee(rec, self.cache)  # misses (after a failed batch) are written too
            try:
                st = c.precompute([p], self.budget)
            except RagpressError as exc:
                r["error"] = f"{c.name}: {exc.message}"
                r["text"] = ""
                continue
            r["work"] = [*r["work"], {"method": c.name, "segments": st.segments[0], "tokens_out": st.tokens_out[0],
                                      "entries": len(rec.items), "hits": len(rec.items.keys() & (first.cached | tee.cached)),
                                      "precomputable": st.precomputable}]
            if self.values:
                r["entries"] = [*r["entries"], *({"key": k, "value": v} for k, v in rec.items.items())]
        return pa.Table.from_pylist(rows, schema=_schema())


# ---------------------------------------------------------------------------- the job folder
class JobFolder:
    """``out``: ``shards/part-*.parquet`` (committed), ``job.json`` (what the job is),
    ``errors.jsonl`` and ``summary.json`` (rebuilt from the shards)."""

    def __init__(self, out: str | Path):
        self.root = Path(out)
        self.shards = self.root / SHARDS_DIR

    def open(self, manifest: dict) -> None:
        """Create or reopen; a folder written by a different job is refused."""
        self.shards.mkdir(parents=True, exist_ok=True)
        for tmp in self.shards.glob(".tmp-*"):  # a shard a killed run did not finish: never committed
            tmp.unlink(missing_ok=True)
        path = self.root / MANIFEST
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("job") != manifest["job"]:
                job = old.get("job") or {}
                raise ConfigError(f"{self.root} holds a different batch job (source {job.get('source')}, methods "
                                  f"{', '.join(job.get('methods') or [])}, ratio {job.get('ratio')}, or other "
                                  "method configs); rerun that command to resume it, or give a new --out")
        else:
            _atomic_write(path, json.dumps(manifest, indent=2).encode())

    def committed(self) -> list[Path]:
        return sorted(p for p in self.shards.glob("part-*.parquet"))

    def done_ids(self) -> frozenset[str]:
        import pyarrow.parquet as pq

        ids: set[str] = set()
        for p in self.committed():
            ids.update(pq.read_table(p, columns=["id"]).column("id").to_pylist())
        return frozenset(ids)

    def commit(self, rows: list[dict], name: str) -> Path:
        """Write ``rows`` as one shard: temp file, fsync, rename (all or nothing)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self.shards / f".tmp-{name}"
        pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        final = self.shards / name
        os.replace(tmp, final)
        _fsync_dir(self.shards)
        return final

    def rebuild_errors(self) -> int:
        """``errors.jsonl`` (id, source, reason) from every committed shard."""
        import pyarrow.parquet as pq

        lines = []
        for p in self.committed():
            t = pq.read_table(p, columns=["id", "source", "error"])
            for id_, src, err in zip(*(t.column(c).to_pylist() for c in ("id", "source", "error"))):
                if err is not None:
                    lines.append(json.dumps({"id": id_, "source": src, "reason": err}, ensure_ascii=False))
        _atomic_write(self.root / ERRORS_FILE, ("\n".join(lines) + ("\n" if lines else "")).encode())
        return len(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_entries(out: str | Path, cache) -> int:
    """Write the cache entries stored in a job folder's shards into ``cache`` (e.g. a Redis the
    service uses); returns how many were written. Idempotent (content-hash keys)."""
    import pyarrow.parquet as pq

    n = 0
    for p in JobFolder(out).committed():
        items = {e["key"]: e["value"] for row in pq.read_table(p, columns=["entries"]).column("entries").to_pylist()
                 for e in row or []}
        if items:
            cache.set_many(items)
            n += len(items)
    return n


# ---------------------------------------------------------------------------- the driver
def precomputable_methods(cfg: BatchConfig) -> list[str]:
    """The job's methods that have query-independent work (the others get no stage)."""
    from ragpress.core.registry import create_compressor

    return [m for m in cfg.methods if create_compressor(m, cfg.configs.get(m) or None).precomputable]


def _manifest(cfg: BatchConfig) -> dict:
    from ragpress.core.registry import create_compressor

    methods = {}
    for m in cfg.methods:
        c = create_compressor(m, cfg.configs.get(m) or None)
        methods[m] = {"config_hash": c.config_hash, "precomputable": bool(c.precomputable)}
    return {"job": {"source": str(Path(cfg.source).resolve()), "methods": methods, "ratio": cfg.ratio,
                    "values": cfg.values},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class _LocalRay:
    """A private local Ray instance for one job: its own temp dir, no dashboard."""

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
            try:
                ray.init(address="local", num_cpus=self.cfg.ray_num_cpus or os.cpu_count() or 2,
                         include_dashboard=False, _temp_dir=self.temp_dir, log_to_driver=False,
                         configure_logging=False, object_store_memory=self.cfg.object_store_mb * 2**20,
                         runtime_env={"env_vars": env})
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


def build_dataset(cfg: BatchConfig, units: list[dict], done: frozenset[str]):
    """read -> one map_batches stage per method (actor pools sized by their StageSpec)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=max(1, len(units)))
    ds = ds.map_batches(_ReadStage, fn_constructor_kwargs={"done": done, "max_chars": cfg.max_chars},
                        batch_size=1, batch_format="pyarrow", num_cpus=cfg.read_num_cpus,
                        compute=ray.data.ActorPoolStrategy(size=1))
    for m in precomputable_methods(cfg):
        spec = cfg.spec(m)
        ds = ds.map_batches(
            _MethodStage,
            fn_constructor_kwargs={"method": m, "config": cfg.configs.get(m, {}), "cache_url": cfg.cache_url,
                                   "ratio": cfg.ratio, "values": cfg.values},
            batch_size=spec.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=spec.workers),
            num_cpus=spec.num_cpus, num_gpus=spec.num_gpus or None)
    return ds


def run_batch(cfg: BatchConfig, stop=None) -> BatchReport:
    """Run (or resume) the job ``cfg``; see the module docstring. ``stop``: a
    :class:`~ragpress.core.lifecycle.GracefulShutdown` whose request ends the run after a commit."""
    from tqdm import tqdm

    from ragpress.core.lifecycle import GracefulShutdown

    t0 = time.perf_counter()
    stop = stop or GracefulShutdown(grace_s=cfg.grace_s)
    kind, units, expected = plan_source(cfg.source, cfg.read_docs)
    skipped = [m for m in cfg.methods if m not in precomputable_methods(cfg)]
    if len(skipped) == len(cfg.methods):
        from ragpress.core.registry import available, create_compressor

        some = [m for m in available() if create_compressor(m).precomputable]
        raise ConfigError(f"none of {', '.join(cfg.methods)} has query-independent work to do ahead of queries; "
                          f"methods that have: {', '.join(some)}")
    folder = JobFolder(cfg.out)  # only once the job is known to be valid: job.json pins it
    folder.open(_manifest(cfg))
    done = folder.done_ids()
    report = BatchReport(done_before=len(done), methods={
        m: {"precomputable": m not in skipped, "segments": 0, "tokens_out": 0, "entries": 0, "hits": 0}
        for m in cfg.methods})
    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    seen: set[str] = set(done)
    pending: list[dict] = []
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal pending, last_commit
        if pending:
            folder.commit(pending, f"part-{run_id}-{report.shards:05d}.parquet")
            report.shards += 1
            pending = []
        last_commit = time.monotonic()

    bar = tqdm(total=max(0, expected - len(done)), unit="doc", disable=not cfg.progress, file=sys.stderr,
               desc=f"batch {','.join(cfg.methods)}", mininterval=1.0, dynamic_ncols=True)
    todo = len(done) < expected  # else a rerun of a finished job: nothing to start
    with stop, (_LocalRay(cfg) if todo else contextlib.nullcontext()):
        stop.install()  # again: ray.init replaces the SIGTERM handler
        try:
            if todo:
                ds = build_dataset(cfg, units, done)
                for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=1):
                    if report.first_result_s is None:
                        report.first_result_s = time.perf_counter() - t0
                    for row in batch.to_pylist():
                        if row["id"] in seen:
                            row.update(error=f"duplicate id {row['id']!r} in the source (kept the first)",
                                       id=f"{row['id']}@{row['source']}", text="", work=[], entries=[])
                        seen.add(row["id"])
                        _count(report, row)
                        row["text"] = row["text"] if row["error"] is None else ""
                        pending.append(row)
                        bar.update(1)
                    bar.set_postfix(errors=report.errors, segments=report.segments, tok_in=report.tokens_in,
                                    refresh=False)
                    if len(pending) >= cfg.shard_docs or time.monotonic() - last_commit >= cfg.commit_every_s:
                        commit()
                    if stop.requested:
                        report.stopped = stop.reason
                        break
            commit()
        finally:
            bar.close()
    folder.rebuild_errors()
    report.seconds = time.perf_counter() - t0
    _atomic_write(folder.root / SUMMARY_FILE, json.dumps(report.to_dict(), indent=2).encode())
    return report


def _count(report: BatchReport, row: dict) -> None:
    report.documents += 1
    if row["error"] is not None:
        report.errors += 1
        return
    report.tokens_in += row["tokens_in"] or 0
    for w in row["work"] or []:
        m = report.methods.setdefault(w["method"], {"segments": 0, "tokens_out": 0, "entries": 0, "hits": 0})
        for k in ("segments", "tokens_out", "entries", "hits"):
            m[k] += w[k]
        report.segments += w["segments"]
        report.tokens_out += w["tokens_out"]
        report.entries += w["entries"]
        report.hits += w["hits"]


# ---------------------------------------------------------------------------- command line
def add_batch_parser(sub) -> None:
    """``ragpress batch SOURCE --methods a,b --out DIR [--cache URL] ...``"""
    p = sub.add_parser("batch", help="compress a document store ahead of queries (Ray Data): fill the segment "
                                     "cache and/or Parquet; resumable")
    p.add_argument("source", help="JSONL file, Parquet file or folder, folder of text/markdown/code files, "
                                  "or a ragpress index folder")
    p.add_argument("--methods", default="exit", help="comma-separated methods (default exit)")
    p.add_argument("--out", required=True, help="job folder: Parquet shards (the done-set), errors.jsonl, "
                                                "summary.json; rerun the same command to resume")
    p.add_argument("--cache", default=None, help="segment cache to fill, e.g. redis://localhost:6379/0")
    p.add_argument("--config", default=None, help='per-method compressor configs as JSON: {"exit": {...}}')
    p.add_argument("--ratio", type=float, default=None, help="ratio budget for budget-dependent work "
                                                              "(TCRA summaries); default: each method's")
    p.add_argument("--workers", type=int, default=1, help="actors per method stage (default 1)")
    p.add_argument("--num-cpus", type=float, default=0.5, help="CPUs per actor (default 0.5)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPU share per actor (e.g. 0.5; default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="documents per actor call (default 16)")
    p.add_argument("--stage", action="append", default=[], metavar="METHOD:KEY=V,...",
                   help="per-method stage override, e.g. tcra:workers=2,num_gpus=0.5 (repeatable)")
    p.add_argument("--shard-docs", type=int, default=256, help="documents per committed shard (default 256)")
    p.add_argument("--read-docs", type=int, default=64, help="documents per read task (default 64)")
    p.add_argument("--max-chars", type=int, default=200_000, help="longer documents go to errors.jsonl")
    p.add_argument("--no-values", action="store_true", help="keep cache entries out of the shards (cache only)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to run on (auto, HOST:PORT, ray://...); "
                                                       "default: a private local Ray started and stopped here")
    p.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds SIGTERM/SIGINT waits for in-flight work")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _stage_overrides(items: list[str], default: StageSpec) -> dict[str, StageSpec]:
    out: dict[str, StageSpec] = {}
    for item in items:
        method, sep, rest = item.partition(":")
        if not sep or not method:
            raise ConfigError(f"--stage {item!r}: write METHOD:KEY=VALUE,... e.g. exit:workers=2,num_gpus=0.5")
        values = default.model_dump()
        for kv in filter(None, rest.split(",")):
            k, eq, v = kv.partition("=")
            if not eq or k not in values:
                raise ConfigError(f"--stage {item!r}: unknown setting {k!r}; use {', '.join(values)}")
            values[k] = v
        try:
            out[method] = StageSpec(**values)
        except ValueError as exc:
            raise ConfigError(f"--stage {item!r}: {exc}") from exc
    return out


def run_batch_cli(args) -> int:
    """The ``ragpress batch`` command: build the config, run, print the summary."""
    from pydantic import ValidationError

    try:
        configs = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config is not valid JSON: {exc.msg}") from exc
    try:
        stage = StageSpec(workers=args.workers, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                          batch_size=args.batch_size)
        cfg = BatchConfig(source=args.source, out=args.out, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                          configs=configs, cache_url=args.cache, ratio=args.ratio, stage=stage,
                          stages=_stage_overrides(args.stage, stage), shard_docs=args.shard_docs,
                          read_docs=args.read_docs, max_chars=args.max_chars, values=not args.no_values,
                          ray_address=args.ray_address, ray_num_cpus=args.ray_num_cpus, grace_s=args.grace,
                          progress=not args.no_progress)
    except ValidationError as exc:
        raise ConfigError(f"invalid batch settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    report = run_batch(cfg)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    print(f"shards: {Path(cfg.out) / SHARDS_DIR}  errors: {Path(cfg.out) / ERRORS_FILE}", file=sys.stderr)
    return 0


__all__ = ["BatchConfig", "BatchReport", "JobFolder", "StageSpec", "add_batch_parser", "build_dataset", "load_entries",
           "plan_source", "precomputable_methods", "read_unit", "run_batch", "run_batch_cli"]
