"""`edgeqa serve`: an HTTP server (OpenAI-compatible and native endpoints) that batches callers.

Needs the `serve` extra: pip install 'edgeqa[serve]'. `ServeConfig` needs only the standard
library (the CLI builds its flags from it); the rest loads Starlette on first use (PEP 562).
"""

import importlib
from typing import TYPE_CHECKING, Any

from edgeqa.serve.config import ServeConfig

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from edgeqa.serve.app import create_app
    from edgeqa.serve.server import run_server

__all__ = ["ServeConfig", "create_app", "run_server"]
_LAZY = {"create_app": "edgeqa.serve.app", "run_server": "edgeqa.serve.server"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
