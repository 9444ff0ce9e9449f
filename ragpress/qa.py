"""QA records: the shared QA files (HotpotQA, 2Wiki, MuSiQue, NQ-open, LongBench, L-Eval) as
:class:`EvalRecord` objects with their gold evidence, and the answer metrics (SQuAD normalisation,
exact match, token F1, evidence kept).

Training (the EXIT head, the CPRS critic, the ARC encoder) and evaluation (:mod:`ragpress.evaluation`)
both read records from here, so compressors never import the evaluation harness.

>>> records = load_records(default_data_dir() / "hotpotqa" / "hotpotqa_dev_distractor_sf.jsonl", limit=5)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragpress.core.errors import RagpressError
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage

YES_NO = {"yes", "no"}


class DatasetError(RagpressError):
    """A dataset file is missing or not in a supported layout."""

    code = "bad_dataset"


# ----------------------------------------------------------------------------- records
@dataclass
class EvalRecord:
    """One question with its retrieved passages and its gold evidence.

    ``supporting`` lists (passage index, start, end) character spans of gold supporting sentences
    in ``passages[i].text``; ``supporting_passages`` lists passage indices with gold support.
    """

    id: str
    query: str
    passages: list[Passage]
    answers: list[str]
    supporting: list[tuple[int, int, int]] = field(default_factory=list)
    supporting_passages: list[int] = field(default_factory=list)

    def request(self, budget: Budget | None) -> CompressionRequest:
        return CompressionRequest(query=self.query, passages=self.passages, budget=budget)


def default_data_dir() -> Path:
    """Where the shared QA data lives: ``$RAGPRESS_DATA``, else ``shared/data`` beside the checkout."""
    env = os.environ.get("RAGPRESS_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _sentence_spans(text: str, sentences: list[str]) -> list[tuple[int, int]]:
    """Character spans of the dataset's own sentences in ``text`` (in order)."""
    spans, pos = [], 0
    for s in sentences:
        core = s.strip()
        if not core:
            spans.append((pos, pos))
            continue
        at = text.find(core, pos)
        if at < 0:
            at = text.find(core)
        if at < 0:
            spans.append((pos, pos))
            continue
        spans.append((at, at + len(core)))
        pos = at + len(core)
    return spans


_PASSAGE_MARK = re.compile(r"(?m)^Passage \d+:\s*\n")


def split_context(context: str, max_chars: int = 2000) -> list[dict[str, str]]:
    """Passages of one long context (LongBench): its ``Passage N:`` sections when it has them,
    else its paragraphs merged up to ``max_chars`` (a longer paragraph stays whole: the
    compressors split it further)."""
    if _PASSAGE_MARK.search(context):
        return [{"text": t.strip()} for t in _PASSAGE_MARK.split(context) if t.strip()]
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", context):
        if cur and len(cur) + len(para) > max_chars:
            out.append({"text": cur.strip()})
            cur = ""
        cur += ("\n\n" if cur else "") + para
    if cur.strip():
        out.append({"text": cur.strip()})
    return out


def record_from_json(r: dict[str, Any]) -> EvalRecord:
    """One record of the shared QA files (fields ``id``, ``question``, ``answers``, ``passages``
    with ``title``/``text``[/``sentences``], optional ``supporting_facts`` [[title, sent_idx]]
    and ``supporting_passage_idx``), or of LongBench (``context`` instead of ``passages``,
    cut by :func:`split_context`). L-Eval's per-document records are expanded per question by
    :func:`load_records`."""
    try:
        rid, query, answers = str(r["id"]), r["question"], list(r["answers"])
        raw = r["passages"] if "passages" in r or "context" not in r else split_context(r["context"] or "")
    except KeyError as exc:
        raise DatasetError(f"record lacks field {exc.args[0]!r}; need id, question, answers, passages") from None
    passages, sentence_spans = [], []
    for i, p in enumerate(raw):
        text = p.get("text") or p.get("contents") or ""
        passages.append(Passage(id=f"{rid}:{i}", title=p.get("title") or None, text=text))
        sentence_spans.append(_sentence_spans(text, p["sentences"]) if p.get("sentences") else None)
    # drop empty passages (compressors reject them) and remap indices
    keep = [i for i, p in enumerate(passages) if p.text.strip()]
    remap = {old: new for new, old in enumerate(keep)}
    supporting = []
    by_title: dict[str, list[int]] = {}
    for i in keep:
        by_title.setdefault(raw[i].get("title") or "", []).append(i)
    for title, idx in r.get("supporting_facts") or []:
        for i in by_title.get(title, []):
            spans = sentence_spans[i]
            if spans and 0 <= idx < len(spans) and spans[idx][1] > spans[idx][0]:
                supporting.append((remap[i], *spans[idx]))
                break
    sup_passages = sorted({remap[i] for i in r.get("supporting_passage_idx") or [] if i in remap})
    if not sup_passages and supporting:
        sup_passages = sorted({s[0] for s in supporting})
    return EvalRecord(rid, query, [passages[i] for i in keep], answers, supporting, sup_passages)


