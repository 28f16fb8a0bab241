"""One integer product for the weights that read the same quantized activation, then a Split.

T5's q, k and v projections read the same normed activation, as do the two halves of the gated
feed-forward (wi_0, wi_1). After per-token quantization (`export.per_token`) each is a
`MatMulIntegerToFloat` of the same quantized rows. This pass joins each such set into one product
over the weights side by side (columns concatenated, with their per-column scales and zero points),
whose output a Split cuts back into the original tensors. The integer sums are exact and every
column keeps its own scale, so the results are bit-identical; fewer, wider products read the
weights at a better rate (a flan-t5-base decoder step's 109 products become 73; `benchmarks/results/history.md`,
levers table). Only the decoder graph is joined: the encoder's products have many rows (batch x
length), and there the Split's copy of the joined outputs costs more than the join saves.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeqa.export.graph_edits import has_subgraphs, remove_initializers, splice

logger = logging.getLogger(__name__)

_PRODUCT = "MatMulIntegerToFloat"


def join_shared_products(model: onnx.ModelProto) -> int:
    """Join, in place, the int8 products of the model's main graph that share their activation input
    (weights loaded in the model); returns how many products were joined."""
    graph = model.graph
    if has_subgraphs(graph):
        return 0  # a subgraph may read the weights this would replace
    weights = {tensor.name: tensor for tensor in graph.initializer}
    groups: dict[tuple[object, ...], list[onnx.NodeProto]] = {}
    for node in graph.node:
        kinds = _joinable(node, weights)
        if kinds is not None:
            # the same rows, their scales and zero point, and weights of the same types
            groups.setdefault((node.input[0], node.input[2], node.input[4], *kinds), []).append(node)
    outputs = {output.name for output in graph.output}
    readers = Counter(name for node in graph.node for name in node.input)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    for products in groups.values():
        if len(products) > 1:
            # at the first product's place: its inputs are ready there, and later nodes read its output
            replacements[id(products[0])] = _join(graph, products, weights)
            removed.update(id(node) for node in products)
            for node in products:
                for index in (1, 3, 5):
                    readers[node.input[index]] -= 1
    if not replacements:
        return 0
    splice(graph, replacements, removed)
    # the separate weights, scales and zero points, unless something else reads them too
    remove_initializers(graph, {name for name, count in readers.items() if count == 0 and name not in outputs})
    logger.debug("%d int8 products joined into %d", len(removed), len(replacements))
    return len(removed)


def _joinable(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> tuple[int, int] | None:
    """The weight's and zero point's types, for a product of a 2-D constant weight with constant
    scales and zero points (one, or one per column) and no bias; None for any other node."""
    if node.op_type != _PRODUCT or len(node.input) != 6:
        return None
    weight, scale, zero_point = (weights.get(node.input[index]) for index in (1, 3, 5))
    if weight is None or scale is None or zero_point is None or len(weight.dims) != 2:
        return None
    columns = int(weight.dims[1])
    if any(int(np.prod(tensor.dims)) not in (1, columns) for tensor in (scale, zero_point)):
        return None
    return weight.data_type, zero_point.data_type


def _join(
    graph: onnx.GraphProto, products: list[onnx.NodeProto], weights: dict[str, onnx.TensorProto]
) -> list[onnx.NodeProto]:
    """The joined product and its Split, its weights, scales and zero points added to the graph."""
    columns = [int(weights[node.input[1]].dims[1]) for node in products]
    arrays = {"weight": [numpy_helper.to_array(weights[node.input[1]]) for node in products]}
    for part, index in (("scale", 3), ("zero_point", 5)):
        arrays[part] = [
            _per_column(numpy_helper.to_array(weights[node.input[index]]), width)
            for node, width in zip(products, columns, strict=True)
        ]
    base = products[0].name or products[0].output[0]
    names = {part: f"{base}_joined_{part}" for part in arrays}
    for part, parts in arrays.items():
        graph.initializer.append(numpy_helper.from_array(np.concatenate(parts, axis=-1), names[part]))
    first = products[0]
    joined_output = f"{base}_joined"
    sizes = f"{base}_joined_split"
    graph.initializer.append(numpy_helper.from_array(np.array(columns, dtype=np.int64), sizes))
    return [
        helper.make_node(
            _PRODUCT,
            [first.input[0], names["weight"], first.input[2], names["scale"], first.input[4], names["zero_point"]],
            [joined_output],
            name=f"{base}_joined",
            domain=first.domain,
        ),
        helper.make_node(
            "Split", [joined_output, sizes], [node.output[0] for node in products], name=f"{base}_split", axis=-1
        ),
    ]


def _per_column(values: np.ndarray, width: int) -> np.ndarray:
    """A weight's scales or zero points, one per column (a per-tensor one repeated)."""
    return values.reshape(-1) if values.size == width else np.full(width, values.reshape(-1)[0], dtype=values.dtype)
