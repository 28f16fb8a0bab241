"""The numpy runtime: token-exact with transformers, robust to bad input, light to import."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SMALL, _export, build_t5, hf_generate
from edgeqa.errors import ArtifactError, ConfigError, InputError
from edgeqa.manifest import Manifest, file_entry
from edgeqa.runtime import GenerationOptions, QAModel

SEARCHES = [
    pytest.param(dict(num_beams=1), id="greedy"),
    pytest.param(dict(num_beams=4), id="beam4"),
    pytest.param(dict(num_beams=3, length_penalty=0.6, early_stopping=True), id="beam3-lp-early"),
    pytest.param(
        dict(num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3), id="greedy-penalties"
    ),
]


@pytest.fixture(scope="module")
def model(artifact_fp32: Path) -> QAModel:
    return QAModel.load(artifact_fp32, threads=2)


@pytest.mark.parametrize("options", SEARCHES)
@pytest.mark.parametrize("batch_size", [1, 7])
def test_tokens_equal_transformers_generate(model, trained_model, questions, options, batch_size):
    expected = hf_generate(trained_model, questions, batch_size, max_new_tokens=16, **options)
    answers = model.answer_batch(questions, batch_size=batch_size, max_new_tokens=16, **options)
    assert [a.tokens for a in answers] == expected
    assert len(questions) >= 100


def test_trained_model_stops_at_its_own_eos(model, trained_model, questions):
    answers = model.answer_batch(questions[:32], batch_size=8, max_new_tokens=16)
    ended = [a for a in answers if a.tokens and a.tokens[-1] == 1]
    assert ended, "the trained test model should end some answers before the limit"
    assert any(len(a.tokens) < 16 for a in ended)
    assert all("<pad>" not in a.text and "</s>" not in a.text for a in answers)


@pytest.mark.slow
def test_small_shaped_model_is_token_exact(tmp_path, questions):
    """flan-t5-small's shapes (d_kv 64 while d_model / heads is 85), random weights."""
    checkpoint = build_t5(tmp_path / "small", seed=1, **SMALL)
    artifact = _export(checkpoint, tmp_path / "small-fp32", parity=False)
    model = QAModel.load(artifact, threads=2)
    for options in (dict(num_beams=1), dict(num_beams=4)):
        expected = hf_generate(checkpoint, questions, 10, max_new_tokens=6, **options)
        answers = model.answer_batch(questions, batch_size=10, max_new_tokens=6, **options)
        assert [a.tokens for a in answers] == expected, options


def test_softmax_terms_skip_denormals_without_changing_results():
    import numpy as np

    from edgeqa.runtime.generate import log_softmax, softmax_terms

    logits = (np.random.default_rng(0).standard_normal((4, 32128)) * 60).astype(np.float32)  # spans -250..250
    shifted = logits - logits.max(axis=-1, keepdims=True)
    plain = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    np.testing.assert_array_equal(log_softmax(logits), plain)
    shifted[:, :10] = -np.inf  # masked tokens (top-k, banned n-grams) must get no probability
    terms = softmax_terms(shifted)
    assert (terms[:, :10] == 0).all() and (terms[shifted < -80] == 0).all()
    kept = shifted > -80
    np.testing.assert_array_equal(terms[kept], np.exp(shifted[kept]))


