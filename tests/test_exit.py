"""EXIT compressor: real SmolLM2 scoring, prefix-cache path == per-sentence path, budgets, spans,
bad input. Inputs are kept short so the file runs in well under two minutes on a shared CPU."""

from __future__ import annotations

import pytest

from ragpress.compressors.exit import ExitCompressor, LMScorer
from ragpress.core.errors import ModelLoadError
from ragpress.core.extractive import render_full
from ragpress.core.registry import get_compressor_class
from ragpress.core.types import Budget, CompressionRequest, Passage

PASSAGES = [
    Passage(id="a", title="Marie Curie", text=(
        "Marie Curie was a Polish and naturalised-French physicist and chemist. "
        "She was the first woman to win a Nobel Prize. "
        "She won Nobel Prizes in both physics and chemistry.")),
    Passage(id="b", title="Warsaw", text=(
        "Warsaw is the capital of Poland. It lies on the Vistula river. "
        "The city hosts the Marie Sklodowska-Curie Museum.")),
    Passage(id="c", text="Bananas are rich in potassium. They grow in tropical regions."),
]
QUERY = "In which two sciences did Marie Curie win Nobel Prizes?"


@pytest.fixture(scope="module")
def exit_fast(causal_lm):
    return ExitCompressor(scorer="lm", max_length=512)


def _items(comp: ExitCompressor, requests: list[CompressionRequest]):
    out = []
    for r in requests:
        units = comp._units(r)
        out.append((r.query, [(p.title, [p.text[u.start:u.end] for u in us]) for p, us in zip(r.passages, units)]))
    return out


def test_registered():
    assert get_compressor_class("exit") is ExitCompressor
    assert ExitCompressor.default_budget == Budget.adaptive() == Budget(threshold=0.5, floor=0.2, ceiling=0.6, skip_under=256)


def test_prefix_cache_matches_per_sentence():
    """Fast path (prefix KV cache, batched across documents and requests, padded) and the
    reference-style per-sentence path give the same P(Yes) within 1e-3; includes an overlong
    document whose context is windowed (max_length=256)."""
    long_doc = Passage(id="long", title="Long", text=" ".join(
        f"Item {i} is {'red' if i % 3 else 'blue'}." for i in range(30)))
    reqs = [CompressionRequest(query=QUERY, passages=PASSAGES + [long_doc]),
            CompressionRequest(query="What river flows through Warsaw?", passages=PASSAGES[1:])]
    fast = LMScorer(ExitCompressor(max_length=256, batch_size=7).config)
    slow = LMScorer(ExitCompressor(max_length=256, scoring="per_sentence").config)
    items = _items(ExitCompressor(), reqs)
    plans = fast.plan(*items[0])
    assert sum(1 for g in plans if g.rows[0][0] == 3) > 1, "the long document should need several windows"
    a = fast.score_many(items)
    b = slow.score_many(items)
    flat_a = [x for r in a for d in r for x in d]
    flat_b = [x for r in b for d in r for x in d]
    assert len(flat_a) == len(flat_b) == 8 + 30 + 5
    assert max(abs(x - y) for x, y in zip(flat_a, flat_b)) < 1e-3
    assert all(0.0 < x < 1.0 for x in flat_a)
    assert len({round(x, 4) for x in flat_a}) > 10, "scores should differ between sentences"


