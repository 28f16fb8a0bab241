"""Export: graphs, int8, manifest, atomic writes, the parity gate, Optimum interop."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from conftest import SMALL, TINY, build_t5
from edgeqa.cli import app
from edgeqa.cpu import detect_preset
from edgeqa.errors import ConfigError, ExportError
from edgeqa.export import ExportConfig, export_artifact
from edgeqa.export.config import settings_for
from edgeqa.export.parity import within
from edgeqa.export.quantize import count_ops
from edgeqa.manifest import Manifest, file_entry, sha256_of
from edgeqa.runtime import QAModel

runner = CliRunner()


def test_int8_graphs_hold_quantized_matmuls(artifact_int8, artifact_fp32):
    for graph in ("encoder.onnx", "decoder.onnx"):
        ops = count_ops(artifact_int8 / graph)
        # per-token activations: each weight MatMul is one integer MatMul with a per-row scale (in the
        # decoder, those that read the same rows joined: q/k/v and wi_0/wi_1 of each layer)
        assert ops["MatMulIntegerToFloat"] >= 13 and ops["DynamicQuantizeLinear"] == 0, ops
        assert count_ops(artifact_fp32 / graph)["MatMulIntegerToFloat"] == 0
    decoder = count_ops(artifact_int8 / "decoder.onnx")
    assert decoder["MatMulIntegerToFloat"] == 2 * (9 - 3) + 1  # 2 layers, lm_head
    # attention runs in float: MultiHeadAttention, but for layer 0's self-attention (its position bias is
    # sized by the cache it returns), whose two products (QK^T, attention x V) stay float MatMuls
    assert decoder["MultiHeadAttention"] == 3 and decoder["MatMul"] == 2


def test_manifest_records_files_dims_and_parity(artifact_int8, trained_model):
    manifest = Manifest.read(artifact_int8)
    assert set(manifest.files) >= {"encoder", "decoder", "encoder_weights", "decoder_weights", "tokenizer", "config"}
    for role in ("encoder", "decoder"):
        graph, weights = manifest.files[role], manifest.files[f"{role}_weights"]
        assert weights.path == graph.path + ".data", "weights live beside the graph"
    assert manifest.files["decoder_weights"].size > 2 * manifest.files["decoder"].size
    assert manifest.files["embedding"].size == 32128 * manifest.dims.d_model, "int8 embedding, once"
    for entry in manifest.files.values():
        assert sha256_of(artifact_int8 / entry.path) == entry.sha256
        assert (artifact_int8 / entry.path).stat().st_size == entry.size
    assert (manifest.dims.d_kv, manifest.dims.num_heads, manifest.dims.vocab_size) == (32, 4, 32128)
    assert manifest.prompt_template == "Please answer this question: {question}"
    assert manifest.quantization and manifest.quantization.preset == detect_preset()
    assert manifest.quantization.activation_granularity == "per-token"
    # the gate's confirmation half of the fixture's 200 questions (the plain int8 graphs passed the tuning half)
    parity = manifest.parity
    assert parity and parity.passed and (parity.samples, parity.split) == (100, "confirmation")
    assert manifest.versions["onnxruntime"]
    assert sorted(p.name for p in artifact_int8.iterdir()) == sorted(
        [e.path for e in manifest.files.values()] + ["manifest.json"]
    )
    assert artifact_int8.stat().st_mode & 0o555 == 0o555, "other users and containers must be able to read it"
    for entry in manifest.files.values():
        assert (artifact_int8 / entry.path).stat().st_mode & 0o444 == 0o444, entry.path


def test_fp32_artifact_passes_exact_gate(artifact_fp32):
    parity = Manifest.read(artifact_fp32).parity
    assert parity and parity.identical_answers >= 0.99 and parity.passed


def test_int8_gate_is_rouge_within_one_point(artifact_int8):
    parity = Manifest.read(artifact_int8).parity
    assert parity and within(abs(parity.rouge_l_delta), 0.01)  # as the gate checks it
    assert parity.gate.startswith("int8: |ROUGE-L difference|")


def test_presets():
    assert settings_for("avx2").reduce_range and settings_for("avx512").reduce_range
    assert not settings_for("avx512_vnni").reduce_range and not settings_for("arm64").reduce_range
    assert settings_for("auto").preset == detect_preset()
    with pytest.raises(ConfigError, match="choose one of"):
        settings_for("sse2")


def test_keep_fp32_leaves_lm_head_float(trained_model, tmp_path):
    out = tmp_path / "keep"
    export_artifact(
        ExportConfig(checkpoint=str(trained_model), output=out, quantize="int8", keep_fp32=("lm_head",), parity=False)
    )
    # lm_head stays float (+ layer 0's two self-attention products, the only attention not fused)
    assert count_ops(out / "decoder.onnx")["MatMul"] == 3
    assert Manifest.read(out).quantization.keep_fp32 == ["lm_head"]  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="matches no node"):
        export_artifact(
            ExportConfig(
                checkpoint=str(trained_model),
                output=tmp_path / "x",
                quantize="int8",
                keep_fp32=("block.7",),  # a T5 part, but this model has 2 blocks
                parity=False,
            )
        )


def test_existing_output_is_refused_without_force(trained_model, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(ExportError, match=r"is not an edgeqa artifact \(no manifest.json\); pick another OUTPUT"):
            export_artifact(ExportConfig(checkpoint=str(trained_model), output=out, parity=False, force=force))
    assert (out / "keep.txt").read_text() == "mine"  # not an artifact: kept whatever the flags
    holder = tmp_path / "holder"  # an artifact folder someone kept a checkpoint in
    shutil.copytree(trained_model, holder / "checkpoint")
    (holder / "manifest.json").write_text("{}")
    with pytest.raises(ExportError, match="holds the checkpoint being exported"):
        export_artifact(ExportConfig(checkpoint=str(holder / "checkpoint"), output=holder, force=True))
    shutil.rmtree(holder)

    (out / "keep.txt").unlink()
    export_artifact(ExportConfig(checkpoint=str(trained_model), output=out, parity=False))
    with pytest.raises(ExportError, match="already holds an artifact; pass --force to replace it"):
        export_artifact(ExportConfig(checkpoint=str(trained_model), output=out, parity=False))
    (out / "manifest.json").write_text("{}")  # an artifact, even a damaged one, is what --force replaces
    export_artifact(ExportConfig(checkpoint=str(trained_model), output=out, parity=False, force=True))
    assert Manifest.read(out).files and [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_failed_export_leaves_nothing(trained_model, tmp_path, monkeypatch):
    import edgeqa.export.artifact as artifact

    def broken(*args, **kwargs):
        raise ExportError("quantizer exploded")

    monkeypatch.setattr(artifact, "quantize_graph", broken)
    with pytest.raises(ExportError, match="exploded"):
        export_artifact(ExportConfig(checkpoint=str(trained_model), output=tmp_path / "out", quantize="int8"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_stopped_export_leaves_no_output_and_its_leftovers_go(trained_model, tmp_path, monkeypatch, stop):
    """SIGTERM (docker stop, systemd) cleans up as Ctrl-C does; what SIGKILL leaves, the next export removes."""
    import edgeqa.atomic as atomic
    import edgeqa.export.artifact as artifact

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeqa.cli", "export", str(trained_model), str(out), "--quantize"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    def staged() -> bool:
        """Whether the export has begun to fill its staging folder."""
        try:
            return any(p.name.startswith(".out.partial-") and any(p.iterdir()) for p in tmp_path.iterdir())
        except FileNotFoundError:  # a folder gone between the listing and the look inside
            return False

    deadline = time.time() + 120
    while time.time() < deadline and not staged():
        time.sleep(0.05)
    os.kill(proc.pid, stop)
    assert proc.wait(timeout=120) == -stop  # SIGTERM too: it cleans up, then ends by the signal
    assert not out.exists()
    left = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert left == ([".edgeqa", ".out.partial"] if stop == signal.SIGKILL else [])

    running = tmp_path / f"{atomic.owned_prefix('.out.partial')}abc"  # a live export's: kept
    running.mkdir()

    def build(config, trained, staging):
        (staging / "manifest.json").write_text("{}")
        return artifact.ExportResult(staging, None, None, 0)  # type: ignore[arg-type]

    monkeypatch.setattr(artifact, "_build", build)
    export_artifact(ExportConfig(checkpoint=str(trained_model), output=out))
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "out"]


def test_parity_gate_fails_on_a_damaged_artifact(artifact_fp32, tmp_path):
    other = build_t5(
        tmp_path / "other",
        seed=7,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    result = runner.invoke(
        app, ["parity", str(artifact_fp32), "--reference", str(other), "--samples", "24", "--max-new-tokens", "8"]
    )
    assert result.exit_code == 1
    assert "FAIL" in result.output and "identical answers" in result.output


def test_parity_command_passes_on_a_healthy_artifact(artifact_fp32, trained_model):
    result = runner.invoke(
        app,
        ["parity", str(artifact_fp32), "--reference", str(trained_model), "--samples", "24", "--max-new-tokens", "8"],
    )
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "rougeL" in result.output


def test_parity_decodes_both_sides_as_the_artifact_is_deployed(artifact_fp32, trained_model, tmp_path, monkeypatch):
    """The checkpoint's generation_config.json is not the artifact's (its runtime applies none of it), and both
    sides run with the artifact's beams and answer length (capped at the gate's)."""
    import edgeqa.export.parity as parity

    reference = tmp_path / "checkpoint"
    shutil.copytree(trained_model, reference)
    generation = json.loads((reference / "generation_config.json").read_text())
    (reference / "generation_config.json").write_text(json.dumps(generation | {"min_new_tokens": 6}))
    artifact = tmp_path / "artifact"
    shutil.copytree(artifact_fp32, artifact)
    manifest = Manifest.read(artifact)
    replace_generation = dataclasses.replace(manifest.generation, num_beams=3, max_new_tokens=5)
    dataclasses.replace(manifest, generation=replace_generation).write(artifact)
    real, asked = parity.reference_answers, []

    def recorded(*args, **options):
        asked.append(options)
        return real(*args, **options)

    monkeypatch.setattr(parity, "reference_answers", recorded)
    records = parity.parity_records(trained_model, None, 24)
    report = parity.run_parity(str(reference), artifact, records, max_new_tokens=8)
    assert asked == [{"max_new_tokens": 5, "num_beams": 3}] and report.max_new_tokens == 5
    assert report.passed and report.identical_answers == 1.0, report.table()


def test_parity_reads_pytorchs_answers_with_the_checkpoints_own_tokenizer(artifact_fp32, trained_model, tmp_path):
    """An artifact whose tokenizer.json reads one answer token otherwise than the checkpoint's (checksums
    refreshed, so that it loads) gives the same ids but other text: not identical answers."""
    import edgeqa.export.parity as parity

    artifact = tmp_path / "artifact"
    shutil.copytree(artifact_fp32, artifact)
    records = parity.parity_records(trained_model, None, 24)
    model = QAModel.load(artifact)
    prompt_ids = {i for ids in model.tokenizer.encode([r.question for r in records]) for i in ids}
    answer_ids = [i for a in model.answer_batch([r.question for r in records]) for i in a.tokens]
    renamed = next(i for i in answer_ids if i not in prompt_ids and i > 2)
    tokenizer = json.loads((artifact / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"][renamed][0] += "\u00a7"
    (artifact / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = Manifest.read(artifact)
    files = manifest.files | {"tokenizer": file_entry(artifact, "tokenizer.json")}
    dataclasses.replace(manifest, files=files).write(artifact)
    report = parity.run_parity(str(trained_model), artifact, records, max_new_tokens=8)
    assert report.identical_answers < 1.0 and not report.passed, report.table()
    assert report.token_agreement == 1.0  # the ids are the same


def test_a_parity_passage_over_the_input_limit_is_named(artifact_fp32, trained_model):
    from edgeqa.export.loading import load_tokenizer
    from edgeqa.export.parity import check_tokenizer
    from edgeqa.prompt import format_prompt
    from edgeqa.records import QARecord

    records = [QARecord("Capital of Peru?", "Lima", "Lima is the capital."), QARecord("And?", "x", "word " * 999)]
    with pytest.raises(ConfigError, match=r"parity question 2 \('And\?'\): the question and its passage are"):
        check_tokenizer(
            load_tokenizer(trained_model),
            QAModel.load(artifact_fp32),
            [format_prompt(r.question, context=r.context) for r in records],
            records,
        )


def test_export_fails_the_gate_with_exit_1_and_writes_nothing(trained_model, tmp_path, monkeypatch):
    """An artifact that answers differently from its checkpoint must not be written."""
    import edgeqa.export.parity as parity

    real = parity.reference_answers

    def shifted(*args, **kwargs):
        answers, ms = real(*args, **kwargs)
        return [[(t + 5) % 32100 for t in a] for a in answers], ms

    monkeypatch.setattr(parity, "reference_answers", shifted)
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(trained_model), str(out), "--parity-samples", "16"])
    assert result.exit_code == 1
    assert "parity gate failed" in result.output and "FAIL" in result.output
    assert not out.exists()
    result = runner.invoke(
        app, ["export", str(trained_model), str(out), "--parity-samples", "16", "--allow-parity-failure"]
    )
    parity = Manifest.read(out).parity
    assert result.exit_code == 0 and parity and not parity.passed


def test_encoder_returns_the_cross_attention_cache_and_graphs_stand_alone(artifact_int8, trained_model):
    import onnxruntime as ort
    import torch
    from transformers import T5ForConditionalGeneration

    manifest = Manifest.read(artifact_int8)
    (embedding,) = manifest.shared_tensors
    assert embedding.shape == [manifest.dims.vocab_size, manifest.dims.d_model] and embedding.dtype == "uint8"
    assert set(embedding.names) == {"encoder", "decoder"}
    assert manifest.files["embedding"].size == manifest.dims.vocab_size * manifest.dims.d_model
    # each graph is a valid ONNX model on its own: plain onnxruntime finds embedding.data beside it
    encoder = ort.InferenceSession(str(artifact_int8 / "encoder.onnx"))
    decoder = ort.InferenceSession(str(artifact_int8 / "decoder.onnx"))
    assert "encoder_hidden_states" not in {i.name for i in decoder.get_inputs()}
    ids = np.array([[37, 1782, 19, 8, 1]], dtype=np.int64)
    cache = encoder.run(["present.1.encoder.value"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    model = T5ForConditionalGeneration.from_pretrained(trained_model).eval()
    with torch.no_grad():
        hidden = model.encoder(input_ids=torch.tensor(ids)).last_hidden_state
        expected = model.decoder.block[1].layer[1].EncDecAttention.v(hidden)
    heads, d_kv = manifest.dims.num_heads, manifest.dims.d_kv
    assert cache.shape == (1, heads, ids.shape[1], d_kv)
    expected = expected.view(1, -1, heads, d_kv).transpose(1, 2).numpy()
    assert np.abs(cache - expected).max() < 0.1 * np.abs(expected).max()  # int8 weights and activations


@pytest.mark.slow
def test_small_shaped_int8_is_at_most_35_percent_of_fp32(tmp_path):
    """The quantizer's size, on random weights: their answers are noise that int8 changes (under half the
    tokens agree), so the gate, which the facts model's tests check, would keep layers in float here."""
    checkpoint = build_t5(tmp_path / "small", seed=2, **SMALL)
    fp32 = export_artifact(ExportConfig(checkpoint=str(checkpoint), output=tmp_path / "fp32", parity=False))
    int8 = export_artifact(
        ExportConfig(checkpoint=str(checkpoint), output=tmp_path / "int8", quantize="int8", parity=False)
    )
    size = {name: sum(e.size for e in r.manifest.files.values()) for name, r in (("fp32", fp32), ("int8", int8))}
    assert size["int8"] <= 0.35 * size["fp32"], size