@pytest.mark.parametrize("min_new_tokens", [0, 5])
def test_grouped_beam_candidates_equal_the_full_ranking(min_new_tokens):
    """The grouped search gives the full ranking's scores, beams and tokens, ties and rounding included."""
    import numpy as np

    from edgeqa.runtime.generate import _NEG, grouped_candidates, log_softmax, process_scores, top_k_indices

    rng = np.random.default_rng(0)
    opts = GenerationOptions(num_beams=4, min_new_tokens=min_new_tokens, max_new_tokens=8)
    decided = 0
    for trial in range(300):
        batch, beams, vocab = int(rng.integers(1, 4)), int(rng.integers(2, 6)), int(rng.choice([32128, 1000, 333]))
        logits = (rng.standard_normal((batch * beams, vocab)) * rng.choice([0.01, 1.0, 40.0])).astype(np.float32)
        if trial % 3 == 0:
            logits = np.round(logits, 1)  # many exact ties
        if trial % 5 == 1:
            logits[:, 1] += 20.0  # the end-of-answer token on top: the minimum length bans it
        if trial % 7 == 2:
            logits[:, ::3] = -np.inf
        running = rng.standard_normal((batch, beams)).astype(np.float32)
        if trial % 4 == 0:
            running[:, 1:] = _NEG  # the first step: one live beam
        sequences = np.zeros((batch * beams, 3), dtype=np.int64)
        log_probs = process_scores(sequences, log_softmax(logits), opts, eos=1)
        log_probs = (log_probs.reshape(batch, beams, vocab) + running[:, :, None]).reshape(batch, -1)
        top = top_k_indices(log_probs, 2 * beams)
        expected = (np.take_along_axis(log_probs, top, axis=1), top // vocab, top % vocab)
        found = grouped_candidates(logits, running, 2 * beams, banned=1 if min_new_tokens else None)
        if found is not None:
            decided += 1
            for got, want in zip(found, expected, strict=True):
                np.testing.assert_array_equal(got, want)
    assert decided > 150


def test_reorder_copies_the_surviving_beams_rows():
    import numpy as np

    from edgeqa.runtime.graphs import DecoderState

    rng = np.random.default_rng(0)
    for rows in ([0, 1, 2, 3], [0, 0, 1, 2], [3, 3, 3, 0], [1, 0, 3, 2]):
        caches = [rng.standard_normal((4, 2, 3, 5)).astype(np.float32) for _ in range(3)]
        expected = [cache[rows] for cache in caches]
        state = DecoderState(encoder_mask=np.ones((4, 3)), cross_cache=[], self_cache=caches)
        state.reorder(np.array(rows))
        for got, want in zip(state.self_cache, expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_beams_of_a_question_share_its_cross_cache():
    import numpy as np

    from edgeqa.runtime.graphs import DecoderState

    mask = np.array([[1, 1, 0], [1, 1, 1]])
    cross = [np.arange(2 * 5, dtype=np.float32).reshape(2, 5)]
    state = DecoderState(mask, cross, [np.zeros((2, 4, 0, 8), np.float32)], shared_cross=True)
    state.repeat(3)
    assert (state.rows, state.beams, state.cross_cache[0].shape[0], state.self_cache[0].shape[0]) == (6, 3, 2, 6)
    state.select([3, 4, 5])  # the second question's beams
    np.testing.assert_array_equal(state.encoder_mask, mask[1:])
    np.testing.assert_array_equal(state.cross_cache[0], cross[0][1:])
    assert state.rows == 3
    with pytest.raises(ValueError, match="not whole questions of 3 beams"):
        state.select([0, 1])

    per_row = DecoderState(mask, cross, [np.zeros((2, 4, 0, 8), np.float32)])
    per_row.repeat(3)  # a graph that wants a cache per row: each question's cache repeated
    assert (per_row.rows, per_row.cross_cache[0].shape[0], per_row.encoder_mask.shape[0]) == (6, 6, 6)


def test_exported_decoder_reads_one_cross_cache_per_question(model):
    import numpy as np

    from edgeqa.runtime.decoder import pad_prompts

    assert model.graphs.shared_cross
    state = model.graphs.encode(*pad_prompts([[100, 200, 1], [300, 1]], pad=0))
    state.repeat(4)
    logits = model.graphs.step(state, np.zeros(8, dtype=np.int64))
    assert logits.shape[0] == 8 and state.cross_cache[0].shape[0] == 2


def test_stream_yields_the_greedy_answer(model):
    pieces = list(model.stream("Who wrote Hamlet?", max_new_tokens=12))
    assert "".join(pieces) == model.answer("Who wrote Hamlet?", max_new_tokens=12).text


def test_sampling_is_seeded(model):
    first = model.answer("Name a planet.", do_sample=True, seed=3, top_k=20, top_p=0.9, temperature=1.5)
    again = model.answer("Name a planet.", do_sample=True, seed=3, top_k=20, top_p=0.9, temperature=1.5)
    assert first.tokens == again.tokens
    assert first.answer_tokens >= 1


def test_min_new_tokens_and_limits(model):
    answer = model.answer("What is the capital of France?", min_new_tokens=10, max_new_tokens=10)
    assert answer.answer_tokens == 10
    assert answer.prompt_tokens > 5


def test_answer_carries_timings(model):
    answer = model.answer("What is the capital of France?", max_new_tokens=4)
    assert answer.encode_ms > 0 and answer.generate_ms > 0
    keys = {"answer", "answer_tokens", "prompt_tokens", "encode_ms", "generate_ms", "finish_reason"}
    assert set(answer.to_dict()) == keys and answer.to_dict()["finish_reason"] == answer.finish_reason


def test_concurrent_answers_match_sequential(model, questions):
    expected = [model.answer(q, max_new_tokens=8).tokens for q in questions[:12]]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: model.answer(q, max_new_tokens=8).tokens, questions[:12]))
    assert got == expected


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(num_beams=0), "num_beams must be at least 1, got 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be at least 1, got 0"),
        (dict(temperature=0.0), "temperature must be greater than 0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(do_sample=True, num_beams=2), "num_beams must be 1 when sampling"),
        (dict(min_new_tokens=-1), "min_new_tokens must be 0 or more"),
        (dict(min_new_tokens=5, max_new_tokens=3), "min_new_tokens must not exceed max_new_tokens, got 5"),
    ],
)
def test_bad_options_are_input_errors(model, bad, message):
    with pytest.raises(InputError, match=message):
        model.answer("What is AI?", **bad)


