"""Constant target shapes for the Reshapes of an exported graph, where the graph computes them at run time.

The exporter writes each attention reshape's target shape as a chain of small nodes that runs every
step: Shape -> Gather -> Unsqueeze -> Concat, for (batch, length, heads, d_kv) and back. Symbolic
shape inference (onnxruntime's, without merging dimensions) derives what each Reshape returns in
terms of the graph's input dimensions; a target whose dimensions are all either a number, the same
symbol as the input's dimension at that index (Reshape's 0: copy it), or at most one other (-1, and
then no 0, since a copied dimension may be 0 at run time) is written as a constant, and the nodes
nothing reads any more are dropped. That takes the
flan-t5-base decoder step from 1,005 to 897 nodes as onnxruntime runs them (`benchmarks/results/history.md`,
levers table); the results are unchanged (a Reshape's target only names the output's shape).

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

from edgeqa.export.graph_edits import attribute, drop_unused, has_subgraphs

logger = logging.getLogger(__name__)

Dim = int | str | None  # a number, a symbol, or unknown
_LITTER = "sym_shape_infer_temp.onnx"  # what onnxruntime's inference leaves when it fails


def fold_reshape_shapes(path: Path) -> int:
    """Rewrite the graph file at `path` in place (its weights stay where they are); returns how many
    Reshapes got a constant target shape."""
    model = onnx.load(str(path), load_external_data=False)
    if has_subgraphs(model.graph):
        return 0  # a subgraph reads names of the graph around it: leave such graphs alone
    shapes = _symbolic_shapes(model, path.name)
    if shapes is None:
        return 0
    constants = {tensor.name for tensor in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    folded = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or attribute(node, "allowzero", 0) or node.input[1] in constants:
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
        logger.debug("%s: %d reshapes with constant shapes, %d nodes dropped", path.name, folded, dropped)
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
    if -1 in target and 0 in target:
        return None  # a copied dimension can be 0 at run time (an empty cache), and -1 is then undefined
    return target


def _symbolic_shapes(model: onnx.ModelProto, name: str) -> dict[str, list[Dim]] | None:
    """Every tensor's shape as onnxruntime's symbolic shape inference proves it, weights unread; None
    (and a warning) where it cannot follow the graph, which then stays as it is."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    inline = [tensor for tensor in skeleton.graph.initializer if not uses_external_data(tensor)]
    for tensor in skeleton.graph.initializer:
        if uses_external_data(tensor):
            skeleton.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(inline)
    litter = sorted(Path.cwd().glob(f"{_LITTER}*"))
    try:
        inferred = SymbolicShapeInference.infer_shapes(skeleton, auto_merge=False, guess_output_rank=False)
    except Exception as e:  # the inference raises assorted types on graphs it cannot follow
        # it saves what it got to the working directory first
        for path in sorted(Path.cwd().glob(f"{_LITTER}*")):
            if path not in litter:
                path.unlink(missing_ok=True)
        logger.warning("%s: reshape targets left as exported: symbolic shape inference failed (%s)", name, e)
        return None
    if inferred is None:  # an opset before 7
        return None
    graph = inferred.graph
    shapes: dict[str, list[Dim]] = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
                for dim in info.type.tensor_type.shape.dim
            ]
    return shapes
