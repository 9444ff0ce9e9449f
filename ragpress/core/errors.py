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
