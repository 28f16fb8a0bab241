"""The export's graph passes (constant reshape targets, attention fused into MultiHeadAttention,
one cross-attention cache per question, joined int8 products) against the graphs as the exporter
writes them: fewer nodes, same numbers."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from edgeqa.export.attention import fuse_attention
from edgeqa.export.config import settings_for
from edgeqa.export.joined_products import join_shared_products
from edgeqa.export.shared_cross_cache import share_cross_cache
from edgeqa.export.static_shapes import constant_target, fold_reshape_shapes

# (rows, past positions, encoder positions): the first step, later steps, odd batches
CASES = [(1, 0, 7), (3, 0, 12), (1, 5, 9), (4, 11, 5)]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's encoder (with the cross-attention cache) and decoder graphs, as exported."""
    from edgeqa.export.graphs import DECODER, _append, _export_encoder, _export_part
    from edgeqa.export.loading import load_model

    raw = tmp_path_factory.mktemp("raw")
    encoder, cross = _export_encoder(str(tiny_model), raw)
    joined = _append(onnx.load(str(encoder), load_external_data=False), onnx.load(str(cross), load_external_data=False))
    onnx.save_model(joined, str(raw / "encoder.onnx"))
    return {"encoder": raw / "encoder.onnx", "decoder": _export_part(load_model(str(tiny_model)), DECODER, raw)}


def _copy(graph: Path, target: Path) -> Path:
    """A copy of the graph's folder (the graph file and its weights), and the graph's path in it."""
    shutil.copytree(graph.parent, target)
    return target / graph.name


def _feeds(session: ort.InferenceSession, rows: int, past: int, positions: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows * 100 + past)
    decoder = any(spec.name == "encoder_attention_mask" for spec in session.get_inputs())
    feeds = {}
    for spec in session.get_inputs():
        shape = [rows if "batch" in str(d) or d == "questions" else past if "past" in str(d) else d for d in spec.shape]
        shape = [positions if isinstance(d, str) else d for d in shape]
        if spec.name == "input_ids":
            feeds[spec.name] = rng.integers(2, 1000, (rows, 1 if decoder else positions))  # the decoder: one new token
        elif "mask" in spec.name:
            mask = np.ones(shape, dtype=np.int64)
            mask[0, -2:] = 0  # padding in the first row
            feeds[spec.name] = mask
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _outputs(path: Path, rows: int, past: int, positions: int) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, _feeds(session, rows, past, positions))


