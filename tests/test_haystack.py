"""The Haystack component in a real Haystack ``Pipeline``, offline: an ``InMemoryDocumentStore``
holding the shipped sample corpus, a BM25 retriever, :class:`RagpressDocumentCompressor` and a
prompt builder; saved to YAML, loaded back and run again; ``AsyncPipeline`` for ``run_async``.
Remote mode is tested against the session's service in tests/services/test_frameworks_remote.py."""

from __future__ import annotations

import asyncio
import inspect
import json
import os

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no telemetry calls out of a test (or CI)
pytest.importorskip("haystack", reason="the [haystack] extra is not installed")

from haystack import Document, Pipeline  # noqa: E402
from haystack.components.builders import PromptBuilder  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack.utils import Secret  # noqa: E402

from ragpress.client import ServiceUnavailableError  # noqa: E402
from ragpress.core.errors import BudgetError, ConfigError, EmptyQueryError, UnknownCompressorError  # noqa: E402
from ragpress.integrations.adapter import Compressed  # noqa: E402
from ragpress.integrations.haystack import RagpressDocumentCompressor  # noqa: E402
from ragpress.pipelines.sample import SAMPLE_CORPUS, SAMPLE_QUESTION  # noqa: E402

QUESTIONS = [SAMPLE_QUESTION, "How do I write a Python object to a file as JSON?",
             "How do I add a command-line option with argparse?"]
TEMPLATE = """Answer from the documents.
{% for d in documents %}[{{ d.id }}] {{ d.content }}
{% endfor %}Question: {{ question }}
Answer:"""


@pytest.fixture(scope="module")
def store() -> InMemoryDocumentStore:
    rows = [json.loads(line) for line in SAMPLE_CORPUS.read_text().splitlines()]
    store = InMemoryDocumentStore()
    store.write_documents([Document(id=r["id"], content=r["text"], meta={"title": r["title"]}) for r in rows])
    return store


def _async_pipeline_class():
    """Haystack 3's Pipeline runs async itself (``run_async``); Haystack 2 has an AsyncPipeline."""
    if hasattr(Pipeline, "run_async"):
        return Pipeline
    from haystack import AsyncPipeline

    return AsyncPipeline


def _pipeline(store, compressor: RagpressDocumentCompressor, cls=Pipeline):
    pipe = cls()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=4))
    pipe.add_component("compressor", compressor)
    pipe.add_component("prompt_builder", PromptBuilder(template=TEMPLATE, required_variables=["question"]))
    pipe.connect("retriever.documents", "compressor.documents")
    pipe.connect("compressor.documents", "prompt_builder.documents")
    return pipe


def _inputs(q: str) -> dict:
    return {"retriever": {"query": q}, "compressor": {"query": q}, "prompt_builder": {"question": q}}


def test_pipeline_end_to_end_and_yaml_round_trip(store, causal_lm, capsys):
    """BM25 top-4 -> ragpress (EXIT, 30 %) -> prompt, for three questions; the pipeline saved to
    YAML loads back and gives the same prompts."""
    pipe = _pipeline(store, RagpressDocumentCompressor(method="exit", ratio=0.3))
    retriever = InMemoryBM25Retriever(document_store=store, top_k=4)
    report, prompts = [], []
    for q in QUESTIONS:
        out = pipe.run(_inputs(q), include_outputs_from={"compressor"})
        docs, prompt = out["compressor"]["documents"], out["prompt_builder"]["prompt"]
        found = {d.id: d for d in retriever.run(query=q)["documents"]}
        assert 1 <= len(docs) <= 4 and {d.id for d in docs} <= set(found)
        fig = docs[0].meta["ragpress"]
        assert fig["compressor"] == "exit" and fig["tokens_after"] <= 0.3 * fig["tokens_before"] + 2
        full_prompt = TEMPLATE.replace("{{ question }}", q)  # the same documents uncompressed, for scale
        for d in docs:
            src = found[d.id]
            assert d.score == pytest.approx(src.score) and d.meta["title"] == src.meta["title"]
            assert len(d.content) <= len(src.content) and d.content in prompt  # a one-sentence one may stay whole
            kept = [src.content[s["start"]:s["end"]].strip() for s in d.meta["ragpress"]["spans"]]
            assert " ".join(kept) == d.content
            full_prompt += src.content
        assert len(prompt) < len(full_prompt) and sum(len(d.content) for d in docs) < sum(len(found[d.id].content) for d in docs)
        prompts.append(prompt)
        report.append((q, fig["tokens_before"], fig["tokens_after"], [(d.id, d.content) for d in docs]))

    yaml_text = pipe.dumps()
    assert "ragpress.integrations.haystack.RagpressDocumentCompressor" in yaml_text
    assert "RAGPRESS_API_KEY" in yaml_text and "method: exit" in yaml_text and "ratio: 0.3" in yaml_text
    # Haystack 3 builds classes only from trusted modules; Haystack 2 has no allowlist
    trusted = {"allowed_modules": ["ragpress.integrations.haystack"]} \
        if "allowed_modules" in inspect.signature(Pipeline.loads).parameters else {}
    loaded = Pipeline.loads(yaml_text, **trusted)
    comp = loaded.get_component("compressor")
    assert isinstance(comp, RagpressDocumentCompressor) and comp.to_dict() == pipe.get_component("compressor").to_dict()
    assert [loaded.run(_inputs(q))["prompt_builder"]["prompt"] for q in QUESTIONS] == prompts
    with capsys.disabled():
        print("\nHaystack: InMemoryBM25Retriever top-4 -> ragpress exit ratio 0.3 -> PromptBuilder")
        for q, before, after, kept in report:
            print(f"  Q: {q}\n    tokens {before} -> {after}")
            for doc_id, text in kept:
                print(f"    [{doc_id}] {text[:160]}")


