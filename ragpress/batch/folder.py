"""The job folder: what a batch job has committed, on a local disk or any pyarrow filesystem
(``s3://...``).

``OUT/``
  ``shards/part-*.parquet``   committed documents, each in exactly one shard (the done-set)
  ``job.json``                what the job is (source, methods and their config hashes, mode)
  ``errors.jsonl``            id, source, reason of every document that failed (rebuilt from the shards)
  ``summary.json``            the last run's :class:`~ragpress.batch.job.BatchReport`
  ``compressed.jsonl`` / ``compressed.parquet``  ``--emit text`` only: the compressed store, which
                              ``ragpress index build`` takes as it is

A shard is all or nothing: on a local disk it is written to a temp name, fsynced and renamed; on
an object store it is one object, which appears only when its upload completes.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from ragpress.batch.sources import redact
from ragpress.core.errors import ConfigError

SHARDS_DIR, MANIFEST, ERRORS_FILE, SUMMARY_FILE = "shards", "job.json", "errors.jsonl", "summary.json"
TEXT_JSONL, TEXT_PARQUET = "compressed.jsonl", "compressed.parquet"


class JobFolder:
    """A job folder at a local path or a URI (see the module docstring)."""

    def __init__(self, out: str | os.PathLike):
        import pyarrow.fs as pafs

        from ragpress.batch.sources import resolve_filesystem

        self.uri = str(out)
        self.fs, root = resolve_filesystem(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = root.rstrip("/")
        self.shards = f"{self.root}/{SHARDS_DIR}"

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # ------------------------------------------------------------------ opening
    def open(self, manifest: dict) -> None:
        """Create or reopen; a folder written by a different job is refused."""
        self.fs.create_dir(self.shards, recursive=True)
        for tmp in self._list(self.shards, ".tmp-"):  # a shard a killed run did not finish: never committed
            self.fs.delete_file(tmp)
        old = self.read_json(MANIFEST)
        if old is not None:
            if old.get("job") != manifest["job"]:
                job = old.get("job") or {}
                raise ConfigError(f"{redact(self.uri)} holds a different batch job (source {job.get('source')}, methods "
                                  f"{', '.join(job.get('methods') or [])}, emit {job.get('emit', 'work')}, ratio "
                                  f"{job.get('ratio')}, or other method configs); rerun that command to resume it, "
                                  "or give a new --out")
        else:
            self.write_bytes(MANIFEST, json.dumps(manifest, indent=2).encode())

    def read_json(self, name: str) -> dict | None:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path(name)).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path(name)) as f:
            return json.loads(f.read().decode())

    # ------------------------------------------------------------------ shards
    def _list(self, folder: str, prefix: str) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File
                      and i.base_name.startswith(prefix) and (prefix == ".tmp-" or i.base_name.endswith(".parquet")))

    def committed(self) -> list[str]:
        return self._list(self.shards, "part-")

    def read_shard(self, path: str, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns, filesystem=self.fs)

    def done_hashes(self) -> np.ndarray:
        """Sorted 64-bit hashes of every committed id (read shard by shard: 8 bytes a document)."""
        from ragpress.batch.stages import id_hashes

        parts = [id_hashes(self.read_shard(p, ["id"]).column("id").to_pylist()) for p in self.committed()]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)

    def commit(self, table, name: str) -> str:
        """Write ``table`` as one shard, all or nothing."""
        import pyarrow.parquet as pq

        final = f"{self.shards}/{name}"
        if not self.local:  # an object store: the object appears whole when the upload completes
            pq.write_table(table, final, filesystem=self.fs)
            return final
        tmp = f"{self.shards}/.tmp-{name}"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.shards)
        return final

    # ------------------------------------------------------------------ derived files
    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomic on a local disk (temp, fsync, rename); one object elsewhere."""
        path = self.path(name)
        if not self.local:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = self.path(f".tmp-{name}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def rebuild_errors(self) -> int:
        """``errors.jsonl`` (id, source, reason) from every committed shard."""
        buf = io.BytesIO()
        n = 0
        for p in self.committed():
            t = self.read_shard(p, ["id", "source", "error"])
            for id_, src, err in zip(*(t.column(c).to_pylist() for c in ("id", "source", "error"))):
                if err is not None:
                    buf.write(json.dumps({"id": id_, "source": src, "reason": err}, ensure_ascii=False).encode() + b"\n")
                    n += 1
        self.write_bytes(ERRORS_FILE, buf.getvalue())
        return n

    def export_text(self, method: str) -> int:
        """``compressed.jsonl`` and ``compressed.parquet`` from the shards, shard by shard: each
        document's compressed text under its id and title, its metadata, and a ``ragpress`` record
        (method, tokens before / after, kept spans as character offsets into the original text).
        ``ragpress index build`` takes either as it is."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string()),
                            ("metadata", pa.string()), ("ragpress", pa.string())])
        names = {TEXT_JSONL: self.path(f".tmp-{TEXT_JSONL}"), TEXT_PARQUET: self.path(f".tmp-{TEXT_PARQUET}")}
        if not self.local:
            names = {k: self.path(k) for k in names}
        n = 0
        with self.fs.open_output_stream(names[TEXT_JSONL]) as jf, \
                pq.ParquetWriter(names[TEXT_PARQUET], schema, filesystem=self.fs) as writer:
            for p in self.committed():
                t = self.read_shard(p, ["id", "title", "metadata", "error", "compressed", "tokens_in",
                                        "tokens_after", "spans"])
                rows = [r for r in t.to_pylist() if r["error"] is None and r["compressed"] is not None]
                out = []
                for r in rows:
                    info = {"method": method, "tokens_before": r["tokens_in"], "tokens_after": r["tokens_after"],
                            "spans": [[s["start"], s["end"]] for s in r["spans"] or []]}
                    meta = json.loads(r["metadata"] or "{}")
                    jf.write(json.dumps({"id": r["id"], "title": r["title"], "text": r["compressed"], **meta,
                                         "ragpress": info}, ensure_ascii=False).encode() + b"\n")
                    out.append({"id": r["id"], "title": r["title"], "text": r["compressed"],
                                "metadata": r["metadata"], "ragpress": json.dumps(info)})
                if out:
                    writer.write_table(pa.Table.from_pylist(out, schema=schema))
                n += len(out)
        if self.local:
            for final, tmp in names.items():
                os.replace(tmp, self.path(final))
        return n


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_entries(out: str | os.PathLike, cache) -> int:
    """Write the cache entries stored in a job folder's shards into ``cache`` (e.g. a Redis the
    service uses); returns how many were written. Idempotent (content-hash keys)."""
    folder = JobFolder(out)
    n = 0
    for p in folder.committed():
        items = {e["key"]: e["value"] for row in folder.read_shard(p, ["entries"]).column("entries").to_pylist()
                 for e in row or []}
        if items:
            cache.set_many(items)
            n += len(items)
    return n


__all__ = ["ERRORS_FILE", "MANIFEST", "SHARDS_DIR", "SUMMARY_FILE", "TEXT_JSONL", "TEXT_PARQUET", "JobFolder",
           "load_entries"]
