"""ARC-Encoder (Kyutai, arXiv 2510.20535): a context compressed into x-times fewer continuous
vectors that replace the context's token embeddings in a frozen reader.

**The encoder, as the paper designs it.** A decoder LM truncated to its lower blocks, with its
causal mask, final norm and output head removed, reads each context segment bidirectionally.
In its **last block only**, the queries of groups of ``PF`` consecutive tokens are averaged
(groups as equal as possible, the larger first; one group when ``n < PF``) and attend to the
full, unpooled keys and values of the segment, with new positions ``0..m-1`` for the pooled
queries; the block's residual and feed-forward run on the ``m = ceil(n / PF)`` pooled vectors.
A learned ``<Cont>`` (or, in reconstruction pre-training, ``<Rec>``) vector in the encoder's
space is appended after every segment, and a **two-layer linear MLP without activation**
(the paper's ``bridge_module``) maps everything into the reader's embedding space. The reader
is never modified; it reads the vectors through ``inputs_embeds``
(:class:`~ragpress.readers.base.SoftContext`, spliced into the prompt by the local reader).

**The offline default** (``arc-smollm2-135m``), decided from the paper's ablations (Tab. 5, 8):

* encoder backbone: the **first 8 of SmolLM2-135M-Instruct's 30 layers** (the only SmolLM2
  weights on this machine; the same family as the reader, as ARC pairs Llama3.2-3B with
  Llama3.1-8B; the last of the 8 pools). The paper loses little when truncating 2 or 4 of 28
  layers and 3.1 points when keeping 7 of 28 (Tab. 5); we keep about the same quarter as that
  ablation because training here is short (a few hundred steps, on a CPU or a brief GPU lease;
  a deeper encoder is one flag away: ``ragpress train arc --layers 16``), and encoding then costs about a quarter of
  a full-text prefill of the reader, once per passage (soft tokens are cached);
* bidirectional (the final recipe; "w causality" was 0.4 points worse), pooling of the mean
  of the queries in the last block (the default; last-token pooling was within noise and less
  robust across decoders);
* trained: LoRA (rank 16) on every linear layer of the encoder blocks, the special vectors and
  the MLP (576 -> 1024 -> 576); LoRA instead of full training (paper: 41.1 vs 41.7, Tab. 5)
  so the shipped weights are a few MB, and the embedding matrix stays frozen (it is shared with
  the reader);
* one set of weights for pooling factors 4 and 8 (each training batch samples one), where the
  paper ships one fine-tune per factor;
* weights: ``ragpress/compressors/weights/arc_smollm2.safetensors`` (trained by
  ``ragpress train arc``, card ``arc_smollm2.md``); the reader they were made for is
  ``SmolLM2-135M-Instruct``.

**The published encoders** (``kyutai/ARC8_Encoder_Llama``, ``kyutai/ARC8_Encoder_Mistral``,
``kyutai/ARC8_Encoder_multi``, ``kyutai/ARC4_Encoder_Llama``) load by id through the same
:class:`ARCEncoder` (:func:`load_kyutai`): a Llama3.2-3B backbone (26 blocks, interleaved RoPE,
theta 5e5, no rope scaling) in the reference's Meta naming, the ``bridge_module`` MLP 3072 ->
2048 -> 4096 and per-decoder ``<Rec>``/``<Cont>``. They need, in the local Hugging Face cache
(nothing downloads here): the encoder's ``model.safetensors`` (~6.4 GB in bf16), the Llama-3
tokenizer (``meta-llama/Llama-3.2-3B``) and the decoder they were trained for as the reader
(``meta-llama/Llama-3.1-8B`` or ``mistralai/Mistral-7B-v0.3``: ~16 GB in bf16, a 24 GB GPU for
both). They are pre-trained only (the paper fine-tunes them before its Table 1).

Budgets: ``Budget(ratio=r)`` asks for a pooling factor of at least ``1/r`` and
``Budget(tokens=t)`` for at most ``t`` reader positions; the smallest configured factor
(``factors``, default 4 and 8) that meets it is used (``extra["pooling_factor"]``).

>>> from ragpress import CompressionRequest, create_compressor                       # doctest: +SKIP
>>> res = create_compressor("arc").compress(CompressionRequest.of("", ["Acme was ..."], ratio=0.25))  # doctest: +SKIP
>>> res.soft_tokens.shape, res.extra["soft_reader"], res.extra["pooling_factor"]     # doctest: +SKIP
(torch.Size([5, 576]), 'SmolLM2-135M-Instruct', 4)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ragpress.core.compressor import Compressor, CompressorConfig
from ragpress.core.errors import BudgetError, ConfigError, ModelLoadError
from ragpress.core.extractive import render_full
from ragpress.core.models import cached_hub_file, default_device, load_causal_lm, loads_once, resolve_model_id
from ragpress.core.types import Budget, CompressionRequest, CompressionResult, Passage, Span

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "arc_smollm2.safetensors"
OFFLINE_ID = "arc-smollm2-135m"

#: the released checkpoints: backbone Llama3.2-3B (26 of 28 blocks), the decoders they serve
KYUTAI = {
    "kyutai/ARC8_Encoder_Llama": {"decoders": ["meta-llama/Llama-3.1-8B"], "pf": 8},
    "kyutai/ARC8_Encoder_Mistral": {"decoders": ["mistralai/Mistral-7B-v0.3"], "pf": 8},
    "kyutai/ARC8_Encoder_multi": {"decoders": ["meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3"], "pf": 8},
    "kyutai/ARC4_Encoder_Llama": {"decoders": ["meta-llama/Llama-3.1-8B"], "pf": 4},
}
KYUTAI_SPEC = {"dim": 3072, "n_layers": 26, "n_heads": 24, "n_kv_heads": 8, "head_dim": 128, "ffn_dim": 8192,
               "vocab": 128256, "rope_theta": 500000.0, "rope": "interleaved", "norm_eps": 1e-5,
               "bridge_hidden": 2048, "out_dim": 4096}
KYUTAI_TOKENIZER = "meta-llama/Llama-3.2-3B"


# ---------------------------------------------------------------------------------------- pooling
def split_groups(n: int, pf: int) -> list[int]:
    """Sizes of the pooled groups of ``n`` tokens at factor ``pf`` (the reference's
    ``split_integer``): ``n/pf`` groups of ``pf`` when it divides, else ``ceil(n/pf)`` groups as
    equal as possible, the larger ones first; a single group when ``n < pf``.

    >>> split_groups(8, 4), split_groups(10, 4), split_groups(3, 4)
    ([4, 4], [4, 3, 3], [3])
    """
    if n <= 0:
        return []
    m = max(1, math.ceil(n / pf))
    q, r = divmod(n, m)
    return [q + 1] * r + [q] * (m - r)


# ---------------------------------------------------------------------------------------- model
@dataclass
class EncoderSpec:
    """Shape of an encoder (a Llama-style decoder's blocks) and of its projector."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab: int
    rope_theta: float
    rope: Literal["half", "interleaved"] = "half"  # HF rotate-half or Meta interleaved pairs
    norm_eps: float = 1e-5
    bridge_hidden: int = 1024
    out_dim: int = 576
    causal: bool = False
    lora_rank: int = 0
    lora_alpha: float = 32.0
    n_decoders: int = 1


def _nn():
    import torch

    class RMSNorm(torch.nn.Module):
        def __init__(self, dim: int, eps: float):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight

    class LoRALinear(torch.nn.Module):
        """``base(x) + scale * B(A(x))`` with the base frozen (B starts at zero)."""

        def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
            super().__init__()
            self.base = base
            self.lora_a = torch.nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
            torch.nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.scale = alpha / rank
            base.weight.requires_grad_(False)

        def forward(self, x):
            return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    class Attention(torch.nn.Module):
        def __init__(self, s: EncoderSpec):
            super().__init__()
            lin = torch.nn.Linear
            self.q_proj = lin(s.dim, s.n_heads * s.head_dim, bias=False)
            self.k_proj = lin(s.dim, s.n_kv_heads * s.head_dim, bias=False)
            self.v_proj = lin(s.dim, s.n_kv_heads * s.head_dim, bias=False)
            self.o_proj = lin(s.n_heads * s.head_dim, s.dim, bias=False)

    class MLP(torch.nn.Module):
        def __init__(self, s: EncoderSpec):
            super().__init__()
            lin = torch.nn.Linear
            self.gate_proj = lin(s.dim, s.ffn_dim, bias=False)
            self.up_proj = lin(s.dim, s.ffn_dim, bias=False)
            self.down_proj = lin(s.ffn_dim, s.dim, bias=False)

        def forward(self, x):
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class Block(torch.nn.Module):
        """A pre-norm Llama block whose queries may come from other states than its keys and
        values (the pooled last block). Submodule names follow transformers' Llama, so SmolLM2's
        layers load by state dict."""

        def __init__(self, s: EncoderSpec):
            super().__init__()
            self.s = s
            self.input_layernorm = RMSNorm(s.dim, s.norm_eps)
            self.self_attn = Attention(s)
            self.post_attention_layernorm = RMSNorm(s.dim, s.norm_eps)
            self.mlp = MLP(s)

        def forward(self, xq, xkv, rope_q, rope_k, mask):
            s = self.s
            hq = self.input_layernorm(xq)
            hkv = hq if xkv is xq else self.input_layernorm(xkv)
            b, mq, _ = xq.shape
            lk = xkv.shape[1]
            a = self.self_attn
            q = a.q_proj(hq).view(b, mq, s.n_heads, s.head_dim).transpose(1, 2)
            k = a.k_proj(hkv).view(b, lk, s.n_kv_heads, s.head_dim).transpose(1, 2)
            v = a.v_proj(hkv).view(b, lk, s.n_kv_heads, s.head_dim).transpose(1, 2)
            q, k = _rope(q, *rope_q, s.rope), _rope(k, *rope_k, s.rope)
            rep = s.n_heads // s.n_kv_heads
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = xq + a.o_proj(out.transpose(1, 2).reshape(b, mq, s.n_heads * s.head_dim))
            return x + self.mlp(self.post_attention_layernorm(x))

    return RMSNorm, LoRALinear, Block


def _rope(x, cos, sin, kind: str):
    """Rotary embedding of ``x`` ``[b, h, n, d]`` with ``cos``/``sin`` ``[n, d/2]``."""
    import torch

    if kind == "interleaved":  # Meta: pairs (2i, 2i+1)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    half = x.shape[-1] // 2  # transformers: rotate-half
    x0, x1 = x[..., :half], x[..., half:]
    return torch.cat((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)


def _rope_tables(n: int, spec: EncoderSpec, device):
    import torch

    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, spec.head_dim, 2, dtype=torch.float32, device=device)
                                     / spec.head_dim))
    f = torch.arange(n, dtype=torch.float32, device=device)[:, None] * inv[None, :]
    return f.cos(), f.sin()


