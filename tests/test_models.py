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
