"""The int8 activation quantizer of exported graphs, defined once.

Per token (`export.per_token` writes it into every int8 export): each row x of an activation (its
last axis, the K values one MatMul reduces over) gets its own symmetric scale, in float32:

    scale = max|x| * f32(1/127)                      ReduceMax(Abs(x)) times the constant 1/127
    q = clamp(round(x / scale) + 128, 0, 255)        QuantizeLinear: uint8, zero point 128,
                                                     rounding half to even
    x ~ (q - 128) * scale                            MatMulIntegerToFloat applies the scale

|x / scale| is at most 127 (plus rounding), so q stays in 1..255. A row whose scale is 0 reads as
zeros (the integer product is multiplied by its scale).

Per tensor (onnxruntime's `DynamicQuantizeLinear`, `quantize_dynamic` as it comes): one
asymmetric uint8 scale and zero point for the whole tensor, its range widened to hold 0:

    scale = (max(x, 0) - min(x, 0)) / 255            (1 where that range is 0)
    zero = clamp(round(-min(x, 0) / scale), 0, 255)
    q = clamp(round(x / scale) + zero, 0, 255),      x ~ (q - zero) * scale

`fake_quantize` computes either rule in PyTorch, so that `export.fallback` ranks node groups with
the quantizer the graphs run; tests/test_per_token.py checks it against onnxruntime bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgeqa.manifest import ActivationGranularity

if TYPE_CHECKING:
    import torch

#: The per-token zero point: symmetric codes in uint8, so onnxruntime's u8 x s8 kernels run.
ZERO_POINT = 128
#: The per-token scale is a row's max |x| times this float32 constant (a Mul, not a division).
INV_LEVELS = np.float32(1 / 127)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token uint8 codes of `x` (float32) and each row's scale (keepdim), as the graphs compute them."""
    import torch

    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) * torch.tensor(INV_LEVELS)
    ratio = torch.where(scale > 0, x / scale, 0.0)  # a zero scale's codes are read as zeros anyway
    return torch.clamp(torch.round(ratio) + ZERO_POINT, 0, 255).to(torch.uint8), scale


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`DynamicQuantizeLinear`'s uint8 codes, scale and zero point for the whole of `x` (float32)."""
    import torch

    x = x.float()
    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = torch.where(high > low, (high - low) / 255, 1.0)
    zero = torch.clamp(torch.round(-low / scale), 0, 255)
    return torch.clamp(torch.round(x / scale) + zero, 0, 255).to(torch.uint8), scale, zero.to(torch.uint8)


def fake_quantize(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """`x` quantized to uint8 and back (`per-token` or `per-tensor`), in `x`'s dtype."""
    if granularity == ActivationGranularity.PER_TOKEN:
        codes, scale = quantize_rows(x)
        return ((codes.float() - ZERO_POINT) * scale).to(x.dtype)
    codes, scale, zero = quantize_tensor(x)
    return ((codes.float() - zero.float()) * scale).to(x.dtype)
