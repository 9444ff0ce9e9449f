"""The evaluation harness on real dataset records (truncate needs no model, so this is fast)."""

from __future__ import annotations

import json

import pytest

from ragpress.core.types import Budget, CompressionResult, Span
from ragpress.evaluation import (
    DatasetError,
    answer_in,
    evaluate,
    kept_supporting,
    load_records,
    normalize_answer,
    parse_budget,
    write_report,
)
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def hotpot_records():
    return load_records(shared_data("hotpotqa", "hotpotqa_dev_distractor_sf.jsonl"), limit=6)


def test_normalize_and_match():
    assert normalize_answer("The  Spurs!") == "spurs"
    assert answer_in(["Spurs"], normalize_answer("known as Spurs, a club"))
    assert not answer_in(["Spur"], normalize_answer("known as Spurs"))  # word boundaries


def test_records_carry_gold_sentence_spans(hotpot_records):
    raw = json.loads(open(shared_data("hotpotqa", "hotpotqa_dev_distractor_sf.jsonl"), encoding="utf-8").readline())
    rec = hotpot_records[0]
    assert rec.query == raw["question"] and rec.answers == raw["answers"]
    assert len(rec.supporting) == len(raw["supporting_facts"])
    got = sorted(rec.passages[pi].text[a:b] for pi, a, b in rec.supporting)
    assert got == sorted(s.strip() for s in raw["supporting_sentences"])


def test_supporting_recall_counts_spans(hotpot_records):
    rec = hotpot_records[0]
    pi, a, b = rec.supporting[0]
    pid = rec.passages[pi].id
    half = CompressionResult(text="x", spans=[Span(passage_id=pid, start=a, end=a + (b - a) // 3, text="")],
                             tokens_before=10, tokens_after=1, compressor="t", config_hash="h", tokenizer="q")
    assert kept_supporting(rec, half) == (0, len(rec.supporting))
    full = half.model_copy(update={"spans": [Span(passage_id=pid, start=a, end=b, text="")]})
    assert kept_supporting(rec, full) == (1, len(rec.supporting))


def test_budget_parsing():
    assert parse_budget("0.3") == Budget(ratio=0.3)
    assert parse_budget("tokens:200") == Budget(tokens=200)
    assert parse_budget("thr:0.5") == Budget(threshold=0.5)
    with pytest.raises(DatasetError):
        parse_budget("lots")


def test_missing_dataset_is_typed(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DatasetError, match="not JSON"):
        load_records(bad)


def test_evaluate_and_report(hotpot_records, tmp_path):
    rows = evaluate(hotpot_records, ["truncate"], [Budget(ratio=0.3), Budget(ratio=1.0)], dataset="hp",
                    progress=False)
    low, full = rows
    assert low.records == full.records == len(hotpot_records)
    assert 0.2 < low.ratio_mean <= 0.3
    assert full.answer_recall == 1.0 and full.sf_recall == 1.0  # nothing dropped, everything found
    assert low.sf_recall < 1.0
    paths = write_report(rows, tmp_path / "q", title="t")
    assert "| hp | truncate | 0.3 |" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["rows"][0]["method"] == "truncate"
    assert paths["png"].stat().st_size > 1000


def test_longbench_contexts_are_cut_into_passages(tmp_path):
    from ragpress.evaluation import load_records, split_context

    ctx = "Passage 1:\nAlpha\nAlpha is a letter.\nPassage 2:\nBeta\nBeta follows alpha.\n"
    assert [p["text"] for p in split_context(ctx)] == ["Alpha\nAlpha is a letter.", "Beta\nBeta follows alpha."]
    paras = "\n\n".join(f"Paragraph {i} " + "x" * 300 for i in range(10))
    parts = split_context(paras, max_chars=1000)
    assert 1 < len(parts) < 10 and all(len(p["text"]) <= 1000 for p in parts)
    assert "".join(p["text"] for p in parts).replace("\n", "") == paras.replace("\n", "")
    f = tmp_path / "lb.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "task": "hotpotqa", "question": "Which follows alpha?", "answers": ["Beta"], "context": ctx},
        {"id": "b", "task": "gov_report", "question": "Summarise.", "answers": ["..."], "context": paras},
    ]), encoding="utf-8")
    recs = load_records(f, tasks=["hotpotqa"])
    assert [r.id for r in recs] == ["a"] and len(recs[0].passages) == 2
    leval = tmp_path / "leval.jsonl"  # L-Eval: one record per document, expanded per question
    leval.write_text(json.dumps({"id": "d", "task": "natural_question", "document": ctx,
                                 "questions": ["Which follows alpha?", "What is alpha?"],
                                 "answers": ["Beta", "a letter"]}), encoding="utf-8")
    recs = load_records(leval)
    assert [(r.id, r.answers) for r in recs] == [("d#0", ["Beta"]), ("d#1", ["a letter"])]
    assert load_records(leval, limit=1)[0].query == "Which follows alpha?"
