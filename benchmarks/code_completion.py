"""Next-line code completion from full, truncated and compressed contexts (LongCodeZip and the
function-level RAG baseline).

For each dev record of ``../shared/data/code_completion`` the completion LM (offline:
SmolLM2-135M-Instruct, greedy) completes the next line from

* ``full``: the whole context, cut from the LEFT to ``--max-context-tokens`` LM tokens (the
  code nearest the cursor stays). Every method sees this same context, and ratios are measured
  against it;
* ``truncate@r``: the last ``r`` x N tokens of that context (keep the END), cut at a line;
* ``longcodezip@r`` / ``code-rag@r``: the last ``--tail-lines`` lines are the instruction
  (LongCodeZip's query) and are kept verbatim at the end; the code before them is compressed so
  that compressed code + tail fits r x N tokens. ``code-rag`` is the paper's "RAG (function
  chunking)" baseline: the same chunks ranked by embedding cosine with the instruction.

Metrics per method:

* next-line exact match (whitespace-stripped) and edit similarity (1 - Levenshtein / max
  length) of the greedy completion: the paper's metrics, meaningful with a real code LM;
* target bits/token: the completion LM's negative log-likelihood of the true next line given
  the prompt (teacher forced, log2). Lower is better; it moves with the evidence in the
  context even when the LM is too weak to write the line itself;
* identifier recall: of the target line's identifiers that occur in the context before the
  instruction tail and not in the tail (the evidence only the body holds), the share that the
  prompt still contains. Model-free;
* ratio reached (reader-tokenizer tokens of the prompt / of the full context) and compression
  throughput (context tokens / s; each compressor scores a file once for all ratios in one
  ``compress_batch`` call, whose time is what is reported).

    python benchmarks/code_completion.py --limit 12
    python benchmarks/code_completion.py --data ../shared/data/code_completion/codexglue_line_long.jsonl \
        --language python --limit 22 --stride 20
    python benchmarks/code_completion.py --model Qwen/Qwen2.5-Coder-7B-Instruct   # with a GPU and the weights

writes ``benchmarks/results/code_completion_<data>.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import keyword
import math
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragpress.evaluation import default_data_dir  # noqa: E402 (after the offline env)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = default_data_dir() / "code_completion" / "longbench_code_mini49.jsonl"
RESULTS = ROOT / "benchmarks" / "results"


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, target: str) -> float:
    pred, target = pred.strip(), target.strip()
    if not pred and not target:
        return 1.0
    return 1.0 - levenshtein(pred, target) / max(len(pred), len(target))


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_EVIDENCE = set(keyword.kwlist) | {
    "self", "cls", "True", "False", "None", "abstract", "boolean", "break", "byte", "case", "catch", "char",
    "const", "default", "do", "double", "else", "enum", "extends", "final", "float", "for", "if", "implements",
    "import", "instanceof", "int", "interface", "long", "new", "null", "package", "private", "protected",
    "public", "return", "short", "static", "super", "switch", "this", "throw", "throws", "try", "void",
    "while", "var", "string", "bool", "using", "namespace", "override", "virtual", "readonly", "get", "set",
    "STR_LIT", "NUM_LIT", "CHAR_LIT", "EOL",
}


def evidence_identifiers(target: str, body: str, tail: str) -> set[str]:
    """Identifiers of the target line that the body (context before the instruction tail) holds
    and the tail does not: what only the compressed part of the context can supply."""
    in_tail = set(_IDENT.findall(tail))
    in_body = set(_IDENT.findall(body))
    return {t for t in _IDENT.findall(target) if t not in _NOT_EVIDENCE and len(t) > 1
            and t in in_body and t not in in_tail}


def identifier_recall(identifiers: set[str], prompt: str) -> float | None:
    if not identifiers:
        return None
    present = set(_IDENT.findall(prompt))
    return sum(1 for t in identifiers if t in present) / len(identifiers)


def detokenize_codexglue(s: str) -> str:
    """CodeXGLUE's tokenized form back to lines (tokens stay space-separated; indentation is lost)."""
    s = s.replace("<s>", "").replace("</s>", "")
    return "\n".join(line.strip() for line in s.split("<EOL>"))


