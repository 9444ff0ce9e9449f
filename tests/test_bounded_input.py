"""What a client controls runs in bounded time and memory (issue #23, item 6): protect patterns
run on RE2 (linear time), with caps on their number, length, size, matches and time; spans,
budgets and message counts are bounded by the schemas; the chat route's document parsing is
linear. Time is asserted only against a generous bound (exponential or quadratic time would
blow it; a loaded machine would not)."""

from __future__ import annotations

import random
import re
import time

import pytest
from pydantic import ValidationError

from ragpress import Budget, CompressionRequest, create_compressor
from ragpress.core.errors import BudgetError, InvalidRequestError
from ragpress.core.extractive import render, select, sentence_units
from ragpress.core.types import (
    MAX_PATTERN_CHARS,
    MAX_PROTECT_MATCHES,
    MAX_PROTECT_PATTERNS,
    MAX_PROTECT_SPANS,
    CompressionResult,
    Passage,
    Protect,
    merge_spans,
)

BOUND_S = 10.0  # the pathological patterns below ran > 30 s each on Python's re (killed there), < 0.01 s on RE2

N = 200_000
HEAD = "The order shipped. "
#: pattern -> a 200k-character passage that makes a backtracking engine explode on it
PATHOLOGICAL = {
    "(a+)+$": HEAD + "a" * (N - len(HEAD) - 1) + "!",
    "(x+x+)+y": HEAD + "x" * (N - len(HEAD)),
    "(.*a){20}": HEAD + "a" * 19 + "b" * (N - len(HEAD) - 19),  # one "a" short
}


@pytest.fixture(scope="module")
def compressors():
    return {m: create_compressor(m) for m in ("exit", "embed-sentences")}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@pytest.mark.parametrize("method", ["exit", "embed-sentences"])
@pytest.mark.parametrize("pattern", list(PATHOLOGICAL))
def test_pathological_pattern_over_a_long_passage_answers_in_bounded_time(compressors, method, pattern):
    c, text = compressors[method], PATHOLOGICAL[pattern]
    plain = CompressionRequest.of("When did the order ship?", [text], budget=Budget(ratio=0.3))
    c.compress(plain)  # warm: model, tokenizer, this passage
    _, ordinary = _timed(lambda: c.compress(plain))  # what the passage costs without protection
    bound = BOUND_S + 2 * ordinary  # a loaded machine slows both; exponential time blows it whatever the load
    req = CompressionRequest.of("When did the order ship?", [text], budget=Budget(ratio=0.3),
                                protect=Protect(patterns=[pattern], keep_patterns=[pattern]))
    result, took = _timed(lambda: c.compress(req))
    assert isinstance(result, CompressionResult) and result.tokens_after <= result.tokens_before
    assert took < bound, f"{pattern!r} took {took:.1f} s ({ordinary:.1f} s without it)"
    # and the compressor answers an ordinary request at once after it
    result, took = _timed(lambda: c.compress(plain))
    assert result.tokens_after < result.tokens_before and took < bound


