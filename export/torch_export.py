"""One of Optimum's graphs exported without TorchScript's copies of its weights.

`torch.onnx.export` builds the whole ModelProto with every weight in it, serializes that to one
string and hands the string to Python: about three copies of a graph's weights at once, on top of
the checkpoint tensors it reads (flan-t5-large's decoder graph: 7.4 GB for 1.7 GB of weights).
Here the graph is exported without its weights (`export_params=False` keeps the same nodes,
constant folding included, and lists the weights as extra graph inputs), and each weight is then
written to PATH_data straight from the model, one tensor at a time: the parameter itself, or the
transposed Linear weight where constant folding made one (`onnx::MatMul_N`, read by that
Linear's MatMul). The result is the graph the standard export writes, weights external
(`tests/test_export.py` compares the two).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Any

import onnx
import torch
from transformers import PreTrainedModel


class UnknownWeight(Exception):
    """A graph input that is neither a model tensor nor a folded Linear weight."""


def export_streamed(module: PreTrainedModel, config: Any, path: Path, opset: int) -> None:
    """Export `module` as Optimum's `export_pytorch` does (`config` is its OnnxConfig), writing
    the weights to PATH_data one at a time.

    Raises:
        UnknownWeight: constant folding made a weight this cannot rebuild; use the standard export.
    """
    dummy = config.rename_ambiguous_inputs(config.generate_dummy_inputs(framework="pt"))
    module.config.return_dict = True
    for name, value in (config.values_override or {}).items():
        setattr(module.config, name, value)
    with torch.no_grad(), config.patch_model_for_export(module, model_kwargs={}):
        inputs = config.ordered_inputs(module)
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=list(inputs),
            output_names=list(config.outputs),
            dynamic_axes=dict(chain(inputs.items(), config.outputs.items())),
            do_constant_folding=True,
            opset_version=opset,
            export_params=False,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    _attach_weights(graph, set(inputs), module.state_dict(keep_vars=True), path.with_name(path.name + "_data"))
    onnx.save_model(graph, str(path))


def _attach_weights(model: onnx.ModelProto, declared: set[str], tensors: dict[str, torch.Tensor], data: Path) -> None:
    """Turn the graph inputs that are not `declared` into initializers stored in `data`."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights = [value for value in model.graph.input if value.name not in declared]
    values = [_value(weight, readers.get(weight.name, []), tensors) for weight in weights]  # all or none
    offset = 0
    with data.open("wb") as out:
        for weight, value in zip(weights, values, strict=True):
            array = value.detach().contiguous().numpy()
            tensor = onnx.TensorProto(name=weight.name, data_type=weight.type.tensor_type.elem_type, dims=array.shape)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, field in (("location", data.name), ("offset", offset), ("length", array.nbytes)):
                tensor.external_data.add(key=key, value=str(field))
            out.write(array.tobytes())
            offset += array.nbytes
            model.graph.initializer.append(tensor)
    inputs = [value for value in model.graph.input if value.name in declared]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def _value(
    weight: onnx.ValueInfoProto, readers: list[onnx.NodeProto], tensors: dict[str, torch.Tensor]
) -> torch.Tensor:
    shape = [dim.dim_value for dim in weight.type.tensor_type.shape.dim]
    if weight.name in tensors:
        value = tensors[weight.name]
    elif readers and all(node.op_type == "MatMul" and node.input[1] == weight.name for node in readers):
        scopes = {".".join(node.name.strip("/").split("/")[:-1]) for node in readers}
        linear = tensors.get(f"{scopes.pop()}.weight") if len(scopes) == 1 else None
        if linear is None or linear.dim() != 2:
            raise UnknownWeight(f"{weight.name} (read by {readers[0].name})")
        value = linear.t()
    else:
        raise UnknownWeight(weight.name)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(weight.type.tensor_type.elem_type)
    if list(value.shape) != shape or value.detach().numpy().dtype != dtype:
        raise UnknownWeight(f"{weight.name}: {list(value.shape)} {value.dtype}, the graph wants {shape} {dtype}")
    return value
