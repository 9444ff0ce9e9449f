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
    assert card["version"] == "3" and card["doc_vector"] == "sentence_mean"
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
    from ragpress.compressors.exit_head import compile_trees

    compiled = compile_trees({"round1": None, "round2": entry, "train": {"kind": "trees"}})
    assert np.array_equal(model_logit(compiled["round2"], test), model_logit(entry, test))  # arrays built once


def test_documents_are_not_embedded_whole_by_default():
    """A version-3 card takes a document's vector as the mean of its sentences': only the title
    and the sentences are embedded (half the tokens of embedding the document too)."""
    from ragpress.compressors.exit_head import document_texts

    assert document_texts("T", ["A b.", "C d."]) == ["T", "A b.", "C d."]
    assert document_texts("T", ["A b.", "C d."], "embed") == ["T. A b. C d.", "T", "A b.", "C d."]
    assert HeadScorer().doc_vector == "sentence_mean"
