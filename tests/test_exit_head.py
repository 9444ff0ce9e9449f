"""EXIT's offline head: training through the CLI (on a few train questions), the shipped card,
scores that separate supporting sentences from the rest on dev data, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ragpress.cli import main
from ragpress.compressors.exit import ExitCompressor
from ragpress.compressors.exit_head import ROUND2_FEATURES, SCALAR_FEATURES, WEIGHTS, HeadScorer, head_model_id
from ragpress.core.errors import ConfigError
from ragpress.core.types import Budget
from ragpress.evaluation import kept_supporting, record_from_json
from ragpress.training.exit import labelled_items
from tests.conftest import SHARED_DATA, shared_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedder):
    """A two-round head trained by `ragpress train exit` on the first 4 questions of each HotpotQA train file."""
    shared_data("hotpotqa", "hotpotqa_train_hipporag100.jsonl")
    out = tmp_path_factory.mktemp("head") / "head.json"
    assert main(["train", "exit", "--data", str(SHARED_DATA), "--datasets", "hotpotqa", "--limit", "4",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dev_records(hotpot_dev):
    return [record_from_json(r) for r in hotpot_dev]


def test_cli_training_writes_a_complete_card(trained):
    card = json.loads(trained.read_text())
    assert not trained.with_suffix(".tmp").exists()
    assert card["features"] == SCALAR_FEATURES and card["prior"] == "balanced"
    assert card["round2_features"] == ROUND2_FEATURES and card["cover_top_docs"] == 2
    r1, r2 = card["round1"], card["round2"]
    assert len(r1["coef"]) == len(r1["mean"]) == len(r1["scale"]) == len(SCALAR_FEATURES)
    assert r2["kind"] == "trees" and len(r2["feature"]) == r2["n_trees"] == len(r2["value"])
    assert max(max(f) for f in r2["feature"]) < len(SCALAR_FEATURES) + len(ROUND2_FEATURES)
    assert card["version"] == "4" and card["doc_vector"] == "sentence_mean"
    t = card["train"]
    assert t["records"] == 8 and 0 < t["positives"] < t["rows"]
    assert t["files"] == ["hotpotqa/hotpotqa_train_hipporag100.jsonl",  # train files only
                          "train/hotpotqa_train_hipporag100_rest38.jsonl"]
    assert str(t["C1"]) in t["cv_round1"] and str(t["C2"]) in t["cv_round2"]
    assert len(t["cv"]["auc_folds"]) == 5 and 0 <= t["cv"]["sent_recall@0.3"] <= 1
    assert t["command"] == "ragpress train exit --datasets hotpotqa --limit 4"


def test_trained_head_scores_are_probabilities_shaped_like_the_documents(trained, dev_records):
    scorer = HeadScorer(trained)
    items, _ = labelled_items(dev_records[:2])
    out = scorer.score_batch(items)
    assert len(out) == 2
    for (_, docs), per_doc in zip(items, out):
        assert [len(s) for _, s in docs] == [len(p) for p in per_doc]
        flat = np.array([x for p in per_doc for x in p])
        assert ((flat >= 0) & (flat <= 1)).all() and flat.std() > 0


def test_shipped_head_ranks_supporting_sentences_higher(dev_records):
    """On 8 dev questions, supporting sentences rank well above the others (AUC; the shipped
    head never saw dev data)."""
    from sklearn.metrics import roc_auc_score

    items, labels = labelled_items(dev_records)
    scores = HeadScorer().score_batch(items)
    pos = [s for sc, lab in zip(scores, labels) for ds, dl in zip(sc, lab) for s, y in zip(ds, dl) if y]
    neg = [s for sc, lab in zip(scores, labels) for ds, dl in zip(sc, lab) for s, y in zip(ds, dl) if not y]
    assert len(pos) >= 8
    assert roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg) > 0.8


def test_exit_with_head_keeps_most_evidence_at_a_third(dev_records):
    comp = ExitCompressor(scorer="head")
    results = comp.compress_batch([r.request(Budget(ratio=0.3)) for r in dev_records])
    kept = [kept_supporting(r, res) for r, res in zip(dev_records, results)]
    assert all(res.tokens_after <= 0.3 * res.tokens_before for res in results)
    recall = sum(k for k, _ in kept) / sum(t for _, t in kept)
    assert recall >= 0.6, kept


def test_threshold_half_keeps_the_evidence_and_drops_most_tokens(dev_records):
    """EXIT's own mode: scores are P(useful) under balanced classes, so 0.5 is a real cut."""
    results = ExitCompressor(scorer="head").compress_batch([r.request(Budget(threshold=0.5)) for r in dev_records])
    ratio = np.mean([res.tokens_after / res.tokens_before for res in results])
    kept = [kept_supporting(r, res) for r, res in zip(dev_records, results)]
    assert 0.05 < ratio < 0.6, ratio
    assert sum(k for k, _ in kept) / sum(t for _, t in kept) >= 0.6
    assert all(s.score >= 0.5 for res in results for s in res.spans)


