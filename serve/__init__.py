"""`edgeqa serve`: an HTTP server (OpenAI-compatible and native endpoints) that batches callers.

Needs the `serve` extra: pip install 'edgeqa[serve]'.
"""

from edgeqa.serve.app import create_app
from edgeqa.serve.config import ServeConfig
from edgeqa.serve.server import run_server

__all__ = ["ServeConfig", "create_app", "run_server"]
