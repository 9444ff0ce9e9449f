"""Types, budgets, validation, sentence splitting, token counting, the registry."""

from __future__ import annotations

import pytest

from ragpress import Budget, CompressionRequest, Passage, available, create_compressor
from ragpress.core.errors import (
    BudgetError,
    ConfigError,
    EmptyPassageError,
    EmptyQueryError,
    NoPassagesError,
    RagpressError,
    UnknownCompressorError,
    UnsupportedBudgetError,
)
from ragpress.core.sentences import split_sentences


@pytest.mark.parametrize("kw", [{"ratio": 0}, {"ratio": 1.5}, {"ratio": -0.1}, {"ratio": float("nan")},
                                {"tokens": 0}, {"threshold": 1.2}, {"threshold": -0.01}, {},
                                {"ratio": 0.3, "tokens": 10}])
def test_budget_rejects_out_of_range(kw):
    with pytest.raises(BudgetError) as e:
        Budget(**kw)
    assert "budget" in str(e.value)


def test_budget_targets():
    assert Budget(ratio=0.3).target_tokens(1000) == 300
    assert Budget(tokens=50).target_tokens(1000) == 50
    assert Budget(threshold=0.5).target_tokens(1000) is None
    assert Budget(ratio=0.3).mode == "ratio"


def test_request_validation_errors_are_typed():
    c = create_compressor("embed-sentences")
    with pytest.raises(EmptyQueryError):
        c.compress(CompressionRequest.of("   ", ["Some text."]))
    with pytest.raises(NoPassagesError):
        c.compress(CompressionRequest.of("q?", []))
    with pytest.raises(EmptyPassageError, match="passage 1"):
        c.compress(CompressionRequest.of("q?", ["fine.", " \n\t "]))
    with pytest.raises(UnsupportedBudgetError, match="threshold"):
        create_compressor("truncate").compress(CompressionRequest.of("", ["a b c."], threshold=0.5))


def test_registry_and_config_errors():
    assert {"truncate", "embed-sentences", "embed-passages"} <= set(available())
    with pytest.raises(UnknownCompressorError) as e:
        create_compressor("nope")
    assert "truncate" in e.value.message and e.value.http_status == 422
    with pytest.raises(ConfigError):
        create_compressor("embed-sentences", {"no_such_option": 1})
    assert isinstance(e.value, RagpressError)


def test_config_hash_changes_with_config():
    a = create_compressor("embed-sentences")
    b = create_compressor("embed-sentences", {"batch_size": 8})
    assert a.config_hash != b.config_hash
    assert a.config_hash == create_compressor("embed-sentences").config_hash


def test_sentence_spans_are_exact_and_bounded():
    text = "Dr. Smith went to Washington D.C. yesterday. He said hi!\n\nNew paragraph here"
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == [
        "Dr. Smith went to Washington D.C. yesterday.", "He said hi!", "New paragraph here"]
    # no sentence boundary at all: split by length, nothing lost
    blob = "word " * 3000
    spans = split_sentences(blob, max_chars=1000)
    assert all(b - a <= 1000 for a, b in spans)
    assert "".join(blob[a:b] for a, b in spans).replace(" ", "") == blob.replace(" ", "")


def test_token_counter_counts_qwen_tokens(counter):
    assert counter.name == "qwen"
    assert counter.count("") == 0
    assert counter.count_batch(["hello world", "a"]) == [counter.count("hello world"), counter.count("a")]
    text = "Tokens cost money. Compression saves them."
    offs = counter.char_offsets(text)
    assert len(offs) == counter.count(text) and offs[-1][1] == len(text)


def test_passage_forbids_unknown_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="bogus"):
        Passage(id="x", text="t", bogus=1)


@pytest.mark.parametrize("kw", [dict(ratio=0.3, floor=0.1), dict(threshold=0.5, floor=0.7, ceiling=0.5),
                                dict(threshold=0.5, ceiling=0.0), dict(tokens=10, skip_under=0)])
def test_adaptive_budget_rejects_bad_bounds(kw):
    with pytest.raises(BudgetError):
        Budget(**kw)


def test_adaptive_budget_floor_ceiling_and_skip(counter):
    """A threshold held between a floor and a ceiling ratio; a short context passes whole."""
    text = " ".join(f"Fact {i}: the river {i} is {i * 10} km long." for i in range(30))
    req = lambda b, t=text: CompressionRequest(query="How long is river 7?", passages=[Passage(id="p", text=t)], budget=b)  # noqa: E731
    comp = create_compressor("embed-sentences")
    everything, nothing = comp.compress(req(Budget(threshold=0.0))), comp.compress(req(Budget(threshold=1.0)))
    assert everything.ratio > 0.9 and nothing.ratio < 0.1
    held = comp.compress(req(Budget(threshold=0.0, ceiling=0.4)))
    assert held.ratio <= 0.4 and "ceiling" in held.extra["budget"]
    lifted = comp.compress(req(Budget(threshold=1.0, floor=0.3)))
    assert 0.2 < lifted.ratio <= 0.3 and "floor" in lifted.extra["budget"]
    short = "River 7 is 70 km long. It rains."
    skipped = comp.compress(req(Budget.adaptive(), short))
    assert skipped.text == short and skipped.ratio == 1.0 and "skip_under" in skipped.extra["skipped"]
    assert comp.compress(req(Budget(threshold=0.5, skip_under=5), short)).extra.get("skipped") is None


@pytest.mark.parametrize("title", [None, "Marie Curie"])
def test_a_unit_that_fits_the_token_budget_exactly_is_kept(counter, title):
    """Issue #13, "Also seen": with ``--tokens N`` and an N-token evidence sentence, the selection
    kept two unrelated short sentences instead (it charged a joiner and a passage separator that
    the rendered context does not have)."""
    from ragpress.core.extractive import render, select, sentence_units

    evidence = "Marie Curie won the Nobel Prize in Physics in 1903."
    passages = [Passage(id="a", text="The sky is blue. Grass is green."), Passage(id="b", title=title, text=evidence)]
    units = sentence_units(passages)
    for u in units:
        u.score = 0.9 if u.passage == 1 else 0.5
    target = counter.count(render([units[-1]], passages)[0])
    budget = Budget(tokens=target)
    kept = select(units, passages, budget, counter, counter.count(render(units, passages)[0]))
    text = render(kept, passages)[0]
    assert text == (f"{title}\n" if title else "") + evidence and counter.count(text) == target
    # the same through every extractive method built on select: embed-sentences end to end
    out = create_compressor("embed-sentences").compress(CompressionRequest(
        query="When did Marie Curie win the Nobel Prize in Physics?", passages=passages, budget=budget))
    assert out.text == text and out.tokens_after <= target
