"""``ragpress serve``: run the service locally on Ray Serve.

    ragpress serve                                  # embedded defaults: sample index, in-process cache
    ragpress serve --config deploy/serve-local.yaml --redis-url redis://127.0.0.1:6379/0
    ragpress serve --methods embed-sentences,truncate --port 8001 --index ./my-index
    ragpress serve --smoke                          # start, send one real request, print it, stop

Starts (or, with ``RAY_ADDRESS`` set, joins) a Ray cluster, deploys the application built by
:func:`ragpress.services.app.build_app`, waits until ``/readyz`` answers, prints working ``curl``
examples and blocks until SIGTERM or Ctrl-C (SIGINT). Either one stops it gracefully: ``/readyz``
answers 503 and new requests a typed 503 while the requests in flight finish (at most
``--grace-period`` seconds), then Serve and the local Ray instance it started are shut down and
it exits 0 with no process left behind. ``--config`` takes either a Serve config file (the
``deploy/serve-*.yaml`` format: ``applications[0].args`` plus per-deployment overrides) or a
plain :class:`~ragpress.services.app.ServiceConfig` YAML/JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ragpress.core.cache import _redact
from ragpress.core.errors import ConfigError, RagpressError
from ragpress.core.lifecycle import DEFAULT_GRACE_S, GracefulShutdown, reap_children
from ragpress.services.redis_server import free_port

log = logging.getLogger("ragpress.services")

APP_NAME = "ragpress"
SMOKE_QUERY = "How do I create a temporary file in Python?"
SMOKE_PASSAGES = [
    {"id": "doc1", "title": "tempfile",
     "text": "The tempfile module creates temporary files and directories. NamedTemporaryFile returns a file-like "
             "object that is deleted when it is closed. Bananas are rich in potassium."},
    {"id": "doc2", "text": "mkstemp returns a low-level OS handle and the absolute path of the new file. "
                           "The Eiffel tower was finished in 1889."},
]


class ServeStartError(RagpressError):
    code = "serve_start_failed"


# ---------------------------------------------------------------------------- configuration
def _apply_deployment_overrides(config, deployments: list[dict[str, Any]]):
    """Per-deployment options of a Serve config file -> the stages of a ServiceConfig."""
    from ragpress.services.app import ENCODER_DEPLOYMENT, compressor_deployment_name

    by_name = {compressor_deployment_name(c.method): c for c in config.compressors}
    for d in deployments or []:
        opts = {k: v for k, v in d.items() if k != "name"}
        name = d.get("name")
        if name == "Ingress":
            config.ingress.update(opts)
        elif name == "Retriever" and config.retriever is not None:
            config.retriever.deployment.update(opts)
        elif name == "Reader" and config.reader is not None:
            config.reader.deployment.update(opts)
        elif name == ENCODER_DEPLOYMENT and config.encoder is not None:
            config.encoder.deployment.update(opts)
        elif name in by_name:
            by_name[name].deployment.update(opts)
        else:
            raise ConfigError(f"the config overrides deployment {name!r}, which this application does not build; "
                              f"known: Ingress, Retriever, Reader, {'Encoder, ' if config.encoder else ''}"
                              f"{', '.join(sorted(by_name))}")
    return config


def load_service_config(path: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """``(ServiceConfig, http_options)`` from a Serve config file or a plain ServiceConfig file
    (``path`` None: the embedded defaults and no HTTP options)."""
    import yaml
    from pydantic import ValidationError

    from ragpress.services.app import ServiceConfig

    if path is None:
        return ServiceConfig(), {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found (try deploy/serve-local.yaml)")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    try:
        if "applications" in raw:  # a Serve config file
            apps = [a for a in raw["applications"] if a.get("import_path", "").startswith("ragpress.services.app")]
            if not apps:
                raise ConfigError(f"{p} has no application with import_path ragpress.services.app:app_builder")
            config = ServiceConfig.model_validate(apps[0].get("args") or {})
            config = _apply_deployment_overrides(config, apps[0].get("deployments") or [])
            return config, dict(raw.get("http_options") or {})
        return ServiceConfig.model_validate(raw), {}
    except ValidationError as exc:
        raise ConfigError(f"{p}: invalid service config: {exc}") from exc


def _with_overrides(config, methods: list[str] | None, redis_url: str | None, index: str | None):
    from ragpress.core.registry import get_compressor_class
    from ragpress.services.app import CompressorStage, EncoderStage, RetrieverStage

    if methods:
        known = {c.method: c for c in config.compressors}
        soft = [m for m in methods if get_compressor_class(m).soft_tokens]  # served by the Encoder deployment
        if len(soft) > 1:
            raise ConfigError(f"one soft-token method per service; got {soft}")
        encoder = None
        if soft:
            encoder = config.encoder if config.encoder and config.encoder.method == soft[0] \
                else EncoderStage(method=soft[0])
        stages = [known.get(m) or CompressorStage(method=m) for m in methods if m not in soft]
        default = config.default_method if config.default_method in methods else None
        config = config.model_copy(update={"compressors": stages, "encoder": encoder, "default_method": default})
    if redis_url:
        config = config.model_copy(update={"cache": config.cache.model_copy(update={"url": redis_url,
                                                                                    "url_env": None})})
    if index:
        if not (Path(index) / "meta.json").is_file():
            raise ConfigError(f"--index {index!r} is not a saved index (no meta.json); build one with "
                              "`ragpress index build SOURCE --out DIR`")
        retriever = config.retriever or RetrieverStage()
        config = config.model_copy(update={"retriever": retriever.model_copy(update={"index_path": str(index)})})
    return config


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------- running
def start_service(config, host: str = "127.0.0.1", port: int = 8000, ready_timeout_s: float = 600,
                  quiet: bool = True, stop: GracefulShutdown | None = None) -> str | None:
    """Start Ray (a new local instance, or join ``RAY_ADDRESS``), deploy ``config`` and wait
    until ``/readyz`` says ready (or degraded). Returns the base URL, or None when ``stop`` was
    requested (a signal) before the service was ready."""
    import httpx
    import ray
    from ray import serve

    from ragpress.services.app import build_app

    if port == 0:
        port = free_port(host)
    elif not _port_free(host, port):
        raise ServeStartError(f"port {port} on {host} is in use; pass --port with a free one (or --port 0)")
    env = {k: os.environ.get(k, v) for k, v in (("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"),
                                                  ("TRANSFORMERS_OFFLINE", "1"), ("OMP_NUM_THREADS", "1"))}
    if stop is not None and stop.requested:  # stopped while importing: do not start Ray at all
        return None
    if not ray.is_initialized():
        # "local": always a new instance of our own (never one found on the machine), which
        # stop_service shuts down again; RAY_ADDRESS joins a cluster, which is left running
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                     log_to_driver=not quiet, configure_logging=not quiet, runtime_env={"env_vars": env})
        except Exception as exc:  # Ray raises a bare Exception when its node does not come up in time
            where = f"join the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']}" if os.environ.get(
                "RAY_ADDRESS") else "start a local Ray instance"
            raise ServeStartError(f"could not {where}: {exc}") from exc
    if stop is not None:
        stop.install()  # ray.init replaced the SIGTERM handler with its own (sys.exit)
        if stop.requested:
            return None
    from ragpress.services.drain import start_coordinator

    if quiet:  # Serve's INFO notices ("Started Serve", "Connecting to existing Serve app") are noise here
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(config)
    start_coordinator(APP_NAME)  # before the ingress replicas start: they register with it
    # deploy without waiting for the replicas (serve.run would block until the models loaded,
    # deaf to a stop request): readiness is polled below, with a stop check in the loop
    deploy = getattr(serve, "_run", None)
    if deploy is not None:
        deploy(app, name=APP_NAME, route_prefix="/", _blocking=False)
    else:
        serve.run(app, name=APP_NAME, route_prefix="/")
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{connect_host}:{port}"
    deadline = time.monotonic() + ready_timeout_s
    last = None
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            if stop is not None and stop.requested:
                return None
            _raise_if_deploy_failed(serve)
            try:
                r = client.get("/readyz")
                last = r.json().get("status")
                if last in ("ready", "degraded"):
                    return url
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.5)
    raise ServeStartError(f"the service did not become ready within {ready_timeout_s:.0f} s (last /readyz: {last})")


def _raise_if_deploy_failed(serve) -> None:
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # status unavailable for a moment: keep polling readiness
        return
    if app is not None and str(getattr(app.status, "value", app.status)) == "DEPLOY_FAILED":
        raise ServeStartError(f"the application failed to deploy: {app.message[-2000:]}")


def drain(stop: GracefulShutdown) -> bool:
    """Drain the application's ingress replicas (see :mod:`ragpress.services.drain`) within
    what is left of ``stop``'s grace period; True when nothing was left in flight."""
    import ray

    from ragpress.services.drain import drain_service

    if not ray.is_initialized():
        return True
    return drain_service(APP_NAME, stop)


