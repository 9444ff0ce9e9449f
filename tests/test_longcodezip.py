"""LongCodeZip and its code chunking, with the real offline SmolLM2 scorer."""

from __future__ import annotations

import itertools
import random

import pytest

from ragpress.compressors.code_chunking import available_parser, split_code
from ragpress.compressors.longcodezip import (
    allocate_fine_rates,
    conditional_ppl_gain,
    entropy_blocks,
    knapsack,
    line_perplexities,
    line_ppl_cache_key,
    perplexity_spikes,
)
from ragpress.core.errors import (
    ConfigError,
    EmptyPassageError,
    EmptyQueryError,
    NoPassagesError,
    UnsupportedBudgetError,
)
from ragpress.core.registry import create_compressor
from ragpress.core.types import Budget, CompressionRequest, Passage

PY_CODE = '''import math
import os

RATE = 0.25


def area_of_circle(radius):
    """Area of a circle of the given radius."""
    return math.pi * radius * radius


def read_config(path):
    with open(path) as f:
        lines = f.read().splitlines()
    out = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip()
    return out


class Account:
    def __init__(self, owner, balance=0.0):
        self.owner = owner
        self.balance = balance

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.balance += amount
        return self.balance

    def interest(self):
        return self.balance * RATE


def list_python_files(folder):
    found = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".py"):
                found.append(os.path.join(root, name))
    found.sort()
    return found
'''

JAVA_CODE = '''package demo;

import java.util.List;

public class Shapes {
    private final double scale;

    public Shapes(double scale) {
        this.scale = scale;
    }

    public double circleArea(double radius) {
        return Math.PI * radius * radius * scale;
    }

    public int countLong(List<String> words) {
        int n = 0;
        for (String w : words) {
            if (w.length() > 5) {
                n++;
            }
        }
        return n;
    }
}
'''

RUBY_CODE = '''require 'json'

def load_items(path)
  JSON.parse(File.read(path))
end

def total_price(items)
  items.sum { |i| i['price'] * i['qty'] }
end
'''

QUERY = "def circle_circumference(radius):\n    return 2 * math.pi *"


@pytest.fixture(scope="module")
def lcz(causal_lm):
    return create_compressor("longcodezip")


def _req(code: str, query: str = QUERY, language: str | None = "python", **budget) -> CompressionRequest:
    meta = {"language": language} if language else {}
    return CompressionRequest(query=query, passages=[Passage(id="f", text=code, metadata=meta)],
                              budget=Budget(**(budget or {"ratio": 0.5})))


# ------------------------------------------------------------------------------ chunking
def test_python_chunks_via_ast_tile_the_file():
    assert available_parser("python") == "ast"
    chunks = split_code(PY_CODE, "python")
    assert "".join(PY_CODE[c.start:c.end] for c in chunks) == PY_CODE
    heads = [PY_CODE[c.start:c.end].lstrip().split("\n")[0] for c in chunks]
    assert any(h.startswith("def area_of_circle") for h in heads)
    assert any(h.startswith("def read_config") for h in heads)
    assert any(h.startswith("def deposit") for h in heads)  # class bodies split per method
    assert any(h.startswith("class Account") for h in heads)
    assert chunks[0].kind == "block" and PY_CODE[chunks[0].start:chunks[0].end].startswith("import math")


def test_java_chunks_via_tree_sitter():
    assert available_parser("java") == "tree-sitter"
    chunks = split_code(JAVA_CODE, "java")
    assert "".join(JAVA_CODE[c.start:c.end] for c in chunks) == JAVA_CODE
    heads = [JAVA_CODE[c.start:c.end].strip().split("\n")[0] for c in chunks]
    assert any("circleArea" in h for h in heads) and any("countLong" in h for h in heads)
    assert sum(c.kind == "function" for c in chunks) >= 3  # constructor + two methods


def test_unknown_language_falls_back_to_regex():
    assert available_parser("ruby") == "regex"
    chunks = split_code(RUBY_CODE, "ruby")
    assert "".join(RUBY_CODE[c.start:c.end] for c in chunks) == RUBY_CODE
    heads = [RUBY_CODE[c.start:c.end].strip().split("\n")[0] for c in chunks]
    assert "def load_items(path)" in heads and "def total_price(items)" in heads


def test_unparsable_python_still_chunks():
    broken = PY_CODE + "\ndef unfinished(x:\n    return x +\n"
    chunks = split_code(broken, "python")
    assert "".join(broken[c.start:c.end] for c in chunks) == broken
    assert len(chunks) >= 5


