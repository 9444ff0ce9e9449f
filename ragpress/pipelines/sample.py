"""The shipped sample corpus (Python standard-library docstrings, PSF License) and its index,
built once into the cache directory; what `make run` and the service's default retriever use."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ragpress.core.models import cache_dir

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "data" / "sample_corpus.jsonl"
SAMPLE_QUESTION = "How do I safely create a temporary file?"


def sample_index_path() -> Path:
    digest = hashlib.sha256(SAMPLE_CORPUS.read_bytes()).hexdigest()[:12]
    return cache_dir() / "indexes" / f"sample-{digest}"


def ensure_sample_index(show_progress: bool = True) -> Path:
    """Path of the sample corpus index, building it (about 15 s on 2 CPU cores) if absent."""
    from ragpress.indexes.faiss_index import build_index

    path = sample_index_path()
    if not (path / "meta.json").is_file():  # saves are atomic: meta.json present = complete
        build_index(SAMPLE_CORPUS, path, kind="flat", show_progress=show_progress)
    return path
