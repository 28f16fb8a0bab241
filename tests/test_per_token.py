"""Per-token int8 activations: a row's answer does not depend on its batch or its padding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import build_t5
from edgeqa.errors import ExportError
from edgeqa.export.config import settings_for
from edgeqa.export.per_token import per_token_activations
from edgeqa.export.quantize import count_ops, quantize_graph
from edgeqa.manifest import Manifest
from edgeqa.records import sample_data
from edgeqa.runtime import QAModel

# Small enough to export in seconds, big enough that a random model's answers are full of near-ties.
MINI = dict(d_model=256, d_kv=32, d_ff=512, num_layers=4, num_decoder_layers=4, num_heads=4)


def _toy_graph(path: Path) -> Path:
    """x (batch, positions, 64) -> two MatMuls sharing x (as q and k do), and one on the first's output."""
    rng = np.random.default_rng(0)
    weights = {"w_a": (64, 48), "w_b": (64, 32), "w_c": (48, 16)}
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_a"], ["a"], name="a/MatMul"),
            helper.make_node("MatMul", ["x", "w_b"], ["b"], name="b/MatMul"),
            helper.make_node("MatMul", ["a", "w_c"], ["c"], name="c/MatMul"),
        ],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "positions", 64])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("b", "c")],
        [
            numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
            for name, shape in weights.items()
        ],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _quantized(source: Path, granularity: str):
    import onnxruntime as ort

    target = source.with_name(f"{granularity}.onnx")
    quantize_graph(source, target, settings_for("avx512_vnni", activation_granularity=granularity), "decoder")
    return target, ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])


def test_per_token_rows_do_not_depend_on_their_batch_and_are_closer_to_float(tmp_path):
    import onnxruntime as ort

    source = _toy_graph(tmp_path / "toy.onnx")
    rng = np.random.default_rng(1)
    # rows of very different magnitude, the way T5's activations are; the last row is padding (zeros)
    x = rng.standard_normal((4, 5, 64)).astype(np.float32) * np.array([1.0, 30.0, 0.05, 3.0])[:, None, None]
    x = x.astype(np.float32)
    x[3, 3:] = 0.0
    exact = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(["b", "c"], {"x": x})
    errors = {}
    for granularity in ("per-tensor", "per-token"):
        path, session = _quantized(source, granularity)
        batch = session.run(["b", "c"], {"x": x})
        alone = [session.run(["b", "c"], {"x": x[i : i + 1, : (3 if i == 3 else 5)]}) for i in range(4)]
        same = all(
            np.array_equal(batch[k][i, : row[k].shape[1]], row[k][0]) for i, row in enumerate(alone) for k in range(2)
        )
        assert same == (granularity == "per-token"), granularity
        # worst relative error of a row, over rows and outputs
        errors[granularity] = max(
            np.abs(q[i] - e[i]).max() / np.abs(e[i]).max() for q, e in zip(batch, exact, strict=True) for i in range(3)
        )
    assert errors["per-token"] < 0.05, errors
    assert errors["per-token"] < errors["per-tensor"] / 2, errors
    ops = count_ops(path)
    # a decoder graph: the two MatMuls that read the same activation are one product, then a Split
    assert ops["MatMulIntegerToFloat"] == 2 and ops["Split"] == 1, ops
    assert ops["DynamicQuantizeLinear"] == 0 and ops["MatMulInteger"] == 0, ops
    assert ops["QuantizeLinear"] == 2, "one quantization per activation, shared by the MatMuls that read it"


def test_per_token_rewrite_refuses_a_graph_it_does_not_know(tmp_path):
    source = _toy_graph(tmp_path / "toy.onnx")
    path, _ = _quantized(source, "per-tensor")
    model = onnx.load(str(path))
    cast = next(node for node in model.graph.node if node.op_type == "Cast")
    model.graph.node.append(helper.make_node("Identity", [cast.output[0]], ["extra"], name="extra"))
    with pytest.raises(ExportError, match="cannot rewrite"):
        per_token_activations(model)


