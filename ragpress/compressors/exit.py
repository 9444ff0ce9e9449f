"""EXIT: context-aware extractive compression (Hwang et al., arXiv 2412.12559).

Every sentence of a retrieved document is classified on its own, *with its document as
context*: a small LM reads the prompt of the paper (Table 6)::

    Query:
    {query}
    Full context:
    {title}\\n{document}
    Sentence:
    {sentence}
    Is this sentence useful in answering the query? Answer only "Yes" or "No".

wrapped in the model's chat template (the reference hard-codes Gemma's turn markers, which is
exactly Gemma's chat template), and the sentence's score is P("Yes") from a softmax over just
the next-token logits of "Yes" and "No". Threshold mode (the paper's, default 0.5) keeps every
sentence whose score reaches the threshold, in original order; ratio / token budgets keep the
best-scoring sentences until the budget is met.

Speed. The reference runs one forward pass per sentence over the full prompt. The prompt puts
the document context *before* the sentence, so everything up to ``Full context:\\n{context}`` is
identical for all sentences of a document. The default ``scoring="prefix_cache"`` runs that
shared prefix once per document (documents of all requests batched together, right-padded),
keeps its KV cache, and scores the sentences in batches of suffixes
(``\\nSentence:\\n{sentence}\\n...assistant turn``) that attend to the cached prefix. Prompts are
built at the token level exactly as the reference does (prefix ids + context ids + suffix ids),
so ``scoring="per_sentence"`` (reference style) and the fast path see the same token sequence
and agree to float precision (< 1e-3 in fp32; see ``benchmarks/exit_speed.py --lm``).

Long documents. As in the reference, only the document context is truncated to fit
``max_length`` (capped by the model's own limit). The reference keeps the head and tail of an
overlong document, which can drop the very sentence being judged; here the context is cut to a
window *around the sentence* instead (the title is always kept). To keep sharing prefixes,
windows start on a grid of half the window size, and each sentence uses the grid window whose
centre is nearest its own, so sentences in the same window share one cached prefix. The query
and the sentence as shown in the prompt are each capped at ``max_length // 4`` tokens (the span
returned always covers the whole sentence), so no input can push the prompt over the limit.

Models. ``model=None`` is the offline SmolLM2-135M-Instruct (untrained for this task: a working
stand-in, not the paper's classifier). The published classifier is ``google/gemma-2b-it`` with
the LoRA adapter ``doubleyyh/exit-gemma-2b``; ``model="doubleyyh/exit-gemma-2b"`` (or a local
adapter directory) resolves the base model from the adapter config and loads it with peft, from
the local Hugging Face cache only unless ``allow_download=True``. ``scorer="head"`` uses the
trained offline sentence classifier of :mod:`ragpress.compressors.exit_head`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from ragpress.core.compressor import Compressor, CompressorConfig
from ragpress.core.errors import ModelLoadError
from ragpress.core.extractive import (
    Unit,
    passage_language,
    render,
    render_full,
    select,
    structure_notes,
    unit_text,
    units_of,
)
from ragpress.core.models import cached_hub_file, default_device, load_causal_lm, resolve_model_id
from ragpress.core.sentences import DEFAULT_MAX_CHARS
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage

log = logging.getLogger(__name__)

EXIT_ADAPTER = "doubleyyh/exit-gemma-2b"
EXIT_BASE = "google/gemma-2b-it"
INSTRUCTION = 'Is this sentence useful in answering the query? Answer only "Yes" or "No".'
# The reference's literal prompt (Gemma turn markers); used for models without a chat template.
REFERENCE_TEMPLATE = "<start_of_turn>user\n{message}<end_of_turn>\n<start_of_turn>model\n"
_CTX, _SENT = "\x00EXITCTX\x00", "\x00EXITSENT\x00"

Docs = list[tuple[str | None, list[str]]]


def exit_message(query: str, context: str, sentence: str) -> str:
    """The user message of EXIT's classification prompt (paper Table 6)."""
    return f"Query:\n{query}\nFull context:\n{context}\nSentence:\n{sentence}\n{INSTRUCTION}"


