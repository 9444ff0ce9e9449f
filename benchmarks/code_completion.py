"""Next-line code completion from full, truncated and LongCodeZip-compressed contexts.

For each dev record of ``../shared/data/code_completion`` the offline LM (SmolLM2-135M-Instruct,
greedy) completes the next line from

* ``full``: the whole context, cut from the LEFT to ``--max-context-tokens`` LM tokens (the
  model's window is 8k; the cut keeps the code nearest the cursor). Every method sees this same
  context, and ratios are measured against it;
* ``truncate@r``: the last ``r`` x N tokens of that context (keep the END: the code nearest the
  cursor), cut at a line boundary;
* ``longcodezip@r``: the last ``--tail-lines`` lines are the instruction (LongCodeZip's query)
  and are kept verbatim at the end; the code before them is compressed by ``longcodezip`` so
  that compressed code + tail fits r x N tokens.

Metrics: next-line exact match (whitespace-stripped) and edit similarity
(1 - Levenshtein / max length), achieved ratio (reader-tokenizer tokens of the prompt / of the
full context), and compression throughput (context tokens / s; LongCodeZip scores each file once
for all ratios in one ``compress_batch`` call, and that call's time is what is reported).

    python benchmarks/code_completion.py --limit 12
    python benchmarks/code_completion.py --data ../shared/data/code_completion/codexglue_line_long.jsonl --limit 12
"""

from __future__ import annotations

import argparse
import json
import os
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


def detokenize_codexglue(s: str) -> str:
    """CodeXGLUE's tokenized form back to lines (tokens stay space-separated; indentation is lost)."""
    s = s.replace("<s>", "").replace("</s>", "")
    return "\n".join(line.strip() for line in s.split("<EOL>"))


def load_records(path: Path, limit: int | None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "codexglue" in path.name:
                r = {**r, "context": detokenize_codexglue(r["context"]).rstrip("\n") + "\n",
                     "target": detokenize_codexglue(r["target"]).strip()}
            out.append(r)
            if limit and len(out) >= limit:
                break
    return out


def cut_left(text: str, keep_tokens: int, tok) -> str:
    """The end of ``text`` holding at most ``keep_tokens`` tokens of ``tok``, starting at a line."""
    if keep_tokens <= 0:
        return ""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if len(offs) <= keep_tokens:
        return text
    start = offs[len(offs) - keep_tokens][0]
    nl = text.find("\n", start)
    return text[nl + 1:] if nl != -1 else text[start:]


class Completer:
    """Greedy next-line completion with the causal LM (stops at the first complete line)."""

    def __init__(self, max_new_tokens: int = 32, model: str | None = None):
        import torch
        from transformers import StoppingCriteria

        from ragpress.core.models import load_causal_lm

        self.torch = torch
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

    def __call__(self, prompt: str) -> str:
        from transformers import StoppingCriteriaList

        ids = self.tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.model.device)
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
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.33, 0.5])
    ap.add_argument("--max-context-tokens", type=int, default=4096,
                    help="LM tokens of the 'full' context (cut from the left; SmolLM2's window is 8192)")
    ap.add_argument("--tail-lines", type=int, default=8, help="last lines used as LongCodeZip's instruction")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--name", default=None, help="results file stem (default from the data file)")
    ap.add_argument("--model", default=None, help="code LM (hub id in the local cache or a path) for both "
                                                  "LongCodeZip and the completion, e.g. Qwen/Qwen2.5-Coder-7B-Instruct; "
                                                  "default: the offline SmolLM2")
    args = ap.parse_args()

    from tqdm import tqdm

    from ragpress.core.registry import create_compressor
    from ragpress.core.tokens import get_token_counter
    from ragpress.core.types import Budget, CompressionRequest, Passage

    counter = get_token_counter()
    complete = Completer(args.max_new_tokens, args.model)
    lcz = create_compressor("longcodezip", {"model": args.model} if args.model else None)
    records = load_records(args.data, args.limit)
    methods = ["full"] + [f"truncate@{r}" for r in args.ratios] + [f"longcodezip@{r}" for r in args.ratios]
    rows = {m: {"em": [], "es": [], "ratio": [], "tokens": [], "seconds": []} for m in methods}
    examples = []

    def write_results(done: int) -> list[str]:
        """Write the tables for the ``done`` records so far (called after every record)."""
        table = []
        for m in methods:
            row = rows[m]
            if not row["em"]:
                continue
            secs = sum(row["seconds"])
            table.append({
                "method": m, "n": len(row["em"]), "target_ratio": None if m == "full" else float(m.split("@")[1]),
                "ratio": statistics.mean(row["ratio"]), "exact_match": statistics.mean(row["em"]),
                "edit_similarity": statistics.mean(row["es"]),
                "compress_tokens_per_s": (sum(row["tokens"]) / secs) if secs > 0 else None,
            })
        name = args.name or f"code_completion_{args.data.stem}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        meta = {"data": str(args.data.name), "limit": args.limit, "records": done,
                "max_context_tokens": args.max_context_tokens, "tail_lines": args.tail_lines,
                "lm": "SmolLM2-135M-Instruct (greedy)", "tokenizer": counter.name}
        (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "table": table, "examples": examples}, indent=2))
        md = [f"# Next-line completion: {args.data.name} (dev, {done} records)", "",
              f"Full context = last {args.max_context_tokens} SmolLM2 tokens of the file context; "
              f"ratios in {counter.name} tokens of the prompt vs the full context; "
              f"LongCodeZip instruction = last {args.tail_lines} lines (kept verbatim).", "",
              "| method | ratio reached | exact match | edit similarity | compress tokens/s |",
              "|---|---|---|---|---|"]
        for t in table:
            tps = "-" if t["compress_tokens_per_s"] is None else f"{t['compress_tokens_per_s']:.0f}"
            md.append(f"| {t['method']} | {t['ratio']:.3f} | {t['exact_match']:.3f} | {t['edit_similarity']:.3f} | {tps} |")
        (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
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
        t0 = time.perf_counter()
        results = lcz.compress_batch(reqs) if body.strip() else []
        t_lcz = time.perf_counter() - t0
        for r, res in zip(args.ratios, results):
            prompts[f"longcodezip@{r}"] = (res.text.rstrip("\n") + "\n" if res.text.strip() else "") + tail
            seconds[f"longcodezip@{r}"] = t_lcz
        for m in methods:
            if m not in prompts:
                continue
            pred = complete(prompts[m])
            row = rows[m]
            row["em"].append(float(pred.strip() == target.strip()))
            row["es"].append(edit_similarity(pred, target))
            row["ratio"].append(counter.count(prompts[m]) / n_full)
            row["tokens"].append(n_full)
            row["seconds"].append(seconds[m])
            if len(examples) < 40:
                examples.append({"id": rec["id"], "method": m, "target": target, "prediction": pred})
        write_results(done)

    md = write_results(len(records))
    print("\n".join(md))


if __name__ == "__main__":
    main()
