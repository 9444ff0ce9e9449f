"""QwenLong-CPRS on the dev sets, against the ``embed-sentences`` baseline at the same ratio.

Uses the shared harness (:func:`ragpress.evaluation.evaluate`): ratio reached, answer recall,
supporting-sentence recall (HotpotQA), supporting-passage recall (MuSiQue), tokens/s.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cprs_eval.py --limit 40

writes ``benchmarks/results/cprs_eval.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from ragpress.evaluation import default_data_dir, load_records, markdown_table, parse_budget, write_report

DATA = default_data_dir()
DATASETS = {
    "hotpotqa": DATA / "hotpotqa" / "hotpotqa_dev_distractor_sf.jsonl",
    "musique": DATA / "musique" / "musique_ans_dev_migres200.jsonl",
}


def main(argv: list[str] | None = None) -> int:
    from ragpress.evaluation import evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=40, help="records per dataset (first N of the dev file)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--budgets", nargs="+", default=["0.3"], help="0.3 (ratio), tokens:200, thr:0.5")
    p.add_argument("--cprs-threshold", type=float, default=0.5,
                   help="also run cprs in threshold mode (the reference behaviour); <0 to skip")
    p.add_argument("--baselines", nargs="*", default=["embed-sentences"])
    p.add_argument("--cprs-weights", default=None, help="trained .safetensors (default: the shipped ones)")
    p.add_argument("--skip-cprs", action="store_true", help="baselines only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cprs_eval"))
    args = p.parse_args(argv)

    budgets = [parse_budget(b) for b in args.budgets]
    rows = []
    for name in args.datasets:
        records = load_records(DATASETS[name], limit=args.limit)
        w = {"weights": args.cprs_weights} if args.cprs_weights else {}
        methods: list = [] if args.skip_cprs else [("cprs", {"granularity": "sentences", **w})]
        if name == "musique" and not args.skip_cprs:
            methods.append(("cprs", {"granularity": "paragraphs", **w}))
        methods += list(args.baselines)
        with_thr = args.cprs_threshold >= 0 and not args.skip_cprs
        got = evaluate(records, methods, budgets, dataset=name, batch_size=args.batch_size)
        if with_thr:
            got += evaluate(records, [("cprs", {"granularity": "sentences", **w})],
                            [parse_budget(f"thr:{args.cprs_threshold}")], dataset=name,
                            batch_size=args.batch_size)
        for row, label in zip(got, _labels(methods, budgets, with_thr)):
            row.method = label
        rows.extend(got)
        print(markdown_table(got), flush=True)
    meta = {"limit": args.limit, "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/cprs_eval.py " + " ".join(argv or __import__("sys").argv[1:])}
    paths = write_report(rows, args.out, title="QwenLong-CPRS (offline SmolLM2 top) vs embed-sentences, dev",
                         meta=meta)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def _labels(methods, budgets, with_threshold: bool) -> list[str]:
    out = []
    for m in methods:
        name = m if isinstance(m, str) else f"{m[0]}[{m[1]['granularity']}]"
        out += [name] * len(budgets)
    if with_threshold:
        out.append("cprs[sentences]")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
