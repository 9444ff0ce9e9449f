"""Structure-aware units: the pieces of a passage an extractive compressor scores and keeps.

Prose is split into sentences (:func:`~ragpress.core.sentences.split_sentences`); structured
text is split along its structure, so that a unit is small enough to fit a budget and carries
what it needs to be read on its own:

* markdown and HTML tables: one unit per row; the header row (and the separator / ``<table>``
  tags) is the row's *context*, rendered with it;
* JSON (a passage that is a JSON document, or a fenced ``json`` block): one unit per value
  small enough to read whole (each record of an array of records, a small object, a leaf),
  with its key path; kept values are
  rendered as a pruned JSON document that still parses;
* lists: one unit per item (with its continuation lines);
* fenced code blocks: one unit per line, the fence lines as context;
* headings: the context of every unit of the section they head;
* chat transcripts (``Speaker: text`` lines): one unit per turn, or per sentence of a long turn
  with the speaker label as context.

Every unit is an exact span ``text[start:end]``; context spans are exact too.

>>> t = "| city | pop |\\n|---|---|\\n| Berlin | 3.7M |\\n| Paris | 2.1M |"
>>> [(t[s.start:s.end], [t[a:b] for a, b in s.context]) for s in segment(t)][0]
('| Berlin | 3.7M |', ['| city | pop |', '|---|---|'])
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ragpress.core.sentences import DEFAULT_MAX_CHARS, split_sentences, strip_span

#: a JSON value whose compact form is at most this long is one unit (a record of an array...)
JSON_UNIT_CHARS = 160
#: a chat turn longer than this is split into sentences (speaker label as context)
TURN_CHARS = 400


@dataclass(frozen=True)
class Segment:
    """``text[start:end]`` of kind ``sentence | row | item | code | turn | json``; ``context``
    spans are kept (rendered) with it; JSON values carry their ``path`` and the ``block`` (span of
    the JSON document) they belong to."""

    start: int
    end: int
    kind: str = "sentence"
    context: tuple[tuple[int, int], ...] = ()
    path: tuple = ()
    block: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+-]*)")
_HEADING = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+\S")
_TABLE_SEP = re.compile(r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$")
_LIST_ITEM = re.compile(r"^([ \t]*)([-*+•]|\d{1,3}[.)])[ \t]+\S")
_SPEAKER = re.compile(r"^[ \t]*(\*\*)?([A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,2}|[Uu]ser|[Aa]ssistant|[Ss]ystem|Q|A)(\*\*)?[ \t]*[:：](\*\*)?[ \t]+\S")
_HTML_TABLE = re.compile(r"<table\b[^>]*>.*?</table\s*>", re.S | re.I)
_HTML_ROW = re.compile(r"<tr\b[^>]*>.*?</tr\s*>", re.S | re.I)


def segment(text: str, language: str | None = "auto", max_chars: int = DEFAULT_MAX_CHARS) -> list[Segment]:
    """Units of ``text`` in source order (see the module docstring)."""
    stripped = text.strip()
    if stripped[:1] in "{[":
        doc = _json_doc(text)
        if doc is not None:
            return doc
    if "\n" not in text and "<table" not in text.lower():  # one line of prose: sentences, as before
        return [Segment(a, b) for a, b in split_sentences(text, language, max_chars)]
    return _blocks(text, language, max_chars)


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, end excluding the newline."""
    out, pos = [], 0
    for line in text.split("\n"):
        out.append((pos, pos + len(line)))
        pos += len(line) + 1
    return out


