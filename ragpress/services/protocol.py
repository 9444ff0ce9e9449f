"""REST schemas (pydantic) of the ragpress service: requests, responses and typed errors.

The schema carries every bound the service enforces (lengths, budget ranges), so the OpenAPI
spec documents them and a bad request is a 4xx with a message before any stage runs. Budgets
are validated here with plain ``ValueError`` (pydantic turns them into 422 entries) and only
then converted to the core :class:`~ragpress.core.types.Budget`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Protect

MAX_PASSAGES = 256
MAX_TEXT_CHARS = 200_000
MAX_QUERY_CHARS = 8_192
MAX_K = 100


def _check_utf8(value: str | None) -> str | None:
    """Reject lone surrogates (valid in JSON escapes, not encodable as UTF-8)."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("text must be valid Unicode (it holds a lone surrogate escape)") from exc
    return value


def _check_passages(v):
    """Plain-string passages: non-empty, valid Unicode, bounded."""
    for p in v or []:
        if isinstance(p, str):
            if not p:
                raise ValueError("passages must be non-empty strings")
            _check_utf8(p)
            if len(p) > MAX_TEXT_CHARS:
                raise ValueError(f"a passage is longer than {MAX_TEXT_CHARS} characters")
    return v


def to_passages(items, prefix: str = "p") -> list[Passage]:
    """Request passages (strings or ``PassageIn``) as library passages; a missing id becomes
    ``<prefix><position>``."""
    out = []
    for i, p in enumerate(items or []):
        if isinstance(p, str):
            out.append(Passage(id=f"{prefix}{i}", text=p))
        else:
            out.append(Passage(id=p.id if p.id is not None else f"{prefix}{i}", title=p.title, text=p.text))
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetIn(_Strict):
    """Exactly one of ``ratio`` (share of the context's tokens to keep), ``tokens`` (token
    target) or ``threshold`` (relevance score a unit must reach)."""

    ratio: float | None = Field(default=None, gt=0.0, le=1.0, description="keep this share of tokens, in (0, 1]")
    tokens: int | None = Field(default=None, ge=1, le=1_000_000, description="keep at most this many tokens")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="keep units scoring at least this")
    floor: float | None = Field(default=None, gt=0.0, le=1.0,
                                description="with a threshold: keep at least this share of tokens")
    ceiling: float | None = Field(default=None, gt=0.0, le=1.0,
                                  description="with a threshold: keep at most this share of tokens")
    skip_under: int | None = Field(default=None, ge=1, le=1_000_000,
                                   description="a context of fewer tokens is returned whole")

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetIn:
        given = [m for m in ("ratio", "tokens", "threshold") if getattr(self, m) is not None]
        if len(given) != 1:
            raise ValueError(f"a budget needs exactly one of ratio, tokens or threshold; got {given or 'none'}")
        if (self.floor is not None or self.ceiling is not None) and self.threshold is None:
            raise ValueError("floor and ceiling go with a threshold budget")
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) must not exceed ceiling ({self.ceiling})")
        return self

    def to_core(self) -> Budget:
        return Budget(**self.model_dump(exclude_none=True))


class PassageIn(_Strict):
    """A passage: ``id`` defaults to ``p<position>``; ``title`` is kept as a header."""

    id: str | None = Field(default=None, max_length=256)
    title: str | None = Field(default=None, max_length=1024)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)

    _utf8 = field_validator("id", "title", "text")(_check_utf8)


