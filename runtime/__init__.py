"""The CPU runtime: answers questions from an artifact folder with onnxruntime, tokenizers and numpy.

No torch, no transformers: `import edgeqa.runtime` must stay light. `GenerationOptions`, `Row`,
`Update` and `FinishReason` need only the standard library; `QAModel`, `Answer` and `Decoder` load
onnxruntime on first use (PEP 562). `Decoder` is the one engine: `QAModel`, `edgeqa serve` and the
parity gate all generate through it.
"""

import importlib
from typing import TYPE_CHECKING, Any

from edgeqa.runtime.options import GenerationOptions
from edgeqa.runtime.rows import FinishReason, Row, Update, until_eos
from edgeqa.runtime.verify import VerifyReport, verify_artifact

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from edgeqa.runtime.decoder import Decoder
    from edgeqa.runtime.model import Answer, QAModel

_LAZY = {"Answer": "edgeqa.runtime.model", "QAModel": "edgeqa.runtime.model", "Decoder": "edgeqa.runtime.decoder"}

__all__ = [
    "Answer",
    "Decoder",
    "FinishReason",
    "GenerationOptions",
    "QAModel",
    "Row",
    "Update",
    "VerifyReport",
    "until_eos",
    "verify_artifact",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
