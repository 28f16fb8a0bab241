"""Loading a checkpoint for export, the outlier search and the parity gate: one rule for all three.

Every caller gets the same model (T5 only, float32 whatever dtype the weights were saved in: under
transformers 5 a bf16 checkpoint would otherwise load as bf16) and the same fast tokenizer, or one
line naming what is wrong with the checkpoint; and prompts become the model's input one way
(`encode_prompts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeqa.checkpoint import check_model_type, model_load_errors
from edgeqa.errors import ExportError, ModelError, first_line

OFFLINE_ADVICE = "Offline, pass a local checkpoint folder (e.g. OUTPUT/final from `edgeqa finetune`)"


def load_config(checkpoint: str | Path) -> Any:
    """The checkpoint's model config, checked to be a T5's.

    Raises:
        ModelError: the checkpoint cannot be found or read, or is not a T5 model.
    """
    from transformers import AutoConfig

    with model_load_errors(checkpoint, OFFLINE_ADVICE):
        config = AutoConfig.from_pretrained(checkpoint)
    check_model_type(config.model_type, checkpoint)
    return config


def load_model(checkpoint: str | Path) -> Any:
    """The checkpoint's T5 model in float32, in eval mode.

    Raises:
        ModelError: the checkpoint cannot be found or read, or is not a T5 model.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM

    config = load_config(checkpoint)
    with model_load_errors(checkpoint, OFFLINE_ADVICE):
        model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint, config=config, dtype=torch.float32)
    return model.eval()


def load_tokenizer(checkpoint: str | Path) -> Any:
    """The checkpoint's fast tokenizer (the artifact's tokenizer.json is written from it).

    Raises:
        ModelError: the checkpoint has no readable tokenizer files.
        ExportError: it has only a slow tokenizer.
    """
    from transformers import AutoTokenizer

    if not Path(checkpoint).is_dir():  # a hub name: it fails as the checkpoint would (offline: no hub)
        with model_load_errors(checkpoint, OFFLINE_ADVICE):
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        except Exception as e:  # missing files surface as OSError, ValueError or TypeError by version
            raise ModelError(
                f"cannot load the tokenizer of {str(checkpoint)!r}: {first_line(e)}. Save the tokenizer beside "
                "the weights (tokenizer.save_pretrained(folder); `edgeqa finetune` does)"
            ) from e
    if not tokenizer.is_fast:
        raise ExportError(f"{str(checkpoint)!r} has no fast tokenizer; install `tokenizers` and save it again")
    return tokenizer


def encode_prompts(tokenizer: Any, prompts: list[str], max_input_tokens: int) -> Any:
    """`prompts` as the PyTorch model reads them: padded to the longest, cut at `max_input_tokens` as the
    runtime cuts them, as torch tensors."""
    return tokenizer(prompts, padding=True, truncation=True, max_length=max_input_tokens, return_tensors="pt")
