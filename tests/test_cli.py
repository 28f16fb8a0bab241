"""The CLI: thin commands over the library, `error: ...` with exit code 1, answers on stdout."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FACTS_SHAPE
from edgeqa.cli import app
from edgeqa.manifest import FORMAT_VERSION

runner = CliRunner()


def test_help_lists_commands_and_imports_no_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from edgeqa.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); print(r.output);"
        "sys.exit(1 if 'torch' in sys.modules or r.exit_code else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for command in ("ask", "info", "finetune", "export", "parity", "demo", "bench"):
        assert command in result.stdout


def option_help(text: str, option: str) -> str:
    """An option's entry in click's help, its wrapped lines joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"{option} "))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if line[:4].strip().startswith("-") or not line.strip():  # the next option, or the end of the list
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_help_shows_the_defaults_of_options_drawn_from_config_fields():
    """Options made from `ServeConfig`'s and `ExportConfig`'s fields show their defaults."""
    serve = runner.invoke(app, ["serve", "--help"]).output
    for option, default in (("--max-queue", "64"), ("--port", "8080"), ("--retrieval-weight", "1.0")):
        assert option_help(serve, option).endswith(f"[default: {default}]"), option_help(serve, option)
    assert option_help(runner.invoke(app, ["export", "--help"]).output, "--parity-samples").endswith("[default: 200]")


def test_help_at_80_columns_shows_every_option_whole_and_switches_without_a_value():
    for command in ("ask", "export", "finetune", "serve", "index", "parity", "demo"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}).output
        assert max(len(line) for line in text.splitlines()) <= 80, command
        assert "…" not in text and "<bool>" not in text and "\\[" not in text, command
    assert "--allow-parity-failure" in runner.invoke(app, ["export", "--help"], env={"COLUMNS": "80"}).output


def test_ask_prints_the_answer(artifact_int8):
    from edgeqa.runtime import QAModel

    expected = QAModel.load(artifact_int8).answer("Who wrote Hamlet?").text
    result = runner.invoke(app, ["ask", str(artifact_int8), "Who wrote Hamlet?"])
    assert result.exit_code == 0
    assert result.stdout.strip() == expected


def test_ask_json_and_stream(artifact_int8):
    result = runner.invoke(app, ["ask", str(artifact_int8), "Who wrote Hamlet?", "--json", "--max-new-tokens", "5"])
    data = json.loads(result.stdout)
    assert data["question"] == "Who wrote Hamlet?" and 1 <= data["answer_tokens"] <= 5
    assert {"prompt_tokens", "encode_ms", "generate_ms"} <= set(data)
    cut = json.loads(
        runner.invoke(
            app,
            [
                "ask",
                str(artifact_int8),
                "Who wrote Hamlet?",
                "--json",
                "--min-new-tokens",
                "2",
                "--max-new-tokens",
                "2",
            ],
        ).stdout
    )
    assert (cut["answer_tokens"], cut["finish_reason"]) == (2, "length")
    streamed = runner.invoke(app, ["ask", str(artifact_int8), "Who wrote Hamlet?", "--stream", "--max-new-tokens", "5"])
    plain = runner.invoke(app, ["ask", str(artifact_int8), "Who wrote Hamlet?", "--max-new-tokens", "5"])
    assert streamed.stdout == plain.stdout


def test_ask_generation_flags_reach_the_model(artifact_int8, monkeypatch):
    from edgeqa.runtime import QAModel

    seen = {}
    real = QAModel.answer

    def spy(self, question, options=None, context=None, **overrides):
        seen.update(dataclasses.asdict(options))
        return real(self, question, options, context, **overrides)

    monkeypatch.setattr(QAModel, "answer", spy)
    result = runner.invoke(
        app,
        [
            "ask",
            str(artifact_int8),
            "Hi?",
            "--num-beams",
            "3",
            "--length-penalty",
            "0.5",
            "--no-repeat-ngram-size",
            "2",
            "--max-new-tokens",
            "6",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (seen["num_beams"], seen["length_penalty"], seen["no_repeat_ngram_size"], seen["max_new_tokens"]) == (
        3,
        0.5,
        2,
        6,
    )


def test_ask_file_reports_bad_lines_and_writes_atomically(artifact_int8, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"question": "Who wrote Hamlet?"}\nnot json\n{"question": "   "}\n'
        '{"question": "What is the capital of France?"}\n'
    )
    out = tmp_path / "answers.jsonl"
    result = runner.invoke(
        app, ["ask", str(artifact_int8), "--file", str(questions), "--output", str(out), "--max-new-tokens", "6"]
    )
    assert result.exit_code == 0, result.output
    assert "line 2" in result.stderr and "line 3" in result.stderr
    assert f"answered 2 of 4 questions -> {out}" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 4]
    assert all(r["answer"] is not None for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "q.jsonl"]


