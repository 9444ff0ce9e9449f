"""The service over HTTP on a real local Ray cluster with a real Redis (one start per session)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import uuid

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.redis]

QUERY = "How do I create a temporary file?"
PASSAGES = [
    {"id": "a", "title": "tempfile", "text": "The tempfile module creates temporary files. NamedTemporaryFile is deleted "
                                             "when closed. Cats sleep for most of the day."},
    {"id": "b", "text": "mkstemp returns an OS-level handle and an absolute path. The Eiffel tower is in Paris."},
]


def _body(**kw):
    return {"query": QUERY, "passages": PASSAGES, "budget": {"ratio": 0.5}, **kw}


def test_health_ready_and_methods(service):
    assert service.get("/healthz").json() == {"status": "ok"}
    ready = service.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["stages"]["retriever"]["loaded"] and body["stages"]["retriever"]["passages"] > 100
    assert body["stages"]["compressor:embed-sentences"]["cache"]["kind"] == "redis"
    methods = service.get("/v1/methods").json()
    assert methods["default"] == "embed-sentences"
    assert {m["name"] for m in methods["methods"]} == {"embed-sentences", "truncate"}


def test_compress_spans_map_to_source_and_cache_hits(service):
    body = _body(passages=[{**p, "text": p["text"] + f" Run {uuid.uuid4().hex}."} for p in PASSAGES])
    first = service.post("/v1/compress", json=body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["method"] == "embed-sentences" and not out["cache"]["hit"]
    assert 0 < out["tokens_after"] < out["tokens_before"]
    assert out["ratio"] == pytest.approx(out["tokens_after"] / out["tokens_before"])
    texts = {p["id"]: p["text"] for p in body["passages"]}
    assert out["spans"], "kept spans must be reported"
    for s in out["spans"]:
        assert texts[s["passage_id"]][s["start"]:s["end"]] == s["text"]
    assert "tempfile" in out["text"] or "mkstemp" in out["text"]
    second = service.post("/v1/compress", json=body).json()
    assert second["cache"]["hit"] and second["cache_hits"] == 1
    assert second["text"] == out["text"] and second["spans"] == out["spans"]
    # query-aware method: another query is another key
    third = service.post("/v1/compress", json={**body, "query": "Where is the Eiffel tower?"}).json()
    assert not third["cache"]["hit"]
    assert "Eiffel" in third["text"]


def test_code_input_and_query_blind_method(service):
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n" * 3
    r = service.post("/v1/compress", json={"instruction": "complete sub", "code": code, "method": "truncate",
                                           "budget": {"tokens": 10}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["method"] == "truncate" and out["tokens_after"] <= 10
    assert code.startswith(out["text"]) and out["spans"][0]["passage_id"] == "code"


def test_retrieve_and_answer(service):
    r = service.post("/v1/retrieve", json={"query": QUERY, "k": 3})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    assert any("temp" in h["text"].lower() for h in hits)
    a = service.post("/v1/answer", json={"query": QUERY, "k": 4, "budget": {"ratio": 0.3}})
    assert a.status_code == 200, a.text
    ans = a.json()
    assert isinstance(ans["answer"], str) and len(ans["hits"]) == 4  # the session service has a reader
    assert ans["tokens_saved"] == ans["context"]["tokens_before"] - ans["context"]["tokens_after"] > 0
    ids = {h["id"] for h in ans["hits"]}
    assert {s["passage_id"] for s in ans["context"]["spans"]} <= ids


BAD_REQUESTS = [
    ("malformed json", b"{not json", 400, "malformed_json"),
    ("wrong type", json.dumps({"passages": 3}).encode(), 422, "invalid_request"),
    ("empty passages list", json.dumps({"query": "q", "passages": []}).encode(), 422, "invalid_request"),
    ("empty passage text", json.dumps({"query": "q", "passages": [""]}).encode(), 422, "invalid_request"),
    ("whitespace passage", json.dumps({"query": "q", "passages": ["   "]}).encode(), 422, "empty_passage"),
    ("empty query, query-aware", json.dumps({"passages": ["text"]}).encode(), 422, "empty_query"),
    ("unknown method", json.dumps({"query": "q", "passages": ["t"], "method": "nope"}).encode(), 422, "unknown_method"),
    ("ratio out of range", json.dumps({"query": "q", "passages": ["t"], "budget": {"ratio": 1.5}}).encode(), 422,
     "invalid_request"),
    ("negative tokens", json.dumps({"query": "q", "passages": ["t"], "budget": {"tokens": -3}}).encode(), 422,
     "invalid_request"),
    ("two budget modes", json.dumps({"query": "q", "passages": ["t"], "budget": {"ratio": 0.5, "tokens": 3}}).encode(),
     422, "invalid_request"),
    ("unsupported mode", json.dumps({"query": "q", "passages": ["t"], "method": "truncate",
                                     "budget": {"threshold": 0.5}}).encode(), 422, "unsupported_budget_mode"),
    ("both passages and code", json.dumps({"query": "q", "passages": ["t"], "code": "x=1"}).encode(), 422,
     "invalid_request"),
    ("extra field", json.dumps({"query": "q", "passages": ["t"], "bogus": 1}).encode(), 422, "invalid_request"),
    ("lone surrogate", b'{"query": "q", "passages": ["\\ud800"]}', 422, "invalid_request"),
]


@pytest.mark.parametrize("name,raw,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_typed_4xx(service, name, raw, status, code):
    r = service.post("/v1/compress", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if code == "unknown_method":
        assert err["available"] == ["embed-sentences", "truncate"]


def test_limits_and_unknown_routes(service):
    big = service.post("/v1/compress", json={"query": "q", "passages": ["word " * 120_000]})
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"

    def chunks():  # chunked upload without Content-Length
        yield b'{"query": "q", "passages": ["'
        for _ in range(200):
            yield b"x" * 4096
        yield b'"]}'

    chunked = service.post("/v1/compress", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert service.get("/v1/nothing").status_code == 404
    assert service.get("/v1/compress").status_code == 405
    bad_k = service.post("/v1/retrieve", json={"query": "q", "k": 0})
    assert bad_k.status_code == 422
    assert service.post("/v1/answer", json={"query": "  ", "k": 2}).status_code == 422


def test_metrics_exposes_requests_latency_tokens_and_cache(service):
    service.post("/v1/compress", json=_body())
    service.post("/v1/compress", json=_body())
    text = service.get("/metrics").text
    for name in ("ragpress_requests_total", "ragpress_stage_latency_seconds_bucket", "ragpress_tokens_in_total",
                 "ragpress_tokens_out_total", "ragpress_cache_hits_total", "ragpress_cache_hit_ratio"):
        assert name in text, name
    assert 'route="/v1/compress",status="200"' in text


def _redeploy_with_user_config(config, user_config):
    from ray import serve

    from ragpress.services.app import build_app

    stages = [c.model_copy(update={"deployment": {"user_config": user_config}}) if c.method == "embed-sentences" else c
              for c in config.compressors]
    serve.run(build_app(config.model_copy(update={"compressors": stages})), name="ragpress", route_prefix="/")


def test_live_reconfigure_through_user_config(service, service_config):
    """A user_config change reaches the running replica's reconfigure(): no restart, new config hash."""
    before = service.post("/v1/compress", json=_body()).json()
    _redeploy_with_user_config(service_config, {"config": {"batch_size": 16}, "max_batch_size": 4})
    after = service.post("/v1/compress", json=_body()).json()
    assert after["config_hash"] != before["config_hash"] and not after["cache"]["hit"]
    _redeploy_with_user_config(service_config, {"config": {}})
    again = service.post("/v1/compress", json=_body()).json()
    assert again["config_hash"] != after["config_hash"]


def test_redis_stopped_mid_load_every_request_answered(service, redis_server):
    """Stop Redis while 8 clients send requests: all answered 200, /readyz says degraded;
    start it again: the cache is used again (a repeat request is a hit)."""

    def call(i: int) -> int:
        body = _body(passages=[{"id": "x", "text": f"Temporary files, request {i % 10}. Bananas are yellow."}])
        return service.post("/v1/compress", json=body).status_code

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(40)]
        redis_server.stop()
        futures += [pool.submit(call, i) for i in range(40, 80)]
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 80
    ready = service.get("/readyz").json()
    assert ready["status"] == "degraded"
    metrics = service.get("/metrics").text
    assert "ragpress_cache_degraded_requests_total" in metrics

    redis_server.start()
    body = _body(passages=[{"id": "y", "text": f"Back again {uuid.uuid4().hex}. Temporary files are handy."}])
    import time

    deadline = time.monotonic() + 10
    while service.get("/readyz").json()["status"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert service.get("/readyz").json()["status"] == "ready"
    service.post("/v1/compress", json=body)
    assert service.post("/v1/compress", json=body).json()["cache"]["hit"]
