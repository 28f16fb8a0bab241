"""Constant target shapes for the Reshapes of an exported graph, where the graph computes them at run time.

The exporter writes each attention reshape's target shape as a chain of small nodes that runs every
step: Shape -> Gather -> Unsqueeze -> Concat, for (batch, length, heads, d_kv) and back. Symbolic
shape inference (onnxruntime's, without merging dimensions) proves what each Reshape returns in
terms of the graph's input dimensions; a target whose dimensions are all either a number, the same
symbol as the input's dimension at that index (Reshape's 0: copy it), or at most one other (-1) is
written as a constant, and the nodes nothing reads any more are dropped. On the flan-t5-base decoder
step that is 120 of its 1,005 nodes a step (`benchmarks/README.md`, levers table); the graph's
results are unchanged (a Reshape's target only names the output's shape).

The rewrite reads no weights: the external-data initializers become plain inputs of the copy that
inference sees, so it runs in the memory of the graph's structure, whatever the checkpoint's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from edgeqa.errors import ExportError

logger = logging.getLogger(__name__)

Dim = int | str | None  # a number, a symbol, or unknown


def fold_reshape_shapes(path: Path) -> int:
    """Rewrite the graph file at `path` in place (its weights stay where they are); returns how many
    Reshapes got a constant target shape."""
    model = onnx.load(str(path), load_external_data=False)
    if any(attribute.type == onnx.AttributeProto.GRAPH for node in model.graph.node for attribute in node.attribute):
        return 0  # a subgraph reads names of the graph around it: leave such graphs alone
    shapes = _symbolic_shapes(model)
    folded = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or _allows_zero(node):
            continue
        target = constant_target(shapes.get(node.input[0]), shapes.get(node.output[0]))
        if target is None:
            continue
        name = f"{node.output[0]}/constant_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array(target, dtype=np.int64), name))
        node.input[1] = name
        folded += 1
    dropped = drop_unused(model.graph)
    if folded:
        onnx.save_model(model, str(path))
        logger.info("%s: %d reshapes with constant shapes, %d nodes dropped", path.name, folded, dropped)
    return folded


def constant_target(source: list[Dim] | None, result: list[Dim] | None) -> list[int] | None:
    """The constant Reshape target that turns a `source`-shaped tensor into a `result`-shaped one, or None.

    Each result dimension is its number, 0 where it is the source's dimension at the same index
    (Reshape copies it), or -1 for the one dimension left (Reshape infers it from the size).
    """
    if source is None or result is None or not result:
        return None
    target = []
    for index, dim in enumerate(result):
        if isinstance(dim, int):
            target.append(dim)
        elif isinstance(dim, str) and index < len(source) and source[index] == dim:
            target.append(0)
        else:
            target.append(-1)
    if target.count(-1) > 1 or 0 in [dim for dim in result if isinstance(dim, int)]:
        return None  # two unknowns, or a dimension of size 0, which Reshape would read as "copy"
    return target


def _allows_zero(node: onnx.NodeProto) -> bool:
    return any(attribute.name == "allowzero" and attribute.i for attribute in node.attribute)


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Every tensor's shape as onnxruntime's symbolic shape inference proves it, weights unread."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    inline = [tensor for tensor in skeleton.graph.initializer if not uses_external_data(tensor)]
    for tensor in skeleton.graph.initializer:
        if uses_external_data(tensor):
            skeleton.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(inline)
    try:
        inferred = SymbolicShapeInference.infer_shapes(skeleton, auto_merge=False, guess_output_rank=False)
    except Exception as e:  # the inference raises assorted types on graphs it cannot follow
        raise ExportError(f"symbolic shape inference of the exported graph failed: {e}") from e
    graph = inferred.graph
    shapes: dict[str, list[Dim]] = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
                for dim in info.type.tensor_type.shape.dim
            ]
    return shapes


def drop_unused(graph: onnx.GraphProto) -> int:
    """Remove the nodes whose outputs nothing reads, and the inline constants only they read."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(node.input)
    dropped = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unused = [t for t in graph.initializer if t.name not in needed and not uses_external_data(t)]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return dropped
