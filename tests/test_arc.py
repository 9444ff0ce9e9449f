"""ARC-Encoder soft tokens: pooling and spans, training helps, Redis round-trip, the reader reads
them in a mixed batch, mismatch is typed, and a kyutai-format checkpoint runs through the same
encoder. Real models (SmolLM2 reader + the shipped encoder), real redis-server."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from ragpress.compressors.arc import (  # noqa: E402
    EncoderSpec,
    encoder_from_kyutai_state,
    fresh_smollm2_encoder,
    load_offline,
    split_groups,
)
from ragpress.core.errors import BudgetError, ReaderMismatchError  # noqa: E402
from ragpress.core.registry import create_compressor  # noqa: E402
from ragpress.core.types import Budget, CompressionRequest, Passage  # noqa: E402
from ragpress.readers.base import SoftContext, context_for  # noqa: E402

from .conftest import load_jsonl, shared_data  # noqa: E402

ACME = ("Acme Corporation was founded by Jane Roe in 1990 in Springfield. It makes anvils, rockets and "
        "giant rubber bands, and it sells them mostly to coyotes.")
PARIS = "It rained all week in Paris, and the Seine rose above its banks."


@pytest.fixture(scope="module")
def arc():
    return create_compressor("arc")


@pytest.fixture(scope="module")
def reader():
    from ragpress.readers import create_reader

    return create_reader("local", max_new_tokens=8)


def test_pooling_groups_follow_the_reference():
    assert split_groups(8, 4) == [4, 4]
    assert split_groups(10, 4) == [4, 3, 3]  # remainder spread, larger groups first
    assert split_groups(3, 8) == [3]
    for n in range(1, 60):
        for pf in (4, 8):
            g = split_groups(n, pf)
            assert sum(g) == n and len(g) == math.ceil(n / pf) and max(g) - min(g) <= 1


def test_a_time_capped_phase_fits_its_steps_to_the_cap():
    from ragpress.training.arc import _fit_steps

    assert _fit_steps(2000, 3, 1.0, 10.0) == 2000  # too few steps to estimate: the plan stands
    assert _fit_steps(2000, 10, 1.0, 150.0) == 1500  # 0.1 s a step: 1500 fit in 150 s
    assert _fit_steps(2000, 10, 0.01, 150.0) == 2000  # never more than asked for
    assert _fit_steps(7, 5, 30.0, 1.0) == 5  # over the cap: the phase ends at the step done
    assert _fit_steps(2000, 10, 1.0, 0.0) == 2000  # no cap


def test_a_phase_runs_its_steps_and_stops_on_a_signal():
    import os
    import signal

    from ragpress.core.lifecycle import GracefulShutdown
    from ragpress.training.arc import _Phase

    with GracefulShutdown(grace_s=0, signals=(signal.SIGUSR1,)) as stop:
        phase = _Phase(12, 0.0, "test", stop)
        logged = [i for i in phase if phase.advance(5)]
        assert phase.done == 12 and logged == [4, 9, 11]  # every 5th step and the last
        phase = _Phase(12, 0.0, "test", stop)
        for i in phase:
            if i == 2:  # a signal during step 2: that step completes, none starts after it
                os.kill(os.getpid(), signal.SIGUSR1)
            phase.advance(5)
        assert phase.done == 3 and stop.reason == "SIGUSR1"


def test_shape_spans_and_budget(arc):
    req = CompressionRequest.of("", [{"text": ACME, "title": "Acme"}, PARIS], ratio=0.25)
    res = arc.compress(req)
    segs = arc.segments(req)
    n_vec = sum(len(split_groups(len(s.ids), 4)) + 1 for s in segs)  # + one <Cont> per segment
    assert res.soft_tokens.shape == (n_vec, 576) and res.soft_token_shape == [n_vec, 576]
    assert res.soft_tokens.dtype == torch.float16 and res.extra["soft_dtype"] == "float16"
    assert res.extra["soft_reader"] == "SmolLM2-135M-Instruct" and res.extra["pooling_factor"] == 4
    assert res.tokens_after == n_vec and res.text == ""
    assert len(res.spans) == n_vec - len(segs)
    by_passage = {p.id: p.text for p in req.passages}
    for s in res.spans:
        assert s.text == by_passage[s.passage_id][s.start:s.end]
    paris = [s for s in res.spans if s.passage_id == "p1"]
    assert paris[0].start == 0 and paris[-1].end == len(PARIS)  # the vectors cover the passage in order
    assert all(a.end <= b.start + 1 for a, b in zip(paris, paris[1:]))
    # budgets: ratio -> factor, tokens rounded to the factor that fits, too little is typed
    assert arc.compress(req.model_copy(update={"budget": Budget(ratio=0.125)})).extra["pooling_factor"] == 8
    n8 = sum(len(split_groups(len(s.ids), 8)) + 1 for s in segs)
    assert arc.compress(req.model_copy(update={"budget": Budget(tokens=n8)})).extra["pooling_factor"] == 8
    assert arc.compress(req.model_copy(update={"budget": Budget(tokens=n_vec)})).extra["pooling_factor"] == 4
    with pytest.raises(BudgetError):
        arc.compress(req.model_copy(update={"budget": Budget(tokens=n8 - 1)}))
    with pytest.raises(BudgetError):
        arc.compress(req.model_copy(update={"budget": Budget(ratio=0.05)}))


def test_trained_encoder_reconstructs_a_training_passage_better():
    from ragpress.core.models import load_causal_lm
    from ragpress.training.arc import reconstruction_accuracy

    lm, tok = load_causal_lm(None)
    passage = load_jsonl(shared_data("wiki_passages", "flashrag_wiki_sample1000.jsonl"), 3)[2]
    ids = [tok(f"{passage['title']}\n{passage['text']}", add_special_tokens=False)["input_ids"][:48]]
    trained = load_offline()
    fresh, _ = fresh_smollm2_encoder(trained.meta["spec"]["n_layers"], trained.meta["spec"]["lora_rank"],
                                     bridge_hidden=trained.meta["spec"]["bridge_hidden"], seed=1)
    fresh.eval()
    acc_trained = reconstruction_accuracy(lambda i, pf, sp: trained.encoder(i, pf, sp), lm, ids, 4)
    acc_fresh = reconstruction_accuracy(lambda i, pf, sp: fresh(i, pf, sp), lm, ids, 4)
    assert acc_trained > acc_fresh, (acc_trained, acc_fresh)


def test_soft_tokens_round_trip_through_redis_as_fp16(arc):
    from ragpress.core.cache import CachedCompressor, RedisCache, make_cache
    from ragpress.services.redis_server import RedisServer

    server = RedisServer().start()
    try:
        cache = make_cache(server.url)
        comp = create_compressor("arc")
        cached = CachedCompressor(comp, cache)
        req = CompressionRequest.of("", [ACME, PARIS], ratio=0.25)
        first = cached.compress(req)
        raw = RedisCache(server.url)
        keys = [k.decode() for k in raw._client.keys("rp:v1:soft-x4:*")]
        assert len(keys) == 2  # one entry per segment, keyed by content and encoder version
        blob = raw.get_many(keys[:1])[0]
        assert blob.startswith(b"RPS1") and b"torch" not in blob  # fp16 bytes, not a pickled tensor
        shapes = {tuple(s.shape) for s in comp.soft_segments(comp.segments(req), 4)}
        assert len(blob) - 4 - 12 in {2 * a * b for a, b in shapes}
        again = cached.compress(req)  # whole result from the cache
        assert again.cache_hits == 1 and torch.equal(again.soft_tokens, first.soft_tokens)
        assert again.soft_tokens.dtype == torch.float16
        other = cached.compress(CompressionRequest.of("", [PARIS], ratio=0.25))  # new request, cached segment
        assert comp.segment_hits >= 1
        assert torch.equal(other.soft_tokens, first.soft_tokens[-other.soft_tokens.shape[0]:])
        fresh = create_compressor("arc")  # `ragpress batch`'s path: precompute, then a query reads it back
        fresh.segment_cache = make_cache(None)
        stats = fresh.precompute([Passage(id="a", text=ACME)], Budget(ratio=0.25))
        assert stats.precomputable and stats.segments == [1] and stats.tokens_out[0] > 0
        fresh.compress(CompressionRequest.of("", [ACME], ratio=0.25))
        assert fresh.segment_hits == fresh.segment_lookups - 1 == 1
    finally:
        server.stop()


def test_reader_answers_from_soft_tokens_in_a_mixed_batch(arc, reader):
    res = arc.compress(CompressionRequest.of("", [ACME], ratio=0.25))
    soft = context_for(res)
    assert isinstance(soft, SoftContext) and soft.n == res.soft_token_shape[0]
    q_soft, q_text = "Who founded Acme Corporation?", "What is the capital of France?"
    mixed = reader.read_batch([q_soft, q_text], [soft, "Paris is the capital of France."])
    alone = reader.read_batch([q_soft], [soft])[0]
    assert mixed[0].text and mixed[0].text == alone.text  # same greedy answer inside a mixed batch
    assert "paris" in mixed[1].text.lower()
    shell = reader.prepare([q_soft], [soft])[0]
    assert mixed[0].tokens_in == reader.prompt_tokens(shell) and mixed[0].batch_size == 2
    text_in = reader.read_batch([q_soft], [ACME])[0].tokens_in
    assert mixed[0].tokens_in < text_in  # fewer reader positions than the text
    bits = reader.answer_bits([q_soft], [soft], [["Jane Roe"]])[0]
    assert bits is not None and math.isfinite(bits)


def test_soft_tokens_for_another_reader_are_a_typed_422(arc, reader):
    res = arc.compress(CompressionRequest.of("", [ACME], ratio=0.25))
    res.extra["soft_reader"] = "meta-llama/Llama-3.1-8B"
    with pytest.raises(ReaderMismatchError) as err:
        reader.read("Who founded Acme?", context_for(res))
    assert err.value.http_status == 422


def _kyutai_state(spec: EncoderSpec, n_layers_saved: int, g):
    """A random checkpoint with the reference's tensor names (Meta blocks, per-decoder specials and MLPs)."""
    s = {"embedder.tok_embeddings.weight": torch.randn(spec.vocab, spec.dim, generator=g)}
    hd = spec.head_dim
    for i in range(n_layers_saved):
        p = f"embedder.layers.{i}."
        s[p + "attention.wq.weight"] = torch.randn(spec.n_heads * hd, spec.dim, generator=g) / spec.dim ** 0.5
        s[p + "attention.wk.weight"] = torch.randn(spec.n_kv_heads * hd, spec.dim, generator=g) / spec.dim ** 0.5
        s[p + "attention.wv.weight"] = torch.randn(spec.n_kv_heads * hd, spec.dim, generator=g) / spec.dim ** 0.5
        s[p + "attention.wo.weight"] = torch.randn(spec.dim, spec.n_heads * hd, generator=g) / spec.dim ** 0.5
        s[p + "feed_forward.w1.weight"] = torch.randn(spec.ffn_dim, spec.dim, generator=g) / spec.dim ** 0.5
        s[p + "feed_forward.w3.weight"] = torch.randn(spec.ffn_dim, spec.dim, generator=g) / spec.dim ** 0.5
        s[p + "feed_forward.w2.weight"] = torch.randn(spec.dim, spec.ffn_dim, generator=g) / spec.ffn_dim ** 0.5
        s[p + "attention_norm.weight"] = 1 + 0.1 * torch.randn(spec.dim, generator=g)
        s[p + "ffn_norm.weight"] = 1 + 0.1 * torch.randn(spec.dim, generator=g)
    for d in range(spec.n_decoders):
        s[f"embedder.rec_tok.{d}.weight"] = torch.ones(1, spec.dim)
        s[f"embedder.cont_tok.{d}.weight"] = torch.ones(1, spec.dim) * (d + 2)
        s[f"bridge_module.{d}.layer1.weight"] = torch.randn(spec.bridge_hidden, spec.dim, generator=g) / spec.dim ** 0.5
        s[f"bridge_module.{d}.layer2.weight"] = torch.randn(spec.out_dim, spec.bridge_hidden, generator=g) / 8
    return s


