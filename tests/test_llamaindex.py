"""The LlamaIndex node postprocessor inside a real LlamaIndex query path, offline: a
``VectorStoreIndex`` over the shipped sample corpus with the offline MiniLM as its embedding
model, its retriever, :class:`RagpressNodePostprocessor`, and a response synthesizer over a
LlamaIndex LLM wrapping ragpress's offline reader (SmolLM2-135M-Instruct). Remote mode is tested
against the session's service in tests/services/test_frameworks_remote.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

pytest.importorskip("llama_index.core", reason="the [llamaindex] extra is not installed")

from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding  # noqa: E402
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata  # noqa: E402
from llama_index.core.llms.callbacks import llm_completion_callback  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import (  # noqa: E402
    ImageNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from pydantic import Field, PrivateAttr  # noqa: E402

from ragpress.client import ServiceUnavailableError  # noqa: E402
from ragpress.core.errors import BudgetError, ConfigError, EmptyQueryError, UnknownCompressorError  # noqa: E402
from ragpress.integrations.adapter import Compressed  # noqa: E402
from ragpress.integrations.llamaindex import RagpressNodePostprocessor  # noqa: E402
from ragpress.pipelines.sample import SAMPLE_CORPUS, SAMPLE_QUESTION  # noqa: E402

QUESTIONS = [SAMPLE_QUESTION, "How do I write a Python object to a file as JSON?",
             "How do I add a command-line option with argparse?"]


class MiniLM(BaseEmbedding):
    """The offline all-MiniLM-L6-v2 (ragpress's default embedder) as a LlamaIndex embedding model."""

    _model: Any = PrivateAttr()

    def __init__(self, model: Any, **kw: Any):
        super().__init__(model_name="all-MiniLM-L6-v2", embed_batch_size=128, **kw)
        self._model = model

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.encode(list(texts), batch_size=64, normalize_embeddings=True).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


class ReaderLLM(CustomLLM):
    """ragpress's offline reader as a LlamaIndex LLM; it keeps the prompts it was given."""

    max_new_tokens: int = 24
    prompts: list[str] = Field(default_factory=list)
    _reader: Any = PrivateAttr()

    def __init__(self, reader: Any, **kw: Any):
        super().__init__(**kw)
        self._reader = reader

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self._reader.context_window, num_output=self.max_new_tokens,
                           model_name=self._reader.model_id)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        from ragpress.readers import Prompt

        self.prompts.append(prompt)
        answer = self._reader.generate_batch([Prompt(messages=[{"role": "user", "content": prompt}],
                                                     max_new_tokens=self.max_new_tokens, stop=("\n",))])[0]
        return CompletionResponse(text=answer.text.strip())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
        done = self.complete(prompt)
        yield CompletionResponse(text=done.text, delta=done.text)


@pytest.fixture(scope="module")
def index(embedder) -> VectorStoreIndex:
    """The whole sample corpus (567 passages) embedded by LlamaIndex through the offline MiniLM."""
    rows = [json.loads(line) for line in SAMPLE_CORPUS.read_text().splitlines()]
    nodes = [TextNode(id_=r["id"], text=r["text"], metadata={"title": r["title"]}) for r in rows]
    return VectorStoreIndex(nodes, embed_model=MiniLM(embedder))


@pytest.fixture(scope="module")
def llm(causal_lm) -> ReaderLLM:
    from ragpress.readers import create_reader

    return ReaderLLM(create_reader("local", max_new_tokens=24))


def test_is_a_node_postprocessor_and_validates_like_the_others():
    pp = RagpressNodePostprocessor(method="embed-sentences", ratio=0.3)
    assert isinstance(pp, BaseNodePostprocessor) and pp.class_name() == "RagpressNodePostprocessor"
    assert pp.postprocess_nodes([], query_str="anything") == []
    with pytest.raises(UnknownCompressorError):
        RagpressNodePostprocessor(method="no-such-method")
    with pytest.raises(BudgetError):
        RagpressNodePostprocessor(method="embed-sentences", ratio=1.5)
    with pytest.raises(BudgetError):
        RagpressNodePostprocessor(method="embed-sentences", ratio=0.3, tokens=100)
    with pytest.raises(ConfigError):
        RagpressNodePostprocessor(method="embed-sentences", config={"no_such_setting": 1})
    with pytest.raises(ConfigError, match="soft tokens"):
        RagpressNodePostprocessor(method="arc")
    with pytest.raises(ConfigError):  # settings that only apply in process
        RagpressNodePostprocessor(endpoint="http://127.0.0.1:9", config={"batch_size": 8})
    with pytest.raises(TypeError):
        pp.postprocess_nodes([TextNode(text="not wrapped")], query_str="q")


