"""Fine-tuning: data loading and its errors, a real learning signal, resume after a kill, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import TINY, build_t5, hf_generate, short_records, write_jsonl
from edgeqa.checkpoint import read_training_record
from edgeqa.errors import ConfigError, DataError, ModelError
from edgeqa.finetune import FinetuneConfig
from edgeqa.metrics import rouge
from edgeqa.prompt import PROMPT_TEMPLATE

pytest.importorskip("torch")
pytest.importorskip("datasets")

from edgeqa.finetune.data import load_raw, prepare_splits  # noqa: E402  (needs the train extra)


def finetune_command(model: Path, data: Path, out: Path, epochs: int) -> list[str]:
    """`-m edgeqa.cli finetune ...` for a short CPU run, after `python` or a launcher."""
    return ["-m", "edgeqa.cli", "finetune", "--model", str(model), "--data", str(data), "-o", str(out)] + [
        "--epochs",
        str(epochs),
        "--eval-max-new-tokens",
        "4",
    ]


def config(data: Path | str, **fields) -> FinetuneConfig:
    return FinetuneConfig(model="unused", data=str(data), **fields)


@pytest.fixture
def rows() -> list[dict]:
    return short_records(20)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_each_format_loads_and_splits_70_30(tmp_path, rows, suffix):
    import pandas as pd

    path = tmp_path / f"qa{suffix}"
    frame = pd.DataFrame(rows)
    {
        ".jsonl": lambda: write_jsonl(path, rows),
        ".json": lambda: path.write_text(json.dumps(rows)),
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    train, validation = prepare_splits(load_raw(config(path)), config(path))
    assert (len(train), len(validation)) == (14, 6)
    assert train.column_names == ["question", "answer"]


def test_split_is_seeded(tmp_path, rows):
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    first = prepare_splits(load_raw(config(path)), config(path))[1]["question"]
    again = prepare_splits(load_raw(config(path)), config(path))[1]["question"]
    other = prepare_splits(load_raw(config(path, seed=1)), config(path, seed=1))[1]["question"]
    assert first == again and first != other


def test_folder_with_splits_and_sample_limits(tmp_path, rows):
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", rows[:5])
    write_jsonl(tmp_path / "test.jsonl", rows[:3])
    raw = load_raw(config(tmp_path))
    assert set(raw) == {"train", "validation", "test"}
    train, validation = prepare_splits(raw, config(tmp_path, max_train_samples=4, max_eval_samples=2))
    assert (len(train), len(validation)) == (4, 2)


def test_nfl6_style_json_with_custom_columns(tmp_path):
    records = [
        {"question": f"q{i}?", "answer": f"a{i}", "nbestanswers": [f"a{i}"], "main_category": "x"} for i in range(10)
    ]
    path = tmp_path / "nfL6.json"
    path.write_text(json.dumps(records))
    cfg = config(path, question_column="question", answer_column="answer")
    train, validation = prepare_splits(load_raw(cfg), cfg)
    assert len(train) + len(validation) == 10


def test_bad_column_lists_the_available_ones(tmp_path, rows):
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = config(path, answer_column="response")
    with pytest.raises(DataError, match=r"'response' \(--answer-column\).*one of: question, answer, category"):
        prepare_splits(load_raw(cfg), cfg)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_raw(config(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        load_raw(config(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="unsupported type"):
        (tmp_path / "qa.txt").write_text("hello")
        load_raw(config(tmp_path / "qa.txt"))


@pytest.mark.parametrize(
    "files, message",
    [
        ({"qa.jsonl": b'{"question": "Q?", "answer": "A"}\n{"question": "Q2?", "answer": "caf\xe9"}\n'},
         r"qa.jsonl is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8"),
        ({"qa.csv": b"question,answer\nQ?,\xff\n"}, r"qa.csv is not UTF-8 text \(byte 0xff on line 2\)"),
        ({"qa.jsonl": b'{"question": "Q?", "answer": "A"}\n{"question": "Q2?", "answer": \n'},
         r"line 2 of .*qa.jsonl is not valid JSON \(Expecting value\); fix or remove it"),
        ({"qa.jsonl": b'{"question": "Q?", "answer": "A"}\n[1, 2]\n'}, r"line 2 of .*qa.jsonl is not a JSON object"),
        ({"d/train.csv": b"question,answer\n"}, r"holds no records \(a header or blank lines only\)"),
        ({"d/train.csv": b"question,answer\nQ,A\n", "d/train.jsonl": b'{"question": "Q", "answer": "A"}\n'},
         r"has two train files, train.csv and train.jsonl; keep one"),
        ({"d/train.jsonl": b'{"question": "Q", "answer": "A"}\n' * 4, "d/validation.jsonl": b'{"q": "Q", "a": "A"}\n'},
         r"cannot read .*d: .*; check that every file is JSON Lines, JSON, CSV or Parquet, with the same columns"),
    ],
)
def test_unreadable_data_is_one_line_naming_the_file_and_the_line(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    target = tmp_path / next(iter(files)).split("/")[0]
    with pytest.raises(DataError, match=message):
        cfg = config(target)
        prepare_splits(load_raw(cfg), cfg)


def test_na_words_and_numbers_among_texts_are_answers(tmp_path, caplog):
    csv = tmp_path / "qa.csv"  # pandas reads None, NA, N/A as missing by default
    csv.write_text("question,answer\nQ1?,None\nQ2?,NA\nQ3?,Paris\nQ4?,N/A\n")
    cfg = config(csv, validation_fraction=0.5)
    assert sorted(a for split in prepare_splits(load_raw(cfg), cfg) for a in split["answer"]) == sorted(
        ["None", "NA", "Paris", "N/A"]
    )
    rows = [{"question": f"Q{i}?", "answer": i if i % 2 else f"A{i}"} for i in range(6)]  # datasets: a Json column
    mixed = write_jsonl(tmp_path / "mixed.jsonl", rows)
    mixed_cfg = config(mixed, validation_fraction=0.5)
    with caplog.at_level("WARNING"):
        answers = [a for split in prepare_splits(load_raw(mixed_cfg), mixed_cfg) for a in split["answer"]]
    assert sorted(answers) == ["1", "3", "5", "A0", "A2", "A4"] and "left out" not in caplog.text


def test_hub_dataset_offline_says_how_to_pass_a_file():
    with pytest.raises(DataError, match="--data train.jsonl"):
        load_raw(config("some-user/some-qa-dataset"))


def test_yahoo_answers_offline_asks_for_the_network_or_a_local_copy(monkeypatch):
    monkeypatch.delenv("EDGEQA_YAHOO_ANSWERS_URL", raising=False)
    with pytest.raises(DataError, match="needs the network, or a local copy") as error:
        load_raw(config("yahoo_answers_qa"))
    assert "nfL6.json.gz" in str(error.value) and "\n" not in str(error.value)


def nfl6_records(count: int) -> list[dict]:
    """Records in the layout of the tutorial's nfL6.json (a JSON list, not JSON lines)."""
    return [
        {
            "id": str(i),
            "question": f"why q{i}?",
            "answer": f"because a{i}",
            "nbestanswers": [f"because a{i}", "x"],
            "main_category": "Science",
        }
        for i in range(count)
    ]


