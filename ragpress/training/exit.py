"""Training of EXIT's offline sentence classifier (``ragpress train exit``).

Builds labelled items from the *train* files (HotpotQA and 2Wiki sentence-level supporting facts;
MuSiQue per-hop answers inside supporting paragraphs), samples rows with EXIT's scheme, picks the
regularisation by leave-one-dataset-out cross-validation (train on two datasets, score the third:
the closest stand-in for a user's unseen data) and writes the head's JSON card
(read by :class:`ragpress.compressors.exit_head.HeadScorer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragpress.compressors.exit_head import (
    ROUND2_FEATURES,
    SCALAR_FEATURES,
    Doc,
    ItemContext,
    _cached_scorer,
    cover_order,
    feature_columns,
    features,
    head_logits,
    model_logit,
    round2_features,
)
from ragpress.core.errors import ConfigError
from ragpress.core.models import embed_texts, resolve_model_id

TRAIN_FILES = {  # each train sample whole: 100 questions (see shared/data/train/PROVENANCE.md)
    "hotpotqa": ["hotpotqa/hotpotqa_train_hipporag100.jsonl",  # sentence-level supporting facts
                 "train/hotpotqa_train_hipporag100_rest38.jsonl"],
    "musique": ["musique/musique_train_hipporag100.jsonl",  # per-hop answers + supporting paragraph
                "train/musique_train_hipporag100_rest32.jsonl"],
    "2wiki": ["train/2wikimultihopqa_train_raglab100.jsonl"],  # sentence-level supporting facts
}
DEFAULT_DATASETS = ("hotpotqa", "musique", "2wiki")


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


@dataclass
class TrainSet:
    """Features, second-round contexts, labels (-1: unlabelled) and document lengths of every
    training question."""

    records: list
    feats: list[np.ndarray]
    contexts: list[ItemContext]
    ys: list[np.ndarray]
    labels: list[list[list[int]]]
    lengths: list[np.ndarray]  # characters per sentence (the budget proxy)
    files: list[Path]
    doc_vector: str = "sentence_mean"
    datasets: list[str] = dataclasses.field(default_factory=list)  # each question's train set

    def subset(self, keep) -> TrainSet:
        """The questions ``keep`` (indices) as a train set of their own."""
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return dataclasses.replace(self, records=pick(self.records), feats=pick(self.feats),
                                   contexts=pick(self.contexts), ys=pick(self.ys), labels=pick(self.labels),
                                   lengths=pick(self.lengths),
                                   datasets=pick(self.datasets) if self.datasets else [])


def build_trainset(data_dir: str | Path, datasets: Sequence[str] = DEFAULT_DATASETS, embedder: str | None = None,
                   limit: int | None = None, progress: bool = True, doc_vector: str = "sentence_mean") -> TrainSet:
    """Every train file of ``datasets`` under ``data_dir``, labelled and featurised (one MiniLM
    pass, each distinct text embedded once per batch of questions)."""
    from tqdm.auto import tqdm

    unknown = [d for d in datasets if d not in TRAIN_FILES]
    if unknown or not datasets:
        raise ConfigError(f"unknown training set(s) {unknown}; choose from {', '.join(TRAIN_FILES)}")
    data_dir = Path(data_dir)
    files = [data_dir / f for d in datasets for f in TRAIN_FILES[d]]
    for f in files:
        if "train" not in f.name:
            raise ConfigError(f"{f} is not a train file: EXIT's head trains only on *train* files")
    records, names = [], []
    for d in datasets:
        for f in TRAIN_FILES[d]:
            got = load_train_records(data_dir / f, limit)
            records += got
            names += [d] * len(got)
    items, labels = labelled_items(records)
    feats: list[np.ndarray] = []
    contexts: list[ItemContext] = []
    for k in tqdm(range(0, len(items), 8), desc="EXIT head features", disable=not progress):
        feats += features(lambda texts: embed_texts(texts, embedder), items[k:k + 8], contexts, doc_vector)
    ys = [np.concatenate([np.asarray(d, dtype=np.int64) for d in lab]) if lab else np.zeros(0, np.int64)
          for lab in labels]
    lengths = [np.array([len(s) + 1 for _, sents in docs for s in sents], np.float32) for _, docs in items]
    return TrainSet(records, feats, contexts, ys, labels, lengths, files, doc_vector, names)


TREES = {"learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40, "l2_regularization": 1.0}


def _fit(kind: str, X: np.ndarray, y: np.ndarray, c: float, seed: int) -> dict:
    """One head stage fitted on standardised rows, as a card entry (see ``model_logit``); for
    ``trees`` (gradient-boosted trees on the raw rows, :data:`TREES`) ``c`` is the number of trees."""
    if kind == "trees":
        return _fit_trees(X, y, int(c), seed)
    mean, scale = X.mean(0), X.std(0) + 1e-6
    Z = (X - mean) / scale
    entry: dict = {"kind": kind, "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist()}
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=5000).fit(Z, y)
        entry.update(coef=clf.coef_[0].round(6).tolist(), intercept=round(float(clf.intercept_[0]), 6))
    elif kind == "mlp":
        from sklearn.neural_network import MLPClassifier

        clf = MLPClassifier(hidden_layer_sizes=(32,), alpha=c, max_iter=300, early_stopping=True,
                            random_state=seed).fit(Z, y)
        entry["layers"] = [[w.round(6).tolist(), b.round(6).tolist()] for w, b in zip(clf.coefs_, clf.intercepts_)]
    else:
        raise ConfigError(f"unknown head kind {kind!r}: logistic, mlp or trees")
    entry["C" if kind == "logistic" else "alpha"] = c
    return entry


def _fit_trees(X: np.ndarray, y: np.ndarray, n_trees: int, seed: int) -> dict:
    """Gradient-boosted trees (sklearn's histogram GBDT, no early stopping, so the fit is
    deterministic) exported node by node for :func:`~ragpress.compressors.exit_head.trees_logit`,
    which needs no sklearn at inference (leaf values already carry the learning rate)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(max_iter=n_trees, early_stopping=False, random_state=seed, **TREES).fit(X, y)
    entry: dict = {"kind": "trees", "n_trees": n_trees, **TREES,
                   "baseline": round(float(np.ravel(clf._baseline_prediction)[0]), 8),
                   "feature": [], "threshold": [], "left": [], "right": [], "value": []}
    depth = 0
    for (tree,) in clf._predictors:  # one tree per iteration for a binary task
        nodes = tree.nodes
        leaf = nodes["is_leaf"].astype(bool)
        entry["feature"].append([0 if lf else int(f) for f, lf in zip(nodes["feature_idx"], leaf)])
        entry["threshold"].append([0.0 if lf else float(t) for t, lf in zip(nodes["num_threshold"], leaf)])
        entry["left"].append([0 if lf else int(v) for v, lf in zip(nodes["left"], leaf)])
        entry["right"].append([0 if lf else int(v) for v, lf in zip(nodes["right"], leaf)])
        entry["value"].append([round(float(v), 8) if lf else 0.0 for v, lf in zip(nodes["value"], leaf)])
        depth = max(depth, int(nodes["depth"].max()))
    entry["depth"] = depth
    return entry