def test_ask_text_file_to_stdout(artifact_int8, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("Who wrote Hamlet?\n\nWhat is AI?\n")
    result = runner.invoke(app, ["ask", str(artifact_int8), "-f", str(questions), "--max-new-tokens", "4"])
    assert result.exit_code == 0
    assert [json.loads(line)["line"] for line in result.stdout.splitlines()] == [1, 3]


def test_ask_file_dash_reads_questions_piped_on_standard_input(artifact_int8):
    questions = "Who wrote Hamlet?\n\nWhat is AI?\n"
    result = runner.invoke(app, ["ask", str(artifact_int8), "--file", "-", "--max-new-tokens", "4"], input=questions)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["line"] for line in result.stdout.splitlines()] == [1, 3]
    empty = runner.invoke(app, ["ask", str(artifact_int8), "--file", "-"], input="\n")
    assert empty.exit_code == 1 and "error: standard input holds no questions" in empty.stderr


def test_info_shows_the_manifest(artifact_int8):
    result = runner.invoke(app, ["info", str(artifact_int8)])
    assert result.exit_code == 0
    for text in (
        "dynamic-int8",
        "Please answer this question",
        "parity          PASS",
        f"{FACTS_SHAPE['num_heads']} heads x {FACTS_SHAPE['d_kv']}",
        "uint8 32128x",
    ):
        assert text in result.stdout
    data = json.loads(runner.invoke(app, ["info", str(artifact_int8), "--json"]).stdout)
    assert data["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "{art}", "   "], "error: the question is empty"),
        (["ask", "{art}", "Hi?", "--num-beams", "0"], "error: num_beams must be at least 1"),
        (["ask", "{tmp}/nowhere", "Hi?"], "error: artifact folder"),
        (["ask", "{art}", "--file", "{tmp}/missing.jsonl"], "error: question file"),
        (["ask", "{art}", "--file", "{tmp}"], "error: question file {tmp} is a folder; give a .jsonl or .txt file"),
        (["ask", "{art}", "--file", "{tmp}/empty.txt"], "error: question file {tmp}/empty.txt holds no questions"),
        (["ask", "{art}", "--file", "{tmp}/bad.jsonl"], "holds no questions: 1 bad lines, the first: line 1: not a"),
        (["ask", "{art}", "Hi?", "--file", "{tmp}/empty.txt"], "error: give one question or --file, not both"),
        (["ask", "{art}", "Hi?", "--stream", "--json"], "error: --stream prints one answer as it is generated"),
        (["ask", "{art}", "Hi?", "--threads", "0"], "error: threads must be at least 1, got 0"),
        (["ask", "{art}/manifest.json", "Hi?"], "error: artifact folder {art}/manifest.json is a file"),
        (["ask", "{art}", "Hi?", "--context", "{tmp}"], "error: context file {tmp} is a folder"),
        (["ask", "{art}", "-f", "{tmp}/missing.jsonl", "--batch-size", "0"], "error: batch_size must be at least 1"),
        (["ask", "{art}", "-f", "{tmp}/bad.jsonl", "-o", "{tmp}"], "cannot write the answers to {tmp}: {tmp} is a"),
        (["ask", "{art}", "-f", "{tmp}/bad.jsonl", "-o", "{tmp}/bad.jsonl/a"], "{tmp}/bad.jsonl is not a folder; give"),
        (["index", "{tmp}/empty.txt", "-o", "{tmp}/bad.jsonl/x.idx"], "error: cannot write {tmp}/bad.jsonl/x.idx"),
        (["ask", "{art}"], "error: no question given: pass one as an argument, use --file (--file - reads"),
        (["ask", "{art}", "--file", "/dev/null"], "error: question file /dev/null is not a regular file (a pipe"),
        (["info", "{tmp}"], "error: {tmp} has no manifest.json"),
        (["export", "{tmp}/no-checkpoint", "{tmp}/out"], "error: checkpoint '{tmp}/no-checkpoint' is not a folder"),
        (["parity", "{art}", "--reference", "{tmp}/nope"], "error: checkpoint '{tmp}/nope' is not a folder"),
        (["parity", "{art}", "--reference", "google/flan-t5-base"], "Offline, pass a local checkpoint folder"),
        (["serve", "{art}", "--api-key", ""], "error: api_key must not be empty"),
        (["serve", "{art}", "--threads", "5000"], "error: threads must be 1 to 1024, got 5000 (--threads)"),
        (["serve", "{art}", "--api-key-file", "{tmp}/empty.txt"], "error: api_key must not be empty"),
        (["parity", "{art}", "--reference", "{tmp}", "--samples", "0"], "error: the parity gate needs at least 1"),
        (["parity", "{art}", "--reference", "{tmp}", "--max-new-tokens", "0"], "need at least 1 new token, got 0"),
        (
            ["export", "ckpt", "{tmp}/out", "--quantize", "int8", "--keep-fp32", "lm_haed"],
            "error: keep_fp32 lm_haed names no part",
        ),
        (["finetune", "--lr", "-1", "-o", "{tmp}/run"], "error: learning_rate must be greater than 0, got -1.0"),
        (["finetune", "--data", "{tmp}/none.jsonl", "-o", "{tmp}/run"], "error: data file"),
        (["finetune", "--precision", "fp16", "-o", "{tmp}/run"], "error: precision 'fp16'"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(artifact_int8, tmp_path, args, message):
    fill = {"art": str(artifact_int8), "tmp": str(tmp_path)}
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "bad.jsonl").write_text("[1]\n")
    result = runner.invoke(app, [a.format(**fill) for a in args])
    assert result.exit_code == 1, result.output
    assert message.format(**fill) in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command, missing, message",
    [
        ("serve", ("uvicorn", "starlette", "prometheus_client"), "edgeqa serve needs uvicorn, which is not installed: "
         "pip install 'edgeqa[serve]'"),
        ("parity", ("torch", "transformers"), "edgeqa parity needs torch, which is not installed: "
         "pip install 'edgeqa[export]' (install torch==2.13.0 first for the CPU build)"),
    ],
)  # fmt: skip
def test_a_command_without_its_extra_names_the_install_command(tmp_path, command, missing, message):
    code = (
        "import sys\n"
        f"for name in {missing!r}:\n"
        "    sys.modules[name] = None  # as on an install without the extra: importing it fails\n"
        "from edgeqa.cli import main\n"
        f"sys.argv = ['edgeqa', {command!r}, sys.argv[1], *sys.argv[2:]]\n"
        "main()\n"
    )
    extra = ["--reference", str(tmp_path)] if command == "parity" else []
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), *extra], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"error: {message}"]


