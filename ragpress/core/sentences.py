"""Sentence splitting with character offsets (Punkt), with a length fallback for text that has
no sentence boundary (tables, code, very long run-on passages)."""

from __future__ import annotations

import functools
import re

DEFAULT_MAX_CHARS = 1500
_WS = re.compile(r"\s")


@functools.lru_cache(maxsize=4)
def _punkt(language: str):
    import punkt

    return punkt.tokenizer_for(language)


def split_sentences(text: str, language: str = "english", max_chars: int = DEFAULT_MAX_CHARS) -> list[tuple[int, int]]:
    """Sentence spans ``(start, end)`` of ``text``; ``text[start:end]`` is a sentence without its
    surrounding whitespace. A "sentence" longer than ``max_chars`` is split further at
    whitespace (or hard, when it has none) so no unit is unboundedly long.

    >>> t = "It rains. We stay in."
    >>> [t[a:b] for a, b in split_sentences(t)]
    ['It rains.', 'We stay in.']
    """
    spans: list[tuple[int, int]] = []
    for start, end in _punkt(language).span_tokenize(text):
        # Punkt keeps blank lines inside a sentence; paragraph breaks are boundaries too.
        for a, b in _split_paragraphs(text, start, end):
            spans.extend(_split_long(text, a, b, max_chars))
    return spans


def _split_paragraphs(text: str, start: int, end: int):
    pos = start
    for m in re.finditer(r"\n\s*\n", text[start:end]):
        a, b = start + m.start(), start + m.end()
        if text[pos:a].strip():
            yield strip_span(text, pos, a)
        pos = b
    if text[pos:end].strip():
        yield strip_span(text, pos, end)


def strip_span(text: str, a: int, b: int) -> tuple[int, int]:
    """``(a, b)`` narrowed so ``text[a:b]`` neither starts nor ends with whitespace."""
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _split_long(text: str, start: int, end: int, max_chars: int):
    while end - start > max_chars:
        cut = start + max_chars
        ws = max((m.start() for m in _WS.finditer(text, start + max_chars // 2, cut)), default=None)
        cut = ws if ws is not None else cut
        yield strip_span(text, start, cut)
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if start < end:
        yield start, end
