"""LangChain retriever: N queries one after another (``invoke``) against the same N queries at
once (``asyncio.gather`` of ``ainvoke``), in process (the micro-batcher gathers concurrent calls
into one ``compress_batch``) and, with ``--endpoint``, against a running ragpress service.

    python benchmarks/langchain_async.py --queries 8 --top-k 4 --method embed-sentences
    python benchmarks/langchain_async.py --endpoint http://127.0.0.1:8000 --queries 8

Prints wall seconds, queries/s and the async / sequential speed ratio, measured in the same run
(warm first; rounds interleaved; the questions are the sample corpus's titles turned into
questions, fresh ones for every mode and round so that no result cache answers), and whether
both modes return the same documents for the same questions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time


def questions(n: int) -> list[str]:
    from ragpress.pipelines.sample import SAMPLE_CORPUS

    rows = [json.loads(line) for line in SAMPLE_CORPUS.read_text().splitlines()]
    titles = list(dict.fromkeys(r["title"].split("#")[0] for r in rows))
    return [f"What does {t} do and how is it used?" for t in titles[:n]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--method", default="embed-sentences")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--endpoint", default=None, help="a running ragpress service (remote mode)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, the two modes interleaved; medians reported")
    args = ap.parse_args(argv)

    from ragpress.integrations.langchain import RagpressCompressor, RagpressRetriever

    comp = dict(method=args.method, ratio=args.ratio)
    if args.endpoint:
        retriever = RagpressRetriever(endpoint=args.endpoint, top_k=args.top_k,
                                      compressor=RagpressCompressor(endpoint=args.endpoint, **comp))
        mode = f"remote {args.endpoint}"
    else:
        from ragpress.indexes import VectorIndex
        from ragpress.pipelines.sample import ensure_sample_index

        retriever = RagpressRetriever(index=VectorIndex.load(ensure_sample_index()), top_k=args.top_k,
                                      compressor=RagpressCompressor(**comp))
        mode = "in process"
    n = args.queries
    # fresh questions for every mode and round: a service's result cache never answers
    qs = questions(n * (2 * args.rounds + 1))
    warm = qs[-1]
    retriever.invoke(warm)  # warm: models loaded, connections open

    async def together(batch):
        return await asyncio.gather(*(retriever.ainvoke(q) for q in batch))

    asyncio.run(retriever.ainvoke(warm))  # warm the async path too
    seq_s, conc_s = [], []
    for r in range(args.rounds):  # interleaved, so drift in machine load hits both modes alike
        t0 = time.perf_counter()
        seq = [retriever.invoke(q) for q in qs[2 * r * n:(2 * r + 1) * n]]
        seq_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        asyncio.run(together(qs[(2 * r + 1) * n:(2 * r + 2) * n]))
        conc_s.append(time.perf_counter() - t0)
    t_seq, t_conc = statistics.median(seq_s), statistics.median(conc_s)
    again = asyncio.run(together(qs[2 * (args.rounds - 1) * n:(2 * args.rounds - 1) * n]))
    same = [[d.page_content for d in a] for a in seq] == [[d.page_content for d in b] for b in again]
    print(f"{mode}: {n} queries, top_k {args.top_k}, {args.method} ratio {args.ratio}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"  sequential invoke : {t_seq:7.2f} s  {n / t_seq:6.2f} queries/s")
    print(f"  gathered ainvoke  : {t_conc:7.2f} s  {n / t_conc:6.2f} queries/s")
    print(f"  async / sequential speed: {t_seq / t_conc:.2f}x   same documents: {same}")


if __name__ == "__main__":
    main()