def test_unknown_option_names_valid_ones(model):
    with pytest.raises(InputError, match="valid: .*max_new_tokens"):
        model.answer("What is AI?", beams=3)


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_refused(model, question):
    with pytest.raises(InputError, match="empty"):
        model.answer(question)


def test_bytes_that_are_not_text_are_refused_naming_them(model):
    """A terminal in Latin-1 hands Python `caf\\xe9` as a lone surrogate, which tokenizers cannot take."""
    with pytest.raises(InputError, match="the question holds bytes that are not text .* give it as UTF-8"):
        model.answer("caf\udce9 router")
    with pytest.raises(InputError, match="the context holds bytes that are not text"):
        model.answer("Who?", context="Ann \udcff wrote it.")


def test_very_long_question_is_truncated_with_warning(model, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeqa"):
        answer = model.answer("why " * 25_000, max_new_tokens=4)
    assert answer.prompt_tokens == model.manifest.max_input_tokens
    assert "truncated" in caplog.text


@pytest.mark.parametrize(
    "question",
    [
        "¿Qué es 🤖 AI? 🚀🚀",
        "ما هي عاصمة فرنسا؟",
        "e\u0301\u0301\u0301 n\u0303",
        "null\x00byte",
        "中文问题是什么",
        "\u202eRTL override",
    ],
)
def test_any_unicode_gets_an_answer(model, question):
    answer = model.answer(question, max_new_tokens=4)
    assert_an_answer(model, answer, 4)
    assert answer.prompt_tokens > 1  # the prompt's words and the question's own tokens


def assert_an_answer(model, answer, most: int) -> None:
    """A real answer: 1 to `most` ids of the vocabulary, the text they decode to, and a reason to end."""
    assert 1 <= len(answer.tokens) <= most and all(0 <= t < model.manifest.dims.vocab_size for t in answer.tokens)
    assert answer.text == model.tokenizer.decode(answer.tokens)
    eos = model.manifest.special_tokens.eos
    assert answer.finish_reason == ("length" if len(answer.tokens) == most and answer.tokens[-1] != eos else "stop")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_random_strings_answer_or_raise_input_error(model, text):
    try:
        result = model.answer(text, max_new_tokens=3)
    except InputError:
        assert not text.strip()
    else:
        assert_an_answer(model, result, 3)


def test_options_default_from_manifest(model):
    generation = model.manifest.generation
    assert model.defaults == GenerationOptions(max_new_tokens=generation.max_new_tokens, num_beams=generation.num_beams)
    assert model.options(max_new_tokens=3).max_new_tokens == 3
    assert model.options(GenerationOptions(num_beams=2), max_new_tokens=3) == GenerationOptions(
        num_beams=2, max_new_tokens=3
    )


# ------------------------------------------------------------------ wrong arguments (the untrained tiny artifact)


@pytest.fixture(scope="module")
def tiny(artifact_tiny: Path) -> QAModel:
    return QAModel.load(artifact_tiny, threads=1)


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (dict(threads="2"), "threads must be a whole number, got str"),
        (dict(threads=1.5), "threads must be a whole number, got float"),
        (dict(threads=True), "threads must be a whole number, got bool"),
        (dict(threads=10**12), "threads must be at most 1024"),
        (dict(threads=0), "threads must be at least 1, got 0"),
        (dict(session_config="x=1"), "session_config must be a dict of str to str, got str"),
        (dict(session_config={"session.intra_op.allow_spinning": 0}), "session_config entries must be str: str"),
        (dict(expect_sha256=123), "expect_sha256 must be a str or None, got int"),
    ],
)
def test_load_arguments_of_the_wrong_type_are_config_errors_naming_them(artifact_tiny, load, message):
    with pytest.raises(ConfigError, match=message):
        QAModel.load(artifact_tiny, **load)


