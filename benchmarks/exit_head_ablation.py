"""Ablation of EXIT's offline head by cross-validation on the *train* questions only.

Table v5 (the default): the train sets of HotpotQA, MuSiQue and 2Wiki (100 questions each), each
configuration scored two ways (``ragpress.training.exit.cross_validate``):
- pooled: 5-fold CV grouped by question over all 300;
- left out: leave one dataset out (fit on two datasets, score the third), the closest stand-in
  for a user's data, which is none of these sets. This is the figure that decides.
Scores: AUC over held-out sentences; supporting-sentence recall (and the share of questions with
every supporting sentence kept) when the best sentences fill 30 % / 15 % of the characters; the
share of answerable questions whose answer survives there (as the dev benchmark counts answers).

The rule, written before the figures: ship the row with the highest left-out mean recall @0.3;
rows within 0.003 of it are a tie, broken by the left-out HotpotQA recall @0.15.

Table v4 (``--table v4``): the earlier ablation over HotpotQA + MuSiQue, pooled CV. Its rows 1-12
embed each document whole (version-2 cards); rows 13-17 take a document's vector as the mean of
its sentences' (version 3, half the tokens), so the train set is featurised twice (``--cache
STEM`` keeps them as ``STEM.embed`` and ``STEM.sentence_mean``). Rows 1-14 fit on version 3's
features only; rows 15-17 add version 4's lexical ones (:data:`FEATURE_SETS`).

    OMP_NUM_THREADS=1 python benchmarks/exit_head_ablation.py --cache /tmp/exit_ts   # features ~10 min, fits ~10 min
    python benchmarks/exit_head_ablation.py --table v4 --cache /tmp/exit_ts
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from ragpress.compressors.exit_head import ROUND2_FEATURES, SCALAR_FEATURES, V3_FEATURES, V3_ROUND2_FEATURES
from ragpress.qa import default_data_dir
from ragpress.training.exit import DEFAULT_DATASETS, build_trainset, cross_validate

CONFIGS = [  # (label, train sets, rounds, second-round model, C1, C2 / alpha / trees, cover_top_docs[, doc vector])
    ("v1 (shipped before): 1 round, logistic, HotpotQA 62 q", ("hotpotqa62",), 1, "logistic", 0.01, 0.0, 0),
    ("1 round, HotpotQA 100 q (+38 rest)", ("hotpotqa",), 1, "logistic", 0.01, 0.0, 0),
    ("2 rounds, HotpotQA 100 q", ("hotpotqa",), 2, "logistic", 0.01, 1.0, 0),
    ("1 round, HotpotQA + MuSiQue (200 q)", ("hotpotqa", "musique"), 1, "logistic", 0.01, 0.0, 0),
    ("1 round + cover 2 top docs", ("hotpotqa", "musique"), 1, "logistic", 0.01, 0.0, 2),
    ("2 rounds, logistic C2=0.1", ("hotpotqa", "musique"), 2, "logistic", 0.01, 0.1, 0),
    ("2 rounds, logistic C2=1", ("hotpotqa", "musique"), 2, "logistic", 0.01, 1.0, 0),
    ("2 rounds C2=1 + cover 2 (shipped v2)", ("hotpotqa", "musique"), 2, "logistic", 0.01, 1.0, 2),
    ("2 rounds C2=1 + cover 3", ("hotpotqa", "musique"), 2, "logistic", 0.01, 1.0, 3),
    ("2 rounds, MLP(32) alpha=0.01 + cover 2", ("hotpotqa", "musique"), 2, "mlp", 0.01, 0.01, 2),
    ("2 rounds, MLP(32) alpha=0.1 + cover 2", ("hotpotqa", "musique"), 2, "mlp", 0.01, 0.1, 2),
    ("2 rounds, trees(100) + cover 2", ("hotpotqa", "musique"), 2, "trees", 0.01, 100, 2),
    ("document = mean of sentences, 2 rounds logistic C2=1 + cover 2", ("hotpotqa", "musique"), 2, "logistic",
     0.01, 1.0, 2, "sentence_mean"),
    ("document = mean of sentences, 2 rounds trees(100) + cover 2 (shipped v3)", ("hotpotqa", "musique"), 2,
     "trees", 0.01, 100, 2, "sentence_mean"),
    ("v3 + IDF-weighted overlap of query and sentence / document / document + title (round 1)",
     ("hotpotqa", "musique"), 2, "trees", 0.01, 100, 2, "sentence_mean", "lex1"),
    ("+ residual query coverage and evidence words (round 2)", ("hotpotqa", "musique"), 2, "trees", 0.01, 100, 2,
     "sentence_mean", "v4"),
    ("same, C1=1, trees(150) (shipped v4)", ("hotpotqa", "musique"), 2, "trees", 1.0, 150, 2, "sentence_mean", "v4"),
]
FEATURE_SETS = {  # (first-round, second-round feature names); rows name one after the doc vector, "v3" when not
    "v3": (V3_FEATURES, V3_ROUND2_FEATURES),
    "lex1": (SCALAR_FEATURES, V3_ROUND2_FEATURES),
    "v4": (SCALAR_FEATURES, ROUND2_FEATURES),
}


CONFIGS_V5 = [  # version 5: trained on HotpotQA + MuSiQue + 2Wiki; (label, rounds, kind, C1, C2, cover, features)
    ("v4 recipe: C1=1, trees(150), cover 2", 2, "trees", 1.0, 150, 2, "v4"),
    ("v4 recipe, cover 3", 2, "trees", 1.0, 150, 3, "v4"),
    ("v4 recipe, cover 4", 2, "trees", 1.0, 150, 4, "v4"),
    ("trees(100), cover 2", 2, "trees", 1.0, 100, 2, "v4"),
    ("trees(250), cover 2", 2, "trees", 1.0, 250, 2, "v4"),
    ("C1=0.1, trees(150), cover 2", 2, "trees", 0.1, 150, 2, "v4"),
    ("second round logistic C2=1, cover 2", 2, "logistic", 1.0, 1.0, 2, "v4"),
    ("version-3 features (no lexical ones), trees(150), cover 2", 2, "trees", 1.0, 150, 2, "v3"),
    ("one round, logistic C1=1, cover 2", 1, "logistic", 1.0, 0.0, 2, "v4"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=None, help="pickle of the featurised train set (built when missing)")
    ap.add_argument("--table", choices=("v5", "v4"), default="v5",
                    help="v5: HotpotQA + MuSiQue + 2Wiki, pooled and leave-one-dataset-out CV (default); "
                         "v4: the earlier table, HotpotQA + MuSiQue, pooled CV")
    ap.add_argument("--only", default=None, help="comma-separated config numbers (1-based)")
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else default_data_dir()
    only = {int(x) for x in args.only.split(",")} if args.only else None
    if args.table == "v4":
        wanted = {c[7] if len(c) > 7 else "embed" for k, c in enumerate(CONFIGS, 1) if not only or k in only}
    else:
        wanted = {"sentence_mean"}
    built = {dv: _trainset(data, dv, args.cache) for dv in sorted(wanted)}
    return (_table_v4 if args.table == "v4" else _table_v5)(built, only)


def _trainset(data: Path, dv: str, cache_stem: str | None):
    """The featurised train set of every dataset (``--cache``: kept as ``STEM.<doc vector>``)."""
    cache = Path(f"{cache_stem}.{dv}") if cache_stem else None
    if cache and cache.is_file():
        ts = pickle.loads(cache.read_bytes())
        if ts.feats[0].shape[1] == len(SCALAR_FEATURES) and set(getattr(ts, "datasets", [])) == set(DEFAULT_DATASETS):
            return ts  # else an older ragpress's
    ts = build_trainset(data, DEFAULT_DATASETS, doc_vector=dv)
    if cache:
        cache.write_bytes(pickle.dumps(ts))
    return ts


def _table_v5(built, only) -> int:
    ts = built["sentence_mean"]
    counts = {d: ts.datasets.count(d) for d in DEFAULT_DATASETS}
    print(f"train set: {len(ts.records)} questions ({', '.join(f'{d} {n}' for d, n in counts.items())})\n")
    print("| configuration | pooled AUC | pooled recall @0.3: HotpotQA / MuSiQue / 2Wiki | pooled HotpotQA @0.15 "
          "| left-out recall @0.3: HotpotQA / MuSiQue / 2Wiki | left-out mean @0.3 (all kept) "
          "| left-out HotpotQA / 2Wiki @0.15 | left-out answers kept @0.3: HotpotQA / MuSiQue / 2Wiki |")
    print("|---|---|---|---|---|---|---|---|")
    for k, (label, rounds, kind, c1, c2, cover, fs) in enumerate(CONFIGS_V5, 1):
        if only and k not in only:
            continue
        names1, names2 = FEATURE_SETS[fs]
        pooled, lodo = (cross_validate(ts, rounds, kind, c1, c2, cover=cover, feature_names=names1,
                                       round2_names=names2, split=split) for split in ("question", "dataset"))
        per = lambda cv, r, key="sent_recall": " / ".join(  # noqa: E731
            f"{cv[f'{d}:{key}@{r}']:.3f}" for d in DEFAULT_DATASETS)
        print(f"| {k}. {label} | {pooled['auc']:.3f} | {per(pooled, 0.3)} | {pooled['hotpotqa:sent_recall@0.15']:.3f} "
              f"| {per(lodo, 0.3)} | {lodo['macro:sent_recall@0.3']:.3f} ({lodo['macro:all_kept@0.3']:.3f}) "
              f"| {lodo['hotpotqa:sent_recall@0.15']:.3f} / {lodo['2wiki:sent_recall@0.15']:.3f} "
              f"| {per(lodo, 0.3, 'answer_kept')} |", flush=True)
    return 0


def _table_v4(built, only) -> int:
    hm = {dv: t.subset([i for i, d in enumerate(t.datasets) if d != "2wiki"]) for dv, t in built.items()}
    ts = next(iter(hm.values()))
    hot = [i for i, d in enumerate(ts.datasets) if d == "hotpotqa"]
    sets = {(dv, "hotpotqa62"): t.subset(hot[:62]) for dv, t in hm.items()}
    sets.update({(dv, "hotpotqa"): t.subset(hot) for dv, t in hm.items()})
    sets.update({(dv, "hotpotqa", "musique"): t for dv, t in hm.items()})
    print(f"train set: {len(ts.records)} questions ({len(hot)} HotpotQA)\n")
    print("| configuration | questions | AUC | HotpotQA sent. recall @0.3 / all kept | @0.15 / all kept "
          "| MuSiQue sent. recall @0.3 / all kept | @0.15 / all kept |")
    print("|---|---|---|---|---|---|---|")
    for k, (label, ds, rounds, kind, c1, c2, cover, *rest) in enumerate(CONFIGS, 1):
        if only and k not in only:
            continue
        sub = sets[(rest[0] if rest else "embed", *ds)]
        names1, names2 = FEATURE_SETS[rest[1] if len(rest) > 1 else "v3"]
        cv = cross_validate(sub, rounds, kind, c1, c2, cover=cover, feature_names=names1, round2_names=names2)

        def cell(src, r, cv=cv):
            key = f"{src}:sent_recall@{r}"
            return f"{cv[key]:.3f} / {cv[f'{src}:all_kept@{r}']:.3f}" if key in cv else "-"

        print(f"| {k}. {label} | {len(sub.records)} | {cv['auc']:.3f} | {cell('hotpotqa', 0.3)} | "
              f"{cell('hotpotqa', 0.15)} | {cell('musique', 0.3)} | {cell('musique', 0.15)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
