"""Graceful stop, for real: ``ragpress serve`` in a subprocess with its own Ray instance (own
temp dir, new local instance: it cannot touch the session's cluster) is loaded with slow
requests and sent SIGTERM mid-load. Every request it accepted must complete, later ones must be
refused cleanly (503 ``shutting_down`` / ``/readyz`` 503 ``draining``, or no connection once it
is down), it must exit 0 without an error line, and no process of its session may be left.
The signal -> drain -> stop core (``ragpress.core.lifecycle``) is checked on its own with SIGINT
and a second, forcing signal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from ragpress.services.redis_server import free_port

RAGPRESS = Path(sys.executable).with_name("ragpress")


def _session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:  # is_running checks the create time too
                out.append(f"{p.name()}({p.pid})")
        except psutil.NoSuchProcess:
            pass
    return out


# ---------------------------------------------------------------------------- the core, without Ray
_SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    from ragpress.core.lifecycle import GracefulShutdown, reap_children
    child = subprocess.Popen(["sleep", "60"])            # something the command started
    with GracefulShutdown(grace_s=float(sys.argv[1])) as stop:
        print("ready", child.pid, flush=True)
        stop.wait()
        print("stopping", stop.reason, flush=True)
        report = stop.shutdown(drain=lambda left: stop.wait_until(lambda: False), stop=lambda: print("stop ran"))
        print("report", report.drained, report.forced, round(report.drain_s, 1), flush=True)
        print("reaped", reap_children(timeout_s=5), flush=True)
""")


