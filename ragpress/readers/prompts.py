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

from typing import Any

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
    user = (template.user.format(context=context, query=query) if context
            else template.no_context_user.format(query=query))
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": user})
    return messages