def test_head_model_id_follows_the_card(trained):
    shipped = ExitCompressor(scorer="head")
    other = ExitCompressor(scorer="head", head_weights=str(trained))
    assert shipped.model_id == head_model_id(shipped.config) != other.model_id
    assert shipped.config_hash != other.config_hash


def test_missing_weights_is_a_config_error(tmp_path):
    comp = ExitCompressor(scorer="head", head_weights=str(tmp_path / "nope.json"))
    with pytest.raises(ConfigError, match="train them with `ragpress train exit`"):
        comp.compress_batch([_tiny()])


def test_head_trained_on_another_embedder_is_refused(tmp_path):
    card = json.loads(WEIGHTS.read_text())
    card["embedder"] = "some-other-encoder"
    path = tmp_path / "head.json"
    path.write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="some-other-encoder"):
        HeadScorer(path)


def test_card_of_unknown_features_is_refused(tmp_path):
    card = json.loads(WEIGHTS.read_text())
    card["round2_features"] = [*card["round2_features"], "telepathy"]
    path = tmp_path / "head.json"
    path.write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="telepathy"):
        HeadScorer(path)


def test_a_card_reads_only_the_features_it_was_trained_on(dev_records):
    """A version-3 card names 17 + 11 features; version 4 computes more. Each round reads the
    card's columns, by name: the same logits as a head fit on those columns alone."""
    from ragpress.compressors.exit_head import (
        V3_FEATURES,
        V3_ROUND2_FEATURES,
        ItemContext,
        features,
        head_logits,
        round2_features,
    )
    from ragpress.core.models import embed_texts

    assert SCALAR_FEATURES[:len(V3_FEATURES)] == V3_FEATURES and len(SCALAR_FEATURES) > len(V3_FEATURES)
    items, _ = labelled_items(dev_records[:2])
    ctx: list[ItemContext] = []
    feats = features(embed_texts, items, ctx)
    rng = np.random.default_rng(0)

    def logistic(n):
        return {"kind": "logistic", "mean": [0.0] * n, "scale": [1.0] * n,
                "coef": rng.normal(size=n).tolist(), "intercept": 0.3}

    n1, n2 = len(V3_FEATURES), len(V3_ROUND2_FEATURES)
    v3 = {"features": V3_FEATURES, "round2_features": V3_ROUND2_FEATURES,
          "round1": logistic(n1), "round2": logistic(n1 + n2)}
    got = head_logits(v3, feats, ctx)
    for x, c, z in zip(feats, ctx, got):
        z1 = x[:, :n1] @ np.asarray(v3["round1"]["coef"]) + 0.3
        x2 = np.concatenate([x[:, :n1], round2_features(c, z1.astype(np.float32))[:, :n2]], 1)
        assert np.allclose(z, x2 @ np.asarray(v3["round2"]["coef"]) + 0.3, atol=1e-4)
    lexical = {**v3, "features": ["idf_lex_q_sent"], "round1": logistic(1), "round2": None}
    z = head_logits(lexical, feats, ctx)[0]
    assert np.allclose(z, feats[0][:, SCALAR_FEATURES.index("idf_lex_q_sent")] * lexical["round1"]["coef"][0] + 0.3)


def test_lexical_features_weigh_rare_words_and_what_the_evidence_lacks():
    """IDF over the request's sentences: a word in every sentence weighs nothing, a name in one
    weighs most. The residual coverage rewards the sentence that supplies the query's words the
    evidence lacks (the second hop), and the bridge words those that name what the evidence found."""
    import zlib

    from ragpress.compressors.exit_head import ItemContext, features, round2_features

    docs = [("Film Q", ["Film Q is a 1999 drama film directed by Anna Berg.", "The film was shot in Oslo."]),
            ("Anna Berg", ["Anna Berg is a Swedish director.", "Berg was born in Malmo in 1960."]),
            ("Other", ["Other is a 1999 drama film.", "Other was made in Rome."])]
    query = "Where was the director of Film Q born?"
    enc = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)

    def encode(texts):  # any unit vectors: these features are lexical
        v = enc[[zlib.crc32(t.encode()) % 64 for t in texts]]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    ctx: list[ItemContext] = []
    x = features(encode, [(query, docs)], ctx)[0]
    idf = x[:, SCALAR_FEATURES.index("idf_lex_q_sent")]
    assert idf[0] > idf[4] > 0 and idf[3] > 0  # "film q" + "direc" beat "film"; "born" counts
    r1 = np.array([5.0, 0.0, 1.0, 0.0, 0.0, 0.0], np.float32)  # the first hop found, nothing else
    r2 = round2_features(ctx[0], r1)
    cov = r2[:, ROUND2_FEATURES.index("resid_cov")]
    bridge = r2[:, ROUND2_FEATURES.index("ev_bridge_words")]
    assert cov.argmax() == 3  # "born" is what the evidence lacks
    assert bridge[3] > 0 and bridge[5] == 0  # Berg sentences name what the film's evidence found


