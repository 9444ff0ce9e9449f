"""OpenAI-compatible ``POST /v1/chat/completions``: compress the documents of a chat request, then
let the configured reader answer the rewritten messages.

Where the documents come from (the first that applies):

1. ``documents``: a ragpress field of the request (strings or ``{id, title, text}``). Their
   rendering is put in front of the **last user message** as one block
   ``<documents>\\n...\\n</documents>\\n\\n`` followed by that message's text, unchanged;
2. a ``<documents>...</documents>`` block inside the **last user message**. Inside it, each
   ``<document>...</document>`` element (optional ``id="..."`` / ``title="..."`` attributes) is a
   document; without such elements, blank-line separated paragraphs are. Only the block's
   inside is rewritten: the text before and after it stays byte for byte;
3. otherwise (and unless ``compression.retrieve`` is false) the top-``k`` passages of the
   service's index for the last user message, inserted as in 1.

The question the compressor ranks against is the last user message's text outside the block.
Every other message, and every other field of the rewritten message, passes unchanged; the same
request gives the same bytes (``ragpress.messages_sha256`` is the hash of the canonical JSON of
the messages sent to the reader). ``compression.bypass`` skips compression; when compression
fails or keeps nothing the original documents go through (*fail-open*) and ``ragpress`` says
so (``compressed: false``, ``fail_open_reason``).

With a soft-token method (``compression.method: "arc"``) the documents block holds no text: the
reader splices the encoder's vectors there (``ragpress.soft_tokens`` counts them; the echoed
messages show a reserved marker in their place). Only the reader they were made for takes them:
another model is a 422 ``reader_mismatch``, a text-only (upstream) reader a 422
``soft_tokens_unsupported``.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``, with real statuses.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from ragpress.core.errors import InvalidRequestError, RagpressError
from ragpress.core.types import CompressionRequest, Passage
from ragpress.services.protocol import (
    MAX_PASSAGES,
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatUsage,
    OpenAIErrorResponse,
    RagpressChatInfo,
    to_passages,
)

DOCS_OPEN = "<documents>"
DOCS_CLOSE = "</documents>"
DOC_OPEN = "<document"
DOC_CLOSE = "</document>"
_ATTR_RE = re.compile(r'(?<!\w)(\w+)="([^"]*)"')  # a name starts a word: no rescan from inside one
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")
CHAT_ROUTE = "/v1/chat/completions"

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error", 502: "upstream_error",
                 503: "service_unavailable_error", 504: "timeout_error"}


# ---------------------------------------------------------------------------- errors
def is_openai_route(path: str) -> bool:
    return path.rstrip("/").endswith(CHAT_ROUTE)  # behind a route prefix too


def to_openai_error(body: dict[str, Any], status: int) -> dict[str, Any]:
    """A ragpress error body -> OpenAI's ``{"error": {"message", "type", "param", "code"}}``
    (the upstream's status kept as ``upstream_status`` when there is one)."""
    err = body.get("error") or {}
    param = None
    for d in err.get("details") or []:
        loc = [x for x in d.get("loc", []) if x != "body"]
        if loc:
            param = ".".join(loc)
            break
    out = {"message": err.get("message", ""), "type": _OPENAI_TYPES.get(status, "server_error" if status >= 500
                                                                      else "invalid_request_error"),
           "param": param, "code": err.get("code")}
    if err.get("upstream_status") is not None:
        out["upstream_status"] = err["upstream_status"]
    return {"error": out}


# ---------------------------------------------------------------------------- documents
def parse_block(inner: str, limit: int | None = None) -> list[Passage]:
    """The documents of a ``<documents>`` block's inside (see the module doc); at most ``limit``."""
    found = list(_elements(inner))
    docs: list[Passage] = []
    if found:
        for i, (attributes, body) in enumerate(found):
            attrs = dict(_ATTR_RE.findall(attributes))
            text = body.strip()
            if text:
                docs.append(Passage(id=attrs.get("id") or f"d{i}", title=attrs.get("title") or None, text=text))
                if limit is not None and len(docs) >= limit:
                    break
        return docs
    for i, para in enumerate(p.strip() for p in _PARAGRAPH_RE.split(inner)):
        if para:
            docs.append(Passage(id=f"d{i}", text=para))
            if limit is not None and len(docs) >= limit:
                break
    return docs


def _elements(inner: str):
    """``(attributes, text)`` of each ``<document ...>text</document>`` element of ``inner``, in
    order: what ``<document(\\s[^>]*)?>(.*?)</document>`` (dot-all) finds, in one pass (that regex
    rescans the rest of the text from every unclosed tag: quadratic in a client's message)."""
    pos = 0
    while (at := inner.find(DOC_OPEN, pos)) >= 0:
        pos = at + len(DOC_OPEN)
        if inner.startswith(">", pos):
            attributes, body = "", pos + 1
        elif pos < len(inner) and inner[pos].isspace():
            gt = inner.find(">", pos)
            if gt < 0:
                return  # no later tag closes either
            attributes, body = inner[pos:gt], gt + 1
        else:
            continue  # <documents>, <documentation>: not an element
        end = inner.find(DOC_CLOSE, body)
        if end < 0:
            return  # no later element is closed either
        yield attributes, inner[body:end]
        pos = end + len(DOC_CLOSE)


def find_block(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the inside of the first ``<documents>...</documents>`` block."""
    a = text.find(DOCS_OPEN)
    if a < 0:
        return None
    b = text.find(DOCS_CLOSE, a + len(DOCS_OPEN))
    return (a + len(DOCS_OPEN), b) if b >= 0 else None


def render_block(passages: list[Passage] | None, text: str) -> str:
    """A documents block for insertion (deterministic: the compressor's rendering)."""
    return f"{DOCS_OPEN}\n{text}\n{DOCS_CLOSE}\n\n"


def with_prefix(message: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``message`` with ``prefix`` in front of its content (a text part first for part lists)."""
    content = message.get("content")
    if isinstance(content, list):
        return {**message, "content": [{"type": "text", "text": prefix}, *content]}
    return {**message, "content": prefix + (content or "")}


def flatten_for_local(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as a local model's chat template takes them: ``role`` and string ``content`` (text
    parts joined; a null content empty). Non-text parts are refused: the local reader reads text."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
                raise InvalidRequestError("the local reader reads text only; send text content parts")
            content = "".join(str(p.get("text") or "") for p in content)
        out.append({"role": m["role"], "content": content if isinstance(content, str) else ""})
    return out


def messages_sha256(messages: list[dict[str, Any]]) -> str:
    blob = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- routes
def add_chat_routes(app: FastAPI, ctx) -> None:
    """Register ``POST /v1/chat/completions`` on ``app``; ``ctx`` holds the service and the
    ingress helpers (``await_``, ``handle``, ``retriever``, ``stream_reader``, ...)."""
    from ragpress.core.extractive import render_full
    from ragpress.readers import Answer, Prompt, SoftContext
    from ragpress.readers.base import context_for
    from ragpress.readers.prompts import SOFT_MARKER

    service, metrics = ctx.service, ctx.metrics

    async def rewrite(body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                             RagpressChatInfo, SoftContext | None]:
        """(messages for the reader, the same with uncompressed documents, what was done, the
        soft tokens that stand for the documents when the method makes them)."""
        opts = body.compression
        messages = [m.model_dump(exclude_unset=True) for m in body.messages]
        users = [i for i, m in enumerate(body.messages) if m.role == "user"]
        last = users[-1] if users else None
        text = body.messages[last].text() if last is not None else None
        block = find_block(text) if isinstance(body.messages[last].content if last is not None else None, str) \
            else None
        timings: dict[str, float] = {}
        if last is None and body.documents is not None:
            raise InvalidRequestError("`documents` go in front of the last user message, but there is none")

        if body.documents is not None:
            source, docs = "documents", to_passages(body.documents, prefix="d")
            query = (text or "").strip()
        elif block is not None:
            source, docs = "message", parse_block(text[block[0]:block[1]], limit=MAX_PASSAGES + 1)
            query = (text[:block[0] - len(DOCS_OPEN)] + text[block[1] + len(DOCS_CLOSE):]).strip()
        elif last is not None and (opts is None or opts.retrieve) and service.retriever is not None and \
                (text or "").strip():
            t_r = time.perf_counter()
            k = (opts.k if opts else None) or service.default_top_k
            hits = await ctx.await_(lambda: ctx.retriever().search.remote((text[:8192], k)), "retrieve")
            timings["retrieve"] = 1000 * (time.perf_counter() - t_r)
            source, docs, query = "retrieved", [h.passage for h in hits], text.strip()
        else:
            source, docs, query = "none", [], ""

        def place(rendered: str) -> list[dict[str, Any]]:
            out = list(messages)
            if source == "message":
                s = out[last]["content"]
                out[last] = {**out[last], "content": s[:block[0]] + "\n" + rendered + "\n" + s[block[1]:]}
            else:
                out[last] = with_prefix(out[last], render_block(None, rendered))
            return out

        info = dict(documents_source=source, documents=len(docs), bypass=bool(opts and opts.bypass))
        too_many = len(docs) > MAX_PASSAGES  # a message's block is bounded as `documents` are
        if not docs or too_many:
            info["fail_open_reason"] = (f"the documents block holds more than {MAX_PASSAGES} documents (paragraphs)"
                                        if too_many else "no documents" if source == "none"
                                        else "the documents block is empty")
            return messages, messages, RagpressChatInfo(compressed=False, messages_sha256=messages_sha256(messages),
                                                        timings=timings, **info), None
        full = messages if source == "message" else place(render_full(docs))
        if opts and opts.bypass:
            return full, full, RagpressChatInfo(compressed=False, messages_sha256=messages_sha256(full),
                                                timings=timings, **info), None
        method, handle = ctx.handle(opts.method if opts else None)  # an unknown method is the client's 4xx
        info["method"] = method
        budget = opts.budget.to_core() if opts and opts.budget else None
        t_c = time.perf_counter()
        reason, result = None, None
        try:
            request = CompressionRequest(query=query or "the question", passages=docs, budget=budget)
            out = await ctx.await_(lambda: handle.compress.remote(request), "compress")
            result = out["result"]
            ctx.compress_response(out, t_c, False)  # metrics (the vectors stay arrays)
        except RagpressError as exc:  # fail-open: the originals go through
            reason = f"compression failed: {exc.message}"
        timings["compress"] = 1000 * (time.perf_counter() - t_c)
        soft = None
        if result is not None:
            info.update(tokens_before=result.tokens_before, tokens_after=result.tokens_after)
            soft = context_for(result) if result.soft_tokens is not None else None
            if (soft is None and not result.text.strip()) or result.tokens_after == 0:
                why = result.extra.get("empty_reason")
                reason = "compression kept nothing" + (f" ({why})" if why else "")
        if reason is not None:
            metrics.fail_open.labels("failed" if reason.startswith("compression failed") else "empty").inc()
            return full, full, RagpressChatInfo(compressed=False, fail_open_reason=reason,
                                                messages_sha256=messages_sha256(full), timings=timings, **info), None
        if soft is not None and any(SOFT_MARKER in (m.text() or "") for m in body.messages):
            raise InvalidRequestError("a message holds ragpress's reserved soft-context marker")
        # soft tokens: the documents block holds the marker where the reader splices the vectors
        rewritten = place(SOFT_MARKER if soft is not None else result.text)
        info["ratio"] = result.ratio
        info["soft_tokens"] = soft.n if soft is not None else None
        return rewritten, full, RagpressChatInfo(compressed=True, messages_sha256=messages_sha256(rewritten),
                                                 timings=timings, **info), soft

    @app.post(CHAT_ROUTE, response_model=ChatCompletionResponse, tags=["openai"],
              responses={s: {"model": OpenAIErrorResponse} for s in (400, 413, 422, 502, 503, 504)})
    async def chat_completions(body: ChatCompletionRequest):
        """OpenAI-compatible chat completions over compressed documents (see the module doc of
        :mod:`ragpress.services.openai_api`). ``stream: true`` answers in OpenAI's chunk format
        ending with ``data: [DONE]``."""
        from ragpress.services.api import StageUnavailableError

        if service.reader is None:
            raise StageUnavailableError("this service has no reader configured (reader: null)")
        messages, full, info, soft = await rewrite(body)
        if body.compression and body.compression.return_messages:
            info.messages = messages
        new = body.max_completion_tokens or body.max_tokens
        reader_info = getattr(ctx, "reader_info", None)
        if reader_info is None:  # fixed per deployment: asked once per ingress replica
            reader_info = ctx.reader_info = await ctx.await_(lambda: service.reader.info.remote(), "read")
        new = min(new or reader_info.get("max_new_tokens") or 256, ctx.limits.max_new_tokens)
        local = reader_info["reader"] == "local"
        sent = flatten_for_local(messages) if local else messages
        prompt = Prompt(messages=sent, soft=soft, max_new_tokens=new, stop=body.stop_list(),
                        params=body.sampling_params())
        before_resp = service.reader.prompt_tokens.remote(flatten_for_local(full) if local else full)
        model = body.model or reader_info["model_id"]
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        t_r = time.perf_counter()

        async def before_tokens() -> int | None:
            try:
                return (await ctx.await_(before_resp, "read"))["result"]
            except RagpressError:
                return None

        def usage(a: Answer, before: int | None) -> ChatUsage:
            return ChatUsage(prompt_tokens=a.tokens_in, completion_tokens=a.tokens_out,
                             total_tokens=a.tokens_in + a.tokens_out,
                             prompt_tokens_before_compression=before if info.compressed else a.tokens_in)

        if not body.stream:
            out = await ctx.await_(lambda: service.reader.chat.remote(prompt), "read")
            a: Answer = out["result"]
            info.timings["read"] = 1000 * (time.perf_counter() - t_r)
            metrics.observe_answer(CHAT_ROUTE, a.tokens_out, a.empty)
            resp = ChatCompletionResponse(
                id=cid, created=created, model=model, usage=usage(a, await before_tokens()), ragpress=info,
                choices=[ChatChoice(message=ChatChoiceMessage(content=a.text), finish_reason=a.finish_reason)])
            return JSONResponse(resp.model_dump(mode="json"))

        first, gen = await ctx.stream_reader(prompt, "read", check=True)
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        async def events():
            from ragpress.services.api import DeltaText, _cancel

            yield chunk({"role": "assistant", "content": ""})
            item, delta = first, DeltaText()
            try:
                while item is not None:
                    if "text" in item:
                        if piece := delta.feed(item["text"]):
                            yield chunk({"content": piece})
                    elif "answer" in item:
                        a = item["answer"]
                        if rest := delta.finish(a.text):
                            yield chunk({"content": rest})
                        info.timings["read"] = 1000 * (time.perf_counter() - t_r)
                        metrics.observe_answer(CHAT_ROUTE, a.tokens_out, a.empty)
                        u = usage(a, await before_tokens()).model_dump()
                        yield chunk({}, a.finish_reason, ragpress=info.model_dump(mode="json"))
                        if include_usage:
                            data = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": model, "choices": [], "usage": u}
                            yield f"data: {json.dumps(data)}\n\n".encode()
                        break
                    else:
                        err = to_openai_error(item["error"], item["status"])
                        yield f"data: {json.dumps(err, ensure_ascii=False)}\n\n".encode()
                        break
                    item = await ctx.next_item(gen, "read")
                yield b"data: [DONE]\n\n"
            finally:
                _cancel(gen)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
