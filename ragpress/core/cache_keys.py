"""Content-hash cache keys for compressed segments and the work behind them.

Every key names *what* produced the value (compressor name, config hash, model id) and *from
what* (a hash of the content), so a passage seen again under the same settings is a cache read,
and changing a setting or a model can never serve a stale value:

    rp:v1:<kind>:<compressor>:<config_hash>:<model_id>:<content_hash>

Query-independent work (sentence splits, embeddings, per-line perplexities, summaries, soft
tokens) is keyed by the passage content only; query-dependent results are keyed by the query
and budget too.

>>> from ragpress.core.types import CompressionRequest
>>> k = result_key("truncate", "abc123", None, CompressionRequest.of("", ["some text"], ratio=0.5), False)
>>> k.startswith("rp:v1:result:truncate:abc123:-:")
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from ragpress.core.types import Budget, CompressionRequest, Passage

KEY_VERSION = "v1"
_PREFIX = f"rp:{KEY_VERSION}"


def content_hash(*parts: str | bytes, length: int = 32) -> str:
    """SHA-256 over length-prefixed parts (so ``("ab", "c")`` and ``("a", "bc")`` differ)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:length]


def _safe(token: str | None) -> str:
    """A key segment without separators or spaces (model ids may hold ``/`` or ``:``)."""
    if not token:
        return "-"
    return token.replace(":", "_").replace(" ", "_")


def passage_fingerprint(passage: Passage) -> str:
    """Hash of what a compressor sees of a passage: id, title and text (not metadata)."""
    return content_hash(passage.id, passage.title or "", passage.text)


def budget_fingerprint(budget: Budget | None) -> str:
    return "default" if budget is None else f"{budget.mode}={getattr(budget, budget.mode)}"


def segment_key(kind: str, compressor: str, config_hash: str, model_id: str | None, *content: str) -> str:
    """Key of one piece of query-independent work, e.g. ``segment_key("emb", "exit", h, m, text)``."""
    return f"{_PREFIX}:{_safe(kind)}:{_safe(compressor)}:{_safe(config_hash)}:{_safe(model_id)}:{content_hash(*content)}"


def result_key(compressor: str, config_hash: str, model_id: str | None, request: CompressionRequest,
               query_aware: bool) -> str:
    """Key of a whole compression result: passages + budget, plus the query when the
    compressor reads it (a query-blind compressor's result is shared across queries)."""
    parts: list[str] = [budget_fingerprint(request.budget)]
    if query_aware:
        parts.append("q:" + request.query)
    if request.protect is not None:
        parts.append("protect:" + request.protect.model_dump_json())
    parts.extend(passage_fingerprint(p) for p in request.passages)
    return f"{_PREFIX}:result:{_safe(compressor)}:{_safe(config_hash)}:{_safe(model_id)}:{content_hash(*parts)}"


def stable_json_hash(obj: object) -> str:
    """Short hash of a JSON-serialisable object with sorted keys (config hashes)."""
    return content_hash(json.dumps(obj, sort_keys=True, default=str), length=12)


def keys_for(kind: str, compressor: str, config_hash: str, model_id: str | None,
             contents: Iterable[str]) -> list[str]:
    """:func:`segment_key` for each content string, in order."""
    return [segment_key(kind, compressor, config_hash, model_id, c) for c in contents]
