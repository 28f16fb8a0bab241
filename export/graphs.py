"""edgeqa's two graphs from Optimum's exporter: an encoder that also computes every decoder layer's
cross-attention keys/values, and Optimum's decoder-with-cache graph, which then runs every step.

Optimum's merged decoder holds a first-step branch (which computes the cross-attention
keys/values) and a cached-step branch behind an If node, and onnxruntime pre-packs the weights of
each branch separately. With the first step's only extra work moved into the encoder graph, one
decoder graph serves every step (the first with an empty self-attention cache): 16 MB less
memory on flan-t5-small and no If node.

Memory: the graphs are exported one at a time, the encoder's two from one freshly loaded
(memory-mapped) model and the decoder's from another, with their weights written straight to
external-data files (`export.torch_export`); the encoder and cross-attention graphs are joined
without loading their weights, and freed memory goes back to the system between steps
(`export.memory`). Exporting then needs little more than the weights of the graph at hand; the
peak of an int8 export is onnxruntime's quantizer (flan-t5-large: 5.9 GB for 3.1 GB of weights,
`benchmarks/results/export-memory.md`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import onnx.compose
import torch
from onnx.external_data_helper import uses_external_data
from transformers import AutoConfig, T5ForConditionalGeneration

from edgeqa.errors import ExportError
from edgeqa.export.attention import fuse_attention
from edgeqa.export.loading import load_model
from edgeqa.export.memory import release_memory
from edgeqa.export.nodes import CROSS_PREFIX
from edgeqa.export.shared_cross_cache import share_cross_cache
from edgeqa.export.static_shapes import fold_reshape_shapes
from edgeqa.export.torch_export import UnknownWeight, export_streamed
from edgeqa.manifest import cache_names

logger = logging.getLogger(__name__)

ENCODER, DECODER = "encoder_model", "decoder_with_past_model"  # Optimum's names for the two parts


def export_graphs(checkpoint: str, raw: Path, name: str | None = None) -> dict[str, Path]:
    """Export `checkpoint` into `raw`: {"encoder": encoder + cross-attention cache, "decoder": decoder
    step}, weights in external-data files, plus the model's config.json and generation_config.json.
    The log calls the weights `name` where given (the export's own temporary folders mean nothing to a user).

    Raises:
        ModelError: the checkpoint cannot be loaded, or is not a T5 model.
        ExportError: the exporter failed.
    """
    raw.mkdir(parents=True, exist_ok=True)
    logger.info("export: %s -> ONNX (encoder + cross-attention cache, decoder step with cache)", name or checkpoint)
    encoder, cross = _export_encoder(checkpoint, raw)
    release_memory()  # the model is freed once its reference cycles are collected, after the call
    target = raw / "encoder_with_cross_cache.onnx"
    joined = _append(onnx.load(str(encoder), load_external_data=False), onnx.load(str(cross), load_external_data=False))
    onnx.save_model(joined, str(target))  # the weights stay where they are: the two graphs' data files
    onnx.checker.check_model(str(target))
    fold_reshape_shapes(target)
    # a model of its own: the encoder's pages are no longer resident, and its export's config changes are gone
    decoder = _export_part(load_model(checkpoint), DECODER, raw)
    release_memory()
    fold_reshape_shapes(decoder)
    config = AutoConfig.from_pretrained(raw)
    fuse_attention(decoder, config.num_heads)
    share_cross_cache(decoder, config.num_heads * config.d_kv)
    return {"encoder": target, "decoder": decoder}


def graph_bytes(path: Path) -> int:
    """Size of a graph file and of the external-data files its weights are in."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return path.stat().st_size + sum((path.parent / location).stat().st_size for location in locations)


def _export_encoder(checkpoint: str, raw: Path) -> tuple[Path, Path]:
    """Optimum's encoder graph and the cross-attention graph, from one load of the model, which also
    gives the configs."""
    model = load_model(checkpoint)
    model.config.save_pretrained(raw)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(raw)
    cross = _cross_cache_graph(model, raw / "cross_kv.onnx")
    return _export_part(model, ENCODER, raw), cross


def _export_part(model: T5ForConditionalGeneration, part: str, raw: Path) -> Path:
    """One of Optimum's graphs of the model, weights in PART.onnx_data (`export.torch_export`)."""
    from optimum.exporters.onnx.convert import export
    from optimum.exporters.onnx.model_configs import T5OnnxConfig
    from optimum.exporters.utils import get_encoder_decoder_models_for_export

    path = raw / f"{part}.onnx"
    try:
        config = T5OnnxConfig(model.config, task="text2text-generation", use_past=True)
        module, part_config = get_encoder_decoder_models_for_export(model, config)[part]
        try:
            export_streamed(module, part_config, path, config.DEFAULT_ONNX_OPSET)
        except UnknownWeight as e:
            logger.warning("export: %s: cannot write the weights one by one (%s); exporting at full memory", part, e)
            export(module, part_config, path, config.DEFAULT_ONNX_OPSET)
            _weights_beside(path)
    except Exception as e:  # the exporter raises ValueError, RuntimeError, KeyError, ...
        raise ExportError(f"ONNX export of {model.name_or_path!r} failed: {e}") from e
    return path


def _weights_beside(path: Path) -> None:
    """Move a graph's weights into PATH_data, unless the exporter already did (graphs over 2 GB)."""
    model = onnx.load(str(path))
    if not any(uses_external_data(tensor) for tensor in model.graph.initializer):
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + "_data")


