"""The ragpress service: Ray Serve stage deployments, FastAPI ingress, segment cache.

Importing this package does not import Ray; :mod:`ragpress.services.cache` is usable by the
library alone (``CachedCompressor``, ``compress_with_cache``).
"""

from ragpress.services.cache import (
    CachedCompressor,
    InProcessCache,
    RedisCache,
    ResilientCache,
    SegmentCache,
    compress_with_cache,
    make_cache,
)

__all__ = ["CachedCompressor", "InProcessCache", "RedisCache", "ResilientCache", "SegmentCache",
           "compress_with_cache", "make_cache"]
