"""Types, the compressor contract, registry, tokens, sentences and model resolution."""

from ragpress.core.compressor import Compressor, CompressorConfig
from ragpress.core.errors import RagpressError
from ragpress.core.registry import available, create_compressor, get_compressor_class, register
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Span

__all__ = [
    "Budget", "CompressionRequest", "CompressionResult", "Compressor", "CompressorConfig", "Passage",
    "RagpressError", "Span", "available", "create_compressor", "get_compressor_class", "register",
]