@pytest.fixture
def loopback_only(monkeypatch):
    """Refuse every socket connection except to 127.0.0.1."""
    import socket

    connect = socket.socket.connect

    def guarded(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise OSError(f"test refused a connection to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def test_yahoo_answers_downloads_nfl6_over_http(tmp_path, monkeypatch, loopback_only):
    """`--data yahoo_answers_qa`: datasets' json builder really fetches the gzipped JSON list from the URL."""
    import gzip
    import http.server
    import threading
    from functools import partial

    import datasets

    served = tmp_path / "served"
    served.mkdir()
    (served / "nfL6.json.gz").write_bytes(gzip.compress(json.dumps(nfl6_records(10)).encode()))
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(flag, raising=False)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
        monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", tmp_path / "cache" / "downloads")
        monkeypatch.setenv("EDGEQA_YAHOO_ANSWERS_URL", f"http://127.0.0.1:{server.server_port}/nfL6.json.gz")
        raw = load_raw(config("yahoo_answers_qa"))
    finally:
        server.shutdown()
        server.server_close()
    assert any(path.endswith("/nfL6.json.gz") for path in requests), requests
    assert len(raw["train"]) == 10
    assert set(raw["train"].column_names) == {"id", "question", "answer", "nbestanswers", "main_category"}
    train, validation = prepare_splits(raw, config("yahoo_answers_qa"))
    assert (len(train), len(validation)) == (7, 3)
    assert sorted([*train["answer"], *validation["answer"]]) == sorted(f"because a{i}" for i in range(10))


def test_yahoo_answers_from_a_local_copy(tmp_path, monkeypatch):
    import gzip

    copy = tmp_path / "nfL6.json.gz"
    copy.write_bytes(gzip.compress(json.dumps(nfl6_records(6)).encode()))
    monkeypatch.setenv("EDGEQA_YAHOO_ANSWERS_URL", str(copy))
    assert len(load_raw(config("yahoo_answers_qa"))["train"]) == 6


def test_missing_model_says_how_to_pass_a_folder(tmp_path, rows):
    from edgeqa.finetune.train import load_model

    with pytest.raises(ModelError, match="local checkpoint folder"):
        load_model(FinetuneConfig(model="google/flan-t5-base", data=str(tmp_path)))
    with pytest.raises(ConfigError, match="no-model' is not a folder"):  # a path, not a hub name: at once
        FinetuneConfig(model=str(tmp_path / "no-model"), data=str(tmp_path))


@pytest.mark.parametrize("model_type", ["gpt2", "mt5"])
def test_a_model_edgeqa_cannot_export_is_refused_before_training(tmp_path, model_type):
    from transformers import AutoConfig

    from edgeqa.finetune.train import load_model

    AutoConfig.for_model(model_type).save_pretrained(tmp_path / model_type)  # no weights needed: refused first
    with pytest.raises(ModelError, match=f"is a {model_type} model; edgeqa fine-tunes and exports T5 models"):
        load_model(FinetuneConfig(model=str(tmp_path / model_type), data=str(tmp_path)))


def test_export_and_parity_read_a_bf16_checkpoint_in_float32(tmp_path, tiny_model):
    """A bf16 run's `final/` is the fp32 model export measures against, on both transformers lines (5 would
    otherwise load it in bf16, and the gate compare the artifact with a rounded model)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from edgeqa.export.loading import load_model

    AutoModelForSeq2SeqLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = load_model(tmp_path / "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.float32} and not model.training


def test_flan_t5_keeps_its_own_lm_head(tiny_model):
    """transformers 5 ties T5's lm_head to the embedding in every config: FLAN-T5's stays its own, also after
    a later `tie_weights()` (accelerate calls one when FSDP 2 shards the model), and the encoder and decoder
    embed with the `shared` module itself (FSDP 2 refuses one weight in two units)."""
    import torch
    from safetensors.torch import load_file

    from edgeqa.finetune.train import load_model

    model, _ = load_model(FinetuneConfig(model=str(tiny_model), data="unused"))
    model.tie_weights()
    assert model.lm_head.weight is not model.shared.weight
    assert model.encoder.embed_tokens is model.shared and model.decoder.embed_tokens is model.shared
    assert torch.equal(model.lm_head.weight, load_file(tiny_model / "model.safetensors")["lm_head.weight"])


def test_config_validation_and_toml(tmp_path):
    with pytest.raises(ConfigError, match="fp16 overflows"):
        FinetuneConfig(precision="fp16")
    with pytest.raises(ConfigError, match="exactly once"):
        FinetuneConfig(prompt_template="Answer:")
    (tmp_path / "run.toml").write_text('model = "m"\nepochs = 2\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown config key.*bogus.*valid:"):
        FinetuneConfig.from_toml(tmp_path / "run.toml")
    (tmp_path / "run.toml").write_text('model = "m"\nepochs = 2\n')
    assert FinetuneConfig.from_toml(tmp_path / "run.toml").epochs == 2


def test_recipes_and_speed_settings_reach_the_trainer(tmp_path):
    from edgeqa.finetune.train import resolve_precision
    from edgeqa.finetune.trainer import accelerate_environment_kept, groups_by_length, training_arguments

    def args(**fields):
        cfg = FinetuneConfig(output_dir=tmp_path, device="cpu", **fields)
        with accelerate_environment_kept():
            return training_arguments(cfg, *resolve_precision(cfg))

    launched_with = os.environ.get("ACCELERATE_DYNAMO_BACKEND")
    edgeqa, tutorial = args(), args(recipe="tutorial")
    assert (groups_by_length(edgeqa), edgeqa.logging_nan_inf_filter) == (True, False)
    assert (groups_by_length(tutorial), tutorial.logging_nan_inf_filter, tutorial.bf16) == (False, True, False)
    assert groups_by_length(args(length_grouping="answer")) is False  # edgeqa's own sampler does it
    assert args(torch_compile=True).torch_compile is True
    # transformers 4.x hands it to accelerate as ACCELERATE_DYNAMO_BACKEND: left there, every later run would compile
    assert os.environ.get("ACCELERATE_DYNAMO_BACKEND") == launched_with
    # A global batch of 32 is 4 x the tutorial's 8: sqrt scaling doubles the learning rate, linear quadruples it.
    assert args(batch_size=32, lr_scaling="sqrt").learning_rate == pytest.approx(6e-4)
    assert args(batch_size=32).learning_rate == pytest.approx(3e-4)
    assert FinetuneConfig(batch_size=16, lr_scaling="linear").learning_rate_for(processes=2) == pytest.approx(1.2e-3)
    with pytest.raises(ConfigError, match="length_grouping 'labels' is not one of auto, none, prompt, answer"):
        FinetuneConfig(length_grouping="labels")
    with pytest.raises(ConfigError, match="recipe 'nanot5' is not one of edgeqa, tutorial"):
        FinetuneConfig(recipe="nanot5")
    with pytest.raises(ConfigError, match="pad_to_multiple_of must be at least 1"):
        FinetuneConfig(pad_to_multiple_of=0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", float("nan"), "epochs must be a finite number, got nan"),
        ("epochs", float("inf"), "epochs must be a finite number, got inf"),
        ("learning_rate", float("nan"), "learning_rate must be a finite number"),
        ("weight_decay", float("nan"), "weight_decay must be a finite number"),
        ("weight_decay", -1.0, "weight_decay must be 0 or more, got -1.0"),
        ("seed", -1, r"seed must be from 0 to 2\*\*32 - 1, got -1"),
        ("seed", 2**32, r"seed must be from 0 to 2\*\*32 - 1, got 4294967296"),
    ],
)
def test_numbers_the_trainer_cannot_use_are_refused_before_anything_loads(field, value, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**{field: value})
    FinetuneConfig(**{field: {"epochs": 0.5, "learning_rate": 1e-3, "weight_decay": 0.0, "seed": 2**32 - 1}[field]})


def test_a_context_column_is_read_with_the_context_template_and_never_cut(tmp_path, tiny_model, caplog):
    from transformers import AutoTokenizer

    from edgeqa.finetune.data import heldout_record, tokenize
    from edgeqa.finetune.train import training_record

    rows = [
        {"question": "Who wrote it?", "answer": "Ann", "context": "Ann wrote the report."},
        {"question": "What is the capital of France?", "answer": "Paris", "context": ""},  # asked alone
        {"question": "Where is it?", "answer": "Oslo", "context": "It is in Oslo. " + "More words here. " * 40},
    ]
    path = tmp_path / "data"
    path.mkdir()
    write_jsonl(path / "train.jsonl", rows * 2)
    write_jsonl(path / "validation.jsonl", rows)
    cfg = config(path, context_column="context", max_source_tokens=48)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    train = prepare_splits(load_raw(cfg), cfg)[0]
    with caplog.at_level("WARNING"):
        encoded = tokenize(train, tokenizer, cfg)
    prompts = sorted(tokenizer.batch_decode(list(encoded["input_ids"]), skip_special_tokens=True))
    too_long = sum("More words" in (r["context"] or "") for r in train)
    assert len(prompts) == len(train) - too_long and too_long == 2
    assert f"left out {too_long} of {len(train)} records" in caplog.text
    read = [p for p in prompts if p.startswith("Read this and answer the question")]
    alone = [p for p in prompts if p.startswith("Please answer this question")]
    assert len(read) + len(alone) == len(prompts) and all("Ann wrote the report. Who wrote it?" in p for p in read)
    assert heldout_record(rows[0], cfg, tokenizer) == rows[0]
    assert heldout_record(rows[1], cfg, tokenizer) == {"question": rows[1]["question"], "answer": "Paris"}
    assert heldout_record(rows[2], cfg, tokenizer) is None  # the gate would refuse it
    custom = FinetuneConfig(context_template="Passage: {context}\nQ: {question}")
    assert training_record(custom, 1).context_template == "Passage: {context}\nQ: {question}"
    with pytest.raises(ConfigError, match="must contain the fields {context} and {question}"):
        FinetuneConfig(context_template="{question} only")
    with pytest.raises(DataError, match="column 'passage' .*--context-column.* one of: question, answer, context"):
        prepare_splits(load_raw(config(path, context_column="passage")), config(path, context_column="passage"))


def test_the_saved_step_is_the_best_checkpoints_and_a_bad_split_is_one_line(tmp_path, rows):
    from types import SimpleNamespace

    from edgeqa.finetune.train import saved_step

    assert saved_step(SimpleNamespace(best_model_checkpoint="runs/qa/checkpoint-100", global_step=300)) == 100
    assert saved_step(SimpleNamespace(best_model_checkpoint=None, global_step=300)) == 300
    write_jsonl(tmp_path / "train.jsonl", rows[:3])
    cfg = config(tmp_path, validation_fraction=0.8)
    with pytest.raises(DataError, match="has 3 records: --validation-fraction 0.8 leaves none to train on"):
        prepare_splits(load_raw(cfg), cfg)


def test_a_passage_without_an_answer_trains_no_answer_and_incomplete_records_are_named(tmp_path, caplog):
    rows = [
        {"question": "Who wrote it?", "answer": "Ann", "context": "Ann wrote the report."},
        {"question": "Who painted it?", "answer": "", "context": "Ann wrote the report."},  # SQuAD 2.0's kind
        {"question": "Who?", "answer": "", "context": ""},  # neither: left out
        {"question": " ", "answer": "Bo", "context": "Bo ran."},  # no question: left out
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", rows[:2])
    cfg = config(tmp_path, context_column="context", no_answer="no answer here")
    with caplog.at_level("WARNING"):
        train, validation = prepare_splits(load_raw(cfg), cfg)
    assert [r["answer"] for r in train] == ["Ann", "no answer here"]
    assert [r["answer"] for r in validation] == ["Ann", "no answer here"]
    assert "left out 2 of 4 records whose question or answer is missing, empty or not text" in caplog.text
    plain = config(tmp_path)  # without passages an empty answer is just incomplete
    assert [r["answer"] for r in prepare_splits(load_raw(plain), plain)[0]] == ["Ann"]
    (numbers := tmp_path / "numbers").mkdir()  # a column of numbers (years, counts) holds answers, not missing ones
    rows = [{"question": f"When? ({n})", "answer": 1900 + n, "context": f"In {1900 + n}."} for n in range(4)]
    write_jsonl(numbers / "train.jsonl", rows)
    write_jsonl(numbers / "validation.jsonl", rows[:1])
    cfg = config(numbers, context_column="context")
    assert [r["answer"] for r in prepare_splits(load_raw(cfg), cfg)[0]] == ["1900", "1901", "1902", "1903"]


def padding_shares(tiny_model: Path, tmp_path: Path, **fields) -> tuple[float, set[tuple[int, int]]]:
    """Share of padding in the answers of one epoch of training batches, and the batch shapes seen."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, T5ForConditionalGeneration

    from edgeqa.finetune.data import tokenize
    from edgeqa.finetune.train import resolve_precision
    from edgeqa.finetune.trainer import EdgeQATrainer, accelerate_environment_kept, training_arguments
    from edgeqa.records import BUNDLED_QA

    cfg = FinetuneConfig(model=str(tiny_model), data=str(BUNDLED_QA), output_dir=tmp_path, device="cpu", **fields)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = T5ForConditionalGeneration.from_pretrained(tiny_model)
    train = tokenize(prepare_splits(load_raw(cfg), cfg)[0], tokenizer, cfg)
    lengths = [len(ids) for ids in train["labels"]] if cfg.grouping == "answer" else None
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=cfg.pad_to_multiple_of)
    with accelerate_environment_kept():
        args = training_arguments(cfg, *resolve_precision(cfg))
        trainer = EdgeQATrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=train,
            data_collator=collator,
            answer_lengths=lengths,
        )
    padded = total = 0
    shapes = set()
    for batch in trainer.get_train_dataloader():
        padded += int((batch["labels"] == -100).sum())
        total += batch["labels"].numel()
        shapes.add((batch["input_ids"].shape[1], batch["labels"].shape[1]))
    return padded / total, shapes


