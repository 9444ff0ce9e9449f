"""The upstream reader: any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp
server, a hosted API, or another ragpress).

``base_url`` is the API root (``http://host:8000/v1``); the key comes from the environment
variable named by ``api_key_env`` (none sent when it is unset). Requests stream, so the time to
the first token is reported as ``prefill_ms`` (network included) and the rest as ``decode_ms``.
Connection errors, 429 and 5xx are retried with exponential backoff before the first byte;
every call is bounded by ``timeout_s``; at most ``concurrency`` requests are in flight. A
failing upstream is a typed :class:`~ragpress.core.errors.UpstreamError` (HTTP 502, with the
upstream's status) or :class:`~ragpress.core.errors.UpstreamTimeoutError` (504), never a hang.

>>> reader = OpenAIReader(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
>>> reader.read("Who founded Acme?", "Acme was founded by Jane Roe.").text                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from ragpress.core.errors import UpstreamError, UpstreamTimeoutError
from ragpress.core.tokens import get_token_counter
from ragpress.readers.base import Answer, Prompt, Reader, ReaderConfig

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIReaderConfig(ReaderConfig):
    base_url: str = Field(description="API root, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the model name the server knows")
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=60.0, gt=0, description="bound on one whole call")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0)
    concurrency: int = Field(default=8, ge=1, le=256)
    tokenizer: str = Field(default="qwen", description="counts prompt tokens to fit the window")
    context_window: int | None = Field(default=32768, ge=64)
    temperature: float = Field(default=0.0, ge=0, le=2)
    extra_body: dict[str, Any] = Field(default_factory=dict, description="sent with every request")


class OpenAIReader(Reader):
    name = "openai"
    config_cls = OpenAIReaderConfig

    def __init__(self, config=None, **overrides: Any):
        super().__init__(config, **overrides)
        self._slots = threading.BoundedSemaphore(self.config.concurrency)
        self._client = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.config.model

    @property
    def context_window(self) -> int:
        return int(self.config.context_window or 32768)

    @property
    def counter(self):
        return get_token_counter(self.config.tokenizer)

    def count_tokens(self, text: str) -> int:
        return self.counter.count(text)

    def prompt_tokens(self, prompt: Prompt) -> int:
        # content tokens + the chat format's few tokens per message
        return sum(self.count_tokens(str(m.get("content") or "")) + 4 for m in prompt.messages) + 2

    def cut_text(self, text: str, tokens: int) -> str:
        offsets = self.counter.char_offsets(text)
        return text if tokens >= len(offsets) else text[: offsets[tokens][0]] if tokens > 0 else ""

    def client(self):
        import httpx

        with self._lock:
            if self._client is None:
                c = self.config
                self._client = httpx.Client(
                    base_url=c.base_url.rstrip("/"),
                    timeout=httpx.Timeout(c.timeout_s, connect=c.connect_timeout_s),
                    limits=httpx.Limits(max_connections=c.concurrency))
        return self._client

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.config.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        if prompt.soft is not None:
            self.check_soft(prompt.soft)  # raises: an upstream takes text only
        body = {"model": self.config.model, "messages": prompt.messages, "max_tokens": prompt.max_new_tokens,
                "temperature": self.config.temperature, "stream": True,
                "stream_options": {"include_usage": True}, **self.config.extra_body, **prompt.params}
        if prompt.stop and prompt.extract == "stop":  # else a line break after a lead-in would end the
            body["stop"] = list(prompt.stop)         # reply; the answer is taken here (Prompt.answer_in)
        return body

    # ------------------------------------------------------------------ generation
    def generate_batch(self, prompts: Sequence[Prompt]) -> list[Answer]:
        prompts = list(prompts)
        if len(prompts) <= 1:
            return [self._consume(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(prompts))) as pool:
            return list(pool.map(self._consume, prompts))

    def _consume(self, prompt: Prompt) -> Answer:
        for item in self.stream(prompt):
            if isinstance(item, Answer):
                return item
        raise UpstreamError("the upstream stream ended without an answer")  # pragma: no cover

    def stream(self, prompt: Prompt) -> Iterator[str | Answer]:
        """Text pieces as the upstream sends them, then the :class:`Answer`."""
        import httpx

        body = self._body(prompt)
        url = "/chat/completions"
        with self._slots:
            t0 = time.perf_counter()
            deadline = t0 + self.config.timeout_s
            for attempt in range(self.config.max_retries + 1):
                try:
                    with self.client().stream("POST", url, json=body, headers=self._headers()) as resp:
                        if resp.status_code >= 400:
                            detail = resp.read().decode("utf-8", "replace")[:500]
                            if resp.status_code in _RETRY_STATUS and attempt < self.config.max_retries:
                                self._backoff(attempt, deadline, resp.headers.get("retry-after"))
                                continue
                            raise UpstreamError(
                                f"upstream {self.config.base_url} answered {resp.status_code}: {detail}",
                                upstream_status=resp.status_code)
                        yield from self._read_events(resp, prompt, t0, deadline)
                        return
                except httpx.TimeoutException as exc:
                    raise UpstreamTimeoutError(
                        f"upstream {self.config.base_url} did not answer within {self.config.timeout_s:g} s "
                        f"({type(exc).__name__})") from None
                except (httpx.TransportError, httpx.DecodingError) as exc:
                    if attempt < self.config.max_retries and time.perf_counter() < deadline:
                        self._backoff(attempt, deadline)
                        continue
                    raise UpstreamError(f"upstream {self.config.base_url} is unreachable or broke off "
                                        f"({type(exc).__name__}: {exc})") from None

    def _backoff(self, attempt: int, deadline: float, retry_after: str | None = None) -> None:
        wait = self.config.backoff_s * (2 ** attempt) * (1 + 0.25 * random.random())
        if retry_after:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:
                pass
        left = deadline - time.perf_counter()
        if wait >= left:
            raise UpstreamTimeoutError(f"upstream {self.config.base_url} kept failing until the "
                                       f"{self.config.timeout_s:g} s bound")
        time.sleep(wait)

    def _read_events(self, resp, prompt: Prompt, t0: float, deadline: float) -> Iterator[str | Answer]:
        text, first, usage, finish = "", None, None, None
        sent, sent_text = 0, ""
        for line in resp.iter_lines():
            if time.perf_counter() > deadline:
                raise UpstreamTimeoutError(f"upstream {self.config.base_url} streamed past the "
                                           f"{self.config.timeout_s:g} s bound")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                raise UpstreamError(f"upstream {self.config.base_url} sent a malformed event: {data[:200]}") from None
            if "error" in event:
                raise UpstreamError(f"upstream error: {json.dumps(event['error'])[:500]}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and first is None:
                    first = time.perf_counter()
                text += piece
                finish = choice.get("finish_reason") or finish
            safe = prompt.settled(text)
            if len(safe) > sent and safe.startswith(sent_text):
                yield safe[sent:]
                sent, sent_text = len(safe), safe
            if prompt.answer_in(text)[1]:  # the answer has ended: stop reading
                break
        t_end = time.perf_counter()
        final, stopped, _ = prompt.answer_in(text)
        if len(final) > sent and final.startswith(sent_text):
            yield final[sent:]
        first = first or t_end
        tokens_in = (usage or {}).get("prompt_tokens") or self.prompt_tokens(prompt)
        tokens_out = (usage or {}).get("completion_tokens") or self.count_tokens(text)
        yield Answer(text=final, reader=self.name, model_id=self.model_id, tokens_in=int(tokens_in),
                     tokens_out=int(tokens_out), prefill_ms=1000 * (first - t0), decode_ms=1000 * (t_end - first),
                     finish_reason="length" if finish == "length" and not stopped else "stop",
                     context_tokens_cut=prompt.context_tokens_cut)

    def health(self) -> dict[str, Any]:
        return {**super().health(), "base_url": self.config.base_url}
