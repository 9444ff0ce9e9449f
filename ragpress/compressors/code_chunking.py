"""Split source code into function / class / top-level-block chunks (LongCodeZip's coarse units).

Chunks are contiguous line ranges that tile the file: ``"".join(code[a:b] for a, b in chunks) ==
code``, so every kept chunk maps back to exact character offsets.

Parsers, best first:

1. Python: the standard library ``ast`` (exact, but needs a file that parses);
2. Python / Java / JavaScript / C#: ``tree-sitter`` with the grammar wheels
   (``tree-sitter-python``, ``tree-sitter-java``, ...). Error tolerant, so it also chunks the
   truncated files a completion context is made of;
3. fallback for anything else (unknown language, grammar not installed): a line regex that starts
   a chunk at each definition line (``def``/``class``/``function``/``fn``/``func`` or a
   C-family method signature), the same idea as the LongCodeZip reference's regex splitter.

A chunk starts at a definition's first decorator / attribute line; the lines between definitions
(imports, constants, statements) form "top-level block" chunks. Class bodies are split into one
chunk per method, the class header (and its fields) being a chunk of its own.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from dataclasses import dataclass

#: languages with a tree-sitter grammar wheel: ragpress name -> (module, grammar entry point)
_TS_GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "java": ("tree_sitter_java", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "csharp": ("tree_sitter_c_sharp", "language"),
}
_LANG_ALIASES = {"py": "python", "js": "javascript", "c#": "csharp", "cs": "csharp", "c_sharp": "csharp",
                 "typescript": "javascript", "ts": "javascript"}
#: tree-sitter node types that start a chunk; containers are descended into (one level of methods)
_TS_DEFS = {
    "function_definition", "class_definition", "decorated_definition",  # python
    "method_declaration", "constructor_declaration", "class_declaration", "interface_declaration",
    "enum_declaration", "record_declaration", "struct_declaration",  # java / c#
    "function_declaration", "generator_function_declaration", "method_definition",  # js
    "namespace_declaration", "file_scoped_namespace_declaration",
}
_TS_CONTAINERS = {"class_definition", "decorated_definition", "class_declaration", "interface_declaration",
                  "enum_declaration", "record_declaration", "struct_declaration", "namespace_declaration",
                  "file_scoped_namespace_declaration", "block", "class_body", "declaration_list",
                  "enum_body", "interface_body"}
_FALLBACK_DEF = re.compile(
    r"^\s*(?:@\w|(?:async\s+)?def\s|class\s|function\s|fn\s|func\s|"
    r"(?:(?:public|private|protected|internal|static|final|abstract|override|virtual|async|"
    r"synchronized|export|pub)\s+)+[\w<>\[\],.?\s]*\w\s*\()"
)


@dataclass(frozen=True)
class CodeChunk:
    """``code[start:end]``: a function, class (header) or top-level block; ``kind`` says which."""

    start: int
    end: int
    kind: str  # "function" | "class" | "block"


def normalize_language(language: str | None) -> str:
    """Canonical lower-case language name (``py`` -> ``python``, ``c#`` -> ``csharp``)."""
    lang = (language or "").strip().lower()
    return _LANG_ALIASES.get(lang, lang)


_LANG_HINTS = {
    "python": [r"^\s*def \w+\(.*\):\s*$", r"^\s*(from \S+ )?import \w", r"^\s*class \w+.*:\s*$", r"\bself\.", r"\.py\s*$"],
    "java": [r"^\s*package [\w.]+;", r"^\s*import java", r"@Override", r"\bString\b", r"\.java\s*$",
             r"\bextends\b", r"\bnew \w+\("],
    "csharp": [r"^\s*using System", r"^\s*namespace \w", r"\{\s*get;", r"\bglobal::", r"\bstring\b",
               r"\.cs\s*$", r"\bvar \w+ ="],
    "javascript": [r"\bfunction\b", r"=>", r"\b(const|let) \w+ =", r"require\(", r"\.js\s*$"],
}


def guess_language(code: str) -> str:
    """A cheap guess for unlabelled code (python, java, csharp or javascript): the language whose
    tell-tale patterns match most lines of the first 20,000 characters."""
    head = code[:20000]
    scores = {lang: sum(len(re.findall(p, head, re.M)) for p in pats) for lang, pats in _LANG_HINTS.items()}
    brace_lines = len(re.findall(r"[;{}]\s*$", head, re.M))
    if brace_lines > max(10, head.count("\n") // 10):  # C-family code: statements end in ; { }
        scores["python"] = -1
    elif brace_lines == 0:
        scores["python"] += 1000
    return max(scores, key=lambda k: (scores[k], k == "python"))


def comment_marker(language: str) -> str:
    """Line-comment marker of ``language`` (``#`` or ``//``)."""
    return "#" if normalize_language(language) in {"python", "ruby", "shell", "bash", "r", "perl", "yaml"} else "//"


@functools.lru_cache(maxsize=8)
def _ts_parser(language: str):
    """A tree-sitter parser for ``language``, or None when the grammar wheel is missing."""
    spec = _TS_GRAMMARS.get(language)
    if spec is None:
        return None
    try:
        import tree_sitter as ts

        grammar = getattr(importlib.import_module(spec[0]), spec[1])()
        return ts.Parser(ts.Language(grammar))
    except Exception:  # ImportError, ABI mismatch: use the fallback
        return None


def available_parser(language: str) -> str:
    """Which parser :func:`split_code` uses for ``language``: ``ast``, ``tree-sitter`` or ``regex``."""
    language = normalize_language(language)
    if language == "python":
        return "ast"
    return "tree-sitter" if _ts_parser(language) is not None else "regex"


def _line_starts(code: str) -> list[int]:
    starts = [0]
    starts.extend(m.end() for m in re.finditer("\n", code))
    if starts[-1] == len(code) and len(starts) > 1:
        starts.pop()
    return starts


def _tile(code: str, boundaries: dict[int, str]) -> list[CodeChunk]:
    """Chunks from line-number boundaries {line: kind}; line 0 always starts a chunk."""
    starts = _line_starts(code)
    marks = sorted({ln: k for ln, k in boundaries.items() if 0 <= ln < len(starts)}.items())
    if not marks or marks[0][0] != 0:
        marks.insert(0, (0, "block"))
    chunks = []
    for i, (ln, kind) in enumerate(marks):
        a = starts[ln]
        b = starts[marks[i + 1][0]] if i + 1 < len(marks) else len(code)
        if b > a:
            chunks.append(CodeChunk(a, b, kind))
    return chunks


def _with_block_after(boundaries: dict[int, str], ends: list[int], n_lines: int) -> dict[int, str]:
    """Mark the line after each definition's end as a 'block' start (unless something starts there)."""
    for end in ends:
        if end < n_lines and end not in boundaries:
            boundaries[end] = "block"
    return boundaries


def _split_ast(code: str) -> list[CodeChunk] | None:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    bounds: dict[int, str] = {}
    ends: list[int] = []
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

    def visit(body, depth: int):
        for node in body:
            if isinstance(node, defs):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
                bounds[first] = "class" if isinstance(node, ast.ClassDef) else "function"
                ends.append(node.end_lineno)
                if isinstance(node, ast.ClassDef) and depth == 0:
                    visit(node.body, depth + 1)

    visit(tree.body, 0)
    n = len(_line_starts(code))
    return _tile(code, _with_block_after(bounds, ends, n))


def _split_tree_sitter(code: str, language: str) -> list[CodeChunk] | None:
    parser = _ts_parser(language)
    if parser is None:
        return None
    data = code.encode("utf-8")
    tree = parser.parse(data)
    # tree-sitter reports byte rows; rows are line numbers in both encodings
    bounds: dict[int, str] = {}
    ends: list[int] = []

    def visit(node, depth: int):
        for child in node.children:
            if child.type in _TS_DEFS:
                kind = "class" if ("class" in child.type or child.type in {"interface_declaration",
                                  "enum_declaration", "struct_declaration", "record_declaration"}) else "function"
                if child.type in {"namespace_declaration", "file_scoped_namespace_declaration"}:
                    kind = "block"
                row = child.start_point[0]
                # attach immediately preceding comments / annotations to the definition
                prev = child.prev_sibling
                while prev is not None and prev.type in {"comment", "line_comment", "block_comment", "decorator"} \
                        and prev.end_point[0] >= row - 1:
                    row = prev.start_point[0]
                    prev = prev.prev_sibling
                bounds.setdefault(row, kind)
                ends.append(child.end_point[0] + 1)
                if child.type in _TS_CONTAINERS and depth < 3:
                    visit(child, depth + 1)
            elif child.type in _TS_CONTAINERS or child.type == "ERROR":
                if depth < 3:
                    visit(child, depth + 1)

    visit(tree.root_node, 0)
    if not bounds:
        return None
    n = len(_line_starts(code))
    return _tile(code, _with_block_after(bounds, ends, n))


def _split_regex(code: str) -> list[CodeChunk]:
    bounds: dict[int, str] = {}
    lines = code.split("\n")
    prev_def = False
    for i, line in enumerate(lines):
        is_def = bool(_FALLBACK_DEF.match(line)) and not line.rstrip().endswith(";")
        if is_def and not prev_def:  # a decorator followed by its def stays one chunk
            bounds[i] = "class" if re.match(r"^\s*(?:\w+\s+)*class\s", line) else "function"
        prev_def = is_def and line.lstrip().startswith("@")
    return _tile(code, bounds)


def split_code(code: str, language: str | None = None) -> list[CodeChunk]:
    """Chunks of ``code`` (see module docstring); ``language`` None guesses it.

    >>> code = "import os\\n\\ndef f():\\n    return 1\\n"
    >>> [code[c.start:c.end] for c in split_code(code, "python")]
    ['import os\\n\\n', 'def f():\\n    return 1\\n']
    """
    if not code:
        return []
    language = normalize_language(language) or guess_language(code)
    chunks = None
    if language == "python":
        chunks = _split_ast(code)
    if chunks is None:
        chunks = _split_tree_sitter(code, language)
    if chunks is None:
        chunks = _split_regex(code)
    return chunks
