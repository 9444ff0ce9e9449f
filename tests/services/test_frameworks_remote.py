"""The LlamaIndex and Haystack components in remote mode, against the session's real service (Ray
cluster + Redis): the same output as in process, sync and async, and the service's errors typed.
(LangChain's remote mode: test_langchain_remote.py.)"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from ragpress.core.errors import UnknownCompressorError, UnsupportedBudgetError

pytestmark = [pytest.mark.ray, pytest.mark.redis]

QUERY = "How do I create a temporary file?"


def _texts(tag: str) -> list[tuple[str, str]]:
    return [("a", "The tempfile module creates temporary files. NamedTemporaryFile is deleted when closed. Cats "
                  f"sleep for most of the day. Run {tag}."),
            ("b", f"mkstemp returns an OS-level handle and an absolute path. The Eiffel tower is in Paris. Run {tag}.")]


@pytest.fixture(scope="module")
def endpoint(service) -> str:
    return str(service.base_url).rstrip("/")


def test_llamaindex_remote_matches_in_process(endpoint, embedder):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from ragpress.integrations.llamaindex import RagpressNodePostprocessor

    nodes = [NodeWithScore(node=TextNode(id_=i, text=t, metadata={"source": f"{i}.md"}), score=s)
             for (i, t), s in zip(_texts(uuid.uuid4().hex), (0.9, 0.4))]
    remote = RagpressNodePostprocessor(endpoint=endpoint, method="embed-sentences", ratio=0.5)
    assert remote.compressor is None
    local = RagpressNodePostprocessor(method="embed-sentences", ratio=0.5).postprocess_nodes(nodes, query_str=QUERY)
    out = remote.postprocess_nodes(nodes, query_str=QUERY)
    assert [(n.node.node_id, n.node.get_content(), n.score) for n in out] == \
        [(n.node.node_id, n.node.get_content(), n.score) for n in local]
    assert all(n.node.metadata["source"] and n.node.metadata["ragpress"]["compressor"] == "embed-sentences"
               for n in out)
    again = asyncio.run(remote.apostprocess_nodes(nodes, QueryBundle(QUERY)))
    assert [n.node.get_content() for n in again] == [n.node.get_content() for n in out]
    assert again[0].node.metadata["ragpress"]["cache_hit"]  # the service's Redis cache answered
    with pytest.raises(UnknownCompressorError):
        RagpressNodePostprocessor(endpoint=endpoint, method="no-such-method").postprocess_nodes(nodes, query_str=QUERY)


def test_haystack_remote_matches_in_process(endpoint, embedder):
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    pytest.importorskip("haystack")
    from haystack import Document

    from ragpress.integrations.haystack import RagpressDocumentCompressor

    docs = [Document(id=i, content=t, meta={"source": f"{i}.md"}, score=s)
            for (i, t), s in zip(_texts(uuid.uuid4().hex), (0.9, 0.4))]
    remote = RagpressDocumentCompressor(endpoint=endpoint, method="embed-sentences", ratio=0.5)
    local = RagpressDocumentCompressor(method="embed-sentences", ratio=0.5).run(documents=docs, query=QUERY)
    out = remote.run(documents=docs, query=QUERY)["documents"]
    assert [(d.id, d.content, d.score) for d in out] == [(d.id, d.content, d.score) for d in local["documents"]]
    again = asyncio.run(remote.run_async(documents=docs, query=QUERY))["documents"]
    assert [d.content for d in again] == [d.content for d in out] and again[0].meta["ragpress"]["cache_hit"]
    loaded = RagpressDocumentCompressor.from_dict(remote.to_dict())  # a saved pipeline's component
    assert [d.content for d in loaded.run(documents=docs, query=QUERY)["documents"]] == [d.content for d in out]
    with pytest.raises(UnsupportedBudgetError):
        RagpressDocumentCompressor(endpoint=endpoint, method="truncate", threshold=0.5).run(documents=docs, query=QUERY)