def stop_service() -> None:
    """Shut Serve down (on a joined cluster: delete only this application) and disconnect from
    Ray, which stops the local instance when this process started it."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if os.environ.get("RAY_ADDRESS"):
            serve.delete(APP_NAME)
        else:
            _shutdown_serve(serve)
    finally:
        ray.shutdown()


def _shutdown_serve(serve, timeout_s: float = 60) -> None:
    """``serve.shutdown()`` without its parting error line: it waits on a controller call that
    only ends when the controller kills itself, and Ray then reports that call as failed on a
    killed actor. Here the controller is asked to shut down without a call left waiting, and
    this waits until it is gone (its replicas stop gracefully first)."""
    import ray

    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
        from ray.serve.context import _get_global_client, _set_global_client

        client = _get_global_client()
        if client is None:
            return
        ray.get(client._controller.graceful_shutdown.remote(False), timeout=10)
    except Exception as exc:  # another Ray version: the public call
        log.debug("serve shutdown through the public API (%r)", exc)
        serve.shutdown()
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # gone
            break
        time.sleep(0.2)
    # the controller is gone: what serve.shutdown would still do is drop the handles and the client
    client.shutdown_cached_handles()
    client._shutdown = True
    _set_global_client(None)


def curl_examples(url: str, methods: list[str], has_retriever: bool, has_reader: bool = False,
                  auth: bool = False) -> str:
    body = json.dumps({"query": SMOKE_QUERY, "passages": SMOKE_PASSAGES, "budget": {"ratio": 0.5},
                       "method": methods[0]})
    lines = ["# compress passages for a query:",
             f"curl -s {url}/v1/compress -H 'content-type: application/json' -d '{body}'"]
    if has_reader:
        answer = json.dumps({"query": SMOKE_QUERY, "passages": SMOKE_PASSAGES, "budget": {"ratio": 0.5},
                             "max_new_tokens": 32})
        chat = json.dumps({"model": "ragpress", "max_tokens": 32, "documents": [p["text"] for p in SMOKE_PASSAGES],
                           "messages": [{"role": "user", "content": SMOKE_QUERY}]})
        lines += ["# compress -> read (add \"stream\": true for server-sent events):",
                  f"curl -s {url}/v1/answer -H 'content-type: application/json' -d '{answer}'",
                  "# OpenAI-compatible chat over compressed documents (or: openai.OpenAI(base_url=URL + '/v1')):",
                  f"curl -s {url}/v1/chat/completions -H 'content-type: application/json' -d '{chat}'"]
    if has_retriever:
        lines += ["# retrieve -> compress (-> read) over the service's index:",
                  f"curl -s {url}/v1/answer -H 'content-type: application/json' "
                  f"-d '{json.dumps({'query': SMOKE_QUERY, 'k': 4, 'budget': {'ratio': 0.3}})}'",
                  "# retrieval only:",
                  f"curl -s {url}/v1/retrieve -H 'content-type: application/json' "
                  f"-d '{json.dumps({'query': SMOKE_QUERY, 'k': 3})}'"]
    lines += [f"curl -s {url}/v1/methods", f"curl -s {url}/readyz", f"curl -s {url}/metrics | grep ragpress_",
              f"# OpenAPI spec: {url}/openapi.json   interactive docs: {url}/docs"]
    if auth:  # every /v1 route (and a protected /metrics) needs the key
        lines = ["# API keys are on: KEY=<one of your keys>"] + [
            line.replace(f"curl -s {url}/v1/", f"curl -s -H \"Authorization: Bearer $KEY\" {url}/v1/")
            for line in lines]
    return "\n".join(lines)


def smoke(url: str, methods: list[str], has_retriever: bool, has_reader: bool = False,
          headers: dict[str, str] | None = None) -> int:
    """Send real requests; print a summary. 0 when all answered 200."""
    import httpx

    ok = True
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        body = {"query": SMOKE_QUERY, "passages": SMOKE_PASSAGES, "budget": {"ratio": 0.5}, "method": methods[0]}
        for attempt in ("cold", "warm"):
            r = client.post("/v1/compress", json=body)
            if r.status_code != 200:
                print(f"POST /v1/compress -> {r.status_code}: {r.text[:300]}")
                ok = False
                break
            out = r.json()
            print(f"POST /v1/compress ({attempt}) -> 200: method={out['method']} tokens {out['tokens_before']} -> "
                  f"{out['tokens_after']} (ratio {out['ratio']:.2f}), {len(out['spans'])} spans, "
                  f"cache hit={out['cache']['hit']}, {1000 * out['timings']['total']:.1f} ms")
        if ok:
            print(f"  context: {out['text'][:200]!r}")
        if has_retriever:
            r = client.post("/v1/answer", json={"query": SMOKE_QUERY, "k": 4, "budget": {"ratio": 0.3},
                                                "max_new_tokens": 32})
            if r.status_code == 200:
                a = r.json()
                print(f"POST /v1/answer -> 200: {len(a['hits'])} hits, tokens {a['context']['tokens_before']} -> "
                      f"{a['context']['tokens_after']} (saved {a['tokens_saved']}), top hit: "
                      f"{(a['hits'][0]['title'] or a['hits'][0]['id'])!r}, answer {a['answer']!r}")
            else:
                print(f"POST /v1/answer -> {r.status_code}: {r.text[:300]}")
                ok = False
        if has_reader:
            r = client.post("/v1/answer", json={"query": SMOKE_QUERY, "passages": SMOKE_PASSAGES,
                                                "budget": {"ratio": 0.5}, "max_new_tokens": 32})
            if r.status_code == 200:
                a = r.json()
                print(f"POST /v1/answer (passages) -> 200: answer {a['answer']!r} from {a['reader']['model_id']}; "
                      + ", ".join(f"{k} {v['ms']:.0f} ms" for k, v in a["stages"].items()))
            else:
                print(f"POST /v1/answer -> {r.status_code}: {r.text[:300]}")
                ok = False
            r = client.post("/v1/chat/completions", json={
                "model": "ragpress", "max_tokens": 32, "documents": [p["text"] for p in SMOKE_PASSAGES],
                "messages": [{"role": "user", "content": SMOKE_QUERY}]})
            if r.status_code == 200:
                c = r.json()
                info = c["ragpress"]
                print(f"POST /v1/chat/completions -> 200: {c['choices'][0]['message']['content']!r}; documents "
                      f"compressed={info['compressed']} tokens {info['tokens_before']} -> {info['tokens_after']}, "
                      f"prompt {c['usage']['prompt_tokens']} tokens "
                      f"(was {c['usage']['prompt_tokens_before_compression']})")
            else:
                print(f"POST /v1/chat/completions -> {r.status_code}: {r.text[:300]}")
                ok = False
        ready = client.get("/readyz").json()
        print(f"GET /readyz -> {ready['status']}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------- CLI
def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="run the REST service locally on Ray Serve (Ctrl-C stops it)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="Serve config (deploy/serve-local.yaml) or ServiceConfig YAML; default: embedded defaults")
    p.add_argument("--methods", default=None, help="comma-separated compression methods to serve, e.g. "
                                                    "embed-sentences,truncate")
    p.add_argument("--redis-url", default=os.environ.get("RAGPRESS_REDIS_URL"),
                   help="segment cache in Redis, e.g. redis://127.0.0.1:6379/0 (default: in-process cache; "
                        "env RAGPRESS_REDIS_URL)")
    p.add_argument("--index", default=None, help="a saved index for /v1/retrieve and /v1/answer "
                                                 "(default: the shipped sample corpus)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000; 0 = any free port)")
    p.add_argument("--smoke", action="store_true", help="send real requests, print the answers and exit")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for the models to load")
    p.add_argument("--ray-logs", action="store_true", help="show the replicas' logs")
    p.add_argument("--grace-period", type=float, default=float(os.environ.get("RAGPRESS_GRACE_S", DEFAULT_GRACE_S)),
                   help="on SIGTERM / Ctrl-C: seconds the requests in flight get to finish before the service "
                        f"stops (default {DEFAULT_GRACE_S:g}; env RAGPRESS_GRACE_S)")
    return p


def run_serve(args) -> int:
    """``ragpress serve``; returns the exit status."""
    try:
        config, http = load_service_config(args.config)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        config = _with_overrides(config, methods, args.redis_url, args.index)
        from ragpress.services.app import ServiceConfig

        config = ServiceConfig.model_validate(config.model_dump())  # re-validate the overrides
    except RagpressError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic: unknown method etc.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = args.host or http.get("host") or "127.0.0.1"
    port = args.port if args.port is not None else int(http.get("port", 8000))
    served = [c.method for c in config.compressors] + ([config.encoder.method] if config.encoder else [])
    print(f"starting ragpress: methods {', '.join(served)}; cache "
          f"{'$' + config.cache.url_env if config.cache.url_env else _redact(config.cache.url or 'in-process')}; index "
          f"{config.retriever.index_path or 'sample corpus' if config.retriever else 'none'}"
          f" (loading models, ~1 min on 2 CPUs) ...", flush=True)
    if args.grace_period < 0:
        print("error: --grace-period must be >= 0", file=sys.stderr)
        return 2
    stop = GracefulShutdown(grace_s=args.grace_period).install()
    try:
        return _serve_until_stopped(args, config, host, port, served, stop)
    finally:
        stop.restore()


def _serve_until_stopped(args, config, host: str, port: int, served: list[str], stop: GracefulShutdown) -> int:
    t0 = time.perf_counter()
    try:
        url = start_service(config, host=host, port=port, ready_timeout_s=args.ready_timeout,
                            quiet=not args.ray_logs, stop=stop)
    except RagpressError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        _shutdown(stop, drain_first=False)
        return 2
    except SystemExit:  # a SIGTERM while ray.init still held its own handler
        stop.request("SIGTERM")
        url = None
    if url is None:
        print(f"\n{stop.reason} before the service was ready: stopping ...", flush=True)
        return _shutdown(stop, drain_first=False)
    print(f"ragpress is serving at {url} (ready in {time.perf_counter() - t0:.0f} s)\n", flush=True)
    has_retriever, has_reader = config.retriever is not None, config.reader is not None
    keys = _env_keys(config)
    print(curl_examples(url, served, has_retriever, has_reader, auth=_auth_on(config)) + "\n", flush=True)
    if args.smoke:
        try:
            code = smoke(url, served, has_retriever, has_reader,
                         headers={"authorization": f"Bearer {keys[0]}"} if keys else None)
        except Exception as exc:  # the smoke client failed; stop cleanly all the same
            print(f"smoke requests failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        stop.request("smoke run done")
        return _shutdown(stop) or code
    print(f"SIGTERM or Ctrl-C stops the service (requests in flight get {stop.grace_s:g} s).", flush=True)
    stop.wait()
    print(f"\n{stop.reason}: draining (no new requests; in flight get up to {stop.grace_s:g} s) ...", flush=True)
    return _shutdown(stop)


def _env_keys(config) -> list[str]:
    """The plain API keys of ``auth.keys_env`` (what --smoke authenticates with)."""
    name = config.auth.keys_env
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()] if name else []


def _auth_on(config) -> bool:
    return bool(config.auth.enabled or (config.auth.enabled is None and (config.auth.keys or _env_keys(config))))


def _shutdown(stop: GracefulShutdown, drain_first: bool = True) -> int:
    """Drain (optional), stop Serve and Ray, end any child process left; 0 when all went well."""
    report = stop.shutdown(drain=(lambda _left: drain(stop)) if drain_first else None, stop=stop_service)
    leftover = reap_children()
    if leftover:
        print(f"ended {len(leftover)} process(es) left after the shutdown: {', '.join(leftover)}", file=sys.stderr)
    print(report.summary(), flush=True)
    for e in report.errors:
        print(f"(shutdown: {e})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragpress")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
