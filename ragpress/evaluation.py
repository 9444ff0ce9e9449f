"""The evaluation harness: how we know a compressor is good.

Given a QA dataset file (HotpotQA, 2Wiki, MuSiQue, NQ-open, ... in ``../shared/data``), the
methods and the budgets, :func:`evaluate` compresses every record with every (method, budget)
pair through the same ``Compressor.compress_batch`` the CLI and the service call, and reports:

* **ratio**: tokens after / tokens before with the reader tokenizer, mean and spread per record;
* **answer recall**: the share of records whose normalised gold answer (any alias) is still in
  the compressed context, over the records where it is in the full context (yes/no answers
  excluded: they are never spelled out in the evidence);
* **supporting-sentence recall** (datasets with sentence-level supporting facts): the share of
  gold supporting sentences kept. A sentence counts as kept when the result's spans cover at
  least half of its characters, or (for abstractive output) its normalised text is in the
  compressed context;
* **supporting-passage recall** (datasets with passage-level support): the share of supporting
  passages from which something was kept;
* **speed**: input tokens per second of compression, model loading excluded (it is timed apart
  by a warm-up call on the first record);
* **reader figures** (when a reader is given): the reader answers from each compressed context;
  exact match and token F1 (SQuAD normalisation, best over aliases), answer bits (bits per token
  of the best gold alias, teacher-forced after the same prompt), prefill ms and prompt tokens per
  query, empty answers, and the same figures apart for the records whose gold answer is not in
  the full context (they stay in the main figures too). Two reference rows come first:
  ``(none)`` (no context: closed book) and ``(full)`` (the whole retrieved context).

:func:`write_report` writes a markdown table, the JSON and a PNG plot of recall against ratio.
``ragpress eval`` and ``benchmarks/quality.py`` are thin wrappers.

>>> records = load_records("../shared/data/hotpotqa/hotpotqa_dev_distractor_sf.jsonl", limit=20)  # doctest: +SKIP
>>> rows = evaluate(records, ["embed-sentences"], [Budget(ratio=0.3)])                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragpress.core.errors import RagpressError
from ragpress.core.types import Budget, CompressionResult
from ragpress.qa import (  # noqa: F401 (re-exported: the harness's public names)
    YES_NO,
    DatasetError,
    EvalRecord,
    answer_in,
    answerable,
    default_data_dir,
    exact_match,
    full_context,
    kept_passages,
    kept_supporting,
    load_records,
    normalize_answer,
    record_from_json,
    split_context,
    token_f1,
)
from ragpress.readers.base import SoftContext, context_for

log = logging.getLogger(__name__)

#: The reader's reference rows: no context (closed book) and the full retrieved context.
REFERENCE_METHODS = ("(none)", "(full)")


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Row:
    """One (method, budget) line of the report."""

    dataset: str
    method: str
    budget: str
    records: int
    ratio_mean: float
    ratio_std: float
    ratio_p90: float
    answer_recall: float | None
    answer_n: int
    sf_recall: float | None
    sf_n: int
    passage_recall: float | None
    tokens_per_s: float
    load_s: float
    compress_s: float
    errors: int = 0
    reader: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_budget(text: str) -> Budget:
    """``0.3`` -> ratio, ``tokens:200`` or ``200t`` -> tokens, ``thr:0.5`` -> threshold, followed by
    optional ``+floor:0.2``, ``+ceiling:0.6``, ``+skip:256``; ``auto`` -> :meth:`Budget.adaptive`."""
    text = text.strip()
    if text == "auto":
        return Budget.adaptive()
    head, *rest = [t.strip() for t in text.split("+")]
    try:
        extra = {}
        for item in rest:
            key, value = item.split(":", 1)
            key = {"skip": "skip_under"}.get(key, key)
            if key not in ("floor", "ceiling", "skip_under"):
                raise ValueError(key)
            extra[key] = int(value) if key == "skip_under" else float(value)
        if head.startswith(("thr:", "threshold:")):
            return Budget(threshold=float(head.split(":", 1)[1]), **extra)
        if head.startswith("tokens:"):
            return Budget(tokens=int(head.split(":", 1)[1]), **extra)
        if head.endswith("t"):
            return Budget(tokens=int(head[:-1]), **extra)
        return Budget(ratio=float(head), **extra)
    except ValueError:
        raise DatasetError(f"budget {text!r} not understood: use 0.3 (ratio), tokens:200 or thr:0.5, then "
                           "optionally +floor:0.2 +ceiling:0.6 +skip:256; or auto") from None


def budget_label(b: Budget) -> str:
    if b == Budget.adaptive():
        return "auto"
    main = f"{b.ratio:g}" if b.mode == "ratio" else (f"tokens:{b.tokens}" if b.mode == "tokens" else f"thr:{b.threshold:g}")
    return main + "".join(f"+{k}:{getattr(b, f):g}" for k, f in (("floor", "floor"), ("ceiling", "ceiling"),
                                                                  ("skip", "skip_under")) if getattr(b, f) is not None)


def _batched(items: Sequence, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def evaluate(records: Sequence[EvalRecord], methods: Sequence[str | tuple[str, dict]],
             budgets: Sequence[Budget], dataset: str = "", batch_size: int = 8,
             progress: bool = True, reader: Any = None, task: str = "qa",
             references: bool = True) -> list[Row]:
    """Compress every record with every (method, budget) and measure; one :class:`Row` each.

    ``methods`` are registry names or ``(name, config)`` pairs. A budget mode a method does not
    support is skipped (logged). Results are computed by ``compress_batch`` in batches of
    ``batch_size`` records.

    With a ``reader`` (a :class:`ragpress.readers.Reader`), every row also gets the reader's
    figures in ``Row.reader`` (see :func:`read_figures`) from the compressed texts already made,
    and two reference rows come first (unless ``references`` is False): ``(none)`` (no context)
    and ``(full)`` (full context).
    """
    from tqdm.auto import tqdm

    from ragpress.core.registry import create_compressor

    full_texts = [full_context(r) for r in records]
    fulls = [normalize_answer(f) for f in full_texts]
    ans_ok = [answerable(r) and answer_in(r.answers, f) for r, f in zip(records, fulls)]
    rows: list[Row] = []
    if reader is not None and references:
        rows.extend(_reference_rows(dataset, records, full_texts, ans_ok, reader, task, progress))
    for m in methods:
        name, config = (m, None) if isinstance(m, str) else m
        comp = create_compressor(name, config)
        t0 = time.perf_counter()
        try:  # warm-up: loads the models, so speed excludes loading
            comp.compress(records[0].request(Budget(ratio=0.5) if "ratio" in comp.budget_modes else None))
        except RagpressError as exc:
            log.warning("%s warm-up failed: %s", name, exc)
        load_s = time.perf_counter() - t0
        for budget in budgets:
            if budget.mode not in comp.budget_modes:
                log.info("%s does not support %s budgets; skipped", name, budget.mode)
                continue
            results: list[CompressionResult | None] = []
            errors, elapsed = 0, 0.0
            bar = tqdm(total=len(records), desc=f"{name} @ {budget_label(budget)}", disable=not progress,
                       leave=False)
            for chunk in _batched(records, batch_size):
                reqs = [r.request(budget) for r in chunk]
                t1 = time.perf_counter()
                try:
                    out = comp.compress_batch(reqs)
                except RagpressError as exc:  # fall back record by record: one bad record loses one row
                    log.warning("%s batch failed (%s); retrying one by one", name, exc)
                    out = []
                    for q in reqs:
                        try:
                            out.append(comp.compress(q))
                        except RagpressError as exc2:
                            log.warning("%s failed on a record: %s", name, exc2)
                            out.append(None)
                            errors += 1
                elapsed += time.perf_counter() - t1
                results.extend(out)
                bar.update(len(chunk))
            bar.close()
            row = _row(dataset, name, budget, records, results, ans_ok, load_s, elapsed, errors)
            if reader is not None:
                row.reader = read_figures(reader, records, [False if r is None else context_for(r) for r in results],
                                          ans_ok, task, desc=f"read {name} @ {row.budget}", progress=progress)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- reader figures
def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def read_figures(reader: Any, records: Sequence[EvalRecord], contexts: Sequence[str | None | bool],
                 ans_ok: Sequence[bool], task: str = "qa", desc: str = "read", progress: bool = False) -> dict:
    """The reader's figures for one row: it answers each record from its context (``None`` = no
    context; ``False`` = the record failed to compress, left out) in batches of its batch size,
    shortest contexts together, and scores the gold answers' bits where it can.

    Keys: ``n``, ``em``, ``f1``, ``bits`` (mean bits per answer token of the best alias; None when
    the reader cannot score), ``prefill_ms``, ``decode_ms``, ``read_ms`` (per query),
    ``tokens_in`` (mean prompt tokens), ``empty`` (empty answers), ``cut`` (records whose context
    was cut to fit the window), ``read_s`` (wall time of reading and scoring), and ``*_absent``
    (``n``, ``em``, ``f1``, ``bits``) over the records whose gold answer is not in the full
    context (yes/no answers included); ``answers`` holds the answer texts by record id.
    """
    from tqdm.auto import tqdm

    idx = [i for i, c in enumerate(contexts) if c is not False]
    idx.sort(key=lambda i: 4 * contexts[i].n if isinstance(contexts[i], SoftContext) else len(contexts[i] or ""))
    bs = int(getattr(reader.config, "batch_size", 8) or 8)
    answers: dict[int, Any] = {}
    bits: dict[int, float | None] = {}
    can_score = True
    t0 = time.perf_counter()
    bar = tqdm(total=len(idx), desc=desc, disable=not progress, leave=False)
    for chunk in _batched(idx, bs):
        qs = [records[i].query for i in chunk]
        cs = [contexts[i] or None for i in chunk]
        for i, a in zip(chunk, reader.read_batch(qs, cs, task)):
            answers[i] = a
        if can_score:
            try:
                scored = reader.answer_bits(qs, cs, [records[i].answers for i in chunk], task)
            except NotImplementedError:
                can_score = False
                scored = [None] * len(chunk)
            bits.update(zip(chunk, scored))
        bar.update(len(chunk))
    bar.close()
    read_s = time.perf_counter() - t0
    em = {i: exact_match(answers[i].text, records[i].answers) for i in idx}
    f1 = {i: token_f1(answers[i].text, records[i].answers) for i in idx}
    absent = [i for i in idx if not ans_ok[i]]
    return {
        "n": len(idx),
        "em": _mean([em[i] for i in idx]), "f1": _mean([f1[i] for i in idx]),
        "bits": _mean([bits.get(i) for i in idx]),
        "prefill_ms": _mean([answers[i].prefill_ms for i in idx]),
        "decode_ms": _mean([answers[i].decode_ms for i in idx]),
        "read_ms": _mean([answers[i].prefill_ms + answers[i].decode_ms for i in idx]),
        "tokens_in": _mean([answers[i].tokens_in for i in idx]),
        "empty": sum(answers[i].empty for i in idx),
        "cut": sum(answers[i].context_tokens_cut > 0 for i in idx),
        "read_s": read_s,
        "n_absent": len(absent),
        "em_absent": _mean([em[i] for i in absent]), "f1_absent": _mean([f1[i] for i in absent]),
        "bits_absent": _mean([bits.get(i) for i in absent]),
        "reader_model": getattr(reader, "model_id", ""),
        "answers": {records[i].id: answers[i].text for i in sorted(idx)},
    }


def _reference_rows(dataset, records, full_texts, ans_ok, reader, task, progress) -> list[Row]:
    """``(none)``: the reader without context; ``(full)``: with the whole retrieved context."""
    n = len(records)
    ans_n = sum(ans_ok)
    sf_n = sum(len(r.supporting) for r in records)
    ps_n = sum(len(r.supporting_passages) for r in records)
    out = []
    for name, contexts, kept in ((REFERENCE_METHODS[0], [None] * n, 0.0), (REFERENCE_METHODS[1], list(full_texts), 1.0)):
        row = Row(dataset=dataset, method=name, budget="-", records=n, ratio_mean=kept, ratio_std=0.0,
                  ratio_p90=kept, answer_recall=kept if ans_n else None, answer_n=ans_n,
                  sf_recall=kept if sf_n else None, sf_n=sf_n, passage_recall=kept if ps_n else None,
                  tokens_per_s=0.0, load_s=0.0, compress_s=0.0)
        row.reader = read_figures(reader, records, contexts, ans_ok, task, desc=f"read {name}", progress=progress)
        out.append(row)
    return out


def _row(dataset, name, budget, records, results, ans_ok, load_s, elapsed, errors) -> Row:
    ratios, ans_hits, ans_n, sf_k, sf_n, ps_k, ps_n, tokens_in = [], 0, 0, 0, 0, 0, 0, 0
    for rec, res, ok in zip(records, results, ans_ok):
        if res is None:
            continue
        ratios.append(res.ratio)
        tokens_in += res.tokens_before
        if res.soft_tokens is not None:  # vectors, not text: no text to find answers or sentences in
            continue
        if ok:
            ans_n += 1
            ans_hits += answer_in(rec.answers, normalize_answer(res.text))
        k, n = kept_supporting(rec, res)
        sf_k, sf_n = sf_k + k, sf_n + n
        k, n = kept_passages(rec, res)
        ps_k, ps_n = ps_k + k, ps_n + n
    ratios_sorted = sorted(ratios) or [0.0]
    return Row(
        dataset=dataset, method=name, budget=budget_label(budget), records=len(ratios),
        ratio_mean=statistics.fmean(ratios) if ratios else 0.0,
        ratio_std=statistics.pstdev(ratios) if len(ratios) > 1 else 0.0,
        ratio_p90=ratios_sorted[min(len(ratios_sorted) - 1, int(0.9 * len(ratios_sorted)))],
        answer_recall=ans_hits / ans_n if ans_n else None, answer_n=ans_n,
        sf_recall=sf_k / sf_n if sf_n else None, sf_n=sf_n,
        passage_recall=ps_k / ps_n if ps_n else None,
        tokens_per_s=tokens_in / elapsed if elapsed > 0 else 0.0, load_s=load_s, compress_s=elapsed,
        errors=errors,
    )


# ----------------------------------------------------------------------------- report
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_table(rows: Sequence[Row]) -> str:
    head = ("| dataset | method | budget | n | ratio (mean ± sd) | answer recall % | SF recall % "
            "| passage recall % | tokens/s | load s |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r.dataset} | {r.method} | {r.budget} | {r.records} | {r.ratio_mean:.3f} ± {r.ratio_std:.3f} "
        f"| {_pct(r.answer_recall)} | {_pct(r.sf_recall)} | {_pct(r.passage_recall)} "
        f"| {r.tokens_per_s:,.0f} | {r.load_s:.1f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _num(x: float | None, fmt: str = ".2f", scale: float = 1.0) -> str:
    return "-" if x is None else format(scale * x, fmt)


def reader_table(rows: Sequence[Row]) -> str:
    """The reader's figures per row (rows without them are left out); ``absent``: records whose
    gold answer is not in the full context (also counted in the main figures)."""
    rows = [r for r in rows if r.reader]
    if not rows:
        return ""
    head = ("| dataset | method | budget | ratio | reader tokens in | EM % | F1 % | answer bits | prefill ms "
            "| read ms | compress ms | empty | absent n | absent EM % | absent F1 % | absent bits |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        x = r.reader
        compress_ms = 1000 * r.compress_s / r.records if r.records else 0.0
        lines.append(
            f"| {r.dataset} | {r.method} | {r.budget} | {r.ratio_mean:.3f} | {_num(x.get('tokens_in'), '.0f')} "
            f"| {_pct(x.get('em'))} | {_pct(x.get('f1'))} | {_num(x.get('bits'))} | {_num(x.get('prefill_ms'), '.0f')} "
            f"| {_num(x.get('read_ms'), '.0f')} | {compress_ms:.0f} | {x.get('empty', 0)} | {x.get('n_absent', 0)} "
            f"| {_pct(x.get('em_absent'))} | {_pct(x.get('f1_absent'))} | {_num(x.get('bits_absent'))} |")
    return head + "\n".join(lines) + "\n"


def reader_metrics(rows: Sequence[Row]) -> list[tuple[str, str, float]]:
    """(key, axis label, scale) of the reader figures to plot: F1, and answer bits when scored."""
    metrics = [("f1", "reader token F1 (%)", 100.0)]
    if any(r.reader.get("bits") is not None for r in rows if r.reader):
        metrics.append(("bits", "gold answer bits / token (lower is better)", 1.0))
    return metrics


def reader_axis(ax, rows: Sequence[Row], key: str, label: str, scale: float) -> None:
    """One reader figure against the reader's prompt tokens on ``ax``: a point per row, the
    reference rows also as dashed horizontal lines."""
    for k, r in enumerate(rows):
        v = r.reader.get(key) if r.reader else None
        if v is None:
            continue
        tag = r.method if r.budget == "-" else f"{r.method} @ {r.budget}"
        if r.method in REFERENCE_METHODS:
            ax.axhline(scale * v, ls="--", lw=1, color="grey" if r.method == "(none)" else "black")
        ax.scatter([r.reader["tokens_in"]], [scale * v], marker="s" if r.method in REFERENCE_METHODS else "o",
                   label=tag, color=f"C{k % 10}")
    ax.set_xlabel("reader prompt tokens per query (mean)")
    ax.set_ylabel(label)
    if key == "f1":
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def new_figure(n_rows: int, n_cols: int, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(n_rows, n_cols, figsize=(5.5 * n_cols, height * n_rows), squeeze=False)


def save_figure(fig, path: str | Path, title: str = "") -> Path:
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reader(rows: Sequence[Row], path: str | Path, title: str = "") -> Path | None:
    """Reader F1 (and answer bits, when scored) against the reader's prompt tokens."""
    rows = [r for r in rows if r.reader and r.reader.get("f1") is not None]
    if not rows:
        return None
    metrics = reader_metrics(rows)
    fig, axes = new_figure(1, len(metrics))
    for ax, (key, label, scale) in zip(axes[0], metrics):
        reader_axis(ax, rows, key, label, scale)
    return save_figure(fig, path, title)


