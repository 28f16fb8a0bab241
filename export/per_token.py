"""Per-token activation quantization: a graph rewrite after onnxruntime's `quantize_dynamic`.

`quantize_dynamic` quantizes each weight MatMul's activation input with `DynamicQuantizeLinear`:
one scale for the whole tensor, i.e. for every row of the batch and, in the encoder, every
position, padding included. A row's answer then depends on what it is batched with. This
rewrite gives each token row its own symmetric scale instead, so that a row's numbers depend
on that row alone (the rule, once, with its PyTorch emulation: `export.activation_quant`):

    scale = ReduceMax(Abs(x), axes=-1) * (1/127)        one scale per token row
    xq = QuantizeLinear(x, scale, 128, block_size=K)    uint8 (opset 21's blocked quantization)
    y = MatMulIntegerToFloat(xq, Wq, scale, w_scale, 128, w_zero_point)

The zero point is the constant 128 (symmetric, so the u8 x s8 integer kernels still run); one
uint8 tensor of 128s the shape of the scales serves every QuantizeLinear of a graph, since all of
T5's weight MatMuls read activations with the same token rows (a graph where they differ fails
to run, loudly). That is four small nodes per quantized activation (shared by the MatMuls that
read it, e.g. q, k and v) and one fused integer MatMul per weight, which applies the row scales
itself. The integer products are exact, so a row's results are bit-identical in any batch. A row
of zeros divides 0 by 0 and its output is 0 all the same (the product is multiplied by its scale).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx.version_converter
from onnx import helper, numpy_helper

from edgeqa.errors import ExportError
from edgeqa.export.activation_quant import INV_LEVELS, ZERO_POINT
from edgeqa.export.graph_edits import splice

#: Blocked QuantizeLinear (a scale per row) needs opset 21.
OPSET = 21
_CONTRIB = "com.microsoft"
_INV_127, _LAST_AXIS, _ZERO_POINT_SCALAR = "per_token_inv_127", "per_token_last_axis", "per_token_zero_point"


def per_token_activations(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every `DynamicQuantizeLinear` of the model (subgraphs included) to per-token scales.

    Returns:
        The rewritten model (at opset 21), and how many MatMuls now quantize per token.

    Raises:
        ExportError: a quantized activation feeds something other than the MatMulInteger ->
            Cast -> Mul chain that `quantize_dynamic` writes, or the opset conversion failed.
    """
    default = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if default < OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as e:  # the converter raises assorted types
            raise ExportError(f"converting the graph to opset {OPSET} for per-token quantization failed: {e}") from e
    # a subgraph (If branch) reads weights of the graphs around it
    weights = {tensor.name: tensor for graph in _graphs(model.graph) for tensor in graph.initializer}
    rewritten = sum(_rewrite(graph, weights) for graph in _graphs(model.graph))
    if rewritten and not any(opset.domain == _CONTRIB for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_CONTRIB, 1))
    return model, rewritten


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)


