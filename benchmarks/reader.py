"""End to end with a reader: does the compressed context still let an LLM answer, and what does
it cost? HotpotQA dev (distractor, ~1,500 tokens of context per question) and NQ-open dev (one
oracle passage, ~130 tokens), the first N records of each file in file order.

Rows: no context, full context, truncate 0.3, embed-sentences 0.3, EXIT 0.3 and EXIT threshold
0.5, each read by the same reader (default: the offline SmolLM2-135M-Instruct on CPU, greedy,
at most 16 new tokens). Figures per row: exact match and token F1 (SQuAD normalisation, best
alias), bits per token of the gold answer (teacher-forced after the same prompt), reader prompt
tokens, prefill ms per query, compress ms + read ms per query and its ratio to the full context;
apart, the same over the records whose gold answer is not in the full context.

Writes ``benchmarks/results/reader_<dataset>.{md,json,png}`` (+ ``_reader.png``: F1 and answer
bits against reader tokens) and ``reader_summary.md`` / ``reader_summary.png``.

    OMP_NUM_THREADS=2 python benchmarks/reader.py --limit-hotpot 60 --limit-nq 150
    # a 7B reader on a GPU (weights from the hub or a local path):
    python benchmarks/reader.py --reader-config '{"model": "Qwen/Qwen2.5-7B-Instruct", "batch_size": 16}'
    # or through vLLM (any OpenAI-compatible server):
    python benchmarks/reader.py --reader openai --base-url http://gpu:8000/v1 --reader-model Qwen/Qwen2.5-7B-Instruct
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from ragpress.evaluation import (
    REFERENCE_METHODS,
    Row,
    default_data_dir,
    evaluate,
    load_records,
    parse_budget,
    reader_table,
    write_report,
)

DATASETS = {
    "hotpotqa": "hotpotqa/hotpotqa_dev_distractor_sf.jsonl",
    "nq": "nq_open/nq_open_oracle.jsonl",
}
RESULTS = Path(__file__).resolve().parent / "results"
#: (methods, budget) pairs: one evaluate() call each, the reference rows only in the first
RUNS = [(["truncate", "embed-sentences", "exit"], "0.3"), (["exit"], "thr:0.5")]
DEFAULT_READER_CONFIG = {"max_new_tokens": 16}
GPU_COMMANDS = [
    "python benchmarks/reader.py --reader-config '{\"model\": \"Qwen/Qwen2.5-7B-Instruct\", \"batch_size\": 16}'",
    "python benchmarks/reader.py --reader openai --base-url http://gpu:8000/v1 --reader-model Qwen/Qwen2.5-7B-Instruct",
]


def make_reader(args):
    """The reader of the ``--reader*`` flags (the CLI's own builder), over the benchmark's defaults."""
    from ragpress.cli import reader_from_args

    args.reader_config = json.dumps({**DEFAULT_READER_CONFIG, **json.loads(args.reader_config or "{}")})
    return reader_from_args(args)


def timing_pass(records, reader, n: int) -> list[dict]:
    """Fair per-query cost on the first ``n`` records: every condition is read one query at a
    time (batch 1), conditions interleaved per record (rotated order), so machine load hits them
    alike. End to end = retrieve (query embedding + FAISS search over the shipped sample index,
    the same for every condition) + compress + prefill + decode."""
    from ragpress.core.registry import create_compressor
    from ragpress.evaluation import full_context
    from ragpress.indexes import VectorIndex
    from ragpress.pipelines.sample import ensure_sample_index

    recs = records[:n]
    index = VectorIndex.load(ensure_sample_index(show_progress=False))
    index.search(["warm-up"], k=5)
    t0 = time.perf_counter()
    for r in recs:
        index.search([r.query], k=5)
    retrieve_ms = 1000 * (time.perf_counter() - t0) / len(recs)
    conditions = {"(full)": ([full_context(r) for r in recs], 0.0)}
    for methods, budget in RUNS:
        for m in methods:
            comp = create_compressor(m)
            comp.compress(recs[0].request(parse_budget(budget)))  # loads its models
            t0 = time.perf_counter()
            texts = [comp.compress(r.request(parse_budget(budget))).text for r in recs]
            conditions[f"{m} @ {budget}"] = (texts, 1000 * (time.perf_counter() - t0) / len(recs))
    names = list(conditions)
    reader.read(recs[0].query, conditions["(full)"][0][0])  # warm
    acc = {c: {"prefill": 0.0, "decode": 0.0, "tokens": 0} for c in names}
    for k, r in enumerate(recs):
        for c in names[k % len(names):] + names[:k % len(names)]:
            a = reader.read(r.query, conditions[c][0][k] or None)
            acc[c]["prefill"] += a.prefill_ms
            acc[c]["decode"] += a.decode_ms
            acc[c]["tokens"] += a.tokens_in
    out = []
    for c in names:
        m = len(recs)
        d = {"condition": c, "tokens_in": acc[c]["tokens"] / m, "retrieve_ms": retrieve_ms,
             "compress_ms": conditions[c][1], "prefill_ms": acc[c]["prefill"] / m, "decode_ms": acc[c]["decode"] / m}
        d["e2e_ms"] = retrieve_ms + d["compress_ms"] + d["prefill_ms"] + d["decode_ms"]
        out.append(d)
    full = out[0]
    for d in out:
        d["prefill_vs_full"] = d["prefill_ms"] / full["prefill_ms"]
        d["e2e_vs_full"] = d["e2e_ms"] / full["e2e_ms"]
    return out


def timing_table(name: str, rows: list[dict], n: int) -> str:
    head = (f"Fair cost per query ({n} records, batch 1, conditions interleaved per record):\n\n"
            "| dataset | context | reader tokens in | retrieve ms | compress ms | prefill ms | decode ms "
            "| end to end ms | prefill vs full | end to end vs full |\n|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {name} | {d['condition']} | {d['tokens_in']:.0f} | {d['retrieve_ms']:.0f} | {d['compress_ms']:.0f} "
        f"| {d['prefill_ms']:.0f} | {d['decode_ms']:.0f} | {d['e2e_ms']:.0f} | {d['prefill_vs_full']:.2f} "
        f"| {d['e2e_vs_full']:.2f} |" for d in rows) + "\n"


def end_to_end(rows) -> list[dict]:
    """Per row: compress ms + read ms per query, and the ratio of that to the full context's."""
    full = next((r for r in rows if r.method == REFERENCE_METHODS[1]), None)
    out = []
    for r in rows:
        x = r.reader
        compress_ms = 1000 * r.compress_s / r.records if r.records else 0.0
        e2e = compress_ms + x["read_ms"]
        d = {"method": r.method, "budget": r.budget, "tokens_in": x["tokens_in"], "compress_ms": compress_ms,
             "prefill_ms": x["prefill_ms"], "read_ms": x["read_ms"], "e2e_ms": e2e}
        if full is not None:
            f = full.reader
            d["prefill_vs_full"] = x["prefill_ms"] / f["prefill_ms"]
            d["e2e_vs_full"] = e2e / f["read_ms"]
        out.append(d)
    return out


def e2e_table(name: str, e2e: list[dict]) -> str:
    head = ("| dataset | method | budget | reader tokens in | compress ms/q | prefill ms/q | read ms/q "
            "(prefill + decode) | compress + read ms/q | prefill vs full | compress + read vs full |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {name} | {d['method']} | {d['budget']} | {d['tokens_in']:.0f} | {d['compress_ms']:.0f} "
        f"| {d['prefill_ms']:.0f} | {d['read_ms']:.0f} | {d['e2e_ms']:.0f} "
        f"| {d.get('prefill_vs_full', float('nan')):.2f} | {d.get('e2e_vs_full', float('nan')):.2f} |"
        for d in e2e) + "\n"


def summary_plot(all_rows: dict, path: Path) -> None:
    """Reader F1 (top) and gold answer bits (bottom, when scored) against reader prompt tokens,
    one column per dataset."""
    from ragpress.evaluation import new_figure, reader_axis, reader_metrics, save_figure

    metrics = reader_metrics([r for rows in all_rows.values() for r in rows])
    fig, axes = new_figure(len(metrics), len(all_rows), height=4.0)
    for col, (name, rows) in enumerate(all_rows.items()):
        for row_i, (key, label, scale) in enumerate(metrics):
            reader_axis(axes[row_i][col], rows, key, label, scale)
            axes[row_i][col].set_title(f"{name} (n={rows[0].records})")
    save_figure(fig, path)


def section(name: str, rows, e2e: list[dict], wall_s: float, timing: dict | None = None) -> str:
    out = (f"## {name} ({rows[0].records} records, first in file order; {wall_s / 60:.1f} min)\n\n"
           + reader_table(rows) + "\n" + e2e_table(name, e2e))
    if timing:
        out += "\n" + timing_table(name, timing["rows"], timing["n"])
    return out


def write_summary(out_dir: Path, all_rows: dict, walls: dict, reader_desc: str, config: str, cmd: str,
                  total_s: float, env: str, timings: dict | None = None) -> Path:
    """``reader_summary.md`` (every dataset's reader and cost tables) and ``reader_summary.png``."""
    head = (f"# Reader end to end\n\n- reader: `{reader_desc}` config `{config}`\n- command: `{cmd}`\n"
            f"- wall time: {total_s / 60:.1f} min ({env + '; ' if env else ''}the CPU was shared with other jobs, "
            "so ms figures are loose)\n"
            "- EM / F1: SQuAD normalisation, best gold alias; answer bits: bits per token of the best gold alias, "
            "teacher-forced after the same prompt (lower is better); absent: records whose gold answer is not "
            "in the full context (yes/no included), also counted in the main figures; read ms = prefill + "
            "decode, shared out per query within a batch (loose under load: the fair cost tables, read one "
            "query at a time with the conditions interleaved, are the speed figures); compress ms excludes "
            "model loading.\n\n")
    timings = timings or {}
    sections = [section(name, rows, end_to_end(rows), walls[name], timings.get(name))
                for name, rows in all_rows.items()]
    gpu = "\n## The same benchmark with a 7B reader on a GPU\n\n" + "".join(f"    {c}\n" for c in GPU_COMMANDS)
    summary_plot(all_rows, out_dir / "reader_summary.png")
    path = out_dir / "reader_summary.md"
    path.write_text(head + "\n".join(sections) + "\n![reader F1 and answer bits vs tokens](reader_summary.png)\n"
                    + gpu, encoding="utf-8")
    return path


def summary_from_json(out_dir: Path, names: list[str]) -> Path:
    """Rebuild the summary (and the per-dataset reports) from ``reader_<name>.json``: no rerun."""
    all_rows, walls, meta, timings = {}, {}, {}, {}
    for name in names:
        js = json.loads((out_dir / f"reader_{name}.json").read_text(encoding="utf-8"))
        meta = js["meta"]
        if js.get("timing"):
            timings[name] = js["timing"]
        rows = [Row(**d) for d in js["rows"]]
        paths = write_report(rows, out_dir / f"reader_{name}", title=f"Reader end to end on {name} dev", meta=meta)
        _append_cost(paths, name, rows, timings.get(name))
        all_rows[name], walls[name] = rows, float(meta.get("wall_s", 0.0))
    return write_summary(out_dir, all_rows, walls, meta.get("reader", ""), meta.get("reader_config", ""),
                         meta.get("command", ""), float(meta.get("total_s", sum(walls.values()))),
                         meta.get("env", ""), timings)


def _append_cost(paths: dict, name: str, rows, timing: dict | None = None) -> None:
    """The cost tables go into the dataset's markdown and JSON report too."""
    e2e = end_to_end(rows)
    md = paths["md"]
    extra = "\n" + timing_table(name, timing["rows"], timing["n"]) if timing else ""
    md.write_text(md.read_text(encoding="utf-8") + "\n## Cost per query\n\n" + e2e_table(name, e2e) + extra,
                  encoding="utf-8")
    js = json.loads(paths["json"].read_text(encoding="utf-8"))
    js["end_to_end"] = e2e
    if timing:
        js["timing"] = timing
    paths["json"].write_text(json.dumps(js, indent=2), encoding="utf-8")


def _env() -> str:
    import torch

    return (f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), python {platform.python_version()}, "
            f"{'cuda' if torch.cuda.is_available() else 'cpu'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    ap.add_argument("--limit-hotpot", type=int, default=60, help="first N HotpotQA dev records (file order)")
    ap.add_argument("--limit-nq", type=int, default=150, help="first N NQ-open dev records (file order)")
    ap.add_argument("--reader", choices=["local", "openai"], default="local")
    ap.add_argument("--reader-config", default=None,
                    help=f"reader config JSON, merged over {json.dumps(DEFAULT_READER_CONFIG)}")
    ap.add_argument("--base-url", default=None, help="openai reader: the server's /v1 URL (key: OPENAI_API_KEY)")
    ap.add_argument("--reader-model", default=None, help="openai: the served model; local: a hub id or path")
    ap.add_argument("--data", default=None, help="the shared data folder (default: $RAGPRESS_DATA or ../shared/data)")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--timing-records", type=int, default=8,
                    help="records of the fair cost pass (batch 1, conditions interleaved); 0 = skip")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--summary-only", action="store_true",
                    help="rebuild the reports and reader_summary.* from reader_<dataset>.json (no rerun)")
    args = ap.parse_args(argv)

    out_dir = Path(args.out_dir)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for name in names:
        if name not in DATASETS:
            ap.error(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if args.summary_only:
        print(f"wrote {summary_from_json(out_dir, names)}")
        return 0
    t_start = time.perf_counter()
    data = Path(args.data) if args.data else default_data_dir()
    reader = make_reader(args)
    limits = {"hotpotqa": args.limit_hotpot, "nq": args.limit_nq}
    cmd = ("python benchmarks/reader.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    all_rows, walls, timings = {}, {}, {}
    for name in names:
        records = load_records(data / DATASETS[name], limits[name])
        t0 = time.perf_counter()
        rows = []
        for k, (methods, budget) in enumerate(RUNS):
            rows += evaluate(records, methods, [parse_budget(budget)], dataset=name, reader=reader,
                             references=k == 0, progress=not args.no_progress)
        wall = time.perf_counter() - t0
        if args.timing_records > 0:
            timings[name] = {"n": min(args.timing_records, len(records)),
                             "rows": timing_pass(records, reader, args.timing_records)}
        meta = {"dataset": DATASETS[name], "records": f"{len(records)} (first {len(records)} in file order)",
                "reader": f"{reader.name}: {reader.model_id}", "reader_config": reader.config.model_dump_json(),
                "command": cmd, "wall_s": round(wall, 1), "env": _env()}
        paths = write_report(rows, out_dir / f"reader_{name}", title=f"Reader end to end on {name} dev", meta=meta)
        _append_cost(paths, name, rows, timings.get(name))
        print("\n" + section(name, rows, end_to_end(rows), wall, timings.get(name)), flush=True)
        all_rows[name], walls[name] = rows, wall
    total = time.perf_counter() - t_start
    write_summary(out_dir, all_rows, walls, f"{reader.name}: {reader.model_id}", reader.config.model_dump_json(),
                  cmd, total, _env(), timings)
    print("\n## The same benchmark with a 7B reader on a GPU\n\n" + "".join(f"    {c}\n" for c in GPU_COMMANDS))
    print(f"total wall time {total / 60:.1f} min; wrote {out_dir}/reader_*.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
