"""TCRA-LLM (semantic, summary, chained) vs baselines on HotpotQA dev, through ragpress.evaluation.

Per method and ratio budget, :func:`ragpress.evaluation.evaluate` reports the ratio reached,
answer recall (gold answer still in the compressed context, over the records whose full context
holds it; yes/no answers excluded), supporting-sentence recall and compression tokens/s.

On top of that, the summaries are audited passage by passage: for every passage whose source
text contains the gold answer, its summary (from the same process memo, so no second generation)
either **keeps** the answer verbatim (normalised), **alters** it (some of the answer's words
survive but not the answer), or **drops** it (none survive).

    OMP_NUM_THREADS=1 python benchmarks/tcra_hotpotqa.py --limit 4 --ratios 0.25 0.5

Summaries are memoised per process: ``tcra`` at ratio r summarizes each passage to sqrt(r), so
with ratios 0.25 and 0.5 its summary stage reuses ``tcra-summary``'s 0.5 summaries (run first).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragpress.evaluation import default_data_dir  # noqa: E402 (after the offline env)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = default_data_dir() / "hotpotqa" / "hotpotqa_dev_distractor_sf.jsonl"
RESULTS = ROOT / "benchmarks" / "results"


def audit_summaries(records, ratios) -> list[dict]:
    """keep / alter / drop counts of the gold answer in summaries of answer-bearing passages."""
    from ragpress.compressors.tcra import summarize
    from ragpress.evaluation import YES_NO, normalize_answer

    out = []
    for ratio in ratios:
        counts = {"keep": 0, "alter": 0, "drop": 0}
        examples = []
        for rec in records:
            answers = [normalize_answer(a) for a in rec.answers if normalize_answer(a) not in YES_NO]
            if not answers:
                continue
            bearing = [p for p in rec.passages if any(f" {a} " in f" {normalize_answer(p.text)} " for a in answers)]
            if not bearing:
                continue
            summaries = summarize([p.text for p in bearing], ratio, titles=[p.title for p in bearing])
            for p, s in zip(bearing, summaries):
                norm = f" {normalize_answer(s)} "
                if any(f" {a} " in norm for a in answers):
                    verdict = "keep"
                elif any(w in norm.split() for a in answers for w in a.split()):
                    verdict = "alter"
                else:
                    verdict = "drop"
                counts[verdict] += 1
                if verdict != "keep" and len(examples) < 5:
                    examples.append({"answer": rec.answers[0], "passage": p.text[:300], "summary": s})
        n = sum(counts.values())
        out.append({"summary_ratio": ratio, "passages": n, **{k: v / n if n else None for k, v in counts.items()},
                    "examples": examples})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--methods", nargs="+",
                    default=["truncate", "embed-sentences", "tcra-semantic", "tcra-summary", "tcra"])
    ap.add_argument("--name", default="tcra_hotpotqa")
    args = ap.parse_args()

    from ragpress.core.types import Budget
    from ragpress.evaluation import evaluate, load_records, markdown_table, write_report

    records = load_records(args.data, limit=args.limit)
    budgets = [Budget(ratio=r) for r in sorted(args.ratios, reverse=True)]
    rows = evaluate(records, args.methods, budgets, dataset=args.data.stem, batch_size=4, progress=False)
    audit = audit_summaries(records, sorted(args.ratios, reverse=True)) if "tcra-summary" in args.methods else []
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"data": args.data.name, "records": len(records), "ratios": args.ratios,
            "summarizer": "SmolLM2-135M-Instruct (offline default)", "embedder": "all-MiniLM-L6-v2",
            "tokenizer": "qwen", "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    write_report(rows, RESULTS / args.name, title=f"TCRA-LLM vs baselines, {args.data.name} (dev, first "
                                                  f"{len(records)} records)", meta=meta)
    md = [markdown_table(rows), "", "Summary audit (passages whose source holds the gold answer):", "",
          "| summary ratio | passages | answer kept | altered | dropped |", "|---|---|---|---|---|"]
    for a in audit:
        if a["passages"]:
            md.append(f"| {a['summary_ratio']} | {a['passages']} | {a['keep']:.2f} | {a['alter']:.2f} | "
                      f"{a['drop']:.2f} |")
    (RESULTS / f"{args.name}_audit.md").write_text("\n".join(md[2:]) + "\n")
    (RESULTS / f"{args.name}_audit.json").write_text(json.dumps(audit, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