def test_query_engine_end_to_end(index, llm, embedder, capsys):
    """Retriever -> ragpress (EXIT, 30 %) -> response synthesizer over the offline reader, for three
    questions; sync and async agree, and the LLM sees the compressed text without the figures."""
    retriever = index.as_retriever(similarity_top_k=4)
    pp = RagpressNodePostprocessor(method="exit", ratio=0.3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=llm, node_postprocessors=[pp], response_mode="compact")
    native, async_calls = pp.engine.acompress_docs, []

    async def counted(docs, query):  # aquery must reach the native async path, not a thread around the sync one
        async_calls.append(query)
        return await native(docs, query)

    pp.engine.acompress_docs = counted
    report = []
    for q in QUESTIONS:
        found = {n.node.node_id: n for n in retriever.retrieve(q)}
        llm.prompts.clear()
        response = engine.query(q)
        nodes = response.source_nodes
        assert 1 <= len(nodes) <= 4 and {n.node.node_id for n in nodes} <= set(found)
        fig = nodes[0].node.metadata["ragpress"]
        assert fig["compressor"] == "exit" and fig["budget"] == {"ratio": 0.3}
        assert fig["tokens_after"] <= 0.3 * fig["tokens_before"] + 2
        for n in nodes:
            src = found[n.node.node_id]
            assert n.score == pytest.approx(src.score)  # the retriever's score, kept
            assert n.node.metadata["title"] == src.node.metadata["title"]
            assert len(n.node.get_content()) <= len(src.node.get_content())  # a one-sentence node may stay whole
            original = src.node.get_content()
            kept = [original[s["start"]:s["end"]].strip() for s in n.node.metadata["ragpress"]["spans"]]
            assert " ".join(kept) == n.node.get_content()  # verbatim source spans, in order
            assert n.node.get_content() in "".join(llm.prompts)  # what the LLM read
        assert sum(len(n.node.get_content()) for n in nodes) < sum(len(found[n.node.node_id].node.get_content())
                                                                   for n in nodes)
        prompt = "".join(llm.prompts)
        assert "tokens_before" not in prompt and "config_hash" not in prompt  # figures hidden from the LLM
        assert isinstance(response.response, str)
        report.append((q, fig["tokens_before"], fig["tokens_after"], [(n.node.node_id, n.node.get_content())
                                                                      for n in nodes], response.response))
        if q == QUESTIONS[0]:  # once (a model pass per query): aquery, through the native apostprocess_nodes
            again = asyncio.run(engine.aquery(q))
            assert [(n.node.node_id, n.node.get_content()) for n in again.source_nodes] == \
                [(n.node.node_id, n.node.get_content()) for n in nodes]
    assert async_calls == QUESTIONS[:1]
    with capsys.disabled():
        print("\nLlamaIndex: VectorStoreIndex(MiniLM) top-4 -> ragpress exit ratio 0.3 -> offline reader")
        for q, before, after, kept, answer in report:
            print(f"  Q: {q}\n    tokens {before} -> {after}; answer: {answer!r}")
            for node_id, text in kept:
                print(f"    [{node_id}] {text[:160]}")


