"""ragpress: RAG context compression that keeps the evidence.

>>> from ragpress import create_compressor, CompressionRequest, Budget   # doctest: +SKIP
>>> c = create_compressor("embed-sentences")                              # doctest: +SKIP
>>> r = c.compress(CompressionRequest.of("Who wrote Hamlet?", ["..."], ratio=0.3))  # doctest: +SKIP
"""

from ragpress.core import (
    Budget,
    CompressionRequest,
    CompressionResult,
    Compressor,
    CompressorConfig,
    Passage,
    RagpressError,
    Span,
    available,
    create_compressor,
    get_compressor_class,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "Budget", "CompressionRequest", "CompressionResult", "Compressor", "CompressorConfig", "Passage",
    "RagpressError", "Span", "available", "create_compressor", "get_compressor_class", "register",
    "__version__",
]