def _assert_same_results(before: Path, after: Path) -> None:
    for case in CASES:
        expected, actual = _outputs(before, *case), _outputs(after, *case)
        assert len(actual) == len(expected)
        for ours, theirs in zip(actual, expected, strict=True):
            assert ours.shape == theirs.shape
            assert np.array_equal(ours, theirs), case


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def _computed_reshapes(path: Path) -> int:
    """Reshapes whose target shape another node computes (not a constant)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    return sum(1 for node in graph.node if node.op_type == "Reshape" and node.input[1] not in constants)


@pytest.mark.parametrize(
    "source, result, target",
    [
        (["b", "s", 32], ["b", "s", 4, 8], [0, 0, 4, 8]),  # split into heads
        (["b", "s", 4, 8], ["b", "s", 32], [0, 0, 32]),  # and back
        (["s"], ["s", 1], [0, 1]),
        (["b", "s", 32], ["s", "b", 32], None),  # two dimensions a constant target cannot name
        (["b", 4], ["b", 0, 4], None),  # a size 0, which Reshape would read as "copy"
        (None, ["b", 4], None),
    ],
)
def test_constant_target(source, result, target):
    assert constant_target(source, result) == target


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_reshape_targets_become_constants_and_results_stay_bit_identical(exported, tmp_path, role):
    graph = _copy(exported[role], tmp_path / "folded")
    before = _computed_reshapes(exported[role])
    folded = fold_reshape_shapes(graph)
    assert folded >= before > 0
    assert _computed_reshapes(graph) == 0
    assert sum(_ops(graph).values()) < sum(_ops(exported[role]).values()) - 3 * before  # their Shape/Gather/Concat gone
    _assert_same_results(exported[role], graph)


def test_attention_becomes_one_node_a_layer_and_results_stay_bit_identical(exported, tmp_path, tiny_model):
    graph = _copy(exported["decoder"], tmp_path / "fused")
    fold_reshape_shapes(graph)
    layers, heads = 2, 4  # conftest.TINY
    fused = fuse_attention(graph, heads)
    ops = _ops(graph)
    # every cross-attention and every self-attention but layer 0's, whose position bias is sized by the
    # cache the fused node would return
    assert fused == 2 * layers - 1 == ops["MultiHeadAttention"]
    assert ops["Softmax"] == 1
    attention = next(
        n for n in onnx.load(str(graph), load_external_data=False).graph.node if n.op_type == "MultiHeadAttention"
    )
    attributes = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    assert attributes == {"num_heads": heads, "scale": 1.0}
    onnx.checker.check_model(str(graph))
    _assert_same_results(exported["decoder"], graph)


def test_an_attention_whose_cache_something_else_reads_is_left_as_exported(exported, tmp_path):
    """A near miss: another node reads layer 1's present key, which the fused node would return only
    where the attention ends; that attention stays as it is, the others are fused."""
    graph = _copy(exported["decoder"], tmp_path / "fused")
    fold_reshape_shapes(graph)
    model = onnx.load(str(graph), load_external_data=False)
    model.graph.node.append(helper.make_node("Identity", ["present.1.decoder.key"], ["extra"], name="extra"))
    model.graph.output.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, None))
    onnx.save_model(model, str(graph))
    reference = _copy(graph, tmp_path / "reference")
    assert fuse_attention(graph, 4) == 2  # the two cross-attentions
    assert _ops(graph)["Softmax"] == 2
    _assert_same_results(reference, graph)


def test_beams_read_one_cross_attention_cache_per_question(exported, tmp_path):
    fused = _copy(exported["decoder"], tmp_path / "fused")
    fold_reshape_shapes(fused)
    fuse_attention(fused, 4)
    shared = _copy(fused, tmp_path / "shared")
    assert share_cross_cache(shared, hidden=4 * 8)  # conftest.TINY: 4 heads of 8
    inputs = {i.name: i for i in onnx.load(str(shared), load_external_data=False).graph.input}
    per_question = ["encoder_attention_mask"] + [n for n in inputs if ".encoder." in n]
    assert len(per_question) == 1 + 2 * 2
    assert all(inputs[n].type.tensor_type.shape.dim[0].dim_param == "questions" for n in per_question)
    _assert_same_results(fused, shared)  # one row a question: bit for bit what it computed before

    # 2 questions x 3 beams against the fused graph fed each question's cache once per beam
    rows_session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    shared_session = ort.InferenceSession(str(shared), providers=["CPUExecutionProvider"])
    questions, beams = 2, 3
    feeds = _feeds(shared_session, questions * beams, 4, 6)
    feeds.update({n: feeds[n][:questions] for n in per_question})
    repeated = dict(feeds) | {n: np.repeat(feeds[n], beams, axis=0) for n in per_question}
    expected, actual = rows_session.run(None, repeated), shared_session.run(None, feeds)
    for ours, theirs in zip(actual, expected, strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)  # one product over the beams, not one a row


def test_a_graph_whose_cross_attention_is_not_fused_keeps_a_cache_per_row(exported, tmp_path):
    graph = _copy(exported["decoder"], tmp_path / "unfused")
    fold_reshape_shapes(graph)
    written = graph.read_bytes()
    assert not share_cross_cache(graph, hidden=32)
    assert graph.read_bytes() == written


def test_a_graph_the_shape_inference_cannot_follow_is_left_as_exported(tmp_path, monkeypatch, caplog):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Unknown", ["x"], ["shape"], domain="example.custom"),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)],
    )
    path = tmp_path / "graph" / "custom.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path))
    written = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert fold_reshape_shapes(path) == 0
    assert path.read_bytes() == written
    assert "reshape targets left as exported" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph"]  # nothing left in the working directory


@pytest.mark.parametrize("per_channel", [True, False])
def test_joined_int8_products_give_bit_identical_results(exported, tmp_path, per_channel):
    """q/k/v and wi_0/wi_1 read the same quantized rows: one product each, then a Split."""
    from edgeqa.export.quantize import _quantize_int8

    source = _copy(exported["decoder"], tmp_path / "source")
    settings = replace(settings_for(), per_channel=per_channel)
    graphs = {}
    for join in (False, True):
        graphs[join] = tmp_path / f"joined-{join}" / "decoder.onnx"
        graphs[join].parent.mkdir()
        _quantize_int8(source, graphs[join], settings, [], join=join)
    separate, joined = _ops(graphs[False]), _ops(graphs[True])
    layers = 2
    assert separate["MatMulIntegerToFloat"] - joined["MatMulIntegerToFloat"] == 3 * layers  # qkv: 3 -> 1, wi: 2 -> 1
    assert joined["Split"] - separate["Split"] == 2 * layers
    _assert_same_results(graphs[False], graphs[True])


def _products_graph(scales: dict[str, list[float]], extra_reader: bool) -> onnx.ModelProto:
    """Three int8 products of one quantized input (p, q: per-tensor or per-column scales) and one of another."""
    rng = np.random.default_rng(0)
    x = [helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, [3, 4]) for name in ("a", "b")]
    outputs = [helper.make_tensor_value_info(f"y{name}", onnx.TensorProto.FLOAT, [3, 2]) for name in "pqr"]
    tensors = [
        helper.make_tensor("rows_scale", onnx.TensorProto.FLOAT, [3, 1], [0.5, 0.25, 2.0]),
        helper.make_tensor("rows_zero", onnx.TensorProto.UINT8, [], [128]),
    ]
    nodes = []
    for name, rows in (("p", "a"), ("q", "a"), ("r", "b")):
        weight = rng.integers(-127, 128, (4, 2)).astype(np.int8)
        tensors.append(helper.make_tensor(f"w{name}", onnx.TensorProto.INT8, [4, 2], weight.ravel().tolist()))
        scale = scales.get(name, [0.1])
        tensors.append(
            helper.make_tensor(f"s{name}", onnx.TensorProto.FLOAT, [len(scale)] if len(scale) > 1 else [], scale)
        )
        tensors.append(helper.make_tensor(f"z{name}", onnx.TensorProto.INT8, [], [0]))
        inputs = [rows, f"w{name}", "rows_scale", f"s{name}", "rows_zero", f"z{name}"]
        nodes.append(helper.make_node("MatMulIntegerToFloat", inputs, [f"y{name}"], domain="com.microsoft"))
    if extra_reader:  # something else reads p's weight
        nodes.append(helper.make_node("Cast", ["wp"], ["wp_float"], to=onnx.TensorProto.FLOAT))
        outputs.append(helper.make_tensor_value_info("wp_float", onnx.TensorProto.FLOAT, [4, 2]))
    graph = helper.make_graph(nodes, "g", x, outputs, tensors)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )


@pytest.mark.parametrize("extra_reader", [False, True])
def test_products_of_the_same_rows_are_joined_whatever_their_scales(extra_reader):
    """p (per-column scales) and q (one scale) read the same rows: one product, then a Split, with the
    same results; r reads other rows and stays; a weight something else reads stays too."""
    model = _products_graph({"p": [0.1, 0.3]}, extra_reader)
    feeds = {name: np.random.default_rng(1).integers(0, 256, (3, 4)).astype(np.uint8) for name in ("a", "b")}

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    expected = run(model)
    assert join_shared_products(model) == 2
    assert sorted(n.op_type for n in model.graph.node) == sorted(
        ["MatMulIntegerToFloat", "MatMulIntegerToFloat", "Split"] + ["Cast"] * extra_reader
    )
    assert ("wp" in {t.name for t in model.graph.initializer}) == extra_reader
    for ours, theirs in zip(run(model), expected, strict=True):
        assert np.array_equal(ours, theirs)


def test_products_of_different_rows_are_not_joined():
    x = [helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, [1, 2]) for name in ("a", "b")]
    y = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 2]) for name in ("ya", "yb")]
    weights = [helper.make_tensor(name, onnx.TensorProto.INT8, [2, 2], [1, 2, 3, 4]) for name in ("wa", "wb")] + [
        helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [0.5]) for name in ("s", "ws")
    ]
    weights += [
        helper.make_tensor("zp", onnx.TensorProto.UINT8, [], [128]),
        helper.make_tensor("wz", onnx.TensorProto.INT8, [], [0]),
    ]
    nodes = [
        helper.make_node("MatMulIntegerToFloat", [rows, w, "s", "ws", "zp", "wz"], [out], domain="com.microsoft")
        for rows, w, out in (("a", "wa", "ya"), ("b", "wb", "yb"))
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", x, y, weights))
    assert join_shared_products(model) == 0
    assert [n.op_type for n in model.graph.node] == ["MatMulIntegerToFloat"] * 2
