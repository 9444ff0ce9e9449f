"""The LangChain components, with real compressors, a real FAISS index and the shipped corpus."""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.retrievers import BaseRetriever

from ragpress.core.errors import (
    BudgetError,
    ConfigError,
    EmptyQueryError,
    InvalidRequestError,
    UnknownCompressorError,
)
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
        assert len(d.page_content) <= len(src.page_content)  # a one-sentence document may be kept whole
    assert sum(len(d.page_content) for d in out) < sum(len(by_id[d.id].page_content) for d in out)
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


@functools.cache
def sample_index():
    """The shipped sample index, loaded once per test session (built once if absent)."""
    from ragpress.indexes import VectorIndex
    from ragpress.pipelines.sample import ensure_sample_index

    return VectorIndex.load(ensure_sample_index(show_progress=False))


def test_retriever_returns_top_k_documents_each_compressed_on_its_own(embedder):
    retriever = RagpressRetriever(index=sample_index(), top_k=4,
                                  compressor=RagpressCompressor(method="embed-sentences", ratio=0.3))
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke(SAMPLE_QUESTION)
    hits = sample_index().search(SAMPLE_QUESTION, k=4)[0]
    assert [d.id for d in docs] == [h.passage.id for h in hits]  # k retrieved = k returned, in rank order
    assert any("temp" in d.page_content.lower() for d in docs)
    by_id = {h.passage.id: h.passage for h in hits}
    for d, h in zip(docs, hits):
        fig = d.metadata["ragpress"]
        assert d.page_content.strip() and fig["compressor"] == "embed-sentences"
        assert d.metadata["score"] == pytest.approx(h.score) and d.metadata["title"] == h.passage.title
        # figures are the document's own: its budget, its tokens, its spans into its text
        assert fig["ratio"] <= 0.35 and fig["budget"] == {"ratio": 0.3}
        source = by_id[d.id].text
        assert " ".join(source[s["start"]:s["end"]].strip() for s in fig["spans"]) == d.page_content
    assert len({d.metadata["ragpress"]["tokens_before"] for d in docs}) > 1
    one = retriever.invoke(SAMPLE_QUESTION, top_k=1)  # the call-time k
    assert len(one) == 1 and one[0].page_content == docs[0].page_content
    assert [d.page_content for d in asyncio.run(retriever.ainvoke(SAMPLE_QUESTION))] == \
        [d.page_content for d in docs]

    async def two():  # concurrent calls: one batched search at the larger k, each cut to its own k
        return await asyncio.gather(retriever.ainvoke(SAMPLE_QUESTION, top_k=1),
                                    retriever.ainvoke("What does json.dump write?", top_k=3))

    first, second = asyncio.run(two())
    assert [d.page_content for d in first] == [docs[0].page_content] and len(second) == 3
    assert [d.id for d in second] == [h.passage.id for h in sample_index().search("What does json.dump write?", 3)[0]]
    with pytest.raises(EmptyQueryError):
        retriever.invoke(" ")
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(InvalidRequestError):
            retriever.invoke(SAMPLE_QUESTION, top_k=bad)
    with pytest.raises(ConfigError):
        RagpressRetriever()  # neither an index nor an endpoint
    # a budget below even a title: the documents still come back (k of them), empty, saying why
    tiny = RagpressRetriever(index=sample_index(), top_k=2,
                             compressor=RagpressCompressor(method="embed-sentences", tokens=3)).invoke(SAMPLE_QUESTION)
    assert [d.id for d in tiny] == [d.id for d in docs[:2]]
    assert all(d.page_content == "" and "budget" in d.metadata["ragpress"]["empty_reason"] for d in tiny)


def test_concurrent_async_calls_share_one_batched_model_call(corpus_docs, embedder):
    corpus_docs = corpus_docs[:3]
    comp = RagpressCompressor(method="embed-sentences", ratio=0.3, batch_wait_ms=50)
    batches = []
    real = comp.compressor.compress_batch

    def counting(requests):  # the real compressor, counted
        batches.append(len(requests))
        return real(requests)

    comp.compressor.compress_batch = counting
    queries = [QUESTION, "How do I write JSON to a file?", "What does mkstemp return?"]

    async def together():
        return await asyncio.gather(*(comp.acompress_documents(corpus_docs, q) for q in queries),
                                    comp.acompress_documents(corpus_docs, " "), return_exceptions=True)

    *outs, bad = asyncio.run(together())
    assert isinstance(bad, EmptyQueryError)  # a bad request fails its own caller only
    assert batches == [3]  # three concurrent calls, one batched model call
    for q, out in zip(queries, outs):
        assert [d.page_content for d in out] == [d.page_content for d in comp.compress_documents(corpus_docs, q)]
        assert all(d.metadata["source"] for d in out)


