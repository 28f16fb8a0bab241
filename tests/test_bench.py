"""The benchmark's machinery on the tiny model: every engine makes exactly the forced number of tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeqa.bench.report import markdown
from edgeqa.bench.run import BenchConfig, BenchResult, merge_rounds, prompts, run_worker
from edgeqa.errors import ConfigError
from edgeqa.prompt import DEFAULT_MAX_INPUT_TOKENS, format_prompt


@pytest.fixture(scope="module")
def optimum_model(trained_model, tmp_path_factory):
    """The trained model in Optimum's own layout (encoder, merged decoder), int8, for its engine."""
    from edgeqa.bench.shapes import optimum_int8

    return optimum_int8(trained_model, tmp_path_factory.mktemp("optimum") / "int8")


@pytest.fixture(scope="module")
def ct2_model(trained_model, tmp_path_factory):
    converters = pytest.importorskip("ctranslate2.converters")
    out = tmp_path_factory.mktemp("ct2") / "model"
    converters.TransformersConverter(str(trained_model)).convert(str(out), quantization="int8")
    return out


@pytest.mark.parametrize("engine", ["pytorch", "optimum", "ctranslate2@1", "edgeqa-int8", "edgeqa-fp32"])
def test_every_engine_generates_exactly_the_forced_tokens(engine, trained_model, artifact_int8, artifact_fp32, request):
    path = {
        "pytorch": trained_model,
        "edgeqa-int8": artifact_int8,
        "edgeqa-fp32": artifact_fp32,
    }.get(engine) or request.getfixturevalue("optimum_model" if engine == "optimum" else "ct2_model")
    config = BenchConfig(new_tokens=6, inputs=8, threads=2)
    tokenizer = artifact_int8 / "tokenizer.json"
    inputs = prompts(8, tokenizer)
    assert len(inputs) == 8 and all(12 <= len(p) <= 64 for p in inputs)
    result = merge_rounds([run_worker(engine, path, tokenizer, inputs, config, beams=True) for _ in range(2)])
    for mode in ("b1", "b8", "beam4", "beam4-b8"):
        assert result[f"{mode}.tokens"] == 6, (engine, mode)
    assert result["b1.median_ms"] > 0 and result["b8.questions_per_s"] > 0
    assert 20 < result["peak_rss_mb"] < 4000 and result["cold_start_s"] > 0


def test_the_engine_worker_imports_no_harness():
    """Each engine's peak RSS is measured in the worker: it must not carry numpy or the harness."""
    code = "import sys, edgeqa.bench.worker; print([m for m in ('numpy', 'edgeqa.bench.run') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_optimum_on_the_same_int8_weights_agrees_with_edgeqa(optimum_model, artifact_fp32, questions, tmp_path):
    """Same weights, same (per-tensor) activation quantization as Optimum's layout: the same tokens.

    Only prompts whose length is a multiple of 4 compare: the runtime pads shorter ones to one
    (`runtime.decoder.PAD_MULTIPLE`), and per-tensor int8 answers depend on padding (what per-token
    activations fix)."""
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    from edgeqa.bench.levers import variant
    from edgeqa.export.config import settings_for
    from edgeqa.runtime import QAModel
    from edgeqa.runtime.decoder import PAD_MULTIPLE

    artifact_int8 = variant(artifact_fp32, tmp_path / "per-tensor", settings_for(activation_granularity="per-tensor"))
    ours = QAModel.load(artifact_int8, threads=2)
    theirs = ORTModelForSeq2SeqLM.from_pretrained(optimum_model, use_cache=True)
    tokenizer = AutoTokenizer.from_pretrained(artifact_int8)
    compared = 0
    for question in questions:
        prompt = format_prompt(question)
        batch = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=DEFAULT_MAX_INPUT_TOKENS)
        if batch["input_ids"].shape[1] % PAD_MULTIPLE or compared == 12:
            continue
        compared += 1
        expected = theirs.generate(**batch, max_new_tokens=12, do_sample=False)[0, 1:].tolist()
        expected = expected[: expected.index(1) + 1] if 1 in expected else expected
        assert ours.answer(question, max_new_tokens=12).tokens == expected
    assert compared == 12