def test_what_cannot_be_bounded_is_refused(compressors):
    c = compressors["embed-sentences"]
    text = "a" * N
    plain = CompressionRequest.of("q", [text], budget=Budget(ratio=0.3))
    c.compress(plain)  # warm
    _, ordinary = _timed(lambda: c.compress(plain))
    # quadratic on any engine: every "a" matches, and where its match ends takes a scan to the end
    slow = CompressionRequest.of("q", [text], budget=Budget(ratio=0.3), protect=Protect(keep_patterns=[r"a(?:.*b)?"]))
    t0 = time.perf_counter()
    with pytest.raises(InvalidRequestError, match="took longer than"):
        c.compress(slow)
    assert time.perf_counter() - t0 < BOUND_S + 2 * ordinary
    # one match per character: past the cap on matches over all the passages of a request (or,
    # on a loaded machine, past the time allowed first)
    t0 = time.perf_counter()
    with pytest.raises(InvalidRequestError, match="matched more than|took longer than"):
        Protect(keep_patterns=["."]).regex(keep=True).spans_of(["x" * (MAX_PROTECT_MATCHES // 2 + 1)] * 2)
    assert time.perf_counter() - t0 < BOUND_S


def test_the_cap_on_matches_counts_every_passage_and_empty_matches(monkeypatch):
    import ragpress.core.types as types

    monkeypatch.setattr(types, "MAX_PROTECT_MATCHES", 1_000)
    assert Protect(patterns=["x"]).regex().spans_of(["x" * 500, "x" * 500]) == [[(i, i + 1) for i in range(500)]] * 2
    with pytest.raises(InvalidRequestError, match="matched more than 1000 times"):
        Protect(patterns=["x"]).regex().spans_of(["x" * 500, "x" * 501])
    with pytest.raises(InvalidRequestError, match="matched more than 1000 times"):
        Protect(patterns=[r"\d*"]).regex().spans_of(["no digits here " * 100])  # an empty match per character


@pytest.mark.parametrize("pattern, feature", [
    (r"(?=ORD)\w+", "lookahead"), (r"(?<!x)ORD", "lookbehind"), (r"(\d)\1", "backreference"),
    (r"(?P<n>a)(?P=n)", "backreference"), (r"\d++", "possessive"), (r"(?>ab)", "atomic"),
    (r"end\Z", r"\\z"), (r"(unclosed", "missing \\)"), (r"ORD\C", "any byte"),
])
def test_unsupported_syntax_is_refused_with_why_and_what_is_supported(pattern, feature):
    for kw in ({"patterns": [pattern]}, {"keep_patterns": ["numbers", pattern]}):
        with pytest.raises(InvalidRequestError, match=feature) as info:
            Protect(**kw)
        assert "RE2" in info.value.message and "re2/wiki/Syntax" in info.value.message
    from ragpress.services.protocol import CompressRequestBody

    with pytest.raises(InvalidRequestError, match=feature):  # the service answers it with a 422
        CompressRequestBody(query="q", passages=["a"], protect={"patterns": [pattern]})


def test_caps_on_patterns_spans_and_program_size():
    with pytest.raises(ValidationError):
        Protect(patterns=[f"x{i}" for i in range(MAX_PROTECT_PATTERNS + 1)])
    with pytest.raises(ValidationError):
        Protect(keep_patterns=["a" * (MAX_PATTERN_CHARS + 1)])
    span = {"passage_id": "p0", "start": 0, "end": 1}
    with pytest.raises(ValidationError):
        Protect(spans=[span] * (MAX_PROTECT_SPANS + 1))
    with pytest.raises(ValidationError):
        Protect(keep=[{**span, "start": 5, "end": 2}])  # ends before it starts
    with pytest.raises(ValidationError):
        Protect(keep=[{**span, "end": 10**30}])
    with pytest.raises(InvalidRequestError, match="too large"):  # short, but a large RE2 program
        Protect(patterns=[r"(\w+\s?){1,200}z"])
    # within the caps
    Protect(patterns=[f"x{i}" for i in range(MAX_PROTECT_PATTERNS)], spans=[span] * MAX_PROTECT_SPANS)


def test_caps_travel_through_the_rest_schema_as_validation_errors():
    from ragpress.services.protocol import ChatCompletionRequest, CompressRequestBody

    with pytest.raises(ValidationError):
        CompressRequestBody(query="q", passages=["a"], protect={"patterns": ["x"] * (MAX_PROTECT_PATTERNS + 1)})
    with pytest.raises(ValidationError):
        CompressRequestBody(query="q", passages=["a"], protect={"spans": [{"passage_id": "p0", "start": 3, "end": 1}]})
    for budget in ({"ratio": float("nan")}, {"ratio": -0.5}, {"tokens": 10**12}, {"threshold": float("inf")},
                   {"threshold": 0.5, "floor": float("nan")}, {"tokens": 5, "skip_under": 10**12}):
        with pytest.raises(ValidationError):
            CompressRequestBody(query="q", passages=["a"], budget=budget)
    with pytest.raises(BudgetError):  # the library's own Budget
        Budget(ratio=float("nan"))
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}] * 513)


def test_offsets_are_characters_in_non_ascii_text(counter):
    text = "Zürich 2021 ÉCOLE-42, 東京 ORD-55721-X für naive_wert über.straße daten.größe fooBär"
    got = lambda pats: [text[m.start():m.end()] for m in Protect(patterns=pats).regex().finditer(text)]  # noqa: E731
    assert got(["numbers"]) == ["2021", "-42", "-55721"]
    assert got(["ids"]) == ["ORD-55721-X"]  # not "COLE-42": É is a letter, as it was for Python's re
    assert got(["identifiers"]) == ["naive_wert", "daten.größe", "fooBär"]  # as on Python's re
    assert got([r"\p{Lu}\p{L}+", "東京"]) == ["Zürich", "ÉCOLE", "東京", "ORD", "Bär"]
    # the same character offsets through a compressor's selection
    ps = [Passage(id="p", text=text)]
    kept = select(sentence_units(ps), ps, Budget(tokens=4), counter, 40, query="ORD",
                  protect=Protect(patterns=["ids"], keep_patterns=["ids"]))
    out, spans = render(kept, ps)
    assert "ORD-55721-X" in out and all(text[s.start:s.end] == s.text for s in spans)