def test_threshold_keeps_exactly_sentences_at_or_above(exit_fast):
    req = CompressionRequest(query=QUERY, passages=PASSAGES, budget=Budget(threshold=0.0))
    everything = exit_fast.compress(req)
    scores = [s.score for s in everything.spans]
    assert len(scores) == 8
    thr = sorted(scores)[len(scores) // 2]
    res = exit_fast.compress(req.model_copy(update={"budget": Budget(threshold=thr)}))
    expected = [(s.passage_id, s.start) for s in everything.spans if s.score >= thr]
    assert [(s.passage_id, s.start) for s in res.spans] == expected
    assert 0 < len(res.spans) < 8
    for s in res.spans:
        p = next(p for p in PASSAGES if p.id == s.passage_id)
        assert p.text[s.start:s.end] == s.text


def test_ratio_budget_within_one_sentence(exit_fast, hotpot_requests, counter):
    req = hotpot_requests[1].model_copy(update={"budget": Budget(ratio=0.3)})
    req = req.model_copy(update={"passages": req.passages[:4]})
    res = exit_fast.compress(req)
    before = counter.count(render_full(req.passages))
    target = round(0.3 * before)
    assert res.tokens_before == before
    assert res.tokens_after <= target
    kept = {(s.passage_id, s.start) for s in res.spans}
    units = exit_fast._units(req)
    costs = [counter.count(p.text[u.start:u.end]) + counter.count(f"{p.title}\n") + 2
             for p, us in zip(req.passages, units) for u in us if (p.id, u.start) not in kept]
    assert target - res.tokens_after <= max(costs), "budget slack should be under one sentence"
    for s in res.spans:
        p = next(p for p in req.passages if p.id == s.passage_id)
        assert p.text[s.start:s.end] == s.text
    # kept sentences are the best scored ones (greedy by score), in original order
    assert [s.start for s in res.spans if s.passage_id == res.spans[0].passage_id] == sorted(
        s.start for s in res.spans if s.passage_id == res.spans[0].passage_id)


def test_long_passage_without_boundaries(causal_lm):
    """A 24k-character passage with no sentence boundary is cut by length and windowed."""
    comp = ExitCompressor(scorer="lm", max_length=256, max_sentence_chars=1500)
    text = " ".join(f"tok{i}" for i in range(4000))
    req = CompressionRequest(query="Which token comes after tok1999?", passages=[Passage(id="x", text=text)],
                             budget=Budget(tokens=1200))
    res = comp.compress(req)
    assert res.extra["sentences"] >= 16
    assert 0 < res.tokens_after <= 1200
    assert all(len(s.text) <= 1500 and text[s.start:s.end] == s.text for s in res.spans)


def test_non_english_and_long_query(exit_fast):
    query = " ".join(["Welche Stadt ist die Hauptstadt von Polen und an welchem Fluss liegt sie?"] * 12)
    req = CompressionRequest(query=query, passages=[
        Passage(id="de", text="Warschau ist die Hauptstadt Polens. Sie liegt an der Weichsel."),
        Passage(id="zh", text="华沙是波兰的首都。它位于维斯瓦河畔。"),
    ], budget=Budget(ratio=0.5))
    res = exit_fast.compress(req)
    assert res.tokens_after <= round(0.5 * res.tokens_before)
    assert all(0.0 <= s.score <= 1.0 for s in res.spans)


def test_unknown_hub_id_raises_model_load_error():
    comp = ExitCompressor(scorer="lm", model="ragpress-test/no-such-exit-model")
    with pytest.raises(ModelLoadError, match="no-such-exit-model"):
        comp.compress(CompressionRequest(query=QUERY, passages=PASSAGES, budget=Budget(ratio=0.5)))


def test_published_adapter_not_cached_is_a_clear_error():
    from ragpress.core.models import cached_hub_file as _cached_file

    if _cached_file("doubleyyh/exit-gemma-2b", "adapter_config.json"):
        pytest.skip("the EXIT adapter is in the local cache here")
    comp = ExitCompressor(scorer="lm", model="doubleyyh/exit-gemma-2b")
    with pytest.raises(ModelLoadError, match="gemma-2b-it"):
        comp.compress(CompressionRequest(query=QUERY, passages=PASSAGES, budget=Budget(ratio=0.5)))


def test_head_scorer_plugs_in(embedder):
    """scorer='head' goes through the same selection; scores are probabilities."""
    comp = ExitCompressor(scorer="head")
    res = comp.compress(CompressionRequest(query=QUERY, passages=PASSAGES, budget=Budget(threshold=0.0)))
    assert len(res.spans) == 8 and all(0.0 <= s.score <= 1.0 for s in res.spans)
    assert comp.model_id.startswith("exit-head:")


def test_naming_a_model_selects_the_lm_scorer():
    assert ExitCompressor().config.scorer == "head"
    assert ExitCompressor(model="doubleyyh/exit-gemma-2b").config.scorer == "lm"
    assert ExitCompressor(model="x", scorer="head").config.scorer == "head"
