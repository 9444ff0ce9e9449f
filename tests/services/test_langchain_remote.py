"""The LangChain components and ragpress.client in remote mode, against the real running service
(the session's Ray cluster + Redis): the same documents as in process, sync and async, typed
errors, timeouts, an unreachable service."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from langchain_core.documents import Document

from ragpress.client import (
    AsyncRagpressClient,
    AuthenticationError,
    RagpressClient,
    RateLimitedError,
    ServiceTimeoutError,
    ServiceUnavailableError,
)
from ragpress.core.errors import (
    EmptyQueryError,
    InvalidRequestError,
    UnknownCompressorError,
    UnsupportedBudgetError,
)
from ragpress.integrations.langchain import RagpressCompressor, RagpressRetriever
from ragpress.pipelines.sample import SAMPLE_QUESTION

pytestmark = [pytest.mark.ray, pytest.mark.redis]

QUERY = "How do I create a temporary file?"


def _docs(tag: str = "") -> list[Document]:
    return [
        Document(page_content="The tempfile module creates temporary files. NamedTemporaryFile is deleted when "
                              f"closed. Cats sleep for most of the day.{tag}", id="a",
                 metadata={"title": "tempfile", "source": "docs/tempfile.md"}),
        Document(page_content="mkstemp returns an OS-level handle and an absolute path. The Eiffel tower is in "
                              f"Paris. Paris has many bridges.{tag}", id="b", metadata={"source": "docs/os.md"}),
    ]


@pytest.fixture(scope="module")
def endpoint(service) -> str:
    return str(service.base_url).rstrip("/")


def test_remote_compressor_matches_in_process_sync_and_async(endpoint, embedder):
    docs = _docs(f" Run {uuid.uuid4().hex}.")
    remote = RagpressCompressor(endpoint=endpoint, method="embed-sentences", ratio=0.5, timeout=60)
    assert remote.compressor is None  # no model in this component
    local = RagpressCompressor(method="embed-sentences", ratio=0.5).compress_documents(docs, QUERY)
    out = remote.compress_documents(docs, QUERY)
    assert [(d.id, d.page_content) for d in out] == [(d.id, d.page_content) for d in local]
    for d in out:
        src = next(s for s in docs if s.id == d.id)
        assert d.metadata["source"] == src.metadata["source"]  # its own metadata, plus the figures
        fig = d.metadata["ragpress"]
        assert fig["compressor"] == "embed-sentences" and 0 < fig["tokens_after"] < fig["tokens_before"]
        assert all(src.page_content[s["start"]:s["end"]].strip() in d.page_content for s in fig["spans"])
    again = asyncio.run(remote.acompress_documents(docs, QUERY))
    assert [(d.id, d.page_content) for d in again] == [(d.id, d.page_content) for d in out]
    assert again[0].metadata["ragpress"]["cache_hit"]  # the service's Redis segment cache answered


def test_remote_retriever_returns_top_k_like_in_process(endpoint, embedder):
    from ragpress.indexes import VectorIndex
    from ragpress.pipelines.sample import ensure_sample_index

    remote = RagpressRetriever(endpoint=endpoint, top_k=3,
                               compressor=RagpressCompressor(endpoint=endpoint, method="embed-sentences", ratio=0.3))
    local = RagpressRetriever(index=VectorIndex.load(ensure_sample_index(show_progress=False)), top_k=3,
                              compressor=RagpressCompressor(method="embed-sentences", ratio=0.3))
    want = [(d.id, d.page_content) for d in local.invoke(SAMPLE_QUESTION)]
    assert len(want) == 3
    assert [(d.id, d.page_content) for d in remote.invoke(SAMPLE_QUESTION)] == want
    two = asyncio.run(remote.ainvoke(SAMPLE_QUESTION, top_k=2))
    assert [(d.id, d.page_content) for d in two] == want[:2]
    assert all(d.metadata["title"] and d.metadata["rank"] == i for i, d in enumerate(two))
    # the default compressor of a remote retriever is the service's default method, remotely
    default = RagpressRetriever(endpoint=endpoint, top_k=1).invoke(SAMPLE_QUESTION)
    assert len(default) == 1 and default[0].metadata["ragpress"]["compressor"] == "embed-sentences"


def test_service_errors_come_back_typed(endpoint):
    docs = _docs()
    with pytest.raises(UnknownCompressorError) as info:
        RagpressCompressor(endpoint=endpoint, method="no-such-method").compress_documents(docs, QUERY)
    assert "truncate" in info.value.available
    with pytest.raises(UnsupportedBudgetError):
        RagpressCompressor(endpoint=endpoint, method="truncate", threshold=0.5).compress_documents(docs, QUERY)
    with pytest.raises(EmptyQueryError):
        asyncio.run(RagpressCompressor(endpoint=endpoint, method="embed-sentences").acompress_documents(docs, " "))
    with RagpressClient(endpoint) as client:
        with pytest.raises(InvalidRequestError):  # the schema's 422
            client.retrieve(QUERY, k=10_000)
        answer = client.answer(QUERY, [d.page_content for d in docs], read=False, budget={"ratio": 0.5})
        assert answer.answer is None and 0 < answer.context.tokens_after < answer.context.tokens_before


def test_timeouts_and_an_unreachable_service_are_typed(endpoint):
    from ragpress.services.redis_server import free_port

    # fresh text (no cache hit): ~50 sentences to embed behind the Serve proxy, in 5 ms? never
    big = [f"Passage {i} {uuid.uuid4().hex}. " + "Temporary files are created by tempfile. " * 5 for i in range(10)]
    with pytest.raises(ServiceTimeoutError) as info:
        RagpressClient(endpoint, timeout=0.005).compress(QUERY, big, ratio=0.3, method="embed-sentences")
    assert isinstance(info.value, TimeoutError)

    async def slow():
        async with AsyncRagpressClient(endpoint, timeout=0.005) as client:
            await client.compress(QUERY, big, ratio=0.3, method="embed-sentences")

    with pytest.raises(ServiceTimeoutError):
        asyncio.run(slow())
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailableError):
        RagpressRetriever(endpoint=nobody, timeout=5).invoke(QUERY)
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(RagpressCompressor(endpoint=nobody, timeout=5).acompress_documents(_docs(), QUERY))


KEY, RETRIEVE_ONLY, LIMITED = "lc-full-key", "lc-retrieve-key", "lc-limited-key"


@pytest.fixture(scope="module")
def keyed_endpoint(ray_cluster):
    """A second, small application with API keys on (truncate only), under its own prefix."""
    from ray import serve

    from ragpress.services.app import CompressorStage, ServiceConfig, build_app
    from ragpress.services.auth import hash_key

    small = {"num_cpus": 0.1}
    config = ServiceConfig(
        compressors=[CompressorStage(method="truncate", deployment={"ray_actor_options": small})],
        retriever=None, reader=None, cache={"url": "none://"}, ingress={"ray_actor_options": small},
        auth={"keys": [{"name": "full", "sha256": hash_key(KEY)},
                       {"name": "retrieve-only", "sha256": hash_key(RETRIEVE_ONLY), "scopes": ["retrieve"]},
                       {"name": "limited", "sha256": hash_key(LIMITED),
                        "rate_limit": {"requests_per_s": 0.1, "burst": 1}}],
              "keys_env": None})
    serve.run(build_app(config), name="lc-keys", route_prefix="/lc-keys")
    yield ray_cluster + "/lc-keys"
    serve.delete("lc-keys", _blocking=False)  # the replicas stop in the background


def test_api_key_is_sent_and_auth_errors_are_typed(keyed_endpoint, monkeypatch):
    docs = _docs()
    out = RagpressCompressor(endpoint=keyed_endpoint, method="truncate", ratio=0.5,
                             api_key=KEY).compress_documents(docs, QUERY)
    assert out and out[0].metadata["ragpress"]["compressor"] == "truncate"
    monkeypatch.delenv("RAGPRESS_API_KEY", raising=False)
    with pytest.raises(AuthenticationError) as info:
        RagpressCompressor(endpoint=keyed_endpoint, method="truncate").compress_documents(docs, QUERY)
    assert info.value.status == 401 and info.value.code == "missing_api_key"
    monkeypatch.setenv("RAGPRESS_API_KEY", KEY)  # the default key
    assert asyncio.run(RagpressCompressor(endpoint=keyed_endpoint, method="truncate", ratio=0.5)
                       .acompress_documents(docs, QUERY))
    with pytest.raises(AuthenticationError) as info:
        RagpressClient(keyed_endpoint, api_key=RETRIEVE_ONLY).compress(QUERY, ["Acme sells anvils."], ratio=0.5)
    assert info.value.status == 403
    limited = RagpressClient(keyed_endpoint, api_key=LIMITED)
    limited.compress(QUERY, ["Acme sells anvils."], ratio=0.5)  # the burst of one
    with pytest.raises(RateLimitedError) as info:
        limited.compress(QUERY, ["Acme sells anvils."], ratio=0.5)
    assert info.value.status == 429 and info.value.retry_after and info.value.retry_after > 0
