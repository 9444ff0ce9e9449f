"""The one adapter under the framework integrations (LangChain, LlamaIndex, Haystack): a
framework's documents in, ragpress passages out; a :class:`~ragpress.core.types.CompressionResult`
in, one compressed text per document out, with the figures every integration puts in
``metadata["ragpress"]``. Each integration only maps its own document type onto
:class:`SourceDoc` and the :class:`Compressed` pieces back onto its document type.

What comes out of one result over several documents (one request, so the budget is shared and the
documents compete for it):

* extractive methods (``exit``, ``cprs``, ``embed-*``, ``truncate``, ``longcodezip``, ...): one
  piece per document that kept something, in input order, holding its kept spans in source order
  (joined with a space; code as it is, with a comment marker line, ``# ...`` or ``// ...``,
  wherever code was dropped), pointing back at its document (``index``);
* abstractive methods (``tcra-summary``, ``tcra``), whose text does not map back to sources: one
  piece with the whole compressed text, ``index`` the document when there was only one, else None;
* nothing kept: no piece.

``ragpress`` figures of every piece: ``compressor``, ``ratio`` reached, ``tokens_before`` and
``tokens_after`` (of the request), ``budget``, ``model_id``, ``config_hash``, ``cache_hit``, and
``spans`` (``start``, ``end``, ``score`` of each kept span in the document's text) or, on an
abstractive piece, ``sources`` (the input documents' ids).

>>> from ragpress.core.types import CompressionResult, Span
>>> docs = [SourceDoc("Acme was founded in 1990. It rained.", id="a", metadata={"title": "Acme"})]
>>> [p.id for p in to_passages(docs)]
['d0']
>>> result = CompressionResult(text="Acme was founded in 1990.", spans=[Span(passage_id="d0", start=0, end=25,
...     text="Acme was founded in 1990.")], tokens_before=10, tokens_after=6, compressor="truncate",
...     config_hash="x")
>>> [(c.index, c.text) for c in to_compressed(result, docs, to_passages(docs))]
[(0, 'Acme was founded in 1990.')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ragpress.core.errors import RagpressError
from ragpress.core.types import CompressionResult, Passage, Span

__all__ = ["Compressed", "SourceDoc", "arrange", "empty", "figures", "join_spans", "to_compressed", "to_passages"]


@dataclass(frozen=True)
class SourceDoc:
    """One framework document, framework-neutral: its text, its id (None: it has none) and its
    metadata (``title`` becomes the passage title; ``language`` reaches the code compressors)."""

    text: str
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Compressed:
    """One output document: its ``text``, the position of the input document it comes from
    (``index``; None for an abstractive text over several documents) and the ``ragpress`` figures."""

    text: str
    index: int | None
    ragpress: dict[str, Any]


def to_passages(docs: Sequence[SourceDoc]) -> list[Passage]:
    """ragpress passages for ``docs``: ids ``d0``, ``d1``, ... by position (a framework's ids may
    repeat or be missing), the title from ``metadata["title"]``, the metadata along with them."""
    out = []
    for i, d in enumerate(docs):
        if not isinstance(d.text, str):
            raise TypeError(f"document {i} has {type(d.text).__name__} content, not text")
        title = d.metadata.get("title")
        out.append(Passage(id=f"d{i}", text=d.text, title=str(title) if title else None, metadata=dict(d.metadata)))
    return out


def figures(result: CompressionResult) -> dict[str, Any]:
    """The request's figures, as every integration reports them in ``metadata["ragpress"]``."""
    return {"compressor": result.compressor, "ratio": result.ratio, "tokens_before": result.tokens_before,
            "tokens_after": result.tokens_after,
            "budget": result.budget.model_dump(exclude_none=True) if result.budget else None,
            "model_id": result.model_id, "config_hash": result.config_hash, "cache_hit": result.cache_hits > 0}


