"""FAISS indexes over sentence-transformers embeddings, and document chunking."""

from ragpress.indexes.chunking import Document, chunk_documents, load_documents
from ragpress.indexes.faiss_index import SearchHit, VectorIndex, build_index

__all__ = ["Document", "SearchHit", "VectorIndex", "build_index", "chunk_documents", "load_documents"]