class _CrossCache(torch.nn.Module):
    """Each decoder layer's cross-attention keys and values of the encoder output, (batch, heads, length, d_kv)."""

    def __init__(self, model: T5ForConditionalGeneration):
        super().__init__()
        attentions = [block.layer[1].EncDecAttention for block in model.decoder.block]
        self.projections = torch.nn.ModuleList(p for attention in attentions for p in (attention.k, attention.v))
        self.heads, self.head_size = model.config.num_heads, model.config.d_kv

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = hidden.shape[0]
        return tuple(
            projection(hidden).view(batch, -1, self.heads, self.head_size).transpose(1, 2)
            for projection in self.projections
        )


def _cross_cache_graph(model: T5ForConditionalGeneration, path: Path) -> Path:
    """Every decoder layer's cross-attention key/value projections as one graph, weights beside it,
    at the opset of Optimum's T5 graphs."""
    from optimum.exporters.onnx.model_configs import T5OnnxConfig

    outputs = [f"present.{name}" for name in cache_names(model.config.num_decoder_layers, "encoder")]
    axes = {"encoder_hidden_states": {0: "batch", 1: "encoder_sequence"}}
    axes |= {name: {0: "batch", 2: "encoder_sequence"} for name in outputs}
    try:
        with torch.no_grad():
            torch.onnx.export(
                _CrossCache(model),
                (torch.zeros(2, 3, model.config.d_model),),
                str(path),
                input_names=["encoder_hidden_states"],
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=T5OnnxConfig.DEFAULT_ONNX_OPSET,
                dynamo=False,
            )
    except Exception as e:  # the exporter raises assorted types
        raise ExportError(f"exporting the cross-attention projections of {model.name_or_path!r} failed: {e}") from e
    _weights_beside(path)
    return path


def _append(encoder: onnx.ModelProto, cross: onnx.ModelProto) -> onnx.ModelProto:
    """One graph: the encoder, then the cross-attention projections of its output, which it returns.

    Graph by graph (`merge_graphs`, not `merge_models`): the model checker would look for the
    external weights relative to the working directory; the joined file is checked once saved.
    """
    cross = onnx.compose.add_prefix(cross, CROSS_PREFIX)
    outputs = [output.name for output in cross.graph.output]
    graph = onnx.compose.merge_graphs(
        encoder.graph,
        cross.graph,
        io_map=[("last_hidden_state", CROSS_PREFIX + "encoder_hidden_states")],
        outputs=outputs,
    )
    opsets = {opset.domain: opset.version for model in (encoder, cross) for opset in model.opset_import}
    merged = onnx.helper.make_model(
        graph,
        ir_version=encoder.ir_version,
        opset_imports=[onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        producer_name=encoder.producer_name,
        producer_version=encoder.producer_version,
    )
    renamed = {name: name.removeprefix(CROSS_PREFIX) for name in outputs}
    for output in merged.graph.output:
        output.name = renamed[output.name]
    for node in merged.graph.node:
        for index, name in enumerate(node.output):
            node.output[index] = renamed.get(name, name)
    return merged
