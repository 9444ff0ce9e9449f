"""Ablation of EXIT's offline head by grouped cross-validation on the *train* questions only.

Each configuration is scored by 5-fold CV grouped by question (``ragpress.training.exit.cross_validate``):
AUC over held-out sentences, supporting-sentence recall and the share of questions with every
supporting sentence kept when the best sentences fill 30 % / 15 % of the characters.

Rows 1-12 embed each document whole (version-2 cards); rows 13-17 take a document's vector as
the mean of its sentences' (version 3, half the tokens), so the train set is featurised twice
(``--cache STEM`` keeps them as ``STEM.embed`` and ``STEM.sentence_mean``). Rows 1-14 fit on
version 3's features only; rows 15-17 add version 4's lexical ones (:data:`FEATURE_SETS`).

    OMP_NUM_THREADS=1 python benchmarks/exit_head_ablation.py    # features ~10 min on 2 busy CPUs, then ~5 min of fits
    python benchmarks/exit_head_ablation.py --cache /tmp/exit_ts.pkl   # features kept between runs
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from ragpress.compressors.exit_head import ROUND2_FEATURES, SCALAR_FEATURES, V3_FEATURES, V3_ROUND2_FEATURES
from ragpress.qa import default_data_dir
from ragpress.training.exit import build_trainset, cross_validate

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


def subset(ts, keep):
    from ragpress.training.exit import TrainSet

    return TrainSet([ts.records[i] for i in keep], [ts.feats[i] for i in keep], [ts.contexts[i] for i in keep],
                    [ts.ys[i] for i in keep], [ts.labels[i] for i in keep], [ts.lengths[i] for i in keep], ts.files,
                    ts.doc_vector)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=None, help="pickle of the featurised train set (built when missing)")
    ap.add_argument("--only", default=None, help="comma-separated config numbers (1-based)")
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else default_data_dir()
    only = {int(x) for x in args.only.split(",")} if args.only else None
    wanted = {c[7] if len(c) > 7 else "embed" for k, c in enumerate(CONFIGS, 1) if not only or k in only}
    built = {}
    for dv in sorted(wanted):
        cache = Path(f"{args.cache}.{dv}") if args.cache else None
        if cache and cache.is_file():
            built[dv] = pickle.loads(cache.read_bytes())
        if dv not in built or built[dv].feats[0].shape[1] != len(SCALAR_FEATURES):  # missing, or an older ragpress's
            built[dv] = build_trainset(data, ("hotpotqa", "musique"), doc_vector=dv)
            if cache:
                cache.write_bytes(pickle.dumps(built[dv]))
    ts = next(iter(built.values()))
    n_h = sum(1 for r in ts.records if not _is_musique(r))
    hot = [i for i in range(len(ts.records)) if not _is_musique(ts.records[i])]
    sets = {(dv, "hotpotqa62"): subset(t, hot[:62]) for dv, t in built.items()}
    sets.update({(dv, "hotpotqa"): subset(t, hot) for dv, t in built.items()})
    sets.update({(dv, "hotpotqa", "musique"): t for dv, t in built.items()})
    print(f"train set: {len(ts.records)} questions ({n_h} HotpotQA)\n")
    print("| configuration | questions | AUC | HotpotQA sent. recall @0.3 / all kept | @0.15 / all kept "
          "| MuSiQue sent. recall @0.3 / all kept | @0.15 / all kept |")
    print("|---|---|---|---|---|---|---|")
    for k, (label, ds, rounds, kind, c1, c2, cover, *rest) in enumerate(CONFIGS, 1):
        if only and k not in only:
            continue
        sub = sets[(rest[0] if rest else "embed", *ds)]
        names1, names2 = FEATURE_SETS[rest[1] if len(rest) > 1 else "v3"]
        by = ["musique" if _is_musique(r) else "hotpotqa" for r in sub.records]
        cv = cross_validate(sub, rounds, kind, c1, c2, cover=cover, by=by, feature_names=names1, round2_names=names2)

        def cell(src, r, cv=cv):
            key = f"{src}:sent_recall@{r}"
            return f"{cv[key]:.3f} / {cv[f'{src}:all_kept@{r}']:.3f}" if key in cv else "-"

        print(f"| {k}. {label} | {len(sub.records)} | {cv['auc']:.3f} | {cell('hotpotqa', 0.3)} | "
              f"{cell('hotpotqa', 0.15)} | {cell('musique', 0.3)} | {cell('musique', 0.15)} |", flush=True)
    return 0


def _is_musique(rec) -> bool:
    return str(rec.id).startswith("2hop") or str(rec.id).startswith("3hop") or str(rec.id).startswith("4hop")


if __name__ == "__main__":
    raise SystemExit(main())
