"""edgeqa's two graphs from Optimum's export: an encoder that also computes every decoder layer's
cross-attention keys/values, and Optimum's decoder-with-cache graph, which then runs every step.

Optimum's merged decoder holds a first-step branch (which computes the cross-attention
keys/values) and a cached-step branch behind an If node, and onnxruntime pre-packs the weights of
each branch separately. With the first step's only extra work moved into the encoder graph, one
decoder graph serves every step (the first with an empty self-attention cache): 16 MB less
memory on flan-t5-small and no If node.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.compose
import torch
from transformers import T5ForConditionalGeneration

from edgeqa.errors import ExportError
from edgeqa.export.nodes import CROSS_PREFIX
from edgeqa.manifest import cache_names

OPTIMUM_GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


def build_graphs(checkpoint: str, raw: Path) -> dict[str, Path]:
    """From Optimum's graphs in `raw`: {"encoder": encoder + cross-attention cache, "decoder": decoder step}."""
    missing = [name for name in OPTIMUM_GRAPHS if not (raw / name).exists()]
    if missing:
        raise ExportError(f"the ONNX exporter wrote no {', '.join(missing)}; is {checkpoint!r} a T5 model?")
    encoder = onnx.load(str(raw / "encoder_model.onnx"))
    opset = next(o.version for o in encoder.opset_import if o.domain in ("", "ai.onnx"))
    cross = _cross_cache_graph(checkpoint, raw / "cross_kv.onnx", opset)
    target = raw / "encoder_with_cross_cache.onnx"
    onnx.save_model(_append(encoder, cross), str(target), save_as_external_data=True, location=target.name + "_data")
    return {"encoder": target, "decoder": raw / "decoder_with_past_model.onnx"}


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


def _cross_cache_graph(checkpoint: str, path: Path, opset: int) -> onnx.ModelProto:
    model = T5ForConditionalGeneration.from_pretrained(checkpoint).eval()
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
                opset_version=opset,
                dynamo=False,
            )
    except Exception as e:  # the exporter raises assorted types
        raise ExportError(f"exporting the cross-attention projections of {checkpoint!r} failed: {e}") from e
    return onnx.load(str(path))


def _append(encoder: onnx.ModelProto, cross: onnx.ModelProto) -> onnx.ModelProto:
    """One graph: the encoder, then the cross-attention projections of its output, which it returns."""
    cross.ir_version = encoder.ir_version
    cross = onnx.compose.add_prefix(cross, CROSS_PREFIX)
    outputs = [output.name for output in cross.graph.output]
    merged = onnx.compose.merge_models(
        encoder, cross, io_map=[("last_hidden_state", CROSS_PREFIX + "encoder_hidden_states")], outputs=outputs
    )
    opsets = {opset.domain: opset.version for opset in merged.opset_import}  # merge_models lists "" twice
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
    renamed = {name: name.removeprefix(CROSS_PREFIX) for name in outputs}
    for output in merged.graph.output:
        output.name = renamed[output.name]
    for node in merged.graph.node:
        for index, name in enumerate(node.output):
            node.output[index] = renamed.get(name, name)
    return merged
