"""A saved checkpoint that means the same model under transformers 4.57 and 5.x.

Training may run on the newest transformers while export runs on Optimum's (4.57): what
`finetune` saves is rewritten where 5.x writes it in a form 4.57 reads otherwise or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeqa.atomic import write_atomic
from edgeqa.errors import ModelError
from edgeqa.tied_weights import explicit_tie_setting, tie_problem

TOKENIZER_CONFIG = "tokenizer_config.json"


def make_portable(folder: Path) -> None:
    """Make a checkpoint folder written by `save_pretrained` readable alike by transformers 4.57 and 5.x.

    - config.json: the tie setting that matches the weights (5.x saves a FLAN-T5 as tied over its own
      lm_head, which 4.57 would replace by the embedding), and `use_cache` on (the Trainer saves it off).
    - tokenizer_config.json: 5.x writes the extra ids as an `extra_special_tokens` list, which 4.57
      reads as a dict and fails on; both read them as `additional_special_tokens`.

    Raises:
        ModelError: the weights and the tie settings still contradict each other.
    """
    explicit_tie_setting(folder)
    problem = tie_problem(folder)
    if problem:
        raise ModelError(f"the fine-tuned model cannot be saved as one model for every transformers version: {problem}")
    _update_json(folder / "config.json", lambda config: config | {"use_cache": True})
    if (folder / TOKENIZER_CONFIG).is_file():
        _update_json(folder / TOKENIZER_CONFIG, _special_tokens_as_list)


def _special_tokens_as_list(config: dict[str, Any]) -> dict[str, Any]:
    extra = config.get("extra_special_tokens")
    if not isinstance(extra, list):
        return config
    config = {key: value for key, value in config.items() if key != "extra_special_tokens"}
    config.setdefault("additional_special_tokens", extra)
    return config


def _update_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    updated = change(data)
    if updated == data:
        return
    write_atomic(path, json.dumps(updated, indent=2, ensure_ascii=False) + "\n")