def build_encoder(spec: EncoderSpec, embed=None):
    """An :class:`ARCEncoder` of ``spec`` with fresh weights (``embed``: a token embedding to
    share, e.g. the reader's)."""
    import torch

    RMSNorm, LoRALinear, Block = _nn()

    class ARCEncoderModule(torch.nn.Module):
        """Encoder blocks + pooled last block + special vectors + projector."""

        def __init__(self):
            super().__init__()
            self.spec = spec
            self.embed = embed if embed is not None else torch.nn.Embedding(spec.vocab, spec.dim)
            self.embed.weight.requires_grad_(False)
            self.blocks = torch.nn.ModuleList(Block(spec) for _ in range(spec.n_layers))
            # <Rec> (row 0) and <Cont> (row 1) per decoder, in the encoder's space, init ones
            self.special = torch.nn.Parameter(torch.ones(spec.n_decoders, 2, spec.dim))
            self.bridge = torch.nn.ModuleList(torch.nn.Sequential(
                torch.nn.Linear(spec.dim, spec.bridge_hidden, bias=False),
                torch.nn.Linear(spec.bridge_hidden, spec.out_dim, bias=False)) for _ in range(spec.n_decoders))

        def add_lora(self, rank: int, alpha: float) -> None:
            spec.lora_rank, spec.lora_alpha = rank, alpha
            for blk in self.blocks:
                for parent in (blk.self_attn, blk.mlp):
                    for name, child in list(parent.named_children()):
                        if isinstance(child, torch.nn.Linear):
                            setattr(parent, name, LoRALinear(child, rank, alpha))
                for norm in (blk.input_layernorm, blk.post_attention_layernorm):
                    norm.weight.requires_grad_(False)

        def trainable_state(self) -> dict[str, Any]:
            return {k: v for k, v in self.named_parameters() if v.requires_grad}

        @property
        def device(self):
            return self.special.device

        def forward(self, segments: list[list[int]], pf: int, special: str | None = "cont",
                    decoder: int = 0) -> list:
            """Reader-space vectors ``[ceil(n_i/pf) (+1), out_dim]`` for each segment of token ids."""
            dev = self.device
            b, lmax = len(segments), max(len(s) for s in segments)
            ids = torch.zeros(b, lmax, dtype=torch.long, device=dev)
            keep = torch.zeros(b, lmax, dtype=torch.bool, device=dev)
            for i, s in enumerate(segments):
                ids[i, :len(s)] = torch.tensor(s, dtype=torch.long, device=dev)
                keep[i, :len(s)] = True
            x = self.embed(ids).to(self.special.dtype)
            rope_k = _rope_tables(lmax, spec, dev)
            mask = keep[:, None, None, :]
            if spec.causal:
                mask = mask & torch.ones(lmax, lmax, dtype=torch.bool, device=dev).tril()[None, None]
            for blk in self.blocks[:-1]:
                x = blk(x, x, rope_k, rope_k, mask)
            groups = [split_groups(len(s), pf) for s in segments]
            mmax = max(len(g) for g in groups)
            pool = torch.zeros(b, mmax, lmax, dtype=x.dtype, device=dev)
            for i, g in enumerate(groups):
                at = 0
                for j, size in enumerate(g):
                    pool[i, j, at:at + size] = 1.0 / size
                    at += size
            pooled = pool @ x
            x = self.blocks[-1](pooled, x, _rope_tables(mmax, spec, dev), rope_k, keep[:, None, None, :])
            proj = self.bridge[decoder]
            out = []
            for i, g in enumerate(groups):
                v = x[i, :len(g)]
                if special is not None:
                    v = torch.cat([v, self.special[decoder, 0 if special == "rec" else 1][None]], dim=0)
                out.append(proj(v))
            return out

    return ARCEncoderModule()


