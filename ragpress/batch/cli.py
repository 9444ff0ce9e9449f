"""``ragpress batch SOURCE --methods a,b --out DIR [--cache URL] [--emit work|text] ...``"""

from __future__ import annotations

import json
import sys

from ragpress.batch.folder import ERRORS_FILE, SHARDS_DIR, TEXT_JSONL, TEXT_PARQUET
from ragpress.batch.job import BatchConfig, StageSpec, run_batch
from ragpress.batch.sources import redact
from ragpress.core.errors import ConfigError


def add_batch_parser(sub) -> None:
    p = sub.add_parser("batch", help="compress a document store ahead of queries (Ray Data): fill the segment "
                                     "cache and/or Parquet, or write a compressed copy; resumable")
    p.add_argument("source", help="JSONL file, Parquet file or folder, folder of text/markdown/code files, "
                                  "or a ragpress index folder; a local path or an s3://, gs://, hdfs://, file:// URI")
    p.add_argument("--methods", default="exit", help="comma-separated methods (default exit)")
    p.add_argument("--out", required=True, help="job folder (local path or URI): Parquet shards (the done-set), "
                                                "errors.jsonl, summary.json; rerun the same command to resume")
    p.add_argument("--emit", choices=("work", "text"), default="work",
                   help="work (default): each method's query-independent work into the cache and shards, so "
                        "queries are served warm; text: a compressed copy of the store (one query-independent "
                        f"method) as {TEXT_JSONL} and {TEXT_PARQUET}, which `ragpress index build` takes")
    p.add_argument("--cache", default=None, help="segment cache to fill, e.g. redis://localhost:6379/0")
    p.add_argument("--config", default=None, help='per-method compressor configs as JSON: {"exit": {...}}')
    p.add_argument("--ratio", type=float, default=None, help="ratio budget for budget-dependent work (TCRA "
                                                              "summaries, --emit text); default: each method's")
    p.add_argument("--workers", type=int, default=1, help="actors of the stage (default 1)")
    p.add_argument("--num-cpus", type=float, default=0.5, help="CPUs per actor (default 0.5)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPU share per actor (e.g. 0.5; default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per actor (default: a local job shares "
                                                             "the machine's CPUs between its actors; a cluster job "
                                                             "uses --num-cpus rounded up)")
    p.add_argument("--batch-size", type=int, default=16, help="documents per actor call (default 16)")
    p.add_argument("--stage", action="append", default=[], metavar="METHOD:KEY=V,...",
                   help="a stage of its own for one method, e.g. tcra:workers=2,num_gpus=0.5 (repeatable); the "
                        "other methods share one stage")
    p.add_argument("--shard-docs", type=int, default=256, help="documents per committed shard (default 256)")
    p.add_argument("--read-docs", type=int, default=64, help="documents per block between the read and the workers (default 64)")
    p.add_argument("--read-tasks", type=int, default=2,
                   help="read tasks at once (default 2; each a Ray worker process): more on a cluster whose "
                        "workers outrun two readers")
    p.add_argument("--blocks-mb", type=int, default=64,
                   help="object store the job's blocks may fill ahead of the workers, MiB (default 64): the read "
                        "waits past it, so memory stays flat however large the store")
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
                          batch_size=args.batch_size, threads=args.threads)
        cfg = BatchConfig(source=args.source, out=args.out, emit=args.emit,
                          methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                          configs=configs, cache_url=args.cache, ratio=args.ratio, stage=stage,
                          stages=_stage_overrides(args.stage, stage), shard_docs=args.shard_docs,
                          read_docs=args.read_docs, read_tasks=args.read_tasks, blocks_mb=args.blocks_mb,
                          max_chars=args.max_chars,
                          values=not args.no_values,
                          ray_address=args.ray_address, ray_num_cpus=args.ray_num_cpus, grace_s=args.grace,
                          progress=not args.no_progress)
    except ValidationError as exc:
        err = exc.errors()[0]
        if isinstance((err.get("ctx") or {}).get("error"), ConfigError):  # a validator's own typed error
            raise err["ctx"]["error"] from None
        raise ConfigError(f"invalid batch settings: {err['loc']}: {err['msg']}") from exc
    report = run_batch(cfg)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    out = redact(cfg.out).rstrip("/")
    where = f"shards: {out}/{SHARDS_DIR}  errors: {out}/{ERRORS_FILE}"
    if report.emitted is not None:
        where += f"  compressed store: {out}/{TEXT_JSONL} (and {TEXT_PARQUET})"
    print(where, file=sys.stderr)
    return 0


__all__ = ["add_batch_parser", "run_batch_cli"]
