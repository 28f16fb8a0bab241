"""The typed contracts on their own: manifest and training records, built directly (no training, no export)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from edgeqa.checkpoint import TRAINING_RECORD, TrainingRecord, read_training_record
from edgeqa.cli_display import describe, parity_table
from edgeqa.errors import ArtifactError, ConfigError, ModelError
from edgeqa.export.config import ExportConfig, settings_for
from edgeqa.finetune.config import FinetuneConfig
from edgeqa.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ActivationGranularity,
    FallbackMode,
    GenerationDefaults,
    Manifest,
    ModelDims,
    OutlierSearch,
    ParityRecord,
    Preset,
    QuantMethod,
    SharedTensor,
    WeightType,
    file_entry,
)
from edgeqa.prompt import MAX_BEAMS, MAX_NO_ANSWER_CHARS, MAX_TOKENS

DIMS = ModelDims(num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, d_model=32, vocab_size=32128)
PARITY = ParityRecord(
    **json.loads("""{
        "samples": 10, "quantized": true, "rouge_l_delta": -0.005, "max_new_tokens": 16, "passed": true,
        "reference_rouge": {"rouge1": 0.5, "rouge2": 0.2, "rougeL": 0.4, "rougeLsum": 0.4},
        "artifact_rouge": {"rouge1": 0.5, "rouge2": 0.2, "rougeL": 0.395, "rougeLsum": 0.4},
        "identical_answers": 0.9, "token_agreement": 0.95, "reference_exact_match": 0.8,
        "artifact_exact_match": 0.7, "reference_ms": 12.0, "artifact_ms": 3.0,
        "gate": "int8: |ROUGE-L difference| <= 1.0 points"
    }""")
)


QUANTIZED = dataclasses.asdict(settings_for("avx2").record())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, size in (("encoder.onnx", 10), ("decoder.onnx", 20), ("tokenizer.json", 5), ("embedding.data", 64)):
        (tmp_path / name).write_bytes(b"x" * size)
    return tmp_path


def manifest_in(folder: Path, **fields) -> Manifest:
    files = {
        role: file_entry(folder, name) for role, name in (("encoder", "encoder.onnx"), ("decoder", "decoder.onnx"))
    }
    files |= {"tokenizer": file_entry(folder, "tokenizer.json"), "embedding": file_entry(folder, "embedding.data")}
    shared = [SharedTensor(role="embedding", dtype="uint8", shape=[2, 32], names={"encoder": "e", "decoder": "d"})]
    return Manifest(files=files, dims=DIMS, shared_tensors=shared, **fields)


def test_json_round_trips_through_the_records(folder):
    manifest = manifest_in(
        folder,
        quantization=settings_for("avx2", ("lm_head",)).record(),
        parity=PARITY,
        generation=GenerationDefaults(max_new_tokens=40, num_beams=2),
    )
    manifest.write(folder)
    again = Manifest.read(folder)
    assert again == manifest
    assert again.quantization and again.quantization.reduce_range and again.quantization.keep_fp32 == ["lm_head"]
    assert json.loads((folder / MANIFEST_NAME).read_text())["parity"]["identical_answers"] == 0.9


def test_enum_values_are_stored_as_their_strings_and_read_back_as_members(folder):
    settings = settings_for("avx2", activation_granularity="per-token")
    quantization = dataclasses.replace(settings.record(), outliers=OutlierSearch(mode=FallbackMode.FLOAT))
    manifest_in(folder, quantization=quantization).write(folder)
    stored = json.loads((folder / MANIFEST_NAME).read_text())["quantization"]
    assert (stored["method"], stored["weight_type"], stored["preset"]) == ("dynamic-int8", "int8", "avx2")
    assert (stored["activation_granularity"], stored["outliers"]["mode"]) == ("per-token", "float")
    read = Manifest.read(folder).quantization
    assert read and read.method is QuantMethod.DYNAMIC_INT8 and read.weight_type is WeightType.INT8
    assert read.preset is Preset.AVX2 and read.outliers and read.outliers.mode is FallbackMode.FLOAT
    assert read.activation_granularity == ActivationGranularity.PER_TOKEN


def test_write_is_atomic_and_leaves_a_readable_file(folder, monkeypatch):
    manifest = manifest_in(folder)
    manifest.write(folder)
    before = (folder / MANIFEST_NAME).read_bytes()

    def crash(source: str, target: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        dataclasses.replace(manifest, model_name="another").write(folder)
    monkeypatch.undo()
    assert (folder / MANIFEST_NAME).read_bytes() == before  # the old manifest, whole, and no temporary file
    assert sorted(p.name for p in folder.iterdir()) == [
        "decoder.onnx",
        "embedding.data",
        "encoder.onnx",
        MANIFEST_NAME,
        "tokenizer.json",
    ]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (folder / MANIFEST_NAME).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_describe_reads_the_records(folder):
    int4 = manifest_in(folder, quantization=settings_for("avx512_vnni", method="int4").record(), parity=PARITY)
    text = describe(int4)
    assert int4.describe() == text  # serve's /info calls the method
    assert "weight-only-int4 preset avx512_vnni, weight blocks of 128" in text
    assert "exact match 80.0% vs 70.0%" in text and "identical answers 90.0%" in text
    assert f"size            {int4.total_bytes / 1e6:.1f} MB in 4 files" in text
    assert int4.total_bytes == 99
    assert "quantization    none (float32)" in describe(manifest_in(folder))


def test_parity_table_shows_exact_match_of_both(folder):
    table = parity_table(PARITY)
    assert "| exact match % | 80.0 | 70.0 | -10.0 |" in table and "gate (int8: " in table and "PASS" in table


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["dims"].update(num_heads="4"), "dims: num_heads should be int"),
        (lambda d: d["dims"].update(num_heads=True), "dims: num_heads should be int"),
        (lambda d: d.update(parity={"samples": 3}), "parity lacks quantized"),
        (lambda d: d.update(generation={"max_new_tokens": 40, "beams": 2}), "generation has unknown key"),
        (lambda d: d["files"]["encoder"].update(size=None), "files.encoder: size should be int"),
        (lambda d: d.update(shared_tensors=[{"role": "embedding"}]), "shared_tensors[0] lacks dtype"),
        (lambda d: d.pop("dims"), "lacks dims"),
        (lambda d: d.update(quantization=[]), "quantization should be a JSON object"),
        (lambda d: d.update(versions={"edgeqa": 1}), "versions.edgeqa should be str"),
        (
            lambda d: d.update(quantization=dict(json.loads(json.dumps(QUANTIZED)), weight_type="int3")),
            'quantization: weight_type "int3" is unknown; choose one of int8, int4',
        ),
        (
            lambda d: d.update(quantization=dict(json.loads(json.dumps(QUANTIZED)), method=8)),
            "quantization: method 8 is unknown; choose one of dynamic-int8, weight-only-int4",
        ),
    ],
)
def test_a_wrong_key_or_type_is_an_artifact_error_naming_it(folder, mutate, message):
    data = json.loads(manifest_in(folder).to_json())
    mutate(data)
    with pytest.raises(ArtifactError, match="re-export") as caught:
        Manifest.from_dict(data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "version, message",
    [
        (FORMAT_VERSION + 1, f"format {FORMAT_VERSION + 1} is newer than this edgeqa supports"),
        (2, "format 2 is from an older edgeqa .*re-export"),
        ("3", "no integer format_version"),
    ],
)
def test_other_versions_are_refused_before_anything_else(folder, version, message):
    data = {"format_version": version, "files": "garbage"}  # the version is checked first
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_dict(data)


def test_the_artifact_docs_state_the_formats_this_edgeqa_writes_and_reads():
    from edgeqa.manifest_schema import OLDEST_READABLE_FORMAT

    docs = (Path(__file__).parents[1] / "docs" / "artifact.md").read_text(encoding="utf-8")
    assert f"`manifest.json` is format {FORMAT_VERSION};" in docs
    assert f"one older than {OLDEST_READABLE_FORMAT} or newer than {FORMAT_VERSION} is refused" in docs


def test_a_format_4_manifest_reads_with_flans_reading_template(folder):
    data = json.loads(manifest_in(folder).to_json())
    data["format_version"] = 4
    del data["context_template"], data["no_answer"]
    manifest = Manifest.from_dict(data)
    assert manifest.context_template == "Read this and answer the question\n\n{context}\n\n{question}"
    assert manifest.no_answer == "unanswerable"
    data["no_answer"] = " "
    with pytest.raises(ArtifactError, match="no_answer is ' ', not a text of 1 to 200 characters"):
        Manifest.from_dict(data)


@pytest.mark.parametrize("template", ["{question} only", "{context} {context} {question}", ""])
def test_a_context_template_without_one_of_each_field_is_refused(folder, template):
    data = json.loads(manifest_in(folder).to_json())
    data["context_template"] = template
    with pytest.raises(ArtifactError, match="context_template .* not a text with one {context} and one {question}"):
        Manifest.from_dict(data)


def test_verify_files_names_the_extra_missing_and_resized_file(folder):
    manifest = manifest_in(folder)
    manifest.write(folder)
    manifest.verify_files(folder)
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(ArtifactError, match="notes.txt"):
        manifest.verify_files(folder)
    (folder / "notes.txt").unlink()
    (folder / "tokenizer.json").write_bytes(b"xxxxxx")
    with pytest.raises(ArtifactError, match="tokenizer.json .* 6 bytes, the manifest says 5"):
        manifest.verify_files(folder)
    (folder / "tokenizer.json").write_bytes(b"yyyyy")
    with pytest.raises(ArtifactError, match="tokenizer.json .* does not match its sha256"):
        manifest.verify_files(folder)


def test_training_record_round_trips_and_refuses_a_wrong_type(tmp_path):
    record = TrainingRecord(model="google/flan-t5-base", eval_max_new_tokens=40, config={"lr": 3e-4, "seed": None})
    record.write(tmp_path)
    assert read_training_record(tmp_path) == record
    assert read_training_record(tmp_path / "elsewhere") is None
    (tmp_path / TRAINING_RECORD).write_text(json.dumps({"model": "m", "eval_max_new_tokens": "40"}))
    with pytest.raises(ModelError, match="eval_max_new_tokens should be int"):
        read_training_record(tmp_path)


def test_export_config_refuses_bad_options_by_name(tmp_path):
    with pytest.raises(ConfigError, match='preset "bogus" is unknown; choose one of auto, avx2, avx512, avx512_vnni'):
        ExportConfig(checkpoint="c", output=tmp_path, preset="bogus")
    with pytest.raises(ConfigError, match='quantize "fp16" is unknown; choose one of int8, int4'):
        ExportConfig(checkpoint="c", output=tmp_path, quantize="fp16")
    with pytest.raises(ConfigError, match='fallback "never" is unknown; choose one of auto, smooth, float, none'):
        ExportConfig(checkpoint="c", output=tmp_path, fallback="never")
    with pytest.raises(ConfigError, match='activation granularity "per-row" is unknown; choose one of per-tensor'):
        settings_for(activation_granularity="per-row")
    config = ExportConfig(checkpoint="c", output=tmp_path, quantize="int4", fallback="smooth")
    assert config.quantize is WeightType.INT4 and config.fallback is FallbackMode.SMOOTH
    with pytest.raises(ConfigError, match="keep_fp32 lm_haed names no part"):
        ExportConfig(checkpoint="c", output=tmp_path, quantize="int8", keep_fp32=("lm_haed",))
    with pytest.raises(ConfigError, match="parity_samples must be at least 1, got 0"):
        ExportConfig(checkpoint="c", output=tmp_path, parity_samples=0)
    with pytest.raises(ConfigError, match="threads must be at most 1024, got 5000"):  # as the runtime's bound
        ExportConfig(checkpoint="c", output=tmp_path, threads=5000)
    with pytest.raises(ConfigError, match="parity_data .* is not a file"):
        ExportConfig(checkpoint="c", output=tmp_path, parity_data=tmp_path / "none.jsonl")
    assert ExportConfig(checkpoint="c", output=tmp_path, quantize="int8", keep_fp32=("block.3", "wo")).keep_fp32


def test_generation_defaults_are_generation_options():
    from edgeqa.runtime import GenerationOptions

    defaults = {f.name for f in dataclasses.fields(GenerationDefaults)}
    assert defaults <= {f.name for f in dataclasses.fields(GenerationOptions)}


def test_option_errors_name_the_field_and_value_only():
    from edgeqa.errors import InputError
    from edgeqa.runtime import GenerationOptions

    with pytest.raises(InputError) as caught:
        GenerationOptions(max_new_tokens=-3)
    assert str(caught.value) == "max_new_tokens must be at least 1, got -3"
    with pytest.raises(InputError, match='top_k should be int, got "5"'):
        GenerationOptions().updated(top_k="5")


# A training record's field, where the manifest carries it, the largest value allowed and one past it.
CARRIED = [
    ("max_source_tokens", lambda v: {"max_input_tokens": v}, MAX_TOKENS, MAX_TOKENS + 1),
    ("max_target_tokens", lambda v: {"max_answer_tokens": v}, MAX_TOKENS, MAX_TOKENS + 1),
    ("eval_max_new_tokens", lambda v: {"generation": GenerationDefaults(max_new_tokens=v)}, MAX_TOKENS, 1 << 17),
    ("eval_num_beams", lambda v: {"generation": GenerationDefaults(num_beams=v)}, MAX_BEAMS, MAX_BEAMS + 1),
    ("no_answer", lambda v: {"no_answer": v}, "x" * MAX_NO_ANSWER_CHARS, "x" * (MAX_NO_ANSWER_CHARS + 1)),
]


@pytest.mark.parametrize("name, carried, largest, too_large", CARRIED, ids=[c[0] for c in CARRIED])
def test_what_finetune_accepts_an_artifact_carries_and_the_rest_is_refused_before_training(
    folder, tmp_path, name, carried, largest, too_large
):

    with pytest.raises(ConfigError, match=name):
        FinetuneConfig(**{name: too_large})
    FinetuneConfig(**{name: largest})
    record = TrainingRecord(model="m", **{name: largest})
    record.write(tmp_path)
    assert read_training_record(tmp_path) == record
    manifest = manifest_in(folder, **carried(largest))
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest  # the runtime's checks pass
    (tmp_path / TRAINING_RECORD).write_text(json.dumps({"model": "m", name: too_large}))
    with pytest.raises(ModelError, match=f"{TRAINING_RECORD}: {name} must .*; fix or delete it"):
        read_training_record(tmp_path)  # a record edited by hand is refused before export builds anything


def test_export_refuses_an_input_limit_no_artifact_carries(tmp_path):
    ExportConfig(checkpoint="c", output=tmp_path, max_input_tokens=MAX_TOKENS)
    with pytest.raises(ConfigError, match=f"max_input_tokens must be at most {MAX_TOKENS}, got {MAX_TOKENS + 1}"):
        ExportConfig(checkpoint="c", output=tmp_path, max_input_tokens=MAX_TOKENS + 1)


def test_a_relative_path_under_a_folder_here_is_a_path_not_a_hub_name(tmp_path, monkeypatch):
    from edgeqa.checkpoint import checkpoint_location

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="checkpoint 'runs/final' is not a folder"):
        checkpoint_location("runs/final")  # a typo: not sent to the hub, to retry offline for 30 s
    checkpoint_location("google/flan-t5-base")  # no folder google here: a hub name
    with pytest.raises(ConfigError, match="checkpoint 'runs/final' is not a folder"):
        FinetuneConfig(model="runs/final")  # fine-tuning refuses it as export does


def test_a_checkpoint_under_the_home_folder_is_found_where_the_shell_left_the_tilde(tmp_path, monkeypatch):
    from edgeqa.checkpoint import checkpoint_location

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "final").mkdir(parents=True)
    assert checkpoint_location("~/runs/final") == str(tmp_path / "runs" / "final")  # `--reference=~/runs/final`
    assert ExportConfig(checkpoint="~/runs/final", output=tmp_path / "a").checkpoint == str(tmp_path / "runs/final")
    config = FinetuneConfig(model="~/runs/final", data="~/qa.jsonl", tokenizer="~/runs/final", output_dir="~/r")
    assert (config.model, config.data) == (str(tmp_path / "runs/final"), str(tmp_path / "qa.jsonl"))
    assert (config.tokenizer, config.output_dir) == (str(tmp_path / "runs/final"), tmp_path / "r")  # as TOML gives
    with pytest.raises(ConfigError, match="checkpoint '~/runs/typo' is not a folder"):
        checkpoint_location("~/runs/typo")
