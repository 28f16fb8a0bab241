"""Install footprint: disk used by the packages each engine needs at run time."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

GROUPS = {
    "edgeqa runtime (onnxruntime + numpy + tokenizers)": ("onnxruntime", "numpy", "tokenizers"),
    "CTranslate2 (ctranslate2 + numpy + tokenizers)": ("ctranslate2", "numpy", "tokenizers"),
    "PyTorch + transformers": ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy"),
    "Optimum stack (+ onnxruntime, onnx)": (
        "optimum",
        "optimum-onnx",
        "onnxruntime",
        "onnx",
        "torch",
        "transformers",
        "tokenizers",
        "safetensors",
        "huggingface-hub",
        "numpy",
    ),
}


def package_mb(name: str) -> float | None:
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return None
    total = 0
    for file in dist.files or []:
        path = Path(file.locate())
        if path.is_file():
            total += path.stat().st_size
    return total / 1e6


def footprints() -> dict[str, float]:
    """MB on disk per group, for the groups whose packages are all installed."""
    sizes: dict[str, float] = {}
    for group, names in GROUPS.items():
        parts = [package_mb(name) for name in names]
        if all(p is not None for p in parts):
            sizes[group] = sum(parts)  # type: ignore[arg-type]
    return sizes
