"""edgeqa: fine-tune FLAN-T5 for question answering, export it to quantized ONNX, answer on a CPU.

`from edgeqa import QAModel` loads the runtime (onnxruntime, tokenizers, numpy) on first use,
never torch.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from edgeqa.errors import ArtifactError, ConfigError, DataError, EdgeQAError, ExportError, InputError, ModelError

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from edgeqa.documents import DocumentsQA, Index
    from edgeqa.runtime import Answer, GenerationOptions, QAModel

try:
    __version__ = version("edgeqa")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "Answer": "edgeqa.runtime",
    "GenerationOptions": "edgeqa.runtime",
    "QAModel": "edgeqa.runtime",
    "Index": "edgeqa.documents",
    "DocumentsQA": "edgeqa.documents",
}

__all__ = [
    "Answer",
    "ArtifactError",
    "ConfigError",
    "DataError",
    "DocumentsQA",
    "EdgeQAError",
    "ExportError",
    "GenerationOptions",
    "Index",
    "InputError",
    "ModelError",
    "QAModel",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