# ---------------------------------------------------------------------------------------- loading
@dataclass
class ARCModel:
    """An encoder ready to compress: module, tokenizer, the reader it serves, identity."""

    encoder: Any
    tokenizer: Any
    reader: str
    model_id: str
    version: str
    meta: dict[str, Any]
    decoder: int = 0

    def encode(self, segments: list[list[int]], pf: int, special: str | None = "cont") -> list:
        return self.encoder(segments, pf, special, self.decoder)


def smollm2_spec(lm_config, n_layers: int, bridge_hidden: int = 1024) -> EncoderSpec:
    c = lm_config
    rope = getattr(c, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
    return EncoderSpec(dim=c.hidden_size, n_layers=n_layers, n_heads=c.num_attention_heads,
                       n_kv_heads=c.num_key_value_heads, head_dim=getattr(c, "head_dim", None)
                       or c.hidden_size // c.num_attention_heads, ffn_dim=c.intermediate_size,
                       vocab=c.vocab_size, rope_theta=theta, rope="half", norm_eps=float(c.rms_norm_eps),
                       bridge_hidden=bridge_hidden, out_dim=c.hidden_size)


def fresh_smollm2_encoder(n_layers: int = 8, lora_rank: int = 16, lora_alpha: float = 32.0,
                          bridge_hidden: int = 1024, seed: int = 0, device: str | None = None):
    """An untrained offline encoder: SmolLM2's first ``n_layers`` blocks (copied), LoRA on,
    fresh special vectors and projector (PyTorch's default Linear init, as the reference)."""
    import torch

    device = device or default_device()
    lm, tok = load_causal_lm(None, device)
    spec = smollm2_spec(lm.config, n_layers, bridge_hidden)
    torch.manual_seed(seed)
    enc = build_encoder(spec, embed=lm.get_input_embeddings())
    for i, blk in enumerate(enc.blocks):
        missing, unexpected = blk.load_state_dict(lm.model.layers[i].state_dict(), strict=False)
        if unexpected or [m for m in missing if "rotary" not in m]:
            raise ModelLoadError(f"SmolLM2 layer {i} does not fit the encoder block: {missing} {unexpected}")
    for p in enc.blocks.parameters():
        p.requires_grad_(False)
    if lora_rank:
        enc.add_lora(lora_rank, lora_alpha)
    enc.to(device)
    _match_embedding_norm(enc, tok)
    return enc, tok


def _match_embedding_norm(enc, tok) -> None:
    """Scale the projector's second layer so that fresh soft tokens have the norm of the
    reader's token embeddings (a calibration passage). A small-scale deviation from the
    reference's plain Kaiming init: its 80 k steps can shrink vectors 10x too large for the
    reader; our few hundred cannot."""
    import torch

    text = ("The river flows through the old town, past the market and the church, before it reaches "
            "the sea. Its water was used by mills for centuries.")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = enc([ids], 4, None)[0]
        target = enc.embed.weight[ids].norm(dim=-1).mean()
        for proj in enc.bridge:
            proj[1].weight.mul_(target / out.norm(dim=-1).mean())


def read_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    if not path.exists():
        raise ModelLoadError(f"ARC weights {path} not found; train them with `ragpress train arc` "
                             "or omit `weights` for the shipped ones")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "arc" not in meta:
        raise ModelLoadError(f"{path} is not an ARC weights file (no 'arc' metadata)")
    return json.loads(meta["arc"])


def file_version(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def save_offline(enc, path: Path, meta: dict[str, Any]) -> None:
    """The trained part only (LoRA, special vectors, projector) in fp16 with its metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in enc.trainable_state().items()}
    meta = {**meta, "spec": asdict(enc.spec)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"arc": json.dumps(meta)})
    tmp.replace(path)


@loads_once(maxsize=4)
def load_offline(weights: str | None = None, device: str | None = None) -> ARCModel:
    """The offline encoder: SmolLM2's lower blocks + the shipped (or given) trained deltas."""
    import torch
    from safetensors.torch import load_file

    path = Path(weights) if weights else DEFAULT_WEIGHTS
    meta = read_meta(path)
    spec = meta["spec"]
    enc, tok = fresh_smollm2_encoder(spec["n_layers"], spec["lora_rank"], spec["lora_alpha"],
                                     spec["bridge_hidden"], device=device)
    state = load_file(str(path))
    params = dict(enc.named_parameters())
    extra = set(state) - set(params)
    absent = set(enc.trainable_state()) - set(state)
    if extra or absent:
        raise ModelLoadError(f"{path}: weights do not fit the encoder (unexpected {sorted(extra)[:3]}, "
                             f"missing {sorted(absent)[:3]})")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].dtype))
    enc.eval().requires_grad_(False)
    return ARCModel(enc, tok, meta.get("reader", resolve_model_id("causal_lm", None)), OFFLINE_ID,
                    file_version(path), meta)


