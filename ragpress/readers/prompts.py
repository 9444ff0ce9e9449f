"""Prompt templates per task, in one place: every reader (local, upstream), the service, the
evaluation harness and the answer-likelihood scorer build their prompts here.

A template is a system message (optional), a user message with ``{context}`` and ``{query}``
slots, and a no-context variant (the "closed book" reference row of the evaluation). ``chat``
says whether the reader applies its chat template; ``stop`` lists strings that end the answer.

Override per reader (``LocalReader(templates={"qa": {"system": "..."}})``) or add a task with
:func:`register_template`.

>>> render_messages(get_template("qa"), "Who founded Acme?", "Acme was founded by Jane Roe.")[-1]["role"]
'user'
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ragpress.core.errors import ConfigError

#: Stands where soft-token context vectors are spliced into a rendered prompt (never sent as text).
SOFT_MARKER = "\x00<ragpress-soft-context>\x00"


class PromptTemplate(BaseModel):
    """How one task is asked of a reader."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    system: str | None = None
    user: str
    no_context_user: str
    chat: bool = True
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 32
    #: worked examples ``(context, query, answer)``, shown as earlier turns of the conversation
    #: (no-context prompts show them without their context)
    examples: tuple[tuple[str, str, str], ...] = ()
    #: where the answer is in the generated text: ``stop``, up to the first stop string; ``answer``,
    #: lead-in lines passed over and lead-ins dropped, then up to the first stop string;
    #: ``sentence``, as ``answer`` and at most its first sentence (see :mod:`ragpress.readers.answers`)
    extract: Literal["stop", "answer", "sentence"] = "stop"
    #: text the reply begins with, written into the prompt after the assistant turn's opening
    #: (readers that render the prompt themselves; an upstream server is sent the messages only)
    answer_prefix: str = ""
    #: until an answer has begun, no run of this many generated tokens may repeat (0: off). Small
    #: readers kept from a line break after their lead-in may write the lead-in again and again
    #: until the bound ("The answer is: The answer is: The"); like ``no_repeat_ngram_size`` of
    #: transformers' ``generate``, but only before the answer (readers that decode locally)
    no_repeat_before_answer: int = 0

    def with_overrides(self, changes: dict[str, Any] | None) -> PromptTemplate:
        if not changes:
            return self
        try:
            return PromptTemplate(**{**self.model_dump(), **changes})
        except Exception as exc:
            raise ConfigError(f"invalid override of prompt template {self.name!r}: {exc}") from exc


_QA_RULE = "Answer the question based on the given passages. Only give me the answer and do not output any other words."

_TEMPLATES: dict[str, PromptTemplate] = {
    # LongBench's short-answer QA prompt (the style the QA literature evaluates readers with)
    "qa": PromptTemplate(
        name="qa",
        system="You are a helpful assistant that answers questions with a short answer.",
        user=f"{_QA_RULE}\n\nThe following are given passages.\n{{context}}\n\n{_QA_RULE}\n\nQuestion: {{query}}\nAnswer:",
        no_context_user="Answer the question. Only give me the answer and do not output any other words.\n\n"
                        "Question: {query}\nAnswer:",
        stop=("\n",),
        max_new_tokens=32,
        # small readers open with a lead-in ("The answer to the question is:") and a line break:
        # line breaks wait until an answer has begun, the answer is taken past the lead-in, and a
        # lead-in written again and again is cut short (benchmarks/results/reader_answers_train.md).
        # Measured, not the default: answer_prefix="The answer is:" (much better on NQ-open, lower
        # on HotpotQA dev)
        extract="answer",
        no_repeat_before_answer=4,
    ),
    # line-level code completion: raw text (no chat template), the next line only
    "code": PromptTemplate(
        name="code",
        system=None,
        user="{context}{query}",
        no_context_user="{query}",
        chat=False,
        stop=("\n",),
        max_new_tokens=64,
    ),
}


def register_template(template: PromptTemplate) -> None:
    """Add (or replace) the template of ``template.name``."""
    _TEMPLATES[template.name] = template


def tasks() -> list[str]:
    return sorted(_TEMPLATES)


def get_template(task: str, overrides: dict[str, dict[str, Any]] | None = None) -> PromptTemplate:
    """The template of ``task``, with a reader's ``overrides[task]`` applied."""
    try:
        base = _TEMPLATES[task]
    except KeyError:
        raise ConfigError(f"unknown prompt task {task!r}; known tasks: {', '.join(tasks())}") from None
    return base.with_overrides((overrides or {}).get(task))


def render_messages(template: PromptTemplate, query: str, context: str | None) -> list[dict[str, str]]:
    """Chat messages for one question. ``context`` None (or empty) uses the no-context prompt;
    :data:`SOFT_MARKER` as the context marks where soft tokens go."""
    messages = [{"role": "system", "content": template.system}] if template.system else []
    for ex_context, ex_query, ex_answer in template.examples:
        messages.append({"role": "user", "content": _user(template, ex_query, ex_context if context else None)})
        messages.append({"role": "assistant", "content": ex_answer})
    messages.append({"role": "user", "content": _user(template, query, context)})
    return messages


def _user(template: PromptTemplate, query: str, context: str | None) -> str:
    return (template.user.format(context=context, query=query) if context
            else template.no_context_user.format(query=query))
