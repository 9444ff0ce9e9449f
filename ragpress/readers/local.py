"""The local reader: a causal LM through transformers (offline default SmolLM2-135M-Instruct;
any hub id or local path; ``cuda`` when present).

Prompts go through the model's chat template; generation is greedy with a bounded number of new
tokens, batched with left padding, in a loop of our own so that prefill and decode are timed
apart and a prompt may carry soft-token context: every prompt is embedded (token embeddings,
with :class:`~ragpress.readers.base.SoftContext` vectors spliced where the context goes) and fed
as ``inputs_embeds``, so text-only and soft-token prompts share one batch.

>>> reader = LocalReader()                                                       # doctest: +SKIP
>>> reader.read("Who founded Acme?", "Acme was founded by Jane Roe in 1990.").text  # doctest: +SKIP
'Jane Roe'
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from ragpress.core.errors import InvalidRequestError
from ragpress.core.models import load_causal_lm, resolve_model_id
from ragpress.readers.base import Answer, Context, Prompt, Reader, ReaderConfig
from ragpress.readers.prompts import SOFT_MARKER

#: token ids whose text holds a line break, per tokenizer (``id``; tokenizers live as long as the process)
_LINE_BREAKS: dict[int, list[int]] = {}


class LocalReaderConfig(ReaderConfig):
    """``model``: hub id or local path (None = offline SmolLM2-135M-Instruct); ``device``: None =
    ``cuda`` when present; ``batch_size``: prompts per forward pass."""

    model: str | None = None
    device: str | None = None
    batch_size: int = Field(default=8, ge=1, le=256)


class LocalReader(Reader):
    name = "local"
    config_cls = LocalReaderConfig
    supports_soft = True

    # ------------------------------------------------------------------ model
    def _lm(self) -> tuple[Any, Any]:
        return load_causal_lm(self.config.model, self.config.device)

    @property
    def model_id(self) -> str:
        return resolve_model_id("causal_lm", self.config.model)

    @property
    def device(self):
        return self._lm()[0].device

    @property
    def context_window(self) -> int:
        if self.config.context_window:
            return self.config.context_window
        cfg = self._lm()[0].config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    @property
    def hidden_size(self) -> int:
        return int(self._lm()[0].get_input_embeddings().weight.shape[1])

    def count_tokens(self, text: str) -> int:
        return len(self._lm()[1](text, add_special_tokens=False)["input_ids"])

    def cut_text(self, text: str, tokens: int) -> str:
        tok = self._lm()[1]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if tokens >= len(enc["input_ids"]):
            return text
        return text[: enc["offset_mapping"][tokens][0]] if tokens > 0 else ""

    def _render(self, prompt: Prompt) -> tuple[str, str | None]:
        """The prompt as text, split at the soft-context marker: (before, after) or (text, None)."""
        tok = self._lm()[1]
        if prompt.chat and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(str(m["content"]) for m in prompt.messages)
        text += prompt.answer_prefix
        if SOFT_MARKER in text:
            before, after = text.split(SOFT_MARKER, 1)
            return before, after
        return text, None

    def _ids(self, prompt: Prompt) -> list[list[int]]:
        """Token ids of the prompt's text pieces (one piece, or the two around the soft context)."""
        tok = self._lm()[1]
        before, after = self._render(prompt)
        special = not prompt.chat  # a chat template already holds the special tokens it wants
        pieces = [tok(before, add_special_tokens=special)["input_ids"]]
        if after is not None:
            pieces.append(tok(after, add_special_tokens=False)["input_ids"])
        return pieces

    def prompt_tokens(self, prompt: Prompt) -> int:
        n = sum(len(p) for p in self._ids(prompt))
        return n + (prompt.soft.n if prompt.soft is not None else 0)

    def _embed(self, prompt: Prompt, tail: list[int] | None = None):
        """``[L, hidden]`` input embeddings of a prompt (+ ``tail`` token ids, for scoring)."""
        import torch

        model = self._lm()[0]
        emb = model.get_input_embeddings()
        pieces = self._ids(prompt)
        dev = emb.weight.device
        parts = [emb(torch.tensor(pieces[0], dtype=torch.long, device=dev))]
        if len(pieces) > 1:
            if prompt.soft is None:  # the marker reached the prompt as text: refuse, never leak it
                raise InvalidRequestError("a prompt holds the soft-context marker but no soft tokens")
            parts.append(prompt.soft.embeds.to(device=dev, dtype=emb.weight.dtype))
            parts.append(emb(torch.tensor(pieces[1], dtype=torch.long, device=dev)))
        elif prompt.soft is not None:
            raise InvalidRequestError("soft tokens were given but the prompt has no place for them")
        if tail:
            parts.append(emb(torch.tensor(tail, dtype=torch.long, device=dev)))
        return torch.cat(parts, dim=0)

    @staticmethod
    def _left_pad(seqs: list):
        """Batch ``[L_i, d]`` embeddings with left padding: (embeds, attention mask, position ids)."""
        import torch

        width = max(s.shape[0] for s in seqs)
        d, dev, dtype = seqs[0].shape[1], seqs[0].device, seqs[0].dtype
        embeds = torch.zeros(len(seqs), width, d, device=dev, dtype=dtype)
        mask = torch.zeros(len(seqs), width, device=dev, dtype=torch.long)
        for i, s in enumerate(seqs):
            embeds[i, width - s.shape[0]:] = s
            mask[i, width - s.shape[0]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, positions

    def _held_ids(self) -> list[int]:
        """Tokens held back until an answer has begun: the end of the text and line breaks (a
        line break after a lead-in ends generation at the first line break for want of an
        answer; held back, the model writes its answer on the lead-in's line)."""
        tok = self._lm()[1]
        if id(tok) not in _LINE_BREAKS:  # once per tokenizer (a second or two)
            _LINE_BREAKS[id(tok)] = [i for i in range(len(tok)) if "\n" in tok.decode([i])]
        return sorted(set(_LINE_BREAKS[id(tok)]) | self._eos_ids())

    def _eos_ids(self) -> set[int]:
        model, tok = self._lm()
        ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        gen = getattr(model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids

    # ------------------------------------------------------------------ generation
    def generate_batch(self, prompts: Sequence[Prompt]) -> list[Answer]:
        prompts = list(prompts)
        out: list[Answer | None] = [None] * len(prompts)
        # similar lengths together: less padding
        order = sorted(range(len(prompts)), key=lambda i: self.prompt_tokens(prompts[i]))
        bs = self.config.batch_size
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            gen = self._generate([prompts[i] for i in idx])
            try:
                while True:
                    next(gen)
            except StopIteration as stop:
                for i, a in zip(idx, stop.value):
                    out[i] = a
        return out  # type: ignore[return-value]

    def stream(self, prompt: Prompt) -> Iterator[str | Answer]:
        """Pieces of the answer as the model writes it (what may still change held back: a stop
        string forming, a possible lead-in, see :meth:`Prompt.settled`), then the :class:`Answer`."""
        gen = self._generate([prompt])
        sent = ""
        try:
            while True:
                safe = prompt.settled(next(gen)[0])
                if len(safe) > len(sent) and safe.startswith(sent):
                    yield safe[len(sent):]
                    sent = safe
        except StopIteration as stop:
            answer = stop.value[0]
            if answer.text.startswith(sent) and len(answer.text) > len(sent):
                yield answer.text[len(sent):]
            yield answer

    def _generate(self, prompts: list[Prompt]):
        """Greedy decoding of one batch. Yields, after each step, each prompt's text so far
        (the answer not yet taken from it); returns the answers. After every token,
        :meth:`Prompt.progress` says whether the prompt's answer has ended."""
        import torch

        model, tok = self._lm()
        eos = self._eos_ids()
        with torch.inference_mode():
            seqs = [self._embed(p) for p in prompts]
            n_in = [s.shape[0] for s in seqs]
            embeds, mask, positions = self._left_pad(seqs)
            t0 = time.perf_counter()
            out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1)
            hold = [p.extract != "stop" for p in prompts]  # no answer has begun yet
            held = self._held_ids() if any(hold) else []
            tokens: list[list[int]] = [[] for _ in prompts]
            nxt = _pick(out.logits[:, -1], hold, held, _repeats(prompts, hold, tokens))
            _sync(model)
            prefill_s = time.perf_counter() - t0
            past = _cache_of(out)
            cache_kw = _cache_kwarg(model)
            b = len(prompts)
            texts = [""] * b
            done = [False] * b
            reasons = ["length"] * b
            limit = [p.max_new_tokens for p in prompts]
            t1 = time.perf_counter()
            for _step in range(max(limit)):
                for i in range(b):
                    if done[i]:
                        continue
                    t = int(nxt[i])
                    if t in eos:
                        done[i], reasons[i] = True, "stop"
                        continue
                    tokens[i].append(t)
                    texts[i] = tok.decode(tokens[i], skip_special_tokens=True)
                    begun, stop, by_bound = prompts[i].progress(texts[i], len(tokens[i]))
                    hold[i] = hold[i] and not begun
                    if stop:
                        done[i], reasons[i] = True, "length" if by_bound else "stop"
                yield list(texts)
                if all(done):
                    break
                mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
                positions = positions[:, -1:] + 1
                out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions,
                            use_cache=True, **{cache_kw: past})
                past = _cache_of(out)
                nxt = _pick(out.logits[:, -1], hold, held, _repeats(prompts, hold, tokens))
            _sync(model)
            decode_s = time.perf_counter() - t1
        total_in = sum(n_in)
        answers = []
        for i, p in enumerate(prompts):
            answers.append(Answer(
                text=p.answer_in(texts[i])[0], reader=self.name, model_id=self.model_id, tokens_in=n_in[i],
                tokens_out=len(tokens[i]), prefill_ms=1000 * prefill_s * n_in[i] / total_in,
                decode_ms=1000 * decode_s / b, finish_reason=reasons[i],
                context_tokens_cut=p.context_tokens_cut, batch_size=b))
        return answers

    # ------------------------------------------------------------------ scoring
    def answer_bits(self, queries: Sequence[str], contexts: Sequence[Context], answers: Sequence[Sequence[str]],
                    task: str = "qa") -> list[float | None]:
        """Bits per token of the best gold alias after the same prompt the reader answers from
        (teacher-forced; the lower, the more the context helps). None for a record without
        aliases."""
        import torch

        prompts = self.prepare(queries, contexts, task)
        model, tok = self._lm()
        jobs = []  # (record, prompt, alias ids)
        for r, (p, aliases) in enumerate(zip(prompts, answers)):
            space = " " if p.answer_prefix and not p.answer_prefix[-1].isspace() else ""  # "The answer is: X"
            for a in dict.fromkeys(a.strip() for a in aliases if a and a.strip()):
                ids = tok(space + a, add_special_tokens=False)["input_ids"]
                if ids:
                    jobs.append((r, p, ids))
        best: list[float | None] = [None] * len(prompts)
        bs = self.config.batch_size
        jobs.sort(key=lambda j: self.prompt_tokens(j[1]) + len(j[2]))
        with torch.inference_mode():
            for start in range(0, len(jobs), bs):
                chunk = jobs[start:start + bs]
                embeds, mask, positions = self._left_pad([self._embed(p, ids) for _, p, ids in chunk])
                k = max(len(ids) for _, _, ids in chunk)
                logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                               logits_to_keep=k + 1).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                for row, (r, _, ids) in enumerate(chunk):
                    n = len(ids)
                    # logits at position t predict token t+1: the answer's n tokens are the last n
                    pred = logp[row, -(n + 1):-1]
                    nll = -pred.gather(-1, torch.tensor(ids, device=pred.device)[:, None]).sum().item()
                    bits = nll / n / math.log(2)
                    best[r] = bits if best[r] is None else min(best[r], bits)
        return best

    def health(self) -> dict[str, Any]:
        model = self._lm()[0]
        return {**super().health(), "device": str(model.device), "dtype": str(model.dtype),
                "context_window": self.context_window}


