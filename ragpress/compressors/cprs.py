"""QwenLong-CPRS (Shen et al., 2025, arXiv:2505.18092): dynamic context optimization.

A decoder LM whose **top layers attend bidirectionally** reads ``system prompt + query + context``
and a **per-token critic head** tags every context token (B/I/O/E, as the reference model:
``{0: B, 1: I, 2: O, 3: E}``). The task and its granularity (keywords, sentences, paragraphs)
are stated in a natural-language system prompt; the query is part of the prefix, so the causal
lower layers already condition every context token on it, and the bidirectional top layers let
a token see what follows it.

**Window-parallel inference.** The context is cut into token windows (at sentence boundaries
when a sentence fits), every window is prefixed with the same system prompt + query, and all
windows of all requests are scored in padded batches. Token keep-probabilities
``1 - P(O)`` map back to character offsets of the source passages.

**Decoding.**

* ``threshold`` budget (the reference behaviour): tokens whose keep-probability reaches the
  threshold, smoothed (gaps of <= ``merge_gap`` tokens merged, islands shorter than
  ``min_span_tokens`` dropped), optionally completed to whole sentences;
* ``ratio`` / ``tokens`` budget (added here): sentences (granularity ``sentences``) or passages
  (``paragraphs``) ranked by mean keep-probability and kept greedily until the budget, or for
  ``keywords`` the highest threshold whose smoothed spans fill the budget.

Spans always map to exact source text (:func:`ragpress.core.extractive.render`).

**Models.**

* offline default: SmolLM2-135M-Instruct's lower layers, frozen (causal), plus a small trained
  top (``ragpress/compressors/weights/cprs_smollm2.safetensors``: the top layers made
  bidirectional, initialised from SmolLM2's layers above the cut, a final norm and the critic
  head), trained by :mod:`ragpress.training.cprs` on the HotpotQA / MuSiQue *train*
  files;
* ``Tongyi-Zhiwen/QwenLong-CPRS-7B`` (or a local copy): loaded with ``AutoModel`` (Qwen2,
  layers >= 21 bidirectional as in the reference) and its ``cls_head`` read from the
  checkpoint's safetensors. Only from the local Hugging Face cache: nothing downloads.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ragpress.core.compressor import Compressor, CompressorConfig
from ragpress.core.errors import ConfigError, ModelLoadError
from ragpress.core.extractive import Unit, render, render_full, select, structure_notes, units_of
from ragpress.core.models import cached_hub_file, default_device, load_causal_lm
from ragpress.core.sentences import strip_span
from ragpress.core.types import Budget, CompressionRequest, CompressionResult

log = logging.getLogger(__name__)

Granularity = Literal["keywords", "sentences", "paragraphs"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "cprs_smollm2.safetensors"
DEFAULT_MODEL = "cprs-smollm2-135m"
HUB_MODEL = "Tongyi-Zhiwen/QwenLong-CPRS-7B"
HUB_BIDIRECTIONAL_FROM = 21  # the reference's BiLLM_START_INDEX
LABELS = ("B", "I", "O", "E")
OUTSIDE = 2
_SCORES: OrderedDict[str, tuple] = OrderedDict()  # process-wide: score key -> (tokens, probs)
_SCORES_LOCK = threading.Lock()

SYSTEM_PROMPTS: dict[str, str] = {
    "keywords": ("You are an expert in information extraction. Extract the keywords and short phrases "
                 "from the context that are needed to answer the user's question."),
    "sentences": ("You are an expert in information extraction. Extract the sentences from the context "
                  "that are needed to answer the user's question."),
    "paragraphs": ("You are an expert in information extraction. Extract the paragraphs from the context "
                   "that are needed to answer the user's question."),
}


def build_prefix(system_prompt: str, query: str) -> str:
    """The reference's prompt layout: system, user (the query), then the context turn."""
    return (f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
            f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>context\n")


# ---------------------------------------------------------------------------------------- model
class CPRSModel:
    """Decoder with causal lower layers, bidirectional upper layers and a per-token critic head.

    Works on any Llama/Qwen2-style ``transformers`` decoder (``embed_tokens``, ``layers``,
    ``rotary_emb``); ``lower`` and ``upper`` are split so training can cache the lower output.
    """

    def __init__(self, embed, rotary, lower: list, upper: list, norm, head, tokenizer, model_id: str,
                 meta: dict[str, Any] | None = None):
        self.embed, self.rotary = embed, rotary
        self.lower, self.upper = list(lower), list(upper)
        self.norm, self.head, self.tokenizer = norm, head, tokenizer
        self.model_id = model_id
        self.meta = meta or {}
        for layer in self.upper:
            layer.self_attn.is_causal = False

    @property
    def device(self):
        return self.head.weight.device

    @property
    def dtype(self):
        return self.head.weight.dtype

    @staticmethod
    def masks(attention_mask, dtype):
        """Additive (causal, bidirectional) 4-D masks from a 0/1 padding mask ``(B, L)``."""
        import torch

        b, n = attention_mask.shape
        neg = torch.finfo(dtype).min
        keys = attention_mask[:, None, None, :].bool()
        causal = torch.ones(n, n, dtype=torch.bool, device=attention_mask.device).tril()
        causal_m = torch.zeros(b, 1, n, n, dtype=dtype, device=attention_mask.device)
        causal_m.masked_fill_(~(keys & causal), neg)
        bi_m = torch.zeros(b, 1, n, n, dtype=dtype, device=attention_mask.device)
        bi_m.masked_fill_(~keys.expand(b, 1, n, n), neg)
        return causal_m, bi_m

    def _pos(self, hidden, n):
        import torch

        pos = torch.arange(n, device=hidden.device)[None, :].expand(hidden.shape[0], n)
        return pos, self.rotary(hidden, position_ids=pos)

    def run_lower(self, input_ids, attention_mask):
        """Hidden states after the causal lower layers."""
        h = self.embed(input_ids)
        pos, pe = self._pos(h, input_ids.shape[1])
        causal, _ = self.masks(attention_mask, h.dtype)
        for layer in self.lower:
            h = layer(h, attention_mask=causal, position_ids=pos, position_embeddings=pe)
        return h

    def run_upper(self, hidden, attention_mask):
        """Critic logits ``(B, L, 4)`` from lower hidden states (bidirectional upper layers)."""
        pos, pe = self._pos(hidden, hidden.shape[1])
        _, bi = self.masks(attention_mask, hidden.dtype)
        h = hidden
        for layer in self.upper:
            h = layer(h, attention_mask=bi, position_ids=pos, position_embeddings=pe)
        return self.head(self.norm(h)).float()

    def keep_probs(self, input_ids, attention_mask):
        """Per-token probability of *not* being tagged O (float32, ``(B, L)``)."""
        import torch

        with torch.inference_mode():
            logits = self.run_upper(self.run_lower(input_ids, attention_mask), attention_mask)
            return 1.0 - torch.softmax(logits, dim=-1)[..., OUTSIDE]


def _is_offline_default(name: str | None) -> bool:
    return name is None or name.lower() in {DEFAULT_MODEL, "default", "smollm2"}


@functools.lru_cache(maxsize=4)
def load_cprs_model(name: str | None = None, weights: str | None = None, device: str | None = None) -> CPRSModel:
    """The offline SmolLM2-based CPRS (``name`` None) with ``weights`` (default: shipped), or a
    QwenLong-CPRS checkpoint by hub id / local path (hub ids only from the local cache)."""
    device = device or default_device()
    if _is_offline_default(name):
        return _load_offline(Path(weights) if weights else DEFAULT_WEIGHTS, device)
    return _load_hub(name, device)


def read_weights_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    if not path.exists():
        raise ModelLoadError(f"CPRS weights {path} not found; train them with `ragpress train cprs` "
                             "or omit `weights` for the shipped ones")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ModelLoadError(f"could not read CPRS weights {path}: {exc}") from exc
    if "cprs" not in meta:
        raise ModelLoadError(f"{path} is not a CPRS weights file (no 'cprs' metadata)")
    return json.loads(meta["cprs"])


def _load_offline(path: Path, device: str) -> CPRSModel:
    import torch
    from safetensors.torch import load_file

    meta = read_weights_meta(path)
    lm, tok = load_causal_lm(None, device)
    base = lm.model
    n_lower, n_upper = int(meta["n_lower"]), int(meta["n_upper"])
    if n_lower + n_upper > len(base.layers):
        raise ModelLoadError(f"{path} needs {n_lower + n_upper} layers; the backbone has {len(base.layers)}")
    state = load_file(str(path))
    dtype = next(base.parameters()).dtype
    upper = [copy.deepcopy(base.layers[n_lower + j]) for j in range(n_upper)]
    norm = copy.deepcopy(base.norm)
    head = torch.nn.Linear(base.config.hidden_size, len(LABELS))
    modules = {f"upper.{j}": m for j, m in enumerate(upper)} | {"norm": norm, "head": head}
    for prefix, mod in modules.items():
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        missing, unexpected = mod.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"{path}: weights for {prefix} do not fit (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
        mod.to(device=device, dtype=dtype).eval()
        for p in mod.parameters():
            p.requires_grad_(False)
    return CPRSModel(base.embed_tokens, base.rotary_emb, base.layers[:n_lower], upper, norm, head, tok,
                     DEFAULT_MODEL, meta)


def _load_hub(name: str, device: str) -> CPRSModel:
    """QwenLong-CPRS checkpoint: Qwen2 body via AutoModel + the 4-way ``cls_head``."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModel, AutoTokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        body = AutoModel.from_pretrained(name, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load CPRS model {name!r}: {exc}. It must be a local path or a hub id already in "
            "the Hugging Face cache (this machine downloads nothing); omit `model` for the offline default."
        ) from exc
    index = cached_hub_file(name, "model.safetensors.index.json")
    shard = None
    if index:
        shard = json.loads(Path(index).read_text())["weight_map"].get("cls_head.weight")
    shard_path = cached_hub_file(name, shard or "model.safetensors")
    head = torch.nn.Linear(body.config.hidden_size, len(LABELS))
    try:
        with safe_open(shard_path, framework="pt") as f:
            head.weight.data.copy_(f.get_tensor("cls_head.weight"))
            head.bias.data.copy_(f.get_tensor("cls_head.bias"))
    except Exception as exc:
        raise ModelLoadError(f"{name!r} has no CPRS critic head (cls_head) in its checkpoint: {exc}") from exc
    head.to(device=device, dtype=dtype).eval()
    body.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    start = min(HUB_BIDIRECTIONAL_FROM, len(body.layers) - 1)
    return CPRSModel(body.embed_tokens, body.rotary_emb, body.layers[:start], body.layers[start:], body.norm,
                     head, tok, name, {"n_lower": start, "n_upper": len(body.layers) - start})


# ------------------------------------------------------------------------------------ windowing
@dataclass
class PassageTokens:
    """Tokens of ``"{title}\\n{text}"``; ``offsets`` are relative to ``text`` (header tokens < 0)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    segments: list[tuple[int, int]]  # token ranges: header+first sentence, then one per sentence
    sentences: list[tuple[int, int]]  # char spans of the units (sentences, rows, items...) of text
    units: list[Unit] = field(default_factory=list)  # the structure-aware units of those spans


@dataclass
class Window:
    request: int
    ids: list[int] = field(default_factory=list)
    slots: list[tuple[int, int]] = field(default_factory=list)  # (passage, token) per id; (-1, -1) separator


def tokenize_passage(tok, title: str | None, text: str, language: str | None = "auto") -> PassageTokens:
    header = f"{title}\n" if title else ""
    enc = tok(header + text, add_special_tokens=False, return_offsets_mapping=True)
    hl = len(header)
    offsets = [(a - hl, b - hl) for a, b in enc["offset_mapping"]]
    units = units_of(0, text, language)
    sentences = [(u.start, u.end) for u in units]
    cuts, k = [], 0
    for s_start, _ in sentences[1:]:
        while k < len(offsets) and offsets[k][0] < s_start:
            k += 1
        if k < len(offsets) and (not cuts or cuts[-1] < k) and k > 0:
            cuts.append(k)
    bounds = [0, *cuts, len(offsets)]
    segments = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    return PassageTokens(enc["input_ids"], offsets, segments, sentences, units)


def build_windows(request_idx: int, passages: list[PassageTokens], window_tokens: int,
                  sep_ids: list[int]) -> list[Window]:
    """Pack sentence segments of the passages, in order, into windows of <= ``window_tokens``
    context tokens; a segment longer than a window is cut at token boundaries."""
    windows: list[Window] = []
    cur = Window(request_idx)
    for pi, pt in enumerate(passages):
        first = True
        for a, b in pt.segments:
            pieces = [(s, min(s + window_tokens, b)) for s in range(a, b, window_tokens)]
            for s, e in pieces:
                sep = sep_ids if first and cur.ids else []
                if len(cur.ids) + len(sep) + (e - s) > window_tokens and cur.ids:
                    windows.append(cur)
                    cur, sep = Window(request_idx), []
                cur.ids.extend(sep)
                cur.slots.extend([(-1, -1)] * len(sep))
                cur.ids.extend(pt.ids[s:e])
                cur.slots.extend((pi, k) for k in range(s, e))
                first = False
    if cur.ids:
        windows.append(cur)
    return windows


def pad_batch(seqs: list[list[int]], value: int):
    """``(ids, mask)`` long tensors of ``seqs`` right-padded with ``value`` to the longest."""
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
    return ids, mask


def score_windows(model: CPRSModel, prefixes: list[list[int]], windows: list[Window], batch_size: int):
    """Keep-probabilities per window token, batching windows of all requests (longest first)."""
    pad = model.tokenizer.pad_token_id or 0
    out: list[np.ndarray] = [np.zeros(0)] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: -(len(prefixes[windows[i].request]) + len(windows[i].ids)))
    for at in range(0, len(order), batch_size):
        idx = order[at:at + batch_size]
        ids, mask = pad_batch([prefixes[windows[i].request] + windows[i].ids for i in idx], pad)
        probs = model.keep_probs(ids.to(model.device), mask.to(model.device)).cpu().numpy()
        for r, i in enumerate(idx):
            p0 = len(prefixes[windows[i].request])
            out[i] = probs[r, p0:p0 + len(windows[i].ids)]
    return out


