"""The CPU runtime: answers questions from an artifact folder with onnxruntime, tokenizers and numpy.

No torch, no transformers: `import edgeqa.runtime` must stay light. `GenerationOptions` needs
only the standard library; `QAModel` and `Answer` load onnxruntime on first use (PEP 562).
"""

import importlib
from typing import TYPE_CHECKING, Any

from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.verify import VerifyReport, verify_artifact

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from edgeqa.runtime.model import Answer, QAModel

__all__ = ["Answer", "GenerationOptions", "QAModel", "VerifyReport", "verify_artifact"]


def __getattr__(name: str) -> Any:
    if name not in ("Answer", "QAModel"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("edgeqa.runtime.model"), name)
