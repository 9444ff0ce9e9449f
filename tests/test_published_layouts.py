"""Every path that takes a published model, run on tiny architecture-faithful stand-ins.

The published checkpoints (EXIT's Gemma + LoRA adapter, QwenLong-CPRS-7B, Qwen2.5-Coder,
T5 / BART summarizers, Qwen2.5 / Llama-3.1 readers) are not on this machine. Each is built from
its transformers config class with a few tiny layers and random weights, with a real tokenizer,
chat template, generation config and the published dtype (bf16) in its config, saved into a
temporary Hugging Face hub cache (``models--org--name/snapshots/<sha>/``, ``refs/main``) by
:mod:`ragpress.testing.tiny_hub`, and loaded by the very hub id a user names, through the
library's loaders. Quality is meaningless here; loading, adapters, dtypes, tokenizers,
templates and shapes are what is checked.
"""

from __future__ import annotations

import json

import pytest

from ragpress import create_compressor
from ragpress.core.types import Budget, CompressionRequest, Passage
from ragpress.testing import tiny_hub as th

QUERY = "Which library parses JSON documents in Python?"
PASSAGES = [
    Passage(id="json", title="json",
            text="The json module parses JSON documents. It is derived from simplejson. "
                 "Use json.tool to validate and pretty-print."),
    Passage(id="csv", title="csv", text="The csv module reads and writes tabular data. Dialects describe formats."),
]
CODE = '''import math


def area(radius):
    """Area of a circle."""
    return math.pi * radius ** 2


def perimeter(radius):
    return 2 * math.pi * radius


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def area(self):
        return area(self.radius)

    def scaled(self, factor):
        return Circle(self.radius * factor)
'''


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The tiny published layouts in a temporary hub cache, which the loaders use while the
    module runs; the loaders' per-process caches are emptied after, so no later test sees them."""
    cache = tmp_path_factory.mktemp("hf-hub")
    with th.use_hub_cache(cache):
        ids = th.build_all(cache)
        yield ids
    _forget_loaded_models()


def _forget_loaded_models():
    from ragpress.compressors import cprs, exit, tcra
    from ragpress.core import models

    for fn in (exit.load_exit_lm, cprs.load_cprs_model, tcra._load_seq2seq, tcra._is_seq2seq,
               models.load_causal_lm, models.load_tokenizer):
        fn.cache_clear()
    cprs._SCORES.clear()
    tcra._MEMO.clear()


def _exact(request: CompressionRequest, result) -> None:
    by_id = {p.id: p for p in request.passages}
    assert result.spans
    for s in result.spans:
        assert by_id[s.passage_id].text[s.start:s.end] == s.text


def _params_float32_cpu(model) -> None:
    import torch

    dtypes = {p.dtype for p in model.parameters()}
    devices = {p.device.type for p in model.parameters()}
    assert dtypes == {torch.float32} and devices == {"cpu"}, (dtypes, devices)