def test_node_identity_relationships_and_scores_kept(embedder):
    doc = RelatedNodeInfo(node_id="doc-tempfile")
    nodes = [
        NodeWithScore(node=TextNode(
            id_="n1", text="The tempfile module creates temporary files. NamedTemporaryFile is deleted when closed. "
                           "Cats sleep most of the day.",
            metadata={"title": "tempfile", "source": "docs/tempfile.md"}, excluded_llm_metadata_keys=["source"],
            relationships={NodeRelationship.SOURCE: doc}, embedding=[0.1] * 384, start_char_idx=10,
            end_char_idx=120), score=0.83),
        NodeWithScore(node=ImageNode(id_="img", image="aGVsbG8="), score=0.5),  # no text: passes through
        NodeWithScore(node=TextNode(id_="n2", text="The Eiffel tower is in Paris. Paris has many bridges.",
                                    metadata={"title": "paris"}), score=0.31),
    ]
    out = RagpressNodePostprocessor(method="embed-sentences", ratio=0.4).postprocess_nodes(
        nodes, query_str="How do I create a temporary file?")
    ids = [n.node.node_id for n in out]
    assert ids[:2] == ["n1", "img"] and set(ids) <= {"n1", "img", "n2"}
    first = out[0]
    assert first.score == 0.83 and first.node.relationships[NodeRelationship.SOURCE].node_id == "doc-tempfile"
    assert first.node.metadata["source"] == "docs/tempfile.md" and "ragpress" in first.node.metadata
    assert first.node.embedding is None and first.node.start_char_idx == 10
    kept, original = first.node.get_content(), nodes[0].node.get_content()
    assert "temporary" in kept and len(kept) < len(original)
    assert " ".join(original[s["start"]:s["end"]].strip() for s in first.node.metadata["ragpress"]["spans"]) == kept
    assert {"source", "ragpress"} <= set(first.node.excluded_llm_metadata_keys)
    assert "ragpress" in first.node.excluded_embed_metadata_keys
    shown = first.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "title: tempfile" in shown and "ragpress" not in shown
    assert out[1] is nodes[1]
    assert nodes[0].node.get_content().startswith("The tempfile module")  # the input is left as it was
    with pytest.raises(EmptyQueryError):  # a query-aware method needs a question
        RagpressNodePostprocessor(method="embed-sentences", ratio=0.4).postprocess_nodes(nodes)
    # a query-blind method needs none
    assert RagpressNodePostprocessor(method="truncate", ratio=0.5).postprocess_nodes(nodes[:1])


def test_abstractive_output_is_one_new_node_with_the_best_score():
    nodes = [NodeWithScore(node=TextNode(id_=f"n{i}", text=f"Text {i}."), score=s) for i, s in enumerate((0.2, 0.7))]
    piece = Compressed("A summary of both.", None, {"compressor": "tcra-summary", "sources": ["n0", "n1"]})
    out = RagpressNodePostprocessor._merge(nodes, [0, 1], [piece])
    assert len(out) == 1 and out[0].score == 0.7 and out[0].node.get_content() == "A summary of both."
    assert out[0].node.metadata["ragpress"]["sources"] == ["n0", "n1"]
    assert "ragpress" in out[0].node.excluded_llm_metadata_keys


def test_concurrent_async_calls_share_one_batch_and_remote_errors_are_typed(embedder):
    from ragpress.services.redis_server import free_port

    pp = RagpressNodePostprocessor(method="embed-sentences", ratio=0.4, batch_wait_ms=50)
    batches = []
    real = pp.compressor.compress_batch
    pp.compressor.compress_batch = lambda requests: batches.append(len(requests)) or real(requests)
    nodes = [NodeWithScore(node=TextNode(id_="a", text="mkstemp returns a handle and a path. It rained."), score=1.0)]

    async def together():
        return await asyncio.gather(*(pp.apostprocess_nodes(nodes, QueryBundle(q))
                                      for q in ("What does mkstemp return?", "Did it rain?")))

    first, second = asyncio.run(together())
    assert batches == [2] and first[0].node.node_id == "a" and second[0].node.node_id == "a"
    nobody = RagpressNodePostprocessor(endpoint=f"http://127.0.0.1:{free_port()}", timeout=5)
    assert nobody.compressor is None
    with pytest.raises(ServiceUnavailableError):
        nobody.postprocess_nodes(nodes, query_str="What does mkstemp return?")
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(nobody.apostprocess_nodes(nodes, query_str="What does mkstemp return?"))