def test_answer_length_batches_cut_the_padding(tiny_model, tmp_path):
    """On the bundled data (answers of a few to 512 tokens) most answer tokens in a batch are padding, unless
    batches are grouped by answer length; transformers' prompt-length grouping does not help there."""
    plain, _ = padding_shares(tiny_model, tmp_path, length_grouping="none")
    prompt, _ = padding_shares(tiny_model, tmp_path, length_grouping="prompt")
    answer, _ = padding_shares(tiny_model, tmp_path, length_grouping="answer")
    padded, shapes = padding_shares(tiny_model, tmp_path, length_grouping="answer", pad_to_multiple_of=32)
    print(f"\nanswer padding: plain {plain:.0%}, prompt-grouped {prompt:.0%}, answer-grouped {answer:.0%}")
    assert plain > 0.5 and prompt > 0.5 and answer < plain / 3
    assert all(source % 32 == 0 and target % 32 == 0 for source, target in shapes)
    assert len(shapes) <= (128 // 32) * (512 // 32)  # a bounded set of shapes for torch.compile


def test_validation_subset_each_epoch_then_the_full_set(tmp_path, tiny_model, memo_data, monkeypatch):
    from edgeqa.finetune import finetune, metrics_table
    from edgeqa.finetune.trainer import HANDED_TO_ACCELERATE

    for key in [k for k in os.environ if k.startswith(HANDED_TO_ACCELERATE)]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # as `accelerate launch` sets it
    environment = dict(os.environ)
    result = finetune(
        FinetuneConfig(
            model=str(tiny_model),
            data=str(memo_data),
            output_dir=tmp_path / "run",
            epochs=2,
            eval_subset=8,
            eval_batch_size=64,
            eval_max_new_tokens=4,
            length_grouping="answer",
            pad_to_multiple_of=8,
            device="cpu",
        )
    )
    evaluated = [round(e["eval_runtime"] * e["eval_samples_per_second"]) for e in result.history]
    assert evaluated == [8, 8, 64] and [e.get("validation") for e in result.history] == [None, None, "full"]
    assert "(full validation)" in metrics_table(result.history).splitlines()[-1]
    assert dict(os.environ) == environment  # nothing handed to accelerate outlives the run
    saved = json.loads((result.final_dir / "edgeqa_config.json").read_text())
    assert (saved["config"]["eval_subset"], saved["config"]["length_grouping"]) == (8, "answer")


def test_non_empty_output_is_refused(tmp_path, memo_data, tiny_model):
    from edgeqa.finetune import finetune

    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="--resume .* or --overwrite"):
        finetune(FinetuneConfig(model=str(tiny_model), data=str(memo_data), output_dir=tmp_path))
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        finetune(FinetuneConfig(model=str(tiny_model), data=str(memo_data), output_dir=tmp_path, resume=True))
    with pytest.raises(ConfigError, match=r"not from an edgeqa run \(old.txt\); pick another --output"):
        finetune(FinetuneConfig(model=str(tiny_model), data=str(memo_data), output_dir=tmp_path, overwrite=True))
    assert (tmp_path / "old.txt").exists()