class ExitConfig(CompressorConfig):
    """Settings of :class:`ExitCompressor`.

    * ``scorer``: ``head`` (the trained offline classifier, the default: it measured best offline)
      or ``lm`` (a causal LM reads EXIT's prompt; chosen automatically when ``model`` is given);
    * ``model``: hub id or local path of the LM (or of a LoRA adapter such as
      ``doubleyyh/exit-gemma-2b``); None = offline SmolLM2-135M-Instruct;
    * ``scoring``: ``prefix_cache`` (shared document prefix run once, fast) or ``per_sentence``
      (one forward per sentence, as the reference does); both give the same scores;
    * ``max_length``: prompt cap in tokens (the reference's 4096), lowered to the model's limit;
    * ``batch_size``: sentences scored per forward; ``prefix_batch_tokens``: padded tokens per
      batched prefix forward;
    * ``allow_download``: let a hub id download (off: only the local Hugging Face cache is used);
    * ``head_weights``: the trained head's JSON card (None = the one shipped in the package);
      ``embedder``: the sentence encoder the head's features use (must match the card);
    * ``cover_top_docs``: under a ratio / token budget, the best sentence of each of this many
      best documents is kept first (per-hop coverage); None = the head card's value (0 for the LM).
    """

    scorer: Literal["lm", "head"] = "head"
    model: str | None = None
    scoring: Literal["prefix_cache", "per_sentence"] = "prefix_cache"
    max_length: int = Field(default=4096, ge=256)
    batch_size: int = Field(default=32, ge=1)
    prefix_batch_tokens: int = Field(default=8192, ge=256)
    language: str = "auto"  # a Punkt language name, or "auto": guessed per passage
    max_sentence_chars: int = Field(default=DEFAULT_MAX_CHARS, ge=50)
    device: str | None = None
    allow_download: bool = False
    head_weights: str | None = None
    embedder: str | None = None
    cover_top_docs: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _lm_when_a_model_is_named(self):
        if self.model and "scorer" not in self.model_fields_set:
            self.scorer = "lm"  # ExitCompressor(model="doubleyyh/exit-gemma-2b") means the LM scorer
        return self


class SentenceScorer(Protocol):
    """Scores sentences given the query and their document: ``docs`` is a list of
    ``(title, sentences)``; the answer is P("Yes") per sentence, per document."""

    def score(self, query: str, docs: Docs) -> list[list[float]]: ...


# ---------------------------------------------------------------------------- model loading