# ------------------------------------------------------------------------------------- EXIT
@pytest.mark.parametrize("variant", ["exit", "exit_gemma2"])
def test_exit_lora_adapter_by_hub_id(hub, variant):
    """``model="doubleyyh/exit-gemma-2b"``: the adapter's config names its base, the base loads
    from the cache (bf16 on disk, float32 on CPU), peft applies the LoRA weights, the tokenizer
    comes from the base with Gemma's chat template, and the prefix-cached scores equal the
    reference per-sentence ones (Gemma-2: sliding-window layers shorter than the prompt)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from ragpress.compressors.exit import load_exit_lm
    from ragpress.core.models import cached_hub_file as _cached_file

    adapter = hub[variant]
    model, tok = load_exit_lm(adapter, "cpu")
    assert isinstance(model, PeftModel)
    base = model.get_base_model()
    assert type(base).__name__ == ("Gemma2ForCausalLM" if variant == "exit_gemma2" else "GemmaForCausalLM")
    card = json.loads(open(_cached_file(adapter, "adapter_config.json")).read())
    assert json.loads(open(_cached_file(card["base_model_name_or_path"], "config.json")).read())["dtype"] == "bfloat16"
    _params_float32_cpu(model)
    saved = load_file(_cached_file(adapter, "adapter_model.safetensors"))
    key = next(k for k in saved if "lora_B" in k)
    loaded = dict(model.named_parameters())
    match = [n for n in loaded if n.replace(".default", "").endswith(key.split("base_model.model.", 1)[-1])]
    assert match and torch.equal(loaded[match[0]].detach(), saved[key].float()), key
    assert card["base_model_name_or_path"] in (th.EXIT_BASE, th.EXIT2_BASE)
    assert "<start_of_turn>" in tok.chat_template and tok.pad_token is not None
    assert [len(tok.encode(w, add_special_tokens=False)) for w in ("Yes", "No")] == [1, 1]  # as in Gemma's vocabulary

    req = CompressionRequest(query=QUERY, passages=PASSAGES, budget=Budget(ratio=0.5))
    fast = create_compressor("exit", model=adapter, device="cpu", batch_size=4)
    res = fast.compress(req)
    _exact(req, res)
    assert res.model_id == adapter and 0 < res.tokens_after <= round(0.5 * res.tokens_before) + 1
    slow = create_compressor("exit", model=adapter, device="cpu", scoring="per_sentence")
    a = sorted((s.passage_id, s.start, s.score) for s in res.spans)
    b = sorted((s.passage_id, s.start, s.score) for s in slow.compress(req).spans)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert max(abs(x[2] - y[2]) for x, y in zip(a, b)) < 1e-3
    thr = fast.compress(CompressionRequest(query=QUERY, passages=PASSAGES, budget=Budget(threshold=0.0)))
    assert len(thr.spans) == thr.extra["sentences"] >= 5 and all(0.0 <= s.score <= 1.0 for s in thr.spans)

    # the adapter is applied: without it the base scores differently
    scorer = fast.scorer
    scorer._load()
    docs = [(p.title, [p.text]) for p in PASSAGES]
    on = scorer.score(QUERY, docs)
    with scorer._model.disable_adapter():
        off = scorer.score(QUERY, docs)
    assert on != off


# ------------------------------------------------------------------------------------- CPRS
def test_qwenlong_cprs_by_hub_id(hub):
    """``model="Tongyi-Zhiwen/QwenLong-CPRS-7B"``: the Qwen2 body under ``model.`` (sharded, bf16)
    through AutoModel, the critic ``cls_head`` read from the shard the index names, top layers
    bidirectional from the reference's start index (capped at the tiny depth)."""
    import torch
    from safetensors import safe_open

    from ragpress.compressors.cprs import load_cprs_model
    from ragpress.core.models import cached_hub_file as _hub_file

    model = load_cprs_model(hub["cprs"], None, "cpu")
    assert type(model.embed).__name__ == "Embedding" and model.meta == {"n_lower": 2, "n_upper": 1}
    assert all(not layer.self_attn.is_causal for layer in model.upper)
    assert model.tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    index = json.loads(open(_hub_file(hub["cprs"], "model.safetensors.index.json")).read())
    with safe_open(_hub_file(hub["cprs"], index["weight_map"]["cls_head.weight"]), framework="pt") as f:
        torch.testing.assert_close(model.head.weight, f.get_tensor("cls_head.weight").float())
    assert model.head.weight.dtype == torch.float32 and model.embed.weight.device.type == "cpu"

    comp = create_compressor("cprs", model=hub["cprs"], device="cpu", window_tokens=48, score_cache_size=0)
    for budget in (Budget(ratio=0.5), Budget(threshold=0.5)):
        req = CompressionRequest(query=QUERY, passages=PASSAGES, budget=budget)
        res = comp.compress(req)
        assert res.model_id == hub["cprs"] and res.tokens_after <= res.tokens_before
        if res.spans:
            _exact(req, res)


