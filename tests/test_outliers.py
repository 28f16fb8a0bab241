"""int8 that holds on models with T5's activation outliers: planted outliers, smoothing, the
accuracy-aware fallback, the split gate and what the manifest records."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeqa.bench.outliers import OutlierPlan, plant_outliers, save_with_outliers
from edgeqa.cli import app
from edgeqa.errors import ExportError
from edgeqa.export.parity import ParityCheck, apply_gate, within
from edgeqa.manifest import CpuRecord, Manifest
from edgeqa.prompt import format_prompt
from edgeqa.records import QARecord, read_records

torch = pytest.importorskip("torch")
runner = CliRunner()
GATE = ["--parity-samples", "200", "--parity-max-new-tokens", "16"]


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory: pytest.TempPathFactory, facts_model: Path) -> Path:
    """The facts model with outliers of 512 planted in every layer (the float model unchanged)."""
    return save_with_outliers(facts_model, tmp_path_factory.mktemp("outliers") / "ckpt", OutlierPlan(512))


def _load(checkpoint: Path):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()


def _calibration(checkpoint: Path, count: int = 16):
    """Teacher-forced batches of held-out questions with their reference answers."""
    from transformers import AutoTokenizer

    from edgeqa.export.calibration import teacher_forced

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    records = read_records(checkpoint / "edgeqa_heldout.jsonl")[:count]
    answers = [tokenizer(r.answer)["input_ids"] for r in records]
    return teacher_forced(tokenizer, [format_prompt(r.question) for r in records], answers, 128, 0, 0)


def _logits(model, data) -> list:
    return [logits for logits, _ in data.forward(model)]


@pytest.mark.parametrize(
    "plan", [OutlierPlan(32), OutlierPlan(128, stacks=("encoder",)), OutlierPlan(512, stacks=("decoder",), seed=3)]
)
def test_planted_outliers_leave_the_float_model_bit_identical(facts_model: Path, plan: OutlierPlan) -> None:
    from edgeqa.export.calibration import input_ranges

    data = _calibration(facts_model)
    model = _load(facts_model)
    before, ranges_before = _logits(model, data), input_ranges(model, data)
    assert plant_outliers(model, plan) == 3 * 2 * len(plan.stacks)
    after, ranges_after = _logits(model, data), input_ranges(model, data)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    for stack in plan.stacks:
        wo = f"{stack}.block.0.layer.{2 if stack == 'decoder' else 1}.DenseReluDense.wo"
        grown = ranges_after[wo] / ranges_before[wo].clamp_min(1e-12)
        # the planted channels' inputs are exactly `scale` times wider (outliers int8 now sees), the others as before
        assert grown.max().item() == pytest.approx(plan.scale, rel=1e-4)
        assert (grown < 1.0001).sum() >= len(grown) - plan.channels


def test_no_plan_plants_nothing_and_scales_must_be_powers_of_two(facts_model: Path) -> None:
    model = _load(facts_model)
    weights = {name: p.clone() for name, p in model.named_parameters()}
    assert plant_outliers(model, OutlierPlan(1)) == 0
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    with pytest.raises(ValueError, match="power of two"):
        OutlierPlan(100)


def test_smoothing_finds_the_planted_channels_and_keeps_the_float_model(outlier_model: Path) -> None:
    from edgeqa.export.calibration import input_ranges
    from edgeqa.export.smoothing import apply_smoothing, smoothing_scales

    data = _calibration(outlier_model)
    model = _load(outlier_model)
    before = _logits(model, data)
    scales = smoothing_scales(model, input_ranges(model, data))
    records = {r.activation: r for r in apply_smoothing(model, scales)}
    for stack, ff in (("encoder", 1), ("decoder", 2)):
        for block in range(2):
            for what in ("wo", "wi"):
                record = records[f"{stack}/block.{block}/layer.{ff} {what} input"]
                assert record.max_scale >= 256 and record.channels >= 2, record
    total = sum(int(scale.numel()) for scale in scales.values())
    assert sum(r.channels for r in records.values()) <= 0.05 * total  # the outliers, not every channel
    assert all(torch.equal(a, b) for a, b in zip(before, _logits(model, data), strict=True))


def test_groups_are_ranked_by_what_float_saves(outlier_model: Path) -> None:
    from edgeqa.export.config import settings_for
    from edgeqa.export.fallback import node_groups, rank_groups

    model = _load(outlier_model)
    groups = node_groups(model)
    names = {g.name for g in groups}
    assert len(groups) == 2 * 4 + 2 * 6 + 3, sorted(names)
    assert {
        "lm_head",
        "embedding",
        "cross-attention k/v",
        "encoder/block.1/layer.1 wo",
        "decoder/block.0/layer.1 cross q",
    } <= names
    ranked = rank_groups(model, _calibration(outlier_model, 32), settings_for("avx512_vnni"), groups)
    assert ranked and all(0 < r.error_reduction <= 1 for r in ranked)
    assert [r.error_reduction for r in ranked] == sorted((r.error_reduction for r in ranked), reverse=True)


@pytest.mark.slow
def test_export_passes_the_gate_by_itself_on_an_outlier_model(
    tmp_path: Path, outlier_model: Path, facts_artifact_fp32: Path
) -> None:
    plain = tmp_path / "plain"
    result = runner.invoke(
        app, ["export", str(outlier_model), str(plain), "--quantize", "int8", "--fallback", "none"] + GATE
    )
    assert result.exit_code == 1 and "parity gate failed" in result.output and not plain.exists()
    runner.invoke(
        app,
        ["export", str(outlier_model), str(plain), "--quantize", "int8", "--fallback", "none"]
        + GATE
        + ["--allow-parity-failure"],
    )
    lost = Manifest.read(plain).parity
    assert lost and lost.rouge_l_delta <= -0.05, lost  # plain int8 loses 5 ROUGE-L points or more

    out = tmp_path / "int8"
    result = runner.invoke(app, ["export", str(outlier_model), str(out), "--quantize", "int8"] + GATE)
    assert result.exit_code == 0, result.output
    assert "to pass the gate (auto): " in result.output and "activations smoothed" in result.output
    assert "export: the smoothed weights -> ONNX" in result.output and ".edgeqa-export-work" not in result.output
    manifest = Manifest.read(out)
    parity, quantization = manifest.parity, manifest.quantization
    assert parity and parity.passed and parity.split == "confirmation" and parity.samples == 100
    # as the gate checks them: one answer in 100 may differ
    assert within(abs(parity.rouge_l_delta), 0.01)
    assert within(parity.reference_exact_match - parity.artifact_exact_match, 0.01)
    assert "exact match at most 1.0 point below" in parity.gate
    assert quantization and quantization.outliers and quantization.outliers.smoothing
    assert [a.passed for a in quantization.outliers.attempts][-1] and len(quantization.outliers.attempts) >= 2
    assert manifest.total_bytes <= 0.45 * Manifest.read(facts_artifact_fp32).total_bytes
    info = runner.invoke(app, ["info", str(out)]).output
    assert "outliers        auto: " in info and "activations smoothed" in info and "VNNI" in info


@pytest.mark.slow
def test_a_model_without_outliers_is_exported_as_before(tmp_path: Path, facts_model: Path) -> None:
    from edgeqa.export import ExportConfig, export_artifact

    common = dict(checkpoint=str(facts_model), quantize="int8", parity_samples=200, parity_max_new_tokens=16)
    before = export_artifact(ExportConfig(output=tmp_path / "none", fallback="none", **common)).manifest
    after = export_artifact(ExportConfig(output=tmp_path / "auto", **common)).manifest
    search = after.quantization.outliers if after.quantization else None
    assert search and search.smoothing == [] and search.float_groups == [] and search.float_share == 0
    assert [(a.name, a.questions, a.passed) for a in search.attempts] == [
        ("int8", "tuning (100)", True),
        ("int8", "confirmation (100)", True),
    ]
    graphs = ("encoder", "decoder", "encoder_weights", "decoder_weights", "embedding")
    assert [after.files[r].sha256 for r in graphs] == [before.files[r].sha256 for r in graphs]


def test_a_search_that_fails_names_every_attempt_and_writes_nothing(
    tmp_path: Path, outlier_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.export import search as search_module

    monkeypatch.setattr(search_module, "MAX_GATE_RUNS", 1)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"parity gate failed after 1 gate runs \(int8 \(tuning \(24\)\): ROUGE-L"):
        export_artifact(
            ExportConfig(
                checkpoint=str(outlier_model),
                output=out,
                quantize="int8",
                fallback="float",
                parity_samples=48,
                parity_max_new_tokens=16,
            )
        )
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode, gate_runs", [("smooth", 8), ("auto", 2)])
def test_a_failed_search_records_the_candidate_it_leaves_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, gate_runs: int
) -> None:
    """Smoothing that does not help is not kept for the fallback, but where nothing else is built after it
    (--fallback smooth, or no gate run left) the record describes the smoothed graphs staging holds."""
    from types import SimpleNamespace

    from edgeqa.export import search as search_module
    from edgeqa.export.config import settings_for
    from edgeqa.manifest import FallbackMode, ParityRecord, SmoothingRecord

    def record(delta: float, split: str) -> ParityRecord:
        return ParityRecord(
            samples=2, quantized=True, reference_rouge={}, artifact_rouge={}, rouge_l_delta=delta,
            identical_answers=0.5, token_agreement=0.5, reference_exact_match=0.0, artifact_exact_match=0.0,
            reference_ms=1.0, artifact_ms=1.0, passed=False, gate="int8", max_new_tokens=8, split=split,
        )

    built: list[str] = []
    deltas = {"plain": -0.05, "smoothed": -0.07}  # smoothing makes it worse: not kept

    class Check(ParityCheck):  # the real one's attributes, which the search reads, with made-up answers
        def __init__(self) -> None:
            super().__init__("ckpt", [QARecord("q", "a")] * 4)
            self.prompts, self.expected = ["a"] * 4, [[1]] * 4

        def run(self, staging: Path, indices: list[int] | None = None, split: str = "all") -> ParityRecord:
            return record(deltas[built[-1]], split)

    model = SimpleNamespace(config=SimpleNamespace(decoder_start_token_id=0, pad_token_id=0))
    smoothed = [SmoothingRecord(activation="decoder/block.0/layer.2 wo", channels=3, max_scale=4)]
    monkeypatch.setattr(search_module, "MAX_GATE_RUNS", gate_runs)
    monkeypatch.setattr(search_module, "_load", lambda checkpoint: (model, None))
    monkeypatch.setattr(search_module, "teacher_forced", lambda *a, **k: None)
    monkeypatch.setattr(search_module, "input_ranges", lambda *a: None)
    monkeypatch.setattr(search_module, "smoothing_scales", lambda *a: {"x": 1})
    monkeypatch.setattr(search_module, "apply_smoothing", lambda *a: smoothed)
    monkeypatch.setattr(search_module, "_save", lambda *a: tmp_path / "smoothed")
    monkeypatch.setattr(search_module, "rank_groups", lambda *a: pytest.fail("no gate run left to rank groups for"))

    def build(weights: str, modules: frozenset[str]) -> int:
        built.append("smoothed" if weights.endswith("smoothed") else "plain")
        return 0

    with pytest.raises(search_module.SearchFailed) as failed:
        search_module.search(
            FallbackMode(mode), "ckpt", Check(), settings_for("avx2", ()), build, tmp_path, tmp_path  # type: ignore[arg-type]
        )
    result = failed.value.result
    assert built == ["plain", "smoothed"]  # what staging holds: the smoothed graphs
    assert result.parity.rouge_l_delta == deltas["smoothed"] and result.outliers.smoothing == smoothed


@pytest.mark.slow
def test_int4_goes_through_the_same_outlier_handling(tmp_path: Path, outlier_model: Path) -> None:
    out = tmp_path / "int4"
    args = ["export", str(outlier_model), str(out), "--quantize", "int4", "--fallback", "smooth"]
    result = runner.invoke(app, args + GATE + ["--allow-parity-failure"])
    assert result.exit_code == 0, result.output
    search = Manifest.read(out).quantization.outliers  # type: ignore[union-attr]
    assert search and search.smoothing
    plain, smoothed = search.attempts[0], search.attempts[1]
    assert (plain.name, smoothed.name) == ("int4", "int4 + smoothing")
    assert abs(smoothed.rouge_l_delta) < abs(plain.rouge_l_delta) and plain.rouge_l_delta <= -0.05


def test_the_gate_checks_exact_match_where_answers_are_short() -> None:
    short, long = ["Paris"] * 10, ["a long answer of many words that goes on"] * 10
    assert apply_gate("int8", 0.0, 0.9, 0.80, 0.79, short)[0]
    assert not apply_gate("int8", 0.0, 0.9, 0.80, 0.78, short)[0]
    rule = "int8: |ROUGE-L difference| <= 1.0 points, token agreement >= 50%"
    assert apply_gate("int8", 0.0, 0.9, 0.80, 0.70, long) == (True, rule)
    assert not apply_gate("int8", 0.011, 1.0, 0.8, 0.8, short)[0]
    assert apply_gate(None, 0.0, 0.99, 0.8, 0.0, short)[0]


def test_the_gate_fails_answers_that_drift_from_pytorchs_where_the_references_cannot_tell() -> None:
    """Long free-text references score both sides near 0: ROUGE alike, yet the answers are another model's."""
    long = ["a long answer of many words that goes on"] * 10
    assert apply_gate("int8", 0.0, 0.5, 0.0, 0.0, long, token_agreement=0.5)[0]
    assert not apply_gate("int8", 0.0, 0.03, 0.0, 0.0, long, token_agreement=0.095)[0]
    assert not apply_gate("int8", 0.0, 0.5, 0.0, 0.0, long, token_agreement=0.49)[0]  # just under the floor


