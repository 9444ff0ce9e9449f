"""The data contract shared by every compressor, the CLI, the service and LangChain.

A :class:`CompressionRequest` carries a query (or instruction), passages and a :class:`Budget`;
a compressor answers with a :class:`CompressionResult` whose kept :class:`Span` objects point
back into the source passages by id and character offsets.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from ragpress.core.errors import BudgetError, InvalidRequestError

BudgetMode = Literal["ratio", "tokens", "threshold"]


class Passage(BaseModel):
    """A retrieved passage (or a code file). ``text`` is what gets compressed; ``title`` is
    kept as a header in the rendered context."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    title: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Budget(BaseModel):
    """How much to keep: exactly one of a target ``ratio`` of the original tokens (0 < r <= 1),
    a target token count ``tokens`` (>= 1), or a score ``threshold`` in [0, 1] (keep every unit
    whose relevance score reaches it, whatever the length).

    >>> Budget(ratio=0.3).target_tokens(1000)
    300
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float | None = None
    tokens: int | None = None
    threshold: float | None = None
    #: threshold mode: keep at least / at most this share of the tokens (the best-ranked units
    #: fill up to the floor; the ceiling cuts to the best-ranked units that fit)
    floor: float | None = None
    ceiling: float | None = None
    #: any mode: a context of fewer tokens is returned whole (short contexts lose more than they save)
    skip_under: int | None = None

    @classmethod
    def adaptive(cls) -> Budget:
        """The default that fits the context (measured in README, "A budget that fits the
        context"): keep what scores at least 0.5, but never under 20 % nor over 60 % of the
        tokens, and leave contexts under 256 tokens whole."""
        return cls(threshold=0.5, floor=0.2, ceiling=0.6, skip_under=256)

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [m for m in ("ratio", "tokens", "threshold") if getattr(self, m) is not None]
        if len(given) != 1:
            raise BudgetError(
                f"a budget needs exactly one of ratio, tokens or threshold; got {given or 'none'}"
            )
        for name in ("floor", "ceiling"):
            v = getattr(self, name)
            if v is not None and (self.threshold is None or not (0.0 < v <= 1.0 and math.isfinite(v))):
                raise BudgetError(f"budget {name} must be in (0, 1] and goes with a threshold; got {name}={v}"
                                  + ("" if self.threshold is not None else " without a threshold"))
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise BudgetError(f"budget floor ({self.floor}) must not exceed its ceiling ({self.ceiling})")
        if self.skip_under is not None and self.skip_under < 1:
            raise BudgetError(f"budget skip_under must be >= 1 tokens, got {self.skip_under}")
        if self.ratio is not None and not (0.0 < self.ratio <= 1.0 and math.isfinite(self.ratio)):
            raise BudgetError(f"budget ratio must be in (0, 1], got {self.ratio}")
        if self.tokens is not None and self.tokens < 1:
            raise BudgetError(f"budget tokens must be >= 1, got {self.tokens}")
        if self.threshold is not None and not (0.0 <= self.threshold <= 1.0):
            raise BudgetError(f"budget threshold must be in [0, 1], got {self.threshold}")
        return self

    @property
    def mode(self) -> BudgetMode:
        if self.ratio is not None:
            return "ratio"
        if self.tokens is not None:
            return "tokens"
        return "threshold"

    def target_tokens(self, tokens_before: int) -> int | None:
        """Token target for a context of ``tokens_before`` tokens; None in threshold mode."""
        if self.ratio is not None:
            return max(1, int(round(self.ratio * tokens_before)))
        if self.tokens is not None:
            return self.tokens
        return None

    def __str__(self) -> str:
        extra = "".join(f",{k}={getattr(self, k)}" for k in ("floor", "ceiling", "skip_under")
                        if getattr(self, k) is not None)
        return f"{self.mode}={getattr(self, self.mode)}{extra}"


#: bounds on what a client's :class:`Protect` asks for; past them the request is refused (422)
MAX_PROTECT_PATTERNS = 32  # per list (patterns, keep_patterns)
MAX_PATTERN_CHARS = 512
#: RE2 instructions of one client pattern: with each character class as one (what counted
#: repetitions multiply), and with its classes spelled out in UTF-8 (\pL alone is ~1,000)
MAX_PATTERN_PROGRAM = 1_000
MAX_PATTERN_PROGRAM_UTF8 = 50_000
MAX_PROTECT_SPANS = 4_096  # per list (spans, keep)
MAX_SPAN_OFFSET = 2**31 - 1
MAX_PROTECT_MATCHES = 200_000  # matches (empty ones included) of one list's patterns in one request
PROTECT_MATCH_SECONDS = 2.0  # time one list's patterns may take over one request's passages
PATTERN_MAX_MEM = 2 * 2**20  # RE2's memory budget per compiled pattern (program and DFA cache)

_RE2_SYNTAX = ("protect patterns run on RE2, in time linear in the text: no backreferences, lookahead or "
               "lookbehind, possessive quantifiers or atomic groups; \\d, \\w and \\b are ASCII (\\p{Nd}, \\pL "
               "and \\pN match any script); syntax: https://github.com/google/re2/wiki/Syntax")
#: what RE2's error names (the end of its message) -> the feature it cannot run
_UNSUPPORTED = {"(?=": "lookahead", "(?!": "lookahead", "(?<=": "lookbehind", "(?<!": "lookbehind",
                "(?P": "a backreference ((?P=name))", "\\k": "a backreference", "(?>": "an atomic group",
                "\\Z": "\\Z (write \\z for the end of the text)"}


class ProtectedSpan(BaseModel):
    """``passage.text[start:end]`` of the passage with id ``passage_id``."""

    model_config = ConfigDict(extra="forbid")

    passage_id: str = Field(max_length=256)
    start: int = Field(ge=0, le=MAX_SPAN_OFFSET)
    end: int = Field(ge=0, le=MAX_SPAN_OFFSET)

    @model_validator(mode="after")
    def _ordered(self) -> ProtectedSpan:
        if self.end < self.start:
            raise ValueError(f"a protected span ends ({self.end}) before it starts ({self.start})")
        return self


ProtectPattern = Annotated[str, Field(max_length=MAX_PATTERN_CHARS)]


class Protect(BaseModel):
    """What a compressor must not lose.

    * ``patterns`` / ``spans``: text a kept unit must keep verbatim (a unit cut to fit the budget
      is never cut inside them). A pattern is a regular expression in RE2 syntax or one of the
      presets ``numbers``, ``ids`` (tokens mixing letters and digits, ``ORD-102``), ``identifiers``
      (``snake_case``, ``camelCase``, ``dotted.names``);
    * ``keep`` / ``keep_patterns``: units that overlap these spans, or contain a match, are always
      kept, whatever the budget (the result may then exceed it).

    Patterns run on RE2, in time linear in the text whatever the pattern: a pattern RE2 cannot run
    (backreferences, lookaround, possessive quantifiers), one too large, too many of them, a list
    whose matches over a request's passages exceed ``MAX_PROTECT_MATCHES`` or take longer than
    ``PROTECT_MATCH_SECONDS``: each is an :class:`~ragpress.core.errors.InvalidRequestError` (422).

    >>> Protect(patterns=["numbers"], keep_patterns=["ORD-\\d+"]).patterns
    ['numbers']
    """

    model_config = ConfigDict(extra="forbid")

    patterns: list[ProtectPattern] = Field(default_factory=list, max_length=MAX_PROTECT_PATTERNS)
    spans: list[ProtectedSpan] = Field(default_factory=list, max_length=MAX_PROTECT_SPANS)
    keep: list[ProtectedSpan] = Field(default_factory=list, max_length=MAX_PROTECT_SPANS)
    keep_patterns: list[ProtectPattern] = Field(default_factory=list, max_length=MAX_PROTECT_PATTERNS)

    @model_validator(mode="after")
    def _compiles(self) -> Protect:
        for pat in [*self.patterns, *self.keep_patterns]:
            if pat not in PROTECT_PRESETS:
                _client_program(pat)
        return self

    def regex(self, keep: bool = False) -> ProtectRegex | None:
        """The (keep) patterns, presets expanded, compiled for RE2; None if there are none."""
        pats = self.keep_patterns if keep else self.patterns
        if not pats:
            return None
        programs = [prog for p in dict.fromkeys(pats)
                    for prog in (_preset_programs(p) if p in PROTECT_PRESETS else [(_client_program(p), 0, 0)])]
        return ProtectRegex(programs)

    def stretches(self, passages: list[Passage], keep: bool = False) -> list[list[tuple[int, int]]]:
        """Per passage, the protected (``keep``: always kept) stretches ``(start, end)``: the
        matches of the (keep) patterns and the (keep) spans, sorted, overlapping ones merged."""
        pats = tuple(self.keep_patterns if keep else self.patterns)
        found = _stretches(pats, tuple(p.text for p in passages)) if pats else [[] for _ in passages]
        if isinstance(found, InvalidRequestError):
            raise InvalidRequestError(found.message)
        given: dict[str, list[ProtectedSpan]] = {}
        for s in self.keep if keep else self.spans:
            given.setdefault(s.passage_id, []).append(s)
        out = []
        for p, spans in zip(passages, found):
            n = len(p.text)
            out.append(merge_spans([*spans, *((min(s.start, n), min(s.end, n)) for s in given.get(p.id, ()))]))
        return out


@functools.lru_cache(maxsize=4)
def _stretches(patterns: tuple[str, ...], texts: tuple[str, ...]) -> list[list[tuple[int, int]]] | InvalidRequestError:
    """What ``patterns`` protect in each of ``texts``, or why they may not: remembered for the last
    few requests (a selection asks more than once, a batch that failed is retried one by one)."""
    try:
        return Protect(patterns=list(patterns)).regex().spans_of(list(texts))
    except InvalidRequestError as exc:
        return exc


class ProtectRegex:
    """The compiled patterns of one :class:`Protect` list: RE2 programs, each linear in the text.

    What they protect is the union of every pattern's non-empty matches (the patterns do not
    compete for the text as one alternation would: a number inside an id is protected by both),
    overlapping matches merged. Offsets are in characters.

    >>> [m.span() for m in Protect(patterns=["numbers"]).regex().finditer("Zürich: 8,001 people")]
    [(8, 13)]
    """

    def __init__(self, programs: list[tuple[Any, int, int]]):
        #: (RE2 program, group of the protected stretch (0: the match), group that must be empty (0: none))
        self.programs = programs

    def finditer(self, text: str) -> Iterator[ProtectMatch]:
        """The protected stretches of ``text``, in order."""
        return (ProtectMatch(a, b) for a, b in self.spans_of([text])[0])

    def spans_of(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Per text, the protected stretches ``(start, end)``, sorted and merged. Bounded: past
        ``MAX_PROTECT_MATCHES`` matches (empty ones count) or ``PROTECT_MATCH_SECONDS`` over all
        the texts it raises :class:`~ragpress.core.errors.InvalidRequestError`."""
        deadline = time.monotonic() + PROTECT_MATCH_SECONDS
        left = MAX_PROTECT_MATCHES
        out = []
        for text in texts:
            found = []
            subject = text.encode("ascii") if text.isascii() else text  # bytes: same offsets, 3x faster
            for rx, group, reject in self.programs:
                for m in rx.finditer(subject):
                    left -= 1
                    if left < 0:
                        raise InvalidRequestError(
                            f"protect patterns matched more than {MAX_PROTECT_MATCHES} times in this request "
                            "(a pattern that can match the empty string matches at every character): protect "
                            "with narrower patterns, or send fewer passages")
                    if time.monotonic() > deadline:
                        raise _too_slow()
                    if reject and m.end(reject) > m.start(reject):
                        continue
                    a, b = m.span(group)
                    if b > a:
                        found.append((a, b))
                if time.monotonic() > deadline:
                    raise _too_slow()
            out.append(merge_spans(found))
        return out