# -------------------------------------------------------------------------------------- decoding
def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    runs, start = [], None
    for k, m in enumerate(mask):
        if m and start is None:
            start = k
        elif not m and start is not None:
            runs.append((start, k))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def smooth(keep: np.ndarray, merge_gap: int, min_len: int) -> list[tuple[int, int]]:
    """Token runs of ``keep`` with gaps of <= ``merge_gap`` tokens closed and runs shorter than
    ``min_len`` tokens dropped."""
    runs = _runs(keep)
    merged: list[tuple[int, int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] <= merge_gap:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return [(a, b) for a, b in merged if b - a >= min_len]


class CPRSConfig(CompressorConfig):
    """Settings of :class:`CPRSCompressor`."""

    model: str | None = Field(None, description="None: offline SmolLM2 CPRS; else a QwenLong-CPRS hub id/path")
    weights: str | None = Field(None, description="trained offline weights (.safetensors); None: shipped")
    granularity: Granularity = "sentences"
    instruction: str | None = Field(None, description="system prompt; None: the granularity's default")
    window_tokens: int = Field(512, ge=16, le=32768)
    max_query_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    merge_gap: int = Field(3, ge=0)
    min_span_tokens: int = Field(4, ge=1)
    complete_sentences: bool | None = Field(
        None, description="extend threshold spans to whole sentences; None: yes unless granularity is keywords")
    device: str | None = None
    score_cache_size: int = Field(256, ge=0, description="requests whose token scores are kept in memory "
                                  "(re-budgeting the same request skips the model)")


class CPRSCompressor(Compressor):
    """QwenLong-CPRS: window-parallel token tagging by a partly bidirectional LM + critic head."""

    name = "cprs"
    config_cls = CPRSConfig
    budget_modes = frozenset({"ratio", "tokens", "threshold"})
    default_budget = Budget(ratio=0.3)
    #: nothing to do ahead of queries: every window is scored after the system prompt and the
    #: query, so no passage token's probability exists without the query
    precomputable = False

    @property
    def model_id(self) -> str:
        return DEFAULT_MODEL if _is_offline_default(self.config.model) else str(self.config.model)

    def load(self) -> CPRSModel:
        return load_cprs_model(self.config.model, self.config.weights, self.config.device)

    @property
    def system_prompt(self) -> str:
        return self.config.instruction or SYSTEM_PROMPTS[self.config.granularity]

    # -------------------------------------------------------------- scoring
    def _score_key(self, r: CompressionRequest) -> str:
        c = self.config
        blob = json.dumps([self.model_id, c.weights, self.system_prompt, c.window_tokens, c.max_query_tokens,
                           r.query, [(p.title, p.text) for p in r.passages]])
        return hashlib.sha256(blob.encode()).hexdigest()

    def token_probs(self, requests: list[CompressionRequest]):
        """``(tokens, probs, stats)``: per request, per passage :class:`PassageTokens` and
        keep-probabilities of their tokens. Requests scored before (same text, query, prompt and
        model) come from an in-memory LRU; the others are scored in one window batch."""
        keys = [self._score_key(r) for r in requests]
        with _SCORES_LOCK:
            hit = {k: _SCORES[k] for k in keys if k in _SCORES}
        todo = [i for i, k in enumerate(keys) if k not in hit]
        toks, probs, stats = self._token_probs([requests[i] for i in todo]) if todo else ([], [], {})
        for i, t, p in zip(todo, toks, probs):
            hit[keys[i]] = (t, p)
        out_t = [hit[k][0] for k in keys]
        out_p = [hit[k][1] for k in keys]
        if self.config.score_cache_size:
            with _SCORES_LOCK:
                for k in keys:
                    _SCORES[k] = hit[k]
                    _SCORES.move_to_end(k)
                while len(_SCORES) > self.config.score_cache_size:
                    _SCORES.popitem(last=False)
        stats = {"tokenize": 0.0, "score": 0.0, "windows": 0, "model_tokens": 0, **stats,
                 "cache_hits": len(requests) - len(todo)}
        return out_t, out_p, stats

    def _token_probs(self, requests: list[CompressionRequest]):
        model = self.load()
        tok = model.tokenizer
        t0 = time.perf_counter()
        sep = tok("\n\n", add_special_tokens=False)["input_ids"]
        prefixes, toks, windows = [], [], []
        for ri, r in enumerate(requests):
            q_ids = tok(r.query, add_special_tokens=False)["input_ids"][: self.config.max_query_tokens]
            prefixes.append(tok(build_prefix(self.system_prompt, tok.decode(q_ids)),
                                add_special_tokens=False)["input_ids"])
            pts = [tokenize_passage(tok, p.title, p.text) for p in r.passages]
            toks.append(pts)
            windows.extend(build_windows(ri, pts, self.config.window_tokens, sep))
        t1 = time.perf_counter()
        scored = score_windows(model, prefixes, windows, self.config.batch_size)
        probs = [[np.full(len(pt.ids), np.nan, dtype=np.float32) for pt in pts] for pts in toks]
        for w, s in zip(windows, scored):
            for (pi, k), v in zip(w.slots, s):
                if pi >= 0:
                    probs[w.request][pi][k] = v
        n_tok = sum(len(prefixes[w.request]) + len(w.ids) for w in windows)
        stats = {"tokenize": t1 - t0, "score": time.perf_counter() - t1, "windows": len(windows),
                 "model_tokens": n_tok}
        return toks, probs, stats

    # -------------------------------------------------------------- decoding
    def _threshold_units(self, passages, toks, probs, thr: float) -> list[Unit]:
        units: list[Unit] = []
        for pi, (p, pt, pr) in enumerate(zip(passages, toks, probs)):
            text_tok = np.array([o[0] >= 0 for o in pt.offsets])
            keep = np.nan_to_num(pr, nan=0.0) >= thr
            keep &= text_tok
            for a, b in smooth(keep, self.config.merge_gap, self.config.min_span_tokens):
                ks = [k for k in range(a, b) if text_tok[k]]
                if not ks:
                    continue
                s, e = strip_span(p.text, max(0, pt.offsets[ks[0]][0]), pt.offsets[ks[-1]][1])
                if e > s:
                    units.append(Unit(pi, s, e, float(np.nanmean(pr[a:b]))))
        complete = self.config.complete_sentences
        if complete or (complete is None and self.config.granularity != "keywords"):
            units = self._complete(units, toks)
        return units

    @staticmethod
    def _complete(units: list[Unit], toks) -> list[Unit]:
        """Extend every span to the sentences it touches; merge what then overlaps."""
        out: dict[tuple[int, int, int], float] = {}
        for u in units:
            for a, b in toks[u.passage].sentences:
                if a < u.end and u.start < b:
                    key = (u.passage, a, b)
                    out[key] = max(out.get(key, 0.0), u.score)
        return [Unit(p, a, b, s) for (p, a, b), s in sorted(out.items())]

    def _sentence_units(self, passages, toks, probs, whole_passage: bool) -> list[Unit]:
        units = []
        for pi, (p, pt, pr) in enumerate(zip(passages, toks, probs)):
            starts = np.array([o[0] for o in pt.offsets])
            ends = np.array([o[1] for o in pt.offsets])
            templates = [Unit(pi, 0, len(p.text))] if whole_passage else (
                pt.units or [Unit(pi, a, b) for a, b in pt.sentences])
            for t in templates:
                a, b = t.start, t.end
                sel = (ends > a) & (starts < b) & (starts >= 0)
                vals = pr[sel]
                vals = vals[~np.isnan(vals)]
                units.append(Unit(pi, a, b, float(vals.mean()) if len(vals) else 0.0, t.kind, t.context, t.path,
                                  t.block))
        return units

    def _keyword_budget(self, passages, toks, probs, budget: Budget, before: int) -> list[Unit]:
        target = budget.target_tokens(before)
        lo, hi, best = 0.0, 1.0, []
        for _ in range(14):  # smallest threshold whose spans still fit the budget
            mid = (lo + hi) / 2
            units = self._threshold_units(passages, toks, probs, mid)
            text, _ = render(units, passages)
            if self.counter.count(text) <= target:
                best, hi = units, mid
            else:
                lo = mid
        return best

    def decode(self, request: CompressionRequest, toks, probs, before: int, notes: dict | None = None) -> list[Unit]:
        budget, passages = request.budget, request.passages
        if budget.mode == "threshold":
            return self._threshold_units(passages, toks, probs, budget.threshold)
        if self.config.granularity == "keywords":
            return self._keyword_budget(passages, toks, probs, budget, before)
        units = self._sentence_units(passages, toks, probs, self.config.granularity == "paragraphs")
        return select(units, passages, budget, self.counter, before, query=request.query, protect=request.protect,
                      notes=notes)

    # -------------------------------------------------------------- contract
    def _compress_batch(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        if self.config.granularity not in SYSTEM_PROMPTS:
            raise ConfigError(f"granularity must be one of {sorted(SYSTEM_PROMPTS)}")
        toks, probs, stats = self.token_probs(requests)
        total = max(1, sum(len(pt.ids) for pts in toks for pt in pts))
        results = []
        for r, tk, pr in zip(requests, toks, probs):
            t0 = time.perf_counter()
            before = self.counter.count(render_full(r.passages))
            notes: dict = {}
            units = self.decode(r, tk, pr, before, notes)
            text, spans = render(units, r.passages)
            share = sum(len(pt.ids) for pt in tk) / total
            results.append(self._result(
                r, text, spans, before,
                {"tokenize": stats["tokenize"] * share, "score": stats["score"] * share,
                 "decode": time.perf_counter() - t0},
                extra={"granularity": self.config.granularity, "windows_in_batch": stats["windows"],
                       "model_tokens_in_batch": stats["model_tokens"], "score_cache_hits": stats["cache_hits"],
                       **structure_notes(units, notes)},
            ))
        return results

    def _compress(self, request: CompressionRequest) -> CompressionResult:
        return self._compress_batch([request])[0]


__all__ = ["CPRSCompressor", "CPRSConfig", "CPRSModel", "load_cprs_model", "SYSTEM_PROMPTS", "build_prefix",
           "tokenize_passage", "build_windows", "score_windows", "smooth"]
