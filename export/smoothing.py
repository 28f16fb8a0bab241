"""Smoothing for dynamic int8: move outlier channels' range from the activations into the weights.

onnxruntime's dynamic quantization gives each activation row one scale, so a few huge channels
(T5's `wo` input above all) take the resolution from all the others. SmoothQuant's idea, done
offline on the PyTorch model before the ONNX export: divide an outlier channel j by s_j where the
activation is made (a layer norm's weight, `wi_1`'s or `v`'s output row) and multiply the
matching input column of every projection that reads it by s_j. T5 has no biases, its layer norm
is a per-channel scale and the gated FFN is linear in `wi_1`, so the float function is unchanged;
with s_j a power of two it is bit-identical. Everything stays int8.

s_j balances the activation's and the weights' range (SmoothQuant, alpha 0.5): the square root of
channel j's activation-to-weight ratio over the median channel's, rounded to a power of two; only
channels that need at least `MIN_SCALE` are touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from edgeqa.export.nodes import module_path
from edgeqa.manifest import SmoothingRecord

#: Channels whose balancing scale is below this are left alone (a 16x imbalance at least).
MIN_SCALE = 4
MAX_SCALE = 2**16


@dataclass(frozen=True)
class SmoothedActivation:
    """One activation some projections read, and where it is made.

    Attributes:
        name: Where it is read, e.g. `decoder/block.0/layer.2 wo input`.
        producer: The module whose weight makes channel j (a layer norm's entry j, or row j).
        consumers: The `Linear`s that read it (input column j).
    """

    name: str
    producer: str
    consumers: tuple[str, ...]


def smoothable(model: Any) -> list[SmoothedActivation]:
    """Every activation of a T5 whose channels can be rescaled without changing the float model."""
    found = []

    def add(layer: str, what: str, producer: str, *consumers: str) -> None:
        found.append(
            SmoothedActivation(
                f"{module_path(layer)} {what} input", f"{layer}.{producer}", tuple(f"{layer}.{c}" for c in consumers)
            )
        )

    for stack in ("encoder", "decoder"):
        for i, block in enumerate(getattr(model, stack).block):
            attention = f"{stack}.block.{i}.layer.0"
            add(attention, "q/k/v", "layer_norm", "SelfAttention.q", "SelfAttention.k", "SelfAttention.v")
            add(attention, "o", "SelfAttention.v", "SelfAttention.o")
            if stack == "decoder":
                cross = f"{stack}.block.{i}.layer.1"
                add(cross, "cross q", "layer_norm", "EncDecAttention.q")
                add(cross, "cross o", "EncDecAttention.v", "EncDecAttention.o")
            ff = f"{stack}.block.{i}.layer.{len(block.layer) - 1}"
            if hasattr(block.layer[-1].DenseReluDense, "wi_1"):  # gelu(wi_0 x) * wi_1 x is linear in wi_1
                add(ff, "wi", "layer_norm", "DenseReluDense.wi_0", "DenseReluDense.wi_1")
                add(ff, "wo", "DenseReluDense.wi_1", "DenseReluDense.wo")
            else:  # relu(x / s) = relu(x) / s for s > 0
                add(ff, "wi", "layer_norm", "DenseReluDense.wi")
                add(ff, "wo", "DenseReluDense.wi", "DenseReluDense.wo")
    layers = len(model.decoder.block)
    cross_kv = tuple(f"decoder.block.{i}.layer.1.EncDecAttention.{p}" for i in range(layers) for p in "kv")
    found.append(SmoothedActivation("cross k/v input (encoder output)", "encoder.final_layer_norm", cross_kv))
    if not model.config.tie_word_embeddings:  # tied: lm_head is the embedding, which the input also reads
        found.append(SmoothedActivation("lm_head input", "decoder.final_layer_norm", ("lm_head",)))
    return found


def smoothing_scales(model: torch.nn.Module, ranges: dict[str, torch.Tensor]) -> dict[SmoothedActivation, torch.Tensor]:
    """Per activation that needs it, the power-of-two scale of each channel (1 where untouched)."""
    modules = dict(model.named_modules())
    scales = {}
    for activation in smoothable(model):
        peak = ranges.get(activation.consumers[0])
        if peak is None:
            continue
        weight_peak = torch.stack([modules[c].weight.detach().abs().amax(dim=0) for c in activation.consumers])
        ratio = peak / weight_peak.amax(dim=0).clamp_min(1e-12)
        usable = ratio > 0
        if not usable.any():
            continue
        balance = torch.sqrt(ratio / ratio[usable].median())
        exponent = torch.round(torch.log2(balance.clamp_min(1.0))).clamp(max=math.log2(MAX_SCALE))
        scale = torch.where(usable & (exponent >= math.log2(MIN_SCALE)), 2.0**exponent, torch.ones_like(exponent))
        if (scale > 1).any():
            scales[activation] = scale
    return scales


def apply_smoothing(model: torch.nn.Module, scales: dict[SmoothedActivation, torch.Tensor]) -> list[SmoothingRecord]:
    """Divide each smoothed channel where it is made, multiply it where it is read; returns the record."""
    modules = dict(model.named_modules())
    records = []
    with torch.no_grad():
        for activation, scale in scales.items():
            producer = modules[activation.producer].weight
            if producer.dim() == 1:  # a layer norm's per-channel weight
                producer /= scale.to(producer.dtype)
            else:  # a Linear's output rows
                producer /= scale.to(producer.dtype)[:, None]
            for consumer in activation.consumers:
                modules[consumer].weight *= scale.to(producer.dtype)[None, :]
            touched = scale > 1
            records.append(
                SmoothingRecord(
                    activation=activation.name, channels=int(touched.sum()), max_scale=int(scale.max().item())
                )
            )
    return records