def kyutai_state_to_encoder(state: dict[str, Any], spec: EncoderSpec) -> dict[str, Any]:
    """The reference's (``PyTorchModelHubMixin`` on ``EmbedAugModel``) tensor names -> ours.
    Meta-style blocks (``wq``, ``w1``...) keep their row order: the encoder applies interleaved
    RoPE itself, so no rotate-half permutation is needed."""
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    out: dict[str, Any] = {}
    special: dict[tuple[int, int], Any] = {}
    for key, t in state.items():
        k = key.removeprefix("model.")
        if k == "embedder.tok_embeddings.weight":
            out["embed.weight"] = t
        elif k.startswith("embedder.layers."):
            _, _, i, rest = k.split(".", 3)
            if int(i) >= spec.n_layers:
                continue  # truncated
            for a, b in names.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            out[f"blocks.{i}.{rest}"] = t
        elif k.startswith(("embedder.rec_tok.", "embedder.cont_tok.")):
            which = 0 if ".rec_tok." in k else 1
            dec = int(k.split(".")[2])
            special[(dec, which)] = t.reshape(-1)
        elif k.startswith("bridge_module."):
            rest = k[len("bridge_module."):]
            dec = 0
            if rest[0].isdigit():
                dec_s, rest = rest.split(".", 1)
                dec = int(dec_s)
            layer = {"layer1": 0, "layer2": 1}[rest.split(".")[0]]
            out[f"bridge.{dec}.{layer}.weight"] = t
    if special:
        import torch

        out["special"] = torch.stack([torch.stack([special[(d, 0)], special[(d, 1)]])
                                      for d in range(spec.n_decoders)])
    return out


