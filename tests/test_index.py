"""FAISS index: build / save / load round-trip, kinds, chunking, bad input, atomic saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragpress.core.errors import DocumentDecodeError, IndexBuildError, IndexNotFoundError, InvalidRequestError
from ragpress.indexes import VectorIndex, build_index, chunk_documents, load_documents
from ragpress.indexes.chunking import Document
from ragpress.pipelines import SAMPLE_CORPUS

from .conftest import shared_data

QUERIES = ["How do I create a temporary file?", "What is a heap queue?", "Parse command-line arguments"]


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory, embedder):
    return build_index(SAMPLE_CORPUS, tmp_path_factory.mktemp("idx") / "flat", show_progress=False)


def test_round_trip_same_results(sample_index, tmp_path):
    assert Path(sample_index.meta["source"]) == SAMPLE_CORPUS
    out = sample_index.save(tmp_path / "copy")
    loaded = VectorIndex.load(out)
    a, b = sample_index.search(QUERIES, k=5), loaded.search(QUERIES, k=5)
    assert [[h.passage.id for h in r] for r in a] == [[h.passage.id for h in r] for r in b]
    assert [[round(h.score, 5) for h in r] for r in a] == [[round(h.score, 5) for h in r] for r in b]
    assert loaded.passages == sample_index.passages and len(loaded) == len(sample_index)


def test_search_finds_the_right_passage(sample_index):
    hits = sample_index.search(QUERIES, k=3)
    assert any(h.passage.title.startswith("tempfile") for h in hits[0])
    assert any(h.passage.title.startswith("heapq") for h in hits[1])
    assert any(h.passage.title.startswith("argparse") for h in hits[2])
    assert all(hits[0][i].score >= hits[0][i + 1].score for i in range(2))


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_agree_with_exact(sample_index, kind, tmp_path):
    approx = VectorIndex.build(sample_index.passages, kind=kind, show_progress=False)
    approx = VectorIndex.load(approx.save(tmp_path / kind))
    exact_top = [r[0].passage.id for r in sample_index.search(QUERIES, k=1)]
    approx_top10 = [[h.passage.id for h in r] for r in approx.search(QUERIES, k=10)]
    assert sum(e in a for e, a in zip(exact_top, approx_top10)) >= 2


def test_ivfpq_needs_enough_passages(sample_index):
    with pytest.raises(IndexBuildError, match="256"):
        VectorIndex.build(sample_index.passages[:50], kind="ivfpq", show_progress=False)


def test_chunking_windows_overlap_and_exact_text(embedder):
    tok = embedder.tokenizer
    text = " ".join(f"sentence{i} is here." for i in range(400))
    chunks = chunk_documents([Document(id="d", text=text, title="T")], tok, window=100, overlap=20)
    assert len(chunks) > 3 and all(c.id.startswith("d#") for c in chunks)
    for c in chunks:
        assert c.text in text and len(tok(c.text, add_special_tokens=False)["input_ids"]) <= 101
        assert text[c.metadata["char_start"]:c.metadata["char_start"] + len(c.text)] == c.text
    # consecutive chunks overlap
    assert chunks[1].metadata["char_start"] < chunks[0].metadata["char_start"] + len(chunks[0].text)
    assert chunks[-1].text.endswith("sentence399 is here.")


def test_folder_build_and_non_utf8_error(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Redis\nRedis is an in-memory key-value store.")
    (docs / "sub" / "b.py").write_text("def add(a, b):\n    return a + b\n")
    (docs / ".hidden.txt").write_text("ignored")
    loaded = load_documents(docs)
    assert [d.id for d in loaded] == ["a.md", "sub/b.py"]
    idx = build_index(docs, tmp_path / "idx", show_progress=False)
    assert idx.search("key-value store", k=1)[0][0].passage.id == "a.md"
    (docs / "bad.txt").write_bytes(b"caf\xe9 latin-1 text")
    with pytest.raises(DocumentDecodeError, match="bad.txt.*UTF-8"):
        build_index(docs, tmp_path / "idx2", show_progress=False)
    assert not (tmp_path / "idx2").exists()


def test_missing_index_and_bad_queries(tmp_path, sample_index):
    with pytest.raises(IndexNotFoundError, match="ragpress index build"):
        VectorIndex.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "meta.json").write_text("{}")
    with pytest.raises(IndexNotFoundError, match="missing"):
        VectorIndex.load(tmp_path / "half")
    with pytest.raises(InvalidRequestError):
        sample_index.search(["  "])
    with pytest.raises(IndexNotFoundError):
        load_documents(tmp_path / "no-such-source.jsonl")


def test_bad_jsonl_line_is_reported(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": 1, "text": "ok"}) + "\n{not json\n")
    with pytest.raises(IndexBuildError, match=":2"):
        load_documents(f)


def test_failed_save_leaves_previous_index_intact(sample_index, tmp_path, monkeypatch):
    out = sample_index.save(tmp_path / "idx")
    before = sorted(p.name for p in out.iterdir())
    import faiss

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)  # a write failure mid-save (not a model mock)
    with pytest.raises(OSError):
        sample_index.save(out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp folders left behind
    assert len(VectorIndex.load(out)) == len(sample_index)


def test_a_gpu_the_index_cannot_move_to_is_reported_and_search_stays_on_the_cpu(sample_index, monkeypatch, caplog):
    import faiss

    from ragpress.indexes.faiss_index import _maybe_to_gpu

    def no_device(*a, **k):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    # a GPU build that counts a device it cannot use (not a model mock: FAISS' device calls only)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", no_device, raising=False)
    with caplog.at_level("WARNING", logger="ragpress.indexes.faiss_index"):
        moved = _maybe_to_gpu(sample_index.index, "flat")
    assert moved is sample_index.index
    assert "could not move to it (RuntimeError: CUDA error" in caplog.text
    caplog.clear()
    assert _maybe_to_gpu(sample_index.index, "hnsw") is sample_index.index and not caplog.text  # HNSW: CPU only


def test_wiki_sample_builds(tmp_path):
    path = shared_data("wiki_passages", "flashrag_wiki_sample1000.jsonl")
    lines = path.read_text().splitlines()[:60]
    (tmp_path / "w.jsonl").write_text("\n".join(lines))
    idx = build_index(tmp_path / "w.jsonl", show_progress=False)
    first = json.loads(lines[0])
    assert idx.search(first["text"][:200], k=1)[0][0].passage.id.split("#")[0] == first["id"]