def _rewrite(graph: onnx.GraphProto, weights: dict[str, onnx.TensorProto]) -> int:
    quantizers = [node for node in graph.node if node.op_type == "DynamicQuantizeLinear"]
    if not quantizers:
        return 0
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    _add_constants(graph)
    removed: set[int] = set()
    retyped: set[str] = set()
    replacements: dict[int, list[onnx.NodeProto]] = {}
    zero_point: str | None = None
    for quantizer in quantizers:
        x, (xq, x_scale, x_zero_point) = quantizer.input[0], quantizer.output
        chains = [_chain(m, consumers, producers, x_scale, x_zero_point) for m in consumers.get(xq, [])]
        widths = {_rows(weights, chain[0]) for chain in chains}
        if len(widths) != 1:
            raise ExportError(
                f"per-token quantization cannot rewrite the MatMuls of {x}: they are not the int8 weight "
                "MatMuls onnxruntime's quantize_dynamic writes (one width K, from a 2-D weight)"
            )
        prefix, scale, absolute, amax = quantizer.name or x, f"{x}_token_scale", f"{x}_token_abs", f"{x}_token_amax"
        new = [
            helper.make_node("Abs", [x], [absolute], name=f"{prefix}_token_abs"),
            helper.make_node("ReduceMax", [absolute, _LAST_AXIS], [amax], name=f"{prefix}_token_amax", keepdims=1),
            helper.make_node("Mul", [amax, _INV_127], [scale], name=f"{prefix}_token_scale"),
        ]
        if zero_point is None:  # every quantized activation has the same token rows: one zero-point tensor
            zero_point = f"{x}_token_zero_point"
            new += [
                helper.make_node("Shape", [amax], [f"{x}_token_rows"], name=f"{prefix}_token_rows"),
                helper.make_node(
                    "ConstantOfShape",
                    [f"{x}_token_rows"],
                    [zero_point],
                    name=f"{prefix}_token_zero_point",
                    value=numpy_helper.from_array(np.array([ZERO_POINT], dtype=np.uint8)),
                ),
            ]
        new.append(
            helper.make_node(
                "QuantizeLinear",
                [x, scale, zero_point],
                [xq],
                name=f"{prefix}_token_quantize",
                axis=-1,
                block_size=widths.pop(),
            )
        )
        for matmul, cast, output_mul, scales_mul in chains:
            weight_scale = next(name for name in scales_mul.input if name != x_scale)
            new.append(
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [xq, matmul.input[1], scale, weight_scale, _ZERO_POINT_SCALAR, matmul.input[3]],
                    [output_mul.output[0]],
                    name=f"{matmul.name}_per_token",
                    domain=_CONTRIB,
                )
            )
            removed.update(id(node) for node in (matmul, cast, output_mul, scales_mul))
        removed.add(id(quantizer))
        retyped.add(xq)
        replacements[id(quantizer)] = new
    splice(graph, replacements, removed)
    # quantize_dynamic recorded the old tensors' types (uint8 activations); let onnxruntime infer the new ones
    produced = {out for node in graph.node for out in node.output}
    stale = [info for info in graph.value_info if info.name not in produced or info.name in retyped]
    for info in stale:
        graph.value_info.remove(info)
    return sum(len(new) - 4 for new in replacements.values())


def _chain(
    matmul: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    producers: dict[str, onnx.NodeProto],
    x_scale: str,
    x_zero_point: str,
) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]:
    """MatMulInteger -> Cast -> Mul(., x_scale * w_scale), and the Mul that makes that scale."""
    found: list[onnx.NodeProto] = [matmul]
    for op_type in ("Cast", "Mul"):
        after = consumers.get(found[-1].output[0], [])
        if len(after) != 1 or after[0].op_type != op_type:
            break
        found.append(after[0])
    if len(found) == 3:
        scale = [name for name in found[2].input if name != found[1].output[0]]
        scales_mul = producers.get(scale[0]) if len(scale) == 1 else None
        if (
            matmul.op_type == "MatMulInteger"
            and len(matmul.input) == 4
            and matmul.input[2] == x_zero_point
            and scales_mul is not None
            and scales_mul.op_type == "Mul"
            and x_scale in scales_mul.input
            and len(consumers.get(scales_mul.output[0], [])) == 1
        ):
            return matmul, found[1], found[2], scales_mul
    raise ExportError(
        f"per-token quantization cannot rewrite {matmul.name or matmul.op_type}: it is not the "
        "MatMulInteger -> Cast -> Mul chain onnxruntime's quantize_dynamic writes"
    )


def _rows(weights: dict[str, onnx.TensorProto], matmul: onnx.NodeProto) -> int | None:
    """The MatMul's reduction length K: the rows of its quantized weight."""
    weight = weights.get(matmul.input[1])
    return int(weight.dims[0]) if weight is not None and len(weight.dims) == 2 else None


def _add_constants(graph: onnx.GraphProto) -> None:
    present = {tensor.name for tensor in graph.initializer}
    constants = (
        (_INV_127, np.array(INV_LEVELS, dtype=np.float32)),
        (_LAST_AXIS, np.array([-1])),
        (_ZERO_POINT_SCALAR, np.array(ZERO_POINT, dtype=np.uint8)),
    )
    for name, value in constants:
        if name not in present:
            graph.initializer.append(numpy_helper.from_array(value, name))
