"""Compressors and readers from package entry points (#25). Two third-party packages are built
here from their own ``pyproject.toml`` and installed with pip into a temporary target (put on
``sys.path`` / ``PYTHONPATH``, never into the venv): ``ragpress-plugin-demo`` adds a compressor
(``demo-keywords``) and a reader (``demo-echo``); ``ragpress-plugin-broken`` declares what goes
wrong in practice (a module that does not import, a class of the wrong base, a class that says
another name, a missing attribute, a built-in's name, a name the demo package also declares).

The good plugins appear in ``ragpress methods``, work in process and through LangChain, and are
served by ``ragpress serve --methods`` (its own Ray instance), through REST and a remote LangChain
component; every broken one is a ``PluginError`` naming its package and entry point, and none of
them keeps the built-ins from loading."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ragpress.core.compressor import Compressor
from ragpress.core.errors import PluginError, UnknownCompressorError
from ragpress.core.registry import Registry, available, compressors, create_compressor, get_compressor_class
from ragpress.core.types import CompressionRequest
from ragpress.readers.registry import available_readers, create_reader, readers

RAGPRESS = Path(sys.executable).with_name("ragpress")
DEMO = "ragpress-plugin-demo"
BROKEN = "ragpress-plugin-broken"
QUERY = "Which function creates a temporary file?"
PASSAGES = [
    "The tempfile module provides secure helpers. The function mkstemp creates a temporary file and returns "
    "its handle. Bananas are yellow and rich in potassium.",
    "The Eiffel tower was finished in 1889. NamedTemporaryFile creates a temporary file that is deleted "
    "when closed.",
]

DEMO_PY = '''
"""A third-party ragpress plugin: a keyword compressor and an echo reader, built on ragpress's
public building blocks."""

import re
import time

from ragpress.core.compressor import Compressor
from ragpress.core.extractive import render, render_full, select, sentence_units, unit_text
from ragpress.readers.base import Answer, Reader


def _words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


class KeywordCompressor(Compressor):
    """Keep the sentences sharing the most words with the query (demo plugin)."""

    name = "demo-keywords"

    def _compress(self, request):
        t0 = time.perf_counter()
        units = sentence_units(request.passages)
        query = _words(request.query)
        for u in units:
            u.score = len(query & _words(unit_text(u, request.passages))) / (1 + len(query))
        before = self.counter.count(render_full(request.passages))
        kept = select(units, request.passages, request.budget, self.counter, before, query=request.query)
        text, spans = render(kept, request.passages)
        return self._result(request, text, spans, before, {"compress": time.perf_counter() - t0})


class EchoReader(Reader):
    """Answers with the number of words it was shown (demo plugin)."""

    name = "demo-echo"

    @property
    def model_id(self):
        return "demo-echo-1"

    @property
    def context_window(self):
        return 4096

    def count_tokens(self, text):
        return len(text.split())

    def prompt_tokens(self, prompt):
        return sum(len(str(m.get("content", "")).split()) for m in prompt.messages)

    def cut_text(self, text, tokens):
        return " ".join(text.split()[:tokens])

    def generate_batch(self, prompts):
        return [Answer(text=f"demo-echo read {self.prompt_tokens(p)} words", reader=self.name,
                       model_id=self.model_id, tokens_in=self.prompt_tokens(p), tokens_out=4, prefill_ms=0.0,
                       decode_ms=0.0, finish_reason="stop", batch_size=len(prompts)) for p in prompts]
'''

BROKEN_INIT = '''
from ragpress.core.compressor import Compressor


class NotACompressor:
    name = "demo-wrong-base"


class Misnamed(Compressor):
    name = "something-else"

    def _compress(self, request):
        raise NotImplementedError


class FakeExit(Compressor):
    name = "exit"

    def _compress(self, request):
        raise NotImplementedError


class Twice(Compressor):
    name = "demo-twice"

    def _compress(self, request):
        raise NotImplementedError
'''

BROKEN_DECLARED = {  # name -> (entry point value, what the error says)
    "demo-broken-import": ("ragpress_plugin_broken.needs_missing:Thing", "ModuleNotFoundError"),
    "demo-wrong-base": ("ragpress_plugin_broken:NotACompressor", "not a subclass of ragpress.core.compressor.Compressor"),
    "demo-misnamed": ("ragpress_plugin_broken:Misnamed", "class says name = 'something-else'"),
    "demo-no-such-class": ("ragpress_plugin_broken:NoSuchClass", "AttributeError"),
}


def _pyproject(name: str, compressors: dict[str, str], readers: dict[str, str], packages: str) -> str:
    lines = ["[build-system]", 'requires = ["setuptools>=61"]', 'build-backend = "setuptools.build_meta"', "",
             "[project]", f'name = "{name}"', 'version = "0.1.0"', "", "[tool.setuptools]", packages, ""]
    for group, table in (("ragpress.compressors", compressors), ("ragpress.readers", readers)):
        if table:
            lines.append(f'[project.entry-points."{group}"]')
            lines.extend(f'{k} = "{v}"' for k, v in table.items())
            lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """Both packages, built from source by pip and installed into a temporary target."""
    root = tmp_path_factory.mktemp("plugins")
    demo = root / "demo"
    demo.mkdir()
    (demo / "ragpress_plugin_demo.py").write_text(textwrap.dedent(DEMO_PY))
    (demo / "pyproject.toml").write_text(_pyproject(
        DEMO, {"demo-keywords": "ragpress_plugin_demo:KeywordCompressor", "demo-twice": "ragpress_plugin_demo:X"},
        {"demo-echo": "ragpress_plugin_demo:EchoReader"}, 'py-modules = ["ragpress_plugin_demo"]'))
    broken = root / "broken" / "ragpress_plugin_broken"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(textwrap.dedent(BROKEN_INIT))
    (broken / "needs_missing.py").write_text("import a_dependency_nobody_installed  # noqa\n\nThing = None\n")
    (broken.parent / "pyproject.toml").write_text(_pyproject(
        BROKEN, {**{k: v for k, (v, _) in BROKEN_DECLARED.items()}, "exit": "ragpress_plugin_broken:FakeExit",
                 "demo-twice": "ragpress_plugin_broken:Twice"},
        {"demo-broken-reader": "ragpress_plugin_broken.needs_missing:Thing"}, 'packages = ["ragpress_plugin_broken"]'))
    site = root / "site"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(demo),
                           str(broken.parent)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "ragpress_plugin_demo.py").is_file(), sorted(p.name for p in site.iterdir())
    print(f"plugins built and installed in {time.perf_counter() - t0:.1f} s")
    return site


@pytest.fixture
def plugins_on_path(plugin_site):
    """The plugins importable in this process for one test; the registries re-read, and again after."""
    sys.path.insert(0, str(plugin_site))
    compressors.refresh()
    readers.refresh()
    try:
        yield plugin_site
    finally:
        sys.path.remove(str(plugin_site))
        compressors.refresh()
        readers.refresh()


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


# ---------------------------------------------------------------------------- in process
def test_plugins_load_by_name_next_to_the_builtins(plugins_on_path):
    assert "demo-keywords" in compressors.names() and "demo-echo" in readers.names()  # nothing imported yet
    comp = create_compressor("demo-keywords")
    result = comp.compress(CompressionRequest.of(QUERY, PASSAGES, ratio=0.4))
    assert result.compressor == "demo-keywords" and 0 < result.tokens_after < result.tokens_before
    assert "creates a temporary file" in result.text and "Bananas" not in result.text
    assert all(PASSAGES[int(s.passage_id[1:])][s.start:s.end] == s.text for s in result.spans)
    answer = create_reader("demo-echo").read(QUERY, result.text)
    assert answer.text.startswith("demo-echo read ") and answer.model_id == "demo-echo-1"

    names = available()  # every entry point loaded: the broken ones are left out, the rest is all there
    assert "demo-keywords" in names
    assert {"exit", "truncate", "embed-sentences", "longcodezip", "tcra-summary", "arc"} <= set(names)
    assert not set(BROKEN_DECLARED) & set(names) and "demo-twice" not in names
    assert set(available_readers()) == {"local", "openai", "demo-echo"}


def test_each_broken_plugin_is_a_clear_error_naming_it(plugins_on_path):
    for name, (value, says) in BROKEN_DECLARED.items():
        with pytest.raises(PluginError) as info:
            get_compressor_class(name)
        message = info.value.message
        assert BROKEN in message and f"`{name} = {value}`" in message and says in message, message
        assert info.value.plugin == BROKEN and info.value.name == name and info.value.http_status == 500
    # a built-in's name: ragpress's own keeps it, the plugin's declaration is reported
    from ragpress.compressors.exit import ExitCompressor

    assert get_compressor_class("exit") is ExitCompressor
    # two plugins declaring one name: neither gets it, both are named
    with pytest.raises(PluginError) as info:
        get_compressor_class("demo-twice")
    assert DEMO in info.value.message and BROKEN in info.value.message
    with pytest.raises(PluginError, match="demo-broken-reader.*ModuleNotFoundError"):
        create_reader("demo-broken-reader")
    available()
    said = "\n".join(e.message for e in compressors.errors())
    assert "'exit'" in said and "ragpress's own compressor has that name" in said and BROKEN in said
    for name in [*BROKEN_DECLARED, "demo-twice"]:
        assert name in said
    with pytest.raises(UnknownCompressorError) as info:  # still the typed 422 for a name nobody declares
        get_compressor_class("no-such-method")
    assert "demo-keywords" in info.value.message and "demo-broken-import" not in info.value.message


def test_langchain_uses_a_plugin_like_a_builtin(plugins_on_path):
    from langchain_core.documents import Document

    from ragpress.integrations.langchain import RagpressCompressor

    docs = [Document(page_content=t, id=f"doc{i}", metadata={"source": f"s{i}"}) for i, t in enumerate(PASSAGES)]
    comp = RagpressCompressor(method="demo-keywords", ratio=0.5)
    out = comp.compress_documents(docs, QUERY)
    assert out and all(d.metadata["ragpress"]["compressor"] == "demo-keywords" for d in out)
    assert {d.id for d in out} <= {"doc0", "doc1"} and all(d.metadata["source"] for d in out)
    again = asyncio.run(comp.acompress_documents(docs, QUERY))
    assert [d.page_content for d in again] == [d.page_content for d in out]
    with pytest.raises(PluginError, match=BROKEN):
        RagpressCompressor(method="demo-broken-import")


def test_register_and_entry_point_rules_on_a_private_registry():
    """The same rules on a registry of its own (the global ones stay untouched)."""
    reg = Registry("compressor", "ragpress.compressors", lambda: Compressor, UnknownCompressorError)

    class Local(Compressor):
        name = "local-test-method"

        def _compress(self, request):
            raise NotImplementedError

    assert reg.register(Local) is Local and reg.get("local-test-method") is Local
    assert "local-test-method" in reg.names() and "truncate" in reg.names()
    with pytest.raises(PluginError, match="already taken"):  # a built-in's name

        class Clash(Compressor):
            name = "truncate"

        reg.register(Clash)
    with pytest.raises(PluginError, match="not a subclass"):
        reg.register(type("Plain", (), {"name": "plain"}))
    reg.refresh()
    assert reg.get("local-test-method") is Local  # registered in code: kept across a refresh


def test_every_builtin_is_declared_as_an_entry_point():
    """A compressor or reader class added to ragpress without its pyproject.toml line would be
    unreachable: every named class of the built-in modules is declared, under its own name."""
    import importlib
    import pkgutil

    import ragpress.compressors
    import ragpress.readers
    from ragpress.readers.base import Reader

    for package, base, registry in ((ragpress.compressors, Compressor, compressors),
                                    (ragpress.readers, Reader, readers)):
        defined = {}
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__ \
                        and "name" in vars(obj):
                    defined[obj.name] = f"{obj.__module__}:{obj.__qualname__}"
        declared = {d.name: d.value for d in registry.declarations().values() if d.builtin}
        assert declared == defined


def test_a_checkout_without_installed_entry_points_reads_pyproject(monkeypatch, caplog):
    """Run from a source checkout (or not reinstalled since the entry points were added): ragpress's
    own declarations come from its pyproject.toml, with a note saying to reinstall."""
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    reg = Registry("compressor", "ragpress.compressors", lambda: Compressor, UnknownCompressorError)
    with caplog.at_level("INFO", logger="ragpress.plugins"):
        assert {"exit", "truncate", "longcodezip"} <= set(reg.names())
    assert "reinstall" in caplog.text
    assert reg.get("truncate") is get_compressor_class("truncate")


# ---------------------------------------------------------------------------- the command line
def test_ragpress_methods_lists_plugins_and_says_what_is_broken(plugin_site):
    if not RAGPRESS.exists():
        pytest.skip("the ragpress console script is not installed next to the interpreter")
    done = subprocess.run([str(RAGPRESS), "methods"], capture_output=True, text=True, env=_env(plugin_site),
                          timeout=300)
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    methods, _, reader_part = out.partition("\nreaders:\n")
    lines = {ln.split()[0]: ln for ln in methods.splitlines() if ln.strip()}
    assert "demo-keywords" in lines and "query-aware" in lines["demo-keywords"] and "demo plugin" in lines["demo-keywords"]
    assert {"exit", "truncate", "embed-sentences", "arc"} <= set(lines)
    assert {ln.split()[0] for ln in reader_part.splitlines() if ln.strip()} == {"local", "openai", "demo-echo"}
    for name in [*BROKEN_DECLARED, "demo-twice", "demo-broken-reader", "exit"]:
        assert any(name in ln and ln.startswith("plugin error:") for ln in err.splitlines()), (name, err)
    assert err.count("plugin error:") == len(BROKEN_DECLARED) + 3 and BROKEN in err
    # naming a broken plugin for the service: refused before anything starts, saying why
    bad = subprocess.run([str(RAGPRESS), "serve", "--methods", "demo-broken-import,truncate", "--port", "0"],
                         capture_output=True, text=True, env=_env(plugin_site), timeout=300)
    assert bad.returncode == 2 and "demo-broken-import" in bad.stderr and BROKEN in bad.stderr, bad.stderr


# ---------------------------------------------------------------------------- the service
SERVICE_YAML = """\
compressors:
  - method: demo-keywords
    deployment: {ray_actor_options: {num_cpus: 0.2}}
  - method: truncate
    deployment: {ray_actor_options: {num_cpus: 0.2}}
