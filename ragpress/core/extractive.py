"""Shared machinery of extractive compressors: score units (sentences, table rows, list items,
code lines, chat turns, JSON values, passages), select them under a :class:`Budget`, render the
kept ones in original order with spans.

Rendering is the same for the full and the compressed context, so token ratios compare like
with like: each passage is ``"{title}\\n{text}"`` (or just its text), passages joined by a blank
line. In a compressed passage the kept pieces (units and the context they carry: a table's
header row, a section's heading, a code block's fences) are joined by the whitespace that stood
between them when they were adjacent in the source, else by a newline when one of them starts or
ends a line (so tables stay tables, lists lists), else by a space. Kept JSON values of a JSON
document are rendered as a pruned JSON document that parses.

Selection never returns nothing when the input had text: at least the best unit is kept, cut to
fit the budget (into its sub-values, or to its best token window) when it is larger.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass

from ragpress.core.sentences import DEFAULT_MAX_CHARS, strip_span
from ragpress.core.structure import _json_doc, json_path, prune_json, segment
from ragpress.core.tokens import TokenCounter
from ragpress.core.types import Budget, Passage, Protect, Span

PASSAGE_SEP = "\n\n"
_CJK_CHAR = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


@dataclass
class Unit:
    """A piece of passage ``passage`` (index in the request): ``text[start:end]``.

    ``context``: spans of the same passage rendered with it (header row, heading, fences,
    speaker); ``path`` / ``block``: a JSON value's key path and its document's span."""

    passage: int
    start: int
    end: int
    score: float = 0.0
    kind: str = "sentence"
    context: tuple[tuple[int, int], ...] = ()
    path: tuple = ()
    block: tuple[int, int] | None = None
    forced: bool = False


def render_full(passages: list[Passage]) -> str:
    """The uncompressed context as the reader would see it."""
    return PASSAGE_SEP.join(_header(p) + p.text for p in passages)


def _header(p: Passage) -> str:
    return f"{p.title}\n" if p.title else ""


def passage_language(p: Passage, language: str | None) -> str | None:
    """The passage's ``metadata["language"]`` when it names a natural language Punkt knows
    (``german``), else ``language``."""
    from ragpress.core.sentences import PUNKT_LANGUAGES

    lang = p.metadata.get("language") if p.metadata else None
    return lang if isinstance(lang, str) and lang.lower() in PUNKT_LANGUAGES else language


def units_of(passage_index: int, text: str, language: str | None = "auto",
             max_chars: int = DEFAULT_MAX_CHARS) -> list[Unit]:
    """The structure-aware units of one passage text (:func:`ragpress.core.structure.segment`)."""
    return [Unit(passage_index, s.start, s.end, 0.0, s.kind, s.context, s.path, s.block)
            for s in segment(text, language, max_chars)]


def sentence_units(passages: list[Passage], language: str | None = "auto",
                   max_chars: int = DEFAULT_MAX_CHARS) -> list[Unit]:
    """The units of every passage, in order: sentences of prose, rows of tables, items of lists,
    lines of code blocks, turns of dialogues, values of JSON documents."""
    return [u for i, p in enumerate(passages) for u in units_of(i, p.text, passage_language(p, language), max_chars)]


def passage_units(passages: list[Passage]) -> list[Unit]:
    """One unit per passage (whole text)."""
    return [Unit(i, 0, len(p.text)) for i, p in enumerate(passages)]


def unit_text(u: Unit, passages: list[Passage]) -> str:
    """What a scorer reads for ``u``: its context (header row, heading, speaker) and its text;
    a JSON value as ``path: value``."""
    text = passages[u.passage].text
    body = text[u.start:u.end]
    if u.kind == "json":
        body = f"{json_path(u.path)}: {body}" if u.path else body
    ctx = [text[a:b] for a, b in u.context if not text[a:b].lstrip().startswith(("```", "~~~", "<table", "</table"))]
    return "\n".join([*ctx, body]) if ctx else body


# ------------------------------------------------------------------------------ protection
def _protected(passages: list[Passage], protect: Protect | None, keep: bool) -> list[list[tuple[int, int]]]:
    """Per passage, the protected (``keep=False``) or must-keep stretches, sorted and disjoint
    (:meth:`Protect.stretches`: bounded, and found once per request)."""
    if protect is None:
        return [[] for _ in passages]
    return protect.stretches(passages, keep=keep)


def _overlaps(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether ``[start, end)`` overlaps one of the sorted, disjoint ``spans`` (an empty span
    strictly inside it counts)."""
    i = bisect.bisect_left(spans, end, key=lambda s: s[0])  # spans[:i] start before ``end``
    return i > 0 and spans[i - 1][1] > start