def _start_script(grace_s: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(grace_s)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stdout.readline().split()
    assert line[0] == "ready", line
    return proc, int(line[1])


def test_sigint_drains_within_the_grace_period_and_a_second_signal_forces():
    proc, child = _start_script(grace_s=0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopping SIGINT" in out and "stop ran" in out
    assert "report False False" in out  # the drain never finished: given up after the grace period
    assert f"sleep({child})" in out  # the child it started was ended

    proc, child = _start_script(grace_s=600)  # a second signal cuts the long grace period short
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().startswith("stopping SIGTERM")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "report False True" in out and "stop ran" in out, out


# A signal handler runs on the main thread between any two bytecodes, also inside the code it
# interrupted (``Event.wait`` holding the Event's lock, as the first version of the core did: one
# CI run in ~100 hung there). This runs the handler at every bytecode of ``wait`` and ``wait_until``
# in turn, in a subprocess so that a deadlock is a timeout and not a hung test session.
_EVERY_BYTECODE = textwrap.dedent("""
    import signal, sys
    from ragpress.core.lifecycle import GracefulShutdown

    def handler_at(stop, k, run):
        n, fired = 0, False
        def local(frame, event, arg):
            nonlocal n, fired
            if event == "opcode" and not fired:
                n += 1
                if n == k:
                    fired = True
                    sys.settrace(None)
                    stop._handle(signal.SIGINT, None)
            return local
        def calls(frame, event, arg):
            frame.f_trace_opcodes = True
            return local
        sys.settrace(calls)
        try:
            run()
        finally:
            sys.settrace(None)
        return fired

    for what in ("wait", "wait_until"):
        k = 0
        while True:
            k += 1
            stop = GracefulShutdown(grace_s=0.004)
            if what == "wait":
                fired = handler_at(stop, k, lambda: stop.wait(timeout=0.003, poll_s=0.0005))
                assert not fired or stop.requested and stop.reason == "SIGINT", (k, stop.reason)
            else:
                stop.request("first")
                fired = handler_at(stop, k, lambda: stop.wait_until(lambda: False, poll_s=0.0005))
                assert not fired or stop.forced, k
            if not fired:
                break
        print(what, k - 1, flush=True)
""")


def test_a_signal_at_any_bytecode_of_a_wait_is_handled_without_a_deadlock():
    proc = subprocess.run([sys.executable, "-c", _EVERY_BYTECODE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    counts = dict(line.split() for line in proc.stdout.splitlines())
    assert int(counts["wait"]) > 10 and int(counts["wait_until"]) > 10, counts  # the handler ran at many points


# ---------------------------------------------------------------------------- ragpress serve
SERVICE_YAML = """\
compressors:
  - method: embed-sentences
    deployment: {ray_actor_options: {num_cpus: 0.25}}
retriever: null
reader: null
cache: {url: "none://"}        # every request computes: the load stays slow
limits: {timeout_s: 120}
ingress: {ray_actor_options: {num_cpus: 0.25}}
"""


def _slow_body(i: int, n: int = 200) -> dict:
    sents = [f"Sentence {j} of request {i} is about topic {j * 7 % 13} and holds the value {j * i}." for j in range(n)]
    return {"query": f"What value does request {i} hold?", "budget": {"ratio": 0.3},
            "passages": [" ".join(sents[k:k + 10]) for k in range(0, n, 10)]}


API_KEY = "rp-lifecycle-test-key"
IN_FLIGHT = 3  # requests being served when SIGTERM is sent (of 8 sent)
AUTH = {"authorization": f"Bearer {API_KEY}"}


def _post(url: str, path: str, body: dict | None = None, timeout: float = 120, headers: dict | None = AUTH):
    import httpx

    try:
        r = httpx.post(url + path, json=body, timeout=timeout, headers=headers) if body is not None else \
            httpx.get(url + path, timeout=timeout, headers=headers)
        try:
            payload = r.json()
        except ValueError:
            payload = r.text
        return r.status_code, payload, time.monotonic()
    except httpx.TransportError as exc:  # refused / reset: the service is gone
        return type(exc).__name__, None, time.monotonic()


def _in_flight(url: str) -> float:
    import re

    status, text, _ = _post(url, "/metrics", timeout=10)
    m = re.search(r"^ragpress_requests_in_flight (\S+)$", text if status == 200 else "", re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.ray
@pytest.mark.parametrize("to", ["process", "group"])
def test_sigterm_under_load_drains_then_exits_0_with_nothing_left(tmp_path, to):
    """SIGTERM to the main process (``kill PID``, Kubernetes, Docker) or to its whole process
    group (``kill -TERM -PGID``, supervisors that signal the group): the same clean drain."""
    if not RAGPRESS.exists():
        pytest.skip("the ragpress console script is not installed next to the interpreter")
    config = tmp_path / "service.yaml"
    config.write_text(SERVICE_YAML)
    ray_tmp = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmp, RAGPRESS_API_KEYS=API_KEY, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([str(RAGPRESS), "serve", "--config", str(config), "--port", str(port),
                             "--grace-period", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "ragpress is serving at" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while not ready.wait(0.5):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "not ready in time:\n" + "".join(lines)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in started), [p.name() for p in started]
        # the API key came from the environment into the ingress replica
        status, body, _ = _post(url, "/v1/compress", _slow_body(0, 10), headers=None)
        assert status == 401 and body["error"]["code"] == "missing_api_key", (status, body)

        # a load of slow requests, sent before the signal
        results: dict[int, tuple] = {}

        def load(i: int) -> None:
            results[i] = _post(url, "/v1/compress", _slow_body(i))

        threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while _in_flight(url) < IN_FLIGHT:  # being served when the signal comes
            assert time.monotonic() < deadline and any(t.is_alive() for t in threads), results
            time.sleep(0.1)
        t_signal = time.monotonic()
        if to == "group":
            os.killpg(proc.pid, signal.SIGTERM)  # its session's group: the test started it as the leader
        else:
            proc.send_signal(signal.SIGTERM)

        # What a load balancer and new clients see while it drains and stops. Each probe runs on
        # its own thread, as independent clients do: a probe that reached the ingress just before
        # the drain flag is served like any accepted request (seconds, behind the load), and a
        # probe loop waiting on it saw nothing more until the service was gone (the flake of #23).
        probes: list[tuple[str, tuple, float]] = []

        def probe(kind: str, path: str, body: dict | None, timeout: float) -> None:
            sent = time.monotonic() - t_signal
            probes.append((kind, _post(url, path, body, timeout=timeout), sent))

        probers = []
        while proc.poll() is None and time.monotonic() - t_signal < 180:
            for args in (("readyz", "/readyz", None, 10), ("compress", "/v1/compress", _slow_body(99, 10), 120)):
                probers.append(threading.Thread(target=probe, args=args, daemon=True))
                probers[-1].start()
            time.sleep(0.2)
        for t in [*threads, *probers]:
            t.join(timeout=60)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:  # the test failed: do not leave it running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = "".join(lines)
    assert code == 0, out

    # every request accepted before the signal completed; late ones were refused cleanly
    assert len(results) == 8
    completed_after_signal = 0
    for status, body, t_done in results.values():
        if status == 200:
            completed_after_signal += t_done > t_signal
        else:  # reached the ingress after draining began, or never connected: refused, never dropped
            assert (status == 503 and body["error"]["code"] == "shutting_down") or status == "ConnectError", \
                (status, body, results, out)
    assert completed_after_signal >= IN_FLIGHT, f"requests in flight at the signal did not complete: {results}"
    seen = set()
    timeline = sorted((round(sent, 2), kind, status, round(t_done - t_signal, 2)) for kind, (status, _, t_done), sent
                      in probes)
    for kind, (status, body, _), _sent in probes:
        if status == 503:
            seen.add((kind, body.get("status") or body["error"]["code"]))
        else:  # served before the drain began, or no connection any more: never another status
            assert status == 200 or isinstance(status, str), (kind, status, body)
    assert seen == {("readyz", "draining"), ("compress", "shutting_down")}, (timeline, out)

    # a clean stop: the drain finished in time, no error line, nothing left behind
    assert "SIGTERM: draining" in out and "stopped (SIGTERM): drained" in out, out
    for bad in ("(raylet)", "Traceback", "killed by `ray.kill`", "process(es) left"):
        assert bad not in out, out
    assert not _alive(started), f"left running: {_alive(started)}"
    assert not _alive(_session_processes(proc.pid)), "left in its session"
