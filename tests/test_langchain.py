"""The LangChain components, with real compressors, a real FAISS index and the shipped corpus."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.retrievers import BaseRetriever

from ragpress.core.errors import BudgetError, ConfigError, EmptyQueryError, UnknownCompressorError
from ragpress.core.registry import create_compressor
from ragpress.core.types import Budget, CompressionRequest
from ragpress.integrations.langchain import RagpressCompressor, RagpressRetriever
from ragpress.pipelines.sample import SAMPLE_CORPUS, SAMPLE_QUESTION

QUESTION = "Which function creates a temporary file securely?"


@pytest.fixture(scope="module")
def corpus_docs() -> list[Document]:
    rows = [json.loads(line) for line in SAMPLE_CORPUS.read_text().splitlines()]
    picked = [r for r in rows if r["title"].startswith(("tempfile", "json.dump"))][:6]
    assert len(picked) >= 4
    return [Document(page_content=r["text"], id=r["id"], metadata={"title": r["title"], "source": r["id"]})
            for r in picked]


def test_is_a_langchain_document_compressor(embedder):
    comp = RagpressCompressor(method="embed-sentences", ratio=0.3)
    assert isinstance(comp, BaseDocumentCompressor)
    assert comp.compress_documents([], QUESTION) == []


@pytest.mark.parametrize("method", ["exit", "embed-sentences"])
def test_extractive_methods_keep_source_text_per_document(method, corpus_docs, embedder):
    comp = RagpressCompressor(method=method, ratio=0.3)
    out = comp.compress_documents(corpus_docs, QUESTION)
    assert 1 <= len(out) <= len(corpus_docs)
    by_id = {d.id: d for d in corpus_docs}
    total_before = out[0].metadata["ragpress"]["tokens_before"]
    for d in out:
        src = by_id[d.id]
        assert d.metadata["source"] == src.metadata["source"]  # the input's metadata travels along
        fig = d.metadata["ragpress"]
        assert fig["compressor"] == method and fig["tokens_before"] == total_before
        assert fig["tokens_after"] <= Budget(ratio=0.3).target_tokens(total_before) + 2
        assert len(d.page_content) < len(src.page_content)
    # the same answer as the library call, span for span
    lib = create_compressor(method).compress(CompressionRequest.of(
        QUESTION, [{"id": f"d{i}", "text": d.page_content, "title": d.metadata["title"]}
                   for i, d in enumerate(corpus_docs)], ratio=0.3))
    position = {d.id: i for i, d in enumerate(corpus_docs)}
    for d in out:
        i = position[d.id]
        spans = [s for s in lib.spans if s.passage_id == f"d{i}"]
        assert all(s.text in corpus_docs[i].page_content for s in spans)  # verbatim source text
        assert d.page_content == " ".join(s.text.strip() for s in spans)


def test_code_documents_keep_order_and_markers(causal_lm):
    code = "import os\n\n" + "".join(
        f"def helper_{i}(x):\n    y = x * {i}\n    z = y + {i}\n    return os.path.join(str(z), 'out')\n\n\n"
        for i in range(6)) + "def area(r):\n    return 3.14159 * r * r\n"
    doc = Document(page_content=code, id="geom.py", metadata={"language": "python"})
    out = RagpressCompressor(method="longcodezip", ratio=0.4).compress_documents([doc], "def area_of_square(side):")
    assert len(out) == 1 and out[0].id == "geom.py"
    text = out[0].page_content
    assert "# ..." in text
    kept = [ln for ln in text.split("\n") if ln.strip() and ln.strip() != "# ..."]
    pos = 0
    for ln in kept:  # source lines, in source order
        pos = code.find(ln, pos)
        assert pos >= 0, ln
        pos += len(ln)


def test_abstractive_method_returns_one_document(corpus_docs, causal_lm):
    docs = [Document(page_content=corpus_docs[0].page_content[:600], id="a", metadata={"title": "tempfile"})]
    out = RagpressCompressor(method="tcra-summary", ratio=0.5).compress_documents(docs, QUESTION)
    assert len(out) == 1
    assert out[0].metadata["ragpress"]["sources"] == ["a"]  # the input documents' ids
    assert out[0].metadata["ragpress"]["tokens_after"] < out[0].metadata["ragpress"]["tokens_before"]


def test_bad_settings_and_input_are_typed(corpus_docs, embedder):
    with pytest.raises(UnknownCompressorError):
        RagpressCompressor(method="no-such-method")
    with pytest.raises(BudgetError):
        RagpressCompressor(method="embed-sentences", ratio=1.5)
    with pytest.raises(BudgetError):
        RagpressCompressor(method="embed-sentences", ratio=0.3, tokens=100)
    with pytest.raises(ConfigError):
        RagpressCompressor(method="embed-sentences", config={"no_such_setting": 1})
    with pytest.raises(EmptyQueryError):
        RagpressCompressor(method="exit", ratio=0.3).compress_documents(corpus_docs, "  ")
    with pytest.raises(TypeError):
        RagpressCompressor(method="exit", ratio=0.3).compress_documents(["plain text"], QUESTION)


def test_cache_url_memory_reuses_results(corpus_docs, embedder):
    comp = RagpressCompressor(method="embed-sentences", ratio=0.3, cache_url="memory")
    first = comp.compress_documents(corpus_docs, QUESTION)
    assert comp.compress(corpus_docs, QUESTION).cache_hits == 1  # the same request, from the cache
    assert [d.page_content for d in comp.compress_documents(corpus_docs, QUESTION)] == [d.page_content for d in first]


def test_retriever_searches_the_index_and_compresses(tmp_path_factory, embedder):
    from ragpress.indexes import build_index

    path = tmp_path_factory.mktemp("lc-idx") / "flat"
    build_index(SAMPLE_CORPUS, path, show_progress=False)
    retriever = RagpressRetriever.from_index_path(str(path), top_k=4, method="exit", ratio=0.3)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke(SAMPLE_QUESTION)
    assert 1 <= len(docs) <= 4
    assert any("temp" in d.page_content.lower() for d in docs)
    for d in docs:
        assert d.metadata["ragpress"]["compressor"] == "exit"
        assert d.metadata["ragpress"]["ratio"] <= 0.35
        assert "score" in d.metadata and d.id
    assert [d.page_content for d in asyncio.run(retriever.ainvoke(SAMPLE_QUESTION))] == [d.page_content for d in docs]
    with pytest.raises(EmptyQueryError):
        retriever.invoke(" ")
