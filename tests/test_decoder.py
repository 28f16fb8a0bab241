"""The decoder's unit layer: rows join and leave mid-batch, cancel, stop at their limits, stream,
and always get the tokens they would get alone (seconds, on the untrained tiny artifact)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faults import Poisoned

from edgeqa.errors import InputError
from edgeqa.runtime import Decoder, FinishReason, GenerationOptions, QAModel, Row

PROMPTS = [[100, 200, 300, 1], [7, 8, 1], [400, 500, 600, 700, 800, 900, 1000, 1], [42, 1]]


@pytest.fixture(scope="module")
def model(artifact_tiny: Path) -> QAModel:
    return QAModel.load(artifact_tiny, threads=1)


def opts(**fields) -> GenerationOptions:
    return GenerationOptions(**({"max_new_tokens": 10} | fields))


def alone(model: QAModel, ids: list[int], options: GenerationOptions) -> Row:
    row = Row(ids, options)
    decoder = model.decoder()
    decoder.join([row])
    decoder.run()
    return row


def test_a_row_that_joins_mid_batch_gets_its_answer_alone(model):
    decoder = model.decoder()
    first = [Row(ids, opts()) for ids in PROMPTS[:2]]
    decoder.join(first)
    for _ in range(3):
        assert decoder.step() == []  # nobody streams, nobody has finished
    late = Row(PROMPTS[2], opts(max_new_tokens=6))
    decoder.join([late])
    assert set(decoder.rows) == {*first, late}
    decoder.run()
    for row in (*first, late):
        assert row.tokens == alone(model, row.ids, row.options).tokens
    assert len(late.tokens) == 6 and late.finish_reason == FinishReason.LENGTH
    assert not decoder.busy and decoder.rows == []


def test_rows_leave_at_their_own_limits_and_the_rest_are_unchanged(model):
    limits = [2, 9, 5, 7]
    rows = [Row(ids, opts(max_new_tokens=n)) for ids, n in zip(PROMPTS, limits, strict=True)]
    decoder = model.decoder()
    decoder.join(rows)
    finished_at = {}
    for step in range(1, 10):
        for update in decoder.step():
            assert update.finished and update.delta == ""
            finished_at[update.row.ids[0]] = step
    assert finished_at == {ids[0]: n for ids, n in zip(PROMPTS, limits, strict=True)}
    for row in rows:
        assert [len(row.tokens), row.finish_reason] == [row.options.max_new_tokens, FinishReason.LENGTH]
        assert row.tokens == alone(model, row.ids, row.options).tokens


def test_min_new_tokens_and_the_end_of_answer(model):
    forced = alone(model, PROMPTS[0], opts(min_new_tokens=10))
    assert len(forced.tokens) == 10 and 1 not in forced.tokens  # end-of-answer forbidden before 10
    ended = Row(PROMPTS[0], opts(max_new_tokens=1))
    decoder = model.decoder()
    decoder.join([ended])
    [update] = decoder.step()
    assert update.finished and len(ended.tokens) == 1
    assert ended.finish_reason == (FinishReason.STOP if ended.tokens == [1] else FinishReason.LENGTH)


def test_a_cancelled_row_leaves_at_the_next_step_and_the_others_finish_as_alone(model):
    rows = [Row(ids, opts()) for ids in PROMPTS[:3]]
    decoder = model.decoder()
    decoder.join(rows)
    decoder.step()
    rows[1].cancel()
    [update] = decoder.step()
    assert update.row is rows[1] and rows[1].finish_reason == FinishReason.CANCELLED
    assert decoder.rows == [rows[0], rows[2]]
    decoder.run()
    for row in (rows[0], rows[2]):
        assert row.tokens == alone(model, row.ids, row.options).tokens


def test_beam_greedy_and_seeded_sampled_rows_together_answer_as_alone(model):
    rows = [
        Row(PROMPTS[0], opts(num_beams=3)),
        Row(PROMPTS[1], opts(do_sample=True, seed=11, temperature=0.7, top_k=20)),
        Row(PROMPTS[2], opts()),
        Row(PROMPTS[3], opts(do_sample=True, seed=12, top_p=0.8)),
        Row(PROMPTS[1], opts(num_beams=2, max_new_tokens=5)),
    ]
    decoder = model.decoder()
    decoder.join(rows)
    decoder.run()
    for row in rows:
        assert row.tokens == alone(model, row.ids, row.options).tokens, row.options


def test_a_cancelled_beam_search_ends(model):
    row = Row(PROMPTS[0], opts(num_beams=3))
    decoder = model.decoder()
    decoder.join([row])
    decoder.step()
    row.cancel()
    [update] = decoder.step()
    assert update.finished and row.finish_reason == FinishReason.CANCELLED and not decoder.busy


def test_streamed_pieces_add_up_to_the_answer(model):
    for options in (opts(max_new_tokens=12), opts(num_beams=2, max_new_tokens=6)):
        row = Row(PROMPTS[2], options, stream=True)
        decoder = model.decoder()
        decoder.join([row])
        pieces = []
        while decoder.busy:
            pieces += [update.delta for update in decoder.step()]
        assert "".join(pieces) == row.text == alone(model, row.ids, options).text
        assert row.text == model.tokenizer.decode(row.tokens)


def test_a_stop_string_ends_the_answer_before_it_and_is_never_streamed(model):
    plain = alone(model, PROMPTS[2], opts(max_new_tokens=16))
    assert len(plain.text) >= 8, "the tiny model's answer must be long enough to cut"
    stop = plain.text[4:7]
    expected = plain.text[: plain.text.find(stop)]
    for stream in (False, True):
        row = Row(PROMPTS[2], opts(max_new_tokens=16), stop=(stop,), stream=stream)
        decoder = model.decoder()
        decoder.join([row])
        pieces = []
        while decoder.busy:
            pieces += [update.delta for update in decoder.step()]
        assert row.text == expected and row.finish_reason == FinishReason.STOP
        assert "".join(pieces) == (expected if stream else "")


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([], "at least one token id"),
        ([5] * 10_000, "more than the artifact's"),
        ([5, 10**9], "token ids must be in"),
        ([-1, 5], "token ids must be in"),
    ],
)
def test_bad_prompts_are_refused_and_nothing_joins(model, ids, message):
    decoder = model.decoder()
    with pytest.raises(InputError, match=message):
        decoder.join([Row([5, 1], opts()), Row(ids, opts())])
    assert not decoder.busy


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([1.9, 2.2], "got float 1.9"),
        ([True, False], "got bool True"),
        (["a"], "got str 'a'"),
        (None, "got NoneType"),
        ("abc", "got str"),
    ],
)
def test_prompt_ids_that_are_not_integers_are_refused_not_cut(model, ids, message):
    with pytest.raises(InputError, match=f"prompt token ids must be lists of integers, {message}"):
        Row(ids, opts())
    with pytest.raises(InputError, match="prompt token ids must be lists of integers"):
        model.generate([ids], max_new_tokens=2)


def test_generate_takes_a_list_of_prompts_of_integers(model):
    import numpy as np

    with pytest.raises(InputError, match="generate takes a list of prompts, got str"):
        model.generate("abc")
    with pytest.raises(InputError, match="prompt token ids must be lists of integers, got int"):
        model.generate([5, 1])  # one flat prompt
    assert model.generate(np.array([[5, 1]]), max_new_tokens=3) == model.generate([[5, 1]], max_new_tokens=3)
    assert Row(np.array([5, 1]), opts()).ids == [5, 1]


def test_stop_strings_come_as_any_list_of_strings_but_not_as_one_string(model):
    plain = alone(model, PROMPTS[2], opts(max_new_tokens=16))
    stop = plain.text[4:7]
    for given in ([stop], (stop,), iter([stop])):
        row = Row(PROMPTS[2], opts(max_new_tokens=16), stop=given)
        assert row.stop == (stop,)
        decoder = model.decoder()
        decoder.join([row])
        decoder.run()
        assert row.text == plain.text[: plain.text.find(stop)] and row.finish_reason == FinishReason.STOP
    with pytest.raises(InputError, match="stop must be a list of strings, got str; give even one as a list"):
        Row(PROMPTS[2], opts(), stop="\n")
    with pytest.raises(InputError, match="stop must be a list of strings, got int 5 in it"):
        Row(PROMPTS[2], opts(), stop=["\n", 5])


def test_prompts_are_cut_to_the_input_limit(model):
    decoder: Decoder = model.decoder()
    [(short, cut_short), (long, cut_long)] = decoder.prompts(["What is AI?", "why " * 5000])
    assert not cut_short and cut_long and len(long) == model.manifest.max_input_tokens
    row = Row(long, opts(max_new_tokens=2))
    decoder.join([row])
    decoder.run()
    assert len(row.tokens) == 2 and row.encoder_ms > 0 and row.decode_ms > 0


# ------------------------------------------------------------------ one row's failure is that row's


@pytest.mark.parametrize("where", ["encode", "step"])
@pytest.mark.parametrize("beams", [1, 2])
def test_a_failing_row_fails_alone_and_its_batch_mates_answer_as_alone(model, where, beams):
    poison = [9] * 13  # the only prompt of 13 tokens
    rows = [Row(ids, opts(num_beams=beams)) for ids in PROMPTS] + [Row(poison, opts(num_beams=beams))]
    rows.insert(2, rows.pop())  # in the middle of the batch
    decoder = Decoder(Poisoned(model.graphs, 13, where), model.tokenizer, model.manifest.special_tokens)
    decoder.join(rows)
    failed = []
    while decoder.busy:
        failed += [u.row for u in decoder.step() if u.finished and u.row.finish_reason == FinishReason.FAILED]
    assert failed == [rows[2]] and str(rows[2].error) == f"injected {where.replace('encode', 'encoder')} failure"
    for row in rows[:2] + rows[3:]:
        assert row.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        assert row.tokens == alone(model, row.ids, row.options).tokens


def test_a_failure_in_the_model_is_raised_to_its_caller(model, monkeypatch):
    monkeypatch.setattr(model, "graphs", Poisoned(model.graphs, 13, "step"))
    with pytest.raises(RuntimeError, match="injected step failure"):
        model.generate([[9] * 13], max_new_tokens=3)
    assert model.generate([PROMPTS[0]], max_new_tokens=3)  # the others are answered


def test_any_accepted_temperature_samples_finite_tokens(model):
    greedy = alone(model, PROMPTS[2], opts()).tokens
    for seed in range(3):  # tiny temperatures choose as greedy search does
        assert alone(model, PROMPTS[2], opts(do_sample=True, temperature=1e-30, seed=seed)).tokens == greedy
    hot = [alone(model, PROMPTS[2], opts(do_sample=True, temperature=1e30, seed=seed)).tokens for seed in range(3)]
    vocab = model.manifest.dims.vocab_size
    assert all(len(tokens) == 10 and all(0 <= t < vocab for t in tokens) for tokens in hot)
    assert len({tuple(tokens) for tokens in hot}) == 3, "a huge temperature samples (almost) uniformly"


def test_streamed_text_never_sends_what_the_clean_up_may_rewrite():
    """transformers' clean-up turns " '" + "s" into "'s": " '" must wait for the token after it."""
    from edgeqa.runtime.text import AnswerText
    from edgeqa.runtime.tokenizer import _CLEANUPS

    pieces = {1: "John", 2: " '", 3: "s", 4: " dog ."}

    class CleaningTokenizer:
        rewritten = tuple(before for before, _ in _CLEANUPS)

        def decode(self, ids: list[int]) -> str:
            text = "".join(pieces[i] for i in ids)
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
            return text.strip()

    text = AnswerText(CleaningTokenizer(), (), stream=True)  # type: ignore[arg-type]
    deltas = [text.advance([1, 2, 3, 4][:n])[0] for n in range(1, 5)]
    last, answer, stopped = text.finish([1, 2, 3, 4])
    assert deltas[:2] == ["John", ""] and "".join([*deltas, last]) == answer == "John's dog." and not stopped


