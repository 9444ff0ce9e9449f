"""EXIT's offline default scorer: a small context-aware sentence classifier on frozen MiniLM features.

EXIT (Hwang et al., 2024) fine-tunes Gemma-2B to answer "is this sentence useful for the question,
given its document?". Those weights are not to be had offline, and SmolLM2-135M zero-shot barely
separates relevant from irrelevant sentences, so ragpress trains this head itself, with EXIT's
labels and sampling, on the *train* files only:

* positives: gold supporting sentences;
* hard negatives: the other sentences of supporting paragraphs;
* random negatives: sentences of distractor paragraphs (all of them by default, or ``neg_per_pos``
  per positive).

Features are those of a sentence *in its context* (the "context-aware" of EXIT), all from one
MiniLM pass over the query, the sentences, the titles and the documents of a request:

* similarity of the query to the sentence, its two neighbours, its document and its title;
* the sentence's rank within its document and its document's rank within the request;
* lexical overlap of the query's content words with the sentence / the title;
* bridge evidence for multi-hop questions: whether the document's title is mentioned in another
  document, weighted by that document's similarity to the query (HotpotQA's second hop is about
  an entity named in the first hop's paragraph, not about the question's words);
* position and length of the sentence (lead sentences define the entity).

Measured on the train file with 5-fold cross-validation grouped by question (``ragpress train exit``
prints it): these 17 features reach 0.90 AUC and keep 89 % of supporting sentences in the top
30 % of each request, against 72 % for query-sentence cosine alone; adding the 384 element-wise
products of query and sentence embeddings overfits the 62 training questions (0.84 AUC), and
taking every distractor sentence as a negative beats sampling 3 per positive (0.90 vs 0.88 AUC),
so the shipped head does the former.

The model is a logistic regression (weights + feature scaling in one small JSON that ships in the
package, with the hash of the training data and the command that made it):
``ragpress train exit`` reproduces it on the same data (the fit is deterministic for a seed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
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
]


def _words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1)  # embeddings are L2-normalised


def document_texts(title: str | None, sents: Sequence[str]) -> list[str]:
    """The texts :func:`features` embeds for one document, none of them query-dependent: the
    document (title + body), its title (or its body's start), and each sentence."""
    body = " ".join(sents)
    return [(f"{title}. " if title else "") + body, title or body[:200], *sents]


def features(encode: Callable[[list[str]], np.ndarray], items: Sequence[tuple[str, Sequence[Doc]]]) -> list[np.ndarray]:
    """Feature matrix (sentences x features) of each ``(query, docs)`` item; ``encode`` embeds
    all texts of all items in one call (unit-norm rows, e.g. :func:`~ragpress.core.models.embed_texts`)."""
    texts: list[str] = []

    def add(t: str) -> int:
        texts.append(t)
        return len(texts) - 1

    plan = []
    for query, docs in items:
        qi = add(query)
        dplan = []
        for title, sents in docs:
            doc, head, *_ = document_texts(title, sents)
            dplan.append((add(doc), add(head), [add(s) for s in sents]))
        plan.append((qi, dplan))
    emb = np.asarray(encode(texts), dtype=np.float32)
    out = []
    for (query, docs), (qi, dplan) in zip(items, plan):
        q = emb[qi]
        qwords = _words(query)
        qlow = query.lower()
        doc_sim = np.array([float(_cos(q, emb[d])) for d, _, _ in dplan]) if dplan else np.zeros(0)
        order = np.argsort(-doc_sim, kind="stable")
        doc_rank = np.empty(len(dplan))
        doc_rank[order] = np.arange(len(dplan))
        bodies = [" ".join(s).lower() for _, s in docs]
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
            for j, sent in enumerate(sents):
                sw = _words(sent)
                scal = [
                    cs[j], cs[j - 1] if j > 0 else 0.0, cs[j + 1] if j + 1 < len(sents) else 0.0,
                    doc_sim[i], float(_cos(q, emb[t])), srank[j] / max(1, len(sidx) - 1),
                    doc_rank[i] / max(1, len(dplan) - 1), float(doc_rank[i] < 2),
                    len(qwords & sw) / max(1, len(qwords)), lex_t, t_in_q, bridge, bridge_top,
                    float(j == 0), j / max(1, len(sents) - 1), cs[j] - doc_max, math.log1p(len(sent)),
                ]
                rows.append(scal)
        out.append(np.asarray(rows, dtype=np.float32).reshape(len(rows), len(SCALAR_FEATURES)))
    return out


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
        self.card = card
        self.mean = np.asarray(card["mean"], np.float32)
        self.scale = np.asarray(card["scale"], np.float32)
        self.coef = np.asarray(card["coef"], np.float32)
        self.bias = float(card["intercept"]) + prior_shift(card)
        self.embedder = embedder
        load_embedder(embedder)  # load now: a bad embedder fails here, not mid-request
        self.model_id = _card_id(path)

    def score_batch(self, items: Sequence[tuple[str, Sequence[Doc]]], memo=None) -> list[list[list[float]]]:
        """Per item, per document, per sentence: P(useful). ``memo`` (a compressor's
        :meth:`~ragpress.core.compressor.Compressor.memo`) lets a segment cache keep the embeddings."""
        feats = features(lambda texts: embed_texts(texts, self.embedder, memo=memo), items)
        out = []
        for (_, docs), x in zip(items, feats):
            p = _sigmoid(((x - self.mean) / self.scale) @ self.coef + self.bias) if len(x) else np.zeros(0)
            per_doc, k = [], 0
            for _, sents in docs:
                per_doc.append([float(v) for v in p[k:k + len(sents)]])
                k += len(sents)
            out.append(per_doc)
        return out

    def precompute(self, docs: Sequence[Doc], memo) -> None:
        """Embed the query-independent texts of ``docs`` through ``memo`` (what
        :meth:`score_batch` reads back from the segment cache; only the query is left)."""
        embed_texts([t for title, sents in docs for t in document_texts(title, sents)], self.embedder, memo=memo)

    def score(self, query: str, docs: Sequence[Doc]) -> list[list[float]]:
        return self.score_batch([(query, docs)])[0]


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
        card = json.loads(path.read_text(encoding="utf-8"))
        digest = hashlib.sha256(json.dumps([card.get("coef"), card.get("intercept"),
                                            card.get("prior")]).encode()).hexdigest()[:12]
        return f"exit-head:{card.get('version')}:{digest}+{card.get('embedder')}"
    except (OSError, ValueError):
        return f"exit-head:missing:{path}"


def load_head_scorer(config: Any = None) -> HeadScorer:
    """The process-wide head scorer for an EXIT config (fields ``head_weights``, ``embedder`` if present)."""
    weights = getattr(config, "head_weights", None)
    embedder = getattr(config, "embedder", None)
    return _cached_scorer(str(weights) if weights else None, embedder)


# ----------------------------------------------------------------------------- training
TRAIN_FILES = {
    "hotpotqa": "hotpotqa/hotpotqa_train_hipporag100.jsonl",  # sentence-level supporting facts
    "musique": "musique/musique_train_hipporag100.jsonl",  # per-hop answers + supporting paragraph
}


def load_train_records(path: Path, limit: int | None = None):
    """Training records of a file. MuSiQue labels paragraphs, not sentences: the supporting
    sentences of a hop are those of its supporting paragraph that state the hop's answer
    (``question_decomposition``); a supporting paragraph with no such sentence stays unlabelled."""
    from ragpress.core.sentences import split_sentences
    from ragpress.qa import load_records, normalize_answer

    records = load_records(path, limit)
    if "musique" not in path.name:
        return records
    raws = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                raws[str(r["id"])] = r
    for rec in records:
        raw = raws[rec.id]
        if len(rec.passages) != len(raw["passages"]):
            raise ConfigError(f"{path}: record {rec.id} has empty passages; cannot map MuSiQue's indices")
        sup = []
        for hop in raw.get("question_decomposition") or []:
            pi, ans = hop.get("paragraph_support_idx"), normalize_answer(str(hop.get("answer") or ""))
            if pi is None or not ans or not 0 <= pi < len(rec.passages):
                continue
            text = rec.passages[pi].text
            sup += [(pi, a, b) for a, b in split_sentences(text) if f" {ans} " in f" {normalize_answer(text[a:b])} "]
        rec.supporting = sorted(set(sup))
    return records


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def labelled_items(records) -> tuple[list[tuple[str, list[Doc]]], list[list[list[int]]]]:
    """(query, docs split by punkt) per record, and a label per sentence: 1 when the punkt
    sentence overlaps a gold supporting sentence by at least half of the shorter of the two,
    0 otherwise, -1 (left out of training and scoring) in a supporting paragraph that has no
    gold sentence (MuSiQue hops whose answer no sentence states verbatim)."""
    from ragpress.core.sentences import split_sentences

    items, labels = [], []
    for rec in records:
        docs, lab = [], []
        for pi, p in enumerate(rec.passages):
            spans = split_sentences(p.text)
            gold = [(a, b) for q, a, b in rec.supporting if q == pi]
            docs.append((p.title, [p.text[a:b] for a, b in spans]))
            if not gold and pi in rec.supporting_passages:
                lab.append([-1] * len(spans))
                continue
            lab.append([int(any(min(b, gb) - max(a, ga) >= 0.5 * min(b - a, gb - ga) for ga, gb in gold))
                        for a, b in spans])
        items.append((rec.query, docs))
        labels.append(lab)
    return items, labels


def sample_rows(labels: list[list[list[int]]], supporting: list[set[int]], neg_per_pos: float | None,
                rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """EXIT's sampling: all positives, all hard negatives (other sentences of supporting
    paragraphs), random negatives from distractor paragraphs (``neg_per_pos`` per positive;
    None: all of them)."""
    rows = []
    for r, lab in enumerate(labels):
        pos, hard, rand = [], [], []
        for d, sl in enumerate(lab):
            for s, y in enumerate(sl):
                if y < 0:
                    continue
                if y:
                    pos.append((r, d, s, 1))
                elif d in supporting[r]:
                    hard.append((r, d, s, 0))
                else:
                    rand.append((r, d, s, 0))
        k = len(rand) if neg_per_pos is None else min(len(rand), int(round(neg_per_pos * max(1, len(pos)))))
        picked = rng.choice(len(rand), size=k, replace=False) if k else []
        rows += pos + hard + [rand[i] for i in sorted(picked)]
    return rows


def train_head(data_dir: str | Path, out: str | Path | None = None, embedder: str | None = None,
               neg_per_pos: float | None = None, cs: Sequence[float] = (0.01, 0.05, 0.2), seed: int = 0,
               limit: int | None = None, progress: bool = True,
               datasets: Sequence[str] = ("hotpotqa",)) -> dict:
    """Train the head on the train files of ``datasets`` under ``data_dir`` and write its JSON
    card to ``out``.

    The regularisation ``C`` is picked from ``cs`` by 5-fold cross-validation grouped by question
    (AUC over all sentences of the held-out questions); the card records every fold's figure.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from tqdm.auto import tqdm

    unknown = [d for d in datasets if d not in TRAIN_FILES]
    if unknown or not datasets:
        raise ConfigError(f"unknown training set(s) {unknown}; choose from {', '.join(TRAIN_FILES)}")
    data_dir = Path(data_dir)
    files = [data_dir / TRAIN_FILES[d] for d in datasets]
    for f in files:
        if "train" not in f.name:
            raise ConfigError(f"{f} is not a train file: EXIT's head trains only on *train* files")
    t0 = time.perf_counter()
    records = [r for f in files for r in load_train_records(f, limit)]
    items, labels = labelled_items(records)
    feats: list[np.ndarray] = []
    for k in tqdm(range(0, len(items), 8), desc="EXIT head features", disable=not progress):
        feats += features(lambda texts: embed_texts(texts, embedder), items[k:k + 8])
    sup = [set(r.supporting_passages) for r in records]
    ys = [np.concatenate([np.asarray(d, dtype=np.int64) for d in lab]) for lab in labels]  # -1: unlabelled

    def fit(idx, c):
        rows = sample_rows([labels[i] for i in idx], [sup[i] for i in idx], neg_per_pos,
                           np.random.default_rng(seed))
        offs = [np.cumsum([0] + [len(d) for d in labels[i]]) for i in idx]
        X = np.stack([feats[idx[r]][offs[r][d] + s] for r, d, s, _ in rows])
        y = np.array([t for *_, t in rows])
        mean, scale = X.mean(0), X.std(0) + 1e-6
        return LogisticRegression(C=c, max_iter=5000).fit((X - mean) / scale, y), mean, scale, rows, y

    qs = np.arange(len(records))
    folds = list(GroupKFold(n_splits=min(5, len(qs))).split(qs, groups=qs))
    cv: dict[float, list[float]] = {}
    for c in cs:
        for tr, te in folds:
            clf, mean, scale, *_ = fit(tr, c)
            yy = np.concatenate([ys[i] for i in te])
            pp = np.concatenate([clf.decision_function((feats[i] - mean) / scale) for i in te])
            pp, yy = pp[yy >= 0], yy[yy >= 0]
            cv.setdefault(c, []).append(float(roc_auc_score(yy, pp)) if 0 < yy.sum() < len(yy) else 0.5)
    best = max(cs, key=lambda c: (np.mean(cv[c]), -c))
    clf, mean, scale, rows, y = fit(qs, best)
    card = {
        "version": "1",
        "embedder": resolve_model_id("embedder", embedder),
        "features": SCALAR_FEATURES,
        "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
        "coef": clf.coef_[0].round(6).tolist(), "intercept": round(float(clf.intercept_[0]), 6),
        "prior": "balanced",  # scores reported under balanced classes (see prior_shift)
        "train": {
            "files": [str(f.relative_to(data_dir)) for f in files],
            "sha256": {str(f.relative_to(data_dir)): _sha256(f) for f in files},
            "records": len(records), "rows": len(rows), "positives": int(y.sum()),
            "neg_per_pos": neg_per_pos, "C": best, "seed": seed,
            "cv_auc": {str(c): round(float(np.mean(v)), 4) for c, v in cv.items()},
            "cv_auc_folds": [round(v, 4) for v in cv[best]],
            "seconds": round(time.perf_counter() - t0, 1),
            "command": "ragpress train exit" + (f" --datasets {','.join(datasets)}" if list(datasets) != ["hotpotqa"]
                                                else "") + (f" --limit {limit}" if limit else ""),
        },
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(card, indent=1), encoding="utf-8")
        tmp.replace(out)
        _cached_scorer.cache_clear()
    return card
