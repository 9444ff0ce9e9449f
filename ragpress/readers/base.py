"""The reader contract: a small class with a name, a pydantic config and
``read_batch(queries, contexts) -> answers``; each :class:`Answer` carries the tokens in, the
prefill and decode time and the model id.

A context is text, ``None`` (no context: the closed-book reference) or a :class:`SoftContext`
(soft-token vectors, e.g. from ARC-Encoder, spliced into the prompt through ``inputs_embeds``).
Every reader builds its prompts the same way (:meth:`Reader.prepare`, templates from
:mod:`ragpress.readers.prompts`) and fits them to its window: a context that does not fit is cut
from its end and the cut is reported (``Answer.context_tokens_cut``), or, with ``truncate=False``,
a typed :class:`~ragpress.core.errors.ContextTooLongError` (HTTP 422) is raised.

Subclasses implement :meth:`Reader.generate_batch` (and may override :meth:`Reader.stream`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ragpress.core.errors import (
    ConfigError,
    ContextTooLongError,
    EmptyQueryError,
    InvalidRequestError,
    ReaderMismatchError,
    SoftTokensUnsupportedError,
)
from ragpress.readers.answers import answer_begun, find_answer, settled
from ragpress.readers.prompts import SOFT_MARKER, PromptTemplate, get_template, render_messages


class SoftContext(BaseModel):
    """Context as continuous vectors (``embeds``: a float tensor ``[n, hidden]``) made for the
    reader whose model id is ``reader``; spliced into the prompt where the context goes."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embeds: Any
    reader: str

    @property
    def n(self) -> int:
        return int(self.embeds.shape[0])


Context = str | SoftContext | None


def context_for(result: Any) -> Context:
    """What a reader reads from a :class:`~ragpress.core.types.CompressionResult`: its soft
    tokens (made for ``result.extra["soft_reader"]``) when it carries them, else its text."""
    if getattr(result, "soft_tokens", None) is not None:
        reader = (result.extra or {}).get("soft_reader")
        if not reader:
            raise InvalidRequestError("soft tokens without the reader they were made for (extra['soft_reader'])")
        return SoftContext(embeds=result.soft_tokens, reader=reader)
    return result.text


class Prompt(BaseModel):
    """One generation job: chat ``messages`` (or raw text when ``chat`` is False: the contents
    are joined), optional soft tokens spliced at :data:`SOFT_MARKER`, stop strings, how the answer
    is taken from the generated text (``extract``, see
    :attr:`~ragpress.readers.prompts.PromptTemplate.extract`), the bound on new tokens, and
    pass-through sampling ``params`` for upstream servers (the local reader is greedy and
    ignores them)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    messages: list[dict[str, Any]]
    soft: SoftContext | None = None
    chat: bool = True
    stop: tuple[str, ...] = ()
    extract: Literal["stop", "answer", "sentence"] = "stop"
    answer_prefix: str = ""
    no_repeat_before_answer: int = 0
    max_new_tokens: int = 32
    params: dict[str, Any] = Field(default_factory=dict)
    context_tokens_cut: int = 0

    @classmethod
    def of(cls, tmpl: PromptTemplate, messages: list[dict[str, Any]], max_new_tokens: int, **fields: Any) -> Prompt:
        """A prompt of ``messages`` that generates and takes its answer as ``tmpl`` says."""
        return cls(messages=messages, chat=tmpl.chat, stop=tmpl.stop, extract=tmpl.extract,
                   answer_prefix=tmpl.answer_prefix, no_repeat_before_answer=tmpl.no_repeat_before_answer,
                   max_new_tokens=max_new_tokens, **fields)

    def answer_in(self, text: str) -> tuple[str, bool, bool]:
        """(the answer in the generated ``text`` so far, whether it has ended, whether it has
        begun: lead-ins, and text that may still become one, are not an answer)."""
        if self.extract == "stop":
            cut, ended = apply_stop(text, self.stop)
            return cut.strip(), ended, True
        answer, ended = find_answer(text, self.stop, self.extract == "sentence")
        return answer, ended, ended or answer_begun(answer)

    def settled(self, text: str) -> str:
        """What a stream may send of the answer in ``text``: a prefix of the final answer."""
        if self.extract == "stop":
            safe = len(text)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its end
                safe = len(text.rstrip("\ufffd"))
            for s in self.stop:  # a stop string may be forming at the end: hold it back
                for k in range(min(len(s), safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
            return apply_stop(text[:safe], self.stop)[0]
        return settled(text.rstrip("\ufffd"), self.stop, self.extract == "sentence")

    def progress(self, text: str, tokens: int) -> tuple[bool, bool, bool]:
        """After ``tokens`` new tokens that read ``text``: (whether the answer has begun, whether
        generation stops, whether it stops for the bound on new tokens)."""
        _, ended, begun = self.answer_in(text)
        if ended:
            return begun, True, False
        return begun, tokens >= self.max_new_tokens, True


class Answer(BaseModel):
    """What a reader returns for one prompt. Times are milliseconds; in a batch, the prefill is
    shared out by prompt tokens and the decode equally among the batch's prompts."""

    model_config = ConfigDict(extra="forbid")

    text: str
    reader: str
    model_id: str
    tokens_in: int = Field(description="prompt tokens (soft vectors count one each)")
    tokens_out: int
    prefill_ms: float
    decode_ms: float
    finish_reason: Literal["stop", "length"]
    context_tokens_cut: int = Field(default=0, description="context tokens cut to fit the window")
    batch_size: int = 1

    @property
    def empty(self) -> bool:
        return not self.text.strip()


