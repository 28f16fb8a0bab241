"""Quantization of the exported graphs with onnxruntime's quantizers.

int8: dynamic quantization (int8 weights per channel, activations quantized on the fly, one
scale per token row: see `export.per_token`).
int4: weight-only block quantization (`MatMulNBits` / `GatherBlockQuantized`, int8 compute),
an opt-in that halves the weights again: faster at batch 1, slower in batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from edgeqa.errors import ExportError
from edgeqa.export.config import INT4_ACCURACY_LEVEL, QuantizeSettings
from edgeqa.export.joined_products import join_shared_products
from edgeqa.export.memory import release_memory
from edgeqa.export.nodes import EMBEDDING_NAMES, node_module
from edgeqa.export.per_token import per_token_activations
from edgeqa.manifest import ActivationGranularity

logger = logging.getLogger(__name__)


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of a graph and of its subgraphs (If branches, as in Optimum's merged decoder)."""
    found = []
    for node in graph.node:
        found.append(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += _nodes(attribute.g)
    return found


def count_ops(path: Path) -> Counter[str]:
    """Op types of a graph file, subgraphs included."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in _nodes(model.graph))


def float_nodes(model: onnx.ModelProto, role: str, settings: QuantizeSettings, modules: frozenset[str]) -> list[str]:
    """Names of the nodes of the `role` graph to leave in float: those of `modules` (module paths, as
    `export.nodes.module_path` writes them) and those `settings.keep_fp32` names a part of."""
    keep = set(settings.keep_fp32)
    found = set()
    for node in _nodes(model.graph):
        module = node_module(role, node.name)
        if module is None:
            continue
        parts = {*module.split("/"), node.name.rsplit("/", 1)[-1].split("_")[0]}
        if module == "shared":  # either of its names keeps the embedding float, whichever the graph uses
            parts.update(EMBEDDING_NAMES)
        if module in modules or parts & keep:
            found.add(node.name)
    return sorted(found)


def quantize_graph(
    source: Path, target: Path, settings: QuantizeSettings, role: str, modules: frozenset[str] = frozenset()
) -> int:
    """Quantize one graph file (subgraphs too), leaving `float_nodes` in float; returns how many."""
    model = onnx.load(str(source), load_external_data=False)
    excluded = float_nodes(model, role, settings, modules)
    if settings.bits == 4:
        _quantize_int4(source, target, settings, excluded)
    else:
        _quantize_int8(source, target, settings, excluded, join=role == "decoder")
    release_memory()
    return len(excluded)


def _quantize_int8(source: Path, target: Path, settings: QuantizeSettings, excluded: list[str], join: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True},
            use_external_data_format=True,
        )
    except Exception as e:  # onnxruntime's quantizer raises assorted types
        raise ExportError(f"int8 quantization of {source.name} failed: {e}") from e
    if settings.activation_granularity == ActivationGranularity.PER_TOKEN:
        model, rewritten = per_token_activations(onnx.load(str(target)))
        logger.info("%s: %d MatMuls quantize their activations per token", source.name, rewritten)
        if join:  # the decoder step's few rows; the encoder's many rows pay more to split the joined outputs
            join_shared_products(model)
        for stale in (target, target.with_name(target.name + ".data")):
            stale.unlink(missing_ok=True)
        onnx.save_model(model, str(target), save_as_external_data=True, location=target.name + ".data")


def _quantize_int4(source: Path, target: Path, settings: QuantizeSettings, excluded: list[str]) -> None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError as e:  # onnxruntime's int4 quantizer needs onnx-ir
        raise ExportError(f"int4 quantization needs {e.name}: pip install 'edgeqa[export]'") from e
    options: dict[str, Any] = dict(
        block_size=settings.block_size,
        is_symmetric=True,
        accuracy_level=INT4_ACCURACY_LEVEL,
        op_types_to_quantize=settings.op_types,
    )
    try:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(source)),
            nodes_to_exclude=excluded,
            algo_config=DefaultWeightOnlyQuantConfig(**options),
            **options,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=True)
    except Exception as e:  # onnxruntime's quantizer raises assorted types
        raise ExportError(f"int4 quantization of {source.name} failed: {e}") from e
