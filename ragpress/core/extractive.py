"""Shared machinery of extractive compressors: score units (sentences, passages, lines),
select them under a :class:`Budget`, render the kept ones in original order with spans.

Rendering is the same for the full and the compressed context, so token ratios compare like
with like: each passage is ``"{title}\\n{text}"`` (or just its text), passages joined by a blank
line; in a compressed passage the kept units are joined by a space.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragpress.core.sentences import split_sentences
from ragpress.core.tokens import TokenCounter
from ragpress.core.types import Budget, Passage, Span

PASSAGE_SEP = "\n\n"


@dataclass
class Unit:
    """A piece of passage ``passage`` (index in the request): ``text[start:end]``."""

    passage: int
    start: int
    end: int
    score: float = 0.0


def render_full(passages: list[Passage]) -> str:
    """The uncompressed context as the reader would see it."""
    return PASSAGE_SEP.join(_header(p) + p.text for p in passages)


def _header(p: Passage) -> str:
    return f"{p.title}\n" if p.title else ""


def sentence_units(passages: list[Passage], language: str = "english") -> list[Unit]:
    """One unit per sentence of every passage, in order."""
    return [Unit(i, a, b) for i, p in enumerate(passages) for a, b in split_sentences(p.text, language)]


def passage_units(passages: list[Passage]) -> list[Unit]:
    """One unit per passage (whole text)."""
    return [Unit(i, 0, len(p.text)) for i, p in enumerate(passages)]


def select(units: list[Unit], passages: list[Passage], budget: Budget, counter: TokenCounter,
           tokens_before: int, score_threshold: float | None = None) -> list[Unit]:
    """Units to keep, in original order.

    * threshold budget: every unit whose score reaches it;
    * ratio / tokens budget: the best-scoring units, greedily, skipping any that would overflow,
      so the rendered context ends at or under the target and within one unit of it. A passage's
      title costs its tokens once, when its first unit is taken.
    """
    if budget.mode == "threshold":
        thr = budget.threshold if score_threshold is None else score_threshold
        return [u for u in units if u.score >= thr]
    target = budget.target_tokens(tokens_before)
    costs = counter.count_batch([passages[u.passage].text[u.start:u.end] for u in units])
    headers = counter.count_batch([_header(p) for p in passages])
    order = sorted(range(len(units)), key=lambda i: (-units[i].score, i))
    used, opened, kept = 0, set(), []
    for i in order:
        u = units[i]
        cost = costs[i] + 1  # the joining space / newline
        if u.passage not in opened:
            cost += headers[u.passage] + 1
        if used + cost <= target:
            used += cost
            opened.add(u.passage)
            kept.append(i)
    return [units[i] for i in sorted(kept)]


def render(units: list[Unit], passages: list[Passage]) -> tuple[str, list[Span]]:
    """Compressed context and spans for kept ``units`` (in original order)."""
    by_passage: dict[int, list[Unit]] = {}
    for u in sorted(units, key=lambda u: (u.passage, u.start)):
        by_passage.setdefault(u.passage, []).append(u)
    blocks, spans = [], []
    for pi, us in by_passage.items():
        p = passages[pi]
        blocks.append(_header(p) + " ".join(p.text[u.start:u.end] for u in us))
        spans.extend(Span(passage_id=p.id, start=u.start, end=u.end, text=p.text[u.start:u.end],
                          score=float(u.score)) for u in us)
    return PASSAGE_SEP.join(blocks), spans