def _around(spans: list[tuple[int, int]], at: int) -> tuple[int, int] | None:
    """The one of the sorted, disjoint ``spans`` that ``at`` falls strictly inside, if any."""
    i = bisect.bisect_left(spans, at, key=lambda s: s[0])  # spans[:i] start before ``at``
    return spans[i - 1] if i > 0 and spans[i - 1][1] > at else None


def _mark_forced(units: list[Unit], passages: list[Passage], protect: Protect | None) -> None:
    keep = _protected(passages, protect, keep=True)
    for u in units:
        u.forced = _overlaps(keep[u.passage], u.start, u.end)


# ------------------------------------------------------------------------------ selection
def select(units: list[Unit], passages: list[Passage], budget: Budget, counter: TokenCounter,
           tokens_before: int, score_threshold: float | None = None, *, query: str = "",
           protect: Protect | None = None, notes: dict | None = None) -> list[Unit]:
    """Units to keep, in original order.

    * threshold budget: every unit whose score reaches it;
    * ratio / tokens budget: the best-scoring units, greedily, skipping any that would overflow,
      so the rendered context ends at or under the target and within one unit of it. A passage's
      title and a unit's context (header row, heading) cost their tokens once, when first taken.

    Units marked by ``protect.keep`` / ``keep_patterns`` are always kept. When nothing else
    would be kept, the best unit is: cut to fit (into sub-values for JSON, else its best token
    window, never inside a ``protect`` span). ``notes`` (a dict) receives ``empty_reason`` when
    nothing at all can be kept, and ``cut`` when a unit was cut.
    """
    notes = {} if notes is None else notes
    if not units:
        notes["empty_reason"] = "the input has no text unit to keep"
        return []
    _mark_forced(units, passages, protect)
    rank = ranking_scores(units, passages, query)
    best = max(range(len(units)), key=lambda i: (rank[i], -i))
    if budget.mode == "threshold":
        thr = budget.threshold if score_threshold is None else score_threshold
        kept = [u for u in units if u.score >= thr or u.forced]
        if budget.floor is None and budget.ceiling is None:
            if not kept:
                notes["below_threshold"] = "no unit reached the threshold: the best one is kept"
                kept = [units[best]]
            return kept
        # an adaptive budget: the threshold's choice, held between a floor and a ceiling ratio
        n = counter.count(render(kept, passages)[0]) if kept else 0
        for bound, share, over in (("ceiling", budget.ceiling, True), ("floor", budget.floor, False)):
            if share is not None and (n > share * tokens_before if over else n < share * tokens_before):
                notes["budget"] = f"the threshold kept {n} of {tokens_before} tokens: held to the {bound} ratio {share}"
                return select(units, passages, Budget(ratio=share), counter, tokens_before, query=query,
                              protect=protect, notes=notes)
        return kept or [units[best]]
    target = budget.target_tokens(tokens_before)
    texts = [passages[u.passage].text[u.start:u.end] for u in units]
    ctx_keys = sorted({(u.passage, c) for u in units for c in u.context})
    ctx_cost = dict(zip(ctx_keys, counter.count_batch([passages[p].text[a:b] for p, (a, b) in ctx_keys])))
    costs = counter.count_batch(texts)
    path_cost = [len(u.path) * 2 if u.kind == "json" else 0 for u in units]  # keys, quotes, braces
    headers = counter.count_batch([_header(p) for p in passages])
    order = sorted(range(len(units)), key=lambda i: (not units[i].forced, -rank[i], i))
    used, opened, ctx_open, kept = 0, set(), set(), []
    exact_checks = _EXACT_CHECKS
    for i in order:
        u = units[i]
        cost = costs[i] + path_cost[i]
        if u.passage in opened:
            cost += 1  # the joining space / newline
        else:  # its title line, and the blank line before its block unless it is the first one
            cost += headers[u.passage] + (1 if opened else 0)
        cost += sum(ctx_cost[(u.passage, c)] + 1 for c in u.context if (u.passage, c) not in ctx_open)
        fits = u.forced or used + cost <= target
        if not fits and used + cost <= target + _EXACT_SLACK and exact_checks > 0:
            # the estimate charges every joiner a token; a near miss is counted exactly, so a unit
            # that fits the budget exactly is kept rather than skipped for smaller, worse ones
            exact_checks -= 1
            n = counter.count(render([*kept, u], passages)[0])
            if n <= target:
                fits, cost = True, n - used
        if fits:
            used += cost
            opened.add(u.passage)
            ctx_open.update((u.passage, c) for c in u.context)
            kept.append(u)
        elif not kept:  # the best unit is larger than the whole budget: cut it, don't skip it
            cut = _cut_to_fit(u, passages, target, counter, query, protect, notes)
            if cut:
                notes.pop("empty_reason", None)
                used += counter.count(render(cut, passages)[0]) + 1
                opened.add(u.passage)
                ctx_open.update((u.passage, c) for c in u.context)
                kept.extend(cut)
    chosen = sorted(kept, key=lambda u: (u.passage, u.start))
    # the estimate is conservative for prose; structure (JSON keys, joins) may exceed it: check
    while chosen:
        n = counter.count(render(chosen, passages)[0])
        if n <= target:
            break
        droppable = [u for u in chosen if not u.forced]
        if not droppable:
            notes["over_budget"] = "the units protect.keep marks exceed the budget"
            break
        at = {id(u): i for i, u in enumerate(units)}
        chosen.remove(min(droppable, key=lambda u: (rank[at[id(u)]] if id(u) in at else u.score, -u.start)))
        if all(id(u) in at for u in chosen):
            notes.pop("cut", None)
    if not chosen:
        chosen = _cut_to_fit(units[best], passages, target, counter, query, protect, notes)
    elif "empty_reason" in notes:
        del notes["empty_reason"]
    return chosen


