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
from ragpress.readers.answers import find_answer, is_lead_in, strip_lead_in
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


# ---------------------------------------------------------------------------- the answer, not a lead-in
LEAD_INS = ["The answer is:", "The answer to the question is:", "The answer to this question is:", "Answer:",
            "Based on the given passages, the answer is:", "So, the final answer is:"]


@pytest.mark.parametrize("lead", LEAD_INS)
def test_a_lead_in_is_never_the_answer(lead):
    assert is_lead_in(lead) and strip_lead_in(lead) == ""
    # a lead-in on a line of its own is passed over; the answer is the next line
    assert find_answer(f"{lead}\n\nJane Roe\nShe founded it in 1990.", ("\n",)) == ("Jane Roe", True)
    # in front of the answer it is dropped (repeated, and with quotes around the answer)
    assert find_answer(f'{lead} "{lead} Jane Roe"\nmore', ("\n",)) == ("Jane Roe", True)
    # a generation that is only lead-ins has no answer yet: empty, never the lead-in
    assert find_answer(f"{lead}\n\n{lead}\n", ("\n",)) == ("", False)


def test_answers_that_only_look_like_lead_ins_stay():
    for text in ["Answer the phone", "So Free Am I", "The answer", "In the passage of time", "D. Ross Lederman",
                 "The answer is not in the passages."]:
        assert find_answer(text, ("\n",)) == (text, False) and not is_lead_in(text)
    assert find_answer("D. Ross Lederman. He directed it.", ("\n",), sentence=True) == ("D. Ross Lederman.", True)
    assert find_answer("Paris\nLondon", ("\n",), sentence=True) == ("Paris", True)


def test_streamed_pieces_are_prefixes_of_the_final_answer():
    """What a stream sends can never be taken back: every settled text extends the last one and
    begins the final answer, whatever the generation turns out to be, character by character."""
    texts = ["The answer to the question is:\n\nThe answer to the question is: The tempfile module creates "
             "temporary files. It also makes directories.", 'The answer is: "Jane Roe" and others\n',
             "Answer: Jane Roe\n", "D. Ross Lederman", "Answer the phone.\nx", "The answer is:\n\n\"Roe\"\n"]
    for text in texts:
        for sentence in (False, True):
            prompt = Prompt(messages=[], stop=("\n",), extract="sentence" if sentence else "answer")
            sent = ""
            for k in range(len(text) + 1):
                now = prompt.settled(text[:k])
                assert now.startswith(sent), (text[:k], sent, now)
                sent = now
            final, _, _ = prompt.answer_in(text)
            assert final.startswith(sent) and not is_lead_in(final)


def test_templates_take_the_answer_and_show_examples():
    assert get_template("qa").extract != "stop" and get_template("code").extract == "stop"
    code = Prompt(messages=[], stop=("\n",), extract="stop")
    assert code.answer_in("Answer: x = 1\ny") == ("Answer: x = 1", True, True)  # code is taken as written
    shot = get_template("qa", {"qa": {"examples": [["Kilimanjaro is in Tanzania.", "Where is it?", "Tanzania"]]}})
    msgs = render_messages(shot, "Q?", "CTX")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "Kilimanjaro" in msgs[1]["content"] and msgs[2]["content"] == "Tanzania" and "CTX" in msgs[3]["content"]
    assert "Kilimanjaro" not in render_messages(shot, "Q?", None)[1]["content"]  # closed book: no context


def test_first_answer_of_the_smoke_request_answers():
    """`make run`'s question over its passages. The model's reply opens with "The answer to the
    question is:" and a line break; cut there, as before, that lead-in was the whole answer. Now
    the line break waits until an answer has begun and the lead-in is dropped: the answer is
    what follows, streamed in pieces that spell it, within the bound on new tokens."""
    from ragpress.services.serve_cli import SMOKE_PASSAGES, SMOKE_QUERY

    smoke = create_reader("local", max_new_tokens=16)
    context = "\n\n".join(p["text"] for p in SMOKE_PASSAGES)
    prompt = smoke.prepare([SMOKE_QUERY], [context])[0]
    assert prompt.extract == "answer" and prompt.stop == ("\n",)
    items = list(smoke.stream(prompt))
    answer = items[-1]
    assert answer.text and not is_lead_in(answer.text) and strip_lead_in(answer.text) == answer.text
    assert "tempfile" in answer.text.lower() and "answer" not in answer.text.lower()
    assert "".join(items[:-1]) == answer.text and 0 < answer.tokens_out <= 16
    assert smoke.read(SMOKE_QUERY, context).text == answer.text
    # the same reply cut at its first line break, as before: the bare lead-in
    before = create_reader("local", max_new_tokens=16, templates={"qa": {"extract": "stop"}})
    assert is_lead_in(before.read(SMOKE_QUERY, context).text)


def test_a_lead_in_written_again_and_again_is_cut_short():
    """`make run`'s question over its passages as EXIT keeps them at ratio 0.5: kept from its line
    break, the model writes "The answer to the question is:" again and again, and at a bound of 16
    tokens the answer was a fragment ("The"). With no 4-gram repeated before the answer it answers."""
    from ragpress.services.serve_cli import SMOKE_QUERY

    context = ("tempfile\nThe tempfile module creates temporary files and directories.\n\nmkstemp returns a "
               "low-level OS handle and the absolute path of the new file.")
    looping = create_reader("local", max_new_tokens=16, templates={"qa": {"no_repeat_before_answer": 0}})
    assert len(looping.read(SMOKE_QUERY, context).text.split()) <= 1  # the loop: a fragment at the bound
    answer = create_reader("local", max_new_tokens=32).read(SMOKE_QUERY, context)
    assert "tempfile" in answer.text and answer.finish_reason == "stop" and not is_lead_in(answer.text)


def test_line_breaks_wait_for_the_answer(reader):
    """Left alone, the model breaks the line right after its lead-in; held back until an answer
    has begun, the line break (or the end of the text) comes after the answer instead."""
    from ragpress.services.serve_cli import SMOKE_PASSAGES, SMOKE_QUERY

    p = reader.prepare([SMOKE_QUERY], ["\n\n".join(x["text"] for x in SMOKE_PASSAGES)])[0]

    def raw(extract: str) -> str:  # the generated text, nothing taken from it
        *_, texts = reader._generate([p.model_copy(update={"extract": extract, "stop": (), "max_new_tokens": 12})])
        return texts[0]

    free, held = raw("stop"), raw("answer")
    assert is_lead_in(free.split("\n")[0]) and "\n" in free.strip()
    first = held.split("\n")[0]
    assert not is_lead_in(first) and "tempfile" in strip_lead_in(first).lower()


def test_no_repeat_before_answer_bans_only_repeated_runs():
    from ragpress.readers.local import _repeats

    p2 = Prompt(messages=[], extract="answer", no_repeat_before_answer=2)
    p3 = Prompt(messages=[], extract="answer", no_repeat_before_answer=3)
    off = Prompt(messages=[], extract="answer")
    seq = [5, 6, 7, 5, 6]  # "The answer is: The answer"
    # 2-grams: after 6, 7 followed 6 once; 3-grams: after (5, 6), 7 followed once
    assert _repeats([p2, p3, off], [True, True, True], [seq, seq, seq]) == {0: {7}, 1: {7}}
    assert _repeats([p2], [False], [seq]) == {}  # the answer has begun: no ban
    assert _repeats([p3], [True], [[5, 6, 7, 8, 6]]) == {}  # (8, 6) never came before
    assert _repeats([p2], [True], [[5]]) == {}