def _agreement(artifact: Path, questions: list[str], even_rows: bool | None = None) -> int:
    from edgeqa.runtime import QAModel

    model = QAModel.load(artifact)
    if even_rows is not None:
        model.graphs.even_rows = even_rows
    batched = model.answer_batch(questions, batch_size=8, max_new_tokens=16)
    alone = [model.answer(question, max_new_tokens=16) for question in questions]
    return sum(a.tokens == b.tokens for a, b in zip(batched, alone, strict=True))


@pytest.mark.slow
def test_random_model_answers_the_same_whatever_it_is_batched_with(tmp_path):
    """On a random model (near-ties everywhere) per-tensor int8 agrees on few answers; per-token on all."""
    from edgeqa.bench.levers import variant
    from edgeqa.export import ExportConfig, export_artifact

    checkpoint = build_t5(tmp_path / "mini", seed=3, **MINI)
    fp32 = export_artifact(ExportConfig(checkpoint=str(checkpoint), output=tmp_path / "fp32", parity=False)).output
    int8 = export_artifact(
        ExportConfig(checkpoint=str(checkpoint), output=tmp_path / "int8", quantize="int8", parity=False)
    ).output
    quantization = Manifest.read(int8).quantization
    assert quantization and quantization.activation_granularity == "per-token"
    per_tensor = variant(fp32, tmp_path / "per-tensor", settings_for("auto", activation_granularity="per-tensor"))
    # an artifact of the current format, written before the granularity was recorded, still loads
    manifest = json.loads((per_tensor / "manifest.json").read_text(encoding="utf-8"))
    del manifest["quantization"]["activation_granularity"]
    (per_tensor / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert "activations per-tensor" in Manifest.read(per_tensor).describe()

    rows = [json.loads(line) for line in sample_data("validation").read_text(encoding="utf-8").splitlines()]
    questions = [row["question"] for row in rows[:100]]
    lengths = {len(q.split()) for q in questions}
    assert len(lengths) > 10, "prompts of mixed lengths, so that batches pad"
    assert _agreement(int8, questions) >= 99
    assert _agreement(fp32, questions) == 100
    assert _agreement(per_tensor, questions) <= 50, "the model must show the defect, or this test proves nothing"
    # int4: MatMulNBits quantizes activations per row already, but computes rows in pairs and a lone
    # last row another way; the runtime decodes an even number of rows for int4 artifacts.
    int4 = variant(fp32, tmp_path / "int4", settings_for("auto", method="int4"))
    assert QAModel.load(int4).graphs.even_rows
    assert _agreement(int4, questions) == 100
    assert _agreement(int4, questions, even_rows=False) <= 95, "odd rows alone must show the defect"
    # beam search: 3 beams a question share its cross cache; an odd number of rows gets a whole
    # extra question (its 3 rows and its cache row), alone (3 rows) as in a batch of 3 (9 rows)
    model = QAModel.load(int4)
    assert model.graphs.shared_cross
    beams = dict(num_beams=3, max_new_tokens=8)
    alone = [model.answer(question, **beams).tokens for question in questions[:12]]
    assert [a.tokens for a in model.answer_batch(questions[:12], batch_size=3, **beams)] == alone


def _rows_with_outliers() -> np.ndarray:
    """(1, 40, 64) float32 rows: magnitudes 1e-3 to 1e3, outlier channels, exact ties, a row of zeros."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 40, 64)) * 10.0 ** rng.uniform(-3, 3, (1, 40, 1))
    x[0, :20, [5, 40]] *= 512  # T5's outlier channels, in half the rows
    x[0, 20, 9] = -1e4  # one huge value, the rest tiny
    x[0, 21] = 0.0
    # max |x| 127/16 makes the scale exactly 1/16: (k + 0.5) / 16 lies half-way between two codes
    x[0, 22] = (rng.integers(-127, 127, 64) + 0.5) / 16
    x[0, 22, 0] = 127 / 16
    return x.astype(np.float32)


def _with_outputs(path: Path, outputs: dict[str, int]) -> object:
    """A session of the graph at `path` that also returns the tensors `outputs` names (with their types)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.extend(helper.make_tensor_value_info(name, kind, None) for name, kind in outputs.items())
    exposed = path.with_name(f"exposed-{path.name}")
    onnx.save_model(model, str(exposed))
    return ort.InferenceSession(str(exposed), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("granularity", ["per-token", "per-tensor"])
def test_the_fallback_emulates_the_exported_activation_quantizer_bit_for_bit(tmp_path, granularity):
    """export.activation_quant gives onnxruntime's codes and scales exactly, and the fallback's Linear its product."""
    import torch

    from edgeqa.export.activation_quant import fake_quantize, quantize_rows, quantize_tensor
    from edgeqa.export.fallback import emulated_quantization

    source = _toy_graph(tmp_path / "toy.onnx")
    path, _ = _quantized(source, granularity)
    graph = onnx.load(str(path), load_external_data=False).graph
    op_type = "QuantizeLinear" if granularity == "per-token" else "DynamicQuantizeLinear"
    node = next(node for node in graph.node if node.op_type == op_type and node.input[0] == "x")
    if granularity == "per-token":  # QuantizeLinear(x, scale, zero point) -> codes
        names = {node.output[0]: TensorProto.UINT8, node.input[1]: TensorProto.FLOAT, node.input[2]: TensorProto.UINT8}
    else:  # DynamicQuantizeLinear(x) -> codes, scale, zero point
        names = dict(zip(node.output, (TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8), strict=True))
    x = _rows_with_outliers()
    b, *found = _with_outputs(path, names).run(["b", *names], {"x": x})
    if granularity == "per-token":
        codes, scale = (t.numpy() for t in quantize_rows(torch.from_numpy(x)))
        assert np.all(found[2] == 128) and np.array_equal(found[1], scale)
        live = scale[..., 0] > 0  # the row of zeros: 0 / 0, whose codes onnxruntime makes 0 and any code reads as 0
        assert np.array_equal(found[0][live], codes[live]) and live.sum() == len(x[0]) - 1
        with np.errstate(invalid="ignore"):
            ratio = x[0, 22] / scale[0, 22]
        assert np.sum(np.abs(ratio) % 1 == 0.5) > 10, "the tie row must hold ties"
    else:
        codes, scale, zero = (t.numpy() for t in quantize_tensor(torch.from_numpy(x)))
        assert np.array_equal(found[0], codes) and found[1] == scale and found[2] == zero
    dequantized = (found[0].astype(np.float32) - found[-1].astype(np.float32)) * found[1]
    assert np.array_equal(fake_quantize(torch.from_numpy(x), granularity).numpy(), dequantized)
    # the product: the fallback's emulated Linear against the exported integer MatMul
    weight = numpy_helper.to_array(next(t for t in onnx.load(str(source)).graph.initializer if t.name == "w_b"))
    linear = torch.nn.Linear(64, 32, bias=False)
    linear.weight.data = torch.from_numpy(weight.T.copy())
    model = torch.nn.Sequential(linear)
    with (
        torch.no_grad(),
        emulated_quantization(model, {"0"}, settings_for("avx512_vnni", activation_granularity=granularity)),
    ):
        emulated = model(torch.from_numpy(x)).numpy()
    exact = x @ weight
    peak = np.abs(exact).max(-1, keepdims=True) + 1e-30
    gap, error = np.abs(emulated - b) / peak, np.abs(exact - b) / peak
    assert gap.max() < 1e-5, gap.max()
    assert gap.max() < error.max() / 100, "the emulation is far closer to the graph than float is"