def test_int8_from_a_vnni_cpu_warns_on_a_cpu_without(
    artifact_int8: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from edgeqa.runtime import graphs

    manifest = Manifest.read(artifact_int8)
    assert manifest.quantization and manifest.quantization.export_cpu
    full_range = replace(
        manifest,
        quantization=replace(manifest.quantization, reduce_range=False, export_cpu=CpuRecord("x86_64", vnni=True)),
    )
    monkeypatch.setattr(graphs, "has_vnni", lambda: False)
    with caplog.at_level(logging.WARNING, logger="edgeqa.runtime.graphs"):
        assert "this CPU has no VNNI" in (graphs.warn_if_saturating(full_range) or "")
    assert "saturate" in caplog.text
    seven_bit = replace(full_range, quantization=replace(full_range.quantization, reduce_range=True))  # type: ignore[arg-type]
    assert graphs.warn_if_saturating(seven_bit) is None
    monkeypatch.setattr(graphs, "has_vnni", lambda: True)
    assert graphs.warn_if_saturating(full_range) is None


def test_nodes_map_to_their_modules(artifact_fp32: Path) -> None:
    import onnx

    from edgeqa.export.config import settings_for
    from edgeqa.export.nodes import node_module
    from edgeqa.export.quantize import float_nodes

    assert (
        node_module("encoder", "/block.0/layer.1/DenseReluDense/wo/MatMul")
        == "encoder/block.0/layer.1/DenseReluDense/wo"
    )
    assert node_module("encoder", "cross_kv//projections.3/MatMul") == "decoder/block.1/layer.1/EncDecAttention/v"
    assert (
        node_module("decoder", "/decoder/block.1/layer.0/SelfAttention/q/MatMul")
        == "decoder/block.1/layer.0/SelfAttention/q"
    )
    assert node_module("decoder", "/lm_head/MatMul") == "lm_head"
    assert (
        node_module("encoder", "/embed_tokens/Gather") == node_module("decoder", "/decoder/shared/Gather") == "shared"
    )
    encoder = onnx.load(str(artifact_fp32 / "encoder.onnx"), load_external_data=False)
    cross = float_nodes(encoder, "encoder", settings_for("avx512_vnni", ("EncDecAttention",)), frozenset())
    assert len(cross) == 4 and all(name.startswith("cross_kv//projections.") for name in cross)
    own = float_nodes(encoder, "encoder", settings_for("avx512_vnni", ("encoder", "wo")), frozenset())
    assert "/block.1/layer.1/DenseReluDense/wo/MatMul" in own and not set(own) & set(cross)
    decoder = onnx.load(str(artifact_fp32 / "decoder.onnx"), load_external_data=False)
    for name in ("embed_tokens", "shared"):  # the embedding by either name, in both graphs
        for graph, role in ((encoder, "encoder"), (decoder, "decoder")):
            kept = float_nodes(graph, role, settings_for("avx512_vnni", (name,)), frozenset())
            assert kept and all(node_module(role, node) == "shared" for node in kept), (name, role, kept)