def test_contextual_compression_retriever_over_a_vector_store(corpus_docs, embedder):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    class MiniLM(Embeddings):  # the offline all-MiniLM-L6-v2, as LangChain embeddings
        def embed_documents(self, texts):
            return embedder.encode(list(texts), normalize_embeddings=True).tolist()

        def embed_query(self, text):
            return self.embed_documents([text])[0]

    store = InMemoryVectorStore.from_documents(corpus_docs, MiniLM())
    base = store.as_retriever(search_kwargs={"k": 4})
    comp = RagpressCompressor(method="embed-sentences", ratio=0.3)
    retriever = ContextualCompressionRetriever(base_compressor=comp, base_retriever=base)
    found = base.invoke(QUESTION)
    docs = retriever.invoke(QUESTION)
    assert 1 <= len(docs) <= 4 and {d.id for d in docs} <= {d.id for d in found}
    by_id = {d.id: d for d in found}
    fig = docs[0].metadata["ragpress"]  # one request over the found documents: a shared budget
    assert fig["tokens_after"] <= Budget(ratio=0.3).target_tokens(fig["tokens_before"]) + 2
    for d in docs:
        src = by_id[d.id]
        assert d.metadata["title"] == src.metadata["title"] and d.metadata["source"] == src.metadata["source"]
        assert len(d.page_content) < len(src.page_content)
        for s in d.metadata["ragpress"]["spans"]:
            assert src.page_content[s["start"]:s["end"]].strip() in d.page_content
    again = asyncio.run(retriever.ainvoke(QUESTION))  # the native acompress_documents
    assert [(d.id, d.page_content) for d in again] == [(d.id, d.page_content) for d in docs]


try:
    from langchain_tests.integration_tests import RetrieversIntegrationTests
except ImportError:  # pragma: no cover - the dev extra installs langchain-tests
    RetrieversIntegrationTests = None

if RetrieversIntegrationTests is not None:
    @pytest.mark.usefixtures("embedder")
    class TestRagpressRetrieverStandard(RetrieversIntegrationTests):
        """LangChain's standard retriever suite (langchain-tests): ``top_k`` is the k. Its async
        test runs on anyio's pytest plugin (anyio comes with httpx), on asyncio."""

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend(self):
            return "asyncio"

        @property
        def retriever_constructor(self) -> type[RagpressRetriever]:
            return RagpressRetriever

        @property
        def retriever_constructor_params(self) -> dict:
            return {"index": sample_index(), "top_k": 5,
                    "compressor": RagpressCompressor(method="embed-sentences", ratio=0.3)}

        @property
        def retriever_query_example(self) -> str:
            return SAMPLE_QUESTION

        @property
        def num_results_arg_name(self) -> str:
            return "top_k"


def test_soft_token_method_is_refused():
    with pytest.raises(ConfigError, match="soft tokens"):
        RagpressCompressor(method="arc")


def test_one_adapter_under_the_integrations():
    """LangChain's documents go through the same adapter as LlamaIndex's and Haystack's: code
    markers included, also for a method only a remote service knows (its documents say the language)."""
    from ragpress.core.types import CompressionResult, Span
    from ragpress.integrations import adapter
    from ragpress.integrations.langchain import documents_to_passages, result_to_documents

    code = "import os\n\n\ndef a():\n    return 1\n\n\ndef b():\n    return 2\n"
    docs = [Document(page_content=code, id="m.py", metadata={"language": "python"})]
    passages = documents_to_passages(docs)
    assert passages == adapter.to_passages([adapter.SourceDoc(code, "m.py", {"language": "python"})])
    start = code.index("def b")
    result = CompressionResult(text=code[start:], spans=[Span(passage_id="d0", start=start, end=len(code),
                                                                text=code[start:])],
                               tokens_before=20, tokens_after=8, compressor="a-service-plugin", config_hash="x")
    out = result_to_documents(result, docs, passages)
    assert out[0].page_content == "# ...\ndef b():\n    return 2" and out[0].id == "m.py"
    assert out[0].metadata["ragpress"]["spans"] == [{"start": start, "end": len(code), "score": None}]
    prose = [Document(page_content="One. Two.", id="p")]
    result = result.model_copy(update={"spans": [Span(passage_id="d0", start=5, end=9, text="Two.")]})
    assert result_to_documents(result, prose, documents_to_passages(prose))[0].page_content == "Two."
