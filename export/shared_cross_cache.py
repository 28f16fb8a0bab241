"""One cross-attention cache per question in the decoder step graph, however many beams it has.

As exported, the decoder step reads the cross-attention keys/values (and the encoder mask) of
every decoder row, so beam search repeated a question's cache once per beam: at batch 8 x 4 beams
the base model's caches were 151 MB, and every step read each one four times. With
cross-attention one `MultiHeadAttention` node a layer (`export/attention.py`), the beams of a
question can instead be that node's query positions:

    query (rows, 1, hidden) -> Reshape (questions, beams, hidden)
    MultiHeadAttention(query, cross key, cross value (questions, heads, positions, d_kv),
                       attention_bias Tiled to (questions, heads, beams, positions))
    output (questions, beams, hidden) -> Reshape (rows, 1, hidden)

where `questions` is the cross cache's first dimension and `beams` = rows / questions, the rows of
one question next to each other (as beam search orders them). With one row a question (greedy
search, or a caller that still repeats the cache per row) the graph computes what it computed
before, bit for bit; with beams, each beam's scores come from one product over all the beams, a
float-rounding difference (1e-7) from one product a row. The graph's cross-cache and encoder-mask
inputs name their first dimension `questions`: that is how the runtime tells such a graph from one
that wants a cache per row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeqa.export.graph_edits import has_subgraphs, splice
from edgeqa.manifest import QUESTIONS_DIM

logger = logging.getLogger(__name__)

_CROSS_KEY, _MASK, _TOKENS = "past_key_values.{}.encoder.key", "encoder_attention_mask", "input_ids"


def share_cross_cache(path: Path, hidden: int) -> bool:
    """Rewrite the decoder step graph at `path` in place (weights untouched) to read one
    cross-attention cache per question; returns whether it did.

    Only a graph whose every cross-attention is a fused `MultiHeadAttention` node reading the
    cache inputs directly, all with one attention bias, is rewritten; any other is left as it is.
    That bias is the exporter's: the encoder mask (then one row a question) over zeros shaped by
    the positions, the same for every beam of a question, so tiling it over the beams is exact.

    Args:
        hidden: heads x d_kv, the query's last dimension.
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    layers = sum(1 for name in inputs if name.endswith(".encoder.key"))
    cross = [
        node
        for node in graph.node
        if node.op_type == "MultiHeadAttention" and len(node.input) == 6 and node.input[1] in inputs
    ]
    keys = {node.input[1] for node in cross}
    values = {key.replace(".key", ".value") for key in keys}
    biases = {node.input[5] for node in cross}
    if (
        has_subgraphs(graph)
        or layers == 0
        or len(cross) != layers
        or keys != {_CROSS_KEY.format(layer) for layer in range(layers)}
        or any(node.input[2] != node.input[1].replace(".key", ".value") for node in cross)
        or len(biases) != 1
        or "" in biases
        or {_MASK, _TOKENS} - set(inputs)
    ):
        return False

    def name(suffix: str) -> str:
        return f"/decoder/shared_cross_cache/{suffix}"

    constants = {"rest_of_query": [-1, hidden], "hidden": [hidden], "ones": [1, 1], "one": [1]}
    graph.initializer.extend(
        numpy_helper.from_array(np.array(shape, dtype=np.int64), name(key)) for key, shape in constants.items()
    )
    first_key, (bias,) = _CROSS_KEY.format(0), biases
    shapes = [
        helper.make_node("Shape", [first_key], [name("questions")], end=1),
        helper.make_node("Shape", [_TOKENS], [name("rows_and_length")]),
        helper.make_node("Shape", [_TOKENS], [name("rows")], end=1),
        helper.make_node("Div", [name("rows"), name("questions")], [name("beams")]),
        helper.make_node("Concat", [name("questions"), name("rest_of_query")], [name("query_shape")], axis=0),
        helper.make_node("Concat", [name("rows_and_length"), name("hidden")], [name("row_shape")], axis=0),
        helper.make_node("Concat", [name("ones"), name("beams"), name("one")], [name("tiles")], axis=0),
        helper.make_node("Tile", [bias, name("tiles")], [name("bias")]),
    ]
    replacements = {id(cross[0]): list(shapes)}
    for node in cross:
        query, output = f"{node.output[0]}/by_question/query", f"{node.output[0]}/by_question"
        rewritten = onnx.NodeProto()
        rewritten.CopyFrom(node)
        rewritten.input[0], rewritten.input[5], rewritten.output[0] = query, name("bias"), output
        replacements.setdefault(id(node), []).extend(
            [
                helper.make_node("Reshape", [node.input[0], name("query_shape")], [query], name=f"{node.name}/query"),
                rewritten,
                helper.make_node("Reshape", [output, name("row_shape")], [node.output[0]], name=f"{node.name}/rows"),
            ]
        )
    splice(graph, replacements, {id(node) for node in cross})
    for per_question in (_MASK, *keys, *values):
        inputs[per_question].type.tensor_type.shape.dim[0].dim_param = QUESTIONS_DIM
    onnx.save_model(model, str(path))
    logger.debug("%s: one cross-attention cache per question (%d layers)", path.name, layers)
    return True
