"""MkDocs hooks of the ragpress site: what can be generated from the code is, so it cannot drift.

* ``reference/cli.md``: every command's ``--help``, from :func:`ragpress.cli.build_parser`;
* ``reference/rest-api.md`` and ``reference/openapi.json``: the REST API from the FastAPI app's
  own OpenAPI schema (the app is built around a stub of the ingress: no Ray, no model);
* ``<!-- methods-table -->`` in a page: every registered method with its budget modes and defaults;
* ``<!-- errors-table -->`` in a page: the typed errors (:class:`ragpress.core.errors.RagpressError`
  and its subclasses) with their HTTP status and ``code``;
* ``<!-- include: PATH -->`` in a page: a repository file, Markdown inlined (its headings one
  level down, its relative images re-pointed), anything else as a fenced code block;
* ``benchmarks/results/*.png``: copied into the site, where the benchmark pages show them.

Everything runs offline and in a second or two; ``mkdocs build --strict`` fails on a broken link.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import types
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->$", re.M)
ERRORS_TABLE = "<!-- errors-table -->"
METHODS_TABLE = "<!-- methods-table -->"
FENCE_LANG = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".py": "python", ".toml": "toml"}


# ---------------------------------------------------------------------------- CLI
def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def cli_markdown() -> str:
    from ragpress.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: fix it
    parser = build_parser()
    out = ["# Command line", "",
           "Generated from `ragpress.cli.build_parser()` when the site is built: this is exactly what "
           "`ragpress COMMAND --help` prints. Every command exits 2 with `error: <what to fix>` on bad input.", ""]

    def walk(p: argparse.ArgumentParser, name: str, level: int) -> None:
        out.extend([f"{'#' * level} `{name}`", "", "```text", p.format_help().rstrip(), "```", ""])
        for sub, subparser in _subcommands(p):
            walk(subparser, f"{name} {sub}", min(level + 1, 4))

    walk(parser, "ragpress", 2)
    return "\n".join(out)


# ---------------------------------------------------------------------------- REST (OpenAPI)
def openapi_schema() -> dict:
    from ragpress.services.api import ServiceLimits, create_api
    from ragpress.services.metrics import ServiceMetrics

    stub = types.SimpleNamespace(limits=ServiceLimits(), metrics=ServiceMetrics(), compressors={"exit": None},
                                 retriever=None, reader=None, settings={}, default_method="exit", default_top_k=5)
    return create_api(stub).openapi()


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict) -> str:
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema or "oneOf" in schema:
        parts = [_type(s) for s in schema.get("anyOf", schema.get("oneOf", []))]
        return " \\| ".join(dict.fromkeys(parts))
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _type(schema["allOf"][0])
    t = schema.get("type")
    if t == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if t == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    return t or "any"


_BOUNDS = {"minimum": ">= {}", "maximum": "<= {}", "exclusiveMinimum": "> {}", "exclusiveMaximum": "< {}",
           "minLength": "length >= {}", "maxLength": "length <= {}", "minItems": "items >= {}",
           "maxItems": "items <= {}", "pattern": "pattern `{}`"}


def _bounds(schema: dict) -> list[str]:
    found = [fmt.format(schema[k]) for k, fmt in _BOUNDS.items() if k in schema]
    for sub in schema.get("anyOf", []):
        found += _bounds(sub)
    return found


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _fields_table(schema: dict) -> list[str]:
    props = schema.get("properties") or {}
    if not props:
        return [f"Type: {_type(schema)}", ""]
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    for name, prop in props.items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        desc = " ".join([prop.get("description", ""), *(f"({b})" for b in _bounds(prop))]).strip()
        rows.append(f"| `{name}` | {_type(prop)} | {'yes' if name in required else ''} | {_cell(default)} "
                    f"| {_cell(desc)} |")
    return [*rows, ""]


def rest_markdown(spec: dict) -> str:
    out = ["# REST API", "",
           f"Generated from the service's own OpenAPI schema ({spec['info']['title']} "
           f"{spec['info']['version']}) when the site is built; the same schema is served by a running "
           "service at `/openapi.json` (interactive at `/docs`) and is in this site as "
           "[openapi.json](openapi.json). Errors and their codes: [REST errors](errors.md).", ""]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [f"**{op['summary']}**", ""]
            if op.get("description"):
                out += [op["description"].strip(), ""]
            body = op.get("requestBody", {}).get("content", {})
            for ctype, content in body.items():
                out += [f"Request body (`{ctype}`): {_type(content.get('schema', {}))}", ""]
            params = op.get("parameters") or []
            if params:
                out += ["| parameter | in | type | description |", "|---|---|---|---|"]
                out += [f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | {_cell(p.get('description', ''))} |"
                        for p in params]
                out.append("")
            out += ["| status | meaning | body |", "|---|---|---|"]
            for status, resp in op.get("responses", {}).items():
                schemas = [_type(c["schema"]) for c in resp.get("content", {}).values() if c.get("schema")]
                out.append(f"| {status} | {_cell(resp.get('description', ''))} | {', '.join(schemas)} |")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in sorted(spec.get("components", {}).get("schemas", {}).items()):
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [_cell(schema["description"]), ""]
        out += _fields_table(schema)
    return "\n".join(out)


# ---------------------------------------------------------------------------- errors
#: what a code means, for the classes whose docstring does not say (the table comes from the classes)
MEANINGS = {
    "invalid_request": "a request the schema accepts but that cannot be served; the message says why",
    "empty_query": "a query-aware method got an empty query",
    "no_passages": "no passages to compress",
    "empty_passage": "an empty or whitespace-only passage",
    "invalid_budget": "a budget out of range, or not exactly one of ratio / tokens / threshold",
    "unsupported_budget_mode": "the method cannot honour that budget mode (`GET /v1/methods` lists each one's)",
    "unknown_method": "no such method; `available` lists the served ones",
    "unknown_reader": "no such reader",
    "invalid_config": "a method's or reader's settings do not validate",
    "document_not_utf8": "a document is not UTF-8",
    "index_not_found": "no index at that path",
    "index_build_failed": "the index could not be built",
    "payload_too_large": "the body is over `limits.max_body_bytes`; it is not read further",
    "timeout": "a stage did not answer within `limits.timeout_s`",
    "stage_unavailable": "a stage failed or lost its replica, after the ingress re-sent the call (retry)",
    "invalid_api_key": "an unknown API key",
    "missing_api_key": "no API key sent (`Authorization: Bearer <key>`)",
    "forbidden": "the key lacks the route's scope",
}


def errors_table() -> str:
    import ragpress.core.errors as core_errors
    import ragpress.services.api  # noqa: F401  (registers the ingress' errors)
    import ragpress.services.auth  # noqa: F401  (and the key checks')

    seen: dict[str, type] = {}

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            if sub.__module__.startswith(("ragpress.core", "ragpress.services")) and not sub.__name__.startswith("_"):
                seen.setdefault(f"{sub.__module__}.{sub.__name__}", sub)
            walk(sub)

    walk(core_errors.RagpressError)
    rows = ["| HTTP | `code` | class | meaning |", "|---|---|---|---|"]
    for cls in sorted(seen.values(), key=lambda c: (c.http_status, c.code, c.__name__)):
        doc = " ".join(cls.__doc__.split()) if "__doc__" in vars(cls) and cls.__doc__ else MEANINGS.get(cls.code, "")
        rows.append(f"| {cls.http_status} | `{cls.code}` | `{cls.__name__}` | {_cell(doc)} |")
    modules = sorted({c.__module__ for c in seen.values()})
    return "\n".join(rows) + "\n\nThe classes live in " + ", ".join(f"`{m}`" for m in modules) + "."


# ---------------------------------------------------------------------------- methods
def methods_table() -> str:
    from ragpress.cli import _precomputable
    from ragpress.core.registry import available, get_compressor_class

    rows = ["| method | budget modes | default budget | query-aware | code | soft tokens | precomputable |",
            "|---|---|---|---|---|---|---|"]
    for name in available():
        cls = get_compressor_class(name)
        flags = ["yes" if on else "" for on in (cls.query_aware, cls.handles_code, cls.soft_tokens, _precomputable(cls))]
        rows.append(f"| `{name}` | {', '.join(sorted(cls.budget_modes))} | `{cls.default_budget}` | {' | '.join(flags)} |")
    return "\n".join(rows) + ("\n\nGenerated from the registry when the site is built (what `ragpress methods` and "
                               "`GET /v1/methods` list); `auto` is `threshold=0.5,floor=0.2,ceiling=0.6,skip_under=256`.")


# ---------------------------------------------------------------------------- includes
def _include(match: re.Match, page_uri: str) -> str:
    rel = match.group("path")
    path = ROOT / rel
    if not path.is_file():
        raise FileNotFoundError(f"{page_uri}: <!-- include: {rel} --> names no file")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".md":
        lang = FENCE_LANG.get(path.suffix, "dockerfile" if path.name == "Dockerfile" else "text")
        return f'```{lang} title="{rel}"\n{text.rstrip()}\n```'
    text = re.sub(r"^(#{1,5}) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    base = posixpath.dirname(rel)
    page_dir = posixpath.dirname(page_uri)

    def image(m: re.Match) -> str:
        target = m.group(2)
        if "://" in target or target.startswith(("/", "#")):
            return m.group(0)
        return f"{m.group(1)}({posixpath.relpath(posixpath.join(base, target), page_dir or '.')})"

    return re.sub(r"(!\[[^\]]*\])\(([^)\s]+)\)", image, text)


# ---------------------------------------------------------------------------- mkdocs events
def on_files(files: Files, config, **kwargs) -> Files:
    files.append(File.generated(config, "reference/cli.md", content=cli_markdown()))
    spec = openapi_schema()
    files.append(File.generated(config, "reference/rest-api.md", content=rest_markdown(spec)))
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(spec, indent=2)))
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File(png.relative_to(ROOT).as_posix(), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    uri = page.file.src_uri
    markdown = INCLUDE.sub(lambda m: _include(m, uri), markdown)
    if METHODS_TABLE in markdown:
        markdown = markdown.replace(METHODS_TABLE, methods_table())
    if ERRORS_TABLE in markdown:
        markdown = markdown.replace(ERRORS_TABLE, errors_table())
    return markdown