def _records_of(raw: dict[str, Any]) -> list[EvalRecord]:
    """One record, or one per question for L-Eval's ``document`` + ``questions`` + ``answers``."""
    if "document" in raw and isinstance(raw.get("questions"), list):
        answers = raw.get("answers") or []
        return [record_from_json({"id": f"{raw.get('id')}#{k}", "question": q,
                                  "answers": a if isinstance(a, list) else [a], "context": raw["document"]})
                for k, (q, a) in enumerate(zip(raw["questions"], answers))]
    return [record_from_json(raw)]


def load_records(path: str | Path, limit: int | None = None, tasks: Sequence[str] | None = None) -> list[EvalRecord]:
    """Records of a shared QA JSONL file (the first ``limit`` ones, file order; only those whose
    ``task`` is in ``tasks`` when given, e.g. LongBench's ``hotpotqa``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    out: list[EvalRecord] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{n} is not JSON: {exc.msg}") from None
            if tasks and raw.get("task") not in tasks:
                continue
            for rec in _records_of(raw):
                if rec.passages:
                    out.append(rec)
                if limit and len(out) >= limit:
                    break
            if limit and len(out) >= limit:
                break
    if not out:
        raise DatasetError(f"{path} holds no usable records")
    return out


# ----------------------------------------------------------------------------- metrics
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def answer_in(answers: Iterable[str], context_norm: str) -> bool:
    """Whether any normalised answer occurs in the normalised context, on word boundaries."""
    padded = f" {context_norm} "
    return any(a and f" {a} " in padded for a in (normalize_answer(x) for x in answers))


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold alias, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def _f1(pred_toks: list[str], gold_toks: list[str]) -> float:
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_toks), same / len(gold_toks)
    return 2 * p * r / (p + r)


def token_f1(prediction: str, answers: Iterable[str]) -> float:
    """SQuAD token F1 of the prediction against the best gold alias (0.0 without aliases)."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(a).split()) for a in answers), default=0.0)


def answerable(record: EvalRecord) -> bool:
    return not all(normalize_answer(a) in YES_NO for a in record.answers)


def full_context(record: EvalRecord) -> str:
    from ragpress.core.extractive import render_full

    return render_full(record.passages)


def kept_supporting(record: EvalRecord, result: CompressionResult) -> tuple[int, int]:
    """(kept, total) gold supporting sentences of ``record`` in ``result``."""
    if not record.supporting:
        return 0, 0
    covered: dict[str, list[tuple[int, int]]] = {}
    for s in result.spans:
        covered.setdefault(s.passage_id, []).append((s.start, s.end))
    text_norm = f" {normalize_answer(result.text)} "
    kept = 0
    for pi, a, b in record.supporting:
        pid = record.passages[pi].id
        overlap = sum(max(0, min(b, e) - max(a, s)) for s, e in covered.get(pid, []))
        sent = record.passages[pi].text[a:b]
        if overlap >= 0.5 * (b - a) or f" {normalize_answer(sent)} " in text_norm:
            kept += 1
    return kept, len(record.supporting)


def kept_passages(record: EvalRecord, result: CompressionResult) -> tuple[int, int]:
    if not record.supporting_passages:
        return 0, 0
    ids = {s.passage_id for s in result.spans if s.end > s.start}
    return sum(record.passages[i].id in ids for i in record.supporting_passages), len(record.supporting_passages)
