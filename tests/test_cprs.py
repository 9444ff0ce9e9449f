"""QwenLong-CPRS: real offline model (SmolLM2 lower layers + shipped bidirectional top + critic)."""

from __future__ import annotations

import numpy as np
import pytest

from ragpress.compressors.cprs import (
    DEFAULT_WEIGHTS,
    HUB_MODEL,
    CPRSCompressor,
    build_windows,
    read_weights_meta,
    smooth,
    tokenize_passage,
)
from ragpress.core.errors import (
    ConfigError,
    EmptyQueryError,
    ModelLoadError,
    NoPassagesError,
)
from ragpress.core.extractive import render_full
from ragpress.core.types import Budget, CompressionRequest, Passage
from ragpress.training.cprs import TAG_B, TAG_E, TAG_I, TAG_O, token_labels


@pytest.fixture(scope="module")
def cprs() -> CPRSCompressor:
    return CPRSCompressor()


@pytest.fixture(scope="module")
def two(hotpot_requests):
    return hotpot_requests[:2]


@pytest.fixture(scope="module")
def scored(cprs, two):
    """Token probabilities of two HotpotQA dev requests, scored together (one forward batch)."""
    return cprs._token_probs(two)


def _assert_exact(request: CompressionRequest, result) -> None:
    by_id = {p.id: p for p in request.passages}
    for s in result.spans:
        assert by_id[s.passage_id].text[s.start:s.end] == s.text
        assert s.text and s.text == s.text.strip()
        assert s.text in result.text


def test_shipped_weights_are_small_and_described():
    assert DEFAULT_WEIGHTS.exists()
    assert DEFAULT_WEIGHTS.stat().st_size < 16_000_000
    meta = read_weights_meta(DEFAULT_WEIGHTS)
    assert meta["n_upper"] >= 1 and meta["labels"] == ["B", "I", "O", "E"]
    assert DEFAULT_WEIGHTS.with_suffix(".json").exists()


def test_every_token_scored_probabilities(scored, two):
    toks, probs, stats = scored
    assert stats["windows"] >= 2
    for req, pts, prs in zip(two, toks, probs):
        assert len(pts) == len(req.passages)
        for pt, pr in zip(pts, prs):
            assert len(pr) == len(pt.ids) and not np.isnan(pr).any()
            assert ((pr >= 0) & (pr <= 1)).all()


def test_ratio_budget_honoured_and_spans_exact(cprs, two):
    results = cprs.compress_batch([r.model_copy(update={"budget": Budget(ratio=0.3)}) for r in two])
    for req, res in zip(two, results):
        assert res.compressor == "cprs" and res.model_id == "cprs-smollm2-135m"
        assert 0 < res.tokens_after <= round(0.3 * res.tokens_before)
        assert res.ratio > 0.1  # greedy sentence fill stops within one sentence of the target
        _assert_exact(req, res)
        assert res.tokens_before == cprs.counter.count(render_full(req.passages))


def test_rebudgeting_reuses_scores(cprs, two):
    first = cprs.compress(two[1].model_copy(update={"budget": Budget(ratio=0.5)}))
    again = CPRSCompressor().compress(two[1].model_copy(update={"budget": Budget(ratio=0.5)}))
    assert again.extra["score_cache_hits"] == 1 and again.text == first.text
    other = CPRSCompressor(granularity="paragraphs").compress(two[1].model_copy(update={"budget": Budget(ratio=0.5)}))
    assert other.extra["score_cache_hits"] == 0  # another system prompt is another scoring


def test_token_budget_and_keywords_granularity(two):
    comp = CPRSCompressor(granularity="keywords")
    res = comp.compress(two[0].model_copy(update={"budget": Budget(tokens=60)}))
    assert 0 < res.tokens_after <= 60
    _assert_exact(two[0], res)


def test_threshold_mode_is_monotone(cprs, scored, two):
    toks, probs, _ = scored
    req = two[0]
    before = cprs.counter.count(render_full(req.passages))
    kept = {}
    for thr in (0.0, 0.3, 0.7, 1.0):
        r = req.model_copy(update={"budget": Budget(threshold=thr)})
        units = cprs.decode(r, toks[0], probs[0], before)
        kept[thr] = sum(u.end - u.start for u in units)
    assert kept[0.0] == sum(len(p.text) for p in req.passages) - _gaps(req)
    assert kept[0.0] >= kept[0.3] >= kept[0.7] >= kept[1.0]
    res = cprs.compress(req.model_copy(update={"budget": Budget(threshold=0.5)}))
    _assert_exact(req, res)


def _gaps(req) -> int:
    """Characters between sentences (whitespace) that sentence completion leaves out."""
    from ragpress.core.sentences import split_sentences

    return sum(len(p.text) - sum(b - a for a, b in split_sentences(p.text)) for p in req.passages)


def test_window_parallel_equals_single_window(cprs, scored, two):
    """A short context alone, in its single window, scores the same as inside a padded batch
    of other requests' windows."""
    short = CompressionRequest(query=two[0].query, passages=two[0].passages[:1])
    alone = cprs._token_probs([short])  # the model itself, not the score cache
    assert alone[2]["windows"] == 1
    batched = cprs._token_probs([short, two[1]])
    np.testing.assert_allclose(alone[1][0][0], batched[1][0][0], atol=2e-3)


