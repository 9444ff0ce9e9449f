"""How the offline reader's answer is taken from what it writes (issue 24, item 4): candidates
measured on TRAIN records, the chosen one reported once on the dev files, before / after.

SmolLM2-135M-Instruct, asked for "only the answer", often writes a lead-in ("The answer to the
question is:") and a line break: cut at the first line break, the answer was the lead-in alone.
Candidates: a prompt (the QA template as it was; with one worked example as an earlier turn;
with the reply begun by the model's own lead-in "The answer is:"; each of the last with line
breaks and the end of text held back until an answer has begun) times a way to take the answer
from the text (the first line, as before; the same with lead-ins stripped; lead-in lines passed
over and lead-ins dropped, then up to the line break; the same, at most the first sentence;
both also with 16 tokens for lead-ins on top of the bound).

Every prompt is generated once, greedily, without stop strings, for 32 new tokens, keeping the
text after every token (``LocalReader._generate`` yields it), in the batches the evaluation
harness reads in (padding shifts float sums: other batches may flip a greedy token); every way
of taking the answer is then replayed on those texts with the reader's own
:meth:`~ragpress.readers.base.Prompt.progress` (the rule its generation loop applies after every
token), so each candidate gets the answer its own generation gives (bound: 16 new tokens, as
``benchmarks/reader.py``). ``--check N`` rereads the first N records of each set with the real
reader (the shipped QA template) and counts the answers equal to the replayed "after" ones.

    # choose on train (HotpotQA train: the first 64 ECM evidence-only records, and the first 16
    # HotpotQA-train distractor records with their full ~1,800-token context):
    OMP_NUM_THREADS=2 python benchmarks/reader_answers.py --split train --n-evidence 64 --n-distractor 16 \
        --full-prompts "as before|one-shot|prefix 'The answer is:'|line breaks held|prefix 'The answer is:', line breaks held"
    # report the chosen candidate once on dev (HotpotQA 40 and NQ-open 60 records, the first in
    # file order as benchmarks/reader.py; the full context and EXIT at ratio 0.3):
    OMP_NUM_THREADS=2 python benchmarks/reader_answers.py --split dev --check 8

Writes ``benchmarks/results/reader_answers_<split>.{md,json}``; the traces are kept in
``--cache`` (default ``~/.cache/ragpress/reader_answers``) so a rerun replays without generating.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from ragpress.qa import default_data_dir, exact_match, full_context, load_records, record_from_json, token_f1
from ragpress.readers.answers import is_lead_in, strip_lead_in

RESULTS = Path(__file__).resolve().parent / "results"
BOUND = 16  # new tokens, as benchmarks/reader.py
LEAD_IN_TOKENS = 16  # the rejected "+ lead-in tokens" rules: tokens lead-ins may take on top of BOUND
RAW_TOKENS = BOUND + LEAD_IN_TOKENS  # enough to replay every candidate exactly

#: a worked example for the one-shot prompt (neutral: in no dataset, nothing like the smoke test)
EXAMPLE = ("Mount Kilimanjaro is a dormant volcano in Tanzania. Its highest summit, Uhuru Peak, is 5,895 metres "
           "above sea level.", "In which country is Mount Kilimanjaro?", "Tanzania")
#: the QA template as it was before this benchmark (candidates override it)
AS_BEFORE = {"answer_prefix": "", "extract": "stop", "examples": [], "no_repeat_before_answer": 0}
#: prompt candidates: QA template overrides, and whether line breaks (and the end of the text) are
#: held back until an answer has begun (the reader does so when it takes the answer, see
#: ``LocalReader._held_ids``)
PROMPTS = {
    "as before": ({}, False),
    "one-shot": ({"examples": [list(EXAMPLE)]}, False),
    "prefix 'The answer is:'": ({"answer_prefix": "The answer is:"}, False),
    "line breaks held": ({}, True),
    "prefix 'The answer is:', line breaks held": ({"answer_prefix": "The answer is:"}, True),
    # round 3: line breaks held, and no run of n generated tokens repeated before the answer has
    # begun (the model, kept from its line break, may write its lead-in again until the bound)
    "line breaks held, no 2-gram repeated": ({"no_repeat_before_answer": 2}, True),
    "line breaks held, no 3-gram repeated": ({"no_repeat_before_answer": 3}, True),
    "line breaks held, no 4-gram repeated": ({"no_repeat_before_answer": 4}, True),
}
#: (how the answer is taken: extract mode, lead-in tokens allowed, strip lead-ins afterwards)
RULES = {
    "first line (as before)": ("stop", False, False),
    "first line, lead-in stripped": ("stop", False, True),
    "answer line": ("answer", False, False),
    "answer line + lead-in tokens": ("answer", True, False),
    "first sentence of the answer": ("sentence", False, False),
    "first sentence of the answer + lead-in tokens": ("sentence", True, False),
}
BEFORE = ("as before", "first line (as before)")


# ----------------------------------------------------------------------------- data
def train_sets(data: Path, n_evidence: int, n_distractor: int) -> dict[str, list]:
    ecm = []
    with open(data / "train" / "hotpotqa_train_ecm500_evidence.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if len(ecm) >= n_evidence:
                break
            d = json.loads(line)
            ecm.append(record_from_json({"id": f"ecm500-{i}", "question": d["question"], "answers": [d["answer"]],
                                         "passages": [{"text": s} for s in d["evidence"]]}))
    hot = load_records(data / "hotpotqa" / "hotpotqa_train_hipporag100.jsonl", n_distractor)
    return {"hotpotqa-train evidence": ecm, "hotpotqa-train full": hot}


def dev_sets(data: Path, n_hotpot: int, n_nq: int) -> dict[str, list]:
    return {"hotpotqa": load_records(data / "hotpotqa" / "hotpotqa_dev_distractor_sf.jsonl", n_hotpot),
            "nq": load_records(data / "nq_open" / "nq_open_oracle.jsonl", n_nq)}


def contexts(records, condition: str, cache: Path) -> list[str]:
    """``full``: the whole context; ``exit@0.3``: EXIT (the default method) at ratio 0.3 (cached)."""
    if condition == "full":
        return [full_context(r) for r in records]
    key = hashlib.sha256(json.dumps([condition, [r.id for r in records]]).encode()).hexdigest()[:16]
    path = cache / f"contexts-{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from ragpress.core.registry import create_compressor
    from ragpress.core.types import Budget

    method, ratio = condition.split("@")
    comp = create_compressor(method)
    out = []
    for k in range(0, len(records), 8):
        out += [res.text for res in comp.compress_batch([r.request(Budget(ratio=float(ratio)))
                                                         for r in records[k:k + 8]])]
    path.write_text(json.dumps(out), encoding="utf-8")
    return out


# ----------------------------------------------------------------------------- generation
def make_reader():
    from ragpress.readers import create_reader

    return create_reader("local", {"max_new_tokens": BOUND})


def traces(reader, queries, ctxs, variant: tuple, cache: Path, tag: str) -> list[list[str]]:
    """The text after every new token of each question's prompt (greedy, no stop strings;
    ``RAW_TOKENS`` at most, or with line breaks held as far as a bound of ``BOUND`` plus the
    lead-in tokens goes); cached by prompt."""
    overrides, hold = variant
    prompts = reader.prepare(queries, ctxs, templates_override(overrides))
    raw = {"stop": (), "extract": "answer" if hold else "stop", "max_new_tokens": RAW_TOKENS}
    prompts = [p.model_copy(update=raw) for p in prompts]
    dumps = [p.model_dump(mode="json", exclude={"soft"} | ({"answer_prefix"} if not p.answer_prefix else set())
                          | ({"no_repeat_before_answer"} if not p.no_repeat_before_answer else set()))
             for p in prompts]  # fields at their defaults left out: traces cached before they existed still match
    key = hashlib.sha256(json.dumps([{**overrides, **({"hold": True} if hold else {})}, dumps],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"traces-{tag}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    out: list[list[str] | None] = [None] * len(prompts)
    t0 = time.perf_counter()
    done = 0
    for chunk in chunks(ctxs, reader.config.batch_size):
        idx = sorted(chunk, key=lambda i: reader.prompt_tokens(prompts[i]))  # as generate_batch
        steps: list[list[str]] = [[] for _ in idx]
        gen = reader._generate([prompts[i] for i in idx])
        try:
            while True:
                texts = next(gen)
                for j, t in enumerate(texts):
                    steps[j].append(t)  # after k yields, prompt j has k new tokens (until it ends)
        except StopIteration as stop:
            for j, (i, a) in enumerate(zip(idx, stop.value)):
                out[i] = steps[j][:a.tokens_out] or [""]
        done += len(idx)
        print(f"  {tag}: {done}/{len(prompts)} prompts, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    path.write_text(json.dumps(out), encoding="utf-8")
    return out  # type: ignore[return-value]


def chunks(ctxs: list[str], bs: int) -> list[list[int]]:
    """The batches ``ragpress.evaluation.read_figures`` reads in (shortest contexts together):
    the same batches give the same greedy answers (padding shifts the float sums a little)."""
    idx = sorted(range(len(ctxs)), key=lambda i: len(ctxs[i] or ""))
    return [idx[k:k + bs] for k in range(0, len(idx), bs)]


def templates_override(tmpl: dict) -> str:
    """Register the QA template as it was, with ``tmpl`` applied, as its own task
    (``qa-candidate``); returns the task."""
    from ragpress.readers.prompts import get_template, register_template

    register_template(get_template("qa").with_overrides({**AS_BEFORE, **tmpl, "name": "qa-candidate"}))
    return "qa-candidate"


def replay(prompt, steps: list[str], rule: tuple) -> str:
    """The answer the reader's generation loop gives under ``rule`` for a prompt whose greedy
    texts after each new token are ``steps`` (the trace ends early where the model ended). The
    rejected "+ lead-in tokens" rules let lead-ins take ``LEAD_IN_TOKENS`` on top of the bound."""
    extract, lead_tokens, strip = rule
    p = prompt.model_copy(update={"extract": extract, "max_new_tokens": BOUND})
    lead, text = 0, ""
    for n, text in enumerate(steps, 1):
        begun, stop, _ = p.progress(text, n)
        if lead_tokens:
            lead = lead if begun else n
            stop = p.answer_in(text)[1] or n - lead >= BOUND or n >= BOUND + LEAD_IN_TOKENS
        if stop:
            break
    answer = p.answer_in(text)[0]
    return strip_lead_in(answer) if strip else answer


# ----------------------------------------------------------------------------- figures
def figures(records, answers: list[str]) -> dict:
    em = [exact_match(a, r.answers) for a, r in zip(answers, records)]
    f1 = [token_f1(a, r.answers) for a, r in zip(answers, records)]
    return {"n": len(records), "em": 100 * statistics.fmean(em), "f1": 100 * statistics.fmean(f1),
            "empty": sum(not a.strip() for a in answers), "lead_in": sum(is_lead_in(a) for a in answers),
            "words": statistics.fmean(len(a.split()) for a in answers)}


def run(sets: dict, conditions: list[str], prompts: list[str], rules: list[str], cache: Path,
        full_prompts: list[str] | None = None, bits: bool = False) -> list[dict]:
    rows = []
    reader = make_reader()
    for set_name, records in sets.items():
        for cond in conditions:
            if set_name.endswith("evidence") and cond != "full":
                continue  # evidence-only records: the evidence is the context
            ctxs = contexts(records, cond, cache)
            queries = [r.query for r in records]
            for pname in prompts:
                if full_prompts is not None and set_name.endswith("full") and pname not in full_prompts:
                    continue
                overrides, hold = PROMPTS[pname]
                tag = f"{set_name.replace(' ', '_')}-{cond}-{pname.split(',')[0].replace(' ', '_').replace(chr(39), '')}"
                steps = traces(reader, queries, ctxs, PROMPTS[pname], cache, tag)
                task = templates_override(overrides)
                base = reader.prepare(queries, ctxs, task)
                gold_bits = answer_bits(reader, records, ctxs, task, cache) if bits else None
                for rname in rules:
                    if hold and RULES[rname][0] == "stop":
                        continue  # line breaks held only where the answer is taken past them
                    answers = [replay(p, s, RULES[rname]) for p, s in zip(base, steps)]
                    rows.append({"set": set_name, "context": cond, "prompt": pname, "rule": rname,
                                 "tokens_in": statistics.fmean(reader.prompt_tokens(p) for p in base),
                                 **figures(records, answers), "bits": gold_bits, "answers": answers})
    return rows


def answer_bits(reader, records, ctxs, task: str, cache: Path) -> float:
    """Mean bits per token of the best gold alias after the candidate's prompt (the reader
    benchmark's "answer bits"), in the harness's batches; cached."""
    prompts = reader.prepare([r.query for r in records], ctxs, task)
    scored = {"soft", "stop", "extract", "max_new_tokens", "no_repeat_before_answer"}  # bits depend on the rendered prompt alone
    key = hashlib.sha256(json.dumps([[p.model_dump(mode="json", exclude=scored) for p in prompts],
                                     [r.answers for r in records]], sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"bits-{key}.json"  # shared by candidates with the same prompt
    if not path.is_file():
        out: list[float | None] = [None] * len(records)
        for chunk in chunks(ctxs, reader.config.batch_size):
            got = reader.answer_bits([records[i].query for i in chunk], [ctxs[i] for i in chunk],
                                     [records[i].answers for i in chunk], task)
            for i, b in zip(chunk, got):
                out[i] = b
        path.write_text(json.dumps(out), encoding="utf-8")
    values = [b for b in json.loads(path.read_text(encoding="utf-8")) if b is not None]
    return statistics.fmean(values) if values else float("nan")


def check(sets: dict, conditions: list[str], n: int, cache: Path, rows: list[dict]) -> dict:
    """Reread the first ``n`` records in reading order (whole batches) of each set and context
    with the real reader (the shipped QA template) and count how many of its answers equal the
    replayed answers of the "after" row."""
    from ragpress.readers import create_reader

    reader = create_reader("local", {"max_new_tokens": BOUND})
    same = total = 0
    for set_name, records in sets.items():
        for cond in conditions:
            row = next((r for r in rows if r["set"] == set_name and r["context"] == cond and r["tag"] == "after"), None)
            if row is None:
                continue
            ctxs = contexts(records, cond, cache)
            read = 0
            for chunk in chunks(ctxs, reader.config.batch_size):
                if read >= n:
                    break
                got = reader.read_batch([records[i].query for i in chunk], [ctxs[i] for i in chunk])
                same += sum(a.text == row["answers"][i] for a, i in zip(got, chunk))
                read += len(chunk)
            total += read
    return {"same": same, "total": total}


#: candidates that change an answer only where it holds a lead-in (the prompt as before; a lead-in
#: stripped, or a lead-in line passed over), so no record's answer can score lower (barring a gold
#: answer made of lead-in words, and a reply whose very first token is a line break or its end)
SAFE = {(p, r) for p in ("as before", "line breaks held") for r in ("first line, lead-in stripped", "answer line")}
CHOICE_RULES = {
    "round 1": "among the candidates read on every set and context that keep the bound on new tokens (the "
               "'+ lead-in tokens' rules spend up to 16 more and are shown for reference), those never below the "
               "answers as before in EM or F1; of these, the highest mean F1",
    "round 2": "(after round 1's choice fell below the answers as before on HotpotQA dev) the same among the "
               "candidates that change an answer only where it holds a lead-in, so that no record can score lower "
               "by construction; ties to the fewer empty answers",
    "round 3": "(after round 2's choice answered 'The' to `make run`'s request: kept from its line break, the "
               "model wrote its lead-in again until the bound) among round 2's choice and the candidates that hold "
               "line breaks, take the answer line and change the generation only before an answer has begun (no "
               "n-gram repeated there), those never below round 2's choice in EM or F1; of these, the highest mean "
               "F1; ties to a candidate that ends the loop, the longest n-gram (the smallest change). As first "
               "written, ties went to round 2's choice; the train figures then showed every candidate tied (no "
               "train reply loops before its answer within the bound, so train cannot tell them apart), and the "
               "tie-break was turned to the one that ends the loop `make run` showed",
}
ROUND2 = ("line breaks held", "answer line")
NO_REPEAT = {p for p in PROMPTS if "gram repeated" in p}


def choose(rows: list[dict], name: str) -> tuple[str | None, str]:
    """The candidate of :data:`CHOICE_RULES` ``name``, and the ranking as markdown. Rules fixed
    before the train figures they are applied to."""
    groups = sorted({(r["set"], r["context"]) for r in rows})
    base = {(r["set"], r["context"]): r for r in rows if (r["prompt"], r["rule"]) == BEFORE}
    second = {(r["set"], r["context"]): r for r in rows if (r["prompt"], r["rule"]) == ROUND2}
    cands: dict[tuple, dict] = {}
    for r in rows:
        cands.setdefault((r["prompt"], r["rule"]), {})[(r["set"], r["context"])] = r
    lines, best = [], (None, (-1.0, 0))
    for (prompt, rule), by in cands.items():
        if set(by) != set(groups):
            continue  # not read on every set and context
        d_em = min(by[g]["em"] - base[g]["em"] for g in groups)
        d_f1 = min(by[g]["f1"] - base[g]["f1"] for g in groups)
        mean_f1 = statistics.fmean(by[g]["f1"] for g in groups)
        empty = sum(by[g]["empty"] for g in groups)
        ok = d_em >= 0 and d_f1 >= 0 and not RULES[rule][1] and (name != "round 2" or (prompt, rule) in SAFE)
        rank: tuple = (round(mean_f1, 6), -empty)
        if name == "round 3":
            ok = ok and ((prompt, rule) == ROUND2 or (prompt in NO_REPEAT and rule == "answer line")) and all(
                by[g]["em"] >= second[g]["em"] and by[g]["f1"] >= second[g]["f1"] for g in groups)
            rank = (round(mean_f1, 6), prompt in NO_REPEAT, prompt)  # "no 4-gram" > "no 3-gram" > "no 2-gram"
        if ok and (best[0] is None or rank > best[1]):
            best = (f"{prompt}::{rule}", rank)
        lines.append((mean_f1, f"| {prompt} | {rule} | " + " | ".join(f"{by[g]['em']:.1f} / {by[g]['f1']:.1f}" for g in groups)
                      + f" | {d_em:+.1f} | {d_f1:+.1f} | {mean_f1:.1f} | {empty} | {'yes' if (prompt, rule) in SAFE else 'no'} "
                      f"| {'yes' if ok else 'no'} |"))
    head = (f"## Choice, {name}\n\nRule (fixed before the figures it is applied to): {CHOICE_RULES[name]}.\n\n"
            "| prompt | rule | " + " | ".join(f"{s} {c} EM / F1" for s, c in groups)
            + " | least EM change | least F1 change | mean F1 | empty | safe by construction | eligible |\n|"
            + "---|" * (len(groups) + 8) + "\n")
    body = "\n".join(line for _, line in sorted(lines, reverse=True))
    return best[0], head + body + f"\n\nChosen: `{best[0]}`\n"


def table(rows: list[dict], keys: tuple = ("set", "context", "prompt", "rule")) -> str:
    bits = any(r.get("bits") is not None for r in rows)
    head = ("| " + " | ".join(keys) + " | n | reader tokens in | EM % | F1 % | empty | bare lead-in | words |"
            + (" answer bits |" if bits else "") + "\n|" + "---|" * (len(keys) + 7 + bits) + "\n")
    return head + "".join(
        "| " + " | ".join(str(r[k]) for k in keys) + f" | {r['n']} | {r['tokens_in']:.0f} | {r['em']:.1f} "
        f"| {r['f1']:.1f} | {r['empty']} | {r['lead_in']} | {r['words']:.1f} |"
        + (f" {r['bits']:.2f} |" if bits else "") + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["train", "dev"], required=True)
    ap.add_argument("--n-evidence", type=int, default=64, help="train: first N ECM evidence-only records")
    ap.add_argument("--n-distractor", type=int, default=62, help="train: first N HotpotQA-train records")
    ap.add_argument("--train-conditions", default="full,exit@0.3",
                    help="train: contexts of the HotpotQA-train records (full, exit@0.3)")
    ap.add_argument("--tag", default="", help="suffix of the output names")
    ap.add_argument("--limit-hotpot", type=int, default=40, help="dev: first N HotpotQA dev records")
    ap.add_argument("--limit-nq", type=int, default=60, help="dev: first N NQ-open dev records")
    ap.add_argument("--prompts", default="|".join(PROMPTS), help="train: '|'-separated prompt candidates")
    ap.add_argument("--full-prompts", default="as before|line breaks held|prefix 'The answer is:', line breaks held|"
                    + "|".join(sorted(NO_REPEAT)),
                    help="train: the prompt candidates read over the long HotpotQA-train contexts")
    ap.add_argument("--after", default="line breaks held, no 4-gram repeated::answer line",
                    help="dev: the chosen candidate, 'prompt::rule' (round 1 was \"prefix 'The answer is:', line "
                         "breaks held::first sentence of the answer\", round 2 \"line breaks held::answer line\")")
    ap.add_argument("--check", type=int, default=0, help="dev: reread N records per set with the real reader")
    ap.add_argument("--bits", action="store_true", help="dev: also the gold answers' bits per token")
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "ragpress" / "reader_answers"))
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)
    data = Path(args.data) if args.data else default_data_dir()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cmd = ("python benchmarks/reader_answers.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    t0 = time.perf_counter()
    if args.split == "train":
        sets = train_sets(data, args.n_evidence, args.n_distractor)
        conditions = [c.strip() for c in args.train_conditions.split(",")]
        rows = run(sets, conditions, [p.strip() for p in args.prompts.split("|")], list(RULES), cache,
                   [p.strip() for p in args.full_prompts.split("|")])
        first, ranking1 = choose(rows, "round 1")
        second, ranking2 = choose(rows, "round 2")
        choice, ranking3 = choose(rows, "round 3")
        body = table(rows) + "\n" + ranking1 + "\n" + ranking2 + "\n" + ranking3
        extra = {"choice_round1": first, "choice_round2": second, "choice": choice}
    else:
        sets = dev_sets(data, args.limit_hotpot, args.limit_nq)
        conditions = ["full", "exit@0.3"]
        prompt, rule = args.after.split("::")
        before = run(sets, conditions, [BEFORE[0]], [BEFORE[1]], cache, bits=args.bits)
        after = run(sets, conditions, [prompt], [rule], cache, bits=args.bits)
        for r in before:
            r["tag"] = "before"
        for r in after:
            r["tag"] = "after"
        rows = [r for pair in zip(before, after) for r in pair]
        body = table(rows, ("set", "context", "tag", "prompt", "rule"))
        extra = {"check": check(sets, conditions, args.check, cache, rows)} if args.check else {}
    wall = time.perf_counter() - t0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = {"command": cmd, "wall_s": round(wall, 1), "bound": BOUND, "raw_tokens": RAW_TOKENS, **extra,
          "rows": rows}
    (out / f"reader_answers_{args.split}{args.tag}.json").write_text(json.dumps(js, indent=1), encoding="utf-8")
    md = (f"# Reader answers: {args.split}\n\n- command: `OMP_NUM_THREADS=2 {cmd}`\n- wall: {wall / 60:.1f} min\n"
          + (f"- replay check: {extra['check']['same']} / {extra['check']['total']} answers of the real reader "
             "equal the replayed ones\n" if "check" in extra else "")
          + (f"- chosen in round 1: `{extra['choice_round1']}`; in round 2: `{extra['choice_round2']}`; "
             f"in round 3: `{extra['choice']}`\n"
             if "choice" in extra else "") + "\n" + body)
    (out / f"reader_answers_{args.split}{args.tag}.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