def test_report_ratios_use_the_better_ctranslate2_row():
    from edgeqa.bench.machine import MachineLimits

    row = {"b1.median_ms": 100.0, "b8.questions_per_s": 10.0, "beam4.median_ms": 200.0}
    result = BenchResult(limits=MachineLimits("cpu", 2, 20.0, 100.0))
    result.rows["small"] = {
        "ctranslate2": row | {"beam4-b8.questions_per_s": 4.0},
        "ctranslate2@1": {"b1.median_ms": 50.0, "b8.questions_per_s": 8.0, "beam4.median_ms": 250.0},
        "edgeqa-int8": {
            "b1.median_ms": 40.0,
            "b8.questions_per_s": 20.0,
            "beam4.median_ms": 150.0,
            "beam4-b8.questions_per_s": 6.0,
        },
    }
    table = markdown(result, threads=2, new_tokens=32, inputs=32)
    assert "| edgeqa runtime int8 |" in table
    assert "0.80x | 2.00x | 0.75x | 1.50x |" in table  # 40 / 50 ms, 20 / 10 q/s, 150 / 200 ms, 6 / 4 q/s


@pytest.mark.parametrize("shapes", [{"shapes": ("xl",)}, {"beam_shapes": ("small", "xl")}])
def test_unknown_shape_is_refused(shapes):
    with pytest.raises(ConfigError, match="unknown shape.*xl"):
        BenchConfig(**shapes)


def test_finetune_speed_runs_settings_and_reports_them(tmp_path: Path, tiny_model: Path) -> None:
    """The GPU fine-tuning benchmark on the CPU, tiny model: the tutorial recipe against answer-length batches."""
    from edgeqa.bench.finetune_speed import COMPILE, DEFAULTS, LADDER, LADDERS, OPT_IN, TUTORIAL, run

    assert LADDER[0] == TUTORIAL and LADDER[-1][1:] == DEFAULTS[1:] == ({}, {}), "the ladder reaches the defaults"
    assert LADDERS == {"short": [TUTORIAL, DEFAULTS, *OPT_IN], "full": [*LADDER, *OPT_IN, COMPILE]}
    picked = [TUTORIAL, OPT_IN[0]]
    results = run("base", tmp_path, steps=4, warmup_steps=1, model=tiny_model, settings=picked, eval_samples=16)
    assert [r.setting for r in results] == [name for name, _, _ in picked]
    assert all(r.timed_steps == 3 and r.samples_per_second > 0 and r.eval_seconds > 0 for r in results)
    tutorial, answer = results
    # The bundled answers run from a few tokens to 512: plain batches pad most of each answer batch.
    assert tutorial.answer_padding > 0.5 and answer.answer_padding < tutorial.answer_padding / 3, results
    report = (tmp_path / "finetune-speed.md").read_text()
    assert "| + answer-length batches | 8 |" in report and "1.00x" in report
    assert json.loads((tmp_path / "finetune-speed.json").read_text())["steps"] == 4


def test_finetune_speed_end_to_end_trains_equal_samples_and_scores_rouge(tmp_path: Path, tiny_model: Path) -> None:
    """By epochs: every batch size trains the same samples; each run is timed end to end and its kept
    checkpoint scored on every validation record."""
    from edgeqa.bench.finetune_speed import DEFAULTS, TUTORIAL, run

    picked = [TUTORIAL, ("batch 16", {"batch_size": 16}, {}), DEFAULTS, ("subset", {"eval_subset": 4}, {})]
    results = run(
        "base", tmp_path, epochs=2, warmup_steps=3, model=tiny_model, settings=picked,
        train_samples=32, eval_samples=8, eval_max_new_tokens=4,
    )  # fmt: skip
    assert [r.samples for r in results] == [64] * 4
    assert [r.timed_steps for r in results] == [5, 2, 5, 5], "the warm-up is at most half the steps"
    assert [r.edgeqa_defaults for r in results] == [False, False, True, False]
    for r in results:
        assert r.seconds + r.eval_seconds < r.end_to_end_seconds and r.other_seconds > 0
        assert r.end_to_end_samples_per_second == pytest.approx(64 / r.end_to_end_seconds)
        assert r.rouge_l is not None and 0 <= r.rouge_l <= 100 and r.exact_match is not None
    report = (tmp_path / "finetune-speed.md").read_text()
    assert "2 epochs of 32 samples, 8 validation answers of up to 4 tokens each epoch" in report
    assert "| batch 16 | 16 |" in report and "Fastest at equal ROUGE-L:" in report
    record = json.loads((tmp_path / "finetune-speed.json").read_text())
    assert record["epochs"] == 2 and record["results"][0]["end_to_end_samples_per_second"] > 0