retriever: null
reader: {name: demo-echo, deployment: {ray_actor_options: {num_cpus: 0.2}}}
cache: {url: "none://"}
ingress: {ray_actor_options: {num_cpus: 0.2}}
"""


@pytest.mark.ray
def test_ragpress_serve_serves_the_plugins_through_rest_and_langchain(plugin_site, tmp_path):
    """``ragpress serve --methods demo-keywords,truncate`` with the plugin reader, in its own Ray
    instance (the plugins reach its replicas through PYTHONPATH); this process has no plugin on
    its path, so the remote LangChain component gets it from the service alone."""
    import httpx
    from langchain_core.documents import Document

    from ragpress.integrations.langchain import RagpressCompressor
    from ragpress.services.redis_server import free_port

    if not RAGPRESS.exists():
        pytest.skip("the ragpress console script is not installed next to the interpreter")
    config = tmp_path / "service.yaml"
    config.write_text(SERVICE_YAML)
    ray_tmp = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    env = {**_env(plugin_site), "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen([str(RAGPRESS), "serve", "--config", str(config), "--methods", "demo-keywords,truncate",
                             "--port", str(port), "--grace-period", "10"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
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
        with httpx.Client(base_url=url, timeout=60) as http:
            methods = http.get("/v1/methods").json()
            assert {m["name"] for m in methods["methods"]} == {"demo-keywords", "truncate"}
            r = http.post("/v1/compress", json={"query": QUERY, "passages": PASSAGES, "method": "demo-keywords",
                                                "budget": {"ratio": 0.4}})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["method"] == "demo-keywords" and "creates a temporary file" in out["text"]
            assert 0 < out["tokens_after"] < out["tokens_before"]
            a = http.post("/v1/answer", json={"query": QUERY, "passages": PASSAGES, "method": "demo-keywords",
                                              "budget": {"ratio": 0.4}})
            assert a.status_code == 200, a.text
            body = a.json()
            assert body["answer"].startswith("demo-echo read ") and body["reader"]["model_id"] == "demo-echo-1"
            assert body["context"]["method"] == "demo-keywords"
        docs = [Document(page_content=t, id=f"doc{i}", metadata={"source": f"s{i}"}) for i, t in enumerate(PASSAGES)]
        remote = RagpressCompressor(endpoint=url, method="demo-keywords", ratio=0.4)
        got = remote.compress_documents(docs, QUERY)
        assert got and all(d.metadata["ragpress"]["compressor"] == "demo-keywords" for d in got)
        assert "creates a temporary file" in " ".join(d.page_content for d in got)
        again = asyncio.run(remote.acompress_documents(docs, QUERY))
        assert [(d.id, d.page_content) for d in again] == [(d.id, d.page_content) for d in got]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, "".join(lines)
