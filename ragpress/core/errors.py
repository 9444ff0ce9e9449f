"""Typed errors. Every error a user can cause is a :class:`RagpressError` with a message
that says what to fix; the CLI prints it, the REST API maps it to a 4xx status."""

from __future__ import annotations


class RagpressError(Exception):
    """Base class of all errors ragpress raises on bad input or missing resources.

    ``http_status`` is the status the REST API answers with.
    """

    http_status: int = 422
    code: str = "invalid_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": {"type": type(self).__name__, "code": self.code, "message": self.message}}


class InvalidRequestError(RagpressError):
    """A request is malformed in a way the schema alone cannot catch."""


class EmptyQueryError(InvalidRequestError):
    code = "empty_query"


class NoPassagesError(InvalidRequestError):
    code = "no_passages"


class EmptyPassageError(InvalidRequestError):
    code = "empty_passage"


class BudgetError(InvalidRequestError):
    code = "invalid_budget"


class UnsupportedBudgetError(BudgetError):
    code = "unsupported_budget_mode"


class UnknownCompressorError(InvalidRequestError):
    code = "unknown_method"

    def __init__(self, name: str, available: list[str]):
        super().__init__(f"unknown compression method {name!r}; available methods: {', '.join(available)}")
        self.available = available


class ConfigError(InvalidRequestError):
    code = "invalid_config"


class PluginError(RagpressError):
    """A compressor or reader declared by a package's entry point that cannot be used: it does not
    import, is not a subclass of the base class, says another name than it is declared under, or
    takes a name another package already declares. The message names the package and the entry
    point; every other method loads regardless (:mod:`ragpress.core.registry`)."""

    http_status = 500
    code = "plugin_error"

    def __init__(self, message: str, plugin: str | None = None, name: str | None = None):
        super().__init__(message)
        self.plugin = plugin  # the distribution that declares it
        self.name = name  # the name it is declared under


class DocumentDecodeError(RagpressError):
    code = "document_not_utf8"


class IndexNotFoundError(RagpressError):
    http_status = 404
    code = "index_not_found"


class IndexBuildError(RagpressError):
    code = "index_build_failed"


class ModelLoadError(RagpressError):
    """A model id or path could not be loaded (not downloaded, no hub access, bad path)."""

    http_status = 503
    code = "model_unavailable"


# ---------------------------------------------------------------------------- reader stage
class UnknownReaderError(InvalidRequestError):
    code = "unknown_reader"

    def __init__(self, name: str, available: list[str]):
        super().__init__(f"unknown reader {name!r}; available readers: {', '.join(available)}")
        self.available = available


class ContextTooLongError(InvalidRequestError):
    """The prompt does not fit the reader's window and the caller asked for no cut."""

    code = "context_too_long"


class SoftTokensUnsupportedError(InvalidRequestError):
    """Soft-token context sent to a reader that only takes text (an upstream server)."""

    code = "soft_tokens_unsupported"


class ReaderMismatchError(InvalidRequestError):
    """Soft tokens made for one reader were sent to another (they would give garbage)."""

    code = "reader_mismatch"


class UpstreamError(RagpressError):
    """An upstream OpenAI-compatible server failed or answered with an error."""

    http_status = 502
    code = "upstream_error"

    def __init__(self, message: str, upstream_status: int | None = None):
        super().__init__(message)
        self.upstream_status = upstream_status

    def to_dict(self) -> dict:
        body = super().to_dict()
        body["error"]["upstream_status"] = self.upstream_status
        return body


class UpstreamTimeoutError(UpstreamError):
    http_status = 504
    code = "upstream_timeout"