def test_finetune_speed_kept_checkpoint_is_scored_on_every_validation_record(tiny_model: Path) -> None:
    from edgeqa.bench.finetune_speed import score_kept_model
    from edgeqa.finetune import FinetuneConfig
    from edgeqa.records import BUNDLED_QA

    config = FinetuneConfig(model=str(tiny_model), data=str(BUNDLED_QA), max_eval_samples=2, eval_max_new_tokens=2)
    rouge_l, exact = score_kept_model(tiny_model, config, batch_size=128)
    assert 0 < rouge_l < 100 and exact == 0.0  # two random tokens share a word with some of the 371 answers


class _State:
    def __init__(self, max_steps: int) -> None:
        self.max_steps, self.global_step = max_steps, 0


def test_finetune_speed_clock_leaves_the_evaluations_between_epochs_out() -> None:
    """Two epochs of 4 one-second steps with a 10-second evaluation between them, warm-up 1 step."""
    from edgeqa.bench.finetune_gauges import StepClock

    now = [0.0]
    clock, state = StepClock(warmup_steps=1, now=lambda: now[0]), _State(max_steps=8)
    clock.on_train_begin(None, state, None)
    for _epoch in range(2):
        for _ in range(4):
            clock.on_step_begin(None, state, None)
            now[0] += 1
            state.global_step += 1
            clock.on_step_end(None, state, None)
        clock.on_epoch_end(None, state, None)
        now[0] += 10  # the epoch's evaluation and checkpoint
    clock.on_train_end(None, state, None)
    assert (clock.start, clock.end, clock.paused) == (1, 18, 10)
    assert (clock.seconds, clock.steps) == (7, 7), "steps 2-8 in 7 s, the evaluation between epochs left out"
    assert (clock.train_began, clock.train_ended) == (0, 28), "the whole of Trainer.train"
    big_warmup = StepClock(warmup_steps=20, now=lambda: 0.0)
    big_warmup.on_train_begin(None, _State(max_steps=6), None)
    assert big_warmup.warmup_steps == 3


def test_finetune_speed_candidate_defaults_need_the_speedup_at_equal_rouge() -> None:
    from edgeqa.bench.finetune_speed import SpeedResult
    from edgeqa.bench.finetune_speed_report import verdicts

    def result(name: str, seconds: float, rouge: float | None) -> SpeedResult:
        zero = dict.fromkeys(("other_seconds", "seconds", "eval_seconds", "answer_padding", "prompt_padding"), 0.0)
        return SpeedResult(
            setting=name, edgeqa_defaults=name == "defaults", batch_size=8, samples=800, end_to_end_seconds=seconds,
            samples_per_second=1.0, timed_steps=1, rouge_l=rouge, exact_match=0.0, peak_memory_gib=0.0,
            last_loss=None, **zero,
        )  # fmt: skip

    results = [
        result("tutorial", 100, 30.0),
        result("defaults", 80, 30.5),
        result("fast, equal ROUGE", 60, 29.5),  # 1.33x the defaults, 0.5 points below the tutorial
        result("faster, worse ROUGE", 20, 25.0),
        result("a little faster", 70, 31.0),  # 1.14x the defaults
        result("no score", 10, None),
    ]
    ranked = verdicts(results, min_speedup=1.3, rouge_tolerance=1.0)
    assert [v.candidate for v in ranked] == [False, False, True, False, False, False]
    assert [v.equal_rouge for v in ranked] == [True, True, True, False, True, False]
    assert ranked[2].vs_first == pytest.approx(100 / 60) and ranked[2].vs_defaults == pytest.approx(80 / 60)
    assert ranked[2].rouge_delta == pytest.approx(-0.5) and ranked[5].rouge_delta is None
    assert [v.candidate for v in verdicts(results, 1.3, rouge_tolerance=5.0)][3], "within a looser tolerance"
    assert not verdicts(results, min_speedup=0.5, rouge_tolerance=1.0)[1].candidate, "the defaults are not a change"
    without_defaults = verdicts([results[0], results[2]], 1.3, 1.0)
    assert without_defaults[1].vs_defaults is None and not without_defaults[1].candidate