def _stack(ts: TrainSet, idx, extra=None) -> tuple[np.ndarray, np.ndarray]:
    X = [np.concatenate([ts.feats[i], extra[i]], 1) if extra is not None else ts.feats[i] for i in idx]
    y = [ts.ys[i] for i in idx]
    X, y = np.concatenate(X), np.concatenate(y)
    return X[y >= 0], y[y >= 0]


def fit_head(ts: TrainSet, idx: np.ndarray, rounds: int = 2, kind: str = "logistic", c1: float = 0.01,
             c2: float = 0.01, seed: int = 0, inner_folds: int = 5, feature_names: Sequence[str] | None = None,
             round2_names: Sequence[str] | None = None) -> dict:
    """Fit the head's stages on the questions ``idx``, on the named first- and second-round
    features (default: all of :data:`SCALAR_FEATURES` / :data:`ROUND2_FEATURES`; the names go
    into the returned card). The second round learns from first-round logits that are out of
    fold (each question scored by a first round that never saw it), as it will meet them at
    inference."""
    from sklearn.model_selection import GroupKFold

    idx = np.asarray(idx)
    names = {"features": list(feature_names or SCALAR_FEATURES),
             "round2_features": list(round2_names or ROUND2_FEATURES) if rounds >= 2 else []}
    col1, col2 = feature_columns(names)
    ts = dataclasses.replace(ts, feats=[x[:, col1] for x in ts.feats])
    r1 = _fit("logistic", *_stack(ts, idx), c1, seed)
    card = {**names, "round1": r1}
    if rounds >= 2:
        oof: dict[int, np.ndarray] = {}
        for tr, te in GroupKFold(n_splits=min(inner_folds, len(idx))).split(idx, groups=idx):
            m = _fit("logistic", *_stack(ts, idx[tr]), c1, seed)
            for i in idx[te]:
                oof[int(i)] = model_logit(m, ts.feats[i])
        extra = {int(i): round2_features(ts.contexts[i], oof[int(i)])[:, col2] for i in idx}
        card["round2"] = _fit(kind, *_stack(ts, idx, extra), c2, seed)
    return card