def test_int4_export_is_opt_in_weight_only_with_its_parity_record(trained_model, tmp_path):
    out = tmp_path / "int4"
    result = runner.invoke(
        app,
        ["export", str(trained_model), str(out), "--quantize", "int4", "--parity-samples", "32"]
        + ["--parity-max-new-tokens", "16", "--allow-parity-failure", "--fallback", "none"],
    )
    assert result.exit_code == 0, result.output
    manifest = Manifest.read(out)
    assert manifest.quantization and manifest.quantization.is_int4 and manifest.quantization.block_size == 128
    assert manifest.shared_tensors == [] and "embedding" not in manifest.files  # int4 rows are packed two to a byte
    ops = count_ops(out / "decoder.onnx")
    assert ops["MatMulNBits"] >= 2 * 9 and ops["MatMulInteger"] == ops["MatMulIntegerToFloat"] == 0, ops
    assert manifest.parity and manifest.parity.samples == 32 and manifest.parity.gate.startswith("int4:")
    assert "weight-only-int4" in runner.invoke(app, ["info", str(out)]).output
    assert QAModel.load(out).answer("What is the capital of France?", max_new_tokens=4).tokens


def _gather_graph(path, table):
    """A one-node graph that looks a row up in `table` (an embedding-shaped initializer)."""
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Gather", ["table", "ids"], ["rows"])
    graph = helper.make_graph(
        [node],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, table.shape[1]])],
        [numpy_helper.from_array(table.astype(np.float32), "table")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize("same", [True, False])
def test_embedding_is_stored_once_only_when_both_graphs_hold_the_same_one(tmp_path, same):
    import onnxruntime as ort

    from edgeqa.export.layout import EMBEDDING_FILE, save_graphs

    table = np.arange(64 * 16, dtype=np.float32).reshape(64, 16)
    sources = {
        "encoder": _gather_graph(tmp_path / "a.onnx", table),
        "decoder": _gather_graph(tmp_path / "b.onnx", table if same else table + 1),
    }
    out = tmp_path / "out"
    out.mkdir()
    shared = save_graphs(sources, {"encoder": out / "encoder.onnx", "decoder": out / "decoder.onnx"})
    assert (out / EMBEDDING_FILE).exists() == same
    if same:
        assert shared[0].shape == [64, 16] and shared[0].dtype == "float32"
        assert (out / EMBEDDING_FILE).stat().st_size == table.nbytes, "written once"
        assert not (out / "decoder.onnx.data").exists(), "nor beside the second graph"
    else:
        assert shared == []
    for role, offset in (("encoder", 0), ("decoder", 0 if same else 1)):
        session = ort.InferenceSession(str(out / f"{role}.onnx"))
        (rows,) = session.run(None, {"ids": np.array([3, 60])})
        np.testing.assert_array_equal(rows, table[[3, 60]] + offset)


def test_the_artifact_answers_as_long_as_training_evaluated(tiny_model, memo_data, tmp_path):
    """The training record's eval_max_new_tokens is the artifact's default answer length."""
    run = tmp_path / "run"
    args = ["--model", str(tiny_model), "--data", str(memo_data), "-o", str(run), "--device", "cpu"]
    args += ["--max-steps", "2", "--max-eval-samples", "4", "--eval-max-new-tokens", "40"]
    assert runner.invoke(app, ["finetune", *args]).exit_code == 0
    out = tmp_path / "artifact"
    result = runner.invoke(app, ["export", str(run / "final"), str(out), "--no-parity"])
    assert result.exit_code == 0, result.output
    assert Manifest.read(out).generation.max_new_tokens == 40
    assert QAModel.load(out).defaults.max_new_tokens == 40


@pytest.mark.parametrize("part", ["encoder_model", "decoder_with_past_model"])
def test_streamed_export_writes_the_graph_the_standard_export_writes(tiny_model, tmp_path, part):
    """Weights written one at a time from the model: the same nodes, inputs, outputs and weights
    (names, shapes, values) as Optimum's export, which serializes them with the graph."""
    from optimum.exporters.onnx.convert import export
    from optimum.exporters.onnx.model_configs import T5OnnxConfig
    from optimum.exporters.utils import get_encoder_decoder_models_for_export
    from transformers import T5ForConditionalGeneration

    from edgeqa.export.torch_export import export_streamed

    graphs = {}
    for kind in ("standard", "streamed"):
        model = T5ForConditionalGeneration.from_pretrained(tiny_model).eval()
        config = T5OnnxConfig(model.config, task="text2text-generation", use_past=True)
        module, part_config = get_encoder_decoder_models_for_export(model, config)[part]
        path = tmp_path / kind / f"{part}.onnx"
        path.parent.mkdir()
        (export if kind == "standard" else export_streamed)(module, part_config, path, config.DEFAULT_ONNX_OPSET)
        graphs[kind] = onnx.load(str(path))
    standard, streamed = graphs["standard"].graph, graphs["streamed"].graph
    unloaded = onnx.load(str(tmp_path / "streamed" / f"{part}.onnx"), load_external_data=False).graph
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in unloaded.initializer)  # all in PART.onnx_data
    assert list(streamed.node) == list(standard.node)
    assert list(streamed.input) == list(standard.input) and list(streamed.output) == list(standard.output)
    assert [t.name for t in streamed.initializer] == [t.name for t in standard.initializer]
    assert len(standard.initializer) > 10
    for ours, theirs in zip(streamed.initializer, standard.initializer, strict=True):
        assert np.array_equal(numpy_helper.to_array(ours), numpy_helper.to_array(theirs)), ours.name