def test_finetune_speed_setting_flag_is_parsed_or_refused() -> None:
    import argparse

    from edgeqa.bench.finetune_speed import parse_setting

    assert parse_setting('answers|{"length_grouping": "answer"}') == ("answers", {"length_grouping": "answer"}, {})
    assert parse_setting('no pin|{}|{"dataloader_pin_memory": false}') == (
        "no pin",
        {},
        {"dataloader_pin_memory": False},
    )
    with pytest.raises(argparse.ArgumentTypeError, match="NAME\\|CONFIG_JSON"):
        parse_setting("compiled")
    with pytest.raises(argparse.ArgumentTypeError, match="length_grouping 'labels' is not one of"):
        parse_setting('bad|{"length_grouping": "labels"}')


@pytest.mark.parametrize("weights_beside", [True, False])
def test_lever_variant_is_a_complete_artifact(tmp_path: Path, artifact_fp32: Path, weights_beside: bool) -> None:
    from dataclasses import replace

    from edgeqa.bench.levers import variant
    from edgeqa.export.config import settings_for
    from edgeqa.manifest import Manifest
    from edgeqa.runtime import QAModel

    target = variant(artifact_fp32, tmp_path / "v", replace(settings_for("auto"), per_channel=False), weights_beside)
    manifest = Manifest.read(target)
    assert ("decoder_weights" in manifest.files) == weights_beside
    assert (target / "decoder.onnx.data").exists() == weights_beside
    assert manifest.quantization and manifest.quantization.per_channel is False
    assert QAModel.load(target).answer("What is the capital of France?", max_new_tokens=4).tokens


def test_serve_report_shows_ratios_to_one_caller(tmp_path):
    from edgeqa.bench import serve_load

    rows = [
        {"concurrency": c, "requests": 32, "questions_per_s": q, "p50_ms": p, "p95_ms": p * 1.2, "errors": e}
        for c, q, p, e in ((1, 4.0, 250.0, 0), (16, 12.0, 500.0, 1))
    ]
    direct = {"batch1_questions_per_s": 4.5, "batch1_p50_ms": 220.0, "batch8_questions_per_s": 14.0}
    path = serve_load.write({"config": {}, "shapes": {"small": {"direct": direct, "serve": rows}}}, tmp_path)
    table = path.read_text()
    assert "| 16 | 12.00 | 3.00x | 500 | 600 | 2.00x | 1 |" in table
    assert "batch 8 14.00 questions/s" in table
    assert len(serve_load.questions(40)) == 40