def _meta_block(x, s, p, spec):
    """One block as the reference computes it: Meta RoPE on complex pairs, bidirectional."""
    def norm(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + spec.norm_eps) * w

    n, hd = x.shape[0], spec.head_dim
    h = norm(x, s[p + "attention_norm.weight"])
    q = (h @ s[p + "attention.wq.weight"].T).view(n, spec.n_heads, hd)
    k = (h @ s[p + "attention.wk.weight"].T).view(n, spec.n_kv_heads, hd)
    v = (h @ s[p + "attention.wv.weight"].T).view(n, spec.n_kv_heads, hd)
    freqs = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    cis = torch.polar(torch.ones(n, hd // 2), torch.arange(n).float()[:, None] * freqs[None])[:, None, :]
    q = torch.view_as_real(torch.view_as_complex(q.reshape(n, spec.n_heads, hd // 2, 2)) * cis).flatten(2)
    k = torch.view_as_real(torch.view_as_complex(k.reshape(n, spec.n_kv_heads, hd // 2, 2)) * cis).flatten(2)
    rep = spec.n_heads // spec.n_kv_heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    att = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / hd ** 0.5, -1)
    x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(n, -1) @ s[p + "attention.wo.weight"].T
    h = norm(x, s[p + "ffn_norm.weight"])
    ff = torch.nn.functional.silu(h @ s[p + "feed_forward.w1.weight"].T) * (h @ s[p + "feed_forward.w3.weight"].T)
    return x + ff @ s[p + "feed_forward.w2.weight"].T


def test_a_kyutai_format_checkpoint_runs_through_the_same_encoder():
    """A tiny random model with the published encoders' layout (Meta names, interleaved RoPE,
    truncated blocks, two decoders): loads, matches a Meta-style reference block, pools."""
    spec = EncoderSpec(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96, vocab=300,
                       rope_theta=500000.0, rope="interleaved", norm_eps=1e-5, bridge_hidden=48, out_dim=80,
                       n_decoders=2)
    g = torch.Generator().manual_seed(0)
    state = _kyutai_state(spec, n_layers_saved=5, g=g)  # 5 saved, 3 kept: the last 2 are truncated
    enc = encoder_from_kyutai_state(state, spec)
    ids = list(range(5, 28))  # 23 tokens
    with torch.no_grad():
        x = state["embedder.tok_embeddings.weight"][ids]
        from ragpress.compressors.arc import _rope_tables

        r = _rope_tables(len(ids), spec, "cpu")
        ours = enc.blocks[0](x[None], x[None], r, r, torch.ones(1, 1, 1, len(ids), dtype=torch.bool))[0]
        ref = _meta_block(x, state, "embedder.layers.0.", spec)
        assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
        for pf in (4, 8):
            for dec in (0, 1):
                out = enc([ids, ids[:3]], pf, "cont", dec)
                assert out[0].shape == (math.ceil(23 / pf) + 1, 80) and out[1].shape == (2, 80)
        # per-decoder <Cont> and MLP: the same text gives different vectors for each decoder
        assert not torch.allclose(enc([ids], 8, "cont", 0)[0], enc([ids], 8, "cont", 1)[0])


def test_a_published_encoder_loads_by_id_through_the_compressor(tmp_path, reader):
    """``kyutai/ARC8_Encoder_Llama`` by id from a hub cache (tiny random stand-in, the published
    names, a spec override in ``arc_spec.json``): the compressor pools by 8, the soft tokens are
    for Llama-3.1-8B, and the offline SmolLM2 reader refuses them (typed)."""
    from safetensors.torch import save_file

    from ragpress.compressors.arc import KYUTAI_TOKENIZER
    from ragpress.core.models import smollm2_path
    from ragpress.testing.tiny_hub import _copy_tokenizer, publish, use_hub_cache

    spec = EncoderSpec(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96, vocab=49152,
                       rope_theta=500000.0, rope="interleaved", bridge_hidden=48, out_dim=96)
    state = _kyutai_state(spec, n_layers_saved=3, g=torch.Generator().manual_seed(1))
    state = {("model." + k if k.startswith("embedder.layers.0") else k): v.contiguous() for k, v in state.items()}

    def write_encoder(d):
        save_file(state, str(d / "model.safetensors"))
        import json

        (d / "arc_spec.json").write_text(json.dumps({k: getattr(spec, k) for k in (
            "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab", "bridge_hidden", "out_dim")}))

    publish(tmp_path, "kyutai/ARC8_Encoder_Llama", write_encoder)
    publish(tmp_path, KYUTAI_TOKENIZER, lambda d: _copy_tokenizer(smollm2_path(), d))
    with use_hub_cache(tmp_path):
        comp = create_compressor("arc", model="kyutai/ARC8_Encoder_Llama", device="cpu")
        res = comp.compress(CompressionRequest.of("", [ACME], ratio=0.125))
    n = len(comp.tokenizer(ACME, add_special_tokens=False)["input_ids"])
    assert res.soft_token_shape == [math.ceil(n / 8) + 1, 96] and res.extra["pooling_factor"] == 8
    assert res.extra["soft_reader"] == "meta-llama/Llama-3.1-8B"
    assert res.model_id.startswith("kyutai/ARC8_Encoder_Llama@")
    with pytest.raises(ReaderMismatchError):
        reader.read("Who founded Acme?", context_for(res))
