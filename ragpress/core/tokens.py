"""Token counting with a named tokenizer (Qwen's by default: the reader's tokens are what cost)."""

from __future__ import annotations

from collections.abc import Sequence

from ragpress.core.models import load_tokenizer, loads_once, resolve_model_id


class TokenCounter:
    """Counts tokens of texts with one tokenizer, without special tokens.

    >>> counter = get_token_counter()          # doctest: +SKIP
    >>> counter.count("Hello world")           # doctest: +SKIP
    2
    """

    def __init__(self, name: str | None = None):
        self.name = resolve_model_id("tokenizer", name)
        self.tokenizer = load_tokenizer(name)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def char_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` (needs a fast tokenizer)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(o) for o in enc["offset_mapping"]]


@loads_once(maxsize=8)
def get_token_counter(name: str | None = None) -> TokenCounter:
    """The process-wide counter for tokenizer ``name`` (loaded once)."""
    return TokenCounter(name)
