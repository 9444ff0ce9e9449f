"""ARC-Encoder soft tokens through the real HTTP service: an application with the ``Encoder``
deployment (arc, SmolLM2 blocks) and the local reader on the session's Ray cluster, its cache in
the session's Redis. ``/v1/compress`` returns the library's own fp16 vectors bit for bit (base64),
``/v1/answer`` and the chat endpoint feed them to the reader server-side (the answer is the one
the in-process reader writes from the same vectors), and a reader the vectors were not made for
is a typed 422, never an answer."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.redis]

APP, PREFIX = "arc", "/arc"
# One intra-op thread in the replicas and for the in-process reference: a CPU GEMM's float32 sums
# depend on how it splits the work (measured: 4 fp16 values of 12x576 differ between 1 and 2
# threads), and the comparison is about the service, not the BLAS.
SMALL = {"num_cpus": 0.1, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}}
QUERY = "Which module creates temporary files?"
PASSAGES = [
    {"id": "a", "title": "tempfile", "text": "The tempfile module creates temporary files and directories. "
                                             "NamedTemporaryFile returns a file-like object deleted when closed."},
    {"id": "b", "text": "mkstemp returns an OS-level handle and an absolute path. The Eiffel tower is in Paris."},
]
READER = {"max_new_tokens": 8, "context_window": 1024}


def _config(redis_url: str, reader: dict):
    from ragpress.services.app import EncoderStage, ServiceConfig

    return ServiceConfig(
        compressors=[], encoder=EncoderStage(method="arc", deployment={"ray_actor_options": SMALL}),
        retriever=None, reader={**reader, "deployment": {"ray_actor_options": SMALL}},
        cache={"url": redis_url, "key_prefix": "arc-test:"}, ingress={"ray_actor_options": SMALL},
        limits={"timeout_s": 100, "max_new_tokens": 12})


def _deploy(config) -> None:
    from ray import serve

    from ragpress.services.app import build_app

    serve.run(build_app(config), name=APP, route_prefix=PREFIX)


@pytest.fixture(scope="module")
def arc_app(ray_cluster, redis_server):
    """The arc application (encoder + local SmolLM2 reader, 0.1 CPU per replica)."""
    import httpx
    from ray import serve

    _deploy(_config(redis_server.url, {"name": "local", "config": READER}))
    with httpx.Client(base_url=ray_cluster + PREFIX, timeout=120) as client:
        yield client
    serve.delete(APP)


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def library(one_thread):
    """The library's own result for the same passages (in process, no cache)."""
    from ragpress.core.registry import create_compressor
    from ragpress.core.types import Budget, CompressionRequest, Passage

    request = CompressionRequest(query=QUERY, passages=[Passage(**p) for p in PASSAGES], budget=Budget(ratio=0.25))
    return create_compressor("arc").compress(request)


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float16).view(np.uint16)


def test_compress_returns_the_library_soft_tokens_bit_exactly(arc_app, library):
    from ragpress.client import RagpressClient

    body = {"query": QUERY, "passages": PASSAGES, "method": "arc", "budget": {"ratio": 0.25}}
    first = arc_app.post("/v1/compress", json=body)
    assert first.status_code == 200, first.text
    again = arc_app.post("/v1/compress", json=body).json()
    assert again["cache"]["hit"]  # the second one is served from Redis
    ours = library.soft_tokens.numpy()
    for out in (first.json(), again):
        soft = out["soft_tokens"]
        assert out["text"] == "" and soft["dtype"] == "float16" and soft["reader"] == "SmolLM2-135M-Instruct"
        arr = np.frombuffer(base64.b64decode(soft["data"]), dtype="<f2").reshape(soft["shape"])
        assert list(arr.shape) == soft["shape"] == out["soft_token_shape"] == list(ours.shape)
        assert np.array_equal(_bits(arr), _bits(ours))  # fp16, bit for bit
        assert soft["pooling_factor"] == 4 and out["tokens_after"] == arr.shape[0]
        vs = soft["vector_spans"]  # one per vector; None for each segment's <Cont>
        assert len(vs) == arr.shape[0] and vs.count(None) == 2
        assert [i for i in vs if i is not None] == list(range(len(out["spans"])))
        assert [s["passage_id"] for s in out["spans"]] == [s.passage_id for s in library.spans]
    shape_only = arc_app.post("/v1/compress", json={**body, "soft_tokens": "shape"}).json()
    assert shape_only["soft_tokens"]["data"] is None and shape_only["soft_tokens"]["shape"] == list(ours.shape)
    with RagpressClient(str(arc_app.base_url)) as client:
        remote = client.compress(QUERY, PASSAGES, ratio=0.25, method="arc")
    assert remote.soft_tokens.dtype.is_floating_point and np.array_equal(_bits(remote.soft_tokens.numpy()), _bits(ours))
    assert remote.extra["soft_reader"] == "SmolLM2-135M-Instruct" and remote.soft_token_shape == list(ours.shape)
    schema = arc_app.get("/openapi.json").json()["components"]["schemas"]["SoftTokensOut"]["properties"]
    assert {"data", "shape", "dtype", "reader", "vector_spans"} <= set(schema)


