"""The service under faults and overload, for real: a stage's only replica is SIGKILLed while
four clients send requests (none may fail: the ingress sends each lost call again, and a
single-replica stage's calls wait, bounded, for the replacement), and more requests than an
ingress or a stage holds are shed with a typed 503 and ``Retry-After`` at once (never a
timeout, never another error)."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.ray

QUERY = "Which river flows through the capital?"
PASSAGES = [{"id": "a", "text": "The capital lies on the river Vella. The river Vella floods in spring. "
                                "Bridges cross it at nine points. The old town sits on its west bank."},
            {"id": "b", "text": "Its harbour trades grain and timber. The harbour was dredged in 1921. "
                                "Ferries leave twice a day for the islands."}]


def _replica_pids(app: str, deployment: str) -> list[int]:
    """Live replica processes of a deployment (Ray titles them ``ray::ServeReplica:APP:NAME``)."""
    import psutil

    title = f"ServeReplica:{app}:{deployment}"
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if title in " ".join(p.info["cmdline"] or ()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


def _deploy(name: str, prefix: str, **config):
    from ray import serve

    from ragpress.services.app import ServiceConfig, build_app

    serve.run(build_app(ServiceConfig.model_validate(config)), name=name, route_prefix=prefix)


def _drive(url: str, path: str, body_of, clients: int, until: threading.Event, timeout: float = 120):
    """``clients`` threads sending requests one after another until ``until`` is set; every
    (status, body, seconds) is returned."""
    out: list = []

    def client(c: int) -> None:
        with httpx.Client(timeout=timeout) as http:
            i = 0
            while not until.is_set():
                t0 = time.monotonic()
                try:
                    r = http.post(url + path, json=body_of(c, i))
                    out.append((r.status_code, r.json(), time.monotonic() - t0))
                except httpx.HTTPError as exc:
                    out.append((type(exc).__name__, None, time.monotonic() - t0))
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    return out, threads


def _kill_under_load(url: str, path: str, body_of, app: str, deployment: str, clients: int = 4) -> tuple[list, float]:
    """Drive the load, SIGKILL the deployment's replica once requests flow, keep the load on
    until a replacement answered some; returns every result and the replacement's start time."""
    (old,) = _replica_pids(app, deployment)
    until = threading.Event()
    results, threads = _drive(url, path, body_of, clients, until)
    try:
        deadline = time.monotonic() + 120
        while sum(r[0] == 200 for r in results) < clients and time.monotonic() < deadline:
            time.sleep(0.1)
        n_before = len(results)
        os.kill(old, signal.SIGKILL)
        t_kill = time.monotonic()
        replacement = None
        while time.monotonic() < deadline + 120:
            pids = [p for p in _replica_pids(app, deployment) if p != old]
            if pids and replacement is None:
                replacement = time.monotonic() - t_kill
            if replacement is not None and len(results) >= n_before + 2 * clients:
                break
            time.sleep(0.2)
    finally:
        until.set()
        for t in threads:
            t.join(timeout=180)
    assert replacement is not None, "no replacement replica started"
    return results, replacement


@pytest.fixture(scope="module")
def faults_app(ray_cluster, redis_server):
    """One replica per stage: an embed-sentences compressor and the local reader (no retriever)."""
    from ray import serve

    small = {"ray_actor_options": {"num_cpus": 0.1}}
    _deploy("faults", "/faults", compressors=[{"method": "embed-sentences", "deployment": small}],
            retriever=None, cache={"url": "none://"},
            reader={"name": "local", "config": {"max_new_tokens": 4, "context_window": 1024}, "deployment": small},
            ingress=small, limits={"timeout_s": 100, "max_new_tokens": 4})
    yield ray_cluster + "/faults"
    serve.delete("faults")


FILLER = " ".join(f"Record {j} of the town archive lists {j * 3} boats." for j in range(60))


def _compress_body(c: int, i: int) -> dict:
    """Distinct texts (nothing comes from a cache), long enough that the kill finds requests
    being computed in the replica, not only queued in front of it."""
    return {"query": QUERY, "budget": {"tokens": 200},
            "passages": [{"id": p["id"], "text": f"{p['text']} {FILLER} Client {c} request {i}."} for p in PASSAGES]}


