"""Graceful stop for long-running commands: a signal -> drain -> stop, bounded by a grace period.

What Kubernetes, systemd and Docker send to stop a process is SIGTERM (then SIGKILL after their
own grace period); a terminal sends SIGINT. Both mean the same here: stop taking new work, let
the work in flight finish within ``grace_s`` seconds, release what the command started, exit 0.
A second signal while draining skips the rest of the grace period.

>>> from ragpress.core.lifecycle import GracefulShutdown
>>> with GracefulShutdown(grace_s=30) as stop:                       # doctest: +SKIP
...     start_work()
...     stop.wait()                       # blocks until SIGTERM / SIGINT (or stop.request())
...     report = stop.shutdown(drain=lambda left_s: finish_in_flight(left_s), stop=release)
...     print(report.summary())

A loop that processes work in pieces (a batch job) checks ``stop.requested`` between pieces
instead of calling :meth:`GracefulShutdown.wait`. :func:`reap_children` then ends whatever
child process the command started and did not stop itself (so nothing is left without a parent).

Used by ``ragpress serve`` (drain the ingress, then shut Serve and the local Ray instance down)
and ``ragpress batch``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DEFAULT_GRACE_S = 30.0
"""Default grace period: in flight work gets this long to finish (Kubernetes' default
``terminationGracePeriodSeconds`` is 30 s too; set the pod's a few seconds longer than this)."""

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class ShutdownReport:
    """What :meth:`GracefulShutdown.shutdown` did."""

    reason: str
    grace_s: float
    drained: bool = True  # the drain callback said everything in flight finished in time
    forced: bool = False  # a second signal cut the grace period short
    drain_s: float = 0.0
    stop_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        state = "drained" if self.drained else ("forced" if self.forced else f"grace period of {self.grace_s:g} s over")
        out = f"stopped ({self.reason}): {state} in {self.drain_s:.1f} s, shut down in {self.stop_s:.1f} s"
        return out + (f"; errors: {'; '.join(self.errors)}" if self.errors else "")


class GracefulShutdown:
    """Turns SIGTERM / SIGINT into a stop request and runs drain -> stop within a grace period.

    :meth:`install` (or ``with``) sets the handlers, on the main thread; the previous handlers
    come back on :meth:`restore`. Handlers only set flags (nothing is printed or stopped inside
    the handler): the main thread notices through :attr:`requested` or :meth:`wait`. Libraries
    that replace the SIGTERM handler when they start (``ray.init`` does) need :meth:`install`
    again afterwards; it is idempotent.
    """

    def __init__(self, grace_s: float = DEFAULT_GRACE_S, signals: Iterable[int] = DEFAULT_SIGNALS):
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.grace_s = float(grace_s)
        self.signals = tuple(signals)
        self.reason: str | None = None
        self.signals_received = 0
        # Plain attributes, no Event: the signal handler runs on the main thread between two
        # bytecodes, possibly while that thread is inside ``Event.wait`` holding the Event's
        # lock, and ``Event.set`` would then wait for that lock forever. Waiting polls instead.
        self._requested_at: float | None = None
        self._forced = False
        self._previous: dict[int, object] = {}

    # ------------------------------------------------------------------ handlers
    def install(self) -> GracefulShutdown:
        """Set the handlers (main thread only; elsewhere a no-op, the caller polls instead)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current != self._handle:
                self._previous.setdefault(sig, current)
                signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put the handlers back that were there before :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> GracefulShutdown:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, signum, frame) -> None:
        # Takes no lock (see __init__): only attributes are set.
        self.signals_received += 1
        if self._requested_at is not None:
            self._forced = True  # a second signal: stop waiting for the work in flight
            return
        self.request(signal.Signals(signum).name)

    # ------------------------------------------------------------------ state
    def request(self, reason: str = "requested") -> None:
        """Ask for a stop without a signal (e.g. when a run ends on its own). Any thread."""
        if self._requested_at is None:
            self.reason = reason
            self._requested_at = time.monotonic()  # set last: it is the flag the waiters read

    @property
    def requested(self) -> bool:
        return self._requested_at is not None

    @property
    def forced(self) -> bool:
        return self._forced

    def wait(self, timeout: float | None = None, poll_s: float = 0.2) -> bool:
        """Block until a stop is requested (True) or ``timeout`` passes (False). Polls every
        ``poll_s``; a signal handler runs within the sleep and is seen at the next poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._requested_at is None:
            left = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
            if left <= 0:
                return False
            time.sleep(left)
        return True

    def remaining(self) -> float:
        """Seconds left of the grace period (the full period before a stop is requested; 0 once
        forced)."""
        if self._forced:
            return 0.0
        if self._requested_at is None:
            return self.grace_s
        return max(0.0, self._requested_at + self.grace_s - time.monotonic())

    def wait_until(self, done: Callable[[], bool], poll_s: float = 0.1) -> bool:
        """Poll ``done()`` until it is true (True), or the grace period is over or forced (False)."""
        while True:
            if done():
                return True
            left = self.remaining()
            if left <= 0:
                return False
            time.sleep(min(poll_s, left))

    # ------------------------------------------------------------------ the stop itself
    def shutdown(self, drain: Callable[[float], bool] | None = None, stop: Callable[[], None] | None = None,
                 ) -> ShutdownReport:
        """Run ``drain(seconds_left)`` (returns whether everything in flight finished; it should
        give up when the seconds run out, e.g. through :meth:`wait_until`), then ``stop()``.
        ``stop`` runs even when ``drain`` fails; errors of either are reported, not raised."""
        self.request()
        report = ShutdownReport(reason=self.reason or "requested", grace_s=self.grace_s)
        t0 = time.monotonic()
        if drain is not None:
            try:
                report.drained = bool(drain(self.remaining()))
            except Exception as exc:  # stopping anyway
                report.drained = False
                report.errors.append(f"drain: {type(exc).__name__}: {exc}")
        report.forced = self.forced
        report.drain_s = time.monotonic() - t0
        t1 = time.monotonic()
        if stop is not None:
            try:
                stop()
            except Exception as exc:
                report.errors.append(f"stop: {type(exc).__name__}: {exc}")
        report.stop_s = time.monotonic() - t1
        return report


def descendants(pid: int | None = None) -> list:
    """The live descendant processes of ``pid`` (default: this process), as psutil processes."""
    import psutil

    try:
        return psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def reap_children(timeout_s: float = 5.0, pid: int | None = None) -> list[str]:
    """End every descendant process of ``pid`` (default: this one) still running: SIGTERM, then
    SIGKILL for those that do not exit within ``timeout_s``. Returns ``name(pid)`` of each one
    that had to be ended (empty when the command had already stopped everything it started)."""
    import psutil

    procs = descendants(pid)
    if not procs:
        return []
    names = []
    for p in procs:
        try:
            names.append(f"{p.name()}({p.pid})")
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    return names


# ---------------------------------------------------------------------------- signals to the group
OWN_SESSION_ENV = "RAGPRESS_SUPERVISOR_PID"
"""Set in the worker process of :func:`run_in_own_session` (the supervisor's pid)."""

_FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGTERM}


