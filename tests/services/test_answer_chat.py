"""The reader stage over HTTP on the session's real Ray cluster: ``/v1/answer`` (compress -> read
with SmolLM2 on CPU, JSON and server-sent events) and the OpenAI-compatible
``/v1/chat/completions`` (official ``openai`` SDK, documents compressed, everything else byte for
byte, fail-open, OpenAI-style errors); the ``openai`` reader through ragpress itself; and a second
application whose reader is an upstream that fails, answers nothing or is too slow (a real
loopback HTTP server) -> typed 502 / 504, never a 500 or a hang."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.redis]

QUERY = "Which module creates temporary files?"
PASSAGES = [
    {"id": "a", "title": "tempfile", "text": "The tempfile module creates temporary files and directories. "
                                             "NamedTemporaryFile is deleted when closed. Cats sleep a lot."},
    {"id": "b", "text": "mkstemp returns an OS-level handle and an absolute path. The Eiffel tower is in Paris."},
]
DOCS_TEXT = ("<document id=\"a\" title=\"tempfile\">The tempfile module creates temporary files and directories. "
             "Cats sleep for most of the day. Bananas are yellow.</document>\n"
             "<document id=\"b\">mkstemp returns an OS-level handle and an absolute path. "
             "The Eiffel tower is in Paris. Rome is in Italy.</document>")


def _sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# ---------------------------------------------------------------------------- /v1/answer
def test_answer_from_passages_with_stage_breakdown(service):
    r = service.post("/v1/answer", json={"query": QUERY, "passages": PASSAGES, "budget": {"ratio": 0.5},
                                         "max_new_tokens": 8})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"] and out["answer"] == out["reader"]["text"] and not out["reader"]["empty"]
    assert out["reader"]["reader"] == "local" and "SmolLM2" in out["reader"]["model_id"]
    assert 1 <= out["reader"]["tokens_out"] <= 8 and out["hits"] == []
    st = out["stages"]
    assert set(st) == {"compress", "read"}  # passages given: no retrieval
    assert st["compress"]["tokens_in"] == out["context"]["tokens_before"] > st["compress"]["tokens_out"]
    assert st["read"]["tokens_in"] == out["reader"]["tokens_in"] and st["read"]["ms"] > 0
    assert out["context"]["ratio"] < 1


def test_bypass_reads_the_full_context(service):
    r = service.post("/v1/answer", json={"query": QUERY, "passages": PASSAGES, "bypass": True, "read": False})
    assert r.status_code == 200, r.text
    out = r.json()
    ctx = out["context"]
    assert ctx["method"] == "none" and ctx["ratio"] == 1.0 and ctx["tokens_before"] == ctx["tokens_after"]
    assert ctx["text"] == "tempfile\n" + PASSAGES[0]["text"] + "\n\n" + PASSAGES[1]["text"]
    assert out["answer"] is None and out["stages"]["compress"]["tokens_out"] == ctx["tokens_before"]


def test_stream_deltas_spell_the_final_answer(service):
    with service.stream("POST", "/v1/answer", json={"query": QUERY, "passages": PASSAGES, "stream": True,
                                                     "budget": {"ratio": 0.5}, "max_new_tokens": 8}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[0] == "context" and kinds[-1] == "answer" and set(kinds[1:-1]) <= {"delta"}
    assert events[0][1]["tokens_after"] < events[0][1]["tokens_before"]
    final = events[-1][1]
    assert final["answer"] and "".join(d["text"] for k, d in events if k == "delta") == final["answer"]
    assert final["stages"]["read"]["tokens_out"] == final["reader"]["tokens_out"]


def test_too_long_context_without_truncation_is_422(service):
    long = [{"id": "long", "text": "The tempfile module creates temporary files. " * 200}]  # > 1024 tokens
    for stream in (False, True):
        r = service.post("/v1/answer", json={"query": QUERY, "passages": long, "bypass": True, "truncate": False,
                                             "stream": stream, "max_new_tokens": 4})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "context_too_long"
    # allowed to cut (the default): answered, and the cut is reported
    r = service.post("/v1/answer", json={"query": QUERY, "passages": long, "bypass": True, "max_new_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["reader"]["context_tokens_cut"] > 0


# ---------------------------------------------------------------------------- chat completions
@pytest.fixture(scope="module")
def client(service, ray_cluster):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{ray_cluster}/v1", api_key="x", max_retries=0, timeout=120)


def test_openai_sdk_chat_with_documents(client):
    resp = client.chat.completions.create(
        model="ragpress", max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUERY}],
        extra_body={"documents": [p["text"] for p in PASSAGES],
                    "compression": {"method": "embed-sentences", "budget": {"ratio": 0.5}}})
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.model == "ragpress"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    info = resp.model_extra["ragpress"]
    assert info["compressed"] and info["documents_source"] == "documents" and info["documents"] == 2
    assert info["tokens_after"] < info["tokens_before"]
    u = resp.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 1 <= u.completion_tokens <= 8
    assert u.model_extra["prompt_tokens_before_compression"] > u.prompt_tokens


def test_openai_sdk_streaming(client):
    stream = client.chat.completions.create(
        model="ragpress", max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"<documents>\n{DOCS_TEXT}\n</documents>\n\n{QUERY}"}],
        extra_body={"compression": {"budget": {"ratio": 0.5}}})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and text.strip() == text and text
    assert finals[0].model_extra["ragpress"]["documents_source"] == "message"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_only_documents_change_byte_for_byte_and_deterministic(service):
    before, after = "Read these:\n", "\n\nQuestion: " + QUERY + "  \n(answer in one word)"
    messages = [
        {"role": "system", "content": "You are terse.\n\n  Keep   spacing.\t"},
        {"role": "user", "content": "Hi <documents>x</documents>", "name": "u1"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": before + "<documents>\n" + DOCS_TEXT + "\n</documents>" + after},
    ]
    body = {"model": "m", "messages": messages, "max_tokens": 1,
            "compression": {"method": "embed-sentences", "budget": {"ratio": 0.5}, "return_messages": True}}
    first = service.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    info = first.json()["ragpress"]
    sent = info["messages"]
    assert info["compressed"] and info["documents"] == 2 and info["documents_source"] == "message"
    assert sent[:3] == messages[:3]  # every other message, field for field
    last = sent[3]["content"]
    assert last.startswith(before + "<documents>\n") and last.endswith("\n</documents>" + after)
    inside = last[len(before + "<documents>\n"):-len("\n</documents>" + after)]
    assert 0 < len(inside) < len(DOCS_TEXT) and "tempfile" in inside
    second = service.post("/v1/chat/completions", json=body).json()["ragpress"]
    assert second["messages_sha256"] == info["messages_sha256"] and second["messages"] == sent
    # documents given out of band: one block in front of the last user message, which stays as is
    body2 = {"messages": messages[:3] + [{"role": "user", "content": QUERY}], "max_tokens": 1,
             "documents": [{"id": "a", "title": "tempfile", "text": PASSAGES[0]["text"]}],
             "compression": {"bypass": True, "return_messages": True}}
    out = service.post("/v1/chat/completions", json=body2).json()["ragpress"]
    assert out["bypass"] and not out["compressed"] and out["messages"][:3] == messages[:3]
    assert out["messages"][3]["content"] == ("<documents>\ntempfile\n" + PASSAGES[0]["text"] + "\n</documents>\n\n"
                                             + QUERY)


def test_fail_open_when_compression_keeps_nothing(service):
    content = "Context:\n<documents>\n" + DOCS_TEXT + "\n</documents>\n" + QUERY
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1,
            # a budget below the documents' titles: the selector can keep nothing and says why
            "compression": {"method": "embed-sentences", "budget": {"tokens": 1}, "return_messages": True}}
    r = service.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    info = r.json()["ragpress"]
    assert not info["compressed"] and info["fail_open_reason"].startswith("compression kept nothing (the budget")
    assert info["messages"][0]["content"] == content  # the originals went through
    assert 'ragpress_fail_open_total{reason="empty"}' in service.get("/metrics").text


@pytest.mark.parametrize("messages", [
    [], [{"content": "hi"}], [{"role": "wizard", "content": "hi"}], [{"role": "user"}], "hello",
])
def test_malformed_messages_are_openai_style_400(service, messages):
    r = service.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] is None or err["param"].startswith("messages")


def test_chat_errors_via_sdk_and_unknown_fields_tolerated(client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[])
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.UnprocessableEntityError) as e:  # a typed ragpress error keeps its status
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUERY}],
                                       extra_body={"documents": ["x y z"], "compression": {"method": "nope"}})
    assert e.value.body["code"] == "unknown_method"
    resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUERY}], max_tokens=1,
                                          user="someone", logprobs=False,
                                          extra_body={"compression": {"retrieve": False}, "foo": 1})
    assert resp.model_extra["ragpress"]["documents_source"] == "none"


def test_openai_reader_reads_through_ragpress(service, ray_cluster):
    from ragpress.readers import create_reader

    reader = create_reader("openai", {"base_url": f"{ray_cluster}/v1", "model": "ragpress", "max_new_tokens": 8,
                                      "timeout_s": 60, "extra_body": {"compression": {"retrieve": False}}})
    answer = reader.read(QUERY, PASSAGES[0]["text"])
    assert answer.text and answer.reader == "openai" and 1 <= answer.tokens_out <= 8
    assert answer.tokens_in > 20  # the upstream's (ragpress's) own usage count


# ---------------------------------------------------------------------------- a failing upstream
class _Upstream(http.server.BaseHTTPRequestHandler):
    """A real OpenAI-style upstream: "fail" -> 503, "slow" -> sleeps past the reader's timeout,
    "empty" -> an empty answer, otherwise "ok"."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        last = body["messages"][-1]["content"]
        if "fail" in last:
            data = b'{"error": {"message": "overloaded"}}'
            self.send_response(503)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if "slow" in last:
            time.sleep(4)
        text = "" if "empty" in last else "ok"
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        try:
            for event in ({"choices": [{"delta": {"content": text}, "finish_reason": None}]},
                          {"choices": [{"delta": {}, "finish_reason": "stop"}]}):
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        except BrokenPipeError:  # the reader gave up waiting (the slow case)
            pass


