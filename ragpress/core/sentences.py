"""Sentence splitting with character offsets (Punkt where it has a model, rules for Chinese and
Japanese), a language guess when none is given, and a length fallback for text that has no
sentence boundary (very long run-on passages). CJK terminators (。！？ and their full-width /
half-width forms) end a sentence whatever the language."""

from __future__ import annotations

import functools
import re

DEFAULT_MAX_CHARS = 1500
_WS = re.compile(r"\s")


#: languages Punkt has a model (or rules) for
PUNKT_LANGUAGES = frozenset({
    "czech", "danish", "dutch", "english", "estonian", "finnish", "french", "german", "greek",
    "italian", "malayalam", "norwegian", "polish", "portuguese", "russian", "slovene", "spanish",
    "swedish", "turkish", "chinese", "japanese",
})
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
# a CJK sentence ends at 。！？ (or ｡ ．！？ full-width forms, "!?" after CJK), plus closing quotes
_CJK_END = re.compile(r"(?:[。｡！？]|(?<=[\u3040-\u30ff\u3400-\u9fff])[.!?．])+[」』）】〕〉》\"')”’]*")
_STOP = {
    "english": {"the", "and", "of", "is", "to", "in", "was", "that", "with", "for"},
    "german": {"der", "die", "das", "und", "ist", "nicht", "mit", "ein", "eine", "den", "von", "zu"},
    "french": {"le", "la", "les", "et", "est", "des", "une", "dans", "du", "pour", "que", "en"},
    "spanish": {"el", "la", "los", "las", "y", "es", "del", "una", "por", "para", "que", "en"},
    "italian": {"il", "la", "che", "di", "e", "è", "una", "per", "del", "della", "sono", "non"},
    "dutch": {"de", "het", "een", "en", "van", "is", "niet", "met", "voor", "op", "dat", "zijn"},
    "portuguese": {"o", "a", "os", "as", "e", "é", "do", "da", "um", "uma", "não", "para"},
}


@functools.lru_cache(maxsize=16)
def _punkt(language: str):
    import punkt

    return punkt.tokenizer_for(language if language in PUNKT_LANGUAGES else "english")


def guess_language(text: str) -> str:
    """A Punkt language name for ``text``: ``chinese`` / ``japanese`` (kana) / ``korean`` by
    script, else the Latin-script language whose common words it uses most (``english`` on a tie).

    >>> guess_language("Der Hund ist nicht mit dem Ball gelaufen."), guess_language("東京は首都です。")
    ('german', 'japanese')
    """
    sample = text[:4000]
    cjk = len(_CJK.findall(sample))
    if cjk and cjk * 4 >= len(re.sub(r"\s", "", sample)):
        if _KANA.search(sample):
            return "japanese"
        return "korean" if _HANGUL.search(sample) else "chinese"
    words = re.findall(r"\w+", sample.lower())
    best, best_n = "english", 0
    for lang, stop in _STOP.items():
        n = sum(w in stop for w in words)
        if n > best_n:
            best, best_n = lang, n
    return best


def split_sentences(text: str, language: str | None = "auto", max_chars: int = DEFAULT_MAX_CHARS) -> list[tuple[int, int]]:
    """Sentence spans ``(start, end)`` of ``text``; ``text[start:end]`` is a sentence without its
    surrounding whitespace. ``language`` is a Punkt language name, or ``"auto"`` / None to guess
    it (:func:`guess_language`). A "sentence" longer than ``max_chars`` is split further at
    whitespace (or hard, when it has none) so no unit is unboundedly long.

    >>> t = "It rains. We stay in."
    >>> [t[a:b] for a, b in split_sentences(t)]
    ['It rains.', 'We stay in.']
    """
    if not language or language == "auto":
        language = guess_language(text)
    spans: list[tuple[int, int]] = []
    has_cjk = _CJK.search(text) is not None
    for start, end in _punkt(language).span_tokenize(text):
        # Punkt keeps blank lines inside a sentence; paragraph breaks are boundaries too.
        for a, b in _split_paragraphs(text, start, end):
            for c, d in (_split_cjk(text, a, b) if has_cjk else [(a, b)]):
                spans.extend(_split_long(text, c, d, max_chars))
    return spans


def _split_cjk(text: str, start: int, end: int):
    pos = start
    for m in _CJK_END.finditer(text, start, end):
        if m.end() < end and text[pos:m.end()].strip():
            yield strip_span(text, pos, m.end())
            pos = m.end()
    if text[pos:end].strip():
        yield strip_span(text, pos, end)


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
