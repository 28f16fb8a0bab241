"""The export's graph passes (constant reshape targets, attention fused into MultiHeadAttention,
joined int8 products) against the graphs as the exporter writes them: fewer nodes, same numbers."""

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
from edgeqa.export.static_shapes import constant_target, fold_reshape_shapes

# (rows, past positions, encoder positions): the first step, later steps, odd batches
CASES = [(1, 0, 7), (3, 0, 12), (1, 5, 9), (4, 11, 5)]


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's encoder (with the cross-attention cache) and decoder graphs, as exported."""
    from edgeqa.export.graphs import DECODER, _append, _export_encoder, _export_part, _load

    raw = tmp_path_factory.mktemp("raw")
    encoder, cross = _export_encoder(str(tiny_model), raw)
    joined = _append(onnx.load(str(encoder), load_external_data=False), onnx.load(str(cross), load_external_data=False))
    onnx.save_model(joined, str(raw / "encoder.onnx"))
    return {"encoder": raw / "encoder.onnx", "decoder": _export_part(_load(str(tiny_model)), DECODER, raw)}


def _copy(graph: Path, target: Path) -> Path:
    """A copy of the graph's folder (the graph file and its weights), and the graph's path in it."""
    shutil.copytree(graph.parent, target)
    return target / graph.name


def _feeds(session: ort.InferenceSession, rows: int, past: int, positions: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows * 100 + past)
    decoder = any(spec.name == "encoder_attention_mask" for spec in session.get_inputs())
    feeds = {}
    for spec in session.get_inputs():
        shape = [
            rows if "batch" in str(d) else past if "past" in str(d) else positions if isinstance(d, str) else d
            for d in spec.shape
        ]
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


def test_a_graph_without_the_attention_pattern_is_left_as_it_is(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y]))
    path = tmp_path / "softmax.onnx"
    onnx.save_model(model, str(path))
    written = path.read_bytes()
    assert fuse_attention(path, 4) == 0
    assert path.read_bytes() == written


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