_EXACT_SLACK = 4  # tokens over the estimate within which a unit is counted exactly
_EXACT_CHECKS = 16  # exact counts per selection at most (each renders and tokenises the kept text)
_WORD = re.compile(r"\w+")
_ANCHOR = re.compile(r"\b[\w.,:/-]*\d[\w.,:/-]*\b")  # numbers, dates, ids: a digit inside
_ANCHOR_RUN = re.compile(r"[\w.,:/-]+")  # what _ANCHOR is matched within (one run at a time)
_DIGIT = re.compile(r"\d")
#: a query's anchors that rank units, the first ones in the query (a client's query is up to
#: 8,192 characters: a CJK one has as many bigrams, each looked for in every unit)
MAX_QUERY_ANCHORS = 256
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+")
_NAME = re.compile(r"\b[A-Z][\w-]+")
_NOT_NAMES = {"What", "Which", "Who", "Whom", "Whose", "When", "Where", "Why", "How", "Is", "Are", "Was",
              "Were", "Do", "Does", "Did", "Can", "The", "A", "An", "In", "Of", "On", "For", "List", "Give", "Name"}


def query_anchors(query: str, structured: bool = False) -> set[str]:
    """Terms of ``query`` that a unit answering it should contain verbatim: character bigrams of
    CJK text and, for structured units (rows, records, items, turns, code lines), numbers and
    ids (anything with a digit) and capitalised names. Prose sentences of Latin-script text are
    left to the scorer (the HotpotQA figures do not move)."""
    out: set[str] = set()
    for run in _CJK_RUN.findall(query):
        out.update(run[i:i + 2] for i in range(len(run) - 1))
    if structured:
        # run by run, and only runs with a digit: over a run without one, _ANCHOR alone starts
        # again at every word boundary and scans to the run's end (quadratic: 5 s on 8 kB)
        out.update(m.group().strip(".,:") for r in _ANCHOR_RUN.finditer(query) if _DIGIT.search(r.group())
                   for m in _ANCHOR.finditer(r.group()))
        out.update(w for w in _NAME.findall(query) if w not in _NOT_NAMES)
    return {a for a in out if a}


def anchor_overlap(anchors: set[str], text: str) -> float:
    """Share of ``anchors`` found in ``text`` (numbers and names as whole tokens)."""
    if not anchors:
        return 0.0
    hit = 0
    for a in anchors:
        hit += a in text and (_CJK_RUN.fullmatch(a) is not None or _whole(a).search(text) is not None)
    return hit / len(anchors)


