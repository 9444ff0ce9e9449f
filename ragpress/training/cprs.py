"""Train the offline QwenLong-CPRS top (``ragpress train cprs``).

The backbone is SmolLM2-135M-Instruct. Its lower ``n_lower`` layers stay frozen and causal; the
``n_upper`` layers above the cut are copied, made bidirectional and trained together with a
final norm and the 4-way B/I/O/E critic head. The frozen part is run **once** per training
window and its hidden states are cached, so every epoch only runs the small trainable top: a few
minutes on a CPU.

Labels, from *train* files only:

* HotpotQA (``supporting_facts``, sentence level): tokens of supporting sentences are B/I/E
  (first/inner/last token of the sentence), all other context tokens O; system prompt of the
  ``sentences`` granularity;
* MuSiQue (``supporting_passage_idx``, passage level): tokens of supporting passages B/I/E,
  system prompt of the ``paragraphs`` granularity.

Titles are never tagged (ignored in the loss), the prefix neither. Windows are built exactly as
at inference (:func:`ragpress.compressors.cprs.build_windows`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from ragpress.compressors.cprs import (
    DEFAULT_WEIGHTS,
    LABELS,
    SYSTEM_PROMPTS,
    CPRSModel,
    build_prefix,
    build_windows,
    pad_batch,
    tokenize_passage,
)
from ragpress.core.errors import ConfigError

IGNORE = -100
TAG_B, TAG_I, TAG_O, TAG_E = (LABELS.index(x) for x in "BIOE")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_jsonl(path: Path, limit: int | None) -> list[dict]:
    if "train" not in path.name:
        raise ConfigError(f"{path.name}: train only on files named *train* (dev files are for evaluation)")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def supporting_char_spans(record: dict) -> tuple[str, list[list[tuple[int, int]]]]:
    """``(granularity, spans per passage)``: char ranges of the supporting text of each passage."""
    spans: list[list[tuple[int, int]]] = [[] for _ in record["passages"]]
    if "supporting_facts" in record:
        wanted: dict[str, set[int]] = {}
        for title, idx in record["supporting_facts"]:
            wanted.setdefault(title, set()).add(int(idx))
        for pi, p in enumerate(record["passages"]):
            pos = 0
            for si, sent in enumerate(p.get("sentences") or []):
                at = p["text"].find(sent, pos)
                if at < 0:
                    continue
                pos = at + len(sent)
                if si in wanted.get(p["title"], ()):
                    a, b = at, at + len(sent)
                    while a < b and p["text"][a].isspace():
                        a += 1
                    spans[pi].append((a, b))
        return "sentences", spans
    for pi in record.get("supporting_passage_idx", []):
        spans[pi].append((0, len(record["passages"][pi]["text"])))
    return "paragraphs", spans


def token_labels(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """B/I/O/E per token (IGNORE for title tokens): each supporting span is one B..E run."""
    labels = [IGNORE if a < 0 else TAG_O for a, _ in offsets]
    for s, e in spans:
        ks = [k for k, (a, b) in enumerate(offsets) if a >= 0 and a < e and b > s]
        for j, k in enumerate(ks):
            labels[k] = TAG_B if j == 0 else (TAG_E if j == len(ks) - 1 else TAG_I)
    return labels


def build_examples(records: list[dict], tok, window_tokens: int, max_query_tokens: int = 256):
    """Training windows: ``(input_ids, labels)`` with the prefix ignored."""
    sep = tok("\n\n", add_special_tokens=False)["input_ids"]
    out = []
    for r in records:
        gran, spans = supporting_char_spans(r)
        q_ids = tok(r["question"], add_special_tokens=False)["input_ids"][:max_query_tokens]
        prefix = tok(build_prefix(SYSTEM_PROMPTS[gran], tok.decode(q_ids)), add_special_tokens=False)["input_ids"]
        pts = [tokenize_passage(tok, p.get("title"), p["text"]) for p in r["passages"]]
        labs = [token_labels(pt.offsets, sp) for pt, sp in zip(pts, spans)]
        for w in build_windows(0, pts, window_tokens, sep):
            wl = [IGNORE if pi < 0 else labs[pi][k] for pi, k in w.slots]
            out.append((prefix + w.ids, [IGNORE] * len(prefix) + wl, r["id"]))
    return out


def train(args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import torch
    from safetensors.torch import save_file

    from ragpress.core.models import load_causal_lm

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t_start = time.perf_counter()
    lm, tok = load_causal_lm(None, "cpu" if args.device is None else args.device)
    device = next(lm.parameters()).device
    base = lm.model
    n_lower, n_upper = args.n_lower, args.n_upper
    if n_lower + n_upper > len(base.layers):
        raise ConfigError(f"n_lower + n_upper must be <= {len(base.layers)} (SmolLM2's layers)")

    records, data_files = [], []
    for path, limit in [(args.hotpot, args.limit), (args.musique, args.musique_limit or args.limit)]:
        if path:
            path = Path(path)
            records.extend(_read_jsonl(path, limit))
            data_files.append({"path": _portable(path), "sha256": sha256(path)})
    if not records:
        raise ConfigError("no training records: give --hotpot and/or --musique train files")
    rng = random.Random(args.seed)
    rng.shuffle(records)
    n_val = max(1, int(len(records) * args.val_fraction))
    val_ids = {r["id"] for r in records[:n_val]}
    examples = build_examples(records, tok, args.window_tokens)
    upper = torch.nn.ModuleList([copy.deepcopy(base.layers[n_lower + j]) for j in range(n_upper)]).float()
    norm = copy.deepcopy(base.norm).float()
    head = torch.nn.Linear(base.config.hidden_size, len(LABELS))
    model = CPRSModel(base.embed_tokens, base.rotary_emb, base.layers[:n_lower], list(upper), norm, head, tok, "train")
    for m in (upper, norm, head):
        m.to(device).train()
        for p in m.parameters():
            p.requires_grad_(True)

    # cache the frozen lower layers' output once (optionally on disk, keyed by what shapes it)
    t0 = time.perf_counter()
    key = hashlib.sha256(json.dumps([data_files, args.limit, args.musique_limit, n_lower, args.window_tokens],
                                    sort_keys=True).encode()).hexdigest()[:16]
    cache_file = Path(args.cache_dir) / f"cprs_lower_{key}.pt" if args.cache_dir else None
    cache = torch.load(cache_file) if cache_file and cache_file.exists() else []
    reused = bool(cache)
    pad_id = tok.pad_token_id or 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    with torch.inference_mode():
        for at in range(0, len(order) if not cache else 0, args.cache_batch):
            idx = order[at:at + args.cache_batch]
            ids, mask = pad_batch([examples[i][0] for i in idx], pad_id)
            h = model.run_lower(ids.to(device), mask.to(device)).to("cpu", torch.float16)
            for r, i in enumerate(idx):
                n = len(examples[i][0])
                cache.append((h[r, :n].clone(), torch.tensor(examples[i][1]), examples[i][2]))
    if cache_file and not cache_file.exists():
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache, cache_file)
    t_cache = time.perf_counter() - t0
    train_set = [c for c in cache if c[2] not in val_ids]
    val_set = [c for c in cache if c[2] in val_ids]
    print(f"cached {len(cache)} windows ({sum(len(c[1]) for c in cache)} tokens) in {t_cache:.0f}s; "
          f"{len(train_set)} train / {len(val_set)} held-out windows", file=sys.stderr)

    weight = torch.tensor([args.keep_weight, args.keep_weight, 1.0, args.keep_weight], device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
    params = [
        {"params": [p for m in (upper, norm) for p in m.parameters()], "lr": args.lr},
        {"params": list(head.parameters()), "lr": args.head_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    steps = args.epochs * ((len(train_set) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[args.lr, args.head_lr], total_steps=max(1, steps),
                                                pct_start=0.1)

    def batch(items):
        n = max(len(c[1]) for c in items)
        h = torch.zeros(len(items), n, items[0][0].shape[-1])
        y = torch.full((len(items), n), IGNORE, dtype=torch.long)
        m = torch.zeros(len(items), n, dtype=torch.long)
        for i, (hh, yy, _) in enumerate(items):
            h[i, :len(yy)] = hh.float()
            y[i, :len(yy)] = yy
            m[i, :len(yy)] = 1
        return h.to(device), y.to(device), m.to(device)

    def evaluate(items) -> dict[str, float]:
        tp = fp = fn = 0
        tot = 0.0
        with torch.no_grad():
            for at in range(0, len(items), args.batch_size):
                h, y, m = batch(items[at:at + args.batch_size])
                logits = model.run_upper(h, m)
                tot += float(loss_fn(logits.reshape(-1, 4), y.reshape(-1))) * len(items[at:at + args.batch_size])
                keep = (1 - torch.softmax(logits, -1)[..., TAG_O]) >= 0.5
                gold = (y != TAG_O) & (y != IGNORE)
                valid = y != IGNORE
                tp += int((keep & gold).sum())
                fp += int((keep & ~gold & valid).sum())
                fn += int((~keep & gold).sum())
        p = tp / max(1, tp + fp)
        r = tp / max(1, tp + fn)
        return {"loss": tot / max(1, len(items)), "token_precision": p, "token_recall": r,
                "token_f1": 2 * p * r / max(1e-9, p + r)}

    t0 = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        rng.shuffle(train_set)
        for m in (upper, norm, head):
            m.train()
        total = 0.0
        for at in range(0, len(train_set), args.batch_size):
            h, y, m = batch(train_set[at:at + args.batch_size])
            logits = model.run_upper(h, m)
            loss = loss_fn(logits.reshape(-1, 4), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
        for m in (upper, norm, head):
            m.eval()
        ev = evaluate(val_set)
        history.append({"epoch": epoch + 1, "train_loss": total / max(1, (len(train_set) + args.batch_size - 1)
                                                                       // args.batch_size), **ev})
        print(json.dumps(history[-1]), file=sys.stderr)
    t_train = time.perf_counter() - t0

    hyper = {k: v for k, v in vars(args).items() if k not in {"func", "out", "command", "method", "cache_dir"}}
    meta = {"backbone": "SmolLM2-135M-Instruct", "n_lower": n_lower, "n_upper": n_upper, "labels": list(LABELS),
            "window_tokens": args.window_tokens, "prompt_layout": "chatml system/user/context"}
    state = {}
    for j, layer in enumerate(upper):
        state.update({f"upper.{j}.{k}": v for k, v in layer.state_dict().items()})
    state.update({f"norm.{k}": v for k, v in norm.state_dict().items()})
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"cprs": json.dumps(meta)})
    card = {
        "model": "cprs (QwenLong-CPRS, arXiv:2505.18092) offline top on SmolLM2-135M-Instruct",
        "weights": out.name, "weights_sha256": sha256(out), "size_bytes": out.stat().st_size,
        "trainable_parameters": sum(v.numel() for v in state.values()), **meta,
        "training_command": "ragpress train cprs " + " ".join(_cli_args(args)),
        "data": data_files, "records": len(records), "held_out_records": n_val,
        "windows": len(cache), "hyperparameters": hyper, "lower_cache_reused_from_disk": reused,
        "seconds": {"cache_lower_layers": round(t_cache, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "device": str(device), "history": history,
    }
    card_path = out.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {card_path}", file=sys.stderr)
    return card


def _cli_args(args: argparse.Namespace) -> list[str]:
    out = []
    for k in ("hotpot", "musique", "out", "n_lower", "n_upper", "window_tokens", "epochs", "batch_size", "lr",
              "head_lr", "keep_weight", "seed", "limit", "musique_limit"):
        v = getattr(args, k, None)
        if v is not None:
            out += [f"--{k.replace('_', '-')}", _portable(v) if k in ("hotpot", "musique", "out") else str(v)]
    return out


def _portable(path) -> str:
    """A path as the card should record it: relative to the data folder / the checkout, not this machine."""
    from ragpress.qa import default_data_dir

    p = Path(path).resolve()
    for root, shown in ((default_data_dir().resolve(), "../shared/data"), (Path(__file__).resolve().parents[2], ".")):
        if p.is_relative_to(root):
            return f"{shown}/{p.relative_to(root)}"
    return str(path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ragpress.qa import default_data_dir

    data = default_data_dir()
    p.add_argument("--hotpot", default=str(data / "hotpotqa" / "hotpotqa_train_hipporag100.jsonl"),
                   help="HotpotQA train jsonl (sentence-level supporting_facts); '' to skip")
    p.add_argument("--musique", default=str(data / "musique" / "musique_train_hipporag100.jsonl"),
                   help="MuSiQue train jsonl (supporting_passage_idx); '' to skip")
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="output .safetensors (a .json card is written next)")
    p.add_argument("--n-lower", type=int, default=16, help="frozen causal SmolLM2 layers")
    p.add_argument("--n-upper", type=int, default=1, help="trained bidirectional layers above them")
    p.add_argument("--window-tokens", type=int, default=512)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cache-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--keep-weight", type=float, default=3.0, help="loss weight of B/I/E vs O")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--limit", type=int, default=None, help="records per file (smoke runs)")
    p.add_argument("--musique-limit", type=int, default=None, help="records of the MuSiQue file (default: --limit)")
    p.add_argument("--cache-dir", default=None,
                   help="keep the frozen layers' hidden states here and reuse them in later runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)


def add_train_cprs_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cprs`` under a ``ragpress train`` sub-command group."""
    p = subparsers.add_parser("cprs", help="train the offline QwenLong-CPRS top (bidirectional layers + critic)")
    add_arguments(p)
    p.set_defaults(func=run_train_cprs)
    return p


def run_train_cprs(args: argparse.Namespace) -> int:
    card = train(args)
    print(json.dumps({k: card[k] for k in ("weights", "size_bytes", "seconds", "records")}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ragpress.training.cprs", description=__doc__)
    add_arguments(p)
    return run_train_cprs(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