def test_an_output_that_is_a_file_or_cannot_be_made_is_refused_before_anything_loads(tmp_path, tiny_model, monkeypatch):
    from edgeqa.finetune import finetune, train

    monkeypatch.setattr(train, "load_raw", lambda config: pytest.fail("data loaded before the output was checked"))
    (tmp_path / "a-file").write_text("mine")
    for output, message in [
        (tmp_path / "a-file", r"--output .*a-file is a file; pass a folder for the run"),
        (tmp_path / "a-file" / "run", r"cannot create the run folder .*a-file/run: Not a directory; pick another"),
    ]:
        with pytest.raises(ConfigError, match=message):
            finetune(FinetuneConfig(model=str(tiny_model), data="unused.jsonl", output_dir=output))
    assert (tmp_path / "a-file").read_text() == "mine"
    started = tmp_path / "started"  # a run that ended before its first checkpoint left only its settings
    started.mkdir()
    (started / "edgeqa_run.json").write_text("{}")
    assert train.prepare_output_dir(FinetuneConfig(model=str(tiny_model), output_dir=started)) is None


def test_overwrite_deletes_only_a_previous_run_and_only_once_the_run_can_start(tmp_path, memo_data, tiny_model):
    from edgeqa.finetune import finetune

    def previous_run(folder: Path, *extra: str) -> Path:
        (folder / "checkpoint-900").mkdir(parents=True)
        (folder / "checkpoint-900" / "model.safetensors").write_text("old")
        (folder / "metrics.json").write_text("[]")
        for name in extra:
            (folder / name).write_text("user's")
        return folder

    mixed = previous_run(tmp_path / "mixed", "final_report.docx", "metrics.json.bak", "runs_notes.txt")
    with pytest.raises(ConfigError, match=r"not from an edgeqa run \(final_report.docx, metrics.json.bak, runs_"):
        finetune(FinetuneConfig(model=str(tiny_model), data=str(memo_data), output_dir=mixed, overwrite=True))
    assert sorted(p.name for p in mixed.iterdir())[:2] == ["checkpoint-900", "final_report.docx"]

    run = previous_run(tmp_path / "run")
    (run / "metrics.json.tmp").write_text("[]")  # what an older edgeqa, killed, left
    with pytest.raises(DataError, match="does not exist"):
        finetune(FinetuneConfig(model=str(tiny_model), data=f"{tmp_path}/a.jsonl", output_dir=run, overwrite=True))
    empty = tmp_path / "not-a-model"  # a folder without config.json: refused when the model loads
    empty.mkdir()
    with pytest.raises(ModelError):
        finetune(FinetuneConfig(model=str(empty), data=str(memo_data), output_dir=run, overwrite=True))
    assert (run / "checkpoint-900" / "model.safetensors").read_text() == "old"  # a run that cannot start keeps it

    short = dict(max_steps=2, max_eval_samples=4, eval_max_new_tokens=4, device="cpu", overwrite=True)
    result = finetune(FinetuneConfig(model=str(tiny_model), data=str(memo_data), output_dir=run, **short))
    assert not (run / "checkpoint-900" / "model.safetensors").exists() and result.final_dir.is_dir()
    assert [e["step"] for e in json.loads((run / "metrics.json").read_text())] == [2]


