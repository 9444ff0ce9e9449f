"""The documentation cannot rot: the site builds with ``mkdocs build --strict`` (a broken link,
anchor or API reference fails it), and every Python and shell example in README.md and docs/ runs.

Examples are found and run with **Sybil** (``sybil``): it parses Markdown fences itself, keeps one
namespace per document (an example may use what an earlier one on the same page defined, as a
reader would), runs custom evaluators (the shell one below), and has a skip directive that takes
a reason. pytest-examples (pydantic's) is pre-1.0 and built around linting and formatting its
examples with ruff / black, which these pages do not need; mktestdocs runs Python and bash
fences but has no skip-with-reason and no per-document state. Sybil is maintained (10.x, 2026).

* ```` ```python ```` fences run in-process, in one namespace per page, with the offline models;
* ```` ```bash ```` fences run with ``bash -euo pipefail`` from the repository root, the venv's
  ``ragpress`` and ``python`` first on PATH; ``curl`` fails on an HTTP error (``--fail-with-body``)
  unless the example prints the status itself (``-w``);
* both talk to ONE service per test session: ``ragpress serve`` started as a user would (its own
  Ray, in its own session) with a real ``redis-server`` as its segment cache. In the examples'
  text ``http://127.0.0.1:8000`` stands for its URL, ``redis://127.0.0.1:6379/0`` for its Redis,
  and ``/tmp/`` for a folder of this test session;
* an example that cannot run here is marked just before its fence with
  ``<!-- skip: next "the reason" -->`` (a GPU, a model hub id, a cluster, a command that never
  returns); the reason is required, and the marked examples are counted, by reason, in the
  test's output and in ``test-artifacts/docs_examples.json``;
* other fence languages (``yaml``, ``json``, ``text``, ``ini``) are not examples; the shell and
  Python spellings this test would not run (``sh``, ``console``, ``py``, ...) are refused, and so
  is an unmarked shell example that would change the machine (``pip install``, ``apt-get``,
  ``sudo``, ``ray stop``): it fails instead of running.

The service starts only when a selected page needs it (its text names the service's URL or its
Redis): ``pytest tests/test_docs.py -k concepts`` runs without one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from unittest import SkipTest

import pytest

sybil = pytest.importorskip("sybil", reason="the docs tools are in the dev extra: pip install -e '.[dev]'")
from sybil import Document  # noqa: E402
from sybil.evaluators.python import pad  # noqa: E402
from sybil.evaluators.skip import Skipper  # noqa: E402
from sybil.parsers.markdown import CodeBlockParser, SkipParser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SERVICE_URL = "http://127.0.0.1:8000"
REDIS_URL = "redis://127.0.0.1:6379/0"
NEEDS_SERVICE = re.compile(r"(127\.0\.0\.1|localhost):8000|redis://127\.0\.0\.1:6379")
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`{]*)", re.M)
NOT_RUN_SPELLINGS = {"sh", "shell", "console", "zsh", "py", "python3", "pycon", "ipython", "shell-session"}
SKIP = re.compile(r"<!--\s*skip:(?P<rest>[^\n]*)")
SKIP_WITH_REASON = re.compile(r'<!-- skip: next "[^"]+" -->$')
# what an example must never do to the machine the tests run on, unless it is marked
CHANGES_THE_MACHINE = re.compile(r"\b(pip3?|uv pip|apt-get|apt|brew|conda)\s+install\b|\bsudo\b|\bsystemctl\b|\bray stop\b")
SERVICE_YAML = """\
compressors: [{method: exit}, {method: embed-sentences}, {method: truncate}]
encoder: {method: arc}
cache: {url: "%s"}
limits: {timeout_s: 120, max_new_tokens: 32}
reader: {name: local, config: {max_new_tokens: 16}}
"""
SHELL_PRELUDE = """\
curl() {  # an HTTP error fails the example, unless it prints the status itself (-w)
  case " $* " in
    *" -w "*|*" --write-out "*) command curl --max-time 300 "$@" ;;
    *) command curl --fail-with-body --max-time 300 "$@" ;;
  esac
}
"""


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------------------- the session's service
@dataclass
class DocsEnv:
    """Where the examples run: the substitutions for their text, the shell's environment."""

    tmp: Path
    url: str | None = None
    redis_url: str | None = None
    tally: Counter = field(default_factory=Counter)  # ("run" | "marked: <reason>") -> examples
    pages: dict[str, dict[str, int]] = field(default_factory=dict)
    service_start_s: float | None = None

    def substitute(self, source: str) -> str:
        if self.url:
            host = self.url.removeprefix("http://")
            source = source.replace(SERVICE_URL, self.url).replace("http://localhost:8000", self.url)
            source = source.replace("localhost:8000", host).replace("127.0.0.1:8000", host)
        if self.redis_url:
            source = source.replace(REDIS_URL, self.redis_url)
        return source.replace("/tmp/", f"{self.tmp}/")

    def shell_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        return env