def budget_kept(scores: np.ndarray, lengths: np.ndarray, ratio: float = 0.3, doc_of: np.ndarray | None = None,
                cover: int = 0) -> np.ndarray:
    """Which sentences the best ones fill ``ratio`` of the characters with: a cheap stand-in for
    the benchmark's ratio budget (``cover``: the best sentence of each of the ``cover`` best
    documents goes first, as :func:`cover_order` does)."""
    if cover and doc_of is not None:
        scores = cover_order(scores, doc_of, cover)
    kept = np.zeros(len(scores), bool)
    used, target = 0.0, ratio * lengths.sum()
    for j in np.argsort(-scores, kind="stable"):
        if used + lengths[j] <= target:
            kept[j] = True
            used += lengths[j]
    return kept


def budget_recall(scores: np.ndarray, y: np.ndarray, lengths: np.ndarray, ratio: float = 0.3,
                  doc_of: np.ndarray | None = None, cover: int = 0,
                  kept: np.ndarray | None = None) -> tuple[float, float]:
    """(share of supporting sentences kept, 1 if all are) under :func:`budget_kept` (or ``kept``)."""
    pos = y == 1
    if not pos.any():
        return float("nan"), float("nan")
    kept = budget_kept(scores, lengths, ratio, doc_of, cover) if kept is None else kept
    r = kept[pos].mean()
    return float(r), float(r == 1.0)


def answer_kept(record, scores: np.ndarray, lengths: np.ndarray, ratio: float = 0.3,
                doc_of: np.ndarray | None = None, cover: int = 0, kept: np.ndarray | None = None) -> float:
    """1.0 when the answer survives in the sentences :func:`budget_kept` keeps (or ``kept``), 0.0
    when not, NaN where the benchmark does not count it (a yes/no answer, or none in the full
    context): the dev benchmark's answer recall, computed on a train question."""
    from ragpress.core.sentences import split_sentences
    from ragpress.qa import answer_in, answerable, normalize_answer

    sents = [p.text[a:b] for p in record.passages for a, b in split_sentences(p.text)]
    if len(sents) != len(scores) or not answerable(record) \
            or not answer_in(record.answers, normalize_answer(" ".join(sents))):
        return float("nan")
    kept = budget_kept(scores, lengths, ratio, doc_of, cover) if kept is None else kept
    return float(answer_in(record.answers, normalize_answer(" ".join(s for s, k in zip(sents, kept) if k))))


