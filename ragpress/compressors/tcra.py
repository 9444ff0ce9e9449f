"""TCRA-LLM (Liu et al., 2023, arXiv:2310.15556): token compression for retrieval-augmented LLMs,
by summarization and by semantic compression.

**Summarization compression.** A summarizer condenses each retrieved passage to a length target
(the paper fine-tunes T5 on summaries of controlled length). Here any seq2seq model
(``t5-*``, BART: ``summarize: `` prompt) or instruct causal LM (chat prompt asking for at most N
words) plugs in by id; the offline default is SmolLM2-135M-Instruct. Generation is batched with
left padding, greedy, and capped at the length target (``ratio`` x passage LM tokens, plus a
small slack); a summary cut mid-sentence is trimmed back to its last full sentence. Summaries
are query-independent, so :func:`summarize` is a pure function of the passage text, the
length target and the model (cache key: :func:`summary_cache_key`).

**Semantic compression.** Each sentence loses words one step at a time: at every step each
remaining word is tried out, the sentence without it is embedded, and the words whose removal
moves the sentence embedding least (highest cosine similarity to the ORIGINAL sentence's
embedding) are dropped, until the sentence is down to its token target. Numbers, quoted strings
and (capitalised-word heuristic) named entities can be protected. ``step_fraction`` = 0 removes
exactly one word per step (the paper's procedure); the default removes up to 20 % of the
remaining words per step, which needs ~5x fewer embedding passes.

Registered names (all one class family, one config):

* ``tcra``: ``stages=["summarize", "semantic"]`` chained: the summary targets ``sqrt(r)`` of
  each passage and the semantic stage brings the context to ``r`` overall;
* ``tcra-summary``: ``stages=["summarize"]`` only;
* ``tcra-semantic``: ``stages=["semantic"]`` only (extractive at word level: spans map back to
  the source).

All three are query-independent (``query_aware = False``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ragpress.core.compressor import Compressor, CompressorConfig
from ragpress.core.errors import ConfigError, ModelLoadError
from ragpress.core.extractive import PASSAGE_SEP, render_full
from ragpress.core.models import default_device, load_causal_lm, load_embedder, resolve_model_id
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Span

Stage = Literal["summarize", "semantic"]
Protect = Literal["numbers", "entities", "quotes"]

_SUMMARY_PROMPT = ("Summarize the following text in at most {words} words. Keep the names, dates and "
                   "numbers.\n\n{title}{text}")
_SENT_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")
#: ideographs and kana: CJK text has no spaces between words, so each character is a word of its own
#: (Hangul is written with spaces and stays with the space-separated words)
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_CJK = re.compile(f"[{_CJK_CHARS}]")
_WORD = re.compile(f"[{_CJK_CHARS}]|[^\\s{_CJK_CHARS}]+")
#: unit kinds kept or dropped whole (removing words from a table row, a JSON value or a code line
#: breaks it); the other kinds (sentences, list items, chat turns) lose words
_ATOMIC = frozenset({"row", "json", "code"})
#: a list marker or a speaker label opening an item / a turn: never removed
_LEAD = re.compile(r"^(?:[-*+\u2022]|\d{1,3}[.)]|[^\s:\uff1a]{1,40}[:\uff1a])$")
_NUMBER = re.compile(r"\d")
_QUOTE = re.compile(r"\"[^\"]+\"|“[^”]+”|'[^'\s][^']*[^'\s]'")
_CAPITALISED = re.compile(r"^[\"'(\[]?[A-Z][\w'\-.]*")


# ---------------------------------------------------------------------------- summarization
def summary_cache_key(text: str, ratio: float, model_id: str) -> str:
    """Content key of one :func:`summarize` output (query-independent, cacheable per segment)."""
    return "summary:" + hashlib.sha256(f"{model_id}\x00{ratio:.4f}\x00{text}".encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def _is_seq2seq(name: str | None) -> bool:
    if name is None or resolve_model_id("causal_lm", name) != name:
        return False
    from transformers import AutoConfig

    try:
        return bool(getattr(AutoConfig.from_pretrained(name), "is_encoder_decoder", False))
    except Exception as exc:
        raise ModelLoadError(f"could not load summarizer {name!r}: {exc}. Pass a local path or a hub id "
                             "already in the Hugging Face cache, or omit it for the offline default.") from exc


@functools.lru_cache(maxsize=2)
def _load_seq2seq(name: str, device: str | None = None):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    device = device or default_device()
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSeq2SeqLM.from_pretrained(
            name, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"could not load seq2seq summarizer {name!r}: {exc}. Pass a local path or a hub id "
                             "already in the Hugging Face cache, or omit it for the offline default.") from exc
    return model.to(device).eval(), tok


def _seq2seq_prefix(model) -> str:
    """The task prefix the checkpoint was trained with (T5: ``summarize: ``; BART: none)."""
    task = (getattr(model.config, "task_specific_params", None) or {}).get("summarization") or {}
    if "prefix" in task:
        return str(task["prefix"])
    return "summarize: " if getattr(model.config, "model_type", "") in {"t5", "mt5", "umt5", "longt5"} else ""


def _encoder_window(model, tok) -> int | None:
    """Most input tokens a seq2seq encoder takes (learned positions), else its tokenizer's limit."""
    limits = [getattr(model.config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tok, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else None


def _trim_to_sentence(text: str) -> str:
    """Drop a trailing unfinished sentence (when at least one sentence is complete)."""
    text = text.strip()
    ends = list(_SENT_END.finditer(text))
    if ends and ends[-1].end() < len(text):
        return text[: ends[-1].end()]
    return text


_MEMO: OrderedDict[str, str] = OrderedDict()
_MEMO_SIZE = 4096


def summarize(texts: Sequence[str], ratio: float | Sequence[float], model_name: str | None = None,
              titles: Sequence[str | None] | None = None, batch_size: int = 8, min_new_tokens: int = 8,
              memo=None) -> list[str]:
    """Summaries of ``texts``, each capped at ``ratio`` x its length (LM tokens, + 10 % + 4 slack).

    Pure and query-independent: the output depends on (text, title, ratio, model) only, so a
    segment cache can store it under :func:`summary_cache_key`. A small process-local LRU memo
    (4096 summaries) spares repeated work inside one process; ``memo`` (a compressor's
    :meth:`~ragpress.core.compressor.Compressor.memo`) puts them in its segment cache, e.g.
    Redis, shared by every replica. Causal LMs get a chat prompt and
    left-padded batched greedy generation; seq2seq models get ``summarize: ``. A text already
    under ``min_new_tokens`` tokens is returned unchanged.
    """
    ratios = [float(ratio)] * len(texts) if isinstance(ratio, (int, float)) else [float(r) for r in ratio]
    titles = list(titles) if titles is not None else [None] * len(texts)
    model_id = resolve_model_id("causal_lm", model_name)
    if memo is not None:
        contents = [f"{r:.4f}\x00{min_new_tokens}\x00{ti or ''}\x00{t}" for t, ti, r in zip(texts, titles, ratios)]
        at = {c: i for i, c in enumerate(contents)}

        def compute(batch: list[str]) -> list[str]:
            idx = [at[c] for c in batch]
            return summarize([texts[i] for i in idx], [ratios[i] for i in idx], model_name,
                             [titles[i] for i in idx], batch_size, min_new_tokens)

        return memo("summary", contents, compute, model_id=model_id)
    keys = [summary_cache_key(f"{ti or ''}\x00{t}", r, model_id) for t, ti, r in zip(texts, titles, ratios)]
    missing = [i for i, k in enumerate(keys) if k not in _MEMO]
    if missing:
        fresh = _summarize([texts[i] for i in missing], [ratios[i] for i in missing], model_name,
                           [titles[i] for i in missing], batch_size, min_new_tokens)
        for i, s in zip(missing, fresh):
            _MEMO[keys[i]] = s
            if len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
    out = []
    for k in keys:
        _MEMO.move_to_end(k)
        out.append(_MEMO[k])
    return out


def _summarize(texts: list[str], ratios: list[float], model_name: str | None, titles: list[str | None],
               batch_size: int, min_new_tokens: int) -> list[str]:
    import torch

    seq2seq = _is_seq2seq(model_name)
    model, tok = _load_seq2seq(model_name) if seq2seq else load_causal_lm(model_name)
    lengths = [len(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]] if texts else []
    caps = [max(min_new_tokens, math.ceil(r * n * 1.1) + 4) for r, n in zip(ratios, lengths)]
    out: list[str] = list(texts)
    todo = [i for i in range(len(texts)) if lengths[i] > min_new_tokens and ratios[i] < 1.0]
    prompts = {}
    for i in todo:
        words = max(3, int(round(ratios[i] * len(texts[i].split()))))
        if seq2seq:
            prompts[i] = _seq2seq_prefix(model) + texts[i]
        else:
            msg = _SUMMARY_PROMPT.format(words=words, title=f"{titles[i]}\n" if titles[i] else "", text=texts[i])
            prompts[i] = tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                                 add_generation_prompt=True)
    todo.sort(key=lambda i: lengths[i])
    old_side = tok.padding_side
    # A decoder-only LM continues from the last position: pad on the left. An encoder (BART's
    # learned absolute positions) must see every text from position 0: pad on the right, and cut
    # to its position limit (BART: 1024) instead of indexing past it.
    tok.padding_side = "right" if seq2seq else "left"
    window = _encoder_window(model, tok) if seq2seq else None
    try:
        for a in range(0, len(todo), batch_size):
            batch = todo[a:a + batch_size]
            enc = tok([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=seq2seq,
                      truncation=window is not None, max_length=window).to(model.device)
            with torch.inference_mode():  # greedy, bounded: a checkpoint's beams / min_length do not apply
                gen = model.generate(**enc, do_sample=False, num_beams=1, min_length=0,
                                     max_new_tokens=max(caps[i] for i in batch), pad_token_id=tok.pad_token_id)
            if not seq2seq:
                gen = gen[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(batch):
                ids = [t for t in gen[row].tolist() if t not in (tok.pad_token_id, tok.eos_token_id)][: caps[i]]
                summary = _trim_to_sentence(tok.decode(ids, skip_special_tokens=True))
                out[i] = summary or texts[i][: max(1, int(len(texts[i]) * ratios[i]))]
    finally:
        tok.padding_side = old_side
    return out


# ---------------------------------------------------------------------------- semantic compression
@dataclass
class _Sentence:
    """One sentence being compressed: word spans into ``source`` and which are still kept."""

    source: str
    words: list[tuple[int, int]]
    cost: list[int]
    protected: list[bool]
    target: float
    joiner: str | None = None  # between pieces: None = a space, none between CJK characters
    kept: list[bool] = field(default_factory=list)

    def __post_init__(self):
        self.kept = [True] * len(self.words)

    def tokens(self) -> int:
        return sum(c for c, k in zip(self.cost, self.kept) if k)

    def removable(self) -> list[int]:
        return [i for i, k in enumerate(self.kept) if k and not self.protected[i]]

    def text(self, without: int | None = None) -> str:
        parts = [self.source[a:b] for i, (a, b) in enumerate(self.words) if self.kept[i] and i != without]
        return self.joiner.join(parts) if self.joiner is not None else join_words(parts)

    def active(self) -> bool:
        return self.tokens() > self.target and bool(self.removable())


def join_words(parts: Sequence[str]) -> str:
    """Words joined by a space, except between two CJK characters (no spaces in CJK text)."""
    out: list[str] = []
    for w in parts:
        if out and not (_CJK.match(out[-1][-1]) and _CJK.match(w[0])):
            out.append(" ")
        out.append(w)
    return "".join(out)


def protected_words(sentence: str, words: list[tuple[int, int]], protect: Sequence[str]) -> list[bool]:
    """Which words may not be removed: numbers (any digit), quoted strings, named entities
    (heuristic: a capitalised word that is not the sentence's first word, or is followed by
    another capitalised word; all-caps acronyms)."""
    flags = [False] * len(words)
    quoted = [(m.start(), m.end()) for m in _QUOTE.finditer(sentence)] if "quotes" in protect else []
    for i, (a, b) in enumerate(words):
        w = sentence[a:b]
        if "numbers" in protect and _NUMBER.search(w):
            flags[i] = True
        elif quoted and any(qa <= a and b <= qb for qa, qb in quoted):
            flags[i] = True
        elif "entities" in protect and _CAPITALISED.match(w):
            nxt = sentence[words[i + 1][0]:words[i + 1][1]] if i + 1 < len(words) else ""
            if i > 0 or _CAPITALISED.match(nxt) or (len(w) > 1 and w.isupper()):
                flags[i] = True
    return flags


def semantic_compress(sentences: Sequence[str], ratios: float | Sequence[float], embedder_name: str | None = None,
                      protect: Sequence[str] = (), step_fraction: float = 0.2,
                      token_counter=None, batch_size: int = 128, max_steps: int | None = None,
                      pieces: Sequence[list[tuple[int, int]] | None] | None = None,
                      joiners: Sequence[str | None] | None = None,
                      fixed: Sequence[list[bool] | None] | None = None) -> list[list[tuple[int, int]]]:
    """Word-removal semantic compression of each sentence down to ``ratio`` of its tokens.

    Returns, per sentence, the ``(start, end)`` character spans of the kept words. All sentences
    are compressed together: each step embeds every candidate deletion of every still-active
    sentence in one ``encode`` call. Every step removes at least one word from every active
    sentence, so the loop ends; ``max_steps`` (None: no limit) caps it further.

    The removable pieces default to the words of each sentence (each CJK character a word of its
    own); ``pieces`` gives other spans per sentence (the rows of a table, the values of a JSON
    document), ``joiners`` the string they are joined with (None: a space, none between CJK
    characters), ``fixed`` pieces that are never removed (a list marker, a speaker label).
    """
    from ragpress.core.tokens import get_token_counter

    counter = token_counter or get_token_counter()
    ratios = [float(ratios)] * len(sentences) if isinstance(ratios, (int, float)) else list(ratios)
    states: list[_Sentence] = []
    all_words = [ps if ps is not None else [(m.start(), m.end()) for m in _WORD.finditer(s)]
                 for s, ps in zip(sentences, pieces or [None] * len(sentences))]
    flat = [(" " + s[a:b]) for s, ws in zip(sentences, all_words) for a, b in ws]
    costs = iter(counter.count_batch(flat))
    for k, (s, ws, r) in enumerate(zip(sentences, all_words, ratios)):
        cost = [next(costs) for _ in ws]
        flags = protected_words(s, ws, protect)
        if fixed and fixed[k]:
            flags = [a or b for a, b in zip(flags, fixed[k])]
        states.append(_Sentence(s, ws, cost, flags, target=r * sum(cost),
                                joiner=joiners[k] if joiners else None))
    embedder = load_embedder(embedder_name)
    active = [st for st in states if st.active()]
    if active:
        origin = embedder.encode([st.source for st in active], batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True)
        origin_of = {id(st): origin[k] for k, st in enumerate(active)}
    step = 0
    while max_steps is None or step < max_steps:
        step += 1
        active = [st for st in active if st.active()]
        if not active:
            break
        cands = [(st, i) for st in active for i in st.removable()]
        emb = embedder.encode([st.text(without=i) for st, i in cands], batch_size=batch_size,
                              normalize_embeddings=True, convert_to_numpy=True)
        sims: dict[int, list[tuple[float, int]]] = {}
        for (st, i), e in zip(cands, emb):
            sims.setdefault(id(st), []).append((float(e @ origin_of[id(st)]), i))
        for st in active:
            ranked = sorted(sims[id(st)], key=lambda x: (-x[0], x[1]))
            n_kept = sum(st.kept)
            limit = 1 if step_fraction <= 0 else max(1, math.ceil(step_fraction * n_kept))
            for _, i in ranked[:limit]:
                if st.tokens() <= st.target:
                    break
                st.kept[i] = False
    return [[w for w, k in zip(st.words, st.kept) if k] for st in states]


# ---------------------------------------------------------------------------- the compressor
class TCRAConfig(CompressorConfig):
    """Settings of the TCRA compressors."""

    stages: list[Stage] = Field(default_factory=lambda: ["summarize", "semantic"],
                                description="stages in order: summarize, semantic, or both")
    summarizer: str | None = Field(None, description="seq2seq or instruct causal LM id/path (default: offline "
                                                     "SmolLM2-135M-Instruct; paper: fine-tuned T5)")
    summary_ratio: float | None = Field(None, gt=0.0, le=1.0,
                                        description="length target of each summary; None: the budget's ratio "
                                                    "(alone) or its square root (chained)")
    embedder: str | None = Field(None, description="sentence embedder for semantic compression (default MiniLM)")
    protect: list[Protect] = Field(default_factory=list,
                                   description="words the semantic stage never removes (on request: numbers, "
                                               "entities, quotes); protected words can keep a context above "
                                               "its budget, which the result reports")
    step_fraction: float = Field(0.2, ge=0.0, lt=1.0,
                                 description="share of remaining words removed per step (0 = one word, as the paper)")
    min_words: int = Field(4, ge=1, description="sentences with fewer words are kept as they are")
    batch_size: int = Field(8, ge=1, description="summarizer generation batch size")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("stages must be a non-empty list without repeats, e.g. ['summarize', 'semantic']")
        return v


@dataclass
class _Doc:
    """A passage as it moves through the stages: its current text and, while it is still the
    source text, kept word spans for provenance."""

    pid: str
    title: str | None
    text: str
    source: str
    extractive: bool = True
    kept: list[tuple[int, int]] | None = None


class TCRACompressor(Compressor):
    """TCRA-LLM: summarization compression and/or semantic (word-removal) compression.

    >>> from ragpress import create_compressor                                   # doctest: +SKIP
    >>> tcra = create_compressor("tcra-semantic", protect=["numbers"])           # doctest: +SKIP
    >>> tcra.compress(CompressionRequest.of("", ["The tall tower was built in 1889."], ratio=0.6)).text  # doctest: +SKIP
    """

    name = "tcra"
    config_cls = TCRAConfig
    query_aware = False
    budget_modes = frozenset({"ratio", "tokens"})
    default_budget = Budget(ratio=0.5)
    fixed_stages: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config=None, **overrides):
        if self.fixed_stages is not None:
            given = (config or {}).get("stages") if isinstance(config, dict) else None
            given = overrides.get("stages", given)
            if given is not None and tuple(given) != self.fixed_stages:
                raise ConfigError(f"{self.name!r} always runs stages {list(self.fixed_stages)}; use 'tcra' to choose")
            overrides["stages"] = list(self.fixed_stages)
        super().__init__(config, **overrides)

    @property
    def model_id(self) -> str:
        ids = []
        if "summarize" in self.config.stages:
            ids.append(resolve_model_id("causal_lm", self.config.summarizer))
        if "semantic" in self.config.stages:
            ids.append(resolve_model_id("embedder", self.config.embedder))
        return "+".join(ids)

    def _compress(self, request: CompressionRequest) -> CompressionResult:
        return self._compress_batch([request])[0]

    def _compress_batch(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        cfg, counter = self.config, self.counter
        befores = [counter.count(render_full(r.passages)) for r in requests]
        targets = [r.budget.target_tokens(b) for r, b in zip(requests, befores)]
        # a ratio budget is used as given (so summaries are keyed, and memoised, by the requested ratio)
        ratios = [r.budget.ratio if r.budget.mode == "ratio" else (min(1.0, t / b) if b else 1.0)
                  for r, t, b in zip(requests, targets, befores)]
        docs = [[_Doc(p.id, p.title, p.text, p.text) for p in r.passages] for r in requests]
        timings = {"summarize": 0.0, "semantic": 0.0}
        chained = len(cfg.stages) > 1
        for stage in cfg.stages:
            ts = time.perf_counter()
            if stage == "summarize":
                self._summarize_stage(docs, ratios, chained, befores)
            else:
                self._semantic_stage(docs, targets)
            timings[stage] = time.perf_counter() - ts
        if cfg.stages[-1] == "summarize":
            for ds, target in zip(docs, targets):
                _trim_abstractive(ds, target, counter)
        results = []
        total_tokens = max(1, sum(befores))
        for r, ds, before, target in zip(requests, docs, befores, targets):
            text, spans = _render(ds)
            share = before / total_tokens
            res = self._result(r, text, spans, before,
                               {k: v * share for k, v in timings.items() if k in cfg.stages},
                               extra={"stages": list(cfg.stages),
                                      "abstractive": any(not d.extractive for d in ds),
                                      "sources": [d.pid for d in ds], "target_tokens": target})
            res.extra["within_budget"] = res.tokens_after <= target
            results.append(res)
        return results

    @property
    def precomputable(self) -> bool:  # type: ignore[override]
        """Summaries of the source passages (summarize first) depend on the text, the title and the
        ratio only; word removal (semantic) works against the request's budget."""
        return self.config.stages[0] == "summarize"

    def _summary_targets(self, ratios: list[float], chained: bool) -> list[float]:
        if self.config.summary_ratio is not None:
            return [self.config.summary_ratio] * len(ratios)
        return [math.sqrt(r) if chained else r for r in ratios]

    def _precompute(self, passages: list[Passage], budget: Budget) -> tuple[list[int], list[int]]:
        """The summaries a request with a ``budget`` ratio reads first (the same call, keys and
        memo as the summarize stage). Token budgets give each request its own ratio: refused."""
        if budget.mode != "ratio" and self.config.summary_ratio is None:
            raise ConfigError(f"{self.name!r} summaries depend on the ratio: precompute them for a ratio budget "
                              "(a token budget's ratio is known only per request), or set summary_ratio")
        cfg = self.config
        target = self._summary_targets([budget.ratio or 1.0] * len(passages), len(cfg.stages) > 1)
        summaries = summarize([p.text for p in passages], target, cfg.summarizer, titles=[p.title for p in passages],
                              batch_size=cfg.batch_size, memo=self.memo)
        return [1] * len(passages), self.counter.count_batch(summaries)

    def _summarize_stage(self, docs: list[list[_Doc]], ratios: list[float], chained: bool,
                         befores: list[int]) -> None:
        cfg, counter = self.config, self.counter
        flat = [(d, r, k) for k, (ds, r) in enumerate(zip(docs, ratios)) for d in ds]
        if not flat:
            return
        target = self._summary_targets([r for _, r, _ in flat], chained)
        summaries = summarize([d.text for d, _, _ in flat], target, cfg.summarizer,
                              titles=[d.title for d, _, _ in flat], batch_size=cfg.batch_size, memo=self.memo)
        # The generation cap is in the summarizer's tokens: fit each summary to its share of the
        # stage's reader-token target (headers and separators excluded) too.
        lengths = counter.count_batch([d.text for d, _, _ in flat])
        sep = counter.count(PASSAGE_SEP)
        overhead = [sum(counter.count(f"{d.title}\n") for d in ds if d.title) + sep * (len(ds) - 1) for ds in docs]
        body = [max(1, b - o) for b, o in zip(befores, overhead)]
        for (d, _, k), s, t, n in zip(flat, summaries, target, lengths):
            if t < 1.0 and s != d.text:
                share = n / body[k]
                cap = max(1, int(t * befores[k] * share - overhead[k] * share))
                d.text, d.extractive, d.kept = _fit_words(s, cap, counter), False, None

    def _semantic_stage(self, docs: list[list[_Doc]], targets: list[int], rounds: int = 3) -> None:
        """Semantic compression of every request's passages to its target, in one embedding
        batch. The units come from :mod:`ragpress.core.structure` (the same as the extractive
        methods'): sentences, list items and chat turns lose words (a list marker and a speaker
        label stay); table rows, JSON values and code lines are not cut (a row without cells, a
        value without its key, half a line of code mislead) but dropped whole, by the same
        criterion at the level of their table / document / block; kept pieces are rendered by
        :func:`ragpress.core.extractive.render`, so a table keeps its header row and kept JSON
        parses. The context a kept piece carries (a header row, a heading) is not known to the
        per-sentence ratios: a request still over its target after a round is compressed again
        from its input with a lower ratio (at most ``rounds`` rounds)."""
        counter = self.counter
        inputs = [[(d.text, d.kept) for d in ds] for ds in docs]
        scale = [1.0] * len(docs)
        todo = list(range(len(docs)))
        for _ in range(rounds):
            self._semantic_once([docs[k] for k in todo], [targets[k] for k in todo], [scale[k] for k in todo])
            over = []
            for k in todo:
                now = counter.count(_render(docs[k])[0])
                if now > targets[k] and now > 0:
                    scale[k] *= 0.97 * targets[k] / now
                    for d, (text, kept) in zip(docs[k], inputs[k]):
                        d.text, d.kept = text, kept
                    over.append(k)
            if not over:
                return
            todo = over
        # the last round's result stands (reported by ``within_budget``)
        self._semantic_once([docs[k] for k in todo], [targets[k] for k in todo], [scale[k] for k in todo])

    def _semantic_once(self, docs: list[list[_Doc]], targets: list[int], scales: list[float]) -> None:
        from ragpress.core.extractive import render, units_of

        cfg, counter = self.config, self.counter
        items: list[tuple[str, list[tuple[int, int]], str | None, list[bool], list, float]] = []
        owners: list[_Doc] = []
        for ds, target, scale in zip(docs, targets, scales):
            headers = sum(counter.count(f"{d.title}\n") for d in ds if d.title)
            now = counter.count(_render(ds)[0]) - headers
            ratio = max(0.0, min(1.0, scale * (target - headers) / now)) if now > 0 else 1.0
            for d in ds:
                if not d.text.strip():
                    continue
                for source, spans, joiner, fixed, units in _removal_items(d.text, units_of(0, d.text)):
                    items.append((source, spans, joiner, fixed, units, ratio))
                    owners.append(d)
        small = [len(it[1]) < (2 if it[2] is not None else cfg.min_words) or it[5] >= 1.0 for it in items]
        idx = [i for i, k in enumerate(small) if not k]
        kept_spans = semantic_compress([items[i][0] for i in idx], [items[i][5] for i in idx], cfg.embedder,
                                       cfg.protect, cfg.step_fraction, counter,
                                       pieces=[items[i][1] for i in idx], joiners=[items[i][2] for i in idx],
                                       fixed=[items[i][3] for i in idx]) if idx else []
        kept_of = dict(zip(idx, kept_spans))
        kept_units: dict[int, list] = {}
        for i, ((_, spans, _, fixed, units, _), d) in enumerate(zip(items, owners)):
            keep = set(kept_of[i]) if i in kept_of else set(spans)
            if not any(sp in keep and not f for sp, f in zip(spans, fixed)):
                keep = set()  # only a label or a header row would be left: the item goes
            kept_units.setdefault(id(d), []).extend(u for sp, u in zip(spans, units) if sp in keep and u is not None)
        for ds in docs:
            for d in ds:
                if id(d) not in kept_units:
                    continue
                text, out_spans = render(kept_units[id(d)], [Passage(id=d.pid, text=d.text)])
                if d.extractive:
                    d.kept = [(sp.start, sp.end) for sp in out_spans]
                d.text = text


def _removal_items(text: str, units) -> list[tuple[str, list[tuple[int, int]], str | None, list[bool], list]]:
    """What semantic compression removes from, in ``text``. Each item: (source, piece spans in
    source, joiner, fixed pieces, one unit per piece (None for a fixed context piece) in
    :mod:`ragpress.core.extractive` form, for rendering):

    * a prose unit (sentence, list item, chat turn): its words; a list marker or a speaker
      label is fixed;
    * a run of atomic units of one table / JSON document / code block: the units, with the
      context they are rendered with (a header row, the fences) as fixed pieces, so that their
      cost counts; the context goes when no unit of the run stays;
    * a run of CJK sentences: their clauses (CJK has no spaces, and a character is too small a
      piece to remove: what is left is no longer words).
    """
    from dataclasses import replace

    out = []
    run: list = []
    run_kind = ""

    def flush():
        nonlocal run_kind
        if run and run_kind == "cjk":
            pieces = [replace(u, start=u.start + x, end=u.start + y)
                      for u in run for x, y in _clauses(text[u.start:u.end])]
            src, spans = _synthetic([text[u.start:u.end] for u in pieces], "")
            out.append((src, spans, None, [False] * len(pieces), pieces))
        elif run:
            ctx = sorted({c for u in run for c in u.context})
            src, spans = _synthetic([text[x:y] for x, y in ctx] + [text[u.start:u.end] for u in run], "\n")
            out.append((src, spans, "\n", [True] * len(ctx) + [False] * len(run), [None] * len(ctx) + list(run)))
        run.clear()
        run_kind = ""

    for u in units:
        source = text[u.start:u.end]
        kind = "atomic" if u.kind in _ATOMIC else ("cjk" if _is_cjk(source) else "")
        if kind:
            if run and (kind != run_kind or (kind == "atomic" and (u.block or u.context) != (run[-1].block or run[-1].context))):
                flush()
            run.append(u)
            run_kind = kind
            continue
        flush()
        words = [(m.start(), m.end()) for m in _WORD.finditer(source)]
        fixed = [k == 0 and u.kind in ("item", "turn") and bool(_LEAD.match(source[a:b])) for k, (a, b) in enumerate(words)]
        pieces = [replace(u, start=u.start + a, end=u.start + b) for a, b in words]
        out.append((source, words, None, fixed, pieces))
    flush()
    return out


_CLAUSE = re.compile(r"[^\uff0c\u3001\uff1b\uff1a,;:\u3002\uff01\uff1f.!?]+[\uff0c\u3001\uff1b\uff1a,;:\u3002\uff01\uff1f.!?\u300d\u300f\uff09\"')\u201d]*")


def _clauses(sentence: str) -> list[tuple[int, int]]:
    """Clause spans of a CJK sentence (cut after ，、；： and the sentence ends)."""
    out = []
    for m in _CLAUSE.finditer(sentence):
        a, b = m.start(), m.end()
        while a < b and sentence[a].isspace():
            a += 1
        if a < b:
            out.append((a, b))
    return out or [(0, len(sentence))]


def _is_cjk(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(1 for c in letters if _CJK.match(c)) >= 0.5 * len(letters)


def _synthetic(parts: list[str], joiner: str) -> tuple[str, list[tuple[int, int]]]:
    """``parts`` joined, with their spans in the joined string."""
    spans, pos = [], 0
    for p in parts:
        spans.append((pos, pos + len(p)))
        pos += len(p) + len(joiner)
    return joiner.join(parts), spans


def _trim_abstractive(docs: list[_Doc], target: int, counter, max_rounds: int = 64) -> None:
    """Last guard of a summary-only run: while the rendered context is over ``target`` (token
    joins at passage boundaries), drop the last word of the longest summary."""
    for _ in range(max_rounds):
        over = counter.count(_render(docs)[0]) - target
        candidates = [d for d in docs if not d.extractive and d.text.strip()]
        if over <= 0 or not candidates:
            return
        d = max(candidates, key=lambda x: len(x.text))
        words = list(_WORD.finditer(d.text))
        d.text = d.text[: words[-2].end()] if len(words) > 1 else ""


def _fit_words(text: str, max_tokens: int, counter) -> str:
    """``text`` cut to its longest word prefix of at most ``max_tokens`` tokens (binary search)."""
    if counter.count(text) <= max_tokens:
        return text
    words = list(_WORD.finditer(text))
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counter.count(text[: words[mid - 1].end()]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[: words[lo - 1].end()] if lo else ""


def _render(docs: list[_Doc]) -> tuple[str, list[Span]]:
    """Context and provenance: spans (runs of kept source words) only while a passage is still
    extractive; summarized passages carry no spans (their ids are in ``extra['sources']``)."""
    blocks, spans = [], []
    for d in docs:
        if not d.text.strip():
            continue
        blocks.append((f"{d.title}\n" if d.title else "") + d.text)
        if d.extractive:
            for a, b in _merge_runs(d.source, d.kept if d.kept is not None else [(0, len(d.source))]):
                spans.append(Span(passage_id=d.pid, start=a, end=b, text=d.source[a:b]))
    return PASSAGE_SEP.join(blocks), spans


def _merge_runs(source: str, words: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge kept words separated only by whitespace into one span."""
    runs: list[list[int]] = []
    for a, b in sorted(words):
        if runs and not source[runs[-1][1]:a].strip():
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return [(a, b) for a, b in runs]


class TCRASummaryCompressor(TCRACompressor):
    """TCRA summarization compression only (abstractive, query-independent)."""

    name = "tcra-summary"
    fixed_stages = ("summarize",)


class TCRASemanticCompressor(TCRACompressor):
    """TCRA semantic compression only (word removal guided by sentence embeddings)."""

    name = "tcra-semantic"
    fixed_stages = ("semantic",)


__all__ = ["TCRACompressor", "TCRASummaryCompressor", "TCRASemanticCompressor", "TCRAConfig", "summarize",
           "summary_cache_key", "semantic_compress", "protected_words"]
