"""The stages a document goes through on the workers: :func:`prepare` (validate, skip what is
done) and :class:`WorkStage` (every method's work over a batch of documents, in one actor that
loads each model once).

``WorkStage`` runs in one of two modes:

* ``work`` (default): each method's :meth:`~ragpress.core.compressor.Compressor.precompute`, the
  query-independent work its ``compress`` would do (embeddings, head features, summaries, line
  perplexities, soft tokens), into the job's segment cache and into the row's ``entries``. The
  methods of one stage share one batch memory, so work that two methods share (the embedder's
  sentence vectors for ``exit`` and ``embed-sentences``) is computed once.
* ``text``: a query-independent method's ``compress`` of each document alone, at the job's
  budget: the compressed text, its tokens and the kept spans (a compressed copy of the store).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid

import numpy as np

from ragpress.core.errors import RagpressError


def job_schema():
    """The columns of a committed shard: the document, what each method did, the cache entries
    (``work`` mode), the compressed text and its spans (``text`` mode), and which worker did it."""
    import pyarrow as pa

    work = pa.struct([("method", pa.string()), ("segments", pa.int64()), ("tokens_out", pa.int64()),
                      ("entries", pa.int64()), ("hits", pa.int64()), ("precomputable", pa.bool_())])
    entry = pa.struct([("key", pa.string()), ("value", pa.binary())])
    span = pa.struct([("start", pa.int64()), ("end", pa.int64())])
    return pa.schema([("id", pa.string()), ("source", pa.string()), ("title", pa.string()), ("text", pa.string()),
                      ("metadata", pa.string()), ("error", pa.string()), ("tokens_in", pa.int64()),
                      ("work", pa.list_(work)), ("entries", pa.list_(entry)), ("compressed", pa.string()),
                      ("tokens_after", pa.int64()), ("spans", pa.list_(span)), ("worker", pa.string())])


def id_hashes(ids) -> np.ndarray:
    """64-bit hashes of ids (8 bytes a document: what the driver and the readers keep of the
    done set, never the ids themselves)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