def test_long_context_split_into_windows(two):
    comp = CPRSCompressor(window_tokens=64)
    long = CompressionRequest(query=two[0].query, passages=two[0].passages[:3], budget=Budget(ratio=0.4))
    toks, probs, stats = comp._token_probs([long])
    n_tokens = sum(len(pt.ids) for pt in toks[0])
    assert n_tokens > 64 and stats["windows"] >= n_tokens // 64
    assert all(not np.isnan(pr).any() for pr in probs[0])
    res = comp.compress(long)
    assert 0 < res.tokens_after <= round(0.4 * res.tokens_before)
    _assert_exact(long, res)


def test_windows_cut_at_sentence_boundaries(cprs):
    tok = cprs.load().tokenizer
    text = " ".join(f"Sentence number {i} talks about topic {i} at some length." for i in range(40))
    pt = tokenize_passage(tok, "T", text)
    windows = build_windows(0, [pt], 50, [])
    starts = {a for a, _ in pt.segments}
    for w in windows[1:]:
        assert w.slots[0][1] in starts  # every window opens at a sentence start
    assert [k for w in windows for _, k in w.slots] == list(range(len(pt.ids)))


def test_smooth_merges_gaps_and_drops_islands():
    keep = np.array([1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    assert smooth(keep, merge_gap=1, min_len=3) == [(0, 5), (14, 18)]
    assert smooth(keep, merge_gap=0, min_len=1) == [(0, 2), (3, 5), (9, 10), (14, 18)]


def test_bioe_labels():
    offsets = [(-3, -1), (0, 4), (4, 9), (9, 12), (12, 20)]
    assert token_labels(offsets, [(4, 12)]) == [-100, TAG_O, TAG_B, TAG_E, TAG_O]
    assert token_labels(offsets, [(0, 20)])[1:] == [TAG_B, TAG_I, TAG_I, TAG_E]


def test_bad_input_typed_errors(cprs):
    with pytest.raises(EmptyQueryError):
        cprs.compress(CompressionRequest.of("  ", ["Some text."]))
    with pytest.raises(NoPassagesError):
        cprs.compress(CompressionRequest(query="q", passages=[]))
    with pytest.raises(ConfigError):
        CPRSCompressor(window_tokens=0)
    with pytest.raises(ConfigError):
        CPRSCompressor(granularity="words")
    with pytest.raises(ModelLoadError):
        CPRSCompressor(weights="/nonexistent/cprs.safetensors").compress(
            CompressionRequest.of("q", ["Some text."]))


def test_hub_model_not_in_cache_raises_model_load_error():
    comp = CPRSCompressor(model=HUB_MODEL)
    assert comp.model_id == HUB_MODEL
    with pytest.raises(ModelLoadError, match="QwenLong-CPRS-7B"):
        comp.compress(CompressionRequest.of("Who?", [Passage(id="a", text="Nobody knows.")]))


def test_registered():
    from ragpress.core.registry import get_compressor_class

    assert get_compressor_class("cprs") is CPRSCompressor


def test_upper_layers_are_bidirectional(cprs):
    """A change at the end of the context moves an early token's score only through the
    bidirectional top (the lower layers are causal)."""
    import torch

    model = cprs.load()
    tok = model.tokenizer
    a = tok("Paris is the capital of France. The river is the Seine.", add_special_tokens=False)["input_ids"]
    b = a[:-3] + tok(" Loire valley.", add_special_tokens=False)["input_ids"]
    ids = [torch.tensor([x]) for x in (a, b)]
    masks = [torch.ones_like(x) for x in ids]
    with torch.inference_mode():
        low = [model.run_lower(i, m)[0, :4] for i, m in zip(ids, masks)]
    torch.testing.assert_close(low[0], low[1])  # causal: prefix unaffected by the later change
    pa, pb = (model.keep_probs(i, m)[0, :4] for i, m in zip(ids, masks))
    assert not torch.allclose(pa, pb, atol=1e-7)


def test_qwenlong_checkpoint_layout_loads(tmp_path, two):
    """The QwenLong-CPRS checkpoint layout (Qwen2 body under ``model.``, a 4-way ``cls_head``)
    loads through the hub path (AutoModel + head) from a local directory; a tiny random Qwen2
    stands in for the 7B, which this machine does not have."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ragpress.compressors.cprs import load_cprs_model

    tok = CPRSCompressor().load().tokenizer
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["cls_head.weight"] = torch.randn(4, 32)
    state["cls_head.bias"] = torch.zeros(4)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    model = load_cprs_model(str(tmp_path), None, "cpu")
    assert model.meta["n_upper"] >= 1 and all(not layer.self_attn.is_causal for layer in model.upper)
    torch.testing.assert_close(model.head.weight, state["cls_head.weight"])
    comp = CPRSCompressor(model=str(tmp_path), device="cpu")
    req = CompressionRequest(query=two[0].query, passages=two[0].passages[:2], budget=Budget(ratio=0.5))
    res = comp.compress(req)
    assert res.model_id == str(tmp_path) and 0 < res.tokens_after <= round(0.5 * res.tokens_before)
    _assert_exact(req, res)

    bad = tmp_path / "nohead"
    Qwen2ForCausalLM(cfg).save_pretrained(bad)
    tok.save_pretrained(bad)
    with pytest.raises(ModelLoadError, match="cls_head"):
        load_cprs_model(str(bad), None, "cpu")
