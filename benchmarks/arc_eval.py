"""ARC-Encoder soft tokens against text, read by the same reader.

Rows per dev set (HotpotQA distractor, NQ-open oracle; the first N records in file order): no
context, full text, ARC x4, ARC x8, and EXIT (the best text compressor of
``benchmarks/reader.py``) at the ratio ARC reached, counted in the same reader tokens, so the
reader gets about the same number of input positions. Figures: EM / F1 / answer bits, reader
prompt tokens, prefill ms per query (same batches, same reader) and encode ms per query.
Apart: bytes per cached segment (fp16 soft tokens vs the segment's UTF-8 text) and the
reconstruction token accuracy on held-out passages (HotpotQA *dev* paragraphs, never trained
on) for the shipped encoder, an untrained one, and the reader's text prior alone.

    python benchmarks/arc_eval.py --limit-hotpot 16 --limit-nq 32               # both parts, then the report
    python benchmarks/arc_eval.py --part text ... ; python benchmarks/arc_eval.py --part arc ...  # apart

Writes ``benchmarks/results/arc_eval.{md,json}`` (and each part's ``arc_eval_{text,arc}.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from ragpress.core.types import Budget
from ragpress.evaluation import default_data_dir, evaluate, load_records, reader_table

DATASETS = {"hotpotqa": "hotpotqa/hotpotqa_dev_distractor_sf.jsonl", "nq": "nq_open/nq_open_oracle.jsonl"}
RESULTS = Path(__file__).resolve().parent / "results"
READER_TOKENIZER = "SmolLM2-135M-Instruct"


def arc_ratio(records, pf: int) -> float:
    """The ratio ARC reaches at factor ``pf`` (reader positions / reader tokens of the full
    context): a function of the tokenization only, known before any weights are loaded."""
    from ragpress.compressors.arc import split_groups
    from ragpress.core.registry import create_compressor
    from ragpress.core.tokens import get_token_counter
    from ragpress.evaluation import full_context

    comp = create_compressor("arc")
    counter = get_token_counter(READER_TOKENIZER)
    ratios = []
    for r in records:
        segs = comp.segments(r.request(Budget(ratio=1 / pf)))
        ratios.append(sum(len(split_groups(len(s.ids), pf)) + 1 for s in segs) / counter.count(full_context(r)))
    return statistics.fmean(ratios)


def run_text(name: str, limit: int, reader) -> list:
    """No context, full text, and EXIT at the ratios ARC x4 / x8 reach (same reader tokens)."""
    records = load_records(default_data_dir() / DATASETS[name], limit=limit)
    rows = []
    for i, pf in enumerate((4, 8)):
        ratio = round(arc_ratio(records, pf), 3)
        more = evaluate(records, [("exit", {"tokenizer": READER_TOKENIZER})], [Budget(ratio=ratio)], dataset=name,
                        batch_size=8, reader=reader, references=i == 0)
        for m in more:
            if m.method == "exit":
                m.budget = f"{m.budget} (= ARC x{pf})"
        rows.extend(more)
    return rows


def run_arc(name: str, limit: int, reader) -> list:
    records = load_records(default_data_dir() / DATASETS[name], limit=limit)
    rows = evaluate(records, ["arc"], [Budget(ratio=0.25), Budget(ratio=0.125)], dataset=name, batch_size=8,
                    reader=reader, references=False)
    for r in rows:
        r.budget = f"x{round(1 / float(r.budget))}" if r.budget.replace(".", "").isdigit() else r.budget
    return rows


def bytes_per_segment(name: str, limit: int) -> dict:
    from ragpress.core.cache import encode_soft
    from ragpress.core.registry import create_compressor

    comp = create_compressor("arc")
    records = load_records(default_data_dir() / DATASETS[name], limit=limit)
    out = {}
    for pf in (4, 8):
        segs = [s for r in records for s in comp.segments(r.request(Budget(ratio=1 / pf)))]
        vecs = comp.soft_segments(segs, pf)
        out[f"x{pf}"] = {"segments": len(segs),
                         "soft_bytes_mean": round(statistics.fmean(len(encode_soft(v)) for v in vecs)),
                         "text_bytes_mean": round(statistics.fmean(len(s.text.encode()) for s in segs)),
                         "vectors_mean": round(statistics.fmean(v.shape[0] for v in vecs), 1)}
    return out


def reconstruction(n: int, tokens: int) -> dict:
    """Token accuracy of restoring held-out HotpotQA dev paragraphs (first ``tokens`` tokens)."""
    import torch

    from ragpress.compressors.arc import fresh_smollm2_encoder, load_offline
    from ragpress.core.models import load_causal_lm
    from ragpress.training.arc import _splice_loss, reconstruction_accuracy

    lm, tok = load_causal_lm(None)
    paras = []
    for r in load_records(default_data_dir() / DATASETS["hotpotqa"], limit=n):
        p = r.passages[-1]  # last paragraph: mostly distractors, never trained on
        paras.append(tok(f"{p.title}\n{p.text}", add_special_tokens=False)["input_ids"][:tokens])
    trained = load_offline()
    spec = trained.meta["spec"]
    fresh, _ = fresh_smollm2_encoder(spec["n_layers"], spec["lora_rank"], bridge_hidden=spec["bridge_hidden"], seed=1)
    fresh.eval()
    out = {"passages": len(paras), "tokens_each": tokens}
    for pf in (4, 8):
        out[f"trained_x{pf}"] = round(reconstruction_accuracy(lambda i, f, s: trained.encoder(i, f, s), lm, paras, pf), 4)
        out[f"untrained_x{pf}"] = round(reconstruction_accuracy(lambda i, f, s: fresh(i, f, s), lm, paras, pf), 4)
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    right = total = 0
    with torch.inference_mode():  # the reader's text prior: no soft tokens, a newline then the passage
        emb = lm.get_input_embeddings()
        for ids in paras:
            _, r_, n_ = _splice_loss(lm, [emb(torch.tensor(nl, device=emb.weight.device))], [ids])
            right, total = right + r_, total + n_
    out["text_prior_only"] = round(right / total, 4)
    return out


def machine() -> str:
    """Where a part ran: the GPU's name, or the CPU and its cores."""
    import os

    import torch

    from ragpress.core.models import default_device

    if default_device().startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (cuda, bf16 models; torch {torch.__version__})"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores (fp32 models; torch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    from ragpress.evaluation import Row
    from ragpress.readers import create_reader

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit-hotpot", type=int, default=20)
    p.add_argument("--limit-nq", type=int, default=40)
    p.add_argument("--datasets", default="hotpotqa,nq")
    p.add_argument("--recon-passages", type=int, default=16)
    p.add_argument("--part", choices=["all", "text", "arc", "report"], default="all",
                   help="text: no context / full / EXIT rows (no ARC weights needed); arc: the ARC rows, bytes and "
                        "reconstruction; report: merge both parts' JSON into the report")
    p.add_argument("--out", default=str(RESULTS / "arc_eval"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/arc_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = ["text", "arc"] if args.part == "all" else [] if args.part == "report" else [args.part]
    reader = create_reader("local", max_new_tokens=16) if parts else None
    for part in parts:
        t0 = time.perf_counter()
        data: dict = {"command": cmd, "machine": machine(), "datasets": {}}
        if part == "arc":
            data["reconstruction_held_out"] = reconstruction(args.recon_passages, 48)
        for name in args.datasets.split(","):
            limit = args.limit_hotpot if name == "hotpotqa" else args.limit_nq
            rows = (run_text if part == "text" else run_arc)(name, limit, reader)
            data["datasets"][name] = {"records": limit, "rows": [r.as_dict() for r in rows]}
            if part == "arc":
                data["datasets"][name]["bytes_per_segment"] = bytes_per_segment(name, min(limit, 10))
            print(reader_table(rows), file=sys.stderr)
            data["wall_s"] = round(time.perf_counter() - t0, 1)  # written after each dataset: partial runs count
            Path(f"{out}_{part}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        data["wall_s"] = round(time.perf_counter() - t0, 1)
        Path(f"{out}_{part}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    text = json.loads(Path(f"{out}_text.json").read_text())
    arc = json.loads(Path(f"{out}_arc.json").read_text())
    all_rows = []
    for name in arc["datasets"]:
        t_rows = text["datasets"].get(name, {}).get("rows", [])
        refs = [r for r in t_rows if r["method"].startswith("(")]
        others = [r for r in t_rows if not r["method"].startswith("(")]
        all_rows += [Row(**r) for r in refs + arc["datasets"][name]["rows"] + others]
    md = ["# ARC-Encoder vs text, one reader (SmolLM2-135M-Instruct, greedy, 16 new tokens)\n",
          f"Text rows: `{text['command']}` ({text['wall_s']} s on {text.get('machine', 'CPU')}); ARC rows: "
          f"`{arc['command']}` ({arc['wall_s']} s on {arc.get('machine', 'CPU')}). Encoder: "
          "`ragpress/compressors/weights/arc_smollm2.safetensors`. Where the two parts ran on different machines, "
          "compare EM / F1 / bits across them (bf16 on a GPU moves bits by up to ~0.2), and milliseconds only "
          "within a part.\n",
          "## Reader\n", reader_table(all_rows), "",
          "ARC rows: `ratio` and `reader tokens in` count soft vectors (one reader position each, one `<Cont>` per "
          "passage included); EXIT is budgeted at the ratio ARC reaches, in the same reader (SmolLM2) tokens. "
          "Prefill ms: the reader's share of its batched prefill, same batch size for every row.\n",
          "## Bytes per cached segment (fp16 soft tokens vs the segment's text)\n",
          "| dataset | factor | segments | vectors | soft-token bytes | text bytes |\n|---|---|---|---|---|---|"]
    for name, info in arc["datasets"].items():
        for k, b in info["bytes_per_segment"].items():
            md.append(f"| {name} | {k} | {b['segments']} | {b['vectors_mean']} | {b['soft_bytes_mean']:,} | "
                      f"{b['text_bytes_mean']:,} |")
    rec = arc["reconstruction_held_out"]
    md += [f"\n## Reconstruction on held-out passages ({rec['passages']} HotpotQA dev paragraphs, first "
           f"{rec['tokens_each']} tokens, teacher-forced token accuracy after `[soft][<Rec>]`)\n",
           "| encoder | x4 | x8 |\n|---|---|---|",
           f"| shipped (trained) | {rec['trained_x4']:.3f} | {rec['trained_x8']:.3f} |",
           f"| untrained (same init) | {rec['untrained_x4']:.3f} | {rec['untrained_x8']:.3f} |",
           f"| reader's text prior, no soft tokens | {rec['text_prior_only']:.3f} | |"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"text": text, "arc": arc}, indent=2, default=str) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
