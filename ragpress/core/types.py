"""The data contract shared by every compressor, the CLI, the service and LangChain.

A :class:`CompressionRequest` carries a query (or instruction), passages and a :class:`Budget`;
a compressor answers with a :class:`CompressionResult` whose kept :class:`Span` objects point
back into the source passages by id and character offsets.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from ragpress.core.errors import BudgetError

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


class ProtectedSpan(BaseModel):
    """``passage.text[start:end]`` of the passage with id ``passage_id``."""

    model_config = ConfigDict(extra="forbid")

    passage_id: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class Protect(BaseModel):
    """What a compressor must not lose.

    * ``patterns`` / ``spans``: text a kept unit must keep verbatim (a unit cut to fit the budget
      is never cut inside them). A pattern is a regular expression or one of the presets
      ``numbers``, ``ids`` (tokens mixing letters and digits, ``ORD-102``), ``identifiers``
      (``snake_case``, ``camelCase``, ``dotted.names``);
    * ``keep`` / ``keep_patterns``: units that overlap these spans, or contain a match, are always
      kept, whatever the budget (the result may then exceed it).

    >>> Protect(patterns=["numbers"], keep_patterns=["ORD-\\d+"]).patterns
    ['numbers']
    """

    model_config = ConfigDict(extra="forbid")

    patterns: list[str] = Field(default_factory=list)
    spans: list[ProtectedSpan] = Field(default_factory=list)
    keep: list[ProtectedSpan] = Field(default_factory=list)
    keep_patterns: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _compiles(self) -> Protect:
        import re

        from ragpress.core.errors import InvalidRequestError

        for pat in [*self.patterns, *self.keep_patterns]:
            if pat in PROTECT_PRESETS:
                continue
            try:
                re.compile(pat)
            except re.error as exc:
                raise InvalidRequestError(f"protect pattern {pat!r} is not a valid regular expression: {exc}") from exc
        return self

    def regex(self, keep: bool = False):
        """One compiled alternation of the (keep) patterns, presets expanded; None if none."""
        import re

        pats = self.keep_patterns if keep else self.patterns
        if not pats:
            return None
        return re.compile("|".join(f"(?:{PROTECT_PRESETS.get(p, p)})" for p in pats))


#: named patterns for :class:`Protect`
PROTECT_PRESETS = {
    "numbers": r"[-+]?\d(?:[\d,.]*\d)?%?",
    "ids": r"\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]*\b",
    "identifiers": r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b|\b[a-z]+(?:_[a-z0-9]+)+\b|\b[a-z]+[A-Z]\w*\b",
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