def test_async_pipeline_runs_run_async(store, embedder):
    sync = _pipeline(store, RagpressDocumentCompressor(method="embed-sentences", ratio=0.3)).run(
        _inputs(QUESTIONS[1]))["prompt_builder"]["prompt"]
    comp = RagpressDocumentCompressor(method="embed-sentences", ratio=0.3)
    calls = []
    native = comp.engine.acompress_docs

    async def counted(docs, query):  # the native async path, counted
        calls.append(query)
        return await native(docs, query)

    def refused(docs, query):
        raise AssertionError("the sync path ran in an async pipeline")

    comp.engine.acompress_docs, comp.engine.compress_docs = counted, refused

    async def both():
        pipe = _pipeline(store, comp, _async_pipeline_class())
        return await asyncio.gather(*(pipe.run_async(_inputs(q)) for q in QUESTIONS[:2]))

    first, second = asyncio.run(both())
    assert second["prompt_builder"]["prompt"] == sync and first["prompt_builder"]["prompt"] != sync
    assert sorted(calls) == sorted(QUESTIONS[:2])
    source = "mkstemp returns a handle and the path of a new file. It rained all day. Cats sleep a lot."
    direct = asyncio.run(comp.run_async(documents=[Document(id="m", content=source)], query="What does mkstemp return?"))
    kept = direct["documents"][0]
    assert kept.id == "m" and kept.content.startswith("mkst") and kept.content in source and len(calls) == 3


def test_documents_keep_id_meta_score_and_pass_through_without_text(embedder):
    docs = [Document(id="a", content="The tempfile module creates temporary files. Cats sleep all day.",
                     meta={"title": "tempfile", "source": "t.md"}, score=0.9, embedding=[0.1] * 384),
            Document(id="no-text", meta={"kind": "image"}, score=0.4),
            Document(id="b", content="The Eiffel tower is in Paris. Paris has many bridges.", score=0.2)]
    out = RagpressDocumentCompressor(method="embed-sentences", ratio=0.4).run(
        documents=docs, query="How do I create a temporary file?")["documents"]
    assert [d.id for d in out][:2] == ["a", "no-text"]
    a = out[0]
    assert a.score == 0.9 and a.meta["source"] == "t.md" and a.embedding is None
    assert "temporary" in a.content and "Cats" not in a.content and a.meta["ragpress"]["compressor"] == "embed-sentences"
    assert out[1] is docs[1] and docs[0].content.endswith("Cats sleep all day.")
    piece = Compressed("A summary.", None, {"compressor": "tcra-summary", "sources": ["a", "b"]})
    merged = RagpressDocumentCompressor._merge(docs, [0, 2], [piece])
    assert [d.content for d in merged] == ["A summary.", None] and merged[0].score == 0.9


def test_typed_errors_and_serialisation_of_settings(monkeypatch):
    with pytest.raises(UnknownCompressorError):
        RagpressDocumentCompressor(method="no-such-method")
    with pytest.raises(BudgetError):
        RagpressDocumentCompressor(method="embed-sentences", ratio=2.0)
    with pytest.raises(ConfigError, match="soft tokens"):
        RagpressDocumentCompressor(method="arc")
    with pytest.raises(EmptyQueryError):
        RagpressDocumentCompressor(method="embed-sentences").run(documents=[Document(content="Some text.")])
    assert RagpressDocumentCompressor(method="truncate").run(documents=[]) == {"documents": []}
    from ragpress.services.redis_server import free_port

    monkeypatch.setenv("RAGPRESS_API_KEY", "from-the-environment")
    endpoint = f"http://127.0.0.1:{free_port()}"
    remote = RagpressDocumentCompressor(endpoint=endpoint, method="truncate", tokens=50, timeout=5)
    data = remote.to_dict()
    params = data["init_parameters"]
    assert params["endpoint"] == endpoint and params["tokens"] == 50 and params["method"] == "truncate"
    assert params["api_key"] == {"type": "env_var", "env_vars": ["RAGPRESS_API_KEY"], "strict": False}
    assert "from-the-environment" not in json.dumps(data)  # the key is saved by name, never by value
    again = RagpressDocumentCompressor.from_dict(data)
    assert again.to_dict() == data and isinstance(again.api_key, Secret) and again.compressor is None
    with pytest.raises(ServiceUnavailableError):
        again.run(documents=[Document(content="Some text.")], query="q")
    with pytest.raises(ValueError):  # Haystack refuses to save a key given by value
        RagpressDocumentCompressor(endpoint=endpoint, api_key=Secret.from_token("k")).to_dict()