class CompressRequestBody(_Strict):
    """``POST /v1/compress``: a query (or instruction) and passages (or one code file)."""

    query: str = Field(default="", max_length=MAX_QUERY_CHARS, description="the question")
    instruction: str | None = Field(default=None, max_length=MAX_QUERY_CHARS,
                                    description="an instruction, used as the query when no query is given (code)")
    passages: list[PassageIn | str] | None = Field(default=None, min_length=1, max_length=MAX_PASSAGES)
    code: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS,
                             description="a source file to compress (instead of passages)")
    language: str | None = Field(default=None, max_length=32, description="language of `code`, e.g. python")
    budget: BudgetIn | None = Field(default=None, description="omit for the method's default budget")
    method: str | None = Field(default=None, max_length=64, description="compression method; GET /v1/methods")
    protect: Protect | None = Field(default=None, description="spans / patterns (numbers, ids, identifiers, or RE2 "
                                    "regexes: linear time, no lookaround or backreferences) a kept unit keeps "
                                    "verbatim, and units always kept")
    soft_tokens: Literal["base64", "shape"] = Field(
        default="base64", description="a soft-token method (arc): `base64` returns the vectors in "
        "`soft_tokens.data`; `shape` returns their shape, reader and spans only (no payload)")

    _utf8 = field_validator("query", "instruction", "code", "language", "method")(_check_utf8)

    _utf8_passages = field_validator("passages")(_check_passages)

    @model_validator(mode="after")
    def _one_input(self) -> CompressRequestBody:
        if (self.passages is None) == (self.code is None):
            raise ValueError("give exactly one of `passages` (a list) or `code` (a string)")
        return self

    def to_core(self) -> CompressionRequest:
        """The library request (budget None: the method's default)."""
        query = self.query or self.instruction or ""
        if self.code is not None:
            meta = {"language": self.language} if self.language else {}
            passages = [Passage(id="code", text=self.code, metadata=meta)]
        else:
            passages = to_passages(self.passages)
        return CompressionRequest(query=query, passages=passages,
                                  budget=self.budget.to_core() if self.budget else None, protect=self.protect)


class RetrieveRequestBody(_Strict):
    """``POST /v1/retrieve``: top-``k`` passages from the service's index."""

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=5, ge=1, le=MAX_K)

    _utf8 = field_validator("query")(_check_utf8)


class AnswerRequestBody(_Strict):
    """``POST /v1/answer``: (retrieve ->) compress -> read. With ``passages`` the given passages
    are compressed (no retrieval); without, the top-``k`` passages of the service's index."""

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=5, ge=1, le=MAX_K)
    passages: list[PassageIn | str] | None = Field(default=None, min_length=1, max_length=MAX_PASSAGES,
                                                   description="passages to answer from; omit to retrieve")
    budget: BudgetIn | None = None
    method: str | None = Field(default=None, max_length=64)
    bypass: bool = Field(default=False, description="no compression: the reader reads the full context")
    read: bool = Field(default=True, description="false: stop after compression (answer null)")
    stream: bool = Field(default=False, description="answer as server-sent events (context, delta..., answer)")
    max_new_tokens: int | None = Field(default=None, ge=1, le=4096, description="bound on the answer's tokens")
    truncate: bool = Field(default=True, description="false: a context over the reader's window is a 422, not cut")

    _utf8 = field_validator("query", "method")(_check_utf8)
    _utf8_passages = field_validator("passages")(_check_passages)

    def core_passages(self) -> list[Passage] | None:
        return None if self.passages is None else to_passages(self.passages)


# ---------------------------------------------------------------------------- responses
class SpanOut(BaseModel):
    passage_id: str
    start: int
    end: int
    text: str
    score: float | None = None


class CacheInfo(BaseModel):
    hit: bool = Field(description="the compressed context came from the segment cache")
    degraded: bool = Field(default=False, description="the cache failed during this request; served uncached")


class SoftTokensOut(BaseModel):
    """Soft tokens (method ``arc``): ``shape[0]`` vectors in the embedding space of the reader
    they were made for, which a reader takes through ``inputs_embeds`` in place of text.
    ``data`` is base64 of the values as little-endian float16, row-major (decode:
    ``numpy.frombuffer(base64.b64decode(data), "<f2").reshape(shape)``, or
    :func:`ragpress.client.decode_soft_tokens`)."""

    data: str | None = Field(description="base64 of the little-endian float16 values, row-major; null when not "
                                         "asked for (soft_tokens='shape', and in /v1/answer)")
    shape: list[int] = Field(description="[vectors, hidden size of the reader]")
    dtype: Literal["float16"] = "float16"
    reader: str = Field(description="model id of the reader they were made for; another reader answers 422 "
                                    "reader_mismatch, a text-only reader 422 soft_tokens_unsupported")
    pooling_factor: int | None = Field(default=None, description="source tokens pooled into one vector")
    vector_spans: list[int | None] | None = Field(
        default=None, description="per vector (row): the index in `spans` of the source characters it covers; "
        "null for a segment's <Cont> separator vector")

    @classmethod
    def from_result(cls, r: CompressionResult, payload: bool = True) -> SoftTokensOut | None:
        """The soft tokens of ``r`` (None when it carries none)."""
        if r.soft_tokens is None:
            return None
        import base64

        arr = soft_array(r.soft_tokens)
        extra = r.extra or {}
        return cls(data=base64.b64encode(arr.tobytes()).decode("ascii") if payload else None,
                   shape=list(arr.shape), reader=str(extra.get("soft_reader") or ""),
                   pooling_factor=extra.get("pooling_factor"), vector_spans=extra.get("vector_spans"))


