"""The CLI and the in-process pipeline, end to end on the shipped sample corpus."""

from __future__ import annotations

import json

import pytest

from ragpress import Budget
from ragpress.cli import main
from ragpress.indexes import VectorIndex
from ragpress.pipelines import SAMPLE_CORPUS, RagPipeline


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "idx"
    assert main(["index", "build", str(SAMPLE_CORPUS), "--out", str(out)]) == 0
    return out


def test_pipeline_compresses_retrieved_context(index_dir):
    pipe = RagPipeline(VectorIndex.load(index_dir), "embed-sentences", top_k=5)
    out = pipe.run("How do I create a temporary file?", Budget(ratio=0.3))
    assert len(out.hits) == 5
    assert 0 < out.compression.tokens_after < out.compression.tokens_before
    assert out.compression.ratio <= 0.32
    assert "temporary" in out.context.lower()


def test_cli_search_and_answer(index_dir, capsys):
    assert main(["index", "search", "--index", str(index_dir), "--query", "heap queue", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    assert hits[0]["title"].startswith("heapq")
    assert main(["answer", "--index", str(index_dir), "--query", "What is a heap queue?", "--ratio", "0.4",
                 "--reader-config", '{"max_new_tokens": 8}', "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["compression"]["tokens_after"] < out["compression"]["tokens_before"]
    assert out["answer"]["text"] and out["answer"]["model_id"] == "SmolLM2-135M-Instruct"
    assert 0 < out["answer"]["tokens_out"] <= 8 and out["timings"]["read"] > 0
    assert main(["answer", "--index", str(index_dir), "--query", "What is a heap queue?", "--ratio", "0.4",
                 "--reader", "none"]) == 0
    text = capsys.readouterr().out
    assert "Answer (" not in text and "tokens before" in text


def test_cli_compress_json_in_json_out(tmp_path, capsys):
    req = {"query": "Who founded the company?", "passages": [
        "Acme was founded by Jane Roe in 1990. It sells anvils.", {"id": "x", "title": "Weather", "text": "It rained."}]}
    f = tmp_path / "req.json"
    f.write_text(json.dumps(req))
    assert main(["compress", "--input", str(f), "--method", "embed-sentences", "--tokens", "25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "Jane Roe" in out["text"] and out["tokens_after"] <= 25
    assert out["spans"][0]["passage_id"] == "p0"


@pytest.mark.parametrize("argv, message", [
    (["compress", "--ratio", "1.5"], "ratio must be in (0, 1]"),
    (["compress", "--method", "bogus"], "available methods"),
    (["compress", "--config", "{bad"], "not valid JSON"),
    (["answer", "--index", "/no/such/index", "--query", "q"], "no ragpress index"),
    (["index", "build", "/no/such/file.jsonl", "--out", "/tmp/x"], "no such file"),
])
def test_cli_errors_are_clear(argv, message, tmp_path, capsys, monkeypatch):
    f = tmp_path / "req.json"
    f.write_text(json.dumps({"query": "q", "passages": ["Some text."]}))
    if argv[0] == "compress":
        argv = argv + ["--input", str(f)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cli_compress_rejects_bad_input(tmp_path, capsys):
    for payload, message in [("{oops", "not valid JSON"), ('{"query": "q"}', "passages"),
                             ('{"query": "", "passages": ["x."]}', "non-empty query"),
                             ('{"query": "q", "passages": []}', "at least one passage"),
                             ('{"query": "q", "passages": ["  "]}', "empty or whitespace")]:
        f = tmp_path / "r.json"
        f.write_text(payload)
        assert main(["compress", "--input", str(f)]) == 2, payload
        assert message in capsys.readouterr().err


def test_methods_lists_baselines(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for m in ("truncate", "embed-sentences", "embed-passages"):
        assert m in out