# ------------------------------------------------------------------------------ LongCodeZip
def test_longcodezip_with_qwen25_coder_by_hub_id(hub):
    """``model="Qwen/Qwen2.5-Coder-7B-Instruct"``: a Qwen2 causal LM (untied head, 152064-row
    vocabulary over the 151665-token tokenizer) scores chunks (AMI) and lines (perplexity)."""
    from ragpress.core.models import load_causal_lm

    model, tok = load_causal_lm(hub["code_lm"], "cpu")
    _params_float32_cpu(model)
    assert model.get_output_embeddings().weight.shape[0] == 152064 and len(tok) < 152064
    comp = create_compressor("longcodezip", model=hub["code_lm"], language="python")
    req = CompressionRequest(query="    def diameter(self):", passages=[Passage(id="c", text=CODE)],
                             budget=Budget(ratio=0.5))
    res = comp.compress(req)
    assert res.model_id == hub["code_lm"] and 0 < res.tokens_after <= res.tokens_before
    _exact(req, res)


# ------------------------------------------------------------------------------------- TCRA
@pytest.mark.parametrize("role, cls, prefix", [("t5", "T5ForConditionalGeneration", "summarize: "),
                                               ("bart", "BartForConditionalGeneration", "")])
def test_tcra_seq2seq_summarizer_by_hub_id(hub, role, cls, prefix):
    """``summarizer="google-t5/t5-small"`` / ``"facebook/bart-large-cnn"``: detected as seq2seq from
    the config, loaded with AutoModelForSeq2SeqLM, prompted with the model's own task prefix
    (T5's ``summarize: ``; none for BART), greedy and capped at the length target even where the
    checkpoint's generation config asks for 4 beams and at least 56 tokens (bart-large-cnn);
    encoder inputs right-padded (a text summarised in a batch = alone, with BART's absolute
    positions) and cut to the encoder's window (BART: 1024 positions)."""
    import warnings

    from ragpress.compressors.tcra import _is_seq2seq, _load_seq2seq, _seq2seq_prefix, _summarize

    name = hub[role]
    assert _is_seq2seq(name)
    model, tok = _load_seq2seq(name)
    assert type(model).__name__ == cls and _seq2seq_prefix(model) == prefix
    _params_float32_cpu(model)
    texts = [PASSAGES[0].text, PASSAGES[1].text, " ".join([PASSAGES[0].text] * 60)]
    assert len(tok(texts[2])["input_ids"]) > 1024
    with warnings.catch_warnings(record=True) as seen:  # caps of 12 new tokens for all three
        warnings.simplefilter("always")
        together = _summarize(texts, [0.05, 0.05, 0.002], name, [None] * 3, batch_size=3, min_new_tokens=12)
    assert not [w for w in seen if "min_length" in str(w.message)], [str(w.message) for w in seen]
    alone = _summarize(texts[1:2], [0.05], name, [None], batch_size=1, min_new_tokens=12)
    assert together[1] == alone[0] and all(isinstance(s, str) and s for s in together)
    comp = create_compressor("tcra-summary", summarizer=name)
    res = comp.compress(CompressionRequest(query=QUERY, passages=PASSAGES, budget=Budget(ratio=0.5)))
    assert name in res.model_id and res.tokens_after <= res.tokens_before


# ------------------------------------------------------------------------------------ readers
@pytest.mark.parametrize("role, turn", [("qwen_reader", "<|im_start|>assistant\n"),
                                        ("llama_reader", "<|start_header_id|>assistant<|end_header_id|>\n\n")])