def test_answer_and_chat_read_the_soft_tokens(arc_app, library):
    from ragpress.readers import SoftContext, create_reader

    reader = create_reader("local", READER)  # the same model in process, from the same vectors
    soft = SoftContext(embeds=library.soft_tokens, reader="SmolLM2-135M-Instruct")
    prompt = reader.prepare([QUERY], [soft])[0]
    want = reader.generate_batch([prompt])[0]
    n = library.soft_tokens.shape[0]
    r = arc_app.post("/v1/answer", json={"query": QUERY, "passages": PASSAGES, "method": "arc",
                                         "budget": {"ratio": 0.25}})
    assert r.status_code == 200, r.text
    out = r.json()
    ctx = out["context"]
    assert ctx["soft_tokens"]["shape"][0] == n and ctx["soft_tokens"]["data"] is None  # no payload in answers
    assert out["reader"]["tokens_in"] == reader.prompt_tokens(prompt)  # text of the prompt + n soft vectors
    assert out["reader"]["tokens_in"] > n and out["answer"] == want.text and out["answer"].strip()
    assert out["stages"]["compress"]["tokens_out"] == n
    with arc_app.stream("POST", "/v1/answer", json={"query": QUERY, "passages": PASSAGES, "method": "arc",
                                                     "budget": {"ratio": 0.25}, "stream": True}) as s:
        events = [b for b in s.read().decode().strip().split("\n\n")]
    assert s.status_code == 200 and events[-1].startswith("event: answer")
    assert json.loads(events[-1].split("data: ", 1)[1])["answer"] == want.text
    r = arc_app.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": QUERY}], "documents": PASSAGES, "max_tokens": 8,
        "compression": {"method": "arc", "budget": {"ratio": 0.25}, "return_messages": True}})
    assert r.status_code == 200, r.text
    chat = r.json()
    info = chat["ragpress"]
    assert info["compressed"] and info["method"] == "arc" and info["soft_tokens"] == n
    assert "tempfile" not in json.dumps(info["messages"])  # the documents reached the reader as vectors only
    assert chat["usage"]["prompt_tokens"] < chat["usage"]["prompt_tokens_before_compression"]
    assert chat["choices"][0]["message"]["content"].strip()


def test_a_reader_the_vectors_were_not_made_for_is_a_typed_422(arc_app, redis_server):
    """(A text-only reader, e.g. an OpenAI upstream, fails the same check_soft with a 422
    soft_tokens_unsupported: tests/test_readers.py.)"""
    from ragpress.core.models import smollm2_path

    body = {"query": QUERY, "passages": PASSAGES, "method": "arc", "budget": {"ratio": 0.25}}
    chat = {"messages": [{"role": "user", "content": QUERY}], "documents": PASSAGES,
            "compression": {"method": "arc", "budget": {"ratio": 0.25}}}
    # the same weights under another model id: a reader the encoder was not trained for
    _deploy(_config(redis_server.url, {"name": "local", "config": {**READER, "model": str(smollm2_path())}}))
    for stream in (False, True):
        r = arc_app.post("/v1/answer", json={**body, "stream": stream})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "reader_mismatch" and "SmolLM2-135M-Instruct" in err["message"]
    r = arc_app.post("/v1/chat/completions", json=chat)
    assert r.status_code == 422 and r.json()["error"]["code"] == "reader_mismatch"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert arc_app.post("/v1/answer", json={**body, "read": False}).status_code == 200  # compression alone is fine
