"""Batch compression of a document store ahead of queries, on Ray Data (``ragpress batch``).

``ragpress batch SOURCE --methods exit,embed-sentences --cache redis://... --out DIR`` does every
method's query-independent work (:meth:`~ragpress.core.compressor.Compressor.precompute`:
sentence embeddings, EXIT head features, TCRA summaries, code line perplexities, ARC soft
tokens) for every document and writes it to the segment cache (Redis) and to Parquet shards
under ``--out``, so the service answers later queries over those documents warm: the same
``memo`` keys, written by the same code. ``--emit text`` with a query-independent method
(``truncate``, ``tcra-semantic``, ...) writes a compressed copy of the store instead, which
``ragpress index build`` indexes as it is.

SOURCE and ``--out`` are local paths or URIs that pyarrow's filesystems read (``s3://``,
``gs://``, ``hdfs://``, ``file://``); Ray Data's own readers read the source
(:mod:`ragpress.batch.sources`).

* Local mode (no ``--ray-address``) starts a private Ray instance (its own temp dir, no
  dashboard, never an instance someone else started) and stops it at the end; with an address
  (``auto``, ``HOST:PORT``, ``ray://...``) the same stages run on that cluster.
* Exactly once: a shard is committed whole or not at all (:mod:`ragpress.batch.folder`); a rerun
  of the same command skips the ids of the committed shards and processes only the rest. Cache
  keys are content hashes, so work redone after a crash rewrites the same entries.
* Faults: Ray restarts a worker actor that dies and retries its batch (the summary counts the
  restarts); a lost node's actors and tasks are rescheduled on the nodes left.
* A document that fails (not UTF-8, not JSON, no text, empty, over ``max_chars``, a method
  refusing it, a duplicate id) becomes a row with its reason, and ``errors.jsonl`` (id, source,
  reason) is rebuilt from the shards at the end; the job goes on. A failing cache fails the job
  (rerun to resume): its documents are not done.
* SIGTERM / SIGINT (:class:`~ragpress.core.lifecycle.GracefulShutdown`): stop taking results,
  commit what has arrived, stop Ray, exit 0; work that was in flight is redone by the next run.

>>> report = run_batch(BatchConfig(source="docs.jsonl", out="out/", methods=["exit"],
...                                cache_url="redis://localhost:6379/0"))   # doctest: +SKIP
>>> report.summary()                                                       # doctest: +SKIP
"""

from ragpress.batch.cli import add_batch_parser, run_batch_cli
from ragpress.batch.folder import ERRORS_FILE, SHARDS_DIR, SUMMARY_FILE, JobFolder, load_entries
from ragpress.batch.job import BatchConfig, BatchReport, StageSpec, build_dataset, run_batch, stage_plan
from ragpress.batch.sources import read_documents, resolve_source

__all__ = ["ERRORS_FILE", "SHARDS_DIR", "SUMMARY_FILE", "BatchConfig", "BatchReport", "JobFolder", "StageSpec",
           "add_batch_parser", "build_dataset", "load_entries", "read_documents", "resolve_source", "run_batch",
           "run_batch_cli", "stage_plan"]
