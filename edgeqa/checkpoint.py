"""Files `edgeqa finetune` writes next to a saved model, for `edgeqa export` to read (stdlib only).

Checkpoints describe themselves: the prompt template, the token limits and the answer length
training evaluated with travel with the weights, so export and the runtime format prompts and
size answers exactly as training did.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeqa.errors import ConfigError, EdgeQAError, ModelError, first_line
from edgeqa.prompt import (
    CONTEXT_TEMPLATE,
    DEFAULT_MAX_ANSWER_TOKENS,
    DEFAULT_MAX_INPUT_TOKENS,
    MAX_BEAMS,
    MAX_TOKENS,
    NO_ANSWER,
    PROMPT_TEMPLATE,
    check_context_template,
    check_count,
    check_no_answer,
    check_template,
)
from edgeqa.typed_json import read_record

TRAINING_RECORD = "edgeqa_config.json"
HELDOUT = "edgeqa_heldout.jsonl"
#: The token counts and beams that training records and the artifact's manifest carries, and their bounds
#: (the runtime's): `FinetuneConfig` has the same fields and checks them too, before training.
TOKEN_AND_BEAM_LIMITS = {
    "max_source_tokens": MAX_TOKENS,
    "max_target_tokens": MAX_TOKENS,
    "eval_max_new_tokens": MAX_TOKENS,
    "eval_num_beams": MAX_BEAMS,
}


@dataclass(frozen=True)
class TrainingRecord:
    """What a fine-tuning run tells export about its checkpoint (`edgeqa_config.json`).

    Attributes:
        model: The checkpoint training started from (hub name or folder).
        prompt_template: Prompt with one `{question}` field.
        context_template: Prompt with `{context}` and `{question}` fields: training's when it read passages
            (`--context-column`), else FLAN's reading template.
        no_answer: The answer of records whose passage does not answer their question.
        max_source_tokens: Prompt tokens kept in training.
        max_target_tokens: Answer tokens kept in training.
        eval_max_new_tokens: Answer length generated at evaluation: the artifact's default.
        eval_num_beams: Beams at evaluation: the artifact's default.
        global_step: Optimizer steps of the saved model.
        config: The whole resolved `FinetuneConfig`, for the record.
    """

    model: str
    prompt_template: str = PROMPT_TEMPLATE
    context_template: str = CONTEXT_TEMPLATE
    no_answer: str = NO_ANSWER
    max_source_tokens: int = DEFAULT_MAX_INPUT_TOKENS
    max_target_tokens: int = DEFAULT_MAX_ANSWER_TOKENS
    eval_max_new_tokens: int = 256
    eval_num_beams: int = 1
    global_step: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse what the artifact could not carry (`ConfigError`), before anything is exported."""
        check_template(self.prompt_template)
        check_context_template(self.context_template)
        check_no_answer(self.no_answer)
        for name, most in TOKEN_AND_BEAM_LIMITS.items():
            check_count(name, getattr(self, name), most)

    def write(self, checkpoint: Path) -> Path:
        path = Path(checkpoint) / TRAINING_RECORD
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path


def read_training_record(checkpoint: str | Path) -> TrainingRecord | None:
    """The record saved with a checkpoint by `edgeqa finetune`, or None for other checkpoints.

    Raises:
        ModelError: the file exists but is unreadable, does not fit the record, or holds a value out of bounds.
    """
    path = Path(checkpoint) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is unreadable ({e}); fix or delete it") from e
    try:
        return read_record(TrainingRecord, data, str(path), ModelError, "fix or delete it")
    except ConfigError as e:
        raise ModelError(f"{path}: {e}; fix or delete it") from None


def heldout_path(checkpoint: str | Path) -> Path | None:
    path = Path(checkpoint) / HELDOUT
    return path if path.is_file() else None


MODEL_TYPE = "t5"  # FLAN-T5 and every T5 checkpoint; the runtime's graphs are T5's


def check_model_type(model_type: str | None, checkpoint: str | Path) -> None:
    """Refuse a checkpoint that is not a T5 model, before fine-tuning or exporting it.

    Raises:
        ModelError: naming the checkpoint's model type.
    """
    if model_type != MODEL_TYPE:
        raise ModelError(
            f"{str(checkpoint)!r} is a {model_type} model; edgeqa fine-tunes and exports T5 models (FLAN-T5)"
        )


def checkpoint_location(checkpoint: str) -> str:
    """`checkpoint` as transformers is to load it: a leading `~` is the home folder (hub names never start
    with one), and a name that looks like a local path (it exists, starts with `.`, `/` or `~`, has more than
    one `/`, or starts with a folder that is here) must be a folder, refused before transformers mistakes it
    for a hub name and tries the network (retrying for half a minute when there is none).

    Raises:
        ConfigError: naming the path.
    """
    expanded = os.path.expanduser(checkpoint)
    path = Path(expanded)
    looks_local = path.exists() or checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") > 1
    looks_local = looks_local or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())  # runs/final, runs here
    if looks_local and not path.is_dir():
        raise ConfigError(
            f"checkpoint {checkpoint!r} is not a folder; pass a checkpoint folder "
            "(e.g. RUN/final from `edgeqa finetune`) or a hub name such as google/flan-t5-base"
        )
    return expanded


@contextmanager
def model_load_errors(checkpoint: str | Path, offline_advice: str) -> Iterator[None]:
    """Turn what loading `checkpoint` with transformers raises into one `ModelError` line: a local folder
    without config.json is named as such, a missing hub name gets `offline_advice`.

    Raises:
        ModelError: naming the checkpoint and the problem.
    """
    if Path(checkpoint).is_dir() and not (Path(checkpoint) / "config.json").is_file():
        raise ModelError(
            f"checkpoint {str(checkpoint)!r} has no config.json; pass the folder that holds the model's "
            "config.json and weights (e.g. RUN/final from `edgeqa finetune`)"
        )
    try:
        yield
    except EdgeQAError:
        raise
    except OSError as e:
        raise ModelError(f"cannot load checkpoint {str(checkpoint)!r}: {first_line(e)}. {offline_advice}") from e
    except Exception as e:  # transformers and safetensors raise ValueError, RuntimeError, ... on bad files
        raise ModelError(f"cannot load checkpoint {str(checkpoint)!r}: {first_line(e)}") from e
