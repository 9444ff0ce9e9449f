"""FAISS over sentence-transformers embeddings, with the passages (docstore) beside it.

Index kinds: ``flat`` (exact inner product on normalised vectors = cosine), ``hnsw`` (graph,
approximate, no training) and ``ivfpq`` (inverted lists + product quantisation, for large stores;
needs >= 256 passages to train its codebooks). On a machine where FAISS sees a GPU (``faiss-gpu``,
the ``gpu`` extra), flat and IVF-PQ indexes are searched on the GPU; saved indexes are always CPU indexes, so they load anywhere.

>>> idx = VectorIndex.build(passages, kind="flat")     # doctest: +SKIP
>>> idx.save("my-index")                                # doctest: +SKIP
>>> VectorIndex.load("my-index").search(["who wrote Hamlet?"], k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ragpress.core.errors import IndexBuildError, IndexNotFoundError, InvalidRequestError
from ragpress.core.models import load_embedder, resolve_model_id
from ragpress.core.types import Passage

IndexKind = Literal["flat", "hnsw", "ivfpq"]
log = logging.getLogger(__name__)
FORMAT_VERSION = 1
_INDEX_FILE, _DOCS_FILE, _META_FILE = "index.faiss", "docstore.jsonl", "meta.json"


@dataclass
class SearchHit:
    """One retrieved passage with its cosine similarity to the query."""

    passage: Passage
    score: float
    rank: int


class VectorIndex:
    """A FAISS index plus the passages it was built from."""

    def __init__(self, index, passages: list[Passage], embedder: str | None, kind: IndexKind, meta: dict | None = None):
        self.index = index
        self.passages = passages
        self.embedder_name = embedder
        self.kind = kind
        self.meta = meta or {}
        self._search_index = _maybe_to_gpu(index, kind)

    def __len__(self) -> int:
        return len(self.passages)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, passages: list[Passage], embedder: str | None = None, kind: IndexKind = "flat",
              batch_size: int = 64, show_progress: bool = True, hnsw_m: int = 32, nlist: int | None = None,
              pq_m: int | None = None) -> VectorIndex:
        """Embed ``passages`` (title + text) and index them."""
        import faiss

        if not passages:
            raise IndexBuildError("no passages to index: the source had no non-empty documents")
        if kind not in ("flat", "hnsw", "ivfpq"):
            raise IndexBuildError(f"unknown index kind {kind!r}: use flat, hnsw or ivfpq")
        t0 = time.perf_counter()
        model = load_embedder(embedder)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        vectors = model.encode([_embed_text(p) for p in passages], batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=show_progress).astype(np.float32)
        t_embed = time.perf_counter() - t0
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            n = len(passages)
            if n < 256:
                raise IndexBuildError(f"an ivfpq index needs >= 256 passages to train (got {n}); use flat or hnsw")
            nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            pq_m = pq_m or next(m for m in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dim % m == 0)
            # FAISS wants >= 39 training points per PQ centroid: 8-bit codes from ~10k passages up
            nbits = max(4, min(8, int(math.log2(n / 39))))
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.min_points_per_centroid = 1  # small stores: train anyway, quietly
            index.cp.min_points_per_centroid = 1
            index.train(vectors)
            index.nprobe = min(nlist, 16)
        index.add(vectors)
        meta = {"format_version": FORMAT_VERSION, "kind": kind, "dim": dim, "count": len(passages),
                "embedder": resolve_model_id("embedder", embedder), "embedder_arg": embedder,
                "build_seconds": {"model_load": t_load, "embed": t_embed},
                "passages_per_second": len(passages) / t_embed if t_embed else None}
        return cls(index, passages, embedder, kind, meta)

    # ------------------------------------------------------------------ search
    def search(self, queries: str | list[str], k: int = 5, batch_size: int = 64) -> list[list[SearchHit]]:
        """Top-``k`` passages for each query (one batched embedding + one FAISS call)."""
        if isinstance(queries, str):
            queries = [queries]
        if not queries or any(not q or not q.strip() for q in queries):
            raise InvalidRequestError("every search query must be a non-empty string")
        if k < 1:
            raise InvalidRequestError(f"k must be >= 1, got {k}")
        q = load_embedder(self.embedder_name).encode(list(queries), batch_size=batch_size, normalize_embeddings=True,
                                                     convert_to_numpy=True).astype(np.float32)
        scores, ids = self._search_index.search(q, min(k, len(self.passages)))
        return [[SearchHit(self.passages[i], float(s), r) for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0]
                for srow, irow in zip(scores, ids)]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write index, docstore and metadata to folder ``path`` atomically: readers see the
        old folder or the new one, never a half-written one."""
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            faiss.write_index(self.index, str(tmp / _INDEX_FILE))
            with open(tmp / _DOCS_FILE, "w", encoding="utf-8") as f:
                for p in self.passages:
                    f.write(p.model_dump_json() + "\n")
            (tmp / _META_FILE).write_text(json.dumps(self.meta, indent=2))
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / "x")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """Load a folder written by :meth:`save`."""
        import faiss

        path = Path(path)
        missing = [f for f in (_INDEX_FILE, _DOCS_FILE, _META_FILE) if not (path / f).is_file()]
        if not path.is_dir() or missing:
            raise IndexNotFoundError(
                f"no ragpress index at {path}" + (f" (missing {', '.join(missing)})" if path.is_dir() else "")
                + ": build one with `ragpress index build SOURCE --out PATH`"
            )
        meta = json.loads((path / _META_FILE).read_text())
        index = faiss.read_index(str(path / _INDEX_FILE))
        with open(path / _DOCS_FILE, encoding="utf-8") as f:
            passages = [Passage.model_validate_json(line) for line in f if line.strip()]
        if index.ntotal != len(passages):
            raise IndexNotFoundError(f"index at {path} is inconsistent ({index.ntotal} vectors, {len(passages)} passages): rebuild it")
        return cls(index, passages, meta.get("embedder_arg"), meta["kind"], meta)


def _embed_text(p: Passage) -> str:
    return f"{p.title}\n{p.text}" if p.title else p.text


def _maybe_to_gpu(index, kind: str):
    """The index on every GPU when FAISS is a GPU build that sees one (flat and IVF-PQ have GPU
    versions; HNSW stays on the CPU); otherwise, or when moving fails, the CPU index, with a
    warning that says why in the failing case."""
    import faiss

    if kind not in ("flat", "ivfpq") or not hasattr(faiss, "get_num_gpus"):
        return index
    try:
        if faiss.get_num_gpus() > 0:
            return faiss.index_cpu_to_all_gpus(index)
    except Exception as exc:  # a GPU build whose device is unusable: search on the CPU, and say so
        log.warning("FAISS sees a GPU but the %s index could not move to it (%s: %s); searching on the CPU",
                    kind, type(exc).__name__, exc)
    return index


def build_index(source: str | Path, out: str | Path | None = None, *, kind: IndexKind = "flat",
                embedder: str | None = None, window: int = 200, overlap: int = 40,
                show_progress: bool = True) -> VectorIndex:
    """Load documents from ``source`` (JSONL or folder), chunk them with the embedder's
    tokenizer, embed, index, and save to ``out`` when given. The one build path of the CLI,
    the service's sample index and the tests."""
    from ragpress.indexes.chunking import chunk_documents, load_documents

    docs = load_documents(source)
    passages = chunk_documents(docs, load_embedder(embedder).tokenizer, window=window, overlap=overlap)
    index = VectorIndex.build(passages, embedder=embedder, kind=kind, show_progress=show_progress)
    index.meta["source"] = str(source)
    if out is not None:
        index.save(out)
    return index
