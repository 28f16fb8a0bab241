"""Quantization of the exported graphs with onnxruntime's quantizers.

int8: dynamic quantization (int8 weights per channel, activations quantized on the fly).
int4: weight-only block quantization (`MatMulNBits` / `GatherBlockQuantized`, int8 compute),
an opt-in that halves the weights again: faster at batch 1, slower in batches.
"""

from __future__ import annotations

import logging
import platform
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from edgeqa.errors import ConfigError, ExportError

logger = logging.getLogger(__name__)

PRESETS = ("auto", "avx2", "avx512", "avx512_vnni", "arm64")
METHODS = ("int8", "int4")
# int4: one scale per 128 weights along the input dimension; products computed in int8.
INT4_BLOCK_SIZE = 128
INT4_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class QuantizeSettings:
    """How weights are quantized.

    Attributes:
        preset: CPU family the settings target.
        per_channel: One scale per output channel instead of one per tensor.
        reduce_range: 7-bit weights, so that u8 x s8 products cannot saturate int16 sums on
            CPUs without VNNI (AVX2 / AVX-512 `vpmaddubsw`).
        op_types: ONNX ops quantized: weight MatMuls (activation x activation products of
            attention stay float) and the embedding Gather.
        keep_fp32: Node-name components left in float (e.g. `lm_head`, `wo`).
        bits: 8 (dynamic int8) or 4 (weight-only int4; per_channel and reduce_range unused).
        block_size: int4 weights sharing one scale, along the input dimension.
    """

    preset: str
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Gather")
    keep_fp32: tuple[str, ...] = ()
    bits: int = 8
    block_size: int = INT4_BLOCK_SIZE

    def to_dict(self) -> dict[str, Any]:
        if self.bits == 4:
            return {
                "method": "weight-only-int4",
                "weight_type": "int4",
                "block_size": self.block_size,
                "accuracy_level": INT4_ACCURACY_LEVEL,
                "op_types": list(self.op_types),
                "keep_fp32": list(self.keep_fp32),
                "preset": self.preset,
            }
        fields = {k: v for k, v in asdict(self).items() if k not in ("bits", "block_size")}
        return {"method": "dynamic-int8", "weight_type": "int8", "activation_type": "uint8", **fields}


def detect_preset() -> str:
    """The preset for this CPU: arm64, avx512_vnni, avx512 or avx2."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def settings_for(preset: str = "auto", keep_fp32: tuple[str, ...] = (), method: str = "int8") -> QuantizeSettings:
    if method not in METHODS:
        raise ConfigError(f"quantization {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise ConfigError(f"quantization preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    if preset == "auto":
        preset = detect_preset()
    # Without VNNI, int8 dot products go through saturating 16-bit adds: use 7-bit weights.
    reduce_range = preset in ("avx2", "avx512") and method == "int8"
    return QuantizeSettings(
        preset=preset,
        per_channel=True,
        reduce_range=reduce_range,
        keep_fp32=tuple(keep_fp32),
        bits=4 if method == "int4" else 8,
    )


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


def quantize_graph(source: Path, target: Path, settings: QuantizeSettings) -> int:
    """Quantize one graph file (subgraphs too); returns how many nodes stayed float."""
    model = onnx.load(str(source), load_external_data=False)
    excluded = sorted(
        {node.name for node in _nodes(model.graph) if set(node.name.split("/")) & set(settings.keep_fp32)}
    )
    if settings.bits == 4:
        _quantize_int4(source, target, settings, excluded)
        return len(excluded)
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
    return len(excluded)


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