def _blocks(text: str, language, max_chars) -> list[Segment]:
    lines = _lines(text)
    segs: list[Segment] = []
    headings: list[tuple[int, tuple[int, int]]] = []  # (level, span) of the open headings

    def ctx() -> tuple[tuple[int, int], ...]:
        return tuple(s for _, s in headings)

    # HTML tables are found on the whole text; their lines are skipped below
    html = [(m.start(), m.end()) for m in _HTML_TABLE.finditer(text)]
    speakers = [i for i, (a, b) in enumerate(lines) if _SPEAKER.match(text[a:b])]
    dialogue = len(speakers) >= 2 and len({_SPEAKER.match(text[lines[i][0]:lines[i][1]]).group(2) for i in speakers}) >= 2

    prose: list[int] = []  # line indexes of the pending prose run

    def flush():
        if prose:
            a, b = lines[prose[0]][0], lines[prose[-1]][1]
            c = ctx()
            segs.extend(Segment(x, y, context=c) for x, y in split_sentences(text[a:b], language, max_chars)
                        for x, y in [(a + x, a + y)])
            prose.clear()

    i, n = 0, len(lines)
    while i < n:
        a, b = lines[i]
        line = text[a:b]
        tbl = next(((s, e) for s, e in html if s < b and e > a), None)
        if tbl is not None:
            flush()
            segs.extend(_html_table(text, tbl, ctx()))
            while i < n and lines[i][0] < tbl[1]:
                i += 1
            continue
        if not line.strip():
            flush()
            i += 1
            continue
        m = _FENCE.match(line)
        if m:
            flush()
            j = i + 1
            while j < n and not text[lines[j][0]:lines[j][1]].strip().startswith(m.group(1)):
                j += 1
            close = lines[j] if j < n else None
            body = (lines[i + 1][0], lines[j - 1][1]) if j > i + 1 else None
            fence_ctx = ctx() + ((a, b),) + ((close,) if close else ())
            doc = None
            if body and m.group(2).lower() in ("json", "jsonc", "json5"):
                doc = _json_doc(text, body, fence_ctx)
            if doc is not None:
                segs.extend(doc)
            elif body:
                for k in range(i + 1, j):
                    x, y = strip_span(text, *lines[k])
                    if y > x:
                        # code lines keep their indentation: start at the line start
                        segs.append(Segment(lines[k][0], y, "code", fence_ctx))
            i = j + 1
            continue
        hm = _HEADING.match(line)
        if hm:
            flush()
            level = len(hm.group(1))
            headings[:] = [h for h in headings if h[0] < level] + [(level, strip_span(text, a, b))]
            i += 1
            continue
        if "|" in line and i + 1 < n and _TABLE_SEP.match(text[lines[i + 1][0]:lines[i + 1][1]]):
            flush()
            head = (strip_span(text, a, b), strip_span(text, *lines[i + 1]))
            j = i + 2
            while j < n and "|" in text[lines[j][0]:lines[j][1]] and text[lines[j][0]:lines[j][1]].strip():
                x, y = strip_span(text, *lines[j])
                segs.append(Segment(x, y, "row", ctx() + head))
                j += 1
            i = j
            continue
        lm = _LIST_ITEM.match(line)
        if lm:
            flush()
            indent = len(lm.group(1))
            j = i + 1
            while j < n:
                nxt = text[lines[j][0]:lines[j][1]]
                if not nxt.strip() or _LIST_ITEM.match(nxt) or _FENCE.match(nxt) or _HEADING.match(nxt):
                    break
                if len(nxt) - len(nxt.lstrip()) <= indent:  # not a continuation line
                    break
                j += 1
            x, y = strip_span(text, a, lines[j - 1][1])
            segs.extend(Segment(s, e, "item", ctx()) for s, e in _split_long(text, x, y, language, max_chars))
            i = j
            continue
        if dialogue and _SPEAKER.match(line):
            flush()
            j = i + 1
            while j < n and text[lines[j][0]:lines[j][1]].strip() and not _SPEAKER.match(text[lines[j][0]:lines[j][1]]):
                j += 1
            x, y = strip_span(text, a, lines[j - 1][1])
            sm = _SPEAKER.match(line)
            label_end = a + line.index(":" if ":" in line[:sm.end()] else "：") + 1
            if y - x <= TURN_CHARS:
                segs.append(Segment(x, y, "turn", ctx()))
            else:
                label = strip_span(text, x, label_end)
                body = [(label_end + s, label_end + e) for s, e in split_sentences(text[label_end:y], language, max_chars)]
                segs.extend(Segment(s, e, "turn", ctx() + (label,)) for s, e in body)
            i = j
            continue
        prose.append(i)
        i += 1
    flush()
    return segs


def _split_long(text, a, b, language, max_chars):
    if b - a <= max_chars:
        return [(a, b)]
    return [(a + x, a + y) for x, y in split_sentences(text[a:b], language, max_chars)]