def load_records(path: Path, limit: int | None, stride: int = 1, language: str | None = None) -> list[dict]:
    """The first ``limit`` records (of ``language`` when given), taking every ``stride``-th one in
    file order."""
    out = []
    k = -1
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if language and r.get("language") != language:
                continue
            k += 1
            if k % stride:
                continue
            if "codexglue" in path.name:
                r = {**r, "context": detokenize_codexglue(r["context"]).rstrip("\n") + "\n",
                     "target": detokenize_codexglue(r["target"]).strip()}
            out.append(r)
            if limit and len(out) >= limit:
                break
    return out


def cut_left(text: str, keep_tokens: int, tok) -> str:
    """The end of ``text`` holding at most ``keep_tokens`` tokens of ``tok``, from a line start (mid-line
    when the window holds no whole line)."""
    if keep_tokens <= 0:
        return ""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if len(offs) <= keep_tokens:
        return text
    start = offs[len(offs) - keep_tokens][0]
    nl = text.find("\n", start)
    rest = text[nl + 1:] if nl != -1 else ""
    return rest if rest.strip() else text[start:]  # the window holds no whole line: keep the part


class Completer:
    """Greedy next-line completion with the causal LM (stops at the first complete line)."""

    def __init__(self, max_new_tokens: int = 32, model: str | None = None):
        import torch
        from transformers import StoppingCriteria

        from ragpress.core.models import load_causal_lm

        self.torch = torch
        self.model_name = model
        self.model, self.tok = load_causal_lm(model)
        self.max_new_tokens = max_new_tokens
        tok = self.tok

        class _NewLine(StoppingCriteria):
            def __init__(self, start: int):
                self.start = start

            def __call__(self, input_ids, scores, **kw):
                text = tok.decode(input_ids[0, self.start:], skip_special_tokens=True)
                return "\n" in text.lstrip("\n")

        self._stop = _NewLine

    def target_bits(self, prompts: list[str], target: str) -> list[float]:
        """Mean negative log2-likelihood per token of ``target`` (the next line) after each prompt,
        all prompts scored in one batched pass."""
        from ragpress.compressors.longcodezip import token_nll

        t = self.tok(target + "\n", add_special_tokens=False)["input_ids"]
        ps = [self.tok(p, add_special_tokens=False)["input_ids"] or [self.tok.eos_token_id] for p in prompts]
        nll = token_nll([p + t for p in ps], [len(p) for p in ps], self.model_name)
        return [float(x.mean()) / math.log(2) for x in nll]

    def __call__(self, prompt: str) -> str:
        from transformers import StoppingCriteriaList

        ids = self.tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] == 0:  # nothing to condition on: start from the end-of-text token
            ids = self.torch.tensor([[self.tok.eos_token_id]])
        ids = ids.to(self.model.device)
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=self.tok.eos_token_id,
                                      stopping_criteria=StoppingCriteriaList([self._stop(ids.shape[1])]))
        text = self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).lstrip("\n")
        return text.split("\n", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--language", default=None,
                    help="only records of this language (CodeXGLUE's javaCorpus has no line breaks, so its "
                         "contexts have no lines to compress and its targets continue a line: use python)")
    ap.add_argument("--stride", type=int, default=1,
                    help="take every N-th record of the file (spreads a small sample over a file sorted by language)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.33, 0.5])
    ap.add_argument("--max-context-tokens", type=int, default=4096,
                    help="LM tokens of the 'full' context (cut from the left; SmolLM2's window is 8192)")
    ap.add_argument("--tail-lines", type=int, default=8, help="last lines used as LongCodeZip's instruction")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--name", default=None, help="results file stem (default from the data file)")
    ap.add_argument("--model", default=None, help="code LM (hub id in the local cache or a path) for both "
                                                  "LongCodeZip and the completion, e.g. Qwen/Qwen2.5-Coder-7B-Instruct; "
                                                  "default: the offline SmolLM2")
    ap.add_argument("--compressors", nargs="+", default=["longcodezip", "code-rag"],
                    help="compressors run at every ratio (besides full and truncate)")
    ap.add_argument("--no-generate", action="store_true",
                    help="skip the greedy completions (exact match / edit similarity); keep bits/token and "
                         "identifier recall")
    args = ap.parse_args()

    from tqdm import tqdm

    from ragpress.core.registry import create_compressor
    from ragpress.core.tokens import get_token_counter
    from ragpress.core.types import Budget, CompressionRequest, Passage

    counter = get_token_counter()
    complete = Completer(args.max_new_tokens, args.model)
    compressors = {name: create_compressor(name, {"model": args.model} if args.model else None)
                   for name in args.compressors}
    records = load_records(args.data, args.limit, args.stride, args.language)
    methods = ["full"] + [f"{m}@{r}" for m in ["truncate", *compressors] for r in args.ratios]
    keys = ("em", "es", "bits", "idr", "ratio", "tokens", "seconds")
    rows = {m: {k: [] for k in keys} for m in methods}
    examples = []
    name = args.name or f"code_completion_{args.data.stem}"
    lm_name = args.model or "SmolLM2-135M-Instruct"
    skipped = 0  # records with no code before the instruction

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return statistics.mean(xs) if xs else None

    def write_results(done: int) -> list[str]:
        """Write the tables for the ``done`` records so far (called after every record)."""
        table = []
        for m in methods:
            row = rows[m]
            if not row["ratio"]:
                continue
            secs = sum(row["seconds"])
            table.append({
                "method": m, "n": len(row["ratio"]), "target_ratio": None if m == "full" else float(m.split("@")[1]),
                "ratio": mean(row["ratio"]), "exact_match": mean(row["em"]), "edit_similarity": mean(row["es"]),
                "target_bits_per_token": mean(row["bits"]), "identifier_recall": mean(row["idr"]),
                "identifier_records": sum(1 for x in row["idr"] if x is not None),
                "compress_tokens_per_s": (sum(row["tokens"]) / secs) if secs > 0 else None,
            })
        RESULTS.mkdir(parents=True, exist_ok=True)
        meta = {"data": str(args.data.name), "limit": args.limit, "stride": args.stride, "language": args.language, "records": done,
                "skipped_no_body": skipped,
                "max_context_tokens": args.max_context_tokens, "tail_lines": args.tail_lines,
                "lm": f"{lm_name} (greedy)", "generate": not args.no_generate, "tokenizer": counter.name,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
        (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "table": table, "examples": examples}, indent=2))

        def f3(x):
            return "-" if x is None else f"{x:.3f}"

        n_eval = len(rows["full"]["ratio"])
        skip_note = f"; {skipped} without code before the instruction skipped" if skipped else ""
        md = [f"# Next-line completion: {args.data.name} (dev, {n_eval} records{skip_note})", "",
              f"Full context = last {args.max_context_tokens} LM tokens of the file context; completion LM "
              f"{lm_name}; ratios in {counter.name} tokens of the prompt vs the full context; "
              f"instruction = last {args.tail_lines} lines (kept verbatim). Bits/token: NLL of the true next "
              f"line (lower is better). Identifier recall over {table[0]['identifier_records'] if table else 0} "
              "records whose next line uses identifiers that only the code before the tail holds.", "",
              "| method | ratio reached | exact match | edit similarity | target bits/token | identifier recall "
              "| compress tokens/s |", "|---|---|---|---|---|---|---|"]
        for t in table:
            tps = "-" if t["compress_tokens_per_s"] is None else f"{t['compress_tokens_per_s']:.0f}"
            md.append(f"| {t['method']} | {t['ratio']:.3f} | {f3(t['exact_match'])} | {f3(t['edit_similarity'])} "
                      f"| {f3(t['target_bits_per_token'])} | {f3(t['identifier_recall'])} | {tps} |")
        md += ["", f"![bits and identifier recall vs ratio]({name}.png)"]
        (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
        plot(table, RESULTS / f"{name}.png", f"{args.data.name}, {n_eval} records, {lm_name}")
        return md

    for done, rec in enumerate(tqdm(records, desc="records"), start=1):
        context = cut_left(rec["context"], args.max_context_tokens, complete.tok)
        if not context.endswith("\n"):
            context += "\n"
        target = rec["target"].strip("\n")
        n_full = counter.count(context)
        lines = context.rstrip("\n").split("\n")
        tail = "\n".join(lines[-args.tail_lines:]) + "\n"
        body = "\n".join(lines[: -args.tail_lines]) + "\n"
        if not body.strip():  # no code before the instruction: nothing to compress, for any method
            skipped += 1
            continue
        evidence = evidence_identifiers(target, body, tail)
        n_tail = counter.count(tail)
        prompts: dict[str, str] = {"full": context}
        seconds: dict[str, float] = {"full": 0.0}
        for r in args.ratios:
            t0 = time.perf_counter()
            prompts[f"truncate@{r}"] = cut_left(context, int(r * n_full), counter.tokenizer)
            seconds[f"truncate@{r}"] = time.perf_counter() - t0
        budgets = [max(1, int(r * n_full) - n_tail - 1) for r in args.ratios]
        reqs = [CompressionRequest(query=tail, passages=[Passage(id=rec["id"], text=body,
                                                                 metadata={"language": rec.get("language")})],
                                   budget=Budget(tokens=b)) for b in budgets]
        for cname, comp in compressors.items():
            t0 = time.perf_counter()
            results = comp.compress_batch(reqs)
            took = time.perf_counter() - t0
            for r, res in zip(args.ratios, results):
                prompts[f"{cname}@{r}"] = (res.text.rstrip("\n") + "\n" if res.text.strip() else "") + tail
                seconds[f"{cname}@{r}"] = took
        bits = dict(zip(prompts, complete.target_bits(list(prompts.values()), target)))
        for m in methods:
            if m not in prompts:
                continue
            pred = None if args.no_generate else complete(prompts[m])
            row = rows[m]
            row["em"].append(None if pred is None else float(pred.strip() == target.strip()))
            row["es"].append(None if pred is None else edit_similarity(pred, target))
            row["bits"].append(bits[m])
            row["idr"].append(identifier_recall(evidence, prompts[m]))
            row["ratio"].append(counter.count(prompts[m]) / n_full)
            row["tokens"].append(n_full)
            row["seconds"].append(seconds[m])
            if len(examples) < 60 and pred is not None:
                examples.append({"id": rec["id"], "method": m, "target": target, "prediction": pred})
        write_results(done)

    md = write_results(len(records))
    print("\n".join(md))


def plot(table: list[dict], path: Path, title: str) -> None:
    """Target bits/token and identifier recall against the ratio reached, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    full = next((t for t in table if t["method"] == "full"), None)
    by_method: dict[str, list[dict]] = {}
    for t in table:
        if t["method"] != "full":
            by_method.setdefault(t["method"].split("@")[0], []).append(t)
    for ax, key, label in ((axes[0], "target_bits_per_token", "target bits/token (lower is better)"),
                           (axes[1], "identifier_recall", "identifier recall")):
        for m, ts in by_method.items():
            ts = sorted((t for t in ts if t[key] is not None), key=lambda t: t["ratio"])
            ax.plot([t["ratio"] for t in ts], [t[key] for t in ts], marker="o", label=m)
        if full is not None and full[key] is not None:
            ax.axhline(full[key], color="gray", linestyle="--", label="full")
        ax.set_xlabel("ratio reached")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