@pytest.fixture(scope="module")
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture(scope="module")
def upstream_app(service, ray_cluster, upstream):
    """A second application on the cluster whose reader is the upstream above (1.5 s timeout)."""
    import httpx
    from ray import serve

    from ragpress.services.app import ServiceConfig, build_app

    config = ServiceConfig(compressors=[{"method": "truncate"}], retriever=None,
                           reader={"name": "openai", "config": {"base_url": upstream, "model": "fake", "timeout_s": 1.5,
                                                                "max_retries": 0, "max_new_tokens": 4}})
    serve.run(build_app(config), name="upstream", route_prefix="/up")
    with httpx.Client(base_url=f"{ray_cluster}/up", timeout=60) as client:
        yield client
    serve.delete("upstream")


def test_unreachable_upstream_is_upstream_error():
    from ragpress.core.errors import UpstreamError
    from ragpress.readers import create_reader
    from ragpress.services.redis_server import free_port

    reader = create_reader("openai", {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "x",
                                      "max_retries": 0, "timeout_s": 5})
    t0 = time.perf_counter()
    with pytest.raises(UpstreamError) as e:
        reader.read(QUERY, "ctx")
    assert e.value.http_status == 502 and time.perf_counter() - t0 < 5


def test_slow_upstream_times_out_in_process(upstream):
    from ragpress.core.errors import UpstreamTimeoutError
    from ragpress.readers import create_reader

    reader = create_reader("openai", {"base_url": upstream, "model": "x", "timeout_s": 1.0, "max_retries": 0})
    t0 = time.perf_counter()
    with pytest.raises(UpstreamTimeoutError):
        reader.read("slow " + QUERY, "ctx")
    assert time.perf_counter() - t0 < 3.5


def test_failing_and_slow_upstream_over_http(upstream_app):
    ok = upstream_app.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello"}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"] == "ok"
    r = upstream_app.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "fail"}]})
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_error" and err["upstream_status"] == 503 and err["type"] == "upstream_error"
    r = upstream_app.post("/v1/answer", json={"query": "fail", "passages": ["x y"], "bypass": True})
    assert r.status_code == 502 and r.json()["error"]["upstream_status"] == 503
    t0 = time.perf_counter()
    r = upstream_app.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "slow"}],
                                                         "stream": True})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout" and time.perf_counter() - t0 < 10


def test_empty_answer_is_flagged_and_counted(upstream_app):
    r = upstream_app.post("/v1/answer", json={"query": "empty", "passages": ["x y"], "bypass": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"] == "" and out["reader"]["empty"]
    assert 'ragpress_reader_empty_answers_total{route="/v1/answer"} 1.0' in upstream_app.get("/metrics").text