def test_a_weight_the_streamed_export_cannot_rebuild_is_refused_before_writing(tmp_path):
    import torch

    from edgeqa.export.torch_export import UnknownWeight, _attach_weights

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    weight = onnx.helper.make_tensor_value_info("onnx::Mul_7", onnx.TensorProto.FLOAT, [2, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    node = onnx.helper.make_node("Mul", ["x", "onnx::Mul_7"], ["y"], name="/scale/Mul")
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x, weight], [y]))
    with pytest.raises(UnknownWeight, match="onnx::Mul_7"):
        _attach_weights(model, {"x"}, {"scale.weight": torch.ones(2, 2)}, tmp_path / "g.onnx_data")
    assert not (tmp_path / "g.onnx_data").exists()


@pytest.mark.slow
def test_export_holds_within_2_3_times_the_weights_beyond_its_libraries(tmp_path):
    """flan-t5-base's shape (0.99 GB of fp32 weights, random) to int8: the export's peak memory beyond a
    tiny model's export (the interpreter and its libraries, about 0.65 GB) within 2.3x the weights (1.9x
    measured; 4.0x with the export before it streamed the weights, 70a4ac7), an artifact under 30% of
    them, and it answers. flan-t5-large's and -xl's figures: benchmarks/results/export-memory.md."""
    from edgeqa.bench.export_memory import checkpoint_bytes, export_args, measure
    from edgeqa.finetune.models import FLAN_T5_SHAPES

    tiny = build_t5(tmp_path / "tiny", **TINY)
    libraries = measure(export_args(tiny, tmp_path / "tiny-int8", "--quantize", "--no-parity"))
    assert libraries.returncode == 0 and libraries.peak > 0, libraries.output[-2000:]
    checkpoint = build_t5(tmp_path / "base", **FLAN_T5_SHAPES["base"])
    weights = checkpoint_bytes(checkpoint)
    out = tmp_path / "int8"
    run = measure(export_args(checkpoint, out, "--quantize", "--no-parity"))
    assert run.returncode == 0, run.output[-2000:]
    held = run.peak - libraries.peak
    figures = f"peak {run.peak / 1e9:.2f} GB, {held / 1e9:.2f} GB beyond a tiny export, weights {weights / 1e9:.2f} GB"
    # at least the weights, read once: a peak that includes the parent's (measured as wait4 read it) does not
    assert weights <= held <= 2.3 * weights, figures
    size = sum(entry.size for entry in Manifest.read(out).files.values())
    assert size <= 0.30 * weights, size
    asked = measure(["ask", str(out), "What is the capital of France?"])
    assert asked.returncode == 0 and asked.output.strip(), asked.output[-2000:]
    assert asked.peak < run.peak, (asked.peak, run.peak)