class ProtectMatch:
    """One protected stretch ``text[start():end()]``, as :meth:`ProtectRegex.finditer` yields it."""

    __slots__ = ("_a", "_b")

    def __init__(self, start: int, end: int):
        self._a, self._b = start, end

    def start(self) -> int:
        return self._a

    def end(self) -> int:
        return self._b

    def span(self) -> tuple[int, int]:
        return self._a, self._b


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` sorted, overlapping ones merged (touching ones stay apart: a cut may fall
    between them). Each next span starts at or after the end of the one before.

    >>> merge_spans([(5, 9), (0, 3), (2, 4), (9, 9)])
    [(0, 4), (5, 9), (9, 9)]
    """
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a < out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _too_slow() -> InvalidRequestError:
    return InvalidRequestError(f"protect patterns took longer than {PROTECT_MATCH_SECONDS:g} s over this request's "
                               "passages: protect with simpler patterns, or send fewer passages")


def _re2():
    try:
        import re2
    except ImportError as exc:  # pragma: no cover - a dependency of ragpress
        raise ImportError("protect patterns run on RE2: pip install google-re2") from exc
    return re2


def _re2_options(capture: bool = False, latin1: bool = False):
    re2 = _re2()
    options = re2.Options()
    options.max_mem = PATTERN_MAX_MEM
    options.never_capture = not capture  # a client's groups are not needed: the DFA alone finds a match
    options.log_errors = False
    if latin1:
        options.encoding = re2.Options.Encoding.LATIN1
    return options


def _client_program(pattern: str):
    """``pattern`` compiled by RE2 (its module keeps the last 128 compiled), or the
    :class:`~ragpress.core.errors.InvalidRequestError` that says why it cannot run."""
    re2 = _re2()
    if re.search(r"(?<!\\)(?:\\\\)*\\C", pattern):  # one byte, even inside a character: offsets would split it
        raise InvalidRequestError(f"protect pattern {pattern!r}: \\C (any byte) is not supported; {_RE2_SYNTAX}")
    try:
        rx = re2.compile(pattern, _re2_options())
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        named = reason.rpartition(": ")[2]
        what = ("a backreference" if named[:1] == "\\" and named[1:2].isdigit() else
                "a possessive quantifier" if len(named) > 1 and named[-1] == "+" and named[0] in "*+?{" else
                _UNSUPPORTED.get(named))
        why = f"{what} is not supported" if what else f"not a valid regular expression for RE2 ({reason})"
        raise InvalidRequestError(f"protect pattern {pattern!r}: {why}; {_RE2_SYNTAX}") from None
    try:  # the same program over single bytes: each character class is one instruction
        structure = re2.compile(pattern.encode("utf-8"), _re2_options(latin1=True)).programsize
    except re2.error:
        structure = rx.programsize
    if structure > MAX_PATTERN_PROGRAM or rx.programsize > MAX_PATTERN_PROGRAM_UTF8:
        raise InvalidRequestError(
            f"protect pattern {pattern!r} is too large to run in bounded time: {structure} RE2 instructions with "
            f"each character class as one (at most {MAX_PATTERN_PROGRAM}), {rx.programsize} with its classes spelled "
            f"out in UTF-8 (at most {MAX_PATTERN_PROGRAM_UTF8}); counted repetitions ({{n,m}}) repeat what they "
            "hold, Unicode classes (\\pL) most of all")
    return rx


@functools.cache
def _preset_programs(name: str) -> list[tuple[Any, int, int]]:
    opts = _re2_options(capture=True)  # group 1: the stretch protected; group 2: must be empty
    out = []
    for pat in PROTECT_PRESETS[name]:
        rx = _re2().compile(pat, opts)
        out.append((rx, 1 if rx.groups else 0, 2 if rx.groups > 1 else 0))
    return out


# The presets say in RE2 what they said for Python's ``re``, whose \w, \d and \b are Unicode (RE2's
# are ASCII): a word character is [\pL\pN_]; "\b" before a word is a consumed non-word character
# (or the start), the stretch protected is group 1; a word must match whole where group 2, the
# rest of the word, is empty.
_W, _NW, _WH = r"[\pL\pN_]", r"[^\pL\pN_]", r"[\pL\pN_-]"
_LEAD = rf"(?:^|{_NW})"
#: named patterns for :class:`Protect` (RE2 syntax; see above)
PROTECT_PRESETS: dict[str, tuple[str, ...]] = {
    # Python: [-+]?\d(?:[\d,.]*\d)?%?
    "numbers": (r"[-+]?\p{Nd}(?:[\p{Nd},.]*\p{Nd})?%?",),
    # Python: \b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]*\b
    "ids": (rf"{_LEAD}([A-Za-z]{_WH}*\p{{Nd}}(?:{_WH}*{_W})?|[0-9]{_WH}*[A-Za-z](?:{_WH}*{_W})?)",),
    # Python: \b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b|\b[a-z]+(?:_[a-z0-9]+)+\b|\b[a-z]+[A-Z]\w*\b
    "identifiers": (rf"{_LEAD}([A-Za-z_]{_W}*(?:\.[A-Za-z_]{_W}*)+)",
                    rf"{_LEAD}([a-z]+(?:_[a-z0-9]+)+)({_W}*)",
                    rf"{_LEAD}([a-z]+[A-Z]{_W}*)"),
}


class CompressionRequest(BaseModel):
    """One compression job. ``query`` is the question or instruction; compressors that are
    not query-aware ignore it. ``budget`` None means the compressor's default budget."""

    model_config = ConfigDict(extra="forbid")

    query: str = ""
    passages: list[Passage]
    budget: Budget | None = None
    protect: Protect | None = None

    @classmethod
    def of(cls, query: str, passages: list[str | dict | Passage], budget: Budget | None = None,
           protect: Protect | dict | None = None, **budget_kw: Any) -> CompressionRequest:
        """Convenience constructor: passages may be plain strings (ids become ``p0``, ``p1``...)."""
        ps = []
        for i, p in enumerate(passages):
            if isinstance(p, str):
                p = Passage(id=f"p{i}", text=p)
            elif isinstance(p, dict):
                p = Passage(**{"id": f"p{i}", **p})
            ps.append(p)
        if budget is None and budget_kw:
            budget = Budget(**budget_kw)
        return cls(query=query, passages=ps, budget=budget, protect=protect)


class Span(BaseModel):
    """A kept piece of a source passage: ``passage.text[start:end] == text``."""

    model_config = ConfigDict(extra="forbid")

    passage_id: str
    start: int
    end: int
    text: str
    score: float | None = None


class CompressionResult(BaseModel):
    """What every compressor returns.

    ``text`` is the compressed context to hand to the reader; ``tokens_before``/``tokens_after``
    are counted with the named reader tokenizer on the rendered full and compressed contexts;
    ``timings`` holds seconds per stage. Soft-token compressors (ARC) put their tensor in
    ``soft_tokens`` (not serialised) and its shape in ``soft_token_shape``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    text: str
    spans: list[Span] = Field(default_factory=list)
    tokens_before: int
    tokens_after: int
    compressor: str
    config_hash: str
    model_id: str | None = None
    tokenizer: str | None = None
    budget: Budget | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    cache_hits: int = 0
    soft_tokens: Any = Field(default=None, exclude=True)
    soft_token_shape: list[int] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ratio(self) -> float:
        """Achieved ratio tokens_after / tokens_before (1.0 for an empty input)."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after
