"""T5's attention in the decoder step graph as onnxruntime's `MultiHeadAttention` op, one node a layer's attention.

The exporter writes each attention as some fifteen nodes that run every step: reshapes and
transposes into heads, the cache concatenated, QK^T, the position bias (or encoder mask) added,
softmax, the product with V, and back. onnxruntime's own T5 fusions do not match edgeqa's graphs
(and its `RelativePositionBias` op has no CPU kernel), so this pass matches the exporter's
pattern itself and writes, for each attention of each layer:

    self-attention:   MultiHeadAttention(q, k, v, attention_bias=position bias + causal mask,
                                         past_key, past_value) -> out, present_key, present_value
    cross-attention:  MultiHeadAttention(q, cross key, cross value (BNSH, from the encoder graph),
                                         attention_bias=encoder mask) -> out

with `scale=1` (T5 does not scale its scores). The projections stay as they were, so
quantization treats them as before. The flan-t5-base decoder step goes from 897 to 670 nodes as
onnxruntime runs them, with bit-identical results (`benchmarks/results/history.md`, the levers). Layer 0's
self-attention stays as it is: its position bias is sized by the cache it returns. An attention
that does not match the pattern exactly is left as exported. The encoder graph is not fused:
there, over a question's many positions, the op's CPU kernel was slower than the plain nodes.
`export/shared_cross_cache.py` then lets a question's beams share one cross-attention cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from edgeqa.errors import ExportError
from edgeqa.export.graph_edits import attribute, drop_unused, has_subgraphs, splice

logger = logging.getLogger(__name__)

_CONTRIB = "com.microsoft"
_TO_HEADS, _TO_KEYS_LAST = [0, 2, 1, 3], [0, 1, 3, 2]


class _Graph:
    """Who produces and who reads each tensor of a graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {out: node for node in graph.node for out in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.inputs = {i.name for i in graph.input}
        self.outputs = {o.name for o in graph.output}
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if not uses_external_data(t)}

    def depends_on(self, name: str, sources: set[str]) -> bool:
        """Whether computing `name` reads any of `sources`."""
        pending, seen = [name], set()
        while pending:
            current = pending.pop()
            if current in sources:
                return True
            node = self.producer.get(current)
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                pending += node.input
        return False

    def made_by(self, name: str, op_type: str, perm: list[int] | None = None) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            return None
        if perm is not None and _perm(node) != perm:
            return None
        return node

    def only_reader(self, name: str, op_type: str, perm: list[int] | None = None) -> onnx.NodeProto | None:
        readers = self.readers.get(name, [])
        if len(readers) != 1 or name in self.outputs:
            return None
        node = readers[0]
        if node.op_type != op_type or (perm is not None and _perm(node) != perm):
            return None
        return node


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return attribute(node, "perm")


def fuse_attention(path: Path, num_heads: int) -> int:
    """Rewrite the decoder step graph at `path` in place (weights untouched); returns how many
    attentions became `MultiHeadAttention` nodes. Run it after `fold_reshape_shapes`: the heads are
    read off the constant reshape targets."""
    model = onnx.load(str(path), load_external_data=False)
    if has_subgraphs(model.graph):
        return 0  # a subgraph reads names of the graph around it: leave such graphs alone
    graph = _Graph(model.graph)
    replacements: dict[int, onnx.NodeProto] = {}  # id of the last node of a match -> its MHA node
    removed: set[int] = set()
    for softmax in [node for node in model.graph.node if node.op_type == "Softmax"]:
        match = _match(graph, softmax, num_heads)
        if match is None:
            continue
        nodes, fused = match
        replacements[id(nodes[-1])] = fused
        removed.update(id(node) for node in nodes)
    if not replacements:
        return 0
    splice(model.graph, {key: [node] for key, node in replacements.items()}, removed)
    drop_unused(model.graph)
    _check_order(model.graph)
    # ONNX shape inference knows no contrib op: declare what the fused nodes return (the quantizer reads it)
    typed = {info.name for info in [*model.graph.value_info, *model.graph.output]}
    model.graph.value_info.extend(
        helper.make_tensor_value_info(fused.output[0], onnx.TensorProto.FLOAT, None)
        for fused in replacements.values()
        if fused.output[0] not in typed
    )
    if not any(opset.domain == _CONTRIB for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_CONTRIB, 1))
    onnx.save_model(model, str(path))
    logger.debug("%s: %d attentions fused into MultiHeadAttention", path.name, len(replacements))
    return len(replacements)


