"""EXIT's offline default scorer: a small context-aware sentence classifier on frozen MiniLM features.

EXIT (Hwang et al., 2024) fine-tunes Gemma-2B to answer "is this sentence useful for the question,
given its document?". Those weights are not to be had offline, and SmolLM2-135M zero-shot barely
separates relevant from irrelevant sentences, so ragpress trains this head itself, with EXIT's
labels, on the *train* files only (:mod:`ragpress.training.exit`, ``ragpress train exit``):

* positives: gold supporting sentences (MuSiQue: the sentences of a hop's supporting paragraph
  that state the hop's answer);
* negatives: every other sentence, of supporting paragraphs (hard) and of distractors.

First round: features of a sentence *in its context* (the "context-aware" of EXIT), all from one
MiniLM pass over the query, the sentences and the titles of a request (each distinct text
embedded once; a document's vector is the mean of its sentences', see :func:`document_texts`):

* similarity of the query to the sentence, its two neighbours, its document and its title;
* the sentence's rank within its document and its document's rank within the request;
* lexical overlap of the query's content words with the sentence / the title;
* bridge evidence: whether the document's title is mentioned in another document, weighted by
  that document's similarity to the query;
* position and length of the sentence (lead sentences define the entity);
* (version 4) IDF-weighted overlap of the query's words (cut to 5 letters) with the sentence,
  its document, and its document plus title, IDF taken over the request's sentences: a name or a
  date the question shares with one sentence counts, a word every sentence has does not.

Second round (multi-hop: the second hop is about an entity named in the first hop's evidence,
not about the question's words): the first round's best ``EVIDENCE_K`` sentences are taken as
evidence, and every sentence is rescored from its first-round features plus
:data:`ROUND2_FEATURES`: its first-round logit and gap to the best, its document's best logit
and rank, its rank in its document, its similarity to the evidence of *other* documents and to
query + evidence, whether the evidence names its document's title, whether it names one of the
two best documents' titles, and its title's similarity to the evidence; and (version 4) per-hop
coverage, lexically: the IDF share of the query's words the evidence still lacks that the sentence
supplies, how much of the query that is, and the words it shares with other documents' evidence
(:func:`_residual_columns`). Under a ratio or token budget, the best sentence of each of the
``cover_top_docs`` best documents is kept first (:func:`cover_order`).

Chosen by 5-fold cross-validation grouped by question on the 200 train questions (HotpotQA and
MuSiQue, 100 each; ``benchmarks/exit_head_ablation.py`` prints the table), measured as the share
of supporting sentences kept at 30 % of the characters: with whole documents embedded, the second
round (logistic) lifted it from 0.852 to 0.867; a small MLP in the second round did worse (0.83);
coverage of the top documents changes little on train. Taking a document's vector as the mean of
its sentences' (version 3) halves the tokens to embed but cost 3.4 points with a logistic second
round (0.833); gradient-boosted trees in the second round win them back (0.863, AUC 0.893 against
0.880), so version 3 pairs the two. Version 4's lexical features lift it to 0.906 (AUC 0.917;
150 trees, picked by the same CV over 100 and 150). A third round, or 2 or 5 evidence sentences
instead of 3, did not pay. Earlier (62 questions): adding the 384 element-wise products of query and sentence
embeddings overfit (0.84 AUC), and every distractor sentence as a negative beat sampling 3 per
positive.

The first round is a logistic regression and the second 150 boosted trees, in one small JSON card
that ships in the package, with the hash of the training data, the CV figures and the command that
made it; cards of versions 1 (one logistic round at the top level), 2 (two logistic rounds,
documents embedded whole) and 3 (without the lexical features) still load: each round reads the
columns its card names (:func:`feature_columns`). The fit is deterministic, and inference needs
numpy only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragpress.core.errors import ConfigError
from ragpress.core.models import embed_texts, load_embedder, resolve_model_id

WEIGHTS = Path(__file__).with_name("weights") / "exit_head.json"
Doc = tuple[str | None, list[str]]

_WORD = re.compile(r"[A-Za-z0-9]+")
_STOP = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being which who whom "
    "whose what when where why how that this these those it its as than then did does do has have had "
    "not no yes same both either neither also more most other another into about over after before "
    "between during under until up out one two first second name named known".split()
)
SCALAR_FEATURES = [
    "cos_q_sent", "cos_q_prev", "cos_q_next", "cos_q_doc", "cos_q_title", "sent_rank_in_doc",
    "doc_rank", "doc_rank_top2", "lex_q_sent", "lex_q_title", "title_in_query", "bridge",
    "bridge_top", "is_first", "rel_pos", "cos_q_sent_minus_doc_max", "log_len",
    "idf_lex_q_sent", "idf_doc_cov", "idf_doc_title_cov",
]
V3_FEATURES = SCALAR_FEATURES[:17]  # what cards before version 4 were trained on


def _words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP}


def _stems(words: set[str]) -> frozenset[str]:
    """:func:`_words` cut to 5 letters, a crude stemmer: directed / director and composer / composed
    meet; irregular forms (born / birth, died / death) do not (a table of them did not pay in
    the train cross-validation)."""
    return frozenset(w[:5] for w in words)


def _idf_table(sent_stems: Sequence[frozenset[str]]) -> tuple[dict[str, float], float]:
    """Inverse document frequency of each word over the sentences of one request (a word rare in
    the request is specific: a name, a date), and the value of a word in none of them."""
    df: dict[str, int] = {}
    for ws in sent_stems:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    n = len(sent_stems) + 1
    return {w: math.log(n / (1 + c)) for w, c in df.items()}, math.log(n)


def _mass(words, idf: dict[str, float], unseen: float) -> float:
    return sum(idf.get(w, unseen) for w in words)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1)  # embeddings are L2-normalised


DOC_VECTORS = ("sentence_mean", "embed")


def document_texts(title: str | None, sents: Sequence[str], doc_vector: str = "sentence_mean") -> list[str]:
    """The texts :func:`features` embeds for one document, none of them query-dependent: its title
    (or its body's start), each sentence, and with ``doc_vector="embed"`` (version-2 cards) the
    whole document (title + body) as well; ``"sentence_mean"`` takes the document's vector as the
    mean of its sentences' instead, which halves the tokens to embed."""
    body = " ".join(sents)
    head = title or body[:200]
    if doc_vector == "embed":
        return [(f"{title}. " if title else "") + body, head, *sents]
    return [head, *sents]


@dataclass
class ItemContext:
    """What the second round needs of one item after the first: the query's and the sentences'
    embeddings, the document of each sentence, the titles and their embeddings, the sentences'
    lower-cased text (for mentions)."""

    q: np.ndarray
    sent_emb: np.ndarray
    doc_of: np.ndarray
    titles: list[str]
    title_emb: np.ndarray
    sents_low: list[str]
    sent_stems: list[frozenset[str]]  # :func:`_stems` of each sentence
    q_stems: frozenset[str]
    idf: dict[str, float]  # :func:`_idf_table` of the request
    idf_unseen: float


def _embed_plan(encode: Callable[[list[str]], np.ndarray], items: Sequence[tuple[str, Sequence[Doc]]],
                doc_vector: str = "sentence_mean"):
    """Embeds each distinct text of ``items`` once (query, titles, sentences, and documents when
    ``doc_vector="embed"``); a plan entry per document is ``(document, title, [sentences])``,
    ``document`` being None when its vector is the mean of its sentences'."""
    texts: list[str] = []
    index: dict[str, int] = {}

    def add(t: str) -> int:
        if t not in index:
            index[t] = len(texts)
            texts.append(t)
        return index[t]

    plan = []
    for query, docs in items:
        qi = add(query)
        dplan = []
        for title, sents in docs:
            texts_d = document_texts(title, sents, doc_vector)
            doc = add(texts_d[0]) if doc_vector == "embed" else None
            head = texts_d[-len(sents) - 1]  # the title comes right before the sentences
            dplan.append((doc, add(head), [add(s) for s in sents]))
        plan.append((qi, dplan))
    emb = np.asarray(encode(texts), dtype=np.float32) if texts else np.zeros((0, 1), np.float32)
    return emb, plan


def features(encode: Callable[[list[str]], np.ndarray], items: Sequence[tuple[str, Sequence[Doc]]],
             contexts: list | None = None, doc_vector: str = "sentence_mean") -> list[np.ndarray]:
    """Feature matrix (sentences x features) of each ``(query, docs)`` item; ``encode`` embeds
    all distinct texts of all items in one call (unit-norm rows, e.g. :func:`~ragpress.core.models.embed_texts`).
    ``contexts`` (a list) receives each item's :class:`ItemContext` for :func:`round2_features`;
    ``doc_vector``: see :func:`document_texts`."""
    if doc_vector not in DOC_VECTORS:
        raise ConfigError(f"unknown doc_vector {doc_vector!r}: one of {', '.join(DOC_VECTORS)}")
    emb, plan = _embed_plan(encode, items, doc_vector)
    out = []
    for (query, docs), (qi, dplan) in zip(items, plan):
        q = emb[qi]
        qwords = _words(query)
        qlow = query.lower()
        doc_sim = np.array([float(_cos(q, _doc_vec(emb, d, sidx))) for d, _, sidx in dplan]) if dplan else np.zeros(0)
        order = np.argsort(-doc_sim, kind="stable")
        doc_rank = np.empty(len(dplan))
        doc_rank[order] = np.arange(len(dplan))
        bodies = [" ".join(s).lower() for _, s in docs]
        sent_words = [_words(s) for _, sents in docs for s in sents]
        sent_stems = [_stems(w) for w in sent_words]
        idf, unseen = _idf_table(sent_stems)
        q_stems = _stems(qwords)
        q_mass = _mass(q_stems, idf, unseen) or 1.0
        k0 = 0
        rows = []
        for i, ((title, sents), (_d, t, sidx)) in enumerate(zip(docs, dplan)):
            if not sidx:
                continue
            s_emb = emb[sidx]
            cs = _cos(q[None, :], s_emb)
            srank = np.empty(len(sidx))
            srank[np.argsort(-cs, kind="stable")] = np.arange(len(sidx))
            tl = (title or "").lower().strip()
            mentioned = [k for k in range(len(docs)) if k != i and tl and len(tl) > 2 and tl in bodies[k]]
            bridge = max((doc_sim[k] for k in mentioned), default=0.0)
            bridge_top = float(any(doc_rank[k] < 2 for k in mentioned))
            twords = _words(title or "")
            lex_t = len(qwords & twords) / max(1, len(twords))
            t_in_q = float(bool(tl) and tl in qlow)
            doc_max = float(cs.max())
            own, own_stems = sent_words[k0:k0 + len(sents)], sent_stems[k0:k0 + len(sents)]
            k0 += len(sents)
            doc_stems = frozenset().union(*own_stems)
            doc_cov = _mass(q_stems & doc_stems, idf, unseen) / q_mass
            doc_title_cov = _mass(q_stems & (doc_stems | _stems(twords)), idf, unseen) / q_mass
            for j, sent in enumerate(sents):
                sw = own[j]
                scal = [
                    cs[j], cs[j - 1] if j > 0 else 0.0, cs[j + 1] if j + 1 < len(sents) else 0.0,
                    doc_sim[i], float(_cos(q, emb[t])), srank[j] / max(1, len(sidx) - 1),
                    doc_rank[i] / max(1, len(dplan) - 1), float(doc_rank[i] < 2),
                    len(qwords & sw) / max(1, len(qwords)), lex_t, t_in_q, bridge, bridge_top,
                    float(j == 0), j / max(1, len(sents) - 1), cs[j] - doc_max, math.log1p(len(sent)),
                    _mass(q_stems & own_stems[j], idf, unseen) / q_mass, doc_cov, doc_title_cov,
                ]
                rows.append(scal)
        out.append(np.asarray(rows, dtype=np.float32).reshape(len(rows), len(SCALAR_FEATURES)))
        if contexts is not None:
            sidx_all = [k for _, _, sidx in dplan for k in sidx]
            dim = emb.shape[1]
            contexts.append(ItemContext(
                q=q, sent_emb=emb[sidx_all] if sidx_all else np.zeros((0, dim), np.float32),
                doc_of=np.array([i for i, (_, _, sidx) in enumerate(dplan) for _ in sidx], dtype=np.int64),
                titles=[(title or "").lower().strip() for title, _ in docs],
                title_emb=emb[[t for _, t, _ in dplan]] if dplan else np.zeros((0, dim), np.float32),
                sents_low=[s.lower() for _, sents in docs for s in sents],
                sent_stems=sent_stems, q_stems=q_stems, idf=idf, idf_unseen=unseen))
    return out


def _doc_vec(emb: np.ndarray, doc: int | None, sidx: list[int]) -> np.ndarray:
    """A document's unit vector: embedded whole, or the normalised mean of its sentences'."""
    if doc is not None:
        return emb[doc]
    if not sidx:
        return np.zeros(emb.shape[1], np.float32)
    v = emb[sidx].mean(0)
    return v / (np.linalg.norm(v) + 1e-9)


ROUND2_FEATURES = [
    "r1_logit", "r1_gap_top", "r1_doc_max", "r1_doc_rank", "r1_doc_top2", "r1_rank_in_doc",
    "ev_cos_other", "qe_cos", "title_in_evidence", "names_top_title", "title_cos_evidence",
    "resid_cov", "resid_share", "ev_bridge_words",
]
V3_ROUND2_FEATURES = ROUND2_FEATURES[:11]
EVIDENCE_K = 3  # first-round sentences that make up the evidence the second round reads


def round2_features(ctx: ItemContext, r1: np.ndarray) -> np.ndarray:
    """Features of each sentence given what the first round would select (``r1``: its logits).

    The evidence is the ``EVIDENCE_K`` best first-round sentences. A sentence's second-round
    features: its first-round logit, its gap to the best, its document's best logit and rank,
    its rank in its document; its similarity to the evidence of *other* documents and to the
    query plus evidence; whether its document's title is named in that evidence (the bridge:
    the second hop is about an entity named by the first) or the sentence names the title of
    one of the two best documents; the similarity of its title to that evidence."""
    n = len(r1)
    if n == 0:
        return np.zeros((0, len(ROUND2_FEATURES)), np.float32)
    nd = len(ctx.titles)
    doc_of = ctx.doc_of
    doc_max = np.full(nd, -1e9, np.float32)
    np.maximum.at(doc_max, doc_of, r1)
    present = doc_max > -1e9
    order = sorted(np.flatnonzero(present), key=lambda d: -doc_max[d])
    drank = np.zeros(nd)
    for k, d in enumerate(order):
        drank[d] = k
    top_docs = order[:2]
    srank = np.zeros(n)
    for d in order:
        idx = np.flatnonzero(doc_of == d)
        srank[idx[np.argsort(-r1[idx], kind="stable")]] = np.arange(len(idx)) / max(1, len(idx) - 1)
    ev = np.argsort(-r1, kind="stable")[:EVIDENCE_K]
    S = ctx.sent_emb
    sims = S @ S[ev].T  # n x k
    other = doc_of[:, None] != doc_of[ev][None, :]
    ev_cos_other = np.where(other, sims, -1.0).max(1)
    ev_cos_other[ev_cos_other <= -1.0] = 0.0
    qe = ctx.q + S[ev].sum(0)
    qe = qe / (np.linalg.norm(qe) + 1e-9)
    qe_cos = S @ qe
    ev_text = [(int(doc_of[e]), ctx.sents_low[e]) for e in ev]
    title_in_ev = np.array([float(len(t) > 2 and any(d != i and t in txt for d, txt in ev_text))
                            for i, t in enumerate(ctx.titles)])
    top_titles = [(d, ctx.titles[d]) for d in top_docs if len(ctx.titles[d]) > 2]
    names_top = np.array([float(any(d != doc_of[j] and t in ctx.sents_low[j] for d, t in top_titles))
                          for j in range(n)])
    ev_mean = S[ev].mean(0)
    tcos = ctx.title_emb @ ev_mean
    cols = [
        r1, r1 - r1.max(), doc_max[doc_of], drank[doc_of] / max(1, len(order) - 1),
        (drank[doc_of] < 2).astype(np.float32), srank, ev_cos_other, qe_cos, title_in_ev[doc_of],
        names_top, tcos[doc_of], *_residual_columns(ctx, ev),
    ]
    return np.stack(cols, 1).astype(np.float32)


def _residual_columns(ctx: ItemContext, ev: np.ndarray) -> list[np.ndarray]:
    """Per-hop coverage, lexically: the query's words the evidence does not contain yet are what
    the next hop must supply. Per sentence: the IDF share of those words it contains
    (``resid_cov``), the IDF share of the query they are (``resid_share``), and the IDF mass of
    the words it shares with the evidence of other documents beyond the query's (``ev_bridge_words``:
    it names what the first hop found)."""
    n = len(ctx.doc_of)
    idf, unseen, sw = ctx.idf, ctx.idf_unseen, ctx.sent_stems
    q_mass = _mass(ctx.q_stems, idf, unseen) or 1.0
    ev_words = frozenset().union(*(sw[e] for e in ev))
    resid = ctx.q_stems - ev_words
    r_mass = _mass(resid, idf, unseen)
    by_doc = {int(d): frozenset().union(*(sw[e] for e in ev if ctx.doc_of[e] != d)) - ctx.q_stems
              for d in set(ctx.doc_of.tolist())}
    cov = np.array([_mass(resid & w, idf, unseen) / r_mass if r_mass > 0 else 0.0 for w in sw], np.float32)
    bridge = np.array([_mass(w & by_doc[int(d)], idf, unseen) for w, d in zip(sw, ctx.doc_of)], np.float32)
    return [cov, np.full(n, r_mass / q_mass, np.float32), bridge]


def model_logit(model: dict, X: np.ndarray) -> np.ndarray:
    """The logit of a head stage stored in a card: ``{"kind": "logistic", "mean", "scale", "coef",
    "intercept"}``, ``{"kind": "mlp", "mean", "scale", "layers": [[W, b], ...]}`` (ReLU between
    layers, one output) or ``{"kind": "trees", ...}`` (see :func:`trees_logit`)."""
    if not len(X):
        return np.zeros(0, np.float32)
    kind = model.get("kind", "logistic")
    if kind == "trees":
        return trees_logit(model, X)
    h = (X - np.asarray(model["mean"], np.float32)) / np.asarray(model["scale"], np.float32)
    if kind == "logistic":
        return h @ np.asarray(model["coef"], np.float32) + float(model["intercept"])
    layers = model["layers"]
    for k, (w, bias) in enumerate(layers):
        h = h @ np.asarray(w, np.float32) + np.asarray(bias, np.float32)
        if k + 1 < len(layers):
            h = np.maximum(h, 0.0)
    return h[:, 0]


def trees_logit(model: dict, X: np.ndarray) -> np.ndarray:
    """The logit of a boosted tree ensemble stored in a card: ``baseline`` plus, per tree, the
    value of the leaf a row reaches. Tree ``t`` is given by equal-length node lists
    ``feature[t]``, ``threshold[t]``, ``left[t]``, ``right[t]``, ``value[t]``: node 0 is the root,
    a row goes left when ``X[feature] <= threshold``, and a node whose ``left`` is 0 is a leaf.
    All trees walk down together, one level a step, so the cost is ``depth`` numpy steps. The
    node arrays come from ``model["_arrays"]`` when :func:`compile_card` put them there."""
    feat, thr, left, right, value = model.get("_arrays") or _tree_arrays(model)
    X = np.asarray(X, np.float64)
    n, trees = len(X), np.arange(len(feat))[None, :]
    node = np.zeros((n, len(feat)), np.int64)
    rows = np.arange(n)[:, None]
    for _ in range(int(model["depth"])):
        go_left = X[rows, feat[trees, node]] <= thr[trees, node]
        nxt = np.where(go_left, left[trees, node], right[trees, node])
        node = np.where(left[trees, node] == 0, node, nxt)
    return (float(model["baseline"]) + value[trees, node].sum(1)).astype(np.float32)


def _tree_arrays(model: dict) -> tuple[np.ndarray, ...]:
    """A tree stage's node lists as (trees x nodes) arrays, shorter trees padded with leaves."""
    def pad(key: str, dtype) -> np.ndarray:
        rows = model[key]
        out = np.zeros((len(rows), max(map(len, rows))), dtype)
        for t, r in enumerate(rows):
            out[t, :len(r)] = r
        return out

    return (pad("feature", np.int64), pad("threshold", np.float64), pad("left", np.int64),
            pad("right", np.int64), pad("value", np.float64))


def compile_card(card: dict) -> dict:
    """The card with what scoring derives from it built once, for a scorer that keeps it: each
    tree stage's node arrays (``"_arrays"``) and the feature columns (``"_columns"``, see
    :func:`feature_columns`; a card of unknown features fails here). The file's card is left as
    it is."""
    out = {k: {**v, "_arrays": _tree_arrays(v)} if k in ("round1", "round2") and v and v.get("kind") == "trees"
           else v for k, v in card.items()}
    out["_columns"] = feature_columns(card)
    return out


def stages(card: dict) -> tuple[dict, dict | None]:
    """(first-round model, second-round model or None) of a card; a version-1 card is one
    logistic round."""
    if "round1" in card:
        return card["round1"], card.get("round2")
    return {"kind": "logistic", **{k: card[k] for k in ("mean", "scale", "coef", "intercept")}}, None


def head_logits(card: dict, feats: Sequence[np.ndarray], contexts: Sequence[ItemContext]) -> list[np.ndarray]:
    """Per item, the head's logit per sentence (before :func:`prior_shift`); each round scores
    the sentences of all items in one call."""
    if not len(feats):
        return []
    r1m, r2m = stages(card)
    c1, c2 = card.get("_columns") or feature_columns(card)
    feats = [x[:, c1] for x in feats]
    cuts = np.cumsum([len(x) for x in feats])[:-1]
    X = np.concatenate(feats)
    zs = np.split(model_logit(r1m, X), cuts)
    if r2m is None or not len(X):
        return zs
    X2 = np.concatenate([np.concatenate([x, round2_features(ctx, z)[:, c2]], 1)
                         for x, z, ctx in zip(feats, zs, contexts)])
    return np.split(model_logit(r2m, X2), cuts)


def feature_columns(card: dict) -> tuple[list[int], list[int]]:
    """Where the features a card was trained on (its ``features`` and ``round2_features`` names;
    cards before version 4 lack the lexical ones) sit in :func:`features`' and
    :func:`round2_features`' columns. A name this code does not compute is a :class:`ConfigError`."""
    names1 = card.get("features") or V3_FEATURES
    names2 = card.get("round2_features") or V3_ROUND2_FEATURES
    unknown = [f for f in names1 if f not in SCALAR_FEATURES] + [f for f in names2 if f not in ROUND2_FEATURES]
    if unknown:
        raise ConfigError(f"EXIT head card uses features this ragpress does not compute: {unknown}")
    return [SCALAR_FEATURES.index(f) for f in names1], [ROUND2_FEATURES.index(f) for f in names2]


class HeadScorer:
    """Scores sentences with the trained head: ``score(query, docs) -> [[P(useful)] per sentence]``."""

    def __init__(self, weights: str | Path | None = None, embedder: str | None = None):
        path = Path(weights) if weights else WEIGHTS
        if not path.is_file():
            raise ConfigError(f"EXIT head weights {path} not found: train them with `ragpress train exit`")
        card = json.loads(path.read_text(encoding="utf-8"))
        if card.get("embedder") != resolve_model_id("embedder", embedder):
            raise ConfigError(
                f"EXIT head {path.name} was trained on {card.get('embedder')!r} features, not "
                f"{resolve_model_id('embedder', embedder)!r}: retrain with `ragpress train exit --embedder ...`"
            )
        self.card = compile_card(card)  # a card of unknown features fails here, not mid-request
        self.shift = prior_shift(card)
        self.cover_top_docs = int(card.get("cover_top_docs", 0))
        self.doc_vector = card.get("doc_vector", "embed")  # cards before version 3 embedded documents whole
        if self.doc_vector not in DOC_VECTORS:
            raise ConfigError(f"EXIT head {path.name}: unknown doc_vector {self.doc_vector!r} "
                              f"(one of {', '.join(DOC_VECTORS)})")
        self.embedder = embedder
        load_embedder(embedder)  # load now: a bad embedder fails here, not mid-request
        self.model_id = _card_id(path)

    def score_batch(self, items: Sequence[tuple[str, Sequence[Doc]]], memo=None) -> list[list[list[float]]]:
        """Per item, per document, per sentence: P(useful). ``memo`` (a compressor's
        :meth:`~ragpress.core.compressor.Compressor.memo`) lets a segment cache keep the embeddings."""
        contexts: list[ItemContext] = []
        feats = features(lambda texts: embed_texts(texts, self.embedder, memo=memo), items, contexts,
                         self.doc_vector)
        out = []
        for (_, docs), z in zip(items, head_logits(self.card, feats, contexts)):
            p = _sigmoid(z + self.shift)
            per_doc, k = [], 0
            for _, sents in docs:
                per_doc.append([float(v) for v in p[k:k + len(sents)]])
                k += len(sents)
            out.append(per_doc)
        return out

    def precompute(self, docs: Sequence[Doc], memo) -> None:
        """Embed the query-independent texts of ``docs`` through ``memo`` (what
        :meth:`score_batch` reads back from the segment cache; only the query is left)."""
        embed_texts(list(dict.fromkeys(t for title, sents in docs
                                       for t in document_texts(title, sents, self.doc_vector))),
                    self.embedder, memo=memo)

    def score(self, query: str, docs: Sequence[Doc]) -> list[list[float]]:
        return self.score_batch([(query, docs)])[0]

def cover_order(scores: np.ndarray, doc_of: np.ndarray, top_docs: int) -> np.ndarray:
    """Scores re-ranked so that a budget keeps the best sentence of each of the ``top_docs`` best
    documents (by their best sentence) before anything else (per-hop coverage: a multi-hop
    answer needs a sentence of each hop's paragraph); the rest keep their order."""
    scores = np.asarray(scores, dtype=np.float64)
    if top_docs <= 0 or not len(scores):
        return scores
    best: dict[int, int] = {}
    for j, d in enumerate(doc_of):
        if int(d) not in best or scores[j] > scores[best[int(d)]]:
            best[int(d)] = j
    lead = sorted(best.values(), key=lambda j: -scores[j])[:top_docs]
    out = scores.copy()
    out[lead] += (scores.max() - scores.min()) + 1.0
    return out


def prior_shift(card: dict) -> float:
    """Logit offset that turns the head's P(useful) into P(useful) under balanced classes.

    The head is fit on every sentence of its training questions, about 1 supporting sentence in
    18, so its raw probabilities carry that prior and EXIT's 0.5 threshold would keep almost
    nothing. EXIT's classifier is trained on roughly balanced positives and negatives; with
    ``"prior": "balanced"`` in the card, scores are moved to that prior by the standard
    correction ``logit + log(n_neg / n_pos)``. Rankings, and so every ratio or token budget, are
    unchanged; only the threshold mode sees the difference."""
    if card.get("prior") != "balanced":
        return 0.0
    t = card["train"]
    return math.log((t["rows"] - t["positives"]) / t["positives"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@functools.lru_cache(maxsize=4)
def _cached_scorer(weights: str | None, embedder: str | None) -> HeadScorer:
    return HeadScorer(weights, embedder)


def head_model_id(config: Any = None) -> str:
    """The model id of the head an EXIT config names (read from its card; no model is loaded):
    it goes into cache keys, so retraining the head invalidates cached results."""
    return _card_id(Path(getattr(config, "head_weights", None) or WEIGHTS))


def _card_id(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"exit-head:missing:{path}"
    return _card_id_of(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _card_id_of(path: str, mtime_ns: int, size: int) -> str:
    """:func:`_card_id` of one version of a card file (asked for on every request, read once)."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
        digest = hashlib.sha256(json.dumps([card.get("coef"), card.get("intercept"), card.get("prior"),
                                            card.get("round1"), card.get("round2"),
                                            card.get("cover_top_docs"), card.get("doc_vector"),
                                            card.get("features"), card.get("round2_features")]
                                           ).encode()).hexdigest()[:12]
        return f"exit-head:{card.get('version')}:{digest}+{card.get('embedder')}"
    except (OSError, ValueError):
        return f"exit-head:missing:{path}"


def load_head_scorer(config: Any = None) -> HeadScorer:
    """The process-wide head scorer for an EXIT config (fields ``head_weights``, ``embedder`` if present)."""
    weights = getattr(config, "head_weights", None)
    embedder = getattr(config, "embedder", None)
    return _cached_scorer(str(weights) if weights else None, embedder)