def test_reading_benchmark_times_every_engine_on_the_same_passages(tiny_model, artifact_tiny, tmp_path):
    """One round of `edgeqa.bench.reading` on the tiny model: every engine reads the same 4 passages,
    each answer exactly the forced length and scored, and the table holds the ratios; edgeqa also asks
    the index of those passages end to end."""
    import statistics

    from edgeqa.bench.reading import ReadingConfig, available, run_shape
    from edgeqa.bench.reading_report import markdown

    engines = tuple(e for e in ("edgeqa-int8", "edgeqa-int8@1", "ctranslate2@1", "pytorch") if available(e))
    paths = {"checkpoint": tiny_model, "int8": artifact_tiny}
    if "ctranslate2@1" in engines:
        from ctranslate2.converters import TransformersConverter

        paths["ct2"] = Path(TransformersConverter(str(tiny_model)).convert(str(tmp_path / "ct2"), quantization="int8"))
    config = ReadingConfig(engines=engines, passage_tokens=40, new_tokens=4, rounds=1, reps=2, settle_s=0)
    result = run_shape("tiny", paths, config)
    assert len(result.prompt_tokens) == 4 and all(30 < n <= 40 for n in result.passage_tokens)
    assert all(n > 40 for n in result.prompt_tokens)  # the template and the question around the passage
    assert set(result.times) == set(engines)
    for engine in engines:
        for mode in ("prompt", "read"):
            [round_] = result.times[engine][mode]
            assert len(round_) == 2 and all(ms > 0 for ms in round_), (engine, mode)
        assert [len(t) for t in result.tokens[engine]] == [4] * 4, engine
        assert all(isinstance(s, float) and s <= 0 for s in result.scores[engine]), engine
    assert all(p["steps"] == 4 and p["encoder_ms"] > 0 for p in result.profile["edgeqa-int8"])
    assert len(result.encoder_ms["edgeqa-int8"]) == 2
    # edgeqa's engines also ask the index end to end: its top 4 are the passages read, as the same token ids
    edgeqa = [e for e in engines if e.startswith("edgeqa")]
    assert result.asked() == edgeqa and result.ask["index_passages"] > 4
    assert result.ask["same_ids"] == dict.fromkeys(edgeqa, True)
    for engine in edgeqa:
        [asks] = result.times[engine]["ask"]
        assert len(asks) == 2 and all(ms > 0 for ms in asks), engine
        assert result.ask["answer_tokens"][engine] == [4] * 4, engine
        parts = result.ask_parts[engine]  # its steps timed apart
        assert len(parts) == 2 and all(set(p) == {"search", "prompts", "read", "choice"} for p in parts), engine
        assert all(ms > 0 for p in parts for ms in p.values()), engine
        around = sum(result.part(engine, step) for step in ("search", "prompts", "choice"))
        assert statistics.median(asks) > around, engine  # the ask is those and a read
    table = markdown({"tiny": result}, config)
    assert "| tiny | edgeqa runtime int8 |" in table and "| tiny | edgeqa runtime int8, 1 thread |" in table
    assert table.count("| tiny | edgeqa runtime int8 |") == 2 and "`ask --index` end to end" in table
    assert repr(result.ask["question"]) in table and "an ask's steps timed apart: search" in table
    if "ctranslate2@1" in engines:
        assert "(goal <= 0.8x)" in table and "x (" in table  # a verdict, and ratios with their rounds' range
        assert "the whole ask" in table


def test_reader_probe_logs_every_evaluation_and_saves_the_reader(tmp_path: Path) -> None:
    """`edgeqa.bench.reader_probe`, a few steps: its arguments, one JSON line per evaluation, the weights saved."""
    log, saved = tmp_path / "probe.jsonl", tmp_path / "reader"
    args = ["--steps", "6", "--warmup", "2", "--eval-every", "3", "--worlds", "1", "--d-model", "32", "--heads", "2"]
    args += ["--open-vocabulary", "--one-sentence-steps", "3", "--negatives", "0.5", "--negatives-from", "3"]
    args += ["--crowd", "0.5", "--question-generation", "0.25"]
    subprocess.run(
        [sys.executable, "-m", "edgeqa.bench.reader_probe", *args, "--output", str(log), "--save", str(saved)],
        check=True,
        timeout=300,
    )
    header, *entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert header["args"]["open_vocabulary"] == "True" and header["args"]["negatives"] == "0.5"
    assert header["args"]["crowd"] == "0.5" and header["args"]["question_generation"] == "0.25"
    assert [e["step"] for e in entries] == [3, 6]
    for entry in entries:
        assert {"all", "capital", "continent@train", "right_page", "chosen_em", "right_page_by_question"} <= set(entry)
        assert all(0 <= entry[k] <= 100 for k in ("all", "capital", "right_page", "right_page_by_question"))
    assert (saved / "config.json").exists()