def test_debug_env_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edgeqa.cli", "info", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "EDGEQA_DEBUG": "1"},
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "error:" in result.stderr


def test_finetune_flags_override_the_config(monkeypatch, tmp_path):
    import edgeqa.finetune as finetune_module
    from edgeqa.finetune import FinetuneResult

    seen = {}

    def fake(config, callbacks=None, **options):
        seen["config"] = config
        return FinetuneResult(Path(config.output_dir) / "final", 3, [], None)

    monkeypatch.setattr(finetune_module, "finetune", fake)
    (tmp_path / "run.toml").write_text('model = "google/flan-t5-small"\nepochs = 5\nlearning_rate = 1e-4\n')
    result = runner.invoke(
        app,
        [
            "finetune",
            "--config",
            str(tmp_path / "run.toml"),
            "--epochs",
            "2",
            "--data",
            "qa.jsonl",
            "-o",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.model, config.epochs, config.learning_rate, config.data) == (
        "google/flan-t5-small",
        2,
        1e-4,
        "qa.jsonl",
    )


@pytest.mark.parametrize(
    ("flags", "method"),
    [([], None), (["--quantize"], "int8"), (["--quantize", "int8"], "int8"), (["--quantize", "int4"], "int4")],
)
def test_export_quantize_takes_int8_or_int4_and_alone_means_int8(monkeypatch, tmp_path, flags, method):
    import edgeqa.cli as cli
    import edgeqa.export as export_module

    seen = {}

    def fake(config):
        seen["config"] = config
        raise cli.EdgeQAError("stopped before exporting")

    monkeypatch.setattr(export_module, "export_artifact", fake)
    # Options after --quantize too: a bare --quantize must not swallow the next word.
    monkeypatch.setattr(sys, "argv", ["edgeqa", "export", "ckpt", str(tmp_path / "out"), *flags, "--no-parity"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    assert seen["config"].quantize == method and seen["config"].parity is False


def test_bare_quantize_as_the_last_word_means_int8():
    from edgeqa.cli import bare_quantize_means_int8

    assert bare_quantize_means_int8(["export", "a", "b", "--quantize"]) == ["export", "a", "b", "--quantize", "int8"]
    assert bare_quantize_means_int8(["export", "--quantize", "a", "b"]) == ["export", "--quantize", "int8", "a", "b"]
    assert bare_quantize_means_int8(["export", "a", "b", "--quantize", "int3"])[-1] == "int3"  # refused by the choices


def test_export_refuses_an_unknown_quantization():
    result = runner.invoke(app, ["export", "ckpt", "out", "--quantize", "int3"])
    assert result.exit_code == 2
    assert "int3" in result.output and "int8" in result.output and "int4" in result.output


def test_interactive_prompt_answers_until_ctrl_d(artifact_int8):
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: edgeqa on a terminal, with no question
        os.execv(
            sys.executable, [sys.executable, "-m", "edgeqa.cli", "ask", str(artifact_int8), "--max-new-tokens", "4"]
        )
    seen = b""

    def read_until(count: int) -> None:
        nonlocal seen
        deadline = time.time() + 60
        while seen.count(b"\n? ") + seen.startswith(b"? ") < count and time.time() < deadline:
            if select.select([fd], [], [], 1)[0]:
                seen += os.read(fd, 4096)
        seen = seen.replace(b"\r\n", b"\n")

    read_until(1)
    os.write(fd, b"Who wrote Hamlet?\n")
    read_until(2)
    os.write(fd, b"\x04")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode(errors="replace")
    assert "Ctrl-D to quit" in text and "Who wrote Hamlet?" in text
    answer = text.split("Who wrote Hamlet?\n", 1)[1].split("\n? ", 1)[0]
    assert answer.strip(), text
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_interactive_answers_to_a_file_are_json_without_the_prompt(artifact_int8, tmp_path):
    """stdout to a file, the person at the terminal: the prompt goes to the terminal, --json is honoured."""
    import os
    import pty
    import select
    import time

    out = tmp_path / "answers.jsonl"
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout to the file, stdin and stderr the terminal
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT), 1)
        os.execv(sys.executable, [sys.executable, "-m", "edgeqa.cli", "ask", str(artifact_int8), "--json"])
    seen, deadline = b"", time.time() + 60
    for question in (b"What is the capital of Peru?\n", b"\x04"):
        while seen.count(b"? ") < 1 + (question == b"\x04") and time.time() < deadline:
            if select.select([fd], [], [], 1)[0]:
                seen += os.read(fd, 4096)
        os.write(fd, question)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, seen
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["question"] == "What is the capital of Peru?" and row["answer"], row


def test_ctrl_c_while_answering_stops_that_answer_and_asks_the_next_question():
    from edgeqa.runtime.questions import converse

    class Person:
        interactive = True

        def __init__(self) -> None:
            self.typed, self.shown = ["first?", "second?"], []

        def read(self, prompt: str) -> str:
            if not self.typed:
                raise EOFError
            return self.typed.pop(0)

        def write(self, text: str) -> None:
            self.shown.append(text)

        def note(self, text: str) -> None:
            self.shown.append(text)

    def answer(question: str) -> None:
        if question == "first?":
            raise KeyboardInterrupt  # Ctrl-C mid-answer
        person.write(f"answer to {question}")

    person = Person()
    converse(person, "Ask.", answer)
    assert person.shown == ["Ask.", "\n", "(stopped)", "answer to second?", ""]


# ------------------------------------------------------------------ options derived from the configs

ASK_SAMPLE = dict(
    max_new_tokens=6,
    min_new_tokens=1,
    num_beams=1,
    length_penalty=0.5,
    early_stopping=True,
    do_sample=True,
    temperature=0.7,
    top_k=5,
    top_p=0.9,
    seed=3,
    no_repeat_ngram_size=2,
    repetition_penalty=1.2,
)


def _flags(sample: dict, names: dict[str, str] | None = None) -> list[str]:
    """Command-line words that set each field of `sample`, spelled as the CLI derives them."""
    words = []
    for name, value in sample.items():
        flag = (names or {}).get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            words.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            words += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return words


def test_every_generation_option_is_a_flag_of_ask(artifact_int8, monkeypatch):
    from edgeqa.runtime import GenerationOptions, QAModel

    assert set(ASK_SAMPLE) == {f.name for f in dataclasses.fields(GenerationOptions)}
    seen = {}
    real = QAModel.answer

    def spy(self, question, options=None, context=None):
        seen["options"] = options
        return real(self, question, options, context)

    monkeypatch.setattr(QAModel, "answer", spy)
    result = runner.invoke(app, ["ask", str(artifact_int8), "Hi?", *_flags(ASK_SAMPLE, {"do_sample": "--sample"})])
    assert result.exit_code == 0, result.output
    assert seen["options"] == GenerationOptions(**ASK_SAMPLE)


def test_every_finetune_config_field_is_a_flag(monkeypatch, tmp_path):
    import edgeqa.finetune as finetune_module
    from edgeqa.finetune import FinetuneConfig, FinetuneResult

    sample = dict(
        model="m",
        data="d.jsonl",
        output_dir=str(tmp_path / "run"),
        tokenizer="t",
        question_column="q",
        answer_column="a",
        context_column="passage",
        prompt_template="Q: {question}",
        context_template="P: {context} Q: {question}",
        no_answer="no idea",
        max_source_tokens=64,
        max_target_tokens=32,
        validation_fraction=0.2,
        seed=7,
        max_train_samples=10,
        max_eval_samples=5,
        learning_rate=0.001,
        batch_size=4,
        eval_batch_size=16,
        weight_decay=0.1,
        epochs=2.0,
        max_steps=9,
        save_total_limit=2,
        eval_max_new_tokens=40,
        eval_num_beams=2,
        device="cpu",
        precision="fp32",
        logging_steps=5,
        resume=False,
        overwrite=True,
        recipe="tutorial",
        length_grouping="answer",
        pad_to_multiple_of=32,
        torch_compile=True,
        lr_scaling="sqrt",
        eval_subset=50,
    )
    assert set(sample) == {f.name for f in dataclasses.fields(FinetuneConfig)}
    seen = {}

    def fake(config, **options):
        seen["config"], seen["options"] = config, options
        return FinetuneResult(Path(config.output_dir) / "final", 3, [], None)

    monkeypatch.setattr(finetune_module, "finetune", fake)
    result = runner.invoke(app, ["finetune", *_flags(sample, {"learning_rate": "--lr", "output_dir": "--output"})])
    assert result.exit_code == 0, result.output
    assert seen["config"] == FinetuneConfig(**sample)
    assert seen["options"] == {"progress_bars": False}, "progress bars only with --verbose"


def test_every_export_config_field_is_an_option(monkeypatch, tmp_path):
    import edgeqa.export as export_module
    from edgeqa.export import ExportConfig

    (tmp_path / "held.jsonl").write_text('{"question": "q?", "answer": "a"}\n')
    sample = dict(
        quantize="int4",
        preset="avx2",
        keep_fp32=("lm_head", "wo"),
        fallback="smooth",
        parity=False,
        parity_data=str(tmp_path / "held.jsonl"),
        parity_samples=10,
        parity_max_new_tokens=8,
        allow_parity_failure=True,
        force=True,
        threads=1,
        max_input_tokens=512,
    )
    assert set(sample) | {"checkpoint", "output"} == {f.name for f in dataclasses.fields(ExportConfig)}
    seen = {}

    def fake(config):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(export_module, "export_artifact", fake)
    result = runner.invoke(app, ["export", "ckpt", str(tmp_path / "out"), *_flags(sample)])
    assert result.exit_code == 0, result.output
    assert seen["config"] == ExportConfig(checkpoint="ckpt", output=tmp_path / "out", **sample)


@pytest.mark.parametrize(
    "module, name",
    [
        ("edgeqa.runtime.options", "GenerationOptions"),
        ("edgeqa.finetune.config", "FinetuneConfig"),
        ("edgeqa.export.config", "ExportConfig"),
    ],
)
def test_every_config_field_has_help(module, name):
    import importlib

    from edgeqa.cli_fields import field_docs

    cls = getattr(importlib.import_module(module), name)
    docs = field_docs(cls)
    assert {f.name for f in dataclasses.fields(cls)} == set(docs)
    assert all(len(text) > 8 for text in docs.values()), docs


def test_a_bad_export_option_fails_before_torch_or_optimum_is_imported(tmp_path):
    """`--preset bogus` and a --keep-fp32 that names nothing fail at once, not after the ONNX export."""
    code = (
        "import sys; from edgeqa.cli import main; sys.argv = ['edgeqa'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n"
        "    heavy = sorted({'torch', 'optimum', 'transformers', 'onnx'} & set(sys.modules))\n"
        "    print('heavy:', heavy); raise\n"
    )
    for args, message in (
        (["--preset", "bogus"], "'bogus' is not one of"),
        (["--quantize", "--keep-fp32", "lm_haed"], "keep_fp32 lm_haed names no part"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", code, "export", "ckpt", str(tmp_path / "out"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode in (1, 2) and message in result.stderr.replace("\n", " "), result.stderr
        assert "heavy: []" in result.stdout, result.stdout