class ReaderConfig(BaseModel):
    """Settings every reader has. ``max_new_tokens`` None = the task template's bound;
    ``context_window`` None = the model's; ``truncate`` False turns a cut into a 422;
    ``templates`` overrides fields of the prompt templates per task, e.g.
    ``{"qa": {"system": "Be brief."}}``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    max_new_tokens: int | None = Field(default=None, ge=1, le=4096)
    context_window: int | None = Field(default=None, ge=64)
    truncate: bool = True
    templates: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Reader(ABC):
    """Base class of all readers. ``supports_soft``: takes :class:`SoftContext` input."""

    name: ClassVar[str]
    config_cls: ClassVar[type[ReaderConfig]] = ReaderConfig
    supports_soft: ClassVar[bool] = False

    def __init__(self, config: ReaderConfig | dict[str, Any] | None = None, **overrides: Any):
        if config is None or isinstance(config, dict):
            try:
                config = self.config_cls(**{**(config or {}), **overrides})
            except ValidationError as exc:
                raise ConfigError(f"invalid config for reader {self.name!r}: {exc}") from exc
        elif overrides:
            config = config.model_copy(update=overrides)
        self.config = config
        for task in self.config.templates:  # fail on a bad override now, not on the first request
            get_template(task, self.config.templates)

    # ------------------------------------------------------------------ identity
    @property
    @abstractmethod
    def model_id(self) -> str:
        """Id of the model that writes the answers."""

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.config.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(f"{self.name}:{blob}".encode()).hexdigest()[:12]

    @property
    @abstractmethod
    def context_window(self) -> int:
        """Most tokens a prompt plus its answer may take."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with this reader's tokenizer."""

    @abstractmethod
    def prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens of the rendered prompt (soft vectors count one each)."""

    @abstractmethod
    def cut_text(self, text: str, tokens: int) -> str:
        """The first ``tokens`` tokens of ``text`` (a prefix of it)."""

    def template(self, task: str) -> PromptTemplate:
        return get_template(task, self.config.templates)

    # ------------------------------------------------------------------ prompts
    def prepare(self, queries: Sequence[str], contexts: Sequence[Context], task: str = "qa",
                truncate: bool | None = None, max_new_tokens: int | None = None) -> list[Prompt]:
        """Prompts for ``queries`` over ``contexts``, fitted to the window (see the module doc)."""
        if len(queries) != len(contexts):
            raise InvalidRequestError(f"{len(queries)} queries but {len(contexts)} contexts: give one context each")
        tmpl = self.template(task)
        truncate = self.config.truncate if truncate is None else truncate
        new = max_new_tokens or self.config.max_new_tokens or tmpl.max_new_tokens
        return [self._prepare_one(tmpl, q, c, truncate, new) for q, c in zip(queries, contexts)]

    def _prepare_one(self, tmpl: PromptTemplate, query: str, context: Context, truncate: bool, new: int) -> Prompt:
        if not query or not query.strip():
            raise EmptyQueryError("give a non-empty question")
        if isinstance(context, SoftContext):
            self.check_soft(context)
        has_context = context is not None and (isinstance(context, SoftContext) or bool(context.strip()))
        if not has_context:
            prompt = Prompt.of(tmpl, render_messages(tmpl, query, None), new)
            self._fit(prompt)
            return prompt
        shell = Prompt.of(tmpl, render_messages(tmpl, query, SOFT_MARKER), new)
        base = self.prompt_tokens(shell)  # the prompt without its context
        room = self.context_window - base - new
        if isinstance(context, SoftContext):
            n = context.n
            cut = max(0, n - max(room, 0))
            if cut and not truncate:
                raise self._too_long(base + n + new)
            soft = context if not cut else SoftContext(embeds=context.embeds[: n - cut], reader=context.reader)
            return shell.model_copy(update={"soft": soft, "context_tokens_cut": cut})
        n = self.count_tokens(context)
        keep = min(n, max(room, 0))
        if keep < n and not truncate:
            raise self._too_long(base + n + new)
        while True:
            text = context if keep >= n else self.cut_text(context, keep)
            messages = render_messages(tmpl, query, text if text.strip() else None)
            prompt = Prompt.of(tmpl, messages, new, context_tokens_cut=n - keep)
            over = self.prompt_tokens(prompt) + new - self.context_window
            if over <= 0 or keep == 0:  # tokens can merge across the context's edges: re-check once cut
                break
            if not truncate:
                raise self._too_long(over + self.context_window)
            keep = max(0, keep - over)
        if keep == 0:
            self._fit(prompt)
        return prompt

    def _fit(self, prompt: Prompt) -> None:
        """A prompt without context is never cut: it fits or is a 422."""
        need = self.prompt_tokens(prompt) + prompt.max_new_tokens
        if need > self.context_window:
            raise self._too_long(need)

    def _too_long(self, need: int) -> ContextTooLongError:
        return ContextTooLongError(
            f"the prompt needs {need} tokens with its answer but reader {self.model_id!r} holds "
            f"{self.context_window}; compress harder, send less context, or allow the cut (truncate=true)")

    def check_soft(self, context: SoftContext) -> None:
        """Soft tokens are only meaningful in the reader they were trained for."""
        if not self.supports_soft:
            raise SoftTokensUnsupportedError(
                f"reader {self.name!r} takes text only; soft-token context needs the local reader "
                f"with model {context.reader!r}")
        if context.reader != self.model_id:
            raise ReaderMismatchError(
                f"these soft tokens were made for reader {context.reader!r}, but this reader is "
                f"{self.model_id!r}; serve the matching reader or use a text compressor")

    # ------------------------------------------------------------------ reading
    def read(self, query: str, context: Context, task: str = "qa", **kw: Any) -> Answer:
        """Answer one question (see :meth:`read_batch`)."""
        return self.read_batch([query], [context], task, **kw)[0]

    def read_batch(self, queries: Sequence[str], contexts: Sequence[Context], task: str = "qa",
                   truncate: bool | None = None, max_new_tokens: int | None = None) -> list[Answer]:
        """Answer each query from its context (text, :class:`SoftContext` or None)."""
        return self.generate_batch(self.prepare(queries, contexts, task, truncate, max_new_tokens))

    @abstractmethod
    def generate_batch(self, prompts: Sequence[Prompt]) -> list[Answer]:
        """Generate one answer per prompt (greedy unless the server is told otherwise)."""

    def stream(self, prompt: Prompt) -> Iterator[str | Answer]:
        """Text pieces as they are generated, then the :class:`Answer`. The default generates
        the whole answer first."""
        answer = self.generate_batch([prompt])[0]
        if answer.text:
            yield answer.text
        yield answer

    async def aread_batch(self, queries: Sequence[str], contexts: Sequence[Context], task: str = "qa",
                          **kw: Any) -> list[Answer]:
        return await asyncio.to_thread(self.read_batch, queries, contexts, task, **kw)

    async def agenerate_batch(self, prompts: Sequence[Prompt]) -> list[Answer]:
        return await asyncio.to_thread(self.generate_batch, prompts)

    def answer_bits(self, queries: Sequence[str], contexts: Sequence[Context], answers: Sequence[Sequence[str]],
                    task: str = "qa") -> list[float | None]:
        """Bits per answer token of the gold answer (best alias), teacher-forced after the same
        prompt. Readers that cannot score (remote servers) raise ``NotImplementedError``."""
        raise NotImplementedError(f"reader {self.name!r} cannot score answer likelihoods")

    def health(self) -> dict[str, Any]:
        return {"reader": self.name, "model_id": self.model_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string after its leading whitespace, and whether one was met."""
    lead = len(text) - len(text.lstrip())
    at = min((i for s in stop if s and (i := text.find(s, lead)) >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)
