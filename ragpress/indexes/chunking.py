"""Loading documents (JSONL or a folder of text / markdown / code files) and cutting them into
token windows with overlap, so every chunk fits the embedder."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ragpress.core.errors import DocumentDecodeError, IndexBuildError, IndexNotFoundError
from ragpress.core.types import Passage

TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".markdown", ".rst", ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".go", ".rs", ".c",
    ".h", ".cc", ".cpp", ".hpp", ".cs", ".rb", ".php", ".scala", ".kt", ".swift", ".sh", ".sql", ".html",
    ".css", ".yaml", ".yml", ".toml", ".json", ".tex",
})


@dataclass
class Document:
    """A source document before chunking."""

    id: str
    text: str
    title: str | None = None
    metadata: dict = field(default_factory=dict)


def load_documents(source: str | Path) -> list[Document]:
    """Documents from a JSONL or Parquet file (fields / columns ``id``, ``text`` or ``contents``,
    optional ``title``; the rest is metadata, a JSON ``metadata`` column merged in: the compressed
    store that ``ragpress batch --emit text`` writes is taken as it is) or from every
    text/markdown/code file under a folder (sorted, hidden entries skipped)."""
    path = Path(source)
    if not path.exists():
        raise IndexNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return list(_load_folder(path))
    if path.suffix == ".jsonl":
        return list(_load_jsonl(path))
    if path.suffix == ".parquet":
        return list(_load_parquet(path))
    return [_read_text_file(path, path.parent)]


def _load_parquet(path: Path) -> Iterator[Document]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = set(table.column_names)
    text_col = "text" if "text" in names else "contents" if "contents" in names else None
    if text_col is None:
        raise IndexBuildError(f"{path}: a Parquet store needs a 'text' (or 'contents') column; it has "
                              f"{', '.join(table.column_names)}")
    for n, row in enumerate(table.to_pylist()):
        text = row.get(text_col)
        if not isinstance(text, str):
            raise IndexBuildError(f"{path}: row {n} has no string {text_col!r}")
        meta = {k: v for k, v in row.items() if k not in {"id", "title", "text", "contents"} and v is not None}
        if isinstance(meta.get("metadata"), str):
            try:
                inner = json.loads(meta.pop("metadata"))
            except json.JSONDecodeError as exc:
                raise IndexBuildError(f"{path}: row {n}: the 'metadata' column is not JSON ({exc.msg})") from exc
            meta = {**(inner if isinstance(inner, dict) else {}), **meta}
        for k, v in list(meta.items()):
            if k == "ragpress" and isinstance(v, str):  # the batch job's record: JSON in Parquet
                with contextlib.suppress(json.JSONDecodeError):
                    meta[k] = json.loads(v)
        yield Document(id=str(row["id"]) if row.get("id") is not None else str(n), text=text,
                       title=row.get("title"), metadata=meta)


def _load_jsonl(path: Path) -> Iterator[Document]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DocumentDecodeError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start}): re-encode it as UTF-8") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IndexBuildError(f"{path}:{n}: invalid JSON ({exc.msg}); each line must be one JSON object") from exc
        text = row.get("text", row.get("contents"))
        if not isinstance(row, dict) or not isinstance(text, str):
            raise IndexBuildError(f"{path}:{n}: a record needs a string 'text' (or 'contents') field")
        meta = {k: v for k, v in row.items() if k not in {"id", "title", "text", "contents"}}
        yield Document(id=str(row.get("id", n - 1)), text=text, title=row.get("title"), metadata=meta)


def _load_folder(root: Path) -> Iterator[Document]:
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise IndexBuildError(f"{root} has no text, markdown or code files ({', '.join(sorted(TEXT_SUFFIXES)[:8])}, ...)")
    for p in files:
        yield _read_text_file(p, root)


def _read_text_file(path: Path, root: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentDecodeError(
            f"{path} is not UTF-8 ({exc.reason} at byte {exc.start}): re-encode it as UTF-8 or move it out of the folder"
        ) from exc
    rel = str(path.relative_to(root)) if path != root else path.name
    return Document(id=rel, text=text, title=rel, metadata={"source": str(path)})


def chunk_documents(documents: list[Document], tokenizer, window: int = 200, overlap: int = 40) -> list[Passage]:
    """Cut each document into windows of ``window`` tokens (of ``tokenizer``, a fast HF tokenizer)
    overlapping by ``overlap`` tokens. Chunks keep exact source text (cut at token boundaries);
    a document that fits in one window stays whole with its own id, else chunk ids are ``id#k``.
    Empty documents are skipped."""
    if window < 8 or not (0 <= overlap < window):
        raise IndexBuildError(f"chunk window must be >= 8 tokens and 0 <= overlap < window (got {window}, {overlap})")
    passages: list[Passage] = []
    for doc in documents:
        if not doc.text.strip():
            continue
        offsets = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        if len(offsets) <= window:
            passages.append(Passage(id=doc.id, title=doc.title, text=doc.text, metadata={**doc.metadata, "doc_id": doc.id}))
            continue
        step, k = window - overlap, 0
        for first in range(0, len(offsets), step):
            last = min(first + window, len(offsets)) - 1
            a, b = offsets[first][0], offsets[last][1]
            passages.append(Passage(id=f"{doc.id}#{k}", title=doc.title, text=doc.text[a:b],
                                    metadata={**doc.metadata, "doc_id": doc.id, "char_start": a}))
            k += 1
            if last == len(offsets) - 1:
                break
    return passages