class DocsService:
    """``ragpress serve`` with a config of its own and a real redis-server, started once."""

    def __init__(self, tmp: Path):
        from ragpress.services.redis_server import RedisServer, free_port

        self.redis = RedisServer().start()
        self.port = free_port()
        self.ray_tmp = tempfile.mkdtemp(prefix="rpdocs-", dir="/tmp")  # short: Ray's socket paths must fit
        config = tmp / "docs-service.yaml"
        config.write_text(SERVICE_YAML % self.redis.url)
        env = DocsEnv(tmp).shell_env()
        env.update(RAY_TMPDIR=self.ray_tmp, OMP_NUM_THREADS="1")
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(BIN / "ragpress"), "serve", "--config", str(config), "--port", str(self.port), "--grace-period", "10"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ragpress is serving at" in line:
                self.ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout_s: float = 420) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the docs service did not start:\n" + "".join(self.lines[-60:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # drains, then exits 0 (the supervisor forwards it)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.redis.stop()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory, request):
    env = DocsEnv(tmp_path_factory.mktemp("docs"))
    yield env
    _report(env, request.config)


@pytest.fixture(scope="module")
def docs_service(docs_env):
    if not (BIN / "ragpress").exists():
        pytest.skip("the ragpress console script is not installed next to the interpreter")
    t0 = time.monotonic()
    service = DocsService(docs_env.tmp)
    try:
        service.wait()
        docs_env.service_start_s = time.monotonic() - t0
        docs_env.url, docs_env.redis_url = service.url, service.redis.url
        yield service
    finally:
        service.stop()