# ------------------------------------------------------------------------------ pieces
def _brute_force(weights, values, capacity):
    best, best_set = 0.0, set()
    for k in range(len(weights) + 1):
        for combo in itertools.combinations(range(len(weights)), k):
            w = sum(weights[i] for i in combo)
            v = sum(values[i] for i in combo if values[i] > 0)
            if w <= capacity and v > best + 1e-9:
                best, best_set = v, set(combo)
    return best, best_set


def test_knapsack_is_optimal_against_brute_force():
    rng = random.Random(7)
    for _ in range(40):
        n = rng.randint(1, 9)
        weights = [rng.randint(1, 20) for _ in range(n)]
        values = [round(rng.uniform(-2, 10), 3) for _ in range(n)]
        capacity = rng.randint(0, 60)
        chosen = knapsack(weights, values, capacity)
        best, _ = _brute_force(weights, values, capacity)
        assert sum(weights[i] for i in chosen) <= capacity
        assert all(values[i] > 0 for i in chosen)
        assert sum(values[i] for i in chosen) == pytest.approx(best)


def test_knapsack_edge_cases():
    assert knapsack([5, 5], [1.0, 2.0], 0) == set()
    assert knapsack([], [], 10) == set()
    assert knapsack([3, 4], [float("nan"), 1.0], 10) == {1}


def test_adaptive_rates_follow_importance_and_meet_target():
    tokens, scores = [100, 100, 100], [0.0, 5.0, 10.0]
    rates = allocate_fine_rates(tokens, scores, target=150, beta=0.5)
    assert rates[0] < rates[1] < rates[2]
    assert sum(r * t for r, t in zip(rates, tokens)) == pytest.approx(150, abs=1)
    assert allocate_fine_rates(tokens, scores, target=150, beta=0.0) == pytest.approx([0.5] * 3)


def test_spikes_split_blocks():
    ppl = [1.0, 1.1, 4.0, 1.0, 1.2, 1.1, 5.0, 1.0]
    assert perplexity_spikes(ppl) == [2, 6]
    assert entropy_blocks(ppl) == [(0, 3), (3, 7), (7, 8)]


def test_line_perplexities_one_per_line(causal_lm):
    code = "def f(x):\n\n    return x * 2\n"
    ppl = line_perplexities(code)
    assert len(ppl) == len(code.split("\n"))
    assert ppl[1] == 0.0 and ppl[-1] == 0.0  # empty lines
    assert ppl[0] > 0 and ppl[2] > 0
    assert line_ppl_cache_key(code, "m") == line_ppl_cache_key(code, "m") != line_ppl_cache_key(code, "n")


def test_ami_prefers_the_relevant_chunk(causal_lm):
    chunks = split_code(PY_CODE, "python")
    texts = [PY_CODE[c.start:c.end] for c in chunks]
    gains = conditional_ppl_gain(texts, "    return math.pi * radius * radius")
    area = next(i for i, t in enumerate(texts) if "def area_of_circle" in t)
    files = next(i for i, t in enumerate(texts) if "def list_python_files" in t)
    assert gains[area] > gains[files]


# ------------------------------------------------------------------------------ the compressor
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_budget_honoured_and_reported(lcz, ratio):
    res = lcz.compress(_req(PY_CODE, ratio=ratio))
    target = Budget(ratio=ratio).target_tokens(res.tokens_before)
    # markers are the only text that is not source code: allow one short marker line per gap
    markers = res.text.count("# ...")
    assert res.tokens_after <= target + 3 * markers, (res.tokens_after, target, markers)
    assert res.tokens_after < res.tokens_before
    assert res.ratio == pytest.approx(res.tokens_after / res.tokens_before)
    assert res.extra["chunks"] >= 6 and res.extra["languages"] == ["python"]
    assert set(res.timings) >= {"split", "coarse", "fine"}


def test_output_keeps_original_order_and_markers(lcz):
    req = _req(PY_CODE, ratio=0.3)
    res = lcz.compress(req)
    assert res.spans
    prev_end = -1
    for s in res.spans:
        assert PY_CODE[s.start:s.end] == s.text
        assert s.start >= prev_end  # original order, no overlap
        prev_end = s.end
    # every kept span appears in the output, in order, separated only by markers
    pos = 0
    for s in res.spans:
        found = res.text.find(s.text, pos)
        assert found >= 0
        between = res.text[pos:found]
        assert all(ln.strip() in ("", "# ...") for ln in between.split("\n")), between
        pos = found + len(s.text)
    assert "# ..." in res.text
    # the instruction-relevant function survives a tight budget
    assert "def area_of_circle" in res.text


