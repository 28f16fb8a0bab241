"""Export a T5 checkpoint to an artifact folder: ONNX graphs (optionally int8), tokenizer, manifest.

Needs `edgeqa[export]`.
"""

from edgeqa.errors import MissingExtraError

try:
    from edgeqa.export.artifact import ExportConfig, ExportResult, export_artifact
    from edgeqa.export.parity import ParityReport, run_parity
except ModuleNotFoundError as e:
    raise MissingExtraError(
        f"export and the parity gate need {e.name}, which is not installed: pip install 'edgeqa[export]' "
        "(install torch==2.13.0 first for the CPU build)"
    ) from e

__all__ = ["ExportConfig", "ExportResult", "ParityReport", "export_artifact", "run_parity"]
