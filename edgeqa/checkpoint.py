"""Files `edgeqa finetune` writes next to a saved model, for `edgeqa export` to read (stdlib only).

Checkpoints describe themselves: the prompt template and token limits travel with the weights,
so export and the runtime format prompts exactly as training did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeqa.errors import ModelError

TRAINING_CONFIG = "edgeqa_config.json"
HELDOUT = "edgeqa_heldout.jsonl"


def read_training_config(checkpoint: str | Path) -> dict[str, Any]:
    """The resolved `FinetuneConfig` saved with a checkpoint, or {} for other checkpoints."""
    path = Path(checkpoint) / TRAINING_CONFIG
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is unreadable ({e}); fix or delete it") from e


def heldout_path(checkpoint: str | Path) -> Path | None:
    path = Path(checkpoint) / HELDOUT
    return path if path.is_file() else None
