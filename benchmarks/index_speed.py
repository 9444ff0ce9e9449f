"""Index build throughput and search latency on the shared Wikipedia passage sample.

    python benchmarks/index_speed.py [--data ../shared/data/wiki_passages/flashrag_wiki_sample1000.jsonl]

Reports, per index kind: passages/s while embedding (model load reported apart), FAISS add/train
time, and search latency (one query at a time, p50/p99; and a batch of 64 queries per call),
measured after a warm-up. Writes benchmarks/results/index_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wiki_passages" / "flashrag_wiki_sample1000.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index_speed"))
    args = ap.parse_args()

    import faiss
    import numpy as np

    from ragpress.core.models import load_embedder
    from ragpress.indexes import VectorIndex, chunk_documents, load_documents

    t0 = time.perf_counter()
    model = load_embedder()
    t_load = time.perf_counter() - t0
    passages = chunk_documents(load_documents(args.data), model.tokenizer)
    queries = [p.text.split(".")[0][:200] for p in passages[: args.queries]]

    rows = []
    base = None
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        idx = VectorIndex.build(passages, kind=kind, show_progress=False)
        build = time.perf_counter() - t0
        idx.search(queries[:4], k=5)  # warm-up
        single = []
        for q in queries:
            t = time.perf_counter()
            idx.search(q, k=5)
            single.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        hits = idx.search(queries[:64], k=5)
        batch_ms = (time.perf_counter() - t) * 1000
        # FAISS-only latency (vectors pre-embedded), where index kinds differ
        qv = model.encode(queries, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
        t = time.perf_counter()
        idx.index.search(qv, 5)
        faiss_us = (time.perf_counter() - t) / len(queries) * 1e6
        top1 = None
        if base is None:
            base = [h[0].passage.id for h in hits]
        top1 = sum(h[0].passage.id == b for h, b in zip(hits, base)) / len(base)
        single.sort()
        rows.append({
            "kind": kind, "passages": len(passages), "build_s": round(build, 2),
            "embed_passages_per_s": round(idx.meta["passages_per_second"], 1),
            "search_p50_ms": round(statistics.median(single), 2), "search_p99_ms": round(single[int(0.99 * (len(single) - 1))], 2),
            "batch64_ms": round(batch_ms, 1), "faiss_only_us_per_query": round(faiss_us, 1),
            "top1_agreement_with_flat": round(top1, 3),
        })
        print(rows[-1])
    out = {"data": args.data, "model_load_s": round(t_load, 2), "faiss": faiss.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    head = "| kind | passages | embed passages/s | build s | search p50 ms | p99 ms | 64-query batch ms | FAISS-only µs/query | top-1 = flat |"
    lines = [head, "|" + "---|" * 9]
    lines += [f"| {r['kind']} | {r['passages']} | {r['embed_passages_per_s']} | {r['build_s']} | {r['search_p50_ms']} | "
              f"{r['search_p99_ms']} | {r['batch64_ms']} | {r['faiss_only_us_per_query']} | {r['top1_agreement_with_flat']} |"
              for r in rows]
    md = f"Data: `{Path(args.data).name}`; embedder load {t_load:.1f} s (apart).\n\n" + "\n".join(lines) + "\n"
    Path(args.out + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
