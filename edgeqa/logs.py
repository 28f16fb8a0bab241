"""The CLI's log on stderr: edgeqa's own lines, and third-party output reduced to what carries information.

Library code only logs (`logging.getLogger(__name__)`); the CLI calls `setup_logging` once per
command. By default transformers, optimum and datasets log through edgeqa's handler: their
messages that edgeqa knows to be harmless are dropped (the tied-embedding "missing keys" after
loading the best checkpoint, deprecation notes, the ONNX tracer's warnings about T5's shape
checks) and any other warning becomes one line `warning: <library>: <first line>`. Python
warnings go the same way. `verbose` shows everything, unfiltered.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import re
import sys

#: Libraries whose loggers have their own stderr handler; they are routed through edgeqa's.
LIBRARIES = ("transformers", "optimum", "datasets", "huggingface_hub")
#: Warning categories that say nothing to an edgeqa user (the tracer's notes on T5's shape checks,
#: deprecations inside the libraries edgeqa calls).
QUIET_CATEGORIES = ("TracerWarning", "DeprecationWarning", "FutureWarning", "PendingDeprecationWarning")
#: Messages from libraries that edgeqa knows to be harmless in its pipeline.
HARMLESS = (
    re.compile(r"`torch_dtype` is deprecated"),
    re.compile(r"^Could not find image processor class"),
    re.compile(r"^The following generation flags are not valid"),
    # transformers 5 ties T5's lm_head to the embedding in every config, and keeps FLAN-T5's own lm_head
    re.compile(r"^The tied weights mapping .* tie shared\.weight to lm_head\.weight, but both are present .* NOT tie"),
    # transformers 5 orders checkpoints saved within one second by their step numbers instead of mtimes
    re.compile(r"^mtime may not be reliable on this filesystem, falling back to numerical ordering"),
)
#: T5 ties these to `shared`; a checkpoint saved by `save_pretrained` does not store them again.
TIED_KEYS = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
#: huggingface_hub's retries of an unreachable hub (two lines a try, for 40 s to a minute): said once, in our words.
_HUB_RETRY = re.compile(r"thrown while requesting \w+ https?://|^Retrying in \d+s \[Retry \d+/\d+\]")
HUB_RETRY_LINE = (
    "warning: the Hugging Face hub does not answer; huggingface_hub retries for about a minute "
    "(HF_HUB_OFFLINE=1 stops at once)"
)
_MISSING_KEYS = re.compile(r"There were missing keys in the checkpoint model loaded: (\[.*?\])")
_WARNING_LINE = re.compile(r"^(?:.*?:\d+: )?(\w+Warning): (.*)")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (it may be replaced, e.g. in tests)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def third_party_line(record: logging.LogRecord) -> str | None:
    """What edgeqa prints for a record that another library logged: None to drop it, else one line."""
    message = record.getMessage().strip()
    if record.name == "py.warnings":
        found = _WARNING_LINE.match(message)
        category, text = (found.group(1), found.group(2)) if found else ("Warning", message)
        if category in QUIET_CATEGORIES or any(p.search(text) for p in HARMLESS):
            return None
        return f"warning: {category}: {text.splitlines()[0] if text else ''}"
    if _HUB_RETRY.search(message):
        return HUB_RETRY_LINE
    missing = _MISSING_KEYS.search(message)
    if missing:
        try:
            keys = set(ast.literal_eval(missing.group(1)))
        except (ValueError, SyntaxError):
            keys = {missing.group(1)}
        if keys <= TIED_KEYS:
            return None
        return f"warning: the checkpoint lacks weights: {', '.join(sorted(keys - TIED_KEYS))}"
    if record.levelno < logging.WARNING or any(p.search(message) for p in HARMLESS):
        return None
    library = record.name.split(".")[0]
    level = "error" if record.levelno >= logging.ERROR else "warning"
    return f"{level}: {library}: {message.splitlines()[0] if message else ''}"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "edgeqa" or record.name.startswith("edgeqa."):
            return super().format(record)
        return getattr(record, "edgeqa_line", None) or super().format(record)


class _QuietFilter(logging.Filter):
    """edgeqa's records pass; others only as the one line `third_party_line` makes of them."""

    def __init__(self) -> None:
        super().__init__()
        self._said_once: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "edgeqa" or record.name.startswith("edgeqa."):
            return True
        if record.name == "root" and record.levelno < logging.ERROR:
            return False  # onnxruntime's quantizer logs its advice on the root logger
        line = third_party_line(record)
        if line is None or line in self._said_once:
            return False
        if line == HUB_RETRY_LINE:
            self._said_once.add(line)
        record.edgeqa_line = line
        return True


def _no_cpu_accelerator_note(record: logging.LogRecord) -> bool:
    """DeepSpeed (when installed, accelerate imports it) warns at import that it runs on the CPU;
    edgeqa's --device already says where training runs."""
    return not record.getMessage().startswith("Setting accelerator to CPU")


def setup_logging(quiet: bool = False, verbose: bool = False, libraries: bool = False) -> None:
    """Configure stderr logging for one CLI command.

    Args:
        quiet: edgeqa's warnings and errors only.
        verbose: Everything every library logs or warns, unfiltered, at INFO and up.
        libraries: Route the ML libraries' loggers through edgeqa's handler (commands that
            load them: finetune, export, parity, demo, bench); imports transformers and
            optimum when installed.
    """
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    if not verbose:
        handler.addFilter(_QuietFilter())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("edgeqa").setLevel(logging.WARNING if quiet else logging.INFO)
    if not libraries:
        return
    logging.captureWarnings(not verbose)
    # DeepSpeed's logger keeps its own handler; a filter set on it now holds when it is created.
    deepspeed = logging.getLogger("DeepSpeed")
    if verbose:
        deepspeed.removeFilter(_no_cpu_accelerator_note)
    else:
        deepspeed.addFilter(_no_cpu_accelerator_note)
    for name in LIBRARIES:
        _route(name, logging.INFO if verbose else logging.WARNING)


def _route(library: str, level: int) -> None:
    """Let `library`'s records reach the root handler instead of the stderr handler it adds itself."""
    if importlib.util.find_spec(library) is None:
        return
    try:
        importlib.import_module(f"{library}.utils.logging")  # adds the library's own handler, once
    except ImportError:
        pass
    logger = logging.getLogger(library)
    for own in list(logger.handlers):
        logger.removeHandler(own)
    logger.setLevel(level)
    logger.propagate = True