def plot(rows: Sequence[Row], path: str | Path, title: str = "") -> Path:
    """Recall against ratio, one line per method (answer recall; SF recall when present)."""
    metrics = [("answer_recall", "answer recall")]
    if any(r.sf_recall is not None for r in rows):
        metrics.append(("sf_recall", "supporting-sentence recall"))
    elif any(r.passage_recall is not None for r in rows):
        metrics.append(("passage_recall", "supporting-passage recall"))
    fig, axes = new_figure(1, len(metrics))
    for ax, (key, label) in zip(axes[0], metrics):
        for method in dict.fromkeys(r.method for r in rows if r.method not in REFERENCE_METHODS):
            pts = sorted((r.ratio_mean, getattr(r, key)) for r in rows
                         if r.method == method and getattr(r, key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("token ratio reached (after / before)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def write_report(rows: Sequence[Row], out: str | Path, title: str = "", meta: dict | None = None) -> dict[str, Path]:
    """``<out>.md``, ``<out>.json`` and ``<out>.png``; returns their paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, js, png = out.with_suffix(".md"), out.with_suffix(".json"), out.with_suffix(".png")
    header = f"# {title}\n\n" if title else ""
    if meta:
        header += "".join(f"- {k}: `{v}`\n" for k, v in meta.items()) + "\n"
    body = header + markdown_table(rows) + f"\n![recall vs ratio]({png.name})\n"
    paths = {"md": md, "json": js, "png": png}
    if any(r.reader for r in rows):
        reader_png = out.with_name(out.name + "_reader.png")
        body += ("\n## Reader\n\n" + reader_table(rows) + "\nabsent: records whose gold answer is not in the full "
                 "context (yes/no answers included); they are also counted in the main EM / F1 / bits. "
                 "ms are per query.\n")
        if plot_reader(rows, reader_png, title):
            body += f"\n![reader F1 vs tokens]({reader_png.name})\n"
            paths["reader_png"] = reader_png
    md.write_text(body, encoding="utf-8")
    js.write_text(json.dumps({"meta": meta or {}, "rows": [r.as_dict() for r in rows]}, indent=2), encoding="utf-8")
    plot(rows, png, title)
    return paths