def test_training_needs_the_train_file(tmp_path, capsys):
    assert main(["train", "exit", "--data", str(tmp_path), "--out", str(tmp_path / "h.json")]) == 2
    assert "hotpotqa_train_hipporag100.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "h.json").exists()


def _tiny():
    from ragpress.core.types import CompressionRequest

    return CompressionRequest.of("Who founded Acme?", ["Acme was founded by Jane Roe. It sells anvils."], ratio=0.5)


def test_musique_hops_give_sentence_labels():
    """MuSiQue labels paragraphs; a hop's supporting sentences are those stating its answer."""
    from ragpress.evaluation import normalize_answer
    from ragpress.training.exit import TRAIN_FILES, load_train_records

    path = shared_data(*TRAIN_FILES["musique"][0].split("/"))
    records = load_train_records(path, limit=5)
    _, labels = labelled_items(records)
    raws = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:5]]
    for rec, lab, raw in zip(records, labels, raws):
        assert rec.supporting and any(y == 1 for d in lab for y in d)
        answers = {normalize_answer(h["answer"]) for h in raw["question_decomposition"]}
        for pi, a, b in rec.supporting:
            assert pi in rec.supporting_passages
            assert any(ans in normalize_answer(rec.passages[pi].text[a:b]) for ans in answers)


def test_compressors_do_not_import_training():
    """Arrows point down: training (ragpress.training) imports compressors, never the reverse."""
    import ast
    from pathlib import Path

    import ragpress.compressors as pkg

    def imported(path):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield node.module
            elif isinstance(node, ast.Import):
                yield from (a.name for a in node.names)

    offenders = [p.name for p in Path(pkg.__file__).parent.glob("*.py")
                 if any(m.startswith("ragpress.training") for m in imported(p))]
    assert offenders == []


def test_cover_order_takes_the_best_sentence_of_each_top_document_first():
    """Per-hop coverage: under a budget, the best sentence of each of the two best documents
    goes before a document's second-best sentence; everything else keeps its order."""
    from ragpress.compressors.exit_head import cover_order

    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    doc_of = np.array([0, 0, 0, 1, 1, 2])
    order = list(np.argsort(-cover_order(scores, doc_of, 2), kind="stable"))
    assert order == [0, 3, 1, 2, 4, 5]
    assert list(np.argsort(-cover_order(scores, doc_of, 0), kind="stable")) == [0, 1, 2, 3, 4, 5]


def test_a_one_round_card_of_version_1_still_loads(tmp_path, dev_records):
    """A version-1 card (one logistic round at the top level) scores as the first round alone."""
    from ragpress.compressors.exit_head import head_logits, stages

    card = json.loads(WEIGHTS.read_text())
    r1, _ = stages(card)
    v1 = {"version": "1", "embedder": card["embedder"], "features": SCALAR_FEATURES, "prior": card["prior"],
          "train": card["train"], **{k: r1[k] for k in ("mean", "scale", "coef", "intercept")}}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    items, _ = labelled_items(dev_records[:1])
    got = np.array([x for d in HeadScorer(path).score_batch(items)[0] for x in d])
    one_round = {**card, "round2": None}
    from ragpress.compressors.exit_head import ItemContext, features
    from ragpress.core.models import embed_texts

    ctx: list[ItemContext] = []
    feats = features(lambda t: embed_texts(t), items, ctx, doc_vector="embed")  # cards before v3
    want = 1 / (1 + np.exp(-(head_logits(one_round, feats, ctx)[0] + HeadScorer(path).shift)))
    assert np.allclose(got, want, atol=1e-5)