#: the presets as Python's re wrote them (Unicode \w, \d, \b; lookahead)
PYTHON_PRESETS = {
    "numbers": r"[-+]?\d(?:[\d,.]*\d)?%?",
    "ids": r"\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]*\b",
    "identifiers": r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b|\b[a-z]+(?:_[a-z0-9]+)+\b|\b[a-z]+[A-Z]\w*\b",
}


@pytest.mark.parametrize("preset", list(PYTHON_PRESETS))
def test_presets_protect_what_they_protected_on_pythons_re(preset):
    pieces = list("aAzZ09_-.,%+ é٣ÉßЖ日\n") + ["x1", "ORD-", "foo_bar", "fooBar", "a.b", "12.5", "-3", "²"]
    rng, rx = random.Random(7), Protect(patterns=[preset]).regex()
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))  # short: Python's re is safe here
        want = merge_spans([m.span() for m in re.finditer(PYTHON_PRESETS[preset], text) if m.end() > m.start()])
        assert [m.span() for m in rx.finditer(text)] == want, repr(text)


def test_presets_stay_linear_where_pythons_re_did_not():
    text = "a-" * 100_000  # Python's "ids" lookahead rescanned the rest of the run at every hyphen
    spans, took = _timed(lambda: Protect(patterns=["numbers", "ids", "identifiers"]).regex().spans_of([text]))
    assert spans == [[]] and took < BOUND_S


def test_many_protected_stretches_select_fast(counter):
    table = "\n".join(f"| row {i} | {i * 7}.{i % 10} | ORD-{i} |" for i in range(10_000))
    ps = [Passage(id="t", text=table)]
    units = sentence_units(ps)
    for i, u in enumerate(units):
        u.score = (i * 37 % 101) / 101
    protect = Protect(patterns=["numbers", "ids"], keep_patterns=["ORD-9999"])
    kept, took = _timed(lambda: select(units, ps, Budget(tokens=60), counter, 200_000, protect=protect))
    assert any("ORD-9999" in table[u.start:u.end] for u in kept) and took < BOUND_S


def test_chat_documents_block_parses_in_linear_time():
    from ragpress.services.openai_api import parse_block

    docs = parse_block('<document id="a" title="T">one</document> <documents> <document >two</document>')
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "T", "one"), ("d1", None, "two")]
    for inner in ("<document>" * 80_000, "<document " * 80_000, "<document " + "a" * 800_000 + ">x</document>",
                  "<document>x</document>" + "<document>" * 80_000):
        _, took = _timed(lambda: parse_block(inner))  # noqa: B023
        assert took < BOUND_S  # the regexes took 9 s and 91 s on the first three at a tenth of the size
    paragraphs = parse_block("x\n\n" * 1000, limit=257)
    assert len(paragraphs) == 257


def test_a_long_query_ranks_units_in_bounded_time():
    from ragpress.core.extractive import MAX_QUERY_ANCHORS, query_anchors, ranking_scores

    for query in ("a." * 4096, "a-" * 4096):  # the anchor regex rescanned these from every boundary: 5 s
        anchors, took = _timed(lambda: query_anchors(query, structured=True))  # noqa: B023
        assert anchors == set() and took < BOUND_S
    assert query_anchors("Order ORD-102 of 3.5 kg, 東京", structured=True) == {"ORD-102", "3.5", "Order", "東京"}
    # 1,600 numbers in the query, each looked for (with its own regex) in each of 2,000 rows: > 300 s
    query = " ".join(str(1000 + i) for i in range(1600))
    table = "| item | value |\n|---|---|\n" + "\n".join(f"| item | {1000 + i} |" for i in range(2000))
    ps = [Passage(id="t", text=table)]
    units = sentence_units(ps)
    for u in units:
        u.score = 0.5
    scores, took = _timed(lambda: ranking_scores(units, ps, query))
    assert took < BOUND_S
    # only the first MAX_QUERY_ANCHORS anchors of the query count: the rows holding one rank first
    boosted = [table[u.start:u.end] for u, s in zip(units, scores) if s > 0.5]
    assert boosted == [f"| item | {1000 + i} |" for i in range(MAX_QUERY_ANCHORS)]