def test_loading_no_path_is_a_config_error():
    with pytest.raises(ConfigError, match="path must be the artifact folder .*got NoneType"):
        QAModel.load(None)


@pytest.mark.parametrize("batch_size", ["8", None, 2.5, True, 0])
def test_a_batch_size_that_is_not_a_whole_number_from_1_is_refused(tiny, batch_size):
    with pytest.raises(InputError, match="batch_size must be"):
        tiny.answer_batch(["Who?"], batch_size=batch_size)


def test_one_question_given_to_answer_batch_is_refused_not_read_letter_by_letter(tiny):
    with pytest.raises(InputError, match=r"answer_batch takes a list of questions, got str; use answer\(\) for one"):
        tiny.answer_batch("Who wrote Hamlet?")
    with pytest.raises(InputError, match="answer_batch takes a list of contexts, got str"):
        tiny.answer_batch(["Who?"], contexts="Ann")
    with pytest.raises(InputError, match="Decoder.prompts takes a list of questions, got str"):
        tiny.decoder().prompts("abc")
    with pytest.raises(InputError, match="encoding takes a list of contexts, got str"):
        tiny.decoder().prompts(["Who?", "Why?", "How?"], "abc")  # not a passage a letter
    assert len(tiny.answer_batch(q for q in ["Who?", "Why?"])) == 2  # any collection of questions


@pytest.mark.parametrize("options", [{"num_beams": 2}, "greedy", GenerationOptions])
def test_options_that_are_not_generation_options_are_refused_with_the_fix(tiny, options):
    with pytest.raises(InputError, match="options must be a GenerationOptions, got .*or the fields as keywords"):
        tiny.answer("Who?", options)
    with pytest.raises(InputError, match="options must be a GenerationOptions"):
        tiny.options(options)


def test_a_context_that_is_not_a_string_is_named_as_such(tiny):
    with pytest.raises(InputError, match="a context must be a string .*got int"):
        tiny.answer("Who?", context=123)