def run_in_own_session(argv: list[str]) -> int | None:
    """Run ``python -m ragpress.cli ARGV`` as a child in a session of its own, forward the stop
    signals this process gets to it, and return its exit code; None in that child (it does the
    work) or where shielding is off (``RAGPRESS_NO_SUPERVISOR=1``, Windows).

    Why: a long-running command starts Ray, whose processes (GCS, raylet, the replicas and
    workers) are its children and share its process group. A signal to the whole group (``kill
    -TERM -PGID``, a supervisor or container runtime that signals the group, Ctrl-C's SIGINT to
    the terminal's foreground group) would reach them too, and the command, while draining, would
    find its own Ray gone. In a session of its own the command's Ray sees only what the command
    decides; this small supervisor process (no Ray, no models) takes the group's signal and
    passes it on once. SIGHUP (the terminal went away) is passed on as SIGTERM. If the supervisor
    itself is SIGKILLed, the child gets SIGKILL too (``PR_SET_PDEATHSIG``), as the command would
    have without a supervisor. (systemd's default ``KillMode=control-group`` signals every process
    of the unit's cgroup, sessions or not: use ``KillMode=mixed``, see ``deploy/``.)"""
    import subprocess
    import sys

    if os.environ.get(OWN_SESSION_ENV):
        _die_with_supervisor(int(os.environ[OWN_SESSION_ENV]))
        return None
    if os.environ.get("RAGPRESS_NO_SUPERVISOR") == "1" or not hasattr(os, "setsid"):
        return None
    env = {**os.environ, OWN_SESSION_ENV: str(os.getpid())}
    child = subprocess.Popen([sys.executable, "-m", "ragpress.cli", *argv], env=env, start_new_session=True)

    def forward(signum, _frame) -> None:
        try:
            child.send_signal(_FORWARDED[signum])
        except ProcessLookupError:  # already gone
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    code = child.wait()  # interrupted by a forwarded signal, the wait goes on (PEP 475)
    return 128 - code if code < 0 else code


def _die_with_supervisor(supervisor: int) -> None:
    """In the child: SIGKILL when the supervisor dies (Linux), and exit at once if it already has."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != supervisor:  # it died before the line above
        os._exit(1)
