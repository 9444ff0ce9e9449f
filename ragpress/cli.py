"""The ``ragpress`` command line. Each command is a ``_add_<name>(subparsers)`` /
``_cmd_<name>(args)`` pair; all of them call the library (no second implementation here).

    ragpress index build SOURCE --out DIR [--kind flat|hnsw|ivfpq]
    ragpress index search --index DIR --query "..." [-k 5]
    ragpress compress [--input FILE|-] [--method NAME] [--ratio R | --tokens N | --threshold T]
    ragpress answer --index DIR --query "..." [--method NAME] [--ratio R]
    ragpress eval DATASET.jsonl --methods a,b --budgets 0.3,0.5 [--limit N] [--out PREFIX]
    ragpress serve [--methods a,b] [--redis-url URL] [--port 8000] [--smoke]
    ragpress batch SOURCE --methods a,b --out DIR [--cache redis://...] [--workers N]
    ragpress train exit|cprs|arc [...]
    ragpress methods
    ragpress demo
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _add_budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, help="keep this share of the context's tokens, in (0, 1]")
    g.add_argument("--tokens", type=int, help="keep at most this many tokens")
    g.add_argument("--threshold", type=float, help="keep units whose relevance score reaches this, in [0, 1]")
    p.add_argument("--method", default="exit", help="compression method (default exit; see `ragpress methods`)")
    p.add_argument("--config", default=None, help="method config as JSON, e.g. '{\"embedder\": \"...\"}'")


def _budget(args):
    from ragpress.core.types import Budget

    given = {k: getattr(args, k) for k in ("ratio", "tokens", "threshold") if getattr(args, k) is not None}
    return Budget(**given) if given else None


def _compressor(args):
    from ragpress.core.errors import ConfigError
    from ragpress.core.registry import create_compressor

    try:
        config = json.loads(args.config) if args.config else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config is not valid JSON: {exc.msg}") from exc
    return create_compressor(args.method, config)


# ---------------------------------------------------------------------------- index
def _add_index(sub) -> None:
    p = sub.add_parser("index", help="build or search a FAISS index")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="index a JSONL or Parquet file (e.g. the compressed store of `ragpress batch --emit text`) or a folder of text/markdown/code files")
    b.add_argument("source", help="JSONL (id, title, text|contents) or a folder")
    b.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    b.add_argument("--kind", choices=["flat", "hnsw", "ivfpq"], default="flat")
    b.add_argument("--embedder", default=None, help="sentence-transformers id or path (default: offline MiniLM)")
    b.add_argument("--chunk-tokens", type=int, default=200, help="chunk window in embedder tokens")
    b.add_argument("--overlap", type=int, default=40, help="overlap between chunks in tokens")
    s = isub.add_parser("search", help="top-k passages for a query")
    s.add_argument("--index", required=True)
    s.add_argument("--query", required=True, action="append", help="repeat for a batch of queries")
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--json", action="store_true", help="print JSON")


def _cmd_index(args) -> int:
    from ragpress.indexes import VectorIndex, build_index

    if args.index_command == "build":
        t0 = time.perf_counter()
        idx = build_index(args.source, args.out, kind=args.kind, embedder=args.embedder,
                          window=args.chunk_tokens, overlap=args.overlap)
        pps = idx.meta.get("passages_per_second") or 0
        print(f"indexed {len(idx)} passages ({args.kind}) into {args.out} in {time.perf_counter() - t0:.1f} s "
              f"(embedding {pps:.1f} passages/s)")
        return 0
    idx = VectorIndex.load(args.index)
    t0 = time.perf_counter()
    results = idx.search(args.query, k=args.k)
    dt = time.perf_counter() - t0
    if args.json:
        print(json.dumps([{"query": q, "hits": [{"id": h.passage.id, "title": h.passage.title, "score": h.score,
                                                 "text": h.passage.text} for h in hits]}
                          for q, hits in zip(args.query, results)], indent=2, ensure_ascii=False))
    else:
        for q, hits in zip(args.query, results):
            print(f"# {q}")
            for h in hits:
                print(f"{h.rank + 1:>2}. [{h.score:.3f}] {h.passage.id}: {h.passage.text[:100]}")
        print(f"({len(args.query)} queries in {dt * 1000:.0f} ms)")
    return 0


# ---------------------------------------------------------------------------- compress
def _add_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a request: JSON in, JSON out",
                       description='Input: {"query": "...", "passages": ["text", {"id": .., "title": .., "text": ..}], '
                                   '"budget": {"ratio": 0.3}} (budget optional; CLI budget flags win).')
    p.add_argument("--input", default="-", help="request JSON file, or - for stdin")
    _add_budget_args(p)


def _cmd_compress(args) -> int:
    from ragpress.core.errors import InvalidRequestError
    from ragpress.core.types import CompressionRequest

    raw = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"input is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("passages"), list):
        raise InvalidRequestError('input must be a JSON object with a "passages" list')
    budget = _budget(args) or data.get("budget")
    request = CompressionRequest.of(data.get("query", ""), data["passages"],
                                    budget=None if budget is None else _as_budget(budget))
    result = _compressor(args).compress(request)
    print(result.model_dump_json(indent=2))
    return 0


def _as_budget(b):
    from ragpress.core.types import Budget

    return b if isinstance(b, Budget) else Budget(**b)


# ---------------------------------------------------------------------------- answer / demo
def _add_answer(sub) -> None:
    p = sub.add_parser("answer", help="retrieve -> compress -> read; print the answer, the context and the tokens saved")
    p.add_argument("--index", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("-k", type=int, default=5, help="passages to retrieve")
    p.add_argument("--json", action="store_true")
    _add_budget_args(p)
    add_reader_args(p, default="local")


def _print_pipeline_result(out, as_json: bool) -> None:
    c, a = out.compression, out.answer
    if as_json:
        print(json.dumps({"query": out.query, "answer": a.model_dump(mode="json") if a else None,
                          "hits": [{"id": h.passage.id, "score": h.score} for h in out.hits],
                          "compression": c.model_dump(mode="json"), "timings": out.timings}, indent=2))
        return
    print(f"Question: {out.query}\n")
    if a is not None:
        cut = f", context cut by {a.context_tokens_cut} tokens to fit" if a.context_tokens_cut else ""
        print(f"Answer ({a.model_id}): {a.text or '(empty)'}")
        print(f"  read {a.tokens_in} tokens: prefill {a.prefill_ms:.0f} ms, decode {a.decode_ms:.0f} ms "
              f"for {a.tokens_out} tokens{cut}\n")
    print("Retrieved: " + ", ".join(f"{h.passage.id} ({h.score:.2f})" for h in out.hits))
    print(f"\nCompressed context ({c.compressor}, {c.budget}):\n" + "-" * 60 + f"\n{c.text}\n" + "-" * 60)
    print(f"tokens before {c.tokens_before} -> after {c.tokens_after} (ratio {c.ratio:.2f}, "
          f"{c.tokens_saved} saved; {c.tokenizer} tokenizer)")
    print("timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in out.timings.items()))


def _cmd_answer(args) -> int:
    from ragpress.indexes import VectorIndex
    from ragpress.pipelines import RagPipeline

    pipe = RagPipeline(VectorIndex.load(args.index), _compressor(args), top_k=args.k, reader=reader_from_args(args))
    _print_pipeline_result(pipe.run(args.query, _budget(args)), args.json)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="index the shipped sample corpus and answer a question through the pipeline")
    p.add_argument("--query", default=None)
    p.add_argument("-k", type=int, default=5)
    _add_budget_args(p)


def _cmd_demo(args) -> int:
    from ragpress.core.types import Budget
    from ragpress.indexes import VectorIndex
    from ragpress.pipelines import SAMPLE_QUESTION, RagPipeline, ensure_sample_index

    t0 = time.perf_counter()
    path = ensure_sample_index()
    index = VectorIndex.load(path)
    print(f"sample index: {len(index)} passages at {path} ({time.perf_counter() - t0:.1f} s)\n")
    pipe = RagPipeline(index, _compressor(args), top_k=args.k)
    _print_pipeline_result(pipe.run(args.query or SAMPLE_QUESTION, _budget(args) or Budget(ratio=0.3)), False)
    return 0


def _add_methods(sub) -> None:
    sub.add_parser("methods", help="list compression methods and readers (plugins included) and what they support")


def _precomputable(cls) -> bool:
    """Whether the method, with its default config, has query-independent work for `ragpress batch`
    (building a compressor loads no model)."""
    flag = cls.precomputable
    return flag if isinstance(flag, bool) else bool(cls().precomputable)


def _cmd_methods(args) -> int:
    from ragpress.core.errors import PluginError
    from ragpress.core.registry import compressors
    from ragpress.readers.registry import readers

    def loaded(registry):  # (name, class) of each name whose plugin loads; the others are reported below
        for name in registry.names():
            try:
                yield name, registry.get(name)
            except PluginError:
                pass

    for name, cls in loaded(compressors):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        kinds = [k for k, on in (("query-aware", cls.query_aware), ("code", cls.handles_code),
                                 ("soft-tokens", cls.soft_tokens),
                                 ("precomputable", _precomputable(cls))) if on]
        print(f"{name:<18} budgets: {','.join(sorted(cls.budget_modes)):<24} {' '.join(kinds):<14} {doc}")
    print("\nreaders:")
    for name, cls in loaded(readers):
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        print(f"{name:<18} {doc.splitlines()[0] if doc else ''}")
    for exc in [*compressors.errors(), *readers.errors()]:  # broken plugins: said, and left out
        print(f"plugin error: {exc.message}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- eval
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="measure methods on a QA dataset: ratio, answer / supporting recall, speed")
    p.add_argument("dataset", help="a QA JSONL file, e.g. ../shared/data/hotpotqa/hotpotqa_dev_distractor_sf.jsonl")
    p.add_argument("--methods", default="truncate,embed-passages,embed-sentences",
                   help="comma-separated method names (see `ragpress methods`)")
    p.add_argument("--budgets", default="0.3,0.5",
                   help="comma-separated budgets: 0.3 (ratio), tokens:200, thr:0.5 (threshold, optionally +floor:0.2+ceiling:0.6+skip:256), auto (Budget.adaptive())")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--tasks", default=None, help="only records of these comma-separated tasks (LongBench: "
                                                 "hotpotqa,2wikimqa,musique,triviaqa)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="write PREFIX.md, PREFIX.json and PREFIX.png")
    add_reader_args(p)


def add_reader_args(p, default: str | None = None) -> None:
    """``--reader local|openai|none``, ``--reader-config JSON``, ``--base-url``, ``--reader-model``."""
    p.add_argument("--reader", default=default,
                   help=f"answer with a reader (local: offline SmolLM2-135M unless --reader-config or --reader-model "
                        f"names a model; openai: any OpenAI-compatible server; a plugin's reader, see `ragpress "
                        f"methods`; none; default {default or 'none'})")
    p.add_argument("--reader-config", default=None,
                   help='reader config as JSON, e.g. \'{"model": "Qwen/Qwen2.5-7B-Instruct", "batch_size": 16}\'')
    p.add_argument("--base-url", default=None, help="openai reader: the server's /v1 URL (key from OPENAI_API_KEY)")
    p.add_argument("--reader-model", default=None, help="the reader's model (openai: required; local: a hub id or path)")


def reader_from_args(args):
    """The reader the ``--reader*`` flags ask for, or None."""
    from ragpress.core.errors import ConfigError
    from ragpress.readers import create_reader

    if not args.reader or args.reader == "none":
        if args.reader_config or args.base_url or args.reader_model:
            raise ConfigError("--reader-config, --base-url and --reader-model need --reader local|openai")
        return None
    try:
        config = json.loads(args.reader_config) if args.reader_config else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--reader-config is not JSON: {exc.msg}") from None
    if not isinstance(config, dict):
        raise ConfigError("--reader-config must be a JSON object")
    if args.reader_model:
        config["model"] = args.reader_model
    if args.reader == "openai":
        if args.base_url:
            config["base_url"] = args.base_url
        if not config.get("base_url") or not config.get("model"):
            raise ConfigError("--reader openai needs --base-url URL and --reader-model NAME")
    elif args.base_url:
        raise ConfigError("--base-url is for --reader openai")
    return create_reader(args.reader, config)


def _cmd_eval(args) -> int:
    from ragpress.evaluation import evaluate, load_records, markdown_table, parse_budget, reader_table, write_report

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    records = load_records(args.dataset, args.limit, tasks)
    budgets = [parse_budget(b) for b in args.budgets.split(",") if b.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    name = Path(args.dataset).stem
    reader = reader_from_args(args)
    rows = evaluate(records, methods, budgets, dataset=name, batch_size=args.batch_size, reader=reader)
    print(markdown_table(rows))
    if reader is not None:
        print(reader_table(rows))
    if args.out:
        meta = {"dataset": args.dataset, "records": len(records), "command": "ragpress " + " ".join(sys.argv[1:])}
        paths = write_report(rows, args.out, title=f"Compression quality on {name}", meta=meta)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


# ---------------------------------------------------------------------------- serve
def _add_serve(sub) -> None:
    from ragpress.services.serve_cli import add_serve_parser

    add_serve_parser(sub)


def _cmd_serve(args) -> int:
    from ragpress.services.serve_cli import run_serve

    return run_serve(args)


# ---------------------------------------------------------------------------- train
def _add_batch(sub) -> None:
    from ragpress.batch import add_batch_parser

    add_batch_parser(sub)


def _cmd_batch(args) -> int:
    from ragpress.batch import run_batch_cli

    return run_batch_cli(args)


def _add_train(sub) -> None:
    from ragpress.training.cprs import add_train_cprs_parser
    from ragpress.training.exit import add_train_exit_parser

    p = sub.add_parser("train", help="train the offline heads of the learned compressors (on *train* files only)")
    ts = p.add_subparsers(dest="target", required=True)
    add_train_exit_parser(ts)
    add_train_cprs_parser(ts)
    from ragpress.training.arc import add_train_arc_parser

    add_train_arc_parser(ts)


def _cmd_train(args) -> int:
    return args.func(args)


COMMANDS = ["index", "compress", "answer", "eval", "serve", "batch", "train", "demo", "methods"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragpress", description="RAG context compression that keeps the evidence")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        globals()[f"_add_{name}"](sub)
    return parser


SUPERVISED = ("serve", "batch")  # long-running commands that start Ray: shielded from signals to their group


def main(argv: list[str] | None = None) -> int:
    from ragpress.core.errors import RagpressError

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if argv is None and command in SUPERVISED and not {"-h", "--help"} & set(sys.argv[1:]):
        from ragpress.core.lifecycle import run_in_own_session

        if (code := run_in_own_session(sys.argv[1:])) is not None:  # this process was the supervisor
            return code
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return globals()[f"_cmd_{args.command}"](args)
    except RagpressError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
