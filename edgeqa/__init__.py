"""edgeqa: fine-tune FLAN-T5 for question answering, export it to quantized ONNX, answer on a CPU."""

from edgeqa.errors import ArtifactError, ConfigError, DataError, EdgeQAError, ExportError, InputError, ModelError

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "EdgeQAError",
    "ExportError",
    "InputError",
    "ModelError",
    "__version__",
]
