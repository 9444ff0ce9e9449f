"""EXIT speed: input tokens/s of ``exit`` (its default trained head) and ``embed-sentences`` in
the same run, per embedder backend; with ``--lm``, EXIT's LM scorer paths instead.

Methods mode (default): the same HotpotQA dev records, compressed one request at a time at a
0.3 ratio by each (method, embedder path) pair, interleaved per record (the order rotates) so
load from other processes hits all alike; model loading and a warm-up request apart, no segment
cache. Embedder paths: ``bucketed`` (this version: each distinct text once, batches of similar
length), ``unbucketed`` (the previous path: one ``SentenceTransformer.encode`` call per request,
batches of 64 sorted by characters), and each extra ``--backends`` entry (e.g. ``int8``) on the
bucketed path. Prints tokens/s per method and path, EXIT's speed as a share of embed-sentences',
and each backend's cosine agreement with float32 on the texts EXIT embeds.

    .venv/bin/python benchmarks/exit_speed.py --limit 30 --threads 2

LM mode (``--lm``): reference-style per-sentence forwards vs the prefix-KV-cache fast path of
EXIT's LM scorer (offline SmolLM2-135M-Instruct unless --model), same prompts, interleaved;
reports seconds per path, the speed-up, the largest |P(Yes) difference| and the prompt tokens
each path runs, then all records in one ``compress_batch``.

    .venv/bin/python benchmarks/exit_speed.py --lm --limit 10 --threads 1
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
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--lm", action="store_true", help="EXIT's LM scorer: per-sentence vs prefix cache")
    ap.add_argument("--backends", default="int8,onnx,onnx-int8", help="methods mode: extra embedder backends (comma list)")
    ap.add_argument("--budget", type=float, default=0.3, help="methods mode: the ratio budget")
    ap.add_argument("--model", default=None, help="LM mode: hub id / path (default: offline SmolLM2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=None,
                    help="report stem (default benchmarks/results/exit_speed, or exit_speed_lm with --lm)")
    args = ap.parse_args()
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("exit_speed_lm" if args.lm else "exit_speed")
    if args.lm:
        main_lm(args)
    else:
        main_methods(args)


def _records(path: Path, limit: int) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) >= limit:
                break
    return out


def main_methods(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from ragpress.compressors.exit_head import document_texts
    from ragpress.core import models
    from ragpress.core.extractive import render_full, sentence_units, unit_text
    from ragpress.core.registry import create_compressor
    from ragpress.core.types import Budget, CompressionRequest, Passage

    records = _records(args.data, args.limit)
    requests = [CompressionRequest(query=r["question"], budget=Budget(ratio=args.budget), passages=[
        Passage(id=f"{r['id']}:{i}", title=p["title"], text=p["text"]) for i, p in enumerate(r["passages"])])
        for r in records]
    bucketed = models.encode_texts

    def unbucketed(model, texts, batch_size=64, max_tokens=8192):  # the pre-#13 path, for reference
        return np.asarray(model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

    backends = [b for b in args.backends.split(",") if b]
    paths = [("unbucketed", "torch", unbucketed), ("bucketed torch", "torch", bucketed)]
    paths += [(f"bucketed {b}", b, bucketed) for b in backends]
    t = time.perf_counter()
    comps = {m: create_compressor(m) for m in ("exit", "embed-sentences")}
    for _, backend, _ in paths:
        models.load_embedder(backend=backend)
    load_s = time.perf_counter() - t
    tokens = [comps["exit"].counter.count(render_full(r.passages)) for r in requests]
    runs = [(m, name, backend, enc) for name, backend, enc in paths for m in comps]
    secs = {(m, name): 0.0 for m, name, _, _ in runs}
    ratios = {(m, name): [] for m, name, _, _ in runs}

    def run_one(m, backend, enc, req):
        os.environ["RAGPRESS_EMBEDDER_BACKEND"] = backend
        models.encode_texts = enc
        try:
            return comps[m].compress(req)
        finally:
            models.encode_texts = bucketed
            os.environ.pop("RAGPRESS_EMBEDDER_BACKEND", None)

    for m, _, backend, enc in runs:  # warm-up: first calls allocate
        run_one(m, backend, enc, requests[0])
    out = {"records": 0, "threads": args.threads, "budget": args.budget, "load_s": load_s,
           "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    for i, req in enumerate(requests):
        k = i % len(runs)
        for m, name, backend, enc in runs[k:] + runs[:k]:
            t = time.perf_counter()
            res = run_one(m, backend, enc, req)
            secs[(m, name)] += time.perf_counter() - t
            ratios[(m, name)].append(res.ratio)
        n_tok = sum(tokens[:i + 1])
        out["records"], out["tokens_in"] = i + 1, n_tok
        out["tokens_per_s"] = {f"{m} | {name}": n_tok / secs[(m, name)] for m, name, _, _ in runs}
        out["mean_ratio"] = {f"{m} | {name}": float(np.mean(ratios[(m, name)])) for m, name, _, _ in runs}
        out["load_average"] = max(out.get("load_average", 0.0), os.getloadavg()[0])
        print(f"record {i + 1}/{len(requests)}: " + ", ".join(
            f"{key} {v:,.0f} tok/s" for key, v in out["tokens_per_s"].items()), flush=True)
    # how far each backend's vectors are from float32's, on the very texts EXIT embeds
    texts = []
    for r in requests:
        units = sentence_units(r.passages)
        texts.append(r.query)
        for j, p in enumerate(r.passages):
            texts += document_texts(p.title, [unit_text(u, r.passages) for u in units if u.passage == j])
    ref = models.embed_texts(texts, backend="torch")
    out["cosine_vs_float32"] = {}
    for b in backends:
        cos = (models.embed_texts(texts, backend=b) * ref).sum(-1)
        out["cosine_vs_float32"][b] = {"mean": float(cos.mean()), "min": float(cos.min()),
                                       "p01": float(np.quantile(cos, 0.01)), "texts": len(texts)}
    print(write_methods_report(args, out, paths))


def write_methods_report(args, out: dict, paths) -> str:
    tps = out["tokens_per_s"]
    rows = []
    for name, _backend, _ in paths:
        e, s = tps[f"exit | {name}"], tps[f"embed-sentences | {name}"]
        rows.append(f"| {name} | {e:,.0f} | {s:,.0f} | {e / s:.2f}x |")
    base = tps["exit | unbucketed"]
    best = max((n for n, _, _ in paths), key=lambda n: tps[f"exit | {n}"])
    cos = "".join(f"* `{b}` embeddings vs float32 on the {c['texts']} texts EXIT embeds: cosine mean "
                  f"{c['mean']:.4f}, 1st percentile {c['p01']:.4f}, min {c['min']:.4f}\n"
                  for b, c in out["cosine_vs_float32"].items())
    md = f"""# EXIT and embed-sentences speed, per embedder path