def _retries(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ragpress_stage_retries_total{"))


def test_a_compressor_replica_killed_under_load_fails_no_request(faults_app):
    results, replacement = _kill_under_load(faults_app, "/v1/compress", _compress_body, "faults",
                                            "Compressor-embed-sentences")
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    assert len(results) >= 12, len(results)
    ready = httpx.get(faults_app + "/readyz", timeout=30).json()
    assert ready["stages"]["compressor:embed-sentences"]["replicas"] == {"running": 1, "target": 1}, ready
    assert ready["status"] == "ready" and ready["rate_limits"]["backend"] == "off", ready  # no keys: no limits
    print(f"compress: {len(results)} requests, 0 failed, {_retries(faults_app):.0f} stage call(s) sent again; "
          f"replacement started after {replacement:.1f} s")


def test_a_reader_replica_killed_under_answer_and_chat_load_fails_no_request(faults_app):
    def body_of(c: int, i: int) -> dict:
        return {**_compress_body(c, i), "max_new_tokens": 4}

    answers, _ = _kill_under_load(faults_app, "/v1/answer", body_of, "faults", "Reader")
    assert not [r for r in answers if r[0] != 200], [r for r in answers if r[0] != 200][:5]
    assert all(r[1]["answer"] is not None for r in answers)

    def chat_of(c: int, i: int) -> dict:
        return {"model": "ragpress", "max_tokens": 4, "documents": [p["text"] for p in PASSAGES],
                "messages": [{"role": "user", "content": f"{QUERY} (client {c}, request {i})"}]}

    chats, _ = _kill_under_load(faults_app, "/v1/chat/completions", chat_of, "faults", "Reader")
    assert not [r for r in chats if r[0] != 200], [r for r in chats if r[0] != 200][:5]
    assert all(r[1]["choices"][0]["message"]["content"] is not None for r in chats)


def test_overload_is_shed_with_a_typed_503_and_retry_after(ray_cluster, redis_server):
    """An ingress that serves 3 requests at once and a compressor that holds 1 running + 1
    queued: 12 concurrent slow requests get 200 or a quick 503 ``overloaded``, nothing else."""
    from ray import serve

    _deploy("overload", "/overload", retriever=None, reader=None, cache={"url": "none://"},
            compressors=[{"method": "embed-sentences",
                          "deployment": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 1,
                                         "max_queued_requests": 1}}],
            ingress={"ray_actor_options": {"num_cpus": 0.1}}, limits={"timeout_s": 100, "max_in_flight": 3})
    url = ray_cluster + "/overload"
    sents = " ".join(f"Sentence {j} holds the value {j * 7} for the overload test." for j in range(300))
    out: list = []

    def one(i: int) -> None:
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/compress", timeout=120,
                       json={"query": "Which value?", "budget": {"ratio": 0.3},
                             "passages": [{"id": "p", "text": f"{sents} Request {i}."}]})
        out.append((r.status_code, r.json(), r.headers.get("retry-after"), time.monotonic() - t0))

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        metrics = httpx.get(url + "/metrics", timeout=30).text
    finally:
        serve.delete("overload")
    statuses = sorted(r[0] for r in out)
    assert len(out) == 12 and set(statuses) <= {200, 503}, out
    shed = [r for r in out if r[0] == 503]
    served = [r for r in out if r[0] == 200]
    assert shed and served, statuses
    for _status, body, retry_after, seconds in shed:
        assert body["error"]["code"] == "overloaded" and retry_after is not None and int(retry_after) >= 1, body
        assert seconds < 10, (seconds, body)  # refused at once, not after a wait
    wheres = {line.split('"')[1] for line in metrics.splitlines() if line.startswith("ragpress_shed_requests_total{")}
    assert wheres <= {"ingress", "compress"} and wheres, metrics


def test_a_wedged_replica_is_replaced_and_the_stage_serves_again(ray_cluster, redis_server):
    """One piece of work running past ``RAGPRESS_WEDGED_AFTER_S`` (2 s here, 300 s by default)
    fails the replica's ``check_health``: Serve replaces the replica, and the next ordinary
    request is served by the new one. The long request (about 10 s of work on one thread) ends
    with a typed error, never a 500."""
    from ray import serve

    stage = "Compressor-embed-sentences"
    _deploy("wedge", "/wedge", retriever=None, reader=None, cache={"url": "none://"},
            compressors=[{"method": "embed-sentences", "deployment": {
                "ray_actor_options": {"num_cpus": 0.1,
                                      "runtime_env": {"env_vars": {"RAGPRESS_WEDGED_AFTER_S": "2"}}},
                "health_check_period_s": 1, "graceful_shutdown_timeout_s": 1}}],
            ingress={"ray_actor_options": {"num_cpus": 0.1}}, limits={"timeout_s": 120, "retry_attempts": 0})
    url = ray_cluster + "/wedge"
    try:
        (old,) = _replica_pids("wedge", stage)
        long_text = " ".join(f"Line {j} of the ledger records {j * 11} barrels." for j in range(1500))
        body = {"query": "How many barrels?", "budget": {"ratio": 0.3},
                "passages": [{"id": f"p{k}", "text": f"{long_text} Part {k}."} for k in range(16)]}
        out: list = []
        t = threading.Thread(target=lambda: out.append(httpx.post(url + "/v1/compress", json=body, timeout=180)))
        t.start()
        deadline = time.monotonic() + 180
        new: list[int] = []
        while time.monotonic() < deadline and not new:
            new = [p for p in _replica_pids("wedge", stage) if p != old]
            time.sleep(0.2)
        assert new, "the wedged replica was not replaced"
        t.join(timeout=180)
        (r,) = out
        assert r.status_code in (200, 503, 504), (r.status_code, r.text[:300])
        if r.status_code != 200:
            assert r.json()["error"]["code"], r.text[:300]
        ok = None
        while time.monotonic() < deadline + 120:  # the replacement loads its model, then serves
            ok = httpx.post(url + "/v1/compress", json={"query": QUERY, "passages": PASSAGES,
                                                        "budget": {"ratio": 0.5}}, timeout=60)
            if ok.status_code == 200:
                break
            time.sleep(1.0)
        assert ok is not None and ok.status_code == 200, ok.text[:300] if ok is not None else None
        assert old not in _replica_pids("wedge", stage)
        print(f"wedged replica replaced; the long request got {r.status_code}: {r.text[:160]}")
    finally:
        serve.delete("wedge")
