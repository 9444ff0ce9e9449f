"""Structure and languages kept (#15): tables, JSON, lists, code blocks, dialogues and CJK text
survive compression, spans stay exact, kept JSON parses, and a context is never emptied."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ragpress import Budget, CompressionRequest, create_compressor
from ragpress.core.errors import InvalidRequestError
from ragpress.core.extractive import Unit, render, select, sentence_units
from ragpress.core.sentences import guess_language, split_sentences
from ragpress.core.structure import prune_json, segment
from ragpress.core.types import Passage, Protect

_spec = importlib.util.spec_from_file_location(
    "structure_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "structure.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
CASES = bench.CASES


def _texts(text, segs):
    return [text[s.start:s.end] for s in segs]


# ------------------------------------------------------------------ units, no model
def test_table_rows_carry_their_header():
    segs = segment(bench.TABLE)
    assert [s.kind for s in segs] == ["row"] * 4
    assert _texts(bench.TABLE, segs)[1] == "| Berlin | Germany | 3,878,100 |"
    assert [bench.TABLE[a:b] for a, b in segs[1].context] == ["| City | Country | Population |", "|---|---|---|"]


def test_html_table_rows():
    t = "<table><tr><th>city</th><th>pop</th></tr><tr><td>Berlin</td><td>3.8M</td></tr><tr><td>Rome</td><td>2.7M</td></tr></table>"
    segs = segment(t)
    assert _texts(t, segs) == ["<tr><td>Berlin</td><td>3.8M</td></tr>", "<tr><td>Rome</td><td>2.7M</td></tr>"]
    ps = [Passage(id="p", text=t)]
    text, spans = render([Unit(0, segs[1].start, segs[1].end, 1.0, "row", segs[1].context)], ps)
    assert text == "<table><tr><th>city</th><th>pop</th></tr><tr><td>Rome</td><td>2.7M</td></tr></table>"
    assert all(t[s.start:s.end] == s.text for s in spans)


def test_json_values_with_paths_and_pruned_json_parses():
    segs = segment(bench.JSON_DOC)
    assert [s.path for s in segs] == [("orders", 0), ("orders", 1), ("orders", 2)]
    assert all(s.kind == "json" for s in segs)
    doc = json.loads(prune_json([(segs[1].path, bench.JSON_DOC[segs[1].start:segs[1].end])]))
    assert doc == {"orders": [{"id": 102, "customer": "Bruno Costa", "status": "awaiting payment", "total": 120.0}]}


def test_list_items_code_lines_headings_and_turns():
    segs = segment(bench.LIST)
    items = [s for s in segs if s.kind == "item"]
    assert len(items) == 5 and bench.LIST[items[2].start:items[2].end].startswith("- Let the dough rise")
    assert all(bench.LIST[a:b] == "## Sourdough bread" for s in segs for a, b in s.context[:1])
    code = [s for s in segment(bench.CODE) if s.kind == "code"]
    assert "MAX_RETRIES = 7" in _texts(bench.CODE, code)
    assert [bench.CODE[a:b] for a, b in code[0].context] == ["```python", "```"]
    turns = [s for s in segment(bench.DIALOGUE)]
    assert len(turns) == 8 and all(s.kind == "turn" for s in turns)
    assert bench.DIALOGUE[turns[3].start:turns[3].end] == "Customer: Sure, my account number is 88-41327."


def test_prose_units_unchanged():
    t = "It rains. We stay in. The end."
    assert [(s.start, s.end) for s in segment(t)] == split_sentences(t)


@pytest.mark.parametrize("text, lang, n", [
    (bench.CJK, "chinese", 4), (bench.JAPANESE, "japanese", 5), (bench.GERMAN, "german", 5),
    ("It rains. We stay in.", "english", 2),
])
def test_language_guess_and_split(text, lang, n):
    assert guess_language(text) == lang
    spans = split_sentences(text)
    assert len(spans) == n
    assert all(text[a:b].strip() == text[a:b] for a, b in spans)


def test_render_keeps_rows_on_their_lines(counter):
    ps = [Passage(id="t", text=bench.TABLE)]
    units = sentence_units(ps)
    for u, s in zip(units, [0.1, 0.9, 0.8, 0.0]):
        u.score = s
    kept = select(units, ps, Budget(ratio=0.8), counter, counter.count(bench.TABLE))
    text, spans = render(kept, ps)
    assert text.splitlines()[:2] == ["| City | Country | Population |", "|---|---|---|"]
    assert "| Berlin | Germany | 3,878,100 |\n| Madrid" in text
    assert all(bench.TABLE[s.start:s.end] == s.text for s in spans)


def test_never_empty_threshold_and_tiny_budget(counter):
    ps = [Passage(id="c", text=bench.CJK)]
    units = sentence_units(ps)
    for u in units:
        u.score = 0.1
    units[1].score = 0.2
    notes: dict = {}
    kept = select(units, ps, Budget(threshold=0.9), counter, 60, notes=notes)
    assert [bench.CJK[u.start:u.end] for u in kept] == ["上海是中国最大的城市，人口超过两千四百万。"]
    assert "below_threshold" in notes
    notes = {}
    kept = select(units, ps, Budget(tokens=6), counter, 60, query="中国最大的城市", notes=notes)
    text, spans = render(kept, ps)
    assert text and counter.count(text) <= 6 and "cut" in notes
    assert all(bench.CJK[s.start:s.end] == s.text for s in spans)


def test_nothing_fits_says_why(counter):
    ps = [Passage(id="p", title="A rather long title of many words that costs tokens", text="Short text here.")]
    units = sentence_units(ps)
    notes: dict = {}
    assert select(units, ps, Budget(tokens=2), counter, 20, notes=notes) == []
    assert "smaller than the passage title" in notes["empty_reason"]


def test_json_unit_cut_into_values(counter):
    doc = json.dumps({"config": {f"key_{i}": f"value number {i}" for i in range(12)}}, indent=2)
    ps = [Passage(id="j", text=doc)]
    units = sentence_units(ps)
    assert len(units) == 12  # the object is split into its values
    big = [Unit(0, doc.index("{", 1), len(doc) - 2, 1.0, "json", (), ("config",), (0, len(doc)))]
    notes: dict = {}
    kept = select(big, ps, Budget(tokens=20), counter, 200, query="key_3", notes=notes)
    text, _ = render(kept, ps)
    assert json.loads(text)["config"]["key_3"] == "value number 3" and counter.count(text) <= 20


def test_protect_keep_and_verbatim(counter):
    text = "Alpha beta gamma delta. The code ORD-55721-X is what you need. Epsilon zeta eta theta iota kappa."
    ps = [Passage(id="p", text=text)]
    units = sentence_units(ps)
    for u, s in zip(units, [0.9, 0.0, 0.5]):
        u.score = s
    kept = select(units, ps, Budget(tokens=8), counter, 40, protect=Protect(keep_patterns=[r"ORD-\d+"]))
    assert any("ORD-55721-X" in text[u.start:u.end] for u in kept)
    # a window cut never splits a protected id
    long = "word " * 30 + "ref ORD-55721-X " + "word " * 30
    ps = [Passage(id="q", text=long)]
    units = sentence_units(ps)
    kept = select(units, ps, Budget(tokens=5), counter, 80, query="ORD-55721-X",
                  protect=Protect(patterns=["ids"]))
    out, _ = render(kept, ps)
    assert "ORD-55721-X" in out or "ORD" not in out


def test_protect_validates_and_travels_through_rest_body():
    with pytest.raises(InvalidRequestError):
        Protect(patterns=["(unclosed"])
    from ragpress.services.protocol import CompressRequestBody

    body = CompressRequestBody(query="q", passages=["a b"], protect={"patterns": ["numbers"]})
    assert body.to_core().protect.patterns == ["numbers"]


# ------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def compressors():
    return {m: create_compressor(m) for m in ("exit", "embed-sentences", "cprs")}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["exit", "embed-sentences", "cprs"])
@pytest.mark.parametrize("case", list(CASES))
def test_answer_survives(compressors, method, case):
    if method == "cprs" and case in ("list", "dialogue", "German"):
        pytest.xfail("the offline CPRS head (135M, trained on English HotpotQA) ranks this answer unit low")
    query, passages, answer = CASES[case]
    comp = compressors[method]
    reqs = [CompressionRequest.of(query, passages, ratio=r) for r in (0.3, 0.5)]
    for req, res in zip(reqs, comp.compress_batch(reqs)):
        assert answer in res.text, (method, case, req.budget, res.text)
        assert res.tokens_after <= req.budget.target_tokens(res.tokens_before) + 1
        by_id = {p.id: p.text for p in req.passages}
        assert res.spans and all(by_id[s.passage_id][s.start:s.end] == s.text for s in res.spans)
        if "JSON" in case:
            assert bench.json_blocks_parse(res.text) is True
            assert "json" in res.extra


def test_embed_sentences_json_answer_says_how_rendered():
    query, passages, _ = CASES["JSON (issue)"]
    res = create_compressor("embed-sentences").compress(CompressionRequest.of(query, passages, ratio=0.3))
    assert json.loads(res.text.split("\n\n")[0])["orders"][0]["id"] == 102
    assert "pruned JSON" in res.extra["json"]


@pytest.mark.slow
def test_tcra_semantic_keeps_structure_and_budget():
    """TCRA's word removal is query-independent: it cannot pick the row the question is about,
    but on every structure it honours the budget, keeps spans exact, keeps a kept row's header,
    keeps JSON parsing, adds no spaces to CJK text and never empties the context."""
    comp = create_compressor("tcra-semantic")
    names = ["table (issue)", "JSON (issue)", "Chinese (issue)", "Japanese"]  # the rest: benchmarks/structure.py
    reqs = [CompressionRequest.of(CASES[c][0], CASES[c][1], ratio=r) for c, r in zip(names, (0.5, 0.5, 0.3, 0.3))]
    for case, req, res in zip(names, reqs, comp.compress_batch(reqs)):
        assert res.text.strip(), case
        assert res.tokens_after <= req.budget.target_tokens(res.tokens_before), (case, res.tokens_after)
        by_id = {p.id: p.text for p in req.passages}
        assert res.spans and all(by_id[s.passage_id][s.start:s.end] == s.text for s in res.spans), case
        if "JSON" in case:
            assert bench.json_blocks_parse(res.text) is not False
        if "| Germany |" in res.text or "| France |" in res.text:
            assert "| City | Country | Population |" in res.text
        if case in ("Chinese (issue)", "Japanese"):
            assert " " not in res.text.replace("\n", ""), res.text