def prepare(batch, done: np.ndarray, max_chars: int, chunk: int = 4096):
    """Documents -> validated documents, without those already committed (``done``: sorted hashes).

    A read task's output reaches this as one block of up to Ray Data's block size (a whole JSONL
    file of 100,000 documents is one block): the texts are checked ``chunk`` at a time and the
    columns replaced as Arrow arrays, so no more than ``chunk`` documents are ever Python objects
    (turning the whole block into rows held ~0.9 GB at 100,000 documents)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(done) and batch.num_rows:
        h = id_hashes(batch.column("id").to_pylist())
        pos = np.searchsorted(done, h).clip(max=len(done) - 1)
        batch = batch.filter(pa.array(done[pos] != h))
    texts, errors = batch.column("text"), batch.column("error")
    out: list[str | None] = []
    for off in range(0, batch.num_rows, chunk):
        for text, error in zip(texts.slice(off, chunk).to_pylist(), errors.slice(off, chunk).to_pylist()):
            if error is None:
                if not text.strip():
                    error = "empty document (no text)"
                elif len(text) > max_chars:
                    error = f"over the size limit ({len(text)} characters > max_chars {max_chars})"
            out.append(error)
    error = pa.array(out, pa.string())
    text = pc.if_else(pc.is_valid(error), pa.scalar("", pa.string()), texts)
    names = batch.schema.names
    return (batch.set_column(names.index("error"), batch.schema.field("error"), error)
            .set_column(names.index("text"), batch.schema.field("text"), text))


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


class WorkStage:
    """Every method of a stage over a batch of documents (a Ray Data actor: models load once).

    ``threads``: torch's intra-op threads in this actor (the job gives each actor its share of
    the node's CPUs; one thread per actor left a 2-core machine half idle)."""

    def __init__(self, methods: list[str], configs: dict, cache_url: str | None, ratio: float | None,
                 values: bool, emit: str = "work", threads: int | None = None):
        import torch

        from ragpress.core.cache import make_cache
        from ragpress.core.registry import create_compressor
        from ragpress.core.types import Budget

        if threads:
            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        self.compressors = [create_compressor(m, configs.get(m) or None) for m in methods]
        # the bare backend: a cache that fails must fail the batch (its documents are not done)
        self.cache = make_cache(cache_url).backend if cache_url else None
        if self.cache is not None:
            self.cache.ping()
        self.budget = Budget(ratio=ratio) if ratio is not None else None
        self.values, self.emit = values, emit
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        for r in rows:
            r["work"], r["entries"] = r.get("work") or [], r.get("entries") or []
            r["worker"] = self.worker
        todo = [r for r in rows if r["error"] is None]
        if todo:
            if self.emit == "text":
                self._text(todo)
            else:
                self._work(todo)
        return pa.Table.from_pylist(rows, schema=job_schema())

    # ------------------------------------------------------------------ work mode
    def _work(self, todo: list[dict]) -> None:
        from ragpress.core.cache import InProcessCache
        from ragpress.core.types import Passage

        memory = InProcessCache(max_bytes=2**62, ttl_s=None)
        # entries an earlier stage of this job computed (e.g. shared embeddings): not computed again
        memory.set_many({e["key"]: e["value"] for r in todo for e in r["entries"]})
        for c in self.compressors:
            rows = [r for r in todo if r["error"] is None]
            passages = [Passage(id=r["id"], title=r["title"], text=r["text"], metadata=json.loads(r["metadata"]))
                        for r in rows]
            if not passages:
                return
            first = _Tee(memory, self.cache)
            c.segment_cache = first
            try:
                c.precompute(passages, self.budget)  # one batched pass: the model work
            except RagpressError:
                pass  # the per-document pass below says which document it was
            for r, p in zip(rows, passages):
                rec = _Recorder(memory)
                c.segment_cache = tee = _Tee(rec, self.cache)  # misses (after a failed batch) are written too
                try:
                    st = c.precompute([p], self.budget)
                except RagpressError as exc:
                    r.update(error=f"{c.name}: {exc.message}", text="", entries=[])
                    continue
                r["tokens_in"] = st.tokens_in[0]
                r["work"].append({"method": c.name, "segments": st.segments[0], "tokens_out": st.tokens_out[0],
                                  "entries": len(rec.items), "precomputable": st.precomputable,
                                  "hits": len(rec.items.keys() & (first.cached | tee.cached))})
                if self.values:
                    have = {e["key"] for e in r["entries"]}
                    r["entries"].extend({"key": k, "value": v} for k, v in rec.items.items() if k not in have)
            c.segment_cache = None
        if not self.values:
            for r in todo:
                r["entries"] = []

    # ------------------------------------------------------------------ text mode
    def _text(self, todo: list[dict]) -> None:
        from ragpress.core.types import CompressionRequest, Passage

        (c,) = self.compressors
        requests = [CompressionRequest(query="", budget=self.budget, passages=[
            Passage(id=r["id"], title=r["title"], text=r["text"], metadata=json.loads(r["metadata"]))]) for r in todo]
        try:
            results = c.compress_batch(requests)
        except RagpressError:  # one bad document: each alone, so the error names it
            results = []
            for req in requests:
                try:
                    results.append(c.compress(req))
                except RagpressError as exc:
                    results.append(exc)
        for r, res in zip(todo, results):
            if isinstance(res, RagpressError):
                r.update(error=f"{c.name}: {res.message}", text="")
                continue
            head = f"{r['title']}\n" if r["title"] else ""  # the title stays in its own field, as in the source
            text = res.text[len(head):] if head and res.text.startswith(head) else res.text
            r.update(compressed=text, tokens_in=res.tokens_before, tokens_after=res.tokens_after,
                     spans=[{"start": s.start, "end": s.end} for s in res.spans])
            r["work"].append({"method": c.name, "segments": len(res.spans), "tokens_out": res.tokens_after,
                              "entries": 0, "hits": 0, "precomputable": False})


__all__ = ["WorkStage", "id_hashes", "job_schema", "prepare"]