def cross_validate(ts: TrainSet, rounds: int = 2, kind: str = "logistic", c1: float = 0.01, c2: float = 0.01,
                   folds: int = 5, seed: int = 0, ratios: Sequence[float] = (0.3, 0.15), cover: int = 0,
                   by: Sequence[str] | None = None, feature_names: Sequence[str] | None = None,
                   round2_names: Sequence[str] | None = None, split: str = "question") -> dict:
    """Cross-validation of a head configuration on the train set: AUC over held-out sentences,
    and supporting-sentence recall / all-kept rate / answers kept (:func:`answer_kept`) at
    character ratios, overall and per value of ``by`` (one label per question; default: its train
    set), with ``macro:`` the mean over those values. ``split="question"``: ``folds``-fold grouped by question (pooled); ``"dataset"``:
    leave one dataset out (fit on the others, score the one left out, for each). ``feature_names``
    / ``round2_names``: a subset of the features to fit on (see :func:`fit_head`)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

    qs = np.arange(len(ts.records))
    if by is None and ts.datasets:
        by = ts.datasets
    if split == "dataset":
        if not ts.datasets or len(set(ts.datasets)) < 2:
            raise ConfigError("leave-one-dataset-out cross-validation needs questions of at least two train sets")
        splits = LeaveOneGroupOut().split(qs, groups=ts.datasets)
    elif split == "question":
        splits = GroupKFold(n_splits=min(folds, len(qs))).split(qs, groups=qs)
    else:
        raise ConfigError(f"unknown split {split!r}: question or dataset")
    aucs, per_q = [], {r: [] for r in ratios}
    qids: list[int] = []
    for tr, te in splits:
        card = fit_head(ts, tr, rounds, kind, c1, c2, seed, feature_names=feature_names, round2_names=round2_names)
        zs = head_logits(card, [ts.feats[i] for i in te], [ts.contexts[i] for i in te])
        yy = np.concatenate([ts.ys[i] for i in te])
        pp = np.concatenate(zs)
        m = yy >= 0
        aucs.append(float(roc_auc_score(yy[m], pp[m])) if 0 < yy[m].sum() < m.sum() else 0.5)
        for i, z in zip(te, zs):
            qids.append(int(i))
            for r in ratios:
                kept = budget_kept(z, ts.lengths[i], r, ts.contexts[i].doc_of, cover)
                per_q[r].append((*budget_recall(z, ts.ys[i], ts.lengths[i], kept=kept),
                                 answer_kept(ts.records[i], z, ts.lengths[i], kept=kept)))
    out = {"split": split, "auc": round(float(np.mean(aucs)), 4), "auc_folds": [round(a, 4) for a in aucs]}
    labels = sorted(set(by)) if by is not None else []
    for r in ratios:
        for lab in [None, *labels]:
            arr = np.array([v for q, v in zip(qids, per_q[r]) if lab is None or by[q] == lab])
            pre = "" if lab is None else f"{lab}:"
            for key, col in (("sent_recall", 0), ("all_kept", 1), ("answer_kept", 2)):
                got = arr[~np.isnan(arr[:, col]), col]
                out[f"{pre}{key}@{r}"] = round(float(got.mean()), 4) if len(got) else None
        if labels:
            for key in ("sent_recall", "all_kept", "answer_kept"):
                vals = [v for lab in labels if (v := out[f"{lab}:{key}@{r}"]) is not None]
                out[f"macro:{key}@{r}"] = round(float(np.mean(vals)), 4) if vals else None
    return out


def train_head(data_dir: str | Path, out: str | Path | None = None, embedder: str | None = None,
               rounds: int = 2, kind: str = "trees", c1s: Sequence[float] = (0.01, 0.1, 1.0),
               c2s: Sequence[float] | None = None, cover_top_docs: int = 2, seed: int = 0,
               limit: int | None = None, progress: bool = True,
               datasets: Sequence[str] = DEFAULT_DATASETS, trainset: TrainSet | None = None,
               select: str = "lodo") -> dict:
    """Train the head on the train files of ``datasets`` under ``data_dir`` and write its JSON
    card to ``out``.

    The first round's ``C`` (from ``c1s``) and then the second round's (``c2s``: C of a logistic,
    alpha of an MLP, the number of trees; a default per kind) are picked on supporting-sentence
    recall at 30 % of the characters (AUC breaks ties) by leave-one-dataset-out cross-validation,
    the mean over the datasets left out (``select="pooled"``, or one dataset: 5-fold CV grouped by
    question, as heads before version 5 were picked). The card records every figure, pooled 5-fold
    CV beside the left-out one."""
    if select not in ("lodo", "pooled"):
        raise ConfigError(f"unknown selection {select!r}: lodo or pooled")
    t0 = time.perf_counter()
    if c2s is None:
        c2s = {"trees": (100, 150), "logistic": (0.1, 1.0), "mlp": (0.01, 0.1)}.get(kind, (1.0,))
    ts = trainset or build_trainset(data_dir, datasets, embedder, limit, progress)
    split = "dataset" if select == "lodo" and len(set(ts.datasets)) >= 2 else "question"
    key = "macro:sent_recall@0.3" if split == "dataset" else "sent_recall@0.3"

    def cv(r, k, c1, c2, how=split):
        return cross_validate(ts, r, k, c1, c2, seed=seed, cover=cover_top_docs, split=how)

    cv1 = {c: cv(1, "logistic", c, 0.0) for c in c1s}
    c1 = max(c1s, key=lambda c: (cv1[c][key], cv1[c]["auc"], -c))
    cv2 = {}
    c2 = None
    if rounds >= 2:
        cv2 = {c: cv(2, kind, c1, c) for c in c2s}
        c2 = max(c2s, key=lambda c: (cv2[c][key], cv2[c]["auc"], -c))
    chosen = cv2[c2] if rounds >= 2 else cv1[c1]
    pooled = cv(rounds, kind if rounds >= 2 else "logistic", c1, c2 or 0.0, "question") if split == "dataset" \
        else chosen
    card_models = fit_head(ts, np.arange(len(ts.records)), rounds, kind, c1, c2 or 0.0, seed)
    X, y = _stack(ts, np.arange(len(ts.records)))
    data_dir = Path(data_dir)
    card = {
        "version": "4",
        "doc_vector": ts.doc_vector,
        "embedder": resolve_model_id("embedder", embedder),
        **card_models,  # with the feature names it was fit on
        "cover_top_docs": cover_top_docs,
        "prior": "balanced",  # scores reported under balanced classes (see prior_shift)
        "train": {
            "files": [str(f.relative_to(data_dir)) for f in ts.files],
            "sha256": {str(f.relative_to(data_dir)): _sha256(f) for f in ts.files},
            "records": len(ts.records), "rows": int(len(y)), "positives": int(y.sum()),
            "rounds": rounds, "kind": kind, "C1": c1, "C2": c2, "seed": seed,
            "selected_by": key + (" (leave one dataset out)" if split == "dataset" else " (5-fold by question)"),
            "cv_round1": {str(c): v for c, v in cv1.items()},
            "cv_round2": {str(c): v for c, v in cv2.items()},
            "cv": pooled,  # 5-fold grouped by question, the chosen configuration
            **({"cv_lodo": chosen} if split == "dataset" else {}),
            "seconds": round(time.perf_counter() - t0, 1),
            "command": "ragpress train exit" + (f" --datasets {','.join(datasets)}"
                                                if tuple(datasets) != DEFAULT_DATASETS else "")
                       + (f" --rounds {rounds}" if rounds != 2 else "") + (f" --kind {kind}" if kind != "trees" else "")
                       + (f" --cover-top-docs {cover_top_docs}" if cover_top_docs != 2 else "")
                       + (f" --select {select}" if select != "lodo" else "")
                       + (f" --limit {limit}" if limit else ""),
        },
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(dump_card(card), encoding="utf-8")
        tmp.replace(out)
        _cached_scorer.cache_clear()
    return card


def dump_card(card: dict) -> str:
    """The card as indented JSON with each list of numbers on one line (a tree's nodes, a weight
    vector), so that it stays small and diffs line up with its fields."""
    text = json.dumps(card, indent=1)
    return re.sub(r"\[[-0-9.eE,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)


# ----------------------------------------------------------------------------- CLI
def add_train_exit_parser(subparsers):
    """``ragpress train exit``."""
    e = subparsers.add_parser("exit", help="train EXIT's offline sentence classifier (a few minutes on CPU)")
    e.add_argument("--data", default=None, help="the shared data folder holding hotpotqa/, musique/, train/ "
                                                "(default: $RAGPRESS_DATA or ../shared/data)")
    e.add_argument("--out", default=None, help="where to write the head's JSON card (default: the shipped one)")
    e.add_argument("--embedder", default=None, help="sentence encoder for the features (default: offline MiniLM)")
    e.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                   help="comma-separated train sets: " + ", ".join(TRAIN_FILES))
    e.add_argument("--rounds", type=int, choices=(1, 2), default=2,
                   help="2: rescore every sentence given the first round's selection (default)")
    e.add_argument("--kind", choices=("trees", "logistic", "mlp"), default="trees",
                   help="the second round's model (trees: gradient-boosted, the default)")
    e.add_argument("--cover-top-docs", type=int, default=2,
                   help="under a ratio/token budget keep the best sentence of this many best documents first")
    e.add_argument("--select", choices=("lodo", "pooled"), default="lodo",
                   help="pick C1 and the second round's setting by leave-one-dataset-out CV (lodo, the default) "
                        "or by 5-fold CV grouped by question over all the train questions (pooled)")
    e.add_argument("--limit", type=int, default=None, help="only the first N training questions of each file")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=run_train_exit)
    return e


def run_train_exit(args) -> int:
    from ragpress.compressors.exit_head import WEIGHTS
    from ragpress.qa import default_data_dir

    out = Path(args.out) if args.out else WEIGHTS
    card = train_head(args.data or default_data_dir(), out, embedder=args.embedder, rounds=args.rounds,
                      kind=args.kind, cover_top_docs=args.cover_top_docs, seed=args.seed, limit=args.limit,
                      datasets=[d.strip() for d in args.datasets.split(",") if d.strip()], select=args.select)
    t = card["train"]
    cv = t["cv"]
    print(f"EXIT head: {t['records']} questions, {t['rows']} sentences ({t['positives']} supporting); "
          f"{t['rounds']} round(s), C1={t['C1']}, C2={t['C2']}; 5-fold CV AUC {cv['auc']:.3f}, supporting "
          f"sentences kept at 30 % of the characters {cv['sent_recall@0.3']:.3f}"
          + (f" (left-out dataset: {t['cv_lodo']['macro:sent_recall@0.3']:.3f})" if "cv_lodo" in t else "")
          + f"; {t['seconds']:.0f} s -> {out}")
    return 0