def encoder_from_kyutai_state(state: dict[str, Any], spec: EncoderSpec, dtype=None, device: str = "cpu"):
    """An :class:`ARCEncoder` module holding a kyutai checkpoint's tensors."""
    import torch

    enc = build_encoder(spec)
    mapped = kyutai_state_to_encoder(state, spec)
    missing, unexpected = enc.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"the ARC checkpoint does not fit its config: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
    enc.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
    return enc


@loads_once(maxsize=2)
def load_kyutai(name: str, reader: str | None = None, tokenizer: str | None = None,
                device: str | None = None) -> ARCModel:
    """A published ARC-Encoder by hub id (local cache only) or local folder, for ``reader``
    (one of the decoders it was trained for; default its first)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    device = device or default_device()
    known = KYUTAI.get(name, {})
    decoders = known.get("decoders", [reader] if reader else [])
    reader = reader or (decoders[0] if decoders else None)
    if reader is None or (decoders and reader not in decoders):
        raise ConfigError(f"ARC encoder {name!r} was trained for {decoders or 'unknown decoders'}; "
                          f"set `reader` to one of them")
    path = cached_hub_file(name, "model.safetensors")
    if path is None:
        raise ModelLoadError(f"ARC encoder {name!r} is not in the local Hugging Face cache (this machine "
                             "downloads nothing): `huggingface-cli download` it where the hub is reachable")
    spec = EncoderSpec(**KYUTAI_SPEC, n_decoders=len(decoders) or 1)
    cfg = cached_hub_file(name, "arc_spec.json")  # a local folder may override the spec
    if cfg:
        spec = EncoderSpec(**{**asdict(spec), **json.loads(Path(cfg).read_text())})
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    enc = encoder_from_kyutai_state(load_file(path), spec, dtype, device)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or KYUTAI_TOKENIZER)
    except Exception as exc:
        raise ModelLoadError(f"the ARC encoder's tokenizer {tokenizer or KYUTAI_TOKENIZER!r} is not in the "
                             f"local cache: {exc}") from exc
    return ARCModel(enc, tok, reader, name, file_version(Path(path)), {"spec": asdict(spec)},
                    decoder=decoders.index(reader) if decoders else 0)


# ---------------------------------------------------------------------------------------- compressor
class ARCConfig(CompressorConfig):
    """``model``: None = the offline SmolLM2 encoder, else a kyutai id or folder; ``weights``:
    other trained offline weights; ``reader``: the decoder a published encoder serves;
    ``factors``: the pooling factors a budget may choose from; ``segment_tokens``: the longest
    piece of a passage compressed at once (longer passages become several segments, each with
    its ``<Cont>``); ``tokenizer``: counts ``tokens_before`` (default: the reader's)."""

    tokenizer: str = "SmolLM2-135M-Instruct"
    model: str | None = None
    weights: str | None = None
    reader: str | None = None
    tokenizer_model: str | None = None
    factors: list[int] = Field(default_factory=lambda: [4, 8])
    segment_tokens: int = Field(default=256, ge=8, le=4096)
    batch_size: int = Field(default=16, ge=1, le=512)
    device: str | None = None


@dataclass
class _Segment:
    passage: int
    ids: list[int]
    offsets: list[tuple[int, int]]  # into the passage's text (header tokens: (0, 0))
    text: str  # the segment's source, its cache content


class ARCCompressor(Compressor):
    """ARC-Encoder soft tokens (see the module docstring)."""

    name = "arc"
    config_cls = ARCConfig
    query_aware = False
    soft_tokens = True
    precomputable = True  # soft tokens are per segment, whatever the query: `ragpress batch` makes them
    budget_modes = frozenset({"ratio", "tokens"})
    default_budget = Budget(ratio=0.25)  # x4 (the base class's 0.5 asks for a pooling factor of 2: a 422)

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        if not self.config.factors or any(f < 1 or f > 64 for f in self.config.factors):
            raise ConfigError("ARC factors must be integers in 1..64")

    def _arc(self) -> ARCModel:
        c = self.config
        if c.model is None or c.model.lower() in {OFFLINE_ID, "default", "smollm2"}:
            return load_offline(c.weights, c.device)
        return load_kyutai(c.model, c.reader, c.tokenizer_model, c.device)

    @property
    def model_id(self) -> str:
        arc = self._arc()
        return f"{arc.model_id}@{arc.version}"

    @property
    def tokenizer(self):
        """The encoder's tokenizer (the offline one needs no trained weights: SmolLM2's)."""
        c = self.config
        if c.model is None or c.model.lower() in {OFFLINE_ID, "default", "smollm2"}:
            return load_causal_lm(None, c.device)[1]
        return self._arc().tokenizer

    @property
    def reader_id(self) -> str:
        """The reader these soft tokens are for (a reader with another model refuses them)."""
        return self._arc().reader

    # ------------------------------------------------------------------ segments
    def segments(self, request: CompressionRequest) -> list[_Segment]:
        """Each passage (``title\\ntext``, as the text context renders it) cut into pieces of at
        most ``segment_tokens`` encoder tokens, with each token's characters in the passage."""
        tok = self.tokenizer
        out = []
        for pi, p in enumerate(request.passages):
            head = f"{p.title}\n" if p.title else ""
            enc = tok(head + p.text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offs = enc["input_ids"], enc["offset_mapping"]
            h = len(head)
            offs = [(max(0, a - h), max(0, b - h)) for a, b in offs]
            step = self.config.segment_tokens
            for s in range(0, len(ids), step):
                piece = ids[s:s + step]
                # the content key: the source characters plus, for the first piece, the header
                a = offs[s][0] if s else 0
                b = offs[min(s + step, len(ids)) - 1][1]
                out.append(_Segment(pi, piece, offs[s:s + step], (head if s == 0 else "") + p.text[a:b]))
        return out

    def pooling_factor(self, request: CompressionRequest, segs: list[_Segment]) -> int:
        budget = request.budget
        factors = sorted(set(self.config.factors))
        if budget.ratio is not None:
            need = 1.0 / budget.ratio
            ok = [f for f in factors if f >= need - 1e-9]
            if not ok:
                raise BudgetError(f"ratio {budget.ratio} needs pooling by {need:.1f}; this encoder pools by at "
                                  f"most {factors[-1]} (ratio >= {1 / factors[-1]:.3f})")
            return ok[0]
        for f in factors:
            if sum(len(split_groups(len(s.ids), f)) + 1 for s in segs) <= budget.tokens:
                return f
        most = sum(len(split_groups(len(s.ids), factors[-1])) + 1 for s in segs)
        raise BudgetError(f"{budget.tokens} tokens is below what pooling by {factors[-1]} reaches here "
                          f"({most} reader positions, one <Cont> per segment): give more tokens")

    # ------------------------------------------------------------------ encoding (query-independent, cached)
    def soft_segments(self, segs: list[_Segment], pf: int) -> list[Any]:
        """fp16 ``[m+1, d]`` reader-space vectors per segment (``<Cont>`` last), through the
        segment cache when one is set (keys: content, pooling factor, encoder id and version)."""
        from ragpress.core.cache import decode_soft, encode_soft
        from ragpress.core.cache_keys import keys_for

        contents = [s.text for s in segs]
        distinct = list(dict.fromkeys(contents))
        first = {c: next(s for s in segs if s.text == c) for c in distinct}

        def compute(which: list[int]) -> list[Any]:
            return self._encode([first[distinct[i]] for i in which], pf)

        if self.segment_cache is None:
            values = compute(list(range(len(distinct))))
        else:
            keys = keys_for(f"soft-x{pf}", self.name, self.config_hash, self.model_id, distinct)
            values, hits = self.segment_cache.memoize_many(keys, compute, encode=encode_soft, decode=decode_soft)
            self.segment_hits += hits
            self.segment_lookups += len(distinct)
        at = dict(zip(distinct, values))
        return [at[c] for c in contents]

    def _encode(self, segs: list[_Segment], pf: int) -> list[Any]:
        import torch

        arc = self._arc()
        order = sorted(range(len(segs)), key=lambda i: len(segs[i].ids))
        out: list[Any] = [None] * len(segs)
        bs = self.config.batch_size
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                vecs = arc.encode([segs[i].ids for i in idx], pf, "cont")
                for i, v in zip(idx, vecs):
                    out[i] = v.to("cpu", torch.float16)
        return out

    def _precompute(self, passages: list[Passage], budget: Budget) -> tuple[list[int], list[int]]:
        """The soft tokens of every segment at the budget's pooling factor (the same
        :meth:`soft_segments` path as compress): per passage, its segments and vectors."""
        request = CompressionRequest(query="", passages=list(passages), budget=budget)
        segs = self.segments(request)
        per, vectors = [0] * len(passages), [0] * len(passages)
        for s, v in zip(segs, self.soft_segments(segs, self.pooling_factor(request, segs))):
            per[s.passage] += 1
            vectors[s.passage] += int(v.shape[0])
        return per, vectors

    def _compress_batch(self, requests: list[CompressionRequest]) -> list[CompressionResult]:
        import torch

        t0 = time.perf_counter()
        arc = self._arc()
        plans = []
        for r in requests:
            segs = self.segments(r)
            plans.append((segs, self.pooling_factor(r, segs)))
        t_seg = time.perf_counter() - t0
        by_pf: dict[int, list[_Segment]] = {}
        for segs, pf in plans:
            by_pf.setdefault(pf, []).extend(segs)
        t1 = time.perf_counter()
        soft: dict[int, dict[int, Any]] = {}
        for pf, segs in by_pf.items():
            vals = self.soft_segments(segs, pf)
            soft[pf] = {id(s): v for s, v in zip(segs, vals)}
        t_enc = time.perf_counter() - t1
        counts = self.counter.count_batch([render_full(r.passages) for r in requests])
        results = []
        for r, (segs, pf), before in zip(requests, plans, counts):
            vecs = [soft[pf][id(s)] for s in segs]
            tensor = torch.cat(vecs, dim=0) if vecs else torch.zeros(0, 0, dtype=torch.float16)
            spans, vector_spans = [], []  # vector_spans[i]: the span row i covers (None: a <Cont>)
            for s in segs:
                p = r.passages[s.passage]
                at = 0
                for size in split_groups(len(s.ids), pf):
                    a = s.offsets[at][0]
                    b = max(e for _, e in s.offsets[at:at + size])
                    vector_spans.append(len(spans))
                    spans.append(Span(passage_id=p.id, start=a, end=b, text=p.text[a:b]))
                    at += size
                vector_spans.append(None)
            results.append(CompressionResult(
                text="", spans=spans, tokens_before=before, tokens_after=int(tensor.shape[0]),
                compressor=self.name, config_hash=self.config_hash, model_id=self.model_id,
                tokenizer=self.counter.name, budget=r.budget,
                timings={"segment": t_seg / len(requests), "encode": t_enc / len(requests)},
                soft_tokens=tensor, soft_token_shape=list(tensor.shape),
                extra={"soft_dtype": "float16", "soft_reader": arc.reader, "pooling_factor": pf,
                       "segments": len(segs), "encoder_version": arc.version,
                       "special_per_segment": 1, "vector_spans": vector_spans}))
        return results

    def _compress(self, request: CompressionRequest) -> CompressionResult:
        return self._compress_batch([request])[0]