def _torch_log_prob(checkpoint: Path, ids: list[int], tokens: list[int]) -> float:
    """The sum of the PyTorch model's log-probabilities of `tokens` as the answer to prompt `ids`."""
    import torch
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), labels=torch.tensor([tokens])).logits[0].double()
    return float(torch.log_softmax(logits, -1)[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


def test_a_scored_row_carries_the_log_probability_of_its_answer(model, tiny_model):
    sampled = opts(do_sample=True, temperature=1.7, seed=3)
    rows = [Row(ids, opts(), scored=True) for ids in PROMPTS[:3]] + [Row(PROMPTS[3], sampled, scored=True)]
    plain = Row(PROMPTS[0], opts())
    decoder = model.decoder()
    decoder.join([*rows, plain])
    decoder.run()
    assert plain.log_prob is None and plain.score is None  # scores only where asked for
    for row in rows:
        # the plain model's probability, whatever the sampling options (temperature 1.7 for the last row)
        assert row.log_prob == pytest.approx(_torch_log_prob(tiny_model, row.ids, row.tokens), abs=1e-3)
        assert row.score == pytest.approx(row.log_prob / len(row.tokens))
        assert row.log_prob < 0
        lone = Row(row.ids, row.options, scored=True)
        decoder.join([lone])
        decoder.run()
        assert lone.tokens == row.tokens and lone.log_prob == pytest.approx(row.log_prob, abs=1e-9)


def test_a_scored_rows_log_probability_ignores_its_penalties_alone_or_batched(model, tiny_model):
    """Penalties and bans change which token is chosen, never the plain model's score of it: a row alone
    (its logits edited in place by choosing) scores as it does beside a batch-mate (which copies them)."""
    penalised = opts(min_new_tokens=4, repetition_penalty=1.5, no_repeat_ngram_size=1)
    alone, batched = Row(PROMPTS[2], penalised, scored=True), Row(PROMPTS[2], penalised, scored=True)
    mate = Row(PROMPTS[0], opts(), scored=True)
    decoder = model.decoder()
    decoder.join([alone])
    decoder.run()
    decoder.join([batched, mate])
    decoder.run()
    assert alone.tokens == batched.tokens and len(alone.tokens) >= 4
    assert alone.log_prob == pytest.approx(batched.log_prob, abs=1e-9)
    assert alone.log_prob == pytest.approx(_torch_log_prob(tiny_model, alone.ids, alone.tokens), abs=1e-3)


def test_a_scored_beam_row_carries_its_searchs_score(model, tiny_model):
    beams = opts(num_beams=3, max_new_tokens=6)
    row = Row(PROMPTS[2], beams, scored=True)
    decoder = model.decoder()
    decoder.join([row])
    decoder.run()
    # length penalty 1: the search's normalised score is the mean log-probability of its tokens
    assert row.log_prob == pytest.approx(_torch_log_prob(tiny_model, row.ids, row.tokens), abs=1e-3)


def test_a_question_with_a_passage_is_never_cut(model):
    decoder = model.decoder()
    [(ids, cut)] = decoder.prompts(["Who?"], ["Ann wrote it."])
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(model.folder / "tokenizer.json"))
    assert not cut and ids == raw.encode("Read this and answer the question\n\nAnn wrote it.\n\nWho?").ids
    long_passage = "word " * (model.manifest.max_input_tokens + 10)
    with pytest.raises(InputError, match=rf"tokens, over the model's limit of {model.manifest.max_input_tokens}"):
        decoder.prompts(["Who?"], [long_passage])
    with pytest.raises(InputError, match=r"\(the question alone is 1\d\d\); shorten the question or the passage"):
        decoder.prompts(["Who wrote it? " * 30], ["Ann wrote it."])  # the question is what overflows
    with pytest.raises(InputError, match="the context is empty"):
        decoder.prompts(["Who?"], ["  "])
    [(_, cut)] = decoder.prompts([long_passage])  # a question alone is cut, with a warning
    assert cut