def soft_array(tensor: Any):
    """Soft tokens (a torch tensor or an array) as a C-contiguous little-endian float16 numpy
    array: the form they cross deployments in and the bytes of ``SoftTokensOut.data``."""
    import numpy as np

    if hasattr(tensor, "detach"):
        tensor = tensor.detach().to("cpu")
        if str(tensor.dtype) != "torch.float16":
            tensor = tensor.float()
        tensor = tensor.numpy()
    return np.ascontiguousarray(tensor, dtype="<f2")


class CompressResponse(BaseModel):
    """A compressed context with provenance: ``spans`` point into the source passages."""

    method: str
    text: str
    spans: list[SpanOut]
    tokens_before: int
    tokens_after: int
    tokens_saved: int
    ratio: float = Field(description="tokens_after / tokens_before, as achieved")
    budget: dict[str, float | int] | None = None
    tokenizer: str | None = None
    config_hash: str
    model_id: str | None = None
    soft_token_shape: list[int] | None = None
    soft_tokens: SoftTokensOut | None = Field(default=None, description="soft-token methods (arc): the vectors "
                                              "instead of text (`text` is empty)")
    cache: CacheInfo
    cache_hits: int
    timings: dict[str, float] = Field(description="seconds per stage: queue, cache_read, compress, total, ...")

    @classmethod
    def from_result(cls, r: CompressionResult, cache_degraded: bool = False,
                    timings: dict[str, float] | None = None, soft_payload: bool = True) -> CompressResponse:
        return cls(
            method=r.compressor, text=r.text, spans=[SpanOut(**s.model_dump()) for s in r.spans],
            tokens_before=r.tokens_before, tokens_after=r.tokens_after, tokens_saved=r.tokens_saved,
            ratio=r.ratio, budget=r.budget.model_dump(exclude_none=True) if r.budget else None,
            tokenizer=r.tokenizer, config_hash=r.config_hash, model_id=r.model_id,
            soft_token_shape=r.soft_token_shape, soft_tokens=SoftTokensOut.from_result(r, soft_payload),
            cache=CacheInfo(hit=r.cache_hits > 0, degraded=cache_degraded),
            cache_hits=r.cache_hits, timings={**r.timings, **(timings or {})},
        )


class HitOut(BaseModel):
    id: str
    title: str | None = None
    text: str
    score: float
    rank: int


class RetrieveResponse(BaseModel):
    query: str
    hits: list[HitOut]
    timings: dict[str, float]


class ReaderAnswerOut(BaseModel):
    """The reader's answer and what it cost."""

    text: str
    reader: str
    model_id: str
    tokens_in: int
    tokens_out: int
    prefill_ms: float
    decode_ms: float
    finish_reason: str
    context_tokens_cut: int = Field(description="context tokens cut to fit the reader's window (0: none)")
    empty: bool = Field(description="the model wrote nothing")


class StageOut(BaseModel):
    """One stage of the chain: wall time and the tokens it saw."""

    ms: float
    tokens_in: int | None = None
    tokens_out: int | None = None


class AnswerResponse(BaseModel):
    """The answer with what it was read from: hits (when retrieved), the compressed context and
    a per-stage breakdown (``retrieve``, ``compress``, ``read``)."""

    query: str
    answer: str | None = Field(default=None, description="null when read=false or no reader is configured")
    reader: ReaderAnswerOut | None = None
    hits: list[HitOut]
    context: CompressResponse
    tokens_saved: int
    stages: dict[str, StageOut] = Field(default_factory=dict)
    timings: dict[str, float]