def _check_order(graph: onnx.GraphProto) -> None:
    """Every node reads only what the graph's inputs, its weights or earlier nodes give."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        missing = [name for name in node.input if name not in known]
        if missing:
            raise ExportError(f"fusing attention left {node.name} reading {missing[0]} before it is computed")
        known.update(node.output)


def _match(
    graph: _Graph, softmax: onnx.NodeProto, num_heads: int
) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The exporter's nodes of one attention around `softmax` (the last one is the output Reshape),
    and the `MultiHeadAttention` node that computes the same; None where anything differs."""
    nodes: list[onnx.NodeProto] = [softmax]
    if attribute(softmax, "axis", -1) not in (-1, 3):
        return None
    scores = softmax.input[0]
    cast = graph.made_by(scores, "Cast")
    if cast is not None:
        if len(graph.readers[scores]) != 1 or attribute(cast, "to") != onnx.TensorProto.FLOAT:
            return None
        nodes.append(cast)
        scores = cast.input[0]
    add = graph.made_by(scores, "Add")
    if add is None or len(graph.readers.get(scores, [])) != 1:
        return None
    products = [name for name in add.input if graph.made_by(name, "MatMul") is not None]
    if len(products) != 1 or graph.only_reader(products[0], "Add") is None:
        return None
    bias = next(name for name in add.input if name != products[0])
    qk = graph.producer[products[0]]
    query_heads = graph.made_by(qk.input[0], "Transpose", _TO_HEADS)
    query = _projection(graph, query_heads, num_heads) if query_heads is not None else None
    weighted = graph.only_reader(softmax.output[0], "MatMul")
    back = graph.only_reader(weighted.output[0], "Transpose", _TO_HEADS) if weighted is not None else None
    merged = graph.only_reader(back.output[0], "Reshape") if back is not None else None
    if query_heads is None or query is None or weighted is None or back is None or merged is None:
        return None
    if weighted.input[0] != softmax.output[0] or len(graph.readers[qk.input[1]]) != 1:
        return None
    nodes += [add, qk, query_heads, graph.producer[query_heads.input[0]], weighted, back]
    found = _keys_and_values(graph, qk.input[1], weighted.input[1], num_heads)
    if found is None:
        return None
    inputs, outputs, kv_nodes = found
    nodes += kv_nodes
    removed = {out for node in nodes for out in node.output} - set(outputs) - {merged.output[0]}
    if graph.depends_on(bias, removed | set(outputs)):
        return None  # layer 0 sizes the position bias by the cache it returns: the node would read its own output
    fused = helper.make_node(
        "MultiHeadAttention",
        [query, *inputs[:2], "", "", bias, *inputs[2:]],
        [merged.output[0], *outputs],
        name=(merged.name or merged.output[0]).rsplit("/", 1)[0] + "/MultiHeadAttention",
        domain=_CONTRIB,
        num_heads=num_heads,
        scale=1.0,
    )
    return [*nodes, merged], fused


def _keys_and_values(
    graph: _Graph, keys_side: str, values: str, num_heads: int
) -> tuple[list[str], list[str], list[onnx.NodeProto]] | None:
    """What `MultiHeadAttention` reads for the keys (as QK^T's right side reads them) and the values:
    (key, value[, past key, past value]), the present cache outputs, and the nodes that made them.

    Two forms: the cross-attention cache from the encoder graph (graph inputs, BNSH), or the
    self-attention cache, Concat(past, new), which the graph returns as the present cache.
    """
    transposed = graph.made_by(keys_side, "Transpose")
    if transposed is None:
        return None
    keys = transposed.input[0]
    if _perm(transposed) != _TO_KEYS_LAST:
        return None
    if keys in graph.inputs and values in graph.inputs:
        return [keys, values], [], [transposed]
    cached = [_cached(graph, name, num_heads) for name in (keys, values)]
    if cached[0] is None or cached[1] is None:
        return None
    # the fused node returns the present cache where the attention ends: nothing else may read it before
    if graph.readers[keys] != [transposed] or len(graph.readers[values]) != 1:
        return None
    (past_key, key, key_nodes), (past_value, value, value_nodes) = cached[0], cached[1]
    return [key, value, past_key, past_value], [keys, values], [transposed, *key_nodes, *value_nodes]


def _projection(graph: _Graph, to_heads: onnx.NodeProto, num_heads: int) -> str | None:
    """The (batch, length, heads x d_kv) projection that the Transpose `to_heads` reads through a Reshape
    into `num_heads` heads, where only it reads that Reshape and only one node reads it."""
    split = graph.made_by(to_heads.input[0], "Reshape")
    if split is None or len(graph.readers[split.output[0]]) != 1:
        return None
    if len(graph.readers.get(to_heads.output[0], [])) != 1:
        return None
    target = graph.constants.get(split.input[1])
    if target is None or target.shape != (4,) or int(target[2]) != num_heads:
        return None
    return split.input[0]


def _cached(graph: _Graph, present: str, num_heads: int) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """For a present cache output Concat(past, Transpose(Reshape(projection))): past, projection, those nodes."""
    concat = graph.made_by(present, "Concat")
    if concat is None or present not in graph.outputs or len(concat.input) != 2:
        return None
    axis = attribute(concat, "axis")
    past, new = concat.input
    to_heads = graph.made_by(new, "Transpose", _TO_HEADS)
    if axis not in (2, -2) or past not in graph.inputs or to_heads is None:
        return None
    projection = _projection(graph, to_heads, num_heads)
    if projection is None:
        return None
    return past, projection, [concat, to_heads, graph.producer[to_heads.input[0]]]
