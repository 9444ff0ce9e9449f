"""Offline model resolution: the SmolLM2 GGUF -> safetensors conversion is cached and faithful."""

from __future__ import annotations

import pytest

from ragpress.core.errors import ModelLoadError
from ragpress.core.models import load_embedder, load_tokenizer, resolve_model_id, smollm2_path


def test_smollm2_converted_once_and_generates(causal_lm):
    import torch

    model, tok = causal_lm
    path = smollm2_path()
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    assert smollm2_path() == path  # cached: no second conversion
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids.to(model.device), max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_resolution_names():
    assert resolve_model_id("embedder", None) == "all-MiniLM-L6-v2"
    assert resolve_model_id("causal_lm", "HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert resolve_model_id("embedder", "/my/model") == "/my/model"


def test_unavailable_hub_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load"):
        load_tokenizer(str(tmp_path / "not-a-model"))
    with pytest.raises(ModelLoadError, match="embedder"):
        load_embedder(str(tmp_path / "not-a-model"))


def test_embedder_is_loaded_once(embedder):
    assert load_embedder() is embedder
    assert embedder.get_sentence_embedding_dimension() == 384


def test_first_loads_from_many_threads_at_once_succeed_and_share_one_object():
    """A fresh process whose first tokenizer load comes from several threads at once (the ingress
    under a burst of requests) loads it once; transformers' lazy imports do not race."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from ragpress.core.tokens import get_token_counter\n"
        "out, errors = [], []\n"
        "def work():\n"
        "    try:\n"
        "        out.append(get_token_counter(None))\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=work) for _ in range(6)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert not errors, errors\n"
        "assert len(out) == 6 and len({id(c) for c in out}) == 1\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ------------------------------------------------------------------------------ the embedding path
_MIXED = [
    "Paris is the capital of France.",
    "The Eiffel Tower, built for the 1889 World's Fair, stands on the Champ de Mars in Paris and was "
    "for forty years the tallest man-made structure in the world; it is now the most visited paid "
    "monument anywhere. " * 3,
    "Yes.",
    "Paris is the capital of France.",  # a duplicate: embedded once, returned twice
    "Marie Curie was born in Warsaw in 1867 and won two Nobel prizes.",
]


def test_length_buckets_cover_every_text_once_within_limits():
    from ragpress.core.models import length_buckets

    lengths = [256, 12, 240, 9, 30, 31, 200, 11, 256, 5] * 7
    buckets = length_buckets(lengths, batch_size=16, max_tokens=2048)
    flat = sorted(i for b in buckets for i in b)
    assert flat == list(range(len(lengths)))
    for b in buckets:
        top = max(lengths[i] for i in b)
        assert len(b) <= 16 and len(b) * top <= 2048
        assert all(top - lengths[i] <= max(8, top // 4) for i in b)  # short texts never pad to a long one
    padded = sum(len(b) * max(lengths[i] for i in b) for b in buckets)
    assert padded < 1.15 * sum(lengths)


def test_encode_texts_matches_sentence_transformers_encode_and_dedupes(embedder):
    import numpy as np

    from ragpress.core.models import embed_texts, encode_texts

    ref = embedder.encode(_MIXED, normalize_embeddings=True, convert_to_numpy=True)
    got = encode_texts(embedder, _MIXED, batch_size=2)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.allclose(got, ref, atol=1e-5)
    assert np.allclose(encode_texts(embedder, _MIXED, batch_size=2, chunk=2), ref, atol=1e-5)  # tokenized 2 at a time
    assert np.array_equal(got[0], got[3])  # the same text, the same row
    calls = []

    def memo(kind, texts, compute, model_id=None, shared=False):
        calls.append(len(texts))
        return compute(texts)

    assert np.allclose(embed_texts(_MIXED, memo=memo), ref, atol=1e-5)
    assert embed_texts([]).shape == (0, 384)


def test_embedder_backend_option(embedder, monkeypatch):
    import numpy as np

    from ragpress.core.errors import ConfigError
    from ragpress.core.models import DEFAULT_EMBEDDER_BACKEND, embed_texts, embedder_backend, embedder_cache_id

    with pytest.raises(ConfigError, match="unknown embedder backend"):
        embedder_backend("tensorrt")
    assert embedder_backend("int8", device="cuda") == "torch"  # the quantised kernels are CPU-only
    monkeypatch.delenv("RAGPRESS_EMBEDDER_BACKEND", raising=False)
    assert embedder_backend(device="cpu") == DEFAULT_EMBEDDER_BACKEND and embedder_backend(device="cuda") == "torch"
    assert embedder_backend(device="cpu", name="/some/hub/model") == "torch"  # not exported unasked
    assert embedder_cache_id(backend="onnx") == embedder_cache_id(backend="torch")  # the same vectors
    monkeypatch.setenv("RAGPRESS_EMBEDDER_BACKEND", "int8")
    assert embedder_backend(device="cpu") == "int8"
    assert embedder_cache_id() == "all-MiniLM-L6-v2@int8"  # a segment cache never mixes the two
    assert resolve_model_id("embedder", None) == "all-MiniLM-L6-v2"  # what heads are trained on
    q = load_embedder(device="cpu")
    assert q is not embedder and load_embedder(device="cpu") is q
    monkeypatch.delenv("RAGPRESS_EMBEDDER_BACKEND")
    a = embed_texts(_MIXED, backend="torch")
    b = embed_texts(_MIXED, backend="int8")
    cos = (a * b).sum(-1)
    assert not np.array_equal(a, b) and cos.mean() > 0.95 and cos.min() > 0.9  # an approximation (README)


def test_onnx_backends_export_once_offline_and_agree_with_torch(embedder):
    """The ONNX export runs offline from the packaged weights into the cache dir, once; float32
    ONNX Runtime gives torch's vectors, int8 an approximation; the model keeps its encode API."""
    from ragpress.core.models import cache_dir, embed_texts, load_embedder

    ref = embed_texts(_MIXED, backend="torch")
    onnx = embed_texts(_MIXED, backend="onnx")
    assert (onnx * ref).sum(-1).min() > 0.9999
    # float32 (the default) is batch-independent: a text alone gets the vector it gets in a batch
    assert (embed_texts(_MIXED[:1], backend="onnx")[0] @ onnx[0]) > 0.99999
    q8 = embed_texts(_MIXED, backend="onnx-int8")
    cos = (q8 * ref).sum(-1)
    assert cos.mean() > 0.97 and cos.min() > 0.95
    files = sorted(p.name for p in cache_dir().glob("models/embedder-onnx-*/*.onnx"))
    assert "model.onnx" in files and "model.int8.onnx" in files
    m = load_embedder(device="cpu", backend="onnx-int8")
    assert m is not embedder and m.encode(["Paris"], normalize_embeddings=True).shape == (1, 384)
