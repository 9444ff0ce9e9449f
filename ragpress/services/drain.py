"""Draining the ingress before a stop: new requests get 503, requests in flight finish.

The process that runs the service (``ragpress serve``) creates one :class:`DrainCoordinator`
actor per application before deploying it. Each ingress replica registers with it at start (a
thread in the replica blocks on :meth:`DrainCoordinator.wait_drain`, no polling). On SIGTERM the
serving process calls :func:`drain_service`: the coordinator tells every replica to drain, each
replica's :class:`DrainMiddleware` then answers ``/readyz`` with 503 ``draining`` (so a load
balancer stops sending), refuses new requests with a typed 503 ``shutting_down`` (and
``Retry-After``), and reports its requests in flight until they are done. ``/healthz`` stays
200 (the process is alive). An application deployed without a coordinator (``serve run
deploy/serve-local.yaml``, KubeRay) skips all this and relies on Serve's own graceful replica
shutdown (``graceful_shutdown_timeout_s``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

log = logging.getLogger("ragpress.services")

NAMESPACE = "ragpress"
HEALTH_PATHS = ("/healthz", "/metrics")  # answered while draining, not counted as work in flight
READY_PATH = "/readyz"


def coordinator_name(app_name: str) -> str:
    return f"drain-coordinator:{app_name}"


class DrainCoordinator:
    """Ray actor (created by :func:`start_coordinator`): the drain flag and the replicas' counts
    of requests in flight."""

    def __init__(self) -> None:
        import asyncio

        self._event = asyncio.Event()
        self.draining = False
        self.in_flight: dict[str, int] = {}  # replica -> requests in flight (last report)
        self.reported_since_drain: set[str] = set()

    async def register(self, replica: str) -> None:
        self.in_flight.setdefault(replica, 0)

    async def wait_drain(self) -> bool:
        await self._event.wait()
        return True

    async def start_drain(self) -> None:
        self.draining = True
        self._event.set()

    async def report(self, replica: str, in_flight: int) -> None:
        self.in_flight[replica] = in_flight
        if self.draining:
            self.reported_since_drain.add(replica)

    async def status(self) -> dict[str, Any]:
        """``done``: every registered replica reported, since the drain began, nothing in flight."""
        done = self.draining and all(r in self.reported_since_drain and n == 0 for r, n in self.in_flight.items())
        return {"draining": self.draining, "replicas": len(self.in_flight),
                "in_flight": sum(self.in_flight.values()), "done": done}


_COORDINATORS: dict[str, Any] = {}  # app -> actor handle, held so the actor lives as long as this driver


def start_coordinator(app_name: str):
    """Create (or find) the application's coordinator actor; it lives as long as the calling driver."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_concurrency=1000)(DrainCoordinator)
    actor = actor_cls.options(name=coordinator_name(app_name), namespace=NAMESPACE, get_if_exists=True).remote()
    _COORDINATORS[app_name] = actor
    return actor


def drain_service(app_name: str, grace) -> bool:
    """Tell the application's ingress replicas to drain and wait until nothing is in flight
    (True) or ``grace`` (a :class:`ragpress.core.lifecycle.GracefulShutdown`) runs out (False)."""
    import ray

    try:
        actor = ray.get_actor(coordinator_name(app_name), namespace=NAMESPACE)
    except ValueError:  # deployed without a coordinator
        return True
    ray.get(actor.start_drain.remote(), timeout=10)
    last: dict[str, Any] = {}

    def done() -> bool:
        last.update(ray.get(actor.status.remote(), timeout=10))
        return bool(last["done"])

    ok = grace.wait_until(done, poll_s=0.1)
    if not ok:
        log.warning("grace period over with %s request(s) in flight", last.get("in_flight"))
    return ok