def test_reader_recipe_measures_both_choices_through_the_product_s_choose(tmp_path: Path) -> None:
    """`edgeqa.bench.reader_recipe`, a few steps: one curve row per evaluation step, the choice joined with
    retrieval (`DocumentsQA`'s) beside the reader's score alone."""
    args = ["--steps", "2", "--worlds", "1", "--batch", "4", "--d-model", "32", "--d-ff", "64"]
    args += ["--eval-questions", "8", "--retrieval-questions", "6"]
    subprocess.run(
        [sys.executable, "-m", "edgeqa.bench.reader_recipe", *args, "--output", str(tmp_path)], check=True, timeout=300
    )
    [row] = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert row["step"] == 2
    assert all(0 <= row[key] <= 100 for key in ("gold_em", "source", "em", "reader_source", "reader_em"))


def test_reader_recipe_scores_the_joined_choice_and_the_readers_alone_apart() -> None:
    """Readings where the two rules disagree: retrieval keeps the right page, the reader's score alone does not."""
    from edgeqa.bench.reader_recipe import evaluate, prompt
    from edgeqa.documents import Passage

    def passage(title: str, bm25: float, rank: int) -> Passage:
        return Passage(rank, f"{title}.md", title, title, 1, 1, "line", f"The capital of {title} is X.", rank, bm25)

    right, wrong = passage("Aland", 10.0, 1), passage("Bland", 2.0, 2)
    row = {"question": "What is the capital of Aland?", "context": right.text, "answer": "Oslo", "relation": "capital"}
    row["page"] = "Aland"
    said = {
        prompt(row["question"], right.text): ("Oslo", -1.0),  # the right page, read less surely
        prompt(row["question"], wrong.text): ("Lima", -0.1),
    }

    class Reader:
        def answer(self, prompts: list[str]) -> list[tuple[str, float]]:
            return [said[p] for p in prompts]

    result = evaluate(Reader(), [row], [(row, [right, wrong])])  # type: ignore[arg-type]
    assert (result["gold_em"], result["source"], result["em"]) == (100.0, 100.0, 100.0)
    assert (result["reader_source"], result["reader_em"]) == (0.0, 0.0)


def test_demo_kernels_sets_the_kernels_before_torch_loads_and_reports_the_spread(tmp_path, monkeypatch) -> None:
    """Each run gets its kernel set in a fresh process (a stand-in demo echoes it); the table and
    the spread per number of phrasings come from the runs."""
    from edgeqa.bench import demo_kernels

    stand_in = (
        "import json, os, sys\n"
        "cap = os.environ.get('ATEN_CPU_CAPABILITY', 'native')\n"
        "print(json.dumps({'validation': {'native': 0.825, 'avx2': 0.985}.get(cap, 0.947), 'test': 0.5}))\n"
    )
    monkeypatch.setattr(demo_kernels, "_RUN", stand_in)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # the caller's own setting does not leak into "native"
    runs = [demo_kernels.run_once(kernels, "3", tmp_path) for kernels in demo_kernels.KERNELS]
    assert [round(run.heldout, 3) for run in runs] == [0.825, 0.985, 0.947]
    table = demo_kernels.report(runs)
    assert "| 3 | avx2 | 98.5% | 50.0% |" in table
    assert "- 3 phrasings: held-out 82.5-98.5% (spread 16.0 points), never-seen 50.0-50.0% (spread 0.0)" in table
    monkeypatch.setattr(demo_kernels, "_RUN", "import sys; sys.exit('no demo here')")
    with pytest.raises(RuntimeError, match="the demo under avx2 kernels failed:\nno demo here"):
        demo_kernels.run_once("avx2", "all", tmp_path)
