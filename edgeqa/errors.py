"""The one exception hierarchy of edgeqa (the CLI catches `EdgeQAError` and nothing else), and the one
way a library's error becomes a line of ours (`first_line`)."""


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


def first_line(error: BaseException, limit: int = 240) -> str:
    """An error's first line for a one-line message: no closing full stop, at most `limit` characters
    (transformers' can list every model type it knows)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(". ")
    return line if len(line) <= limit else line[: limit - 3] + "..."