def test_coarse_only_keeps_whole_functions(causal_lm):
    c = create_compressor("longcodezip", fine_stage=False)
    res = c.compress(_req(PY_CODE, ratio=0.4))
    chunks = {(ch.start, ch.end) for ch in split_code(PY_CODE, "python")}
    covered = [(s.start, s.end) for s in res.spans]
    # every span is a union of whole chunks
    bounds = {a for a, _ in chunks} | {b for _, b in chunks}
    for a, b in covered:
        assert a in bounds and (b in bounds or PY_CODE[b:].strip() == "" or PY_CODE[b] == "\n")
    assert res.extra["functions_compressed"] == 0


def test_java_file_compresses_with_slash_markers(lcz):
    res = lcz.compress(_req(JAVA_CODE, query="    public double squareArea(double side) {", language="java",
                            ratio=0.4))
    assert res.extra["languages"] == ["java"]
    assert "// ..." in res.text and "# ..." not in res.text
    for s in res.spans:
        assert JAVA_CODE[s.start:s.end] == s.text


def test_unknown_language_falls_back_and_compresses(lcz):
    res = lcz.compress(_req(RUBY_CODE * 3, query="def average_price(items)", language="cobol-ish", ratio=0.5))
    assert res.tokens_after < res.tokens_before
    assert res.extra["languages"] == ["cobol-ish"]


def test_tokens_budget_and_batch_equals_single(lcz):
    reqs = [_req(PY_CODE, tokens=120), _req(JAVA_CODE, query="int n = 0;", language="java", ratio=0.5)]
    batch = lcz.compress_batch(reqs)
    single = [lcz.compress(r) for r in reqs]
    assert [r.text for r in batch] == [r.text for r in single]
    assert batch[0].tokens_after <= 120 + 3 * batch[0].text.count("# ...")


def test_bad_input_is_typed(lcz):
    with pytest.raises(EmptyPassageError):
        lcz.compress(_req("   \n"))
    with pytest.raises(EmptyQueryError):
        lcz.compress(_req(PY_CODE, query=" "))
    with pytest.raises(NoPassagesError):
        lcz.compress(CompressionRequest(query="x = 1", passages=[], budget=Budget(ratio=0.5)))
    with pytest.raises(UnsupportedBudgetError):
        lcz.compress(_req(PY_CODE, threshold=0.5))
    with pytest.raises(ConfigError):
        create_compressor("longcodezip", fine_ratio=0.0)
    with pytest.raises(ConfigError):
        create_compressor("longcodezip", importance_beta=2.0)


ONE_LONG_FUNCTION = "def build_table(rows):\n    table = {}\n" + "".join(
    f"    table['key_{i}'] = rows[{i}] * {i + 1}\n" for i in range(20)) + """    total = sum(table.values())
    if total <= 0:
        raise ValueError("empty table")
    for key in sorted(table):
        table[key] = table[key] / total
    names = [k.upper() for k in table if k.endswith("7")]
    with open("table.log", "w") as log:
        log.write(",".join(names))
    return table
"""


def test_one_long_function_is_cut_down_not_dropped(lcz):
    # a completion context that is one long function: too large for the coarse budget, so the
    # fine stage must narrow it (the reference overshoots the coarse budget by that chunk)
    res = lcz.compress(_req(ONE_LONG_FUNCTION, query="    table['key_7'] = rows[7] *", ratio=0.3))
    assert res.extra["chunks"] == 1 and res.extra["chunks_kept"] == 1
    assert res.extra["functions_compressed"] == 1
    assert "def build_table" in res.text and "# ..." in res.text
    target = Budget(ratio=0.3).target_tokens(res.tokens_before)
    assert res.tokens_after <= target + 3 * res.text.count("# ...")
    assert len(res.spans) >= 2  # the signature block and more
    # without the fine stage it cannot be cut, so nothing of it fits
    coarse = create_compressor("longcodezip", fine_stage=False).compress(
        _req(ONE_LONG_FUNCTION, query="    table['key_7'] = rows[7] *", ratio=0.3))
    assert coarse.extra["chunks_kept"] == 0


def test_code_rag_baseline_ranks_functions_by_embedding():
    rag = create_compressor("code-rag")
    assert rag.config.ranker == "embedding" and rag.config.fine_stage is False
    assert rag.model_id == "all-MiniLM-L6-v2"
    res = rag.compress(_req(PY_CODE, query="def deposit(self, amount): add money to the account balance",
                            ratio=0.4))
    assert "def deposit" in res.text and "def list_python_files" not in res.text
    chunks = {(ch.start, ch.end) for ch in split_code(PY_CODE, "python")}
    bounds = {a for a, _ in chunks} | {b for _, b in chunks}
    for s in res.spans:  # whole chunks only
        assert s.start in bounds
    assert res.tokens_after <= Budget(ratio=0.4).target_tokens(res.tokens_before) + 3 * res.text.count("# ...")
    assert res.extra["functions_compressed"] == 0