def test_numpy_numbers_are_taken_as_options(tiny):
    import numpy as np

    assert tiny.options(num_beams=np.int64(2), temperature=np.float32(0.5)) == tiny.options(
        num_beams=2, temperature=0.5
    )
    with pytest.raises(InputError, match="num_beams should be int"):
        tiny.options(num_beams=np.float64(2.0))


def test_even_rows_must_be_a_bool(tiny):
    with pytest.raises(InputError, match="even_rows must be True or False, got str"):
        tiny.even_rows = "no"
    assert tiny.even_rows is False


def test_sampling_an_artifact_that_defaults_to_beams_samples_one_beam(artifact_tiny, tmp_path):
    target = shutil.copytree(artifact_tiny, tmp_path / "beams")
    manifest = Manifest.read(target)
    generation = dataclasses.replace(manifest.generation, num_beams=4)
    Manifest(**{**manifest.__dict__, "generation": generation}).write(target)
    model = QAModel.load(target, threads=1)
    assert model.defaults.num_beams == 4
    sampled = model.options(do_sample=True, seed=3)
    assert (sampled.do_sample, sampled.num_beams) == (True, 1)
    answer = model.answer("Who?", do_sample=True, seed=3, max_new_tokens=4)
    assert answer.tokens == model.answer("Who?", do_sample=True, seed=3, num_beams=1, max_new_tokens=4).tokens
    with pytest.raises(InputError, match="num_beams must be 1 when sampling"):
        model.options(do_sample=True, num_beams=4)  # both asked for: still refused
    with pytest.raises(InputError, match="num_beams must be 1 when sampling"):
        model.options(GenerationOptions(num_beams=4), do_sample=True)
    from edgeqa.serve.protocol import parse_native  # the server's native API follows the same rule

    served = parse_native({"question": "Who?", "do_sample": True, "seed": 3}, model).options
    assert (served.do_sample, served.num_beams) == (True, 1)
    assert parse_native({"question": "Who?"}, model).options.num_beams == 4


# ------------------------------------------------------------------ damaged artifacts


@pytest.fixture
def copy_of(artifact_fp32, tmp_path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(artifact_fp32, target)
    return target


def test_missing_file_is_named(copy_of):
    (copy_of / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="missing tokenizer.json"):
        QAModel.load(copy_of)


def test_extra_file_is_named(copy_of):
    (copy_of / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="notes.txt"):
        QAModel.load(copy_of)


@pytest.mark.parametrize(
    "version, message",
    [
        (99, "manifest format 99 is newer than this edgeqa supports"),
        (1, "format 1 is from an older edgeqa .*re-export"),
    ],
)
def test_other_manifest_versions_are_refused_with_the_fix(copy_of, version, message):
    data = json.loads((copy_of / "manifest.json").read_text())
    data["format_version"] = version
    (copy_of / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=message):
        QAModel.load(copy_of)


def test_shared_embedding_of_the_wrong_size_is_refused(copy_of):
    manifest = Manifest.read(copy_of)
    path = copy_of / "embedding.data"
    path.write_bytes(path.read_bytes()[:-512])
    files = dict(manifest.files, embedding=file_entry(copy_of, "embedding.data"))
    Manifest(**{**manifest.__dict__, "files": files}).write(copy_of)
    with pytest.raises(ArtifactError, match="embedding.data holds .* bytes, not a float32"):
        QAModel.load(copy_of)


@pytest.mark.parametrize("layers", [1, 3])
def test_manifest_layers_that_do_not_match_the_graphs_are_refused(copy_of, layers):
    manifest = Manifest.read(copy_of)
    dims = dataclasses.replace(manifest.dims, num_decoder_layers=layers)
    Manifest(**{**manifest.__dict__, "dims": dims}).write(copy_of)
    expected = "unexpected past_key_values.1" if layers == 1 else "present.2.encoder.key"
    with pytest.raises(ArtifactError, match=f"does not match a {layers}-layer T5 decoder .*{expected}"):
        QAModel.load(copy_of)


def test_corrupted_graph_is_refused_naming_the_file(copy_of):
    path = copy_of / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="decoder.onnx .*sha256"):
        QAModel.load(copy_of)