class DrainState:
    """One ingress replica's view: draining or not, and its requests in flight (also exported as
    the gauge ``ragpress_requests_in_flight`` when given the service's metrics registry)."""

    def __init__(self, registry=None) -> None:
        self.draining = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0
        self._gauge = None
        if registry is not None:
            from prometheus_client import Gauge

            try:
                self._gauge = Gauge("ragpress_requests_in_flight", "Requests being served by this ingress replica",
                                    registry=registry)
            except ValueError:  # the app was built twice over one registry: the first gauge stays
                return
            self._gauge.set_function(lambda: self.in_flight)

    def enter(self, limit: int | None = None) -> bool:
        """Count a request in; False (not counted) when ``limit`` requests are in flight already."""
        with self._lock:
            if limit is not None and self.in_flight >= limit:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def watch(self, app_name: str, replica: str, report_every_s: float = 0.05) -> threading.Thread | None:
        """In a Serve replica: register with the application's coordinator and, once it says
        drain, report the requests in flight until the coordinator goes away. None when there
        is no coordinator."""
        import ray

        try:
            actor = ray.get_actor(coordinator_name(app_name), namespace=NAMESPACE)
        except ValueError:
            return None

        def run() -> None:
            try:
                ray.get(actor.register.remote(replica))
                ray.get(actor.wait_drain.remote())
                self.draining.set()
                log.info("ingress %s draining: %d request(s) in flight", replica, self.in_flight)
                while True:
                    ray.get(actor.report.remote(replica, self.in_flight))
                    time.sleep(report_every_s)
            except Exception as exc:  # the coordinator is gone: the service is stopping
                log.debug("drain watcher ends: %r", exc)

        thread = threading.Thread(target=run, name="ragpress-drain", daemon=True)
        thread.start()
        return thread


class DrainMiddleware:
    """ASGI middleware, the ingress' admission: counts requests in flight; while draining, 503
    for ``/readyz`` (status ``draining``) and a typed 503 ``shutting_down`` for every other route
    but ``/healthz``; with ``max_in_flight`` requests already being served, a typed 503
    ``overloaded`` with ``Retry-After`` at once (overload is shed here, not queued)."""

    def __init__(self, app, state: DrainState, metrics=None, max_in_flight: int | None = None):
        self.app = app
        self.state = state
        self.metrics = metrics
        self.max_in_flight = max_in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from ragpress.services.auth import app_path

        path = app_path(scope)
        if path in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        if self.state.draining.is_set():
            return await self._refuse(path, send)
        if not self.state.enter(self.max_in_flight if path != READY_PATH else None):
            return await self._refuse(path, send, overloaded=True)
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.leave()

    async def _refuse(self, path: str, send, overloaded: bool = False) -> None:
        from ragpress.services.openai_api import is_openai_route, to_openai_error

        if overloaded:
            body: dict[str, Any] = {"error": {
                "type": "OverloadedError", "code": "overloaded",
                "message": f"this ingress replica is serving its limit of {self.max_in_flight} requests; retry "
                           "after a second (or add ingress replicas)"}}
        elif path == READY_PATH:
            body = {"status": "draining", "stages": {}}
        else:
            body = {"error": {"type": "ServiceDrainingError", "code": "shutting_down",
                              "message": "the service is shutting down and takes no new requests; retry "
                                         "(another replica or the restarted service will answer)"}}
        if "error" in body and is_openai_route(path):
            body = to_openai_error(body, 503)
        if self.metrics is not None:
            if overloaded:
                self.metrics.shed.labels("ingress").inc()
            self.metrics.requests.labels("overloaded" if overloaded else "draining", "503").inc()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def install_drain(app, metrics=None, max_in_flight: int | None = None) -> DrainState:
    """Add :class:`DrainMiddleware` to ``app`` (outermost) and, inside a Serve replica whose
    application has a coordinator, start watching it."""
    state = DrainState(getattr(metrics, "registry", None))
    app.add_middleware(DrainMiddleware, state=state, metrics=metrics, max_in_flight=max_in_flight)
    try:
        from ray import serve

        ctx = serve.get_replica_context()
        state.watch(ctx.app_name, str(ctx.replica_id))
    except Exception:  # not in a Serve replica (tests in process, local testing mode)
        pass
    return state
