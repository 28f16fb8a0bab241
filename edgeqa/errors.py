"""The one exception hierarchy of edgeqa: the CLI catches `EdgeQAError` and nothing else."""


class EdgeQAError(Exception):
    """Base class of every error edgeqa raises on purpose; the message says what to do."""


class ConfigError(EdgeQAError):
    """A configuration value or a flag is out of its allowed range."""


class DataError(EdgeQAError):
    """A data set is missing, empty, unreadable or lacks the columns asked for."""


class ModelError(EdgeQAError):
    """A model checkpoint cannot be found or loaded."""


class ExportError(EdgeQAError):
    """ONNX export, quantization or the parity gate failed."""


class ArtifactError(EdgeQAError):
    """An artifact folder is missing files, corrupt, or of an unsupported format."""


class InputError(EdgeQAError):
    """A question (or generation option) cannot be answered as given."""


class MissingExtraError(EdgeQAError, ImportError):
    """A command needs an optional dependency group (`edgeqa[train]`, `edgeqa[export]`) that is not installed."""