def test_training_raises_rouge_on_training_questions(trained_run, tiny_model, memo_data):
    """96 steps on 64 questions: ROUGE-L on those questions rises well above the untrained model's."""
    rows = [json.loads(line) for line in (memo_data / "train.jsonl").read_text().splitlines()]
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]

    def rouge_l(checkpoint: Path) -> float:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        ids = hf_generate(checkpoint, questions, 16, max_new_tokens=16)
        return rouge(tokenizer.batch_decode(ids, skip_special_tokens=True), answers)["rougeL"]

    before, after = rouge_l(tiny_model), rouge_l(trained_run / "final")
    print(f"\nROUGE-L on the 64 training questions: untrained {before:.4f}, after 96 steps {after:.4f}")
    history = json.loads((trained_run / "metrics.json").read_text())
    # ROUGE of a 9k-parameter model moves little (0.03-0.04 after 96 steps, run to run); the loss is the steady signal
    assert after > before, (before, after)
    assert history[-1]["eval_loss"] < 0.8 * history[0]["eval_loss"], [e["eval_loss"] for e in history]
    assert len(history) == 12 and {"eval_rougeL", "eval_gen_len", "epoch"} <= set(history[0])
    saved = read_training_record(trained_run / "final")
    assert saved and saved.prompt_template == PROMPT_TEMPLATE and saved.eval_max_new_tokens == 16
    best = max(history, key=lambda e: (e["eval_rougeL"], -e["step"]))  # the Trainer keeps the first best
    assert saved.global_step == best["step"]  # the saved model's step, not the last one's
    # what transformers 4.57 and 5.x both read as this model: FLAN-T5's own lm_head, untied; the extra ids
    config = json.loads((trained_run / "final" / "config.json").read_text())
    tokenizer = json.loads((trained_run / "final" / "tokenizer_config.json").read_text())
    assert (config["tie_word_embeddings"], config["use_cache"]) == (False, True)
    assert not isinstance(tokenizer.get("extra_special_tokens"), list)
    assert saved.config["learning_rate"] == 1.5e-2
    assert (trained_run / "final" / "edgeqa_heldout.jsonl").read_text().count("\n") == 64