def test_a_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    sizes = dict(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2)
    config = BartConfig(vocab_size=64, d_model=16, encoder_ffn_dim=16, decoder_ffn_dim=16, **sizes)
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    result = runner.invoke(app, ["export", str(tmp_path / "bart"), str(tmp_path / "out"), "--no-parity"])
    assert result.exit_code == 1
    assert "is a bart model; edgeqa fine-tunes and exports T5 models" in result.output
    assert not (tmp_path / "out").exists()


def test_the_gate_never_passes_on_no_questions_and_the_search_needs_two(trained_model, tmp_path):
    from edgeqa.export.parity import apply_gate

    assert apply_gate("int8", 0.0, 1.0, 0.0, 0.0, []) == (False, "no questions answered")
    assert apply_gate(None, 0.0, 1.0, 0.0, 0.0, []) == (False, "no questions answered")
    with pytest.raises(ConfigError, match="parity_samples must be at least 2 for the outlier search"):
        ExportConfig(checkpoint=str(trained_model), output=tmp_path / "out", quantize="int8", parity_samples=1)
    one = tmp_path / "one.jsonl"  # the config cannot see how many questions a file holds
    one.write_text('{"question": "What is the capital of France?", "answer": "Paris"}\n')
    config = ExportConfig(checkpoint=str(trained_model), output=tmp_path / "out", quantize="int8", parity_data=str(one))
    with pytest.raises(ConfigError, match="needs at least 2 and has 1; give more .* or --fallback none"):
        export_artifact(config)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_its_tokenizer_is_refused_before_any_graph_is_exported(
    trained_model, tmp_path, monkeypatch
):
    import edgeqa.export.artifact

    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(trained_model / name, bare / name)
    monkeypatch.setattr(edgeqa.export.artifact, "export_graphs", lambda *a: pytest.fail("exported before refusing"))
    result = runner.invoke(app, ["export", str(bare), str(tmp_path / "out"), "--no-parity"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot load the tokenizer of '{bare}'" in result.output and "tokenizer.save_pretrained" in result.output
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["weights-only"]


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("missing", "is not a folder"),
        ("no model_type", "cannot load checkpoint"),
        ("no config", "has no config.json; pass the folder that holds"),
        ("empty weights", "model.safetensors is truncated or not a safetensors file"),
    ],
)
def test_a_checkpoint_that_cannot_be_loaded_is_one_line(tmp_path, broken, message):
    checkpoint = tmp_path / "ckpt"
    if broken != "missing":
        checkpoint.mkdir()
    if broken == "no model_type":
        (checkpoint / "config.json").write_text('{"d_model": 8}', encoding="utf-8")
    if broken == "empty weights":
        (checkpoint / "config.json").write_text('{"model_type": "t5"}', encoding="utf-8")
        (checkpoint / "model.safetensors").write_bytes(b"")
    result = runner.invoke(app, ["export", str(checkpoint), str(tmp_path / "out"), "--no-parity"])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