@functools.lru_cache(maxsize=2 * MAX_QUERY_ANCHORS)
def _whole(anchor: str) -> re.Pattern:
    """``anchor`` as a whole token (compiled once: ``re``'s own cache holds 512 patterns)."""
    return re.compile(rf"(?<![\w]){re.escape(anchor)}(?![\w])")


def _first_anchors(anchors: set[str], query: str) -> set[str]:
    """The first ``MAX_QUERY_ANCHORS`` of ``anchors`` in ``query``."""
    if len(anchors) <= MAX_QUERY_ANCHORS:
        return anchors
    return set(sorted(anchors, key=lambda a: (query.find(a), a))[:MAX_QUERY_ANCHORS])


def ranking_scores(units: list[Unit], passages: list[Passage], query: str) -> list[float]:
    """The order a budget fills in: each unit's score plus, when the query holds CJK words (or,
    for structured units, numbers, ids and names) that the unit contains verbatim, up to the spread
    of twice the spread of the scores. Small scorers (a 135M LM, an English embedder) miss exact keys such as
    "order 102" or a Chinese phrase; this keeps the unit that holds them. Scores are unchanged
    (threshold mode does not use it)."""
    scores = [u.score for u in units]
    if not query or not units:
        return scores
    plain = _first_anchors(query_anchors(query), query)
    struct = _first_anchors(query_anchors(query, structured=True), query)
    if not struct:
        return scores
    spread = (max(scores) - min(scores)) or 1.0
    out = []
    for u, s in zip(units, scores):
        anchors = plain if u.kind == "sentence" else struct
        out.append(s + 2 * spread * anchor_overlap(anchors, unit_text(u, passages)) if anchors else s)
    return out


def _terms(text: str) -> set[str]:
    """Lower-cased words of ``text``; CJK text contributes its characters."""
    out = set()
    for w in _WORD.findall(text.lower()):
        if any("\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" for ch in w):
            out.update(w)
        elif len(w) > 2 or w.isdigit():
            out.add(w)
    return out


