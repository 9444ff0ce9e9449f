"""EXIT scoring speed: reference-style per-sentence forwards vs the prefix-KV-cache fast path.

Same model (offline SmolLM2-135M-Instruct unless --model), same HotpotQA dev records, same
prompts: for every record both paths score all its sentences, interleaved (the order alternates
per record) so load from other processes hits both alike. Reports seconds per path (model load
apart), the speed-up, the largest |P(Yes) difference|, and the prompt tokens each path runs.
Afterwards the fast path also scores all records in one ``compress_batch`` (cross-request
batching).

    .venv/bin/python benchmarks/exit_speed.py --limit 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragpress.evaluation import default_data_dir  # noqa: E402 (after the offline env)

DATA = default_data_dir() / "hotpotqa" / "hotpotqa_dev_distractor_sf.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--model", default=None, help="hub id / path (default: offline SmolLM2)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "exit_speed")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ragpress.compressors.exit import ExitCompressor, LMScorer
    from ragpress.core.types import Budget, CompressionRequest, Passage

    records = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            records.append(json.loads(line))
            if len(records) >= args.limit:
                break
    requests = [CompressionRequest(query=r["question"], budget=Budget(threshold=0.5), passages=[
        Passage(id=f"{r['id']}:{i}", title=p["title"], text=p["text"]) for i, p in enumerate(r["passages"])])
        for r in records]
    comp = ExitCompressor(scorer="lm", model=args.model, batch_size=args.batch_size, max_length=args.max_length)
    fast = LMScorer(comp.config)
    slow = LMScorer(comp.config.model_copy(update={"scoring": "per_sentence"}))
    t = time.perf_counter()
    fast._load()
    slow._load()
    load_s = time.perf_counter() - t
    items = []
    for r in requests:
        units = comp._units(r)
        items.append((r.query, [(p.title, [p.text[u.start:u.end] for u in us]) for p, us in zip(r.passages, units)]))
    warm = [(items[0][0], items[0][1][:1])]
    fast.score_many(warm)
    slow.score_many(warm)

    out = {
        "model": comp.model_id, "records": 0, "sentences": 0, "threads": args.threads,
        "device": str(next(fast._model.parameters()).device), "dtype": str(next(fast._model.parameters()).dtype),
        "batch_size": args.batch_size, "max_length": args.max_length, "model_load_s": load_s,
        "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "complete": False,
    }
    times = {"prefix_cache": 0.0, "per_sentence": 0.0}
    tokens = {"prefix_cache": 0, "per_sentence": 0}
    max_diff, n_sent, per_record = 0.0, 0, []
    for i, item in enumerate(items):
        order = [("prefix_cache", fast), ("per_sentence", slow)]
        if i % 2:
            order.reverse()
        got = {}
        for name, scorer in order:
            t = time.perf_counter()
            got[name] = scorer.score_many([item])[0]
            times[name] += time.perf_counter() - t
        a = [x for d in got["prefix_cache"] for x in d]
        b = [x for d in got["per_sentence"] for x in d]
        diff = max(abs(x - y) for x, y in zip(a, b))
        max_diff = max(max_diff, diff)
        n_sent += len(a)
        groups = fast.plan(*item)
        heads = {tuple(g.prefix[:g.head]) for g in groups}
        tok_slow = sum(len(g.prefix) + len(s) for g in groups for _, _, s in g.rows)
        tok_fast = (sum(len(h) for h in heads) + sum(len(g.prefix) - g.head for g in groups)
                    + sum(len(s) for g in groups for _, _, s in g.rows))
        tokens["per_sentence"] += tok_slow
        tokens["prefix_cache"] += tok_fast
        per_record.append({"id": records[i]["id"], "sentences": len(a), "max_abs_diff": diff})
        print(f"record {i + 1}/{len(items)}: {len(a)} sentences, cumulative per-sentence "
              f"{times['per_sentence']:.1f}s, prefix-cache {times['prefix_cache']:.1f}s, diff {diff:.2e}",
              flush=True)
        out.update(records=i + 1, sentences=n_sent, per_sentence_s=times["per_sentence"],
                   prefix_cache_s=times["prefix_cache"], speedup=times["per_sentence"] / times["prefix_cache"],
                   max_abs_score_diff=max_diff, prompt_tokens=tokens,
                   token_ratio=tokens["per_sentence"] / tokens["prefix_cache"], per_record=per_record)
        write_report(args, out)

    t = time.perf_counter()
    results = comp.compress_batch(requests)
    out["compress_batch_all_s"] = time.perf_counter() - t
    out["compress_batch_kept_sentences"] = sum(r.extra["kept"] for r in results)
    out["compress_batch_mean_ratio"] = sum(r.ratio for r in results) / len(results)
    out["complete"] = True
    print(write_report(args, out))


def write_report(args, out: dict) -> str:
    """Write ``out`` as JSON and a markdown summary next to it; returns the markdown."""
    n, t_slow, t_fast = out["sentences"], out["per_sentence_s"], out["prefix_cache_s"]
    tok = out["prompt_tokens"]
    batch = (f"* all {out['records']} records in one `compress_batch` (fast path, batched across requests): "
             f"{out['compress_batch_all_s']:.1f} s, {out['compress_batch_kept_sentences']} sentences kept "
             f"at threshold 0.5, mean ratio {out['compress_batch_mean_ratio']:.3f} "
             f"({out['per_sentence_s'] / out['compress_batch_all_s']:.2f}x faster than per-sentence)\n"
             if "compress_batch_all_s" in out else "")
    md = f"""# EXIT scoring speed: per-sentence vs prefix KV cache

Command: `.venv/bin/python benchmarks/exit_speed.py --limit {args.limit} --threads {args.threads}`
({"complete" if out["complete"] else "partial: records done so far"})

Model `{out['model']}` on {out['device']} ({out['dtype']}), {out['records']} HotpotQA dev records
(distractor setting, 10 passages each), {n} sentences. Both paths ran in the same process,
interleaved per record (order alternating). Model load ({out['model_load_s']:.1f} s) excluded.

| path | seconds | sentences/s | prompt tokens run |
|---|---:|---:|---:|
| per-sentence (reference: one forward per sentence) | {t_slow:.1f} | {n / t_slow:.2f} | {tok['per_sentence']} |
| prefix KV cache (this implementation) | {t_fast:.1f} | {n / t_fast:.2f} | {tok['prefix_cache']} |

* speed-up: **{out['speedup']:.2f}x** (the prefix cache runs {out['token_ratio']:.2f}x fewer prompt tokens; padded, masked batched forwards cost more per token than single unpadded ones on a CPU)
* max |P(Yes) per-sentence - P(Yes) prefix-cache|: **{out['max_abs_score_diff']:.2e}**
{batch}
torch {out['torch']}, {out['threads']} thread(s), {out['cpu_count']} CPUs visible (shared with other jobs).
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    args.out.with_suffix(".md").write_text(md)
    return md


if __name__ == "__main__":
    main()