class _Summary:
    """A plugin registered by the fixture: the count goes into pytest's terminal summary."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.lines:
            terminalreporter.section("docs examples")
            for line in self.lines:
                terminalreporter.write_line(line)


def _report(env: DocsEnv, config) -> None:
    if not env.tally:
        return
    run = env.tally.get("run", 0)
    marked = {k.removeprefix("marked: "): v for k, v in env.tally.items() if k.startswith("marked: ")}
    lines = [f"docs examples: {run} run, {sum(marked.values())} marked as not runnable here "
             f"({len(env.pages)} pages)"]
    lines += [f"  marked ({n}): {reason}" for reason, n in sorted(marked.items(), key=lambda kv: (-kv[1], kv[0]))]
    if env.service_start_s is not None:
        lines.append(f"  (the session's service took {env.service_start_s:.0f} s to start)")
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "docs_examples.json").write_text(json.dumps({"run": run, "marked": marked, "pages": env.pages,
                                                                  "service_start_s": env.service_start_s}, indent=2))
    summary = _Summary()
    summary.lines = lines
    config.pluginmanager.register(summary, f"ragpress-docs-summary-{id(env)}")


# ---------------------------------------------------------------------------- evaluators
def _python(env: DocsEnv):
    def evaluate(example) -> None:
        __tracebackhide__ = True
        source = pad(env.substitute(str(example.parsed)), example.line + example.parsed.line_offset)
        code = compile(source, example.path, "exec", dont_inherit=True)
        exec(code, example.namespace)
        example.namespace.pop("__builtins__", None)

    return evaluate


def _bash(env: DocsEnv):
    def evaluate(example) -> None:
        if found := CHANGES_THE_MACHINE.search(str(example.parsed)):
            raise AssertionError(f"{_rel(Path(example.path))}:{example.line}: this example would run "
                                 f"{found.group(0)!r} on the test machine: mark it with <!-- skip: next \"why\" -->")
        script = SHELL_PRELUDE + env.substitute(str(example.parsed))
        try:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env.shell_env(),
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{example.path}:{example.line}: shell example ran over 600 s\n{exc.stdout}") from None
        if proc.returncode != 0:
            raise AssertionError(f"{_rel(Path(example.path))}:{example.line}: shell example exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")

    return evaluate


def _parse(path: Path, env: DocsEnv) -> Document:
    parsers = [CodeBlockParser("python", _python(env)), CodeBlockParser("bash", _bash(env)), SkipParser()]
    return Document.parse(str(path), *parsers)


# ---------------------------------------------------------------------------- tests
def test_every_example_is_run_or_marked_with_a_reason():
    """A fence the runner would not run (``sh``, ``console``, ...) or a skip without a reason
    would let an example rot unseen."""
    problems = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        fences = FENCE.findall(text)
        opening = fences[0::2] if all(len(f[1]) == 0 for f in fences[1::2]) else fences
        for _fence, lang in opening:
            if lang.lower() in NOT_RUN_SPELLINGS:
                problems.append(f"{_rel(page)}: a ```{lang} fence (write ```bash or ```python, or mark it)")
        for m in SKIP.finditer(text):
            line = text[m.start():text.index("\n", m.start())].strip()
            if not SKIP_WITH_REASON.match(line):
                problems.append(f"{_rel(page)}: {line!r}: write <!-- skip: next \"the reason\" -->")
    assert not problems, "\n".join(problems)


def test_site_builds_strict(tmp_path):
    mkdocs = BIN / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is in the dev extra: pip install -e '.[dev]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "ragpress batch" in cli and "--grace-period" in cli  # generated from the parser
    rest = (site / "reference" / "rest-api" / "index.html").read_text(encoding="utf-8")
    assert "/v1/chat/completions" in rest and "CompressRequestBody" in rest  # from the OpenAPI schema
    assert json.loads((site / "reference" / "openapi.json").read_text())["paths"]["/v1/compress"]
    api = (site / "reference" / "python-api" / "index.html").read_text(encoding="utf-8")
    assert "CompressionRequest" in api and "create_compressor" in api  # mkdocstrings rendered the docstrings
    assert (site / "benchmarks" / "results" / "quality_hotpotqa.png").exists()


@pytest.mark.parametrize("page", PAGES, ids=[_rel(p) for p in PAGES])
def test_examples_run(page, docs_env, request):
    text = page.read_text(encoding="utf-8")
    if NEEDS_SERVICE.search(text):
        request.getfixturevalue("docs_service")
    document = _parse(page, docs_env)
    counts = {"run": 0, "marked": 0}
    from ragpress.core.registry import compressors

    registered = dict(getattr(compressors, "_registered", {}))  # a page may @register a toy method
    try:
        _run(document, docs_env, counts)
    finally:
        if hasattr(compressors, "_registered"):
            compressors._registered.clear()
            compressors._registered.update(registered)
    docs_env.pages[_rel(page)] = counts


def _run(document, docs_env: DocsEnv, counts: dict[str, int]) -> None:
    for example in document:
        if isinstance(example.region.evaluator, Skipper):
            example.evaluate()  # the skip directive itself: arms the skip of the next example
            continue
        try:
            example.evaluate()
        except SkipTest as skip:
            docs_env.tally[f"marked: {skip}"] += 1
            counts["marked"] += 1
            continue
        docs_env.tally["run"] += 1
        counts["run"] += 1
