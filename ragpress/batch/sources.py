"""Where a batch job's documents come from: a local path or any URI that pyarrow's filesystems
read (``s3://``, ``gs://``, ``hdfs://``, ``file://``), read by Ray Data's own readers.

A source is one of (tried in this order):

* a ragpress index folder (``docstore.jsonl`` + ``meta.json``): the passages the service retrieves;
* a JSONL file (``.jsonl`` or ``.jsonl.gz``), or a folder of them: ``id``, ``text`` or ``contents``,
  optional ``title``; every other field is metadata;
* a Parquet file or a folder of Parquet files: the same columns;
* a folder of text / markdown / code files: one document per file, its path as id.

Ray Data plans the reading (listing, one read task per file or group of files, retries, any
pyarrow filesystem); the driver only resolves the URI to ``(filesystem, path)`` and lists once
to tell the kinds apart. Every row that comes out is a *document*: :func:`doc_schema`. A bad
document (not UTF-8, not JSON, no text) is a row with ``error`` set, never an exception, so it
lands in ``errors.jsonl`` with its reason and the job goes on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ragpress.core.errors import ConfigError

DOC_FIELDS = ("id", "source", "title", "text", "metadata", "error")
_RESERVED = frozenset({"id", "title", "text", "contents"})


def doc_schema():
    import pyarrow as pa

    return pa.schema([(f, pa.string()) for f in DOC_FIELDS])


def doc(id_: str, source: str, title: Any = None, text: str = "", metadata: dict | None = None,
        error: str | None = None) -> dict:
    """One document row (``metadata`` as a JSON object string)."""
    return {"id": id_, "source": source, "title": title if isinstance(title, str) else None, "text": text,
            "metadata": json.dumps(metadata or {}, ensure_ascii=False, default=str), "error": error}


def content_id(title: str | None, text: str) -> str:
    """A stable id for a row that has none (a Parquet row carries no line number): its content's hash."""
    return "doc:" + hashlib.sha1(f"{title or ''}\n{text}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- resolving
@dataclass
class Source:
    """A resolved source: ``kind`` (docstore, jsonl, parquet, files), the pyarrow filesystem and
    the path on it, and ``paths``: what Ray Data is handed (a file, a folder, or files)."""

    uri: str
    kind: str
    filesystem: Any
    path: str
    paths: list[str] | str

    @property
    def local(self) -> bool:
        import pyarrow.fs as pafs

        return isinstance(self.filesystem, pafs.LocalFileSystem)


def redact(uri: str) -> str:
    """``uri`` without credentials (``s3://KEY:SECRET@bucket/...`` -> ``s3://***@bucket/...``): what
    job.json, summaries and errors may show."""
    import re

    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", str(uri))


def resolve_filesystem(uri: str):
    """``(filesystem, path)`` for a local path or a URI (``s3://bucket/key?endpoint_override=...``)."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        from pathlib import Path

        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # ArrowInvalid / ArrowNotImplementedError / OSError for bad or unknown URIs
        raise ConfigError(f"cannot open {redact(uri)!r} ({type(exc).__name__}: {exc}); use a local path or a URI that "
                          "pyarrow's filesystems read (s3://, gs://, hdfs://, file://)") from exc


def resolve_source(uri: str) -> Source:
    """Find what ``uri`` holds; a clear :class:`ConfigError` when it is nothing readable."""
    import pyarrow.fs as pafs

    from ragpress.indexes.chunking import TEXT_SUFFIXES

    fs, path = resolve_filesystem(str(uri))
    info = _info(fs, path, uri)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"batch source {redact(uri)} does not exist: give a JSONL file, a Parquet file or folder, "
                          "a folder of text files, or a ragpress index folder (a local path or an s3://, gs://, "
                          "hdfs:// or file:// URI)")
    if info.type == pafs.FileType.File:
        name = path.rsplit("/", 1)[-1]
        if name.endswith((".jsonl", ".jsonl.gz")):
            return Source(str(uri), "jsonl", fs, path, path)
        if name.endswith(".parquet"):
            return Source(str(uri), "parquet", fs, path, path)
        raise ConfigError(f"cannot read {redact(uri)} as a batch source: use .jsonl, .parquet, a folder, or an index folder")
    files = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if f.type == pafs.FileType.File and not any(part.startswith((".", "_"))
                                                         for part in f.path[len(path):].split("/") if part)]
    names = {f.path[len(path):].lstrip("/") for f in files}
    if {"docstore.jsonl", "meta.json"} <= names:
        return Source(str(uri), "docstore", fs, path, f"{path.rstrip('/')}/docstore.jsonl")
    for kind, suffixes in (("parquet", (".parquet",)), ("jsonl", (".jsonl", ".jsonl.gz"))):
        chosen = sorted(f.path for f in files if f.path.endswith(suffixes))
        if chosen:
            return Source(str(uri), kind, fs, path, chosen)
    text = sorted(f.path for f in files if "." + f.path.rsplit(".", 1)[-1].lower() in TEXT_SUFFIXES)
    if not text:
        raise ConfigError(f"{redact(uri)} has no JSONL, Parquet, text, markdown or code files")
    return Source(str(uri), "files", fs, path, text)


def _info(fs, path: str, uri: str):
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {redact(uri)}: {exc}") from exc


# ---------------------------------------------------------------------------- Ray Data readers
def _jsonl_datasource_cls():
    """A Ray Data file datasource of JSONL documents, one streamed block per ~256 lines (the class
    is built lazily: importing ragpress.batch must not import Ray)."""
    from ray.data.datasource import FileBasedDatasource

    class JsonlDocs(FileBasedDatasource):
        _FILE_EXTENSIONS = ["jsonl", "gz"]

        def __init__(self, paths, *, passage_metadata: bool, lines_per_block: int, **kwargs):
            super().__init__(paths, **kwargs)
            self.passage_metadata = passage_metadata
            self.lines_per_block = lines_per_block

        def _read_stream(self, f, path: str):
            import pyarrow as pa

            schema = doc_schema()
            rows, rest, n = [], b"", 0
            while True:
                chunk = f.read(1 << 20)
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop() if chunk else b""
                for raw in lines:
                    n += 1
                    if raw.strip():
                        rows.append(parse_line(raw, f"{path}:{n}", n, self.passage_metadata))
                    if len(rows) >= self.lines_per_block:
                        yield pa.Table.from_pylist(rows, schema=schema)
                        rows = []
                if not chunk:
                    break
            if rows:
                yield pa.Table.from_pylist(rows, schema=schema)

    return JsonlDocs


def _parquet_datasource_cls():
    """A Ray Data file datasource of Parquet documents, one block per ``lines_per_block`` rows."""
    from ray.data.datasource import FileBasedDatasource

    class ParquetDocs(FileBasedDatasource):
        _FILE_EXTENSIONS = ["parquet"]

        def __init__(self, paths, *, lines_per_block: int, **kwargs):
            super().__init__(paths, **kwargs)
            self.lines_per_block = lines_per_block

        def _read_stream(self, f, path: str):
            import pyarrow as pa
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(pa.BufferReader(f.readall()))  # the stream is not seekable: the file's bytes
            for batch in pf.iter_batches(batch_size=self.lines_per_block):
                table = pa.Table.from_batches([batch])
                yield _parquet_docs(table.append_column("path", pa.array([path] * table.num_rows, pa.string())))

    return ParquetDocs


def parse_line(raw: bytes, where: str, n: int, passage_metadata: bool = False) -> dict:
    """One JSONL line as a document row (errors as rows)."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return doc(f"line:{n}", where, error=f"not UTF-8 ({exc.reason} at byte {exc.start})")
    except json.JSONDecodeError as exc:
        return doc(f"line:{n}", where, error=f"invalid JSON ({exc.msg})")
    if not isinstance(row, dict):
        return doc(f"line:{n}", where, error="a line must be one JSON object")
    id_ = str(row["id"]) if row.get("id") is not None else f"line:{n}"
    text = row.get("text", row.get("contents"))
    if not isinstance(text, str):
        return doc(id_, where, error="no string 'text' (or 'contents') field")
    meta = row.get("metadata") if passage_metadata else {k: v for k, v in row.items() if k not in _RESERVED}
    return doc(id_, where, row.get("title"), text, meta if isinstance(meta, dict) else {})


def _parquet_docs(batch):
    """Parquet rows -> documents (``id`` column, else the content's hash)."""
    import pyarrow as pa

    names = set(batch.column_names)
    text_col = "text" if "text" in names else "contents" if "contents" in names else None
    out = []
    for row in batch.to_pylist():
        path = row.pop("path", "")
        text = row.get(text_col) if text_col else None
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.append(doc(str(row.get("id") or "row:?"), path, error=f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
        id_ = str(row["id"]) if row.get("id") is not None else \
            content_id(row.get("title"), text) if isinstance(text, str) else "row:?"
        where = f"{path}#{id_}"
        if not isinstance(text, str):
            out.append(doc(id_, where, error="no string 'text' (or 'contents') column value"))
            continue
        meta = {k: v for k, v in row.items() if k not in _RESERVED}
        if isinstance(meta.get("metadata"), str):  # a compressed store's own JSON metadata column
            try:
                meta = {**json.loads(meta.pop("metadata")), **meta}
            except (json.JSONDecodeError, TypeError):
                pass
        out.append(doc(id_, where, row.get("title"), text, meta))
    return pa.Table.from_pylist(out, schema=doc_schema())


def _file_docs(batch, root: str):
    """Whole files -> documents (id: the path under the source folder)."""
    import pyarrow as pa

    out = []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist()):
        rel = path[len(root):].lstrip("/") if path.startswith(root) else path
        try:
            out.append(doc(rel, path, rel, data.decode("utf-8"), {"source": path}))
        except UnicodeDecodeError as exc:
            out.append(doc(rel, path, error=f"not UTF-8 ({exc.reason} at byte {exc.start})"))
    return pa.Table.from_pylist(out, schema=doc_schema())


def read_documents(source: Source, read_num_cpus: float = 0.25, lines_per_block: int = 64,
                   tasks: int | None = None):
    """The source as a Ray Data dataset of document rows (:func:`doc_schema`), streamed (a JSONL
    file in blocks of ``lines_per_block`` lines, so the first documents reach the workers early),
    at most ``tasks`` read tasks at once (None: as many as Ray Data likes)."""
    import ray

    args = {"filesystem": source.filesystem, "num_cpus": read_num_cpus, "concurrency": tasks}
    if source.kind in ("jsonl", "docstore"):
        ds = ray.data.read_datasource(
            _jsonl_datasource_cls()(source.paths, filesystem=source.filesystem,
                                    passage_metadata=source.kind == "docstore", lines_per_block=lines_per_block),
            num_cpus=read_num_cpus, concurrency=tasks)
        return ds
    if source.kind == "parquet":
        # a file datasource of our own rather than read_parquet: that one plans its file listing as a
        # task asking for a whole CPU, which a cluster busy with other work may never free
        return ray.data.read_datasource(
            _parquet_datasource_cls()(source.paths, filesystem=source.filesystem, lines_per_block=lines_per_block),
            num_cpus=read_num_cpus, concurrency=tasks)
    ds = ray.data.read_binary_files(source.paths, include_paths=True, **args)
    return ds.map_batches(_file_docs, fn_kwargs={"root": source.path}, batch_format="pyarrow",
                          num_cpus=read_num_cpus, compute=ray.data.TaskPoolStrategy(size=tasks) if tasks else None)


__all__ = ["DOC_FIELDS", "Source", "content_id", "doc", "doc_schema", "parse_line", "read_documents",
           "redact", "resolve_filesystem", "resolve_source"]