def to_compressed(result: CompressionResult, docs: Sequence[SourceDoc],
                  passages: Sequence[Passage]) -> list[Compressed]:
    """The pieces of ``result``, a compression of ``docs`` sent as ``passages`` (same order; see
    the module docstring)."""
    base = figures(result)
    if not result.spans:
        if not result.text.strip():
            return []
        only = 0 if len(docs) == 1 else None
        return [Compressed(result.text, only, {**base, "sources": [d.id for d in docs]})]
    code = _is_code(result, passages)
    position = {p.id: i for i, p in enumerate(passages)}
    by_doc: dict[int, list[Span]] = {}
    for s in result.spans:
        by_doc.setdefault(position[s.passage_id], []).append(s)
    out = []
    for i in sorted(by_doc):
        spans = sorted(by_doc[i], key=lambda s: s.start)
        text = join_spans(spans, passages[i], code)
        if text.strip():
            kept = [{"start": s.start, "end": s.end, "score": s.score} for s in spans]
            out.append(Compressed(text, i, {**base, "spans": kept}))
    return out


def arrange(pieces: Sequence[Compressed], textual: Sequence[int], n: int) -> list[Compressed | int]:
    """The output in input order, for a framework whose inputs may hold no text (images): of
    ``n`` inputs, those at positions ``textual`` were compressed into ``pieces`` (``index``
    counting the textual ones). Each item is a piece (its ``index`` now the input's position) or
    the position of an input without text, passed through as it was; an abstractive piece over
    several inputs goes where the first textual input was."""
    kept = {textual[c.index]: replace(c, index=textual[c.index]) for c in pieces if c.index is not None}
    merged = [c for c in pieces if c.index is None]
    textual_set, out = set(textual), []
    for i in range(n):
        if merged and textual and i == textual[0]:
            out.extend(merged)
        if i in kept:
            out.append(kept[i])
        elif i not in textual_set:
            out.append(i)
    return out


def empty(result: CompressionResult, index: int) -> Compressed:
    """An empty piece for document ``index`` of a result that kept nothing of it, saying why
    (``empty_reason``): for callers that return every document they were given."""
    reason = result.extra.get("empty_reason", "the compressor kept nothing")
    return Compressed("", index, {**figures(result), "spans": [], "empty_reason": reason})


def join_spans(spans: Sequence[Span], passage: Passage, code: bool) -> str:
    """Kept spans of one passage in source order: text spans joined by a space; code spans joined
    as they are, with a comment marker line (``# ...`` / ``// ...``, indented like the code it
    stands for) wherever code was dropped."""
    if not code:
        return " ".join(s.text.strip() for s in spans)
    marker = _comment_marker(passage)
    parts, cursor = [], 0
    for s in spans:
        gap = passage.text[cursor:s.start]
        if gap.strip():
            line = next(ln for ln in gap.split("\n") if ln.strip())
            parts.append(f"{line[: len(line) - len(line.lstrip())]}{marker} ...\n")
        parts.append(s.text)
        cursor = s.end
    if passage.text[cursor:].strip():
        parts.append(f"{marker} ...\n")
    return "".join(parts).rstrip("\n")


def _is_code(result: CompressionResult, passages: Sequence[Passage]) -> bool:
    """Whether the result is code (kept as it is, with markers): the method says so; a method
    this process cannot look up (a service's plugin) when the documents carry a ``language``."""
    from ragpress.core.registry import get_compressor_class

    try:
        return bool(getattr(get_compressor_class(result.compressor), "handles_code", False))
    except RagpressError:
        return any(p.metadata.get("language") for p in passages)


def _comment_marker(passage: Passage) -> str:
    """``#`` or ``//``, for the passage's ``metadata["language"]`` or, unlabelled, its guessed
    language (the code compressors' own rule)."""
    from ragpress.compressors.code_chunking import comment_marker, guess_language

    return comment_marker(passage.metadata.get("language") or guess_language(passage.text))
