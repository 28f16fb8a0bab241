"""Export a T5 checkpoint to an artifact folder: ONNX graphs (optionally int8), tokenizer, manifest.

`ExportConfig` needs only the standard library; the export and the parity gate need
`edgeqa[export]`, imported on first use (PEP 562).
"""

from typing import TYPE_CHECKING, Any

from edgeqa.export.config import ExportConfig
from edgeqa.export.optimum_check import check_exporter
from edgeqa.extras import import_extra

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from edgeqa.export.artifact import ExportResult, export_artifact
    from edgeqa.export.parity import run_parity

_LAZY = {
    "ExportResult": "edgeqa.export.artifact",
    "export_artifact": "edgeqa.export.artifact",
    "run_parity": "edgeqa.export.parity",
}

__all__ = ["ExportConfig", "ExportResult", "export_artifact", "run_parity"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _LAZY[name] == "edgeqa.export.artifact":  # Optimum, which the parity gate alone does not need
        check_exporter()
    return getattr(import_extra(_LAZY[name], "export", "export and the parity gate"), name)