# ---------------------------------------------------------------------------- OpenAI-compatible chat
MAX_MESSAGES = 512
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ChatMessageIn(BaseModel):
    """One OpenAI chat message. Fields other than ``role``/``content`` (``name``, ``tool_calls``,
    ``tool_call_id``, ...) are kept and forwarded unchanged."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = Field(
        description="text, or a list of content parts; null only for an assistant message with tool calls")

    @field_validator("content")
    @classmethod
    def _content_utf8(cls, v):
        if isinstance(v, str):
            _check_utf8(v)
            if len(v) > MAX_TEXT_CHARS * 4:
                raise ValueError(f"a message is longer than {MAX_TEXT_CHARS * 4} characters")
        return v

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessageIn:
        extra = self.model_extra or {}
        if self.content is None and not (self.role == "assistant" and (extra.get("tool_calls") or
                                                                       extra.get("function_call"))):
            raise ValueError(f"a {self.role} message needs `content`")
        return self

    def text(self) -> str | None:
        """The message's text (string content, or its text parts joined); None without text."""
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            parts = [p.get("text") for p in self.content if isinstance(p, dict) and p.get("type") == "text"]
            return "".join(t for t in parts if isinstance(t, str)) or None
        return None


class ChatCompressionIn(_Strict):
    """ragpress's options for one chat request (all optional)."""

    method: str | None = Field(default=None, max_length=64, description="compression method; GET /v1/methods")
    budget: BudgetIn | None = Field(default=None, description="omit for the method's default budget")
    bypass: bool = Field(default=False, description="no compression: the documents go through in full")
    retrieve: bool = Field(default=True, description="no documents given: retrieve from the service index")
    k: int | None = Field(default=None, ge=1, le=MAX_K, description="passages to retrieve")
    return_messages: bool = Field(default=False, description="echo the rewritten messages in `ragpress`")

    _utf8 = field_validator("method")(_check_utf8)


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: an OpenAI chat body (unknown OpenAI fields are tolerated and
    ignored) plus ragpress's ``documents`` and ``compression``. See
    :mod:`ragpress.services.openai_api` for where documents come from."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=256)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    documents: list[PassageIn | str] | None = Field(default=None, min_length=1, max_length=MAX_PASSAGES,
                                                    description="documents to compress (ragpress extension)")
    compression: ChatCompressionIn | None = Field(default=None, description="ragpress options")

    _utf8_docs = field_validator("documents")(_check_passages)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)

    def sampling_params(self) -> dict[str, Any]:
        """The client's sampling parameters, forwarded to an upstream reader."""
        keys = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class RagpressChatInfo(BaseModel):
    """What ragpress did to the request's documents."""

    compressed: bool = Field(description="the documents reached the reader compressed")
    bypass: bool = False
    fail_open_reason: str | None = Field(default=None, description="why the originals went through instead")
    documents_source: Literal["documents", "message", "retrieved", "none"]
    documents: int = 0
    method: str | None = None
    tokens_before: int | None = None
    tokens_after: int | None = None
    ratio: float | None = None
    soft_tokens: int | None = Field(default=None, description="soft-token method (arc): vectors the reader read "
                                    "in place of the documents' text")
    messages_sha256: str = Field(description="sha256 of the rewritten messages (canonical JSON) sent to the reader")
    messages: list[dict[str, Any]] | None = Field(default=None, description="with compression.return_messages")
    timings: dict[str, float] = Field(default_factory=dict, description="ms per stage")


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_before_compression: int | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    ragpress: RagpressChatInfo


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Errors of ``/v1/chat/completions``, in OpenAI's shape."""

    error: OpenAIErrorDetail


class MethodInfo(BaseModel):
    name: str
    query_aware: bool
    handles_code: bool
    soft_tokens: bool
    budget_modes: list[str]
    default_budget: dict[str, Any]


class MethodsResponse(BaseModel):
    default: str
    methods: list[MethodInfo]


class ErrorDetail(BaseModel):
    type: str
    code: str
    message: str
    details: list[dict[str, Any]] | None = None
    available: list[str] | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: ``{"error": {"type", "code", "message", ...}}``."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str = Field(description="ready | degraded (cache or rate-limit store unreachable, or a stage below its "
                                    "target replicas: still serving) | not_ready | draining (503, stopping)")
    stages: dict[str, dict[str, Any]]
    rate_limits: dict[str, Any] | None = Field(default=None, description="where per-key limits are counted: backend "
                                               "redis | local | off, degraded while Redis is configured but down")
