"""Session-wide fixtures: every model loads once per test session (loaders are lru-cached)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a Ray Data job that cannot be scheduled fails in 5 minutes with Ray's own message, not 30
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


def load_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if limit and len(out) >= limit:
                break
    return out


@pytest.fixture(scope="session")
def hotpot_dev() -> list[dict]:
    """The first 8 records of the HotpotQA dev file with sentence-level supporting facts."""
    return load_jsonl(shared_data("hotpotqa", "hotpotqa_dev_distractor_sf.jsonl"), limit=8)


@pytest.fixture(scope="session")
def counter():
    from ragpress.core.tokens import get_token_counter

    return get_token_counter()


@pytest.fixture(scope="session")
def embedder():
    from ragpress.core.models import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def causal_lm():
    from ragpress.core.models import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="session")
def hotpot_requests(hotpot_dev):
    """HotpotQA dev records as :class:`CompressionRequest` objects (no budget set)."""
    from ragpress.core.types import CompressionRequest, Passage

    return [
        CompressionRequest(
            query=r["question"],
            passages=[Passage(id=f"{r['id']}:{i}", title=p["title"], text=p["text"]) for i, p in enumerate(r["passages"])],
        )
        for r in hotpot_dev
    ]