def test_tree_stage_scores_as_sklearn_does_without_it():
    """The exported trees (walked by numpy at inference) give sklearn's own decision values."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from ragpress.compressors.exit_head import model_logit
    from ragpress.training.exit import TREES, _fit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 6)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + X[:, 2] + 0.5 * rng.normal(size=2000) > 0).astype(int)
    entry = _fit("trees", X, y, 40, seed=0)
    clf = HistGradientBoostingClassifier(max_iter=40, early_stopping=False, random_state=0, **TREES).fit(X, y)
    test = rng.normal(size=(300, 6)).astype(np.float32)
    assert np.allclose(model_logit(entry, test), clf.decision_function(test), atol=1e-5)
    assert model_logit(entry, test[:0]).shape == (0,)
    from ragpress.compressors.exit_head import compile_card

    compiled = compile_card({"round1": None, "round2": entry, "train": {"kind": "trees"}})
    assert np.array_equal(model_logit(compiled["round2"], test), model_logit(entry, test))  # arrays built once


def test_documents_are_not_embedded_whole_by_default():
    """A version-3 card takes a document's vector as the mean of its sentences': only the title
    and the sentences are embedded (half the tokens of embedding the document too)."""
    from ragpress.compressors.exit_head import document_texts

    assert document_texts("T", ["A b.", "C d."]) == ["T", "A b.", "C d."]
    assert document_texts("T", ["A b.", "C d."], "embed") == ["T. A b. C d.", "T", "A b.", "C d."]
    assert HeadScorer().doc_vector == "sentence_mean"


def test_leave_one_dataset_out_scores_each_dataset_on_a_head_that_never_saw_it(tmp_path):
    """Training on HotpotQA, MuSiQue and 2Wiki train (six questions of each here): the
    left-out split fits on two datasets and scores the third, every question once; the trainer
    picks by the mean over the datasets left out and says so in the card, pooled CV beside it."""
    from ragpress.training.exit import DEFAULT_DATASETS, build_trainset, cross_validate, train_head

    ts = build_trainset(SHARED_DATA, limit=6, progress=False)
    assert sorted(set(ts.datasets)) == sorted(DEFAULT_DATASETS) and len(ts.records) == 6 * 5  # five train files
    wiki = [i for i, d in enumerate(ts.datasets) if d == "2wiki"]
    assert all((ts.ys[i] == 1).any() for i in wiki)  # sentence-level supporting facts
    cv = cross_validate(ts, 1, "logistic", 1.0, split="dataset")
    assert cv["split"] == "dataset" and len(cv["auc_folds"]) == 3
    per = [cv[f"{d}:sent_recall@0.3"] for d in DEFAULT_DATASETS]
    assert cv["macro:sent_recall@0.3"] == pytest.approx(np.mean(per), abs=1e-4)
    assert all(0.0 <= cv[f"{d}:answer_kept@0.3"] <= 1.0 for d in DEFAULT_DATASETS)  # answerable ones in each
    with pytest.raises(ConfigError, match="at least two"):
        cross_validate(ts.subset(wiki), 1, "logistic", 1.0, split="dataset")
    card = train_head(SHARED_DATA, tmp_path / "head.json", rounds=2, c1s=(0.1, 1.0), c2s=(5, 10), trainset=ts,
                      progress=False)
    t = card["train"]
    assert t["selected_by"].startswith("macro:sent_recall@0.3 (leave one dataset out)")
    best = max(t["cv_round2"].values(), key=lambda v: v["macro:sent_recall@0.3"])
    assert t["cv_lodo"] == best and t["cv"]["split"] == "question"
    assert "train/2wikimultihopqa_train_raglab100.jsonl" in t["sha256"]
    assert HeadScorer(tmp_path / "head.json") is not None


def test_answer_kept_counts_what_the_dev_benchmark_counts():
    """The train-side answer figure: 1 when the budget keeps the sentence holding the answer, 0 when
    it does not, not counted (NaN) for a yes/no answer or one the context lacks."""
    from ragpress.training.exit import answer_kept

    def rec(answers):
        return record_from_json({"id": "q", "question": "Who founded Acme?", "answers": answers, "passages": [
            {"title": "Acme", "text": "Acme sells anvils. Jane Roe founded Acme in 1990."},
            {"title": "Rain", "text": "It rained all week in Paris. The Seine rose."}]})

    lengths = np.array([19.0, 30.0, 29.0, 16.0])
    doc_of = np.array([0, 0, 1, 1])
    assert answer_kept(rec(["Jane Roe"]), np.array([0.0, 5.0, 1.0, 0.5]), lengths, 0.4, doc_of) == 1.0
    assert answer_kept(rec(["Jane Roe"]), np.array([5.0, 0.0, 1.0, 0.5]), lengths, 0.4, doc_of) == 0.0
    assert np.isnan(answer_kept(rec(["yes"]), np.zeros(4), lengths, 0.4, doc_of))
    assert np.isnan(answer_kept(rec(["John Doe"]), np.zeros(4), lengths, 0.4, doc_of))