def test_local_reader_by_hub_id(hub, role, turn):
    """``LocalReader(model="Qwen/Qwen2.5-7B-Instruct")`` / ``"meta-llama/Llama-3.1-8B-Instruct"``:
    the chat template renders the prompt (system turn included), every end-of-turn id of the
    generation config stops decoding, a tokenizer without a pad token (Llama) still batches,
    and answers and answer bits come back for each prompt."""
    from ragpress.readers.local import LocalReader

    reader = LocalReader(model=hub[role], device="cpu", batch_size=2)
    model, tok = reader._lm()
    _params_float32_cpu(model)
    prompts = reader.prepare([QUERY, "Which module reads CSV?"], [PASSAGES[0].text, PASSAGES[1].text],
                             max_new_tokens=5)
    text, rest = reader._render(prompts[0])
    assert rest is None and text.endswith(turn) and QUERY in text
    gen = model.generation_config.eos_token_id
    assert set(gen if isinstance(gen, list) else [gen]) <= reader._eos_ids()
    if role == "llama_reader":
        assert reader._eos_ids() == {1, 4, 5}
    answers = reader.generate_batch(prompts)
    assert [a.model_id for a in answers] == [hub[role]] * 2
    assert all(a.tokens_in > 10 and 0 <= a.tokens_out <= 5 for a in answers)
    assert reader.context_window == model.config.max_position_embeddings
    bits = reader.answer_bits([QUERY], [PASSAGES[0].text], [["json"]])
    assert bits[0] is not None and bits[0] > 0


# ---------------------------------------------------------------------------- benchmarks/gpu_check.py
def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_without_cuda_says_so_and_fails(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert _gpu_check().main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_check_comparison_catches_disagreement_and_silent_fallback():
    gc = _gpu_check()
    spans = [["a", 0, 10, 0.9], ["b", 5, 20, 0.7]]
    ref = {"results": [{"text": "x", "tokens_after": 5, "spans": spans}], "off_device": []}
    same = {**ref, "cuda_peak_bytes": 1 << 20}
    assert gc.compare_method("exact", ref, same, "cuda")[0] == "PASS"
    flipped = {**same, "results": [{"text": "y", "tokens_after": 5, "spans": spans[:1] + [["c", 0, 3, 0.69]]}]}
    assert gc.compare_method("exact", ref, flipped, "cuda")[0] == "FAIL"
    nudged = {**same, "results": [{"text": "x", "tokens_after": 5,
                                   "spans": [["a", 0, 10, 0.91], ["b", 5, 20, 0.69]]}]}
    assert gc.compare_method("close", ref, nudged, "cuda")[0] == "PASS"
    assert gc.compare_method("exact", ref, nudged, "cuda")[0] == "FAIL"
    status, detail = gc.compare_method("exact", ref, {**same, "off_device": ["Linear@cpu"]}, "cuda")
    assert status == "FAIL" and "silent fallback" in detail and "Linear@cpu" in detail
    status, detail = gc.compare_method("exact", ref, {**same, "cuda_peak_bytes": 0}, "cuda")
    assert status == "FAIL" and "no CUDA memory" in detail
    assert gc.compare_method("exact", ref, {**same, "cuda_peak_bytes": 0}, "cuda", needs_model=False)[0] == "PASS"
    assert gc.compare_method("exact", ref, {"error": "RuntimeError: boom"}, "cuda")[0] == "FAIL"
    idx = {"search_index": "IndexFlatIP", "gpus": 0, "hits": [["a", "b"]]}
    status, detail = gc.compare_faiss(idx, idx, "cuda")
    assert status == "FAIL" and "faiss-gpu" in detail
    assert gc.compare_faiss(idx, {**idx, "search_index": "GpuIndexFlatIP", "gpus": 1}, "cuda")[0] == "PASS"
    r = {"answers": ["Paris"], "tokens_in": [40], "bits": [3.0], "device_seen": "cuda:0", "cuda_peak_bytes": 1,
         "off_device": []}
    assert gc.compare_reader(r, r, "cuda", tiny=False)[0] == "PASS"
    assert gc.compare_reader(r, {**r, "device_seen": "cpu"}, "cuda", tiny=False)[0] == "FAIL"
    assert gc.compare_reader(r, {**r, "bits": [4.0]}, "cuda", tiny=False)[0] == "FAIL"

