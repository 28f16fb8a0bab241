"""Export a T5 checkpoint to an artifact folder: ONNX graphs (optionally int8), tokenizer, manifest."""

from edgeqa.export.artifact import ExportConfig, ExportResult, export_artifact
from edgeqa.export.parity import ParityReport, run_parity

__all__ = ["ExportConfig", "ExportResult", "ParityReport", "export_artifact", "run_parity"]