def test_corrupted_weights_file_is_refused_naming_it(copy_of):
    path = copy_of / "encoder.onnx.data"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="encoder.onnx.data .*sha256"):
        QAModel.load(copy_of)


def test_garbage_graph_without_checksums_is_an_artifact_error(copy_of):
    manifest = Manifest.read(copy_of)
    (copy_of / "encoder.onnx").write_bytes(b"not an onnx graph" * 10)
    files = dict(manifest.files, encoder=file_entry(copy_of, "encoder.onnx"))
    Manifest(**{**manifest.__dict__, "files": files}).write(copy_of)
    with pytest.raises(ArtifactError, match="encoder.onnx .*not a loadable ONNX graph"):
        QAModel.load(copy_of, verify=False)


def test_mismatched_tokenizer_is_refused(copy_of):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "hello": 3}, unk_token="<unk>")).save(
        str(copy_of / "tokenizer.json")
    )
    manifest = Manifest.read(copy_of)
    files = dict(manifest.files, tokenizer=file_entry(copy_of, "tokenizer.json"))
    Manifest(**{**manifest.__dict__, "files": files}).write(copy_of)
    with pytest.raises(ArtifactError, match="tokenizer does not match its model"):
        QAModel.load(copy_of)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        QAModel.load(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        QAModel.load(tmp_path / "nowhere")


# ------------------------------------------------------------------ light means light


def test_runtime_import_pulls_no_torch(artifact_int8):
    code = (
        "import sys; from edgeqa.runtime import QAModel;"
        f"m = QAModel.load({str(artifact_int8)!r}); print(m.answer('What is AI?', max_new_tokens=4).text);"
        "heavy = [n for n in ('torch', 'transformers', 'optimum', 'starlette', 'uvicorn') if n in sys.modules];"
        "sys.exit(f'heavy modules imported: {heavy}' if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_missing_proc_is_explained(artifact_int8, monkeypatch):
    """onnxruntime opens the weights files through /proc/self/fd: a bare chroot gets advice, not a trace."""
    import onnxruntime as ort

    def refuse(*args, **kwargs):
        raise RuntimeError("Secure opened-file canonicalization requires procfs at /proc/self/fd/6.")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with pytest.raises(ArtifactError, match="without /proc; mount /proc"):
        QAModel.load(artifact_int8)


def test_an_onnxruntime_too_old_for_the_graphs_is_named_with_the_fix(artifact_tiny, monkeypatch):
    import onnxruntime as ort

    def refuse(*args, **kwargs):
        raise RuntimeError("Could not find an implementation for MultiHeadAttention(1) node")

    monkeypatch.setattr(ort, "__version__", "1.19.2")
    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with pytest.raises(ArtifactError, match=r"onnxruntime 1\.19\.2 cannot load .* need onnxruntime 1\.20 or newer"):
        QAModel.load(artifact_tiny, threads=1)


def test_runs_without_the_sessions_internal_run_give_the_same_answers(artifact_int8, monkeypatch):
    """The decoder runs through the session's C++ `run` (skipping a per-call Python name check); the
    public `run` is the fallback where that attribute is missing, and the answers are the same."""
    import onnxruntime as ort

    model = QAModel.load(artifact_int8, threads=1)
    direct = model.generate([[100, 200, 300, 1]], max_new_tokens=8, min_new_tokens=8)

    class Public:
        """A session with only the public interface, counting its runs."""

        def __init__(self, session: ort.InferenceSession):
            self.session, self.runs = session, 0

        def run(self, outputs, feed):
            self.runs += 1
            return self.session.run(outputs, feed)

    public = Public(model.graphs.decoder)
    monkeypatch.setattr(model.graphs, "decoder", public)
    assert model.generate([[100, 200, 300, 1]], max_new_tokens=8, min_new_tokens=8) == direct
    assert public.runs == 8
