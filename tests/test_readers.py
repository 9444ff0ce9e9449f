"""The reader contract with the real offline reader (SmolLM2-135M-Instruct, loaded once)."""

from __future__ import annotations

import pytest

from ragpress.core.errors import (
    ConfigError,
    ContextTooLongError,
    EmptyQueryError,
    ReaderMismatchError,
    SoftTokensUnsupportedError,
    UnknownReaderError,
)
from ragpress.readers import Prompt, SoftContext, create_reader, get_template, render_messages
from ragpress.readers.base import apply_stop

ACME = "Acme was founded by Jane Roe in 1990. It sells anvils to coyotes."
ACME_Q = "Who founded Acme?"


@pytest.fixture(scope="session")
def reader(causal_lm):
    return create_reader("local", max_new_tokens=12)


def test_registry_and_config_errors():
    with pytest.raises(UnknownReaderError, match="available readers: local, openai"):
        create_reader("nope")
    with pytest.raises(ConfigError):
        create_reader("local", batch_size=0)
    with pytest.raises(ConfigError, match="unknown prompt task"):
        create_reader("local", templates={"poetry": {"system": "x"}})
    with pytest.raises(ConfigError):  # base_url and model are required
        create_reader("openai")


def test_templates_render_and_override():
    qa = get_template("qa")
    msgs = render_messages(qa, "Q?", "CTX")
    assert msgs[0]["role"] == "system" and "CTX" in msgs[-1]["content"] and "Q?" in msgs[-1]["content"]
    closed = render_messages(qa, "Q?", None)
    assert "passages" not in closed[-1]["content"] and "Q?" in closed[-1]["content"]
    assert get_template("qa", {"qa": {"system": "Be brief."}}).system == "Be brief."
    assert get_template("code").chat is False


def test_apply_stop_skips_leading_whitespace():
    assert apply_stop("\nJane Roe\nmore", ("\n",)) == ("\nJane Roe", True)
    assert apply_stop("Jane Roe", ("\n",)) == ("Jane Roe", False)


def test_answers_from_context_with_costs(reader):
    a = reader.read(ACME_Q, ACME)
    assert "jane roe" in a.text.lower()
    assert a.model_id == "SmolLM2-135M-Instruct" and a.reader == "local"
    assert a.tokens_in > 20 and 0 < a.tokens_out <= 12
    assert a.prefill_ms > 0 and a.decode_ms > 0 and a.context_tokens_cut == 0


def test_batch_with_left_padding_matches_single(reader):
    """Left padding must not change a greedy answer: batched == one at a time."""
    queries = [ACME_Q, "What does Acme sell?", "What is the capital of France?"]
    contexts = [ACME, ACME + " " + "Anvils are heavy. " * 20, None]
    batched = reader.read_batch(queries, contexts)
    single = [reader.read(q, c) for q, c in zip(queries, contexts)]
    assert [a.text for a in batched] == [a.text for a in single]
    assert batched[0].batch_size == 3 and batched[2].tokens_in < batched[0].tokens_in  # no-context prompt


def test_soft_context_spliced_like_text(reader):
    """Context given as its own token embeddings through inputs_embeds reads like the text."""
    model, tok = reader._lm()
    ids = tok(ACME, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    soft = SoftContext(embeds=model.get_input_embeddings()(ids).detach(), reader=reader.model_id)
    mixed = reader.read_batch([ACME_Q, ACME_Q], [soft, ACME])  # soft and text in one batch
    assert mixed[0].text == mixed[1].text
    assert mixed[0].tokens_in == mixed[1].tokens_in
    with pytest.raises(ReaderMismatchError, match="made for reader 'other-model'"):
        reader.read(ACME_Q, SoftContext(embeds=soft.embeds, reader="other-model"))
    upstream = create_reader("openai", base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(SoftTokensUnsupportedError):
        upstream.read(ACME_Q, soft)


def test_context_over_window_is_cut_and_reported_or_refused(reader):
    small = create_reader("local", max_new_tokens=4, context_window=160)
    long_ctx = ACME + " " + " ".join(f"Filler sentence number {i} says nothing." for i in range(60))
    a = small.read(ACME_Q, long_ctx)
    assert a.context_tokens_cut > 0
    assert a.tokens_in + 4 <= 160
    with pytest.raises(ContextTooLongError, match="holds 160"):
        small.read(ACME_Q, long_ctx, truncate=False)
    assert small.read(ACME_Q, ACME, truncate=False).context_tokens_cut == 0


def test_bad_input(reader):
    with pytest.raises(EmptyQueryError):
        reader.read("  ", ACME)
    with pytest.raises(Exception, match="2 queries but 1 contexts"):
        reader.read_batch(["a", "b"], [ACME])


def test_empty_answer_is_returned_empty(reader):
    """A bound of one token that is cut by a stop string gives an empty answer, not an error."""
    p = Prompt(messages=[{"role": "user", "content": "Say nothing."}], max_new_tokens=1,
               stop=tuple("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!'\""))
    a = reader.generate_batch([p])[0]
    assert a.text == "" and a.empty and a.tokens_out == 1


def test_stream_pieces_join_to_the_answer(reader):
    prompt = reader.prepare([ACME_Q], [ACME])[0]
    items = list(reader.stream(prompt))
    answer = items[-1]
    pieces = items[:-1]
    assert pieces and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces).strip() == answer.text
    assert answer.text == reader.generate_batch([prompt])[0].text


def test_answer_bits_rank_contexts(reader):
    """The gold answer is likelier after the evidence than after nothing or a distractor."""
    qs = [ACME_Q] * 3
    ctxs = [ACME, None, "It rained all week in Paris. The river rose."]
    bits = reader.answer_bits(qs, ctxs, [["Jane Roe", "Roe"]] * 3)
    assert bits[0] < bits[1] and bits[0] < bits[2]
    alone = reader.answer_bits([ACME_Q], [ACME], [["Jane Roe"]])[0]
    assert bits[0] <= alone + 1e-4  # best over aliases
    assert reader.answer_bits([ACME_Q], [ACME], [[]]) == [None]