def _cut_to_fit(u: Unit, passages: list[Passage], target: int, counter: TokenCounter, query: str,
                protect: Protect | None, notes: dict) -> list[Unit]:
    """``u`` narrowed to fit ``target`` tokens once rendered: a JSON container into its
    sub-values (those sharing most words with the query, greedily), anything else to the
    window of tokens that shares most words with the query."""
    p = passages[u.passage]
    q = _terms(query)
    if u.kind == "json" and u.end - u.start > 2:
        subs = _json_doc(p.text, (u.start, u.end), u.context)
        if subs and len(subs) > 1:
            cand = [Unit(u.passage, s.start, s.end, u.score, "json", s.context, u.path + s.path, u.block)
                    for s in subs]
            cand.sort(key=lambda c: -len(q & _terms(unit_text(c, passages))))
            kept: list[Unit] = []
            for c in cand:
                trial = sorted([*kept, c], key=lambda x: x.start)
                if counter.count(render(trial, passages)[0]) <= target:
                    kept = trial
            if kept:
                notes["cut"] = f"the best unit (a JSON value of {len(subs)} parts) is larger than the budget: " \
                               f"{len(kept)} of its parts are kept"
                return kept
    overhead = counter.count(render([Unit(u.passage, u.start, u.start, u.score, "sentence", u.context)], passages)[0])
    room = target - overhead - 1
    if room < 1:
        notes["empty_reason"] = (f"the budget ({target} tokens) is smaller than the passage title and context "
                                 f"the best unit needs ({overhead} tokens): nothing is kept")
        return []
    body = p.text[u.start:u.end]
    offs = [(u.start + a, u.start + b) for a, b in counter.char_offsets(body)]
    if not offs:
        return [u]
    guard = _protected(passages, protect, keep=False)[u.passage]  # all passages: found once per request
    room = min(room, len(offs))
    best_k, best_hit = 0, -1
    for k in range(0, len(offs) - room + 1, max(1, room // 4)):
        hit = len(q & _terms(p.text[offs[k][0]:offs[k + room - 1][1]]))
        if hit > best_hit:
            best_k, best_hit = k, hit
    for _ in range(len(offs)):
        a, b = offs[best_k][0], offs[best_k + room - 1][1]
        # never cut inside a protected span: move the edges out of it (shrinking the other side)
        if (g := _around(guard, a)) is not None:
            a = g[0]
        if (g := _around(guard, b)) is not None:
            b = g[1]
        a, b = strip_span(p.text, max(a, u.start), min(b, u.end))
        cut = Unit(u.passage, a, b, u.score, u.kind, u.context, u.path, u.block)
        if b > a and counter.count(render([cut], passages)[0]) <= target:
            notes["cut"] = f"the best unit ({u.end - u.start} chars) is larger than the budget: its best window is kept"
            return [cut]
        if room <= 1:
            break
        room -= 1
        best_k = min(best_k, len(offs) - room)
    notes["empty_reason"] = f"no window of the best unit fits the budget ({target} tokens)"
    return []


# ------------------------------------------------------------------------------ rendering
def render(units: list[Unit], passages: list[Passage]) -> tuple[str, list[Span]]:
    """Compressed context and spans for kept ``units`` (in original order). Spans are exact
    source text: the kept units, and the context pieces (header rows, headings, fences) shown
    with them; a JSON value's span is its source text (the rendered document is re-serialised)."""
    by_passage: dict[int, list[Unit]] = {}
    for u in sorted(units, key=lambda u: (u.passage, u.start)):
        by_passage.setdefault(u.passage, []).append(u)
    blocks, spans = [], []
    for pi, us in by_passage.items():
        p = passages[pi]
        text = p.text
        pieces: dict[tuple[int, int], str | None] = {}  # span -> synthetic text (JSON) or None
        scores: dict[tuple[int, int], float | None] = {}
        docs: dict[tuple[int, int], list[Unit]] = {}
        for u in us:
            for c in u.context:
                pieces.setdefault(c, None)
                scores.setdefault(c, None)
            if u.kind == "json" and u.block is not None:
                docs.setdefault(u.block, []).append(u)
            else:
                pieces[(u.start, u.end)] = None
                scores[(u.start, u.end)] = float(u.score)
        for blk, vs in docs.items():
            pieces[blk] = prune_json([(v.path, text[v.start:v.end]) for v in vs])
        out = []
        prev_end = None
        for (a, b), synthetic in sorted(pieces.items()):
            if prev_end is not None:
                if a < prev_end:  # overlapping context: show the rest only
                    a = prev_end
                    if a >= b:
                        continue
                out.append(_joiner(text, prev_end, a))
            out.append(synthetic if synthetic is not None else text[a:b])
            prev_end = b
        blocks.append(_header(p) + "".join(out))
        span_keys = {(a, b) for (a, b), s in pieces.items() if s is None}
        for a, b in sorted(span_keys):
            spans.append(Span(passage_id=p.id, start=a, end=b, text=text[a:b], score=scores.get((a, b))))
        for vs in docs.values():
            spans.extend(Span(passage_id=p.id, start=v.start, end=v.end, text=text[v.start:v.end],
                              score=float(v.score)) for v in vs)
    return PASSAGE_SEP.join(blocks), spans


def _joiner(text: str, end: int, start: int) -> str:
    gap = text[end:start]
    if not gap.strip():
        return gap  # adjacent in the source: its own whitespace
    if text[end - 1:end] == ">" and text[start:start + 1] == "<":
        return ""  # markup (HTML table rows): nothing in between
    if _CJK_CHAR.match(text, end - 1) and _CJK_CHAR.match(text, start):
        return ""  # CJK text has no spaces between words or sentences
    line_start = not text[text.rfind("\n", 0, start) + 1:start].strip()
    line_end = not text[end:(text.find("\n", end) + 1 or len(text) + 1) - 1].strip()
    return "\n" if line_start or line_end else " "


def structure_notes(units: list[Unit], notes: dict | None = None) -> dict:
    """What a result should say about how it was built: the kinds of the kept units, that JSON
    documents are rendered as pruned (re-serialised, valid) JSON, and ``notes`` from
    :func:`select` (a cut unit, or why nothing was kept)."""
    out: dict = {}
    kinds: dict[str, int] = {}
    for u in units:
        kinds[u.kind] = kinds.get(u.kind, 0) + 1
    if set(kinds) - {"sentence"}:
        out["units"] = kinds
    if "json" in kinds:
        out["json"] = "pruned JSON: the kept values in a document that parses (values re-serialised, " \
                      "spans point to their source text)"
    if notes:
        out.update(notes)
    return out
