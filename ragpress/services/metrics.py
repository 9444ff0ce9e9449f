"""Prometheus metrics of the ingress: requests, latency per stage, tokens in/out, cache hits.

Each ingress replica keeps its own registry (``GET /metrics`` on a replica shows what that
replica served; Prometheus sums replicas). Ray's own metrics (queue lengths, replica counts)
are exported by the Ray metrics agent and complement these.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The ingress' metrics in their own registry (so several apps can share a process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ragpress_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("ragpress_stage_latency_seconds", "Latency per stage (ingress = whole request)",
                                 ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens_in = Counter("ragpress_tokens_in", "Tokens before compression", ["method"], registry=r)
        self.tokens_out = Counter("ragpress_tokens_out", "Tokens after compression", ["method"], registry=r)
        self.cache_hits = Counter("ragpress_cache_hits", "Compressions served from the segment cache", ["method"], registry=r)
        self.cache_misses = Counter("ragpress_cache_misses", "Compressions computed", ["method"], registry=r)
        self.cache_degraded = Counter("ragpress_cache_degraded_requests",
                                      "Requests served uncached because the cache failed", ["method"], registry=r)
        self.reader_answers = Counter("ragpress_reader_answers", "Answers written by the reader", ["route"], registry=r)
        self.reader_empty = Counter("ragpress_reader_empty_answers", "Answers where the model wrote nothing",
                                    ["route"], registry=r)
        self.reader_tokens_out = Counter("ragpress_reader_tokens_out", "Tokens the reader wrote", ["route"], registry=r)
        self.fail_open = Counter("ragpress_fail_open", "Chat requests whose documents went through uncompressed "
                                 "because compression failed or kept nothing", ["reason"], registry=r)
        self.retries = Counter("ragpress_stage_retries", "Stage calls sent again because their replica died",
                               ["stage"], registry=r)
        self.shed = Counter("ragpress_shed_requests", "Requests refused with 503 overloaded, by where the queue "
                            "was full (ingress, or a stage)", ["where"], registry=r)
        self.cache_hit_ratio = Gauge("ragpress_cache_hit_ratio", "Cache hits / lookups since start", registry=r)
        self._hits = 0
        self._lookups = 0

    def observe_compression(self, method: str, tokens_before: int, tokens_after: int, hit: bool, degraded: bool) -> None:
        self.tokens_in.labels(method).inc(tokens_before)
        self.tokens_out.labels(method).inc(tokens_after)
        (self.cache_hits if hit else self.cache_misses).labels(method).inc()
        if degraded:
            self.cache_degraded.labels(method).inc()
        self._lookups += 1
        self._hits += int(hit)
        self.cache_hit_ratio.set(self._hits / self._lookups)

    def observe_answer(self, route: str, tokens_out: int, empty: bool) -> None:
        self.reader_answers.labels(route).inc()
        self.reader_tokens_out.labels(route).inc(tokens_out)
        if empty:
            self.reader_empty.labels(route).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
