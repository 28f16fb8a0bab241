"""Import a module that needs an optional dependency group, and say which one is missing (stdlib only)."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeqa.errors import MissingExtraError

#: The top-level modules each extra brings, as `import` spells them.
EXTRA_MODULES = {
    "train": ("torch", "transformers", "datasets", "accelerate", "rouge_score", "nltk", "sentencepiece", "google"),
    "export": ("torch", "transformers", "optimum", "onnx", "onnx_ir", "rouge_score", "nltk"),
    "serve": ("starlette", "uvicorn", "prometheus_client", "anyio"),
}

#: What an install of an extra with torch says first, so that pip takes torch's CPU build, not a CUDA one.
TORCH_FIRST = "install torch==2.13.0 first for the CPU build"


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`; if a module of `extra` is missing, raise `MissingExtraError` naming it.

    Any other missing module is a bug or a broken install and keeps its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in EXTRA_MODULES[extra]:
            raise
        hint = f" ({TORCH_FIRST})" if extra in ("train", "export") else ""
        raise MissingExtraError(
            f"{purpose} needs {e.name}, which is not installed: pip install 'edgeqa[{extra}]'{hint}"
        ) from e
