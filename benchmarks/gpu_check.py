"""GPU check: the FAISS GPU index, every compressor and the reader on ``cuda``, against the CPU path.

    python benchmarks/gpu_check.py                     # on a machine with a CUDA GPU (the CPU side takes longest)
    python benchmarks/gpu_check.py --tiny-published    # + tiny stand-ins of the published checkpoints
    python benchmarks/gpu_check.py --tiny-only         # only the stand-ins: needs no offline weights
    python benchmarks/gpu_check.py --allow-cpu         # no GPU: the same checks, cpu against cpu

Each side runs in its own process (``RAGPRESS_DEVICE=cpu`` / ``cuda``: every loader, cache and
memo starts empty) on the same few HotpotQA dev records (and one LongBench code file for the code
methods). The parent compares them:

* extractive methods must keep the same spans; where a bf16 LM scores on the GPU (``exit-lm``,
  ``cprs``, ``longcodezip``) a near-tie may flip, so they must agree on >= 90 % of the kept
  characters with a mean score difference <= 0.05; fp32 methods (MiniLM, the EXIT head,
  truncation) must match exactly (scores within 1e-3);
* abstractive methods (TCRA summaries) and the reader report whether their text matches; the
  reader's gold-answer bits must be within 0.5 bits;
* **no silent fallback**: on the GPU side every ``torch.nn.Module`` alive after a method ran must
  have all its parameters on ``cuda``, the method must have allocated CUDA memory (those that use
  a model), and the FAISS index must be a GPU index; any of these failing is a FAIL.

It prints one table (time per method on each side, the ratio, agreement) and exits 1 on any
FAIL, 2 when there is no CUDA device (unless ``--allow-cpu``). ``--tiny-published`` also runs the
tiny architecture-faithful stand-ins of the published checkpoints (``ragpress.testing.tiny_hub``:
EXIT's Gemma + LoRA, QwenLong-CPRS, Qwen2.5-Coder, T5, BART, Qwen2.5 / Llama-3.1 readers) by hub id
from a temporary hub cache: random weights, so only running on ``cuda`` in bf16 without fallback is
checked, not agreement. SIGINT / SIGTERM stop the worker and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it
from ragpress.qa import default_data_dir  # noqa: E402  ($RAGPRESS_DATA, else shared/data beside the checkout)

DATA = default_data_dir()
HOTPOT = DATA / "hotpotqa" / "hotpotqa_dev_distractor_sf.jsonl"
CODE = DATA / "code_completion" / "longbench_code_mini49.jsonl"

# name -> (registered compressor, config, kind: text | code, check: exact | close | abstractive | run)
METHODS: dict[str, tuple[str, dict, str, str]] = {
    "truncate": ("truncate", {}, "text", "exact"),
    "embed-sentences": ("embed-sentences", {}, "text", "exact"),
    "embed-passages": ("embed-passages", {}, "text", "exact"),
    "exit": ("exit", {}, "text", "exact"),
    "exit-lm": ("exit", {"scorer": "lm"}, "text", "close"),
    "cprs": ("cprs", {"score_cache_size": 0}, "text", "close"),
    "tcra-semantic": ("tcra-semantic", {}, "text", "exact"),
    "tcra-summary": ("tcra-summary", {}, "text", "abstractive"),
    "tcra": ("tcra", {}, "text", "abstractive"),
    "code-rag": ("code-rag", {}, "code", "exact"),
    "longcodezip": ("longcodezip", {}, "code", "close"),
}
WARM_UP: dict = {}  # kind -> a small request run once before timing (filled in the worker)
NO_MODEL = {"truncate"}  # methods that load no torch model (no CUDA memory expected)
EXACT_SCORE_TOL = 1e-3
CLOSE_SCORE_TOL = 0.05
CLOSE_MIN_OVERLAP = 0.9
READER_BITS_TOL = 0.5


def tiny_methods(ids: dict[str, str]) -> dict[str, tuple[str, dict, str, str]]:
    return {
        "tiny exit (Gemma+LoRA)": ("exit", {"model": ids["exit"]}, "text", "run"),
        "tiny exit (Gemma-2+LoRA)": ("exit", {"model": ids["exit_gemma2"]}, "text", "run"),
        "tiny cprs (QwenLong layout)": ("cprs", {"model": ids["cprs"], "score_cache_size": 0, "window_tokens": 256},
                                        "text", "run"),
        "tiny longcodezip (Qwen2.5-Coder)": ("longcodezip", {"model": ids["code_lm"]}, "code", "run"),
        "tiny tcra-summary (T5)": ("tcra-summary", {"summarizer": ids["t5"]}, "text", "run"),
        "tiny tcra-summary (BART)": ("tcra-summary", {"summarizer": ids["bart"]}, "text", "run"),
    }


# ----------------------------------------------------------------------------------- worker side
def _requests(limit: int, code_chars: int):
    from ragpress.core.types import Budget, CompressionRequest, Passage
    from ragpress.qa import load_records

    text = [r.request(Budget(ratio=0.5)) for r in load_records(HOTPOT, limit)]
    code = []
    with open(CODE, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("language", "python") == "python" or len(code) == 0:
                ctx = r["context"][-code_chars:]
                ctx = ctx[ctx.find("\n") + 1:]
                lines = ctx.rstrip("\n").split("\n")
                query = "\n".join(lines[-4:])
                body = "\n".join(lines[:-4]) + "\n"
                code = [CompressionRequest(query=query, passages=[Passage(id=r["id"], text=body,
                                                                          metadata={"language": r.get("language")})],
                                           budget=Budget(ratio=0.5))]
                if r.get("language", "python") == "python":
                    break
    return text, code


def _modules_off_device(device: str) -> list[str]:
    """Classes of live torch modules with a parameter not on ``device`` (a silent fallback)."""
    import gc

    import torch

    module = torch.nn.Module
    bad = set()
    for obj in gc.get_objects():
        if not issubclass(type(obj), module):  # type(), not isinstance: lazy-module proxies stay asleep
            continue
        for p in obj.parameters(recurse=False):
            if p.device.type != device:
                bad.add(f"{type(obj).__name__}@{p.device.type}")
                break
    return sorted(bad)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def worker(args) -> None:
    import torch

    from ragpress import create_compressor

    device = os.environ["RAGPRESS_DEVICE"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check worker: RAGPRESS_DEVICE=cuda but torch sees no CUDA device")
    methods = {} if args.tiny_only else dict(METHODS) if not args.methods else {m: METHODS[m] for m in args.methods}
    if args.tiny_published:
        methods.update(tiny_methods(json.loads(args.tiny_ids)))
    text_reqs, code_reqs = _requests(args.limit, args.code_chars)
    from ragpress.core.types import Budget, CompressionRequest, Passage

    WARM_UP.update(
        text=CompressionRequest.of("Who wrote it?", ["The book was written in 1990 by a chemist. It sold well."],
                                   ratio=0.5),
        code=CompressionRequest(query="    return total", budget=Budget(ratio=0.5), passages=[Passage(
            id="w", text="def add(a, b):\n    total = a + b\n    print(total)\n    total += 1\n\n\n"
                         "def sub(a, b):\n    return a - b\n", metadata={"language": "python"})]))
    out: dict = {"device": device, "torch": torch.__version__, "methods": {}, "reader": None, "faiss": None}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    from tqdm import tqdm

    for label, (name, cfg, kind, _) in tqdm(methods.items(), desc=f"compressors on {device}", file=sys.stderr):
        reqs = code_reqs if kind == "code" else text_reqs
        rec: dict = {}
        try:
            comp = create_compressor(name, **cfg)
            comp.compress_batch([WARM_UP[kind]])  # model load, kernels, CUDA context (another text:
            # nothing of the measured requests is memoised by it)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t0 = time.perf_counter()
            results = comp.compress_batch(reqs)
            _sync(device)
            rec["seconds"] = time.perf_counter() - t0
            rec["results"] = [{"text": r.text, "tokens_after": r.tokens_after, "ratio": r.ratio,
                               "spans": [[s.passage_id, s.start, s.end, s.score] for s in r.spans]} for r in results]
            if device == "cuda":
                rec["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
            rec["off_device"] = _modules_off_device(device)
        except Exception as exc:  # reported, and a FAIL: the parent compares
            rec["error"] = f"{type(exc).__name__}: {exc}"
        out["methods"][label] = rec
    if not args.no_reader:
        out["reader"] = _run_reader(args, device, text_reqs)
    if not args.no_faiss:
        out["faiss"] = _run_faiss(args, device, text_reqs)
    Path(args.out).write_text(json.dumps(out))


def _run_reader(args, device: str, reqs) -> dict:
    import torch

    from ragpress.readers.local import LocalReader

    readers = {} if args.tiny_only else {"reader": None}
    if args.tiny_published:
        ids = json.loads(args.tiny_ids)
        readers.update({"tiny reader (Qwen2.5)": ids["qwen_reader"], "tiny reader (Llama-3.1)": ids["llama_reader"]})
    out = {}
    queries = [r.query for r in reqs]
    contexts = ["\n\n".join(p.text for p in r.passages[:3]) for r in reqs]
    from ragpress.qa import load_records

    answers = [r.answers for r in load_records(HOTPOT, args.limit)]
    for label, model in readers.items():
        rec: dict = {}
        try:
            reader = LocalReader(model=model, batch_size=4)
            reader.read_batch(["Who wrote it?"], ["The book was written in 1990 by a chemist."], max_new_tokens=2)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t0 = time.perf_counter()
            got = reader.read_batch(queries, contexts, max_new_tokens=args.max_new_tokens)
            _sync(device)
            rec["seconds"] = time.perf_counter() - t0
            rec["answers"] = [a.text for a in got]
            rec["tokens_in"] = [a.tokens_in for a in got]
            rec["bits"] = reader.answer_bits(queries, contexts, answers)
            rec["device_seen"] = str(reader.device)
            if device == "cuda":
                rec["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
            rec["off_device"] = _modules_off_device(device)
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        out[label] = rec
    return out


def _run_faiss(args, device: str, reqs) -> dict:
    import faiss
    import numpy as np

    from ragpress.core.types import Passage
    from ragpress.indexes.faiss_index import VectorIndex

    passages = [Passage(id=f"{i}:{j}", title=p.title, text=p.text)
                for i, r in enumerate(reqs) for j, p in enumerate(r.passages)]
    rec: dict = {"gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0}
    try:
        index = VectorIndex.build(passages, kind="flat", show_progress=False)
        rec["search_index"] = type(index._search_index).__name__
        t0 = time.perf_counter()
        hits = index.search([r.query for r in reqs], k=5)
        rec["seconds"] = time.perf_counter() - t0
        rec["hits"] = [[h.passage.id for h in hs] for hs in hits]
        rec["scores"] = [[float(h.score) for h in hs] for hs in hits]
        del np
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    return rec


# ----------------------------------------------------------------------------------- parent side
def _chars(spans) -> set[tuple[str, int]]:
    return {(pid, i) for pid, a, b, _ in spans for i in range(a, b)}


def compare_method(check: str, ref: dict, got: dict, device: str, needs_model: bool = True) -> tuple[str, str]:
    """``(status, detail)`` for one method: the CPU record ``ref`` against the target's ``got``.
    Status is PASS or FAIL; any error, a module left off ``device`` or (on ``cuda``) no CUDA memory
    allocated by a method that uses a model fails."""
    if "error" in got or "error" in ref:
        return "FAIL", f"error: {got.get('error') or ref.get('error')}"
    if got.get("off_device"):
        return "FAIL", f"silent fallback: modules not on {device}: {', '.join(got['off_device'])}"
    if device == "cuda" and needs_model and not got.get("cuda_peak_bytes"):
        return "FAIL", "silent fallback: no CUDA memory was allocated while it ran"
    if check == "run":
        ok = all(r["tokens_after"] >= 0 for r in got["results"])
        return ("PASS" if ok else "FAIL"), "ran on the device (random weights: agreement not checked)"
    same_text = [a["text"] == b["text"] for a, b in zip(ref["results"], got["results"])]
    if check == "abstractive":
        return "PASS", f"same text {sum(same_text)}/{len(same_text)}"
    same, overlap, diffs = 0, [], []
    for a, b in zip(ref["results"], got["results"]):
        sa = {(p, s, e) for p, s, e, _ in a["spans"]}
        sb = {(p, s, e) for p, s, e, _ in b["spans"]}
        same += sa == sb
        ca, cb = _chars(a["spans"]), _chars(b["spans"])
        overlap.append(len(ca & cb) / max(1, len(ca | cb)))
        score_b = {(p, s, e): sc for p, s, e, sc in b["spans"]}
        diffs += [abs(sc - score_b[(p, s, e)]) for p, s, e, sc in a["spans"]
                  if (p, s, e) in score_b and sc is not None and score_b[(p, s, e)] is not None]
    n = len(ref["results"])
    mean_overlap = sum(overlap) / max(1, n)
    max_diff = max(diffs, default=0.0)
    mean_diff = sum(diffs) / len(diffs) if diffs else 0.0
    detail = f"same spans {same}/{n}, kept-char overlap {mean_overlap:.3f}, max |dscore| {max_diff:.2g}"
    if check == "exact":
        ok = same == n and max_diff <= EXACT_SCORE_TOL
    else:
        ok = mean_overlap >= CLOSE_MIN_OVERLAP and mean_diff <= CLOSE_SCORE_TOL
    return ("PASS" if ok else "FAIL"), detail


def compare_reader(ref: dict, got: dict, device: str, tiny: bool) -> tuple[str, str]:
    if "error" in got or "error" in ref:
        return "FAIL", f"error: {got.get('error') or ref.get('error')}"
    if got.get("off_device"):
        return "FAIL", f"silent fallback: modules not on {device}: {', '.join(got['off_device'])}"
    if not got.get("device_seen", "").startswith(device):
        return "FAIL", f"silent fallback: the reader runs on {got.get('device_seen')}"
    if device == "cuda" and not got.get("cuda_peak_bytes"):
        return "FAIL", "silent fallback: no CUDA memory was allocated while it read"
    if tiny:
        return "PASS", "ran on the device (random weights: agreement not checked)"
    same = sum(a == b for a, b in zip(ref["answers"], got["answers"]))
    diffs = [abs(a - b) for a, b in zip(ref["bits"], got["bits"]) if a is not None and b is not None]
    worst = max(diffs, default=0.0)
    ok = ref["tokens_in"] == got["tokens_in"] and worst <= READER_BITS_TOL
    return ("PASS" if ok else "FAIL"), f"same answers {same}/{len(ref['answers'])}, max |dbits| {worst:.3f}"


def compare_faiss(ref: dict, got: dict, device: str) -> tuple[str, str]:
    if "error" in got or "error" in ref:
        return "FAIL", f"error: {got.get('error') or ref.get('error')}"
    if device == "cuda" and not got["search_index"].startswith("Gpu"):
        need = ("the installed faiss has no GPU support: install faiss-gpu (pip install 'ragpress[gpu]', "
                "faiss-gpu 1.15.x for Python 3.11)") if got["gpus"] == 0 else "faiss sees a GPU but the index stayed on the CPU"
        return "FAIL", f"silent fallback: search index is {got['search_index']}; {need}"
    same = sum(a == b for a, b in zip(ref["hits"], got["hits"]))
    ok = same == len(ref["hits"])
    return ("PASS" if ok else "FAIL"), f"{got['search_index']}, same top-5 {same}/{len(ref['hits'])}"


def _run_worker(device: str, args, extra_env: dict, out: Path) -> int:
    env = {**os.environ, **extra_env, "RAGPRESS_DEVICE": device}
    cmd = [sys.executable, __file__, "--_worker", "--out", str(out), "--limit", str(args.limit),
           "--code-chars", str(args.code_chars), "--max-new-tokens", str(args.max_new_tokens)]
    cmd += ["--methods", *args.methods] if args.methods else []
    cmd += ["--no-reader"] if args.no_reader else []
    cmd += ["--no-faiss"] if args.no_faiss else []
    cmd += ["--tiny-only"] if args.tiny_only else []
    if args.tiny_published:
        cmd += ["--tiny-published", "--tiny-ids", args.tiny_ids]
    proc = subprocess.Popen(cmd, env=env)
    stopped: list[int] = []

    def stop(signum, _frame):  # forward only: calling proc.wait() here would deadlock the outer wait
        stopped.append(signum)
        proc.send_signal(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stopped:
        print(f"gpu_check: stopped by signal {stopped[0]}", file=sys.stderr)
        raise SystemExit(128 + stopped[0])
    return rc


def _fmt_s(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--allow-cpu", action="store_true", help="without a GPU, run the checks cpu against cpu")
    p.add_argument("--limit", type=int, default=3, help="HotpotQA dev records (default 3)")
    p.add_argument("--code-chars", type=int, default=3000, help="characters of the code file (default 3000)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), help="only these compressors")
    p.add_argument("--no-reader", action="store_true")
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--tiny-published", action="store_true",
                   help="also run tiny stand-ins of the published checkpoints by hub id (random weights)")
    p.add_argument("--tiny-only", action="store_true",
                   help="only the tiny stand-ins (implies --tiny-published and --no-faiss): no offline weights needed")
    p.add_argument("--json", type=Path, help="write both sides' records and the verdicts here")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--tiny-ids", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny_only:
        args.tiny_published, args.no_faiss = True, True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args._worker:
        worker(args)
        return 0

    import torch

    if torch.cuda.is_available():
        target = "cuda"
    elif args.allow_cpu:
        target = "cpu"
        print("gpu_check: no CUDA device; --allow-cpu: running the same checks cpu against cpu", flush=True)
    else:
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}; "
              "torch.cuda.is_available() is False). Run it on a machine with an NVIDIA GPU and a CUDA build of "
              "torch, or pass --allow-cpu to exercise the checks cpu against cpu.", file=sys.stderr)
        return 2
    for path in (HOTPOT, CODE):
        if not path.exists():
            print(f"gpu_check: data file {path} is missing (the shared data directory)", file=sys.stderr)
            return 2
    extra_env: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if args.tiny_published:
            from ragpress.testing.tiny_hub import build_all

            hub = Path(tmp) / "hub"
            args.tiny_ids = json.dumps(build_all(hub))
            extra_env["HF_HUB_CACHE"] = str(hub)
        sides = {}
        for label, device in (("cpu", "cpu"), ("target", target)):
            print(f"gpu_check: running on {device} ...", flush=True)
            out = Path(tmp) / f"{label}.json"
            rc = _run_worker(device, args, extra_env, out)
            if rc != 0 or not out.exists():
                print(f"gpu_check: FAIL: the {device} worker exited with {rc}", file=sys.stderr)
                return 1
            sides[label] = json.loads(out.read_text())
    ref, got = sides["cpu"], sides["target"]
    rows, failed = [], 0
    all_methods = dict(METHODS)
    if args.tiny_published:
        all_methods.update(tiny_methods(json.loads(args.tiny_ids)))
    for label, rec in got["methods"].items():
        _, _, _, check = all_methods[label]
        status, detail = compare_method(check, ref["methods"][label], rec, target,
                                        needs_model=all_methods[label][0] not in NO_MODEL)
        rows.append((label, ref["methods"][label].get("seconds"), rec.get("seconds"), status, detail))
    for label, rec in (got.get("reader") or {}).items():
        status, detail = compare_reader(ref["reader"][label], rec, target, tiny=label.startswith("tiny"))
        rows.append((label, ref["reader"][label].get("seconds"), rec.get("seconds"), status, detail))
    if got.get("faiss") is not None:
        status, detail = compare_faiss(ref["faiss"], got["faiss"], target)
        rows.append(("faiss flat search", ref["faiss"].get("seconds"), got["faiss"].get("seconds"), status, detail))
    where = got.get("gpu", target)
    print(f"\n{args.limit} HotpotQA dev records (ratio 0.5) + 1 code file; cpu against {target} ({where}); "
          f"seconds after a warm-up call\n")
    print(f"| check | cpu s | {target} s | cpu / {target} | status | detail |")
    print("|---|---|---|---|---|---|")
    for label, a, b, status, detail in rows:
        ratio = f"{a / b:.1f}x" if a and b else "-"
        failed += status != "PASS"
        print(f"| {label} | {_fmt_s(a)} | {_fmt_s(b)} | {ratio} | {status} | {detail} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": ref, "target": got, "rows": rows}, indent=1))
    print(f"\ngpu_check: {'FAIL' if failed else 'PASS'} ({failed} of {len(rows)} checks failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