KILL_AFTER_FIRST_SAVE = """
import os, signal, sys
from transformers import TrainerCallback
from edgeqa.finetune import FinetuneConfig, finetune

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

finetune(FinetuneConfig(model=sys.argv[1], data=sys.argv[2], output_dir=sys.argv[3], epochs=3,
                        eval_max_new_tokens=4, device="cpu"), callbacks=[Kill()])
"""


def test_resume_after_kill_finishes_at_the_same_step(tmp_path, tiny_model, memo_data):
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILL_AFTER_FIRST_SAVE))
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(memo_data), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoint-8").is_dir() and not (out / "final").exists()
    # the next save cut off as a kill or a full disk leaves it: weights, but no trainer_state.json (written last)
    shutil.copytree(out / "checkpoint-8", out / "checkpoint-16")
    (out / "checkpoint-16" / "trainer_state.json").unlink()
    (out / "checkpoint-16" / "model.safetensors").write_bytes(b"\0" * 8)

    resumed = subprocess.run(
        [
            sys.executable,
            *finetune_command(tiny_model, memo_data, out, epochs=3),
            "--device",
            "cpu",
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    own = ("data: ", "resuming from ", "step ", "saved the best model", f"{out}/checkpoint-16 was cut off")
    assert all(line.startswith(own) for line in resumed.stderr.splitlines()), resumed.stderr  # edgeqa's log only
    assert f"resuming from {out}/checkpoint-8" in resumed.stderr
    assert " of 24)" in resumed.stdout  # 3 epochs x 64 records / batch 8, as an uninterrupted run
    assert (out / "final" / "model.safetensors").is_file()
    assert [e["step"] for e in json.loads((out / "metrics.json").read_text())] == [8, 16, 24]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("final")) == ["final"]


def test_a_cut_off_checkpoint_is_passed_over_on_resume_and_damaged_weights_are_one_line(tmp_path, tiny_model):
    from edgeqa.finetune.train import last_complete_checkpoint, load_model

    for step, state in ((8, "{}"), (16, None), (24, '{"global_')):  # 16: no state yet; 24: cut off mid-write
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]  # the cut-off ones are gone
    (tmp_path / "checkpoint-8" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(tmp_path) is None

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model, damaged)
    weights = damaged / "model.safetensors"
    for content in (b"", weights.read_bytes()[:100], b"\xff" * 8 + weights.read_bytes()[8:]):
        weights.write_bytes(content)
        with pytest.raises(ModelError, match="model.safetensors is truncated or not a safetensors file"):
            load_model(FinetuneConfig(model=str(damaged), data="unused"))
    (damaged / "config.json").unlink()
    with pytest.raises(ModelError, match="has no config.json; pass the folder that holds the model's config.json"):
        load_model(FinetuneConfig(model=str(damaged), data="unused"))


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path, memo_data):
    model = build_t5(tmp_path / "model", **TINY)
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            *finetune_command(model, memo_data, out, epochs=2),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"TMPDIR": str(tmp_path)},  # torchrun leaves a torchelastic_* folder in TMPDIR
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert " of 8)" in result.stdout  # 64 records / (2 processes x batch 8) = 4 steps an epoch
    assert result.stdout.count("best checkpoint") == 1
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp", "fsdp", "zero3"])
def test_two_process_accelerate_launch(tmp_path, memo_data, tiny_model, launcher):
    """`accelerate launch` with edgeqa's shipped config, unchanged, on 2 CPU processes (gloo)."""
    from edgeqa.finetune.launchers import accelerate_config

    env = os.environ | {"TMPDIR": str(tmp_path)}  # the launcher leaves a torchelastic_* folder in TMPDIR
    if launcher == "fsdp":  # accelerate runs FSDP on accelerators only; see tests/fsdp_on_cpu/
        env |= {"EDGEQA_TEST_FSDP_ON_CPU": "1", "PYTHONPATH": str(Path(__file__).parent / "fsdp_on_cpu")}
    if launcher == "zero3":
        pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(accelerate_config(launcher)),
            "--num_processes",
            "2",
            *finetune_command(tiny_model, memo_data, out, epochs=2),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert " of 8)" in result.stdout  # 64 records / (2 processes x batch 8) = 4 steps an epoch
    assert result.stdout.count("best checkpoint") == 1
    checkpoint = out / "checkpoint-4"
    sharded = {
        "ddp": [checkpoint / "model.safetensors"],
        "fsdp": [checkpoint / "pytorch_model_fsdp_0"],  # one sharded (DCP) state dict, written by both ranks
        "zero3": [checkpoint / "global_step4" / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)],
    }[launcher]
    assert all(p.exists() for p in sharded), sorted(p.name for p in checkpoint.iterdir())

    from transformers import T5ForConditionalGeneration

    before = dict(T5ForConditionalGeneration.from_pretrained(tiny_model).named_parameters())
    after = T5ForConditionalGeneration.from_pretrained(out / "final")
    changed = [name for name, p in after.named_parameters() if not torch_equal(p, before[name])]
    assert len(changed) == len(before), "every weight was trained and saved"


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach(), b.detach()))