@functools.lru_cache(maxsize=4)
def load_exit_lm(name: str | None, device: str | None = None, allow_download: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for EXIT's LM scorer.

    ``name`` None: offline SmolLM2. A LoRA adapter (a directory or hub id whose
    ``adapter_config.json`` is present) loads its base model and wraps it with peft. Without
    ``allow_download`` a hub id must already be in the local Hugging Face cache.
    """
    if name is None or resolve_model_id("causal_lm", name) == resolve_model_id("causal_lm", None):
        return load_causal_lm(None, device)
    import torch

    device = device or default_device()
    local = Path(name).is_dir()
    adapter_cfg = cached_hub_file(name, "adapter_config.json")
    if not local and not allow_download and adapter_cfg is None and cached_hub_file(name, "config.json") is None:
        raise ModelLoadError(
            f"EXIT model {name!r} is neither a local directory nor in the Hugging Face cache, and "
            "downloads are off. Download it first (e.g. `huggingface-cli download "
            f"{name}`{' and its base ' + EXIT_BASE if name == EXIT_ADAPTER else ''}), pass a local "
            "path, set allow_download=true, or omit model for the offline default."
        )
    if adapter_cfg is None and allow_download and not local:
        try:  # a hub adapter not yet cached: fetch its config to learn the base model
            from huggingface_hub import hf_hub_download

            adapter_cfg = hf_hub_download(name, "adapter_config.json")
        except Exception:
            adapter_cfg = None
    if adapter_cfg is None:
        return load_causal_lm(name, device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = json.loads(Path(adapter_cfg).read_text())["base_model_name_or_path"]
    kw = {"local_files_only": not allow_download}
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        from peft import PeftModel

        try:
            tok = AutoTokenizer.from_pretrained(name, **kw)
        except Exception:
            tok = AutoTokenizer.from_pretrained(base, **kw)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **kw)
        model = PeftModel.from_pretrained(model, name, **kw)
    except ImportError as exc:
        raise ModelLoadError(f"loading the LoRA adapter {name!r} needs peft: pip install peft ({exc})") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"could not load EXIT adapter {name!r} on base {base!r}: {exc}. Both must be local "
            "paths or in the Hugging Face cache (or set allow_download=true)."
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return model, tok


# ---------------------------------------------------------------------------- prompt plan
@dataclass
class _Group:
    """Sentences of one document (window) that share one prompt prefix."""

    prefix: list[int]
    head: int  # the first ``head`` prefix tokens (template + query) are shared by all documents
    rows: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (doc, sentence, suffix ids)


class LMScorer:
    """EXIT's LM scorer: P("Yes") under EXIT's prompt, by prefix caching or per sentence."""

    def __init__(self, config: ExitConfig):
        self.config = config
        self._model = None

    # -------------------------------------------------------------- lazy model + template
    def _load(self):
        if self._model is None:
            model, tok = load_exit_lm(self.config.model, self.config.device, self.config.allow_download)
            self._model, self.tok = model, tok
            limits = [self.config.max_length]
            for lim in (getattr(_base_config(model), "max_position_embeddings", None),
                        getattr(tok, "model_max_length", None)):
                if isinstance(lim, int) and 0 < lim < 1_000_000:
                    limits.append(lim)
            self.max_length = min(limits)
            self.window = _sliding_window(_base_config(model))
            self.cache_kw = _cache_kwarg(model)
            self.yes_id = self._label_id("Yes")
            self.no_id = self._label_id("No")
            self.head_tpl, self.mid, self.tail = self._template_parts()
        return self._model

    def _label_id(self, word: str) -> int:
        ids = self.tok.encode(word, add_special_tokens=False)
        if not ids:
            raise ModelLoadError(f"the tokenizer of {self.config.model!r} cannot encode {word!r}")
        if len(ids) > 1:
            log.warning("%r is %d tokens for this tokenizer; EXIT scores its first token", word, len(ids))
        return ids[0]

    def _template_parts(self) -> tuple[str, str, str]:
        """Split the chat-templated prompt into (head with ``{query}``, mid, tail): the prompt is
        ``head + context + mid + sentence + tail``."""
        message = exit_message("{query}", _CTX, _SENT)
        rendered = None
        if getattr(self.tok, "chat_template", None):
            try:
                rendered = self.tok.apply_chat_template([{"role": "user", "content": message}],
                                                        tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # template rejects a lone user turn etc.
                log.warning("chat template failed (%s); using EXIT's reference prompt", exc)
        if not rendered or _CTX not in rendered or _SENT not in rendered:
            rendered = REFERENCE_TEMPLATE.format(message=message)
            bos = self.tok.bos_token if getattr(self.tok, "add_bos_token", False) else None
            rendered = (bos or "") + rendered
        head, rest = rendered.split(_CTX)
        mid, tail = rest.split(_SENT)
        head = head.replace("{", "{{").replace("}", "}}").replace("{{query}}", "{query}")
        return head, mid, tail

    # -------------------------------------------------------------- token-level prompt plan
    def _enc(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def _cap(self, text: str, n: int) -> str:
        ids = self._enc(text)
        return text if len(ids) <= n else self.tok.decode(ids[:n])

    def plan(self, query: str, docs: Docs) -> list[_Group]:
        """Prompt groups for one query: every sentence's prompt is ``group.prefix + suffix``."""
        self._load()
        quarter = self.max_length // 4
        head = self._enc(self.head_tpl.format(query=self._cap(query, quarter)))
        groups: list[_Group] = []
        for di, (title, sentences) in enumerate(docs):
            if not sentences:
                continue
            title = (title or "").strip()
            body = " ".join(s.strip() for s in sentences)
            context = f"{title}\n{body}" if title else body
            enc = self.tok(context, add_special_tokens=False, return_offsets_mapping=True)
            ctx, offsets = enc["input_ids"], enc["offset_mapping"]
            suffixes = [self._enc(self.mid + self._cap(s.strip(), quarter) + self.tail) for s in sentences]
            budget = self.max_length - len(head) - max(len(s) for s in suffixes)
            if len(ctx) <= budget:
                g = _Group(head + ctx, len(head))
                g.rows = [(di, si, suf) for si, suf in enumerate(suffixes)]
                groups.append(g)
                continue
            # Overlong document: a window of the body around each sentence (title kept).
            n_title = sum(1 for a, b in offsets if b <= len(title) + 1) if title else 0
            body_ids, body_off = ctx[n_title:], offsets[n_title:]
            title_ids = ctx[:min(n_title, budget // 4)]  # an absurdly long title is cut too
            win = max(16, budget - len(title_ids))
            stride = max(1, win // 2)
            last = max(0, len(body_ids) - win)
            by_start: dict[int, _Group] = {}
            pos = len(title) + 1 if title else 0
            for si, (s, suf) in enumerate(zip(sentences, suffixes)):
                s = s.strip()
                a = pos
                pos += len(s) + 1
                centre_char = a + len(s) // 2
                centre = next((i for i, (_, b) in enumerate(body_off) if b > centre_char), len(body_ids) - 1)
                start = min(last, max(0, round((centre - win / 2) / stride) * stride))
                if start not in by_start:
                    by_start[start] = _Group(head + title_ids + body_ids[start:start + win], len(head))
                    groups.append(by_start[start])
                by_start[start].rows.append((di, si, suf))
        return groups

    # -------------------------------------------------------------- scoring
    def score(self, query: str, docs: Docs) -> list[list[float]]:
        return self.score_many([(query, docs)])[0]

    def score_many(self, items: list[tuple[str, Docs]]) -> list[list[list[float]]]:
        """Scores for several (query, docs) at once (prefixes and sentences batched across them)."""
        self._load()
        plans = [self.plan(q, docs) for q, docs in items]
        out = [[[0.0] * len(s) for _, s in docs] for _, docs in items]
        flat = [(ri, g) for ri, groups in enumerate(plans) for g in groups]
        groups = [g for _, g in flat]
        if self.config.scoring == "per_sentence":
            scored = self._score_per_sentence(groups)
        else:
            # A sliding-window model (Gemma-2/3, Mistral) attends only to the last ``window`` keys:
            # a prompt longer than that cannot continue a cached prefix, so it is scored whole.
            whole = {i for i, g in enumerate(groups)
                     if self.window and len(g.prefix) + max(len(r[2]) for r in g.rows) > self.window}
            cached = [i for i in range(len(groups)) if i not in whole]
            scored = [[]] * len(groups)
            for idx, run in ((cached, self._score_prefix_cache), (sorted(whole), self._score_per_sentence)):
                for i, probs in zip(idx, run([groups[i] for i in idx]) if idx else []):
                    scored[i] = probs
        for (ri, g), probs in zip(flat, scored):
            for (di, si, _), p in zip(g.rows, probs):
                out[ri][di][si] = p
        return out

    def _yes(self, logits) -> list[float]:
        import torch

        pair = torch.stack([logits[..., self.yes_id], logits[..., self.no_id]], dim=-1).float()
        return torch.softmax(pair, dim=-1)[..., 0].tolist()

    def _score_per_sentence(self, groups: list[_Group]) -> list[list[float]]:
        """Reference style: one forward per sentence over its full prompt."""
        import torch

        model = self._model
        dev = next(model.parameters()).device
        res = []
        with torch.inference_mode():
            for g in groups:
                probs = []
                for _, _, suf in g.rows:
                    ids = torch.tensor([g.prefix + suf], device=dev)
                    logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1]
                    probs.extend(self._yes(logits))
                res.append(probs)
        return res

    def _score_prefix_cache(self, groups: list[_Group]) -> list[list[float]]:
        """Fast path, a three-level prefix tree run with KV caches:

        1. each distinct head (chat template + query) once, batched, right-padded;
        2. each document context once, continuing its head's cache (batched, right-padded);
        3. the sentence suffixes in batches of ``batch_size``, each row continuing a copy of its
           document's cache; suffixes are left-padded so every row's last real token is the last
           position (one logit row per sentence). Padding is masked out and position ids
           continue from each row's real length, so every sentence sees exactly the token
           sequence ``prefix + suffix`` of the per-sentence path.
        """
        import torch

        res: list[list[float]] = [[0.0] * len(g.rows) for g in groups]
        heads: dict[tuple[int, ...], int] = {}
        for g in groups:
            heads.setdefault(tuple(g.prefix[:g.head]), len(heads))
        head_list = list(heads)
        by_head: dict[int, list[int]] = {}
        for gi, g in enumerate(groups):
            by_head.setdefault(heads[tuple(g.prefix[:g.head])], []).append(gi)
        budget = self.config.prefix_batch_tokens
        with torch.inference_mode():
            # chunks of heads (requests) whose documents fit the padded-token budget together
            hchunks, cur, cur_tok = [], [], 0
            for h in range(len(head_list)):
                tok = sum(len(groups[gi].prefix) for gi in by_head[h])
                if cur and cur_tok + tok > budget:
                    hchunks.append(cur)
                    cur, cur_tok = [], 0
                cur.append(h)
                cur_tok += tok
            if cur:
                hchunks.append(cur)
            for hc in hchunks:
                kv_h, mask_h, lens_h, _ = self._extend(None, [], [list(head_list[h]) for h in hc], left_pad=False)
                docs = sorted((gi for h in hc for gi in by_head[h]), key=lambda gi: len(groups[gi].prefix))
                local = {h: j for j, h in enumerate(hc)}
                dchunks = _buckets(docs, lambda gi: len(groups[gi].prefix) - groups[gi].head, 10**9, budget)
                for dc in dchunks:
                    parents = [local[heads[tuple(groups[gi].prefix[:groups[gi].head])]] for gi in dc]
                    kv_d, mask_d, lens_d, _ = self._extend((kv_h, mask_h, lens_h), parents,
                                                           [groups[gi].prefix[groups[gi].head:] for gi in dc],
                                                           left_pad=False)
                    rows = [(r, k, suf) for r, gi in enumerate(dc) for k, (_, _, suf) in enumerate(groups[gi].rows)]
                    rows.sort(key=lambda x: len(x[2]))
                    for batch in _buckets(rows, lambda x: len(x[2]), self.config.batch_size, budget):
                        *_, last = self._extend((kv_d, mask_d, lens_d), [r for r, _, _ in batch],
                                                [suf for _, _, suf in batch], left_pad=True, keep_cache=False)
                        for (r, k, _), p in zip(batch, self._yes(last)):
                            res[dc[r]][k] = p
        return res

    def _extend(self, parent, parents: list[int], seqs: list[list[int]], left_pad: bool, keep_cache: bool = True):
        """Run ``seqs`` (row j continuing row ``parents[j]`` of the ``parent`` cache
        ``(kv, mask, lens)``, or from scratch when ``parent`` is None). Returns the new
        ``(kv, mask, lens, last-position logits)``."""
        import torch
        from transformers import DynamicCache

        model = self._model
        dev = next(model.parameters()).device
        cfg = _base_config(model)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        n, width = len(seqs), max(len(x) for x in seqs)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        base = [0] * n if parent is None else [parent[2][p] for p in parents]
        for j, x in enumerate(seqs):
            off = width - len(x) if left_pad else 0
            ids[j, off:off + len(x)] = torch.tensor(x)
            mask[j, off:off + len(x)] = 1
            pos[j] = base[j] + (torch.arange(width) - off).clamp(min=0)
        if parent is None:
            cache = DynamicCache(config=cfg)
            full = mask
        else:
            idx = torch.tensor(parents)
            didx = idx.to(dev)
            cache = DynamicCache([(k.index_select(0, didx), v.index_select(0, didx)) for k, v in parent[0]],
                                 config=cfg)
            full = torch.cat([parent[1].index_select(0, idx), mask], dim=1)
        out = model(input_ids=ids.to(dev), attention_mask=full.to(dev), position_ids=pos.to(dev),
                    use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
        kv = [(layer.keys, layer.values) for layer in cache.layers] if keep_cache else None
        lens = [b + len(x) for b, x in zip(base, seqs)]
        return kv, full, lens, out.logits[:, -1]


def _buckets(items: list, length, max_rows: int, max_tokens: int, waste: float = 1.2) -> list[list]:
    """Split ``items`` (sorted by ``length``, ascending) into batches of at most ``max_rows`` and
    ``max_tokens`` padded tokens, starting a new batch when padding would exceed ``waste`` times
    the real tokens (padded rows cost as much as real ones on a CPU)."""
    out, cur, real = [], [], 0
    for it in items:
        n = length(it)
        if cur and (len(cur) >= max_rows or n * (len(cur) + 1) > max_tokens or n * (len(cur) + 1) > waste * (real + n)):
            out.append(cur)
            cur, real = [], 0
        cur.append(it)
        real += n
    if cur:
        out.append(cur)
    return out


def _cache_kwarg(model) -> str:
    """The KV-cache argument of the (base) model's forward: ``cache`` in transformers >= 5.2x
    (``past_key_values`` is removed in 5.40), ``past_key_values`` before. A peft wrapper passes
    it through, so its base model decides."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _sliding_window(cfg) -> int | None:
    """The attention window of a model with sliding-window layers (None: every layer sees all keys)."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not window or (types is not None and not any("sliding" in t for t in types)):
        return None
    return int(window)


def _base_config(model):
    cfg = getattr(model, "config", None)
    if cfg is None and hasattr(model, "get_base_model"):
        cfg = model.get_base_model().config
    return cfg


# ---------------------------------------------------------------------------- compressor
class ExitCompressor(Compressor):
    """EXIT (arXiv 2412.12559): classify each sentence with its document as context, keep
    those with P("Yes") >= threshold (default 0.5), or the best ones for a ratio/token budget."""

    name = "exit"
    config_cls = ExitConfig
    budget_modes = frozenset({"ratio", "tokens", "threshold"})
    default_budget = Budget.adaptive()  # the threshold, held to 20-60 % and skipped under 256 tokens (README)

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self._scorer: SentenceScorer | None = None
        self._scorer_key = None

    @property
    def model_id(self) -> str:
        if self.config.scorer == "head":
            from ragpress.compressors.exit_head import head_model_id

            return head_model_id(self.config)
        return resolve_model_id("causal_lm", self.config.model)

    @property
    def scorer(self) -> SentenceScorer:
        key = self.config.model_dump_json()
        if self._scorer is None or self._scorer_key != key:
            if self.config.scorer == "head":
                from ragpress.compressors.exit_head import load_head_scorer

                self._scorer = load_head_scorer(self.config)
            else:
                self._scorer = LMScorer(self.config)
            self._scorer_key = key
        return self._scorer

    @property
    def precomputable(self) -> bool:  # type: ignore[override]
        """With the head, the embeddings behind its features (sentences, document, title) do not
        depend on the query; EXIT's LM prompt starts with the query, so nothing precedes it."""
        return self.config.scorer == "head"

    def _precompute(self, passages: list[Passage], budget: Budget) -> tuple[list[int], list[int]]:
        per = [units_of(i, p.text, passage_language(p, self.config.language), self.config.max_sentence_chars)
               for i, p in enumerate(passages)]
        self.scorer.precompute([(p.title, [unit_text(u, passages) for u in us]) for p, us in zip(passages, per)],
                               memo=self.memo)
        return [len(us) for us in per], [0] * len(passages)

    def _units(self, request: CompressionRequest) -> list[list[Unit]]:
        return [units_of(i, p.text, passage_language(p, self.config.language), self.config.max_sentence_chars)
                for i, p in enumerate(request.passages)]

    def _compress_batch(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        t0 = time.perf_counter()
        units = [self._units(r) for r in requests]
        items = [(r.query, [(p.title, [unit_text(u, r.passages) for u in us]) for p, us in zip(r.passages, per)])
                 for r, per in zip(requests, units)]
        t_split = time.perf_counter()
        scorer = self.scorer
        if isinstance(scorer, LMScorer):  # one call for all requests: batched across them
            scores = scorer.score_many(items)
        else:  # the head: its embeddings are query-independent, kept by the segment cache if any
            scores = scorer.score_batch(items, memo=self.memo)
        t_score = time.perf_counter()
        total = max(1, sum(len(u) for per in units for u in per))
        results = []
        cover = self.config.cover_top_docs
        if cover is None:
            cover = getattr(scorer, "cover_top_docs", 0)
        for r, per, sc in zip(requests, units, scores):
            flat = []
            for us, ss in zip(per, sc):
                for u, s in zip(us, ss):
                    u.score = float(s)
                    flat.append(u)
            probs = [u.score for u in flat]
            if cover and r.budget.mode in ("ratio", "tokens") and flat:  # the order a budget fills in
                from ragpress.compressors.exit_head import cover_order

                for u, s in zip(flat, cover_order(probs, [u.passage for u in flat], cover)):
                    u.score = float(s)
            t = time.perf_counter()
            before = self.counter.count(render_full(r.passages))
            notes: dict = {}
            kept = select(flat, r.passages, r.budget, self.counter, before, query=r.query, protect=r.protect,
                          notes=notes)
            for u, p in zip(flat, probs):  # spans report P(useful), not the fill order
                u.score = p
            for u in kept:  # a unit cut to fit is a copy: undo cover_order's lift on it too
                if u.score > 1.0:
                    u.score -= 1.0 + (max(probs) - min(probs))
            text, spans = render(kept, r.passages)
            share = len(flat) / total
            results.append(self._result(r, text, spans, before, {
                "split": (t_split - t0) * share, "score": (t_score - t_split) * share,
                "select": time.perf_counter() - t,
            }, extra={"sentences": len(flat), "kept": len(kept), **structure_notes(kept, notes)}))
        return results

    def _compress(self, request: CompressionRequest) -> CompressionResult:
        return self._compress_batch([request])[0]


__all__ = ["ExitCompressor", "ExitConfig", "LMScorer", "SentenceScorer", "exit_message", "load_exit_lm"]