Command: `.venv/bin/python benchmarks/exit_speed.py --limit {args.limit} --threads {args.threads} --backends {args.backends}`

{out['records']} HotpotQA dev records (distractor setting, 10 passages each; {out['tokens_in']:,} input
tokens in the reader's Qwen tokenizer), one request at a time at a {out['budget']} ratio, every
(method, path) pair on each record in rotating order; model loading ({out['load_s']:.1f} s, all paths) and
a warm-up request apart; no segment cache.

| embedder path | exit tokens/s | embed-sentences tokens/s | exit / embed-sentences |
|---|---:|---:|---:|
{chr(10).join(rows)}

* `exit` on `{best}`: {tps[f'exit | {best}'] / base:.2f}x its tokens/s on the previous (unbucketed) path
{cos}
torch {out['torch']}, {out['threads']} thread(s), {out['cpu_count']} CPUs visible, shared with other jobs
(1-minute load average up to {out['load_average']:.1f} during the run: absolute tokens/s scale with it, the
ratios between paths, measured interleaved, much less).
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    args.out.with_suffix(".md").write_text(md)
    return md


def main_lm(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from ragpress.compressors.exit import ExitCompressor, LMScorer
    from ragpress.core.types import Budget, CompressionRequest, Passage

    records = _records(args.data, args.limit)
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

Command: `.venv/bin/python benchmarks/exit_speed.py --lm --limit {args.limit} --threads {args.threads}`
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