def _html_table(text: str, span: tuple[int, int], ctx) -> list[Segment]:
    rows = [(m.start(), m.end()) for m in _HTML_ROW.finditer(text, span[0], span[1])]
    if not rows:
        return [Segment(*strip_span(text, *span), "row", ctx)]
    open_tag = (span[0], text.index(">", span[0]) + 1)
    close_tag = (text.rindex("<", span[0], span[1]), span[1])
    head = ()
    if "<th" in text[rows[0][0]:rows[0][1]].lower():
        head, rows = (rows[0],), rows[1:]
    return [Segment(a, b, "row", ctx + (open_tag,) + head + (close_tag,)) for a, b in rows]


# --------------------------------------------------------------------------------------- JSON
_STR = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LIT = re.compile(r"true|false|null")
_WSP = re.compile(r"\s*")


class _JSONNode:
    __slots__ = ("start", "end", "children")

    def __init__(self, start, end, children=None):
        self.start, self.end, self.children = start, end, children  # children: [(key, node)] or None


def _scan(text: str, pos: int) -> tuple[_JSONNode, int]:
    pos = _WSP.match(text, pos).end()
    c = text[pos:pos + 1]
    if c in "{[":
        close, start, kids, k = ("}" if c == "{" else "]"), pos, [], 0
        pos = _WSP.match(text, pos + 1).end()
        if text[pos:pos + 1] == close:
            return _JSONNode(start, pos + 1, []), pos + 1
        while True:
            if c == "{":
                m = _STR.match(text, pos)
                if not m:
                    raise ValueError("key")
                key = json.loads(m.group())
                pos = _WSP.match(text, m.end()).end()
                if text[pos:pos + 1] != ":":
                    raise ValueError(":")
                pos += 1
            else:
                key, k = k, k + 1
            node, pos = _scan(text, pos)
            kids.append((key, node))
            pos = _WSP.match(text, pos).end()
            if text[pos:pos + 1] == ",":
                pos = _WSP.match(text, pos + 1).end()
                continue
            if text[pos:pos + 1] == close:
                return _JSONNode(start, pos + 1, kids), pos + 1
            raise ValueError("sep")
    for rx in (_STR, _NUM, _LIT):
        m = rx.match(text, pos)
        if m:
            return _JSONNode(m.start(), m.end()), m.end()
    raise ValueError("value")


def _json_doc(text: str, span: tuple[int, int] | None = None, ctx=()) -> list[Segment] | None:
    a, b = strip_span(text, *(span or (0, len(text))))
    try:
        root, end = _scan(text, a)
        if end != b:
            return None
        json.loads(text[a:b])
    except (ValueError, RecursionError):
        return None
    out: list[Segment] = []

    def walk(node: _JSONNode, path: tuple):
        compact = len(re.sub(r"\s+", "", text[node.start:node.end]))
        records = len(node.children or ()) > 1 and all(k.children for _, k in node.children)
        if node.children is None or not node.children or (compact <= JSON_UNIT_CHARS and path and not records):
            out.append(Segment(node.start, node.end, "json", ctx, path, (a, b)))
            return
        for key, kid in node.children:
            walk(kid, path + (key,))

    walk(root, ())
    return out


def json_path(path: tuple) -> str:
    """``orders[1].status`` for ``("orders", 1, "status")``."""
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "$"


def prune_json(values: list[tuple[tuple, str]]) -> str:
    """A JSON document holding only the given ``(path, source value text)`` pairs, paths in
    document order; arrays keep the kept elements in order. Compact, one line, parses."""
    if len(values) == 1 and not values[0][0]:
        return json.dumps(json.loads(values[0][1]), ensure_ascii=False)
    root: dict = {}
    for path, src in values:
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = json.loads(src)

    def build(node):
        if not isinstance(node, dict) or not node:
            return node
        keys = list(node)
        if all(isinstance(k, int) for k in keys):
            return [build(node[k]) for k in sorted(keys)]
        return {str(k): build(v) for k, v in node.items()}

    return json.dumps(build(root), ensure_ascii=False)


__all__ = ["Segment", "segment", "json_path", "prune_json", "JSON_UNIT_CHARS", "TURN_CHARS"]