def _pick(logits, hold: list[bool], held: list[int], repeats: dict[int, set[int]] | None = None):
    """Greedy next tokens; rows in ``hold`` may not pick a ``held`` token, row ``i`` no token in
    ``repeats[i]``."""
    if (held and any(hold)) or repeats:
        import torch

        logits = logits.clone()
        if held and any(hold):
            rows = torch.tensor([i for i, h in enumerate(hold) if h], device=logits.device)
            cols = torch.tensor(held, device=logits.device)
            logits[rows[:, None], cols[None, :]] = float("-inf")
        for i, banned in (repeats or {}).items():
            logits[i, sorted(banned)] = float("-inf")
    return logits.argmax(-1)


def _repeats(prompts: list[Prompt], hold: list[bool], tokens: list[list[int]]) -> dict[int, set[int]]:
    """Per row still before its answer (``hold``) with ``no_repeat_before_answer`` = n: the tokens
    that would repeat a run of n generated tokens."""
    out: dict[int, set[int]] = {}
    for i, (p, seq) in enumerate(zip(prompts, tokens)):
        n = p.no_repeat_before_answer
        if not hold[i] or n <= 0 or len(seq) < n:
            continue
        tail = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        banned = {seq[k + n - 1] for k in range(len(seq) - n + 1) if tuple(seq[k:k + n - 1]) == tail}
        if banned:
            out[i] = banned
    return out


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x names the KV cache ``cache``; older releases ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _sync(model) -> None:
    if model.device.type == "cuda":
        import torch

        torch.cuda.synchronize(model.device)
