"""Accuracy-aware fallback: which quantized nodes to keep in float, ranked by what each one costs.

Nodes are grouped by the activation they read (a block's q/k/v; o; wi_0 + wi_1; wo; the decoder's
cross-attention q and o; every layer's cross-attention k/v, which read the encoder output;
lm_head; the embedding), as Intel Neural Compressor and OpenVINO NNCF group them. Each group is
ranked by how much of the teacher-forced logit error on the worst calibration questions goes away
when that group alone stays float, measured on the PyTorch model with onnxruntime's quantizers
emulated (int8: per-channel symmetric weights, and activations quantized by the rule the graphs
run, `export.activation_quant`: per token row, symmetric, zero point 128; int4: symmetric blocks of
weights, per-block int8 activations). The real gate on the real graphs then decides how many of the
top groups stay float.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from edgeqa.export.activation_quant import fake_quantize
from edgeqa.export.calibration import TeacherForced
from edgeqa.export.config import QuantizeSettings
from edgeqa.export.nodes import module_path

#: The share of questions, worst first, whose logit error ranks the groups.
WORST_SHARE = 0.25


@dataclass(frozen=True)
class NodeGroup:
    """Quantizable modules that read one activation.

    Attributes:
        name: e.g. `decoder/block.0/layer.2 wo`, `cross-attention k/v`, `lm_head`, `embedding`.
        modules: Their PyTorch module names (`decoder.block.0.layer.2.DenseReluDense.wo`).
        parameters: Weights they hold.
    """

    name: str
    modules: tuple[str, ...]
    parameters: int


@dataclass(frozen=True)
class RankedGroup:
    group: NodeGroup
    #: Share of the worst questions' logit error that goes away with this group in float.
    error_reduction: float


def node_groups(model: torch.nn.Module) -> list[NodeGroup]:
    """The groups of a T5, in model order."""
    members: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = _group_of(name)
        elif isinstance(module, torch.nn.Embedding) and name == "shared":
            key = "embedding"
        else:
            continue
        members.setdefault(key, []).append(name)
        sizes[key] = sizes.get(key, 0) + module.weight.numel()
    return [NodeGroup(key, tuple(names), sizes[key]) for key, names in members.items()]


def _group_of(module: str) -> str:
    if module == "lm_head":
        return "lm_head"
    if re.search(r"EncDecAttention\.[kv]$", module):
        return "cross-attention k/v"
    head, _, leaf = module.rpartition(".")
    prefix = module_path(head.rsplit(".", 1)[0])  # decoder/block.0/layer.2
    if leaf in ("q", "k", "v"):
        return f"{prefix} {'cross q' if 'EncDecAttention' in head else 'q/k/v'}"
    if leaf == "o":
        return f"{prefix} {'cross o' if 'EncDecAttention' in head else 'o'}"
    if leaf in ("wi_0", "wi_1", "wi"):
        return f"{prefix} wi"
    return f"{prefix} {leaf}"


def rank_groups(
    model: torch.nn.Module, data: TeacherForced, settings: QuantizeSettings, groups: list[NodeGroup]
) -> list[RankedGroup]:
    """Groups by error reduction, largest first (groups that reduce nothing are left out)."""
    reference = [logits for logits, _ in data.forward(model)]
    everything = {m for g in groups for m in g.modules}
    with emulated_quantization(model, everything, settings):
        baseline = _worst_error(reference, data, model)
    ranked = []
    for group in groups:
        with emulated_quantization(model, everything - set(group.modules), settings):
            error = _worst_error(reference, data, model)
        reduction = (baseline - error) / max(baseline, 1e-12)
        if reduction > 0:
            ranked.append(RankedGroup(group, reduction))
    return sorted(ranked, key=lambda r: -r.error_reduction)


def _worst_error(reference: list[torch.Tensor], data: TeacherForced, model: torch.nn.Module) -> float:
    """Mean relative logit error of the worst `WORST_SHARE` questions."""
    errors = []
    for expected, (logits, mask) in zip(reference, data.forward(model), strict=True):
        squared = ((logits - expected) ** 2).sum(-1) / (expected**2).sum(-1).clamp_min(1e-12)
        errors.append((squared * mask).sum(1) / mask.sum(1).clamp_min(1))
    per_question = torch.cat(errors)
    worst = per_question.topk(max(1, round(len(per_question) * WORST_SHARE))).values
    return float(worst.mean())


@contextmanager
def emulated_quantization(model: torch.nn.Module, modules: set[str], settings: QuantizeSettings) -> Iterator[None]:
    """Within the block, `modules` compute as onnxruntime's quantized nodes would (weights restored after)."""
    named = dict(model.named_modules())
    saved, hooks = {}, []
    try:
        for name in modules:
            module = named[name]
            saved[name] = module.weight.data
            if isinstance(module, torch.nn.Embedding):  # int8: one scale; int4: blocks along d_model
                weight = module.weight.data
                module.weight.data = (
                    _blockwise(weight, 4, settings.block_size) if settings.bits == 4 else _symmetric(weight, 8, None)
                )
                continue
            if settings.bits == 4:
                module.weight.data = _blockwise(module.weight.data, 4, settings.block_size)
                hooks.append(module.register_forward_pre_hook(_int8_blocks(settings.block_size)))
            else:
                module.weight.data = _symmetric(module.weight.data, 7 if settings.reduce_range else 8, 1)
                hooks.append(module.register_forward_pre_hook(_uint8_activations(settings.activation_granularity)))
        yield
    finally:
        for handle in hooks:
            handle.remove()
        for name, weight in saved.items():
            named[name].weight.data = weight


def _symmetric(weight: torch.Tensor, bits: int, axis: int | None) -> torch.Tensor:
    """Symmetric fake quantization, one scale per row (`axis` 1: per output channel) or per tensor."""
    top = 2 ** (bits - 1) - 1
    peak = weight.abs().amax(dim=axis, keepdim=True) if axis is not None else weight.abs().amax()
    scale = peak.clamp_min(1e-12) / top
    return torch.clamp(torch.round(weight / scale), -top - 1, top) * scale


def _blockwise(weight: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    rows, columns = weight.shape
    padded = torch.nn.functional.pad(weight, (0, -columns % block)).view(rows, -1, block)
    return _symmetric(padded, bits, 2).view(rows, -1)[:, :columns]


def _uint8_activations(granularity: str):
    """A pre-hook that quantizes a Linear's input as the exported graph's activation quantizer does."""

    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (fake_quantize(inputs[0], granularity),)

    return hook


def _int8_blocks(block: int):
    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        columns = x.shape[-1]
        padded = torch.nn.functional.pad(x, (0, -columns % block))
        blocks = padded.view(*x.shape[:-1], -1, block)
        return (_symmetric(blocks, 8, -1).view(*x.shape[:-1], -1)[..., :columns],)

    return hook
