"""Where an answer is in what a reader wrote.

Small instruction-tuned readers often open with a lead-in ("The answer to the question is:")
and, asked for "only the answer", put a line break after it: cut at the first line break, the
answer would be the lead-in alone. :func:`find_answer` reads a generation the way a person
does: lines that are only a lead-in are passed over, a lead-in in front of the answer is
dropped (as are quotes around the whole answer), and the answer ends at the first stop string
after it (with ``sentence=True`` also at the end of its first sentence). The local reader
calls it after every generated token (through :meth:`~ragpress.readers.base.Prompt.progress`),
so generation stops where the answer ends, and the pieces it streams are :func:`settled`
prefixes of the final answer.

>>> find_answer("The answer to the question is:\\n\\nJane Roe\\nMore text", ("\\n",))
('Jane Roe', True)
>>> find_answer('The answer is: "Jane Roe"', ("\\n",))
('Jane Roe', False)
>>> find_answer("The answer is:\\n", ("\\n",))  # a lead-in is never the answer
('', False)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# "[So,] [based on the given passages,] [the] [final] answer [to the question] is[:]" or "Answer:";
# a clause of the first kind alone ("According to the passage, ...") is a lead-in too.
_SOURCE = (r"(?:based\s+on|according\s+to|from|in)\s+(?:the\s+|this\s+|these\s+)?(?:given\s+|provided\s+)?"
           r"(?:passages?|context|information|texts?|documents?)\s*,\s*")
_ANSWER = (r"(?:here\s+is\s+|here's\s+)?(?:the\s+|my\s+)?(?:final\s+|short\s+|correct\s+|direct\s+)?answer"
           r"(?:\s+(?:to|for)\s+(?:the|this|your|that)\s+question)?"
           r"(?:\s*(?:is|would\s+be|will\s+be)\b(?!\s+not\b)\s*:?|\s*:)")  # "the answer is not given" stays
_LEAD_IN = re.compile(rf"^(?:(?:so|thus|therefore|hence|sure|okay|ok)\b[,!.]?\s*)?"
                      rf"(?:(?:{_SOURCE})?{_ANSWER}|{_SOURCE})\s*", re.IGNORECASE)
#: every word a lead-in can be made of: while a line holds only these, it may still become one
_LEAD_WORDS = frozenset(
    "so thus therefore hence sure okay ok based on according to from in the this these given provided passage "
    "passages context information text texts document documents here is here's my final short correct direct "
    "answer for your that question would will be".split())
_QUOTES = {'"': '"', "\u201c": "\u201d", "'": "'", "\u2018": "\u2019", "\u00ab": "\u00bb"}


def strip_lead_in(line: str, quotes: bool = True) -> str:
    """``line`` without the lead-ins in front of it and (``quotes``) without quotes around the
    whole of it.

    >>> strip_lead_in('The answer is: "The answer is: Australia"')
    'Australia'
    >>> strip_lead_in("Answer the phone")  # "answer" as a word of the answer stays
    'Answer the phone'
    """
    line = line.strip()
    while True:
        m = _LEAD_IN.match(line)
        rest = line[m.end():].strip() if m and m.end() else line
        if quotes and len(rest) >= 2 and rest[0] in _QUOTES and rest.endswith(_QUOTES[rest[0]]) \
                and _QUOTES[rest[0]] not in rest[1:-1]:
            rest = rest[1:-1].strip()
        if rest == line:
            return line
        line = rest


def is_lead_in(line: str) -> bool:
    """Whether ``line`` is nothing but a lead-in ("The answer to the question is:")."""
    return bool(line.strip()) and not strip_lead_in(line)


def find_answer(text: str, stop: Sequence[str] = ("\n",), sentence: bool = False,
                quotes: bool = True) -> tuple[str, bool]:
    """The answer in the generated ``text`` so far, and whether it has ended (a stop string
    met after it, or with ``sentence`` a second sentence begun). Lines that are only a lead-in
    are passed over; the answer is "" while none has begun."""
    stop = [s for s in stop if s]
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        at = min((i for s in stop if (i := text.find(s, pos)) >= 0), default=-1)
        line = text[pos:at] if at >= 0 else text[pos:]
        if at >= 0 and is_lead_in(line):
            pos = at + next(len(s) for s in stop if text.startswith(s, at))
            continue
        answer = strip_lead_in(line, quotes)
        if sentence and answer:
            first = first_sentence(answer)
            if first != answer:
                return first, True
        return answer, at >= 0


def first_sentence(text: str) -> str:
    """``text`` up to the end of its first sentence (Punkt: "D. Ross Lederman" is one)."""
    from ragpress.core.sentences import split_sentences

    spans = split_sentences(text, "auto")
    return text[: spans[0][1]] if len(spans) > 1 else text


def settled(text: str, stop: Sequence[str] = ("\n",), sentence: bool = False) -> str:
    """The part of :func:`find_answer`'s answer that more text can no longer change: what a
    stream may send. Held back: a line that may still turn out to be a lead-in (all its words
    are lead-in words), an answer that opens with a quote (dropped if it ends with its pair),
    a stop string that may be forming at the end, and (with ``sentence``) all from the first
    full stop, question or exclamation mark on (the first sentence may end there)."""
    answer, ended = find_answer(text, stop, sentence)
    if ended:
        return answer
    unquoted = find_answer(text, stop, sentence, quotes=False)[0]
    if not answer or unquoted[:1] in _QUOTES or _may_lead_in(answer):
        return ""
    keep = len(answer)
    for s in stop:
        for k in range(min(len(s), len(answer)), 0, -1):
            if answer.endswith(s[:k]):
                keep = min(keep, len(answer) - k)
                break
    if sentence and (m := re.search(r"[.!?\u3002\uff01\uff1f]", answer)):
        keep = min(keep, m.start())
    return answer[:keep].rstrip()


def answer_begun(answer: str) -> bool:
    """Whether :func:`find_answer`'s ``answer`` has begun: not empty, and not text that may
    still grow into a lead-in."""
    return bool(answer) and not _may_lead_in(answer)


def _may_lead_in(text: str) -> bool:
    """Whether ``text`` may still grow into a lead-in: all its words are lead-in words (the last
    one, when it may be unfinished, the start of one)."""
    words = re.findall(r"[\w']+", text.lower())
    if words and re.search(r"[\w']$", text):
        last = words.pop()
        if not any(w.startswith(last) for w in _LEAD_WORDS):
            return False
    return all(w in _LEAD_WORDS for w in words)
